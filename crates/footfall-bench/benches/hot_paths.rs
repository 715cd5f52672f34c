//! Micro-benchmarks of hot paths: event parse, visitor hash, HLL insert/merge, rollup
//! update, query planning and execution. `cargo bench -p footfall-bench`.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use footfall_bench::{generate, DataSpec};
use footfall_event::identity::{visitor_id, IdentitySource};
use footfall_event::native::{parse_body, parse_event, Limits};
use footfall_processor::{SessionRules, SessionState};
use footfall_store::{Hll, RollupStore, Rollups, SnapshotStore};

fn events(n: u64) -> Vec<footfall_event::LoggedEvent> {
    let mut all = Vec::new();
    generate(
        &DataSpec {
            property: "FF-BENCH000".into(),
            events: n,
            days: 1,
            end_ms: 1_795_600_000_000,
            seed: 1,
        },
        |e| all.extend(e),
    );
    all
}

fn parse(c: &mut Criterion) {
    let one = serde_json::json!({
        "tracking_id": "FF-ABCDEFGH", "name": "pageview", "url": "https://shop.example/products/item-42?ref=x",
        "referrer": "https://www.google.com/", "timestamp": "2026-11-26T10:00:00+05:30", "client_id": "c-123",
        "props": {"plan": "pro", "items": 2}
    });
    let body = serde_json::to_vec(&vec![one; 100]).unwrap();
    let limits = Limits::default();
    let mut g = c.benchmark_group("ingest");
    g.throughput(Throughput::Elements(100));
    g.bench_function("parse_and_validate_100_events", |b| {
        b.iter(|| {
            let vs = parse_body(&body, &limits).unwrap();
            for v in &vs {
                std::hint::black_box(parse_event(v, &limits).unwrap());
            }
        })
    });
    g.finish();
    let secret = [7u8; 16];
    let salt = [9u8; 16];
    c.bench_function("visitor_hash_address", |b| {
        b.iter(|| {
            visitor_id(
                &secret,
                "FF-ABCDEFGH",
                IdentitySource::Address {
                    ip: "203.0.113.9".parse().unwrap(),
                    user_agent:
                        "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
                    daily_salt: &salt,
                },
            )
        })
    });
    let e = events(1).pop().unwrap();
    let bytes = e.encode();
    c.bench_function("record_encode", |b| {
        b.iter(|| std::hint::black_box(e.encode()))
    });
    c.bench_function("record_decode", |b| {
        b.iter(|| footfall_event::LoggedEvent::decode(&bytes).unwrap())
    });
}

fn hll(c: &mut Criterion) {
    let mut g = c.benchmark_group("hll");
    g.throughput(Throughput::Elements(10_000));
    g.bench_function("insert_10k_dense", |b| {
        b.iter_batched(
            || {
                let mut h = Hll::new();
                for i in 0..5000u64 {
                    h.insert(i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
                }
                h
            },
            |mut h| {
                for i in 0..10_000u64 {
                    h.insert(i.wrapping_mul(0xD1B5_4A32_D192_ED03));
                }
                h
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
    let mut a = Hll::new();
    let mut d = Hll::new();
    for i in 0..100_000u64 {
        d.insert(i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    }
    for i in 0..500u64 {
        a.insert(i);
    }
    c.bench_function("hll_merge_dense_into_dense", |b| {
        b.iter_batched(|| d.clone(), |mut x| x.merge(&d), BatchSize::SmallInput)
    });
    c.bench_function("hll_merge_small_exact", |b| {
        b.iter_batched(|| a.clone(), |mut x| x.merge(&a), BatchSize::SmallInput)
    });
    c.bench_function("hll_count_dense", |b| b.iter(|| d.count()));
}

fn rollup(c: &mut Criterion) {
    let evs = events(20_000);
    let tz: chrono_tz::Tz = "Asia/Kolkata".parse().unwrap();
    let mut g = c.benchmark_group("processor");
    g.throughput(Throughput::Elements(evs.len() as u64));
    g.bench_function("sessionise_and_roll_up_20k", |b| {
        b.iter_batched(
            || (SessionState::new(4), Rollups::default()),
            |(mut s, mut r)| {
                for e in &evs {
                    s.apply(
                        (e.visitor % 4) as usize,
                        &e.view(),
                        &tz,
                        &SessionRules::default(),
                        &mut r,
                    );
                }
                (s, r)
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

fn query(c: &mut Criterion) {
    let evs = events(200_000);
    let tz: chrono_tz::Tz = "Asia/Kolkata".parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SnapshotStore::open(dir.path()).unwrap());
    let mut s = SessionState::new(4);
    store.update(&mut |r| {
        for e in &evs {
            s.apply(
                (e.visitor % 4) as usize,
                &e.view(),
                &tz,
                &SessionRules::default(),
                r,
            );
        }
    });
    let q: footfall_query::QueryRequest = serde_json::from_value(serde_json::json!({
        "site_id": "FF-BENCH000", "metrics": ["visitors", "pageviews"], "date_range": "7d",
        "dimensions": ["event:page"], "pagination": {"limit": 10}
    }))
    .unwrap();
    c.bench_function("query_top_pages_200k_events", |b| {
        b.iter(|| footfall_query::execute(&q, tz, store.as_ref(), 1_795_600_000_000).unwrap())
    });
    c.bench_function("query_plan_parse", |b| {
        b.iter(|| {
            let v = serde_json::json!({"site_id": "FF-BENCH000", "metrics": ["visitors", "visits", "bounce_rate"],
                "date_range": "30d", "dimensions": ["time:day"], "filters": [["contains", "event:page", ["/blog"]]]});
            serde_json::from_value::<footfall_query::QueryRequest>(v).unwrap()
        })
    });
}

criterion_group!(benches, parse, hll, rollup, query);
criterion_main!(benches);
