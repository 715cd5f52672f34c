//! `footfall loadgen`: realistic synthetic traffic for demos and benchmarks.
//!
//! Visitors come back and browse in multi-page visits over a long tail of pages
//! (Zipf-like), arrive from a mix of referrers and campaigns, use a mix of user agents
//! and sometimes fire custom events with revenue. Requests are paced to the target rate
//! and the run is bounded by `--duration`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

#[derive(Args, Debug, Clone)]
pub struct LoadgenArgs {
    /// Base URL of the server, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    pub url: String,
    /// Tracking id to send to.
    #[arg(long)]
    pub property: String,
    /// Target events per second.
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    /// Seconds to run.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Events per request (1 = browser style).
    #[arg(long, default_value_t = 10)]
    pub batch: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Distinct visitors to draw from.
    #[arg(long, default_value_t = 5000)]
    pub visitors: u64,
    /// Optional write key (sent as a Bearer token).
    #[arg(long)]
    pub key: Option<String>,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// A read key of the property: measure freshness (time from 2xx until a probe event
    /// is visible in /api/v2/query) while the load runs.
    #[arg(long)]
    pub probe_key: Option<String>,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
    /// Count any 2xx answer as all events accepted (for baselines such as a web server
    /// answering 204).
    #[arg(long)]
    pub any_2xx: bool,
}

const REFERRERS: &[Option<&str>] = &[
    None,
    None,
    None,
    Some("https://www.google.com/search?q=shop"),
    Some("https://www.google.com/"),
    Some("https://duckduckgo.com/"),
    Some("https://t.co/abc"),
    Some("https://www.facebook.com/"),
    Some("https://news.ycombinator.com/item?id=1"),
    Some("https://www.bing.com/search?q=x"),
];

const USER_AGENTS: &[&str] = &[
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
];

/// One visitor's place in an ongoing visit.
struct VisitState {
    visitor: u64,
    remaining: u32,
    referrer: Option<&'static str>,
    campaign: Option<&'static str>,
}

pub struct Generator {
    rng: StdRng,
    property: String,
    visitors: u64,
    open: Vec<VisitState>,
}

impl Generator {
    pub fn new(property: &str, visitors: u64, seed: u64) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
            property: property.into(),
            visitors: visitors.max(1),
            open: Vec::new(),
        }
    }

    fn page(&mut self) -> String {
        // Zipf-like long tail: a few hot pages, many rare ones.
        let u: f64 = self.rng.random();
        let rank = (1.0 / (u * 0.999 + 0.001)).floor() as u64;
        match rank {
            1 => "/".into(),
            2 => "/pricing".into(),
            3 => "/blog".into(),
            4 => "/checkout".into(),
            n => format!("/products/item-{n}"),
        }
    }

    /// The next event, as a native API object.
    pub fn next_event(&mut self) -> Value {
        if self.open.len() < 64 || self.rng.random_bool(0.15) {
            let v = VisitState {
                visitor: self.rng.random_range(0..self.visitors),
                remaining: 1 + self.rng.random_range(0..6u32) * self.rng.random_range(0..2u32),
                referrer: REFERRERS[self.rng.random_range(0..REFERRERS.len())],
                campaign: if self.rng.random_bool(0.05) {
                    Some("newsletter")
                } else {
                    None
                },
            };
            self.open.push(v);
        }
        let i = self.rng.random_range(0..self.open.len());
        let page = self.page();
        let custom = self.rng.random_bool(0.08);
        let v = &mut self.open[i];
        let first = v.remaining > 0 && v.referrer.is_some();
        let mut url = format!("https://shop.example{page}");
        if let Some(c) = v.campaign.take() {
            url.push_str(&format!("?utm_source={c}"));
        }
        let mut e = json!({
            "tracking_id": self.property,
            "name": "pageview",
            "url": url,
            "client_id": format!("c{}", v.visitor),
            "user_agent": USER_AGENTS[(v.visitor % USER_AGENTS.len() as u64) as usize],
        });
        if first {
            e["referrer"] = json!(v.referrer.take());
        }
        if custom {
            e["name"] = json!(if v.visitor % 3 == 0 {
                "Purchase"
            } else {
                "Signup"
            });
            e["props"] = json!({"plan": "pro", "items": 2});
            if v.visitor % 3 == 0 {
                e["revenue"] = json!({"amount": 499.0, "currency": "INR"});
            }
        }
        v.remaining = v.remaining.saturating_sub(1);
        if v.remaining == 0 {
            self.open.swap_remove(i);
        }
        e
    }
}

pub fn run(args: LoadgenArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run_async(args))
}

async fn run_async(args: LoadgenArgs) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()?;
    let endpoint = format!("{}/api/v1/events", args.url.trim_end_matches('/'));
    let generator = Arc::new(Mutex::new(Generator::new(
        &args.property,
        args.visitors,
        args.seed,
    )));
    let sent = Arc::new(AtomicU64::new(0));
    let accepted = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let stale_retries = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(Mutex::new(Vec::<f64>::new()));
    let batch = args.batch.max(1);
    let pool: Arc<Vec<bytes::Bytes>> = {
        let mut g = generator.lock().unwrap();
        let n = (200_000 / batch).clamp(64, 4096);
        Arc::new(
            (0..n)
                .map(|_| {
                    let events: Vec<Value> = (0..batch).map(|_| g.next_event()).collect();
                    let body = if batch == 1 {
                        events[0].clone()
                    } else {
                        json!(events)
                    };
                    bytes::Bytes::from(serde_json::to_vec(&body).unwrap())
                })
                .collect(),
        )
    };
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.duration);
    let requests_per_sec = (args.rate as f64 / batch as f64).max(0.001);
    let mut tasks = Vec::new();
    for w in 0..args.concurrency.max(1) {
        let (client, endpoint, pool) = (client.clone(), endpoint.clone(), pool.clone());
        let (sent, accepted, errors, latencies) = (
            sent.clone(),
            accepted.clone(),
            errors.clone(),
            latencies.clone(),
        );
        let key = args.key.clone();
        let any_2xx = args.any_2xx;
        let stale_retries = stale_retries.clone();
        let workers = args.concurrency.max(1) as f64;
        tasks.push(tokio::spawn(async move {
            // Each worker paces its share of the target request rate.
            let interval = Duration::from_secs_f64(workers / requests_per_sec);
            let mut next = Instant::now() + interval.mul_f64(w as f64 / workers);
            let mut local_lat = Vec::new();
            let mut sent_requests = 0usize;
            while Instant::now() < deadline {
                let now = Instant::now();
                if next > now {
                    tokio::time::sleep(next - now).await;
                }
                next += interval;
                // Bodies come from a pool built before the clock started, so the
                // generator's own JSON work does not limit the rate it can offer.
                let body = pool[(w + sent_requests * workers as usize) % pool.len()].clone();
                sent_requests += 1;
                let request = || {
                    let req = client
                        .post(&endpoint)
                        .header("content-type", "application/json")
                        .body(body.clone());
                    match &key {
                        Some(k) => req.bearer_auth(k),
                        None => req,
                    }
                };
                let t0 = Instant::now();
                sent.fetch_add(batch as u64, Ordering::Relaxed);
                let mut answer = request().send().await;
                if answer.as_ref().is_err_and(stale_connection) {
                    stale_retries.fetch_add(1, Ordering::Relaxed);
                    answer = request().send().await;
                }
                match answer {
                    Ok(r) if any_2xx && r.status().is_success() => {
                        accepted.fetch_add(batch as u64, Ordering::Relaxed);
                    }
                    Ok(r) if r.status().as_u16() == 202 => {
                        let n = r
                            .json::<Value>()
                            .await
                            .ok()
                            .and_then(|v| v["accepted"].as_u64())
                            .unwrap_or(0);
                        accepted.fetch_add(n, Ordering::Relaxed);
                        errors.fetch_add(batch as u64 - n, Ordering::Relaxed);
                    }
                    other => {
                        // The first few failures say what they were (status and body,
                        // or the connection error) on stderr.
                        if errors.fetch_add(batch as u64, Ordering::Relaxed) < 10 * batch as u64 {
                            match other {
                                Ok(r) => {
                                    let status = r.status();
                                    let text = r.text().await.unwrap_or_default();
                                    eprintln!("loadgen: answered {status}: {text}");
                                }
                                Err(e) => eprintln!("loadgen: request failed: {e:?}"),
                            }
                        }
                    }
                }
                local_lat.push(t0.elapsed().as_secs_f64() * 1000.0);
            }
            latencies.lock().unwrap().extend(local_lat);
        }));
    }
    let probe = args.probe_key.clone().map(|key| {
        let (client, base, property) = (
            client.clone(),
            args.url.trim_end_matches('/').to_string(),
            args.property.clone(),
        );
        tokio::spawn(async move { probe_freshness(client, base, property, key, deadline).await })
    });
    for t in tasks {
        t.await?;
    }
    let freshness = match probe {
        Some(p) => Some(p.await?),
        None => None,
    };
    let elapsed = started.elapsed().as_secs_f64();
    let mut lat = latencies.lock().unwrap().clone();
    lat.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        if lat.is_empty() {
            0.0
        } else {
            lat[((lat.len() - 1) as f64 * p) as usize]
        }
    };
    let acc = accepted.load(Ordering::Relaxed);
    let mut summary = json!({
        "seconds": elapsed,
        "events_sent": sent.load(Ordering::Relaxed),
        "events_accepted": acc,
        "errors": errors.load(Ordering::Relaxed),
        "stale_connection_retries": stale_retries.load(Ordering::Relaxed),
        "events_per_second": acc as f64 / elapsed,
        "latency_ms_p50": pct(0.5),
        "latency_ms_p99": pct(0.99),
    });
    if let Some(f) = &freshness {
        summary["freshness"] = f.clone();
    }
    if args.json {
        println!("{summary}");
    } else {
        println!(
            "sent {} events in {:.1}s: {} accepted ({:.0}/s), {} errors; request latency p50 {:.2} ms, p99 {:.2} ms",
            summary["events_sent"], elapsed, acc, summary["events_per_second"].as_f64().unwrap_or(0.0),
            summary["errors"], pct(0.5), pct(0.99)
        );
        if let Some(f) = freshness {
            println!(
                "freshness (2xx → visible in /api/v2/query) over {} probes: p50 {} ms, p99 {} ms, max {} ms, not seen {}",
                f["probes"], f["p50_ms"], f["p99_ms"], f["max_ms"], f["not_visible"]
            );
        }
    }
    Ok(())
}

/// Sends a uniquely named probe page view every 200 ms and polls the query API until it
/// is counted; returns the distribution of the delays.
async fn probe_freshness(
    client: reqwest::Client,
    base: String,
    property: String,
    read_key: String,
    deadline: Instant,
) -> Value {
    let mut delays = Vec::new();
    let mut not_visible = 0;
    let mut n = 0u64;
    let run = std::process::id();
    while Instant::now() < deadline {
        n += 1;
        let page = format!("/__freshness-probe/{run}/{n}");
        let event = json!({"tracking_id": property, "name": "pageview",
            "url": format!("https://probe.invalid{page}"), "client_id": format!("probe-{run}-{n}")});
        let ok = client
            .post(format!("{base}/api/v1/events"))
            .json(&event)
            .send()
            .await
            .map(|r| r.status().as_u16() == 202)
            .unwrap_or(false);
        if !ok {
            not_visible += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let acked = Instant::now();
        let q = json!({"site_id": property, "metrics": ["pageviews"], "date_range": "7d",
            "filters": [["is", "event:page", [page]]]});
        let mut seen = false;
        while acked.elapsed() < Duration::from_secs(10) {
            let r = client
                .post(format!("{base}/api/v2/query"))
                .bearer_auth(&read_key)
                .json(&q)
                .send()
                .await;
            if let Ok(r) = r {
                if let Ok(v) = r.json::<Value>().await {
                    if v["results"][0]["metrics"][0].as_u64() == Some(1) {
                        seen = true;
                        break;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if seen {
            delays.push(acked.elapsed().as_secs_f64() * 1000.0);
        } else {
            not_visible += 1;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    delays.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        if delays.is_empty() {
            0.0
        } else {
            delays[((delays.len() - 1) as f64 * p).round() as usize]
        }
    };
    json!({
        "probes": delays.len() + not_visible,
        "not_visible": not_visible,
        "p50_ms": (pct(0.5) * 10.0).round() / 10.0,
        "p99_ms": (pct(0.99) * 10.0).round() / 10.0,
        "max_ms": (pct(1.0) * 10.0).round() / 10.0,
    })
}

/// Whether a request failed on a kept-alive connection that the other side had just
/// closed — reset while the request was being written, or closed before any answer —
/// rather than being refused or timing out. A gateway that reloads (nginx) closes its
/// idle client connections without reading from them, so such a request was not taken;
/// the load generator sends it again once, as browsers do, and counts it.
pub fn stale_connection(e: &reqwest::Error) -> bool {
    use std::error::Error as _;
    if !e.is_request() || e.is_timeout() || e.is_connect() {
        return false;
    }
    let mut source = e.source();
    while let Some(s) = source {
        if s.downcast_ref::<hyper::Error>()
            .is_some_and(|h| h.is_incomplete_message())
        {
            return true;
        }
        if s.downcast_ref::<std::io::Error>().is_some_and(|io| {
            matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            )
        }) {
            return true;
        }
        source = s.source();
    }
    false
}
