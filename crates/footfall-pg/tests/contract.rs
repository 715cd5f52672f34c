//! The metadata and rollup store contracts, run against PostgreSQL (a database per
//! test on the server `scripts/pg.sh` starts; skipped loudly without one, failed under CI).

use std::sync::Arc;
use std::time::{Duration, Instant};

use footfall_meta::MetaStore;
use footfall_pg::testing::TestDb;
use footfall_pg::{PgMeta, PgRollupStore, ReadCacheOptions};
use footfall_store::{Grain, LocalDay, LocalHour, RollupRead, RollupStore, Sections};

struct Meta(String);

impl footfall_meta::contract::Harness for Meta {
    fn connect(&mut self) -> Arc<dyn MetaStore> {
        Arc::new(PgMeta::open(&self.0).unwrap())
    }
}

#[test]
fn meta_store_contract_on_postgres() {
    let Some(db) = TestDb::create("meta_store_contract_on_postgres") else {
        return;
    };
    footfall_meta::contract::run(&mut Meta(db.url().to_string()));
}

#[test]
fn account_store_contract_on_postgres() {
    let Some(db) = TestDb::create("account_store_contract_on_postgres") else {
        return;
    };
    let m = PgMeta::open(db.url()).unwrap();
    let a = m.create_property("A", "UTC", &[]).unwrap();
    let b = m.create_property("B", "UTC", &[]).unwrap();
    footfall_meta::accounts::contract::run(&m, &a.tracking_id, &b.tracking_id);
}

struct Rollups {
    url: String,
    reader: Option<Arc<PgRollupStore>>,
}

impl footfall_store::contract::Harness for Rollups {
    fn open(&mut self) -> Arc<dyn RollupStore> {
        Arc::new(PgRollupStore::open_writer(&self.url, 0, None).unwrap())
    }

    fn reader(&mut self) -> Option<Arc<dyn RollupRead>> {
        let r = self.reader.get_or_insert_with(|| {
            // The contract's reader sees each checkpoint at once: no staleness allowed.
            let opts = ReadCacheOptions {
                max_staleness: Duration::ZERO,
                ..Default::default()
            };
            Arc::new(PgRollupStore::open_reader(&self.url, opts).unwrap())
        });
        Some(r.clone())
    }
}

#[test]
fn rollup_store_contract_on_postgres() {
    let Some(db) = TestDb::create("rollup_store_contract_on_postgres") else {
        return;
    };
    footfall_store::contract::run(&mut Rollups {
        url: db.url().to_string(),
        reader: None,
    });
}

/// Page views of one day as a reader sees them.
fn pageviews(r: &dyn RollupRead, day: i32) -> u64 {
    let mut n = 0;
    r.scan(
        "FF-S",
        LocalDay(day)..=LocalDay(day),
        Grain::Day,
        Sections::TOTALS,
        &mut |parts| n = parts.iter().map(|(_, b)| b.events.pageviews).sum(),
    )
    .unwrap();
    n
}

/// Within `max_staleness` of its last look, a reader answers from what it saw; after
/// it, from the database again.
#[test]
fn a_reader_trusts_what_it_saw_for_max_staleness() {
    let Some(db) = TestDb::create("a_reader_trusts_what_it_saw_for_max_staleness") else {
        return;
    };
    const DAY: i32 = 20_500;
    let w = PgRollupStore::open_writer(db.url(), 0, None).unwrap();
    let add = |n: u64| {
        w.update(&mut |r| {
            let (h, d) = r
                .property_mut("FF-S")
                .buckets_mut(LocalHour(DAY as i64 * 24 + 3));
            h.events.pageviews += n;
            if let Some(d) = d {
                d.events.pageviews += n;
            }
        });
        w.checkpoint(&[0], &footfall_store::state_bytes(b""))
            .unwrap();
    };
    add(5);
    let staleness = Duration::from_millis(400);
    let r = PgRollupStore::open_reader(
        db.url(),
        ReadCacheOptions {
            max_staleness: staleness,
            ..Default::default()
        },
    )
    .unwrap();
    let looked = Instant::now();
    assert_eq!(pageviews(&r, DAY), 5);
    add(2);
    let seen = pageviews(&r, DAY);
    if looked.elapsed() < staleness {
        assert_eq!(seen, 5, "answered from the last look");
    }
    std::thread::sleep(staleness);
    assert_eq!(pageviews(&r, DAY), 7, "asked again once the window passed");
}

/// A writer that another writer of the same part has replaced cannot checkpoint over it.
#[test]
fn a_replaced_writer_is_fenced_off() {
    let Some(db) = TestDb::create("a_replaced_writer_is_fenced_off") else {
        return;
    };
    let first = PgRollupStore::open_writer(db.url(), 0, None).unwrap();
    first
        .checkpoint(&[1], &footfall_store::state_bytes(b"a"))
        .unwrap();
    let second = PgRollupStore::open_writer(db.url(), 0, None).unwrap();
    assert_eq!(second.last_checkpoint().unwrap().unwrap().offsets, vec![1]);
    second
        .checkpoint(&[2], &footfall_store::state_bytes(b"b"))
        .unwrap();
    let err = first
        .checkpoint(&[3], &footfall_store::state_bytes(b"c"))
        .unwrap_err();
    assert!(err.to_string().contains("another writer"), "{err}");
    let third = PgRollupStore::open_writer(db.url(), 0, None).unwrap();
    assert_eq!(
        third.last_checkpoint().unwrap().unwrap().processor_state,
        b"b"
    );
}

/// A database that cannot be reached is an error (a 503 upstream), never an empty answer.
#[test]
fn an_unreachable_database_is_an_error() {
    let url = "postgres://footfall:footfall@127.0.0.1:1/none";
    assert!(PgMeta::open(url).is_err());
    assert!(matches!(
        PgRollupStore::open_reader(url, ReadCacheOptions::default()),
        Err(footfall_pg::Error::Unavailable(_))
    ));
}

#[test]
fn leases_contract_on_postgres() {
    let Some(db) = TestDb::create("leases_contract_on_postgres") else {
        return;
    };
    footfall_store::leases::contract::run(&footfall_pg::PgLeases::open(db.url()).unwrap());
}

#[test]
fn archiver_position_contract_on_postgres() {
    use footfall_archive::position::{contract, PositionStore};
    let Some(db) = TestDb::create("archiver_position_contract_on_postgres") else {
        return;
    };
    let url = db.url().to_string();
    contract::run(
        &|| {
            Box::new(footfall_pg::PgPosition::open(&url, "events").unwrap())
                as Box<dyn PositionStore>
        },
        true,
    );
    // Positions are per name: another log's archiver starts from nothing.
    let other = footfall_pg::PgPosition::open(&url, "other").unwrap();
    assert_eq!(other.load().unwrap(), None);
}

/// With leases, a checkpoint commits only while its writer holds the partition.
#[test]
fn checkpoints_need_the_lease() {
    use footfall_store::leases::Leases;
    let Some(db) = TestDb::create("checkpoints_need_the_lease") else {
        return;
    };
    let leases = footfall_pg::PgLeases::open(db.url()).unwrap();
    let a = PgRollupStore::open_writer(db.url(), 3, Some("a".into())).unwrap();
    assert!(
        a.checkpoint(&[1], &footfall_store::state_bytes(b"x"))
            .is_err(),
        "no lease, no checkpoint"
    );
    let ttl = std::time::Duration::from_millis(600);
    assert!(leases.acquire(3, "a", ttl).unwrap());
    a.checkpoint(&[1], &footfall_store::state_bytes(b"a1"))
        .unwrap();
    a.checkpoint(&[2], &footfall_store::state_bytes(b"a2"))
        .unwrap();
    // a stalls past its lease; b takes the partition and resumes from a's checkpoint.
    std::thread::sleep(ttl + std::time::Duration::from_millis(200));
    assert!(leases.acquire(3, "b", ttl).unwrap());
    let b = PgRollupStore::open_writer(db.url(), 3, Some("b".into())).unwrap();
    assert_eq!(b.last_checkpoint().unwrap().unwrap().processor_state, b"a2");
    assert!(
        a.checkpoint(&[3], &footfall_store::state_bytes(b"a3"))
            .is_err(),
        "a lost its lease"
    );
    b.checkpoint(&[3], &footfall_store::state_bytes(b"b3"))
        .unwrap();
    let again = PgRollupStore::open_writer(db.url(), 3, None).unwrap();
    assert_eq!(
        again.last_checkpoint().unwrap().unwrap().processor_state,
        b"b3"
    );
}
