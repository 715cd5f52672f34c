//! The [`RollupStore`] contract as one test suite that every implementation runs
//! against itself (the embedded store in this crate's tests, PostgreSQL in its crate's),
//! so that an implementation cannot drift from what the processor and the query engine
//! rely on.
//!
//! The suite only uses the traits: it writes through `update` and `checkpoint`, reads
//! through [`RollupRead`], and "crashes" by dropping a store without a checkpoint and
//! opening the same storage again.

use std::sync::Arc;

use crate::{Bucket, Grain, LocalDay, LocalHour, MinuteStats, RollupRead, RollupStore, Sections};

/// Opens stores of one implementation, all on the same storage.
pub trait Harness {
    /// A store on the harness's storage; a second call after the first store was dropped
    /// is a restart.
    fn open(&mut self) -> Arc<dyn RollupStore>;

    /// A reader of the same storage in another process (a query node), where the
    /// implementation has one: it must see every completed checkpoint, and nothing a
    /// writer has not checkpointed.
    fn reader(&mut self) -> Option<Arc<dyn RollupRead>> {
        None
    }
}

/// Runs every check of the contract; panics with the check's name on the first failure.
pub fn run(h: &mut dyn Harness) {
    empty_store(h);
    updates_are_visible_at_once(h);
    checkpoint_round_trip(h);
    uncheckpointed_changes_are_lost_on_restart(h);
    ranges_are_exact(h);
    properties_are_isolated(h);
    readers_never_see_half_an_update(h);
    remote_readers_see_checkpoints(h);
}

const P: &str = "FF-CONTRACT";
const OTHER: &str = "FF-OTHER";
/// 2026-01-01 as a local day.
const D0: i32 = 20_454;

fn write(store: &dyn RollupStore, property: &str, hour: LocalHour, pageviews: u64) {
    store.update(&mut |r| {
        let (h, d) = r.property_mut(property).buckets_mut(hour);
        h.events.pageviews += pageviews;
        h.events.visitors.insert(pageviews);
        if let Some(d) = d {
            d.events.pageviews += pageviews;
            d.events.visitors.insert(pageviews);
        }
    });
}

fn hour(day: i32, h: i64) -> LocalHour {
    LocalHour(day as i64 * 24 + h)
}

/// Page views per key of a scan, parts merged.
fn totals(
    store: &dyn RollupRead,
    property: &str,
    from: i32,
    to: i32,
    grain: Grain,
) -> Vec<(i64, u64)> {
    let mut out: Vec<(i64, u64)> = Vec::new();
    store
        .scan(
            property,
            LocalDay(from)..=LocalDay(to),
            grain,
            Sections::TOTALS,
            &mut |parts| {
                let mut last = i64::MIN;
                for (k, b) in parts {
                    assert!(*k >= last, "parts come in key order");
                    last = *k;
                    match out.last_mut() {
                        Some((lk, n)) if lk == k => *n += b.events.pageviews,
                        _ => out.push((*k, b.events.pageviews)),
                    }
                }
            },
        )
        .expect("scan");
    out
}

fn merged_day(store: &dyn RollupRead, property: &str, day: i32) -> Bucket {
    merged_sections(store, property, day, Sections::ALL)
}

fn merged_sections(store: &dyn RollupRead, property: &str, day: i32, sections: Sections) -> Bucket {
    let mut b = Bucket::default();
    store
        .scan(
            property,
            LocalDay(day)..=LocalDay(day),
            Grain::Day,
            sections,
            &mut |parts| {
                for (_, p) in parts {
                    b.merge(p);
                }
            },
        )
        .expect("scan");
    b
}

fn empty_store(h: &mut dyn Harness) {
    let s = h.open();
    assert!(
        s.last_checkpoint().unwrap().is_none(),
        "empty_store: no checkpoint"
    );
    assert_eq!(s.first_day(P).unwrap(), None, "empty_store: no first day");
    assert!(totals(s.as_ref(), P, D0 - 10, D0 + 10, Grain::Day).is_empty());
    let mut called = 0;
    s.minutes(P, 0..=i64::MAX / 2, &mut |m| {
        called += 1;
        assert!(m.is_empty());
    })
    .unwrap();
    assert_eq!(
        called, 1,
        "empty_store: the callback is called once, with nothing"
    );
}

fn updates_are_visible_at_once(h: &mut dyn Harness) {
    let s = h.open();
    // Hours of three days, the newest two hours left unfolded by the model.
    write(s.as_ref(), P, hour(D0, 5), 1);
    write(s.as_ref(), P, hour(D0 + 1, 23), 2);
    write(s.as_ref(), P, hour(D0 + 2, 0), 4);
    write(s.as_ref(), P, hour(D0 + 2, 0), 8);
    write(s.as_ref(), P, hour(D0, 6), 16); // late
    let days = totals(s.as_ref(), P, D0, D0 + 2, Grain::Day);
    let d = |x: i32| x as i64;
    assert_eq!(
        days,
        vec![(d(D0), 17), (d(D0 + 1), 2), (d(D0 + 2), 12)],
        "updates_are_visible_at_once: days"
    );
    let hours = totals(s.as_ref(), P, D0, D0 + 2, Grain::Hour);
    assert_eq!(
        hours,
        vec![
            (hour(D0, 5).0, 1),
            (hour(D0, 6).0, 16),
            (hour(D0 + 1, 23).0, 2),
            (hour(D0 + 2, 0).0, 12)
        ],
        "updates_are_visible_at_once: hours"
    );
    assert_eq!(s.first_day(P).unwrap(), Some(LocalDay(D0)));
    // Unique counts survive the parts: the day's sketch has every visitor once.
    assert_eq!(merged_day(s.as_ref(), P, D0 + 2).events.visitors.count(), 2);
    s.checkpoint(&[1, 2, 3], &crate::state_bytes(b"state-0"))
        .expect("checkpoint");
}

fn checkpoint_round_trip(h: &mut dyn Harness) {
    let before_days;
    let before_hours;
    {
        let s = h.open();
        write(s.as_ref(), P, hour(D0 + 3, 1), 32);
        s.update(&mut |r| {
            let p = r.property_mut(P);
            p.count_minute(60_000 * 1_000, true, 7);
            p.count_minute(60_000 * 1_001, false, 8);
        });
        s.checkpoint(&[11, 22, 33], &crate::state_bytes(b"state-1"))
            .expect("checkpoint");
        before_days = totals(s.as_ref(), P, D0 - 1, D0 + 5, Grain::Day);
        before_hours = totals(s.as_ref(), P, D0 - 1, D0 + 5, Grain::Hour);
        assert!(
            s.checkpoint_bytes() > 0,
            "checkpoint_round_trip: bytes counted"
        );
    }
    let s = h.open();
    let c = s
        .last_checkpoint()
        .unwrap()
        .expect("checkpoint_round_trip: a checkpoint");
    assert_eq!(c.offsets, vec![11, 22, 33]);
    assert_eq!(c.processor_state, b"state-1");
    assert_eq!(
        totals(s.as_ref(), P, D0 - 1, D0 + 5, Grain::Day),
        before_days
    );
    assert_eq!(
        totals(s.as_ref(), P, D0 - 1, D0 + 5, Grain::Hour),
        before_hours
    );
    let mut minutes: Vec<(i64, MinuteStats)> = Vec::new();
    s.minutes(P, 1_000..=1_001, &mut |m| {
        minutes = m.iter().map(|(k, v)| (*k, (*v).clone())).collect()
    })
    .unwrap();
    assert_eq!(minutes.len(), 2, "checkpoint_round_trip: minutes kept");
    assert_eq!((minutes[0].1.pageviews, minutes[1].1.events), (1, 1));
    // A later checkpoint that changes one day keeps the others as they were.
    write(s.as_ref(), P, hour(D0 + 3, 2), 64);
    s.checkpoint(&[12, 23, 34], &crate::state_bytes(b"state-2"))
        .unwrap();
    drop(s);
    let s = h.open();
    assert_eq!(
        s.last_checkpoint().unwrap().unwrap().processor_state,
        b"state-2"
    );
    let days = totals(s.as_ref(), P, D0, D0 + 3, Grain::Day);
    assert_eq!(days.last(), Some(&((D0 + 3) as i64, 96)));
    assert_eq!(days.first(), Some(&(D0 as i64, 17)));
}

fn uncheckpointed_changes_are_lost_on_restart(h: &mut dyn Harness) {
    let before = {
        let s = h.open();
        let before = totals(s.as_ref(), P, D0 - 1, D0 + 30, Grain::Day);
        write(s.as_ref(), P, hour(D0 + 20, 1), 1_000);
        write(s.as_ref(), P, hour(D0, 5), 1_000);
        before
    };
    let s = h.open();
    assert_eq!(
        totals(s.as_ref(), P, D0 - 1, D0 + 30, Grain::Day),
        before,
        "uncheckpointed_changes_are_lost_on_restart"
    );
    assert_eq!(
        s.last_checkpoint().unwrap().unwrap().offsets,
        vec![12, 23, 34]
    );
}

fn ranges_are_exact(h: &mut dyn Harness) {
    let s = h.open();
    let one = totals(s.as_ref(), P, D0 + 1, D0 + 1, Grain::Day);
    assert_eq!(one, vec![((D0 + 1) as i64, 2)], "ranges_are_exact: one day");
    let hours = totals(s.as_ref(), P, D0 + 1, D0 + 1, Grain::Hour);
    assert_eq!(
        hours,
        vec![(hour(D0 + 1, 23).0, 2)],
        "ranges_are_exact: its hours"
    );
    assert!(totals(s.as_ref(), P, D0 + 4, D0 + 19, Grain::Day).is_empty());
    assert!(
        totals(s.as_ref(), P, D0 + 2, D0 + 1, Grain::Day).is_empty(),
        "ranges_are_exact: a reversed range is empty, not an error"
    );
    assert!(totals(s.as_ref(), P, D0 + 2, D0 + 1, Grain::Hour).is_empty());
}

fn properties_are_isolated(h: &mut dyn Harness) {
    let s = h.open();
    write(s.as_ref(), OTHER, hour(D0 + 1, 3), 5);
    assert_eq!(
        totals(s.as_ref(), OTHER, D0 - 1, D0 + 5, Grain::Day),
        vec![((D0 + 1) as i64, 5)],
        "properties_are_isolated: the other property sees only its own"
    );
    assert_eq!(
        totals(s.as_ref(), P, D0 + 1, D0 + 1, Grain::Day),
        vec![((D0 + 1) as i64, 2)],
        "properties_are_isolated: the first property is unchanged"
    );
    assert_eq!(s.first_day(OTHER).unwrap(), Some(LocalDay(D0 + 1)));
    assert_eq!(s.first_day("FF-NONE").unwrap(), None);
}

fn readers_never_see_half_an_update(h: &mut dyn Harness) {
    let s = h.open();
    const DAY: i32 = D0 + 40;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let s = s.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut reads = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || reads == 0 {
                // Each update writes the two hours of a day with equal page views.
                let hours = totals(s.as_ref(), P, DAY, DAY, Grain::Hour);
                if let [(_, a), (_, b)] = hours.as_slice() {
                    assert_eq!(a, b, "readers_never_see_half_an_update");
                }
                reads += 1;
            }
            reads
        })
    };
    for _ in 0..2_000 {
        s.update(&mut |r| {
            for h in [hour(DAY, 1), hour(DAY, 2)] {
                let (hb, db) = r.property_mut(P).buckets_mut(h);
                hb.events.pageviews += 1;
                if let Some(d) = db {
                    d.events.pageviews += 1;
                }
            }
        });
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(reader.join().expect("reader") > 0);
}

fn remote_readers_see_checkpoints(h: &mut dyn Harness) {
    let Some(reader) = h.reader() else {
        return;
    };
    let s = h.open();
    const DAY: i32 = D0 + 50;
    let range = (D0 - 1, D0 + 60);
    let committed = totals(s.as_ref(), P, range.0, range.1, Grain::Day);
    assert_eq!(
        totals(reader.as_ref(), P, range.0, range.1, Grain::Day),
        committed,
        "remote_readers_see_checkpoints: the reader sees the last checkpoint"
    );
    assert_eq!(
        totals(reader.as_ref(), P, range.0, range.1, Grain::Hour),
        totals(s.as_ref(), P, range.0, range.1, Grain::Hour)
    );
    write(s.as_ref(), P, hour(DAY, 4), 7);
    assert_eq!(
        totals(reader.as_ref(), P, range.0, range.1, Grain::Day),
        committed,
        "remote_readers_see_checkpoints: nothing before a checkpoint"
    );
    let offsets = s
        .last_checkpoint()
        .unwrap()
        .map(|c| c.offsets)
        .unwrap_or_default();
    s.checkpoint(&offsets, &crate::state_bytes(b"state-remote"))
        .unwrap();
    let now = totals(reader.as_ref(), P, range.0, range.1, Grain::Day);
    assert_eq!(
        now.last(),
        Some(&(DAY as i64, 7)),
        "remote_readers_see_checkpoints: at once after it"
    );
    assert_eq!(reader.first_day(P).unwrap(), s.first_day(P).unwrap());
    // Twice more: the second read of an unchanged range is answered from a cache, and
    // a changed day is fetched again.
    assert_eq!(
        totals(reader.as_ref(), P, range.0, range.1, Grain::Day),
        now
    );
    write(s.as_ref(), P, hour(DAY, 5), 1);
    s.checkpoint(&offsets, &crate::state_bytes(b"state-remote-2"))
        .unwrap();
    let again = totals(reader.as_ref(), P, range.0, range.1, Grain::Day);
    assert_eq!(again.last(), Some(&(DAY as i64, 8)));
    let mut reader_minutes = Vec::new();
    reader
        .minutes(P, 0..=i64::MAX / 2, &mut |m| {
            reader_minutes = m.iter().map(|(k, v)| (*k, (*v).clone())).collect()
        })
        .unwrap();
    let mut writer_minutes = Vec::new();
    s.minutes(P, 0..=i64::MAX / 2, &mut |m| {
        writer_minutes = m.iter().map(|(k, v)| (*k, (*v).clone())).collect()
    })
    .unwrap();
    assert_eq!(
        reader_minutes, writer_minutes,
        "remote_readers_see_checkpoints: minutes"
    );

    // A scan gets the sections it asks for whole, also when the reader holds the day
    // with other sections only.
    fn add(b: &mut Bucket) {
        let p = b.pages.entry_ref("/pricing").or_default();
        p.pageviews += 3;
        p.visitors.insert(42);
        b.sources.entry_ref("news.example").or_default().visits += 1;
        b.filtered.insert("bot:test".into(), 2);
    }
    s.update(&mut |r| {
        let (hb, db) = r.property_mut(P).buckets_mut(hour(DAY, 6));
        add(hb);
        if let Some(d) = db {
            add(d);
        }
    });
    s.checkpoint(&offsets, &crate::state_bytes(b"state-remote-3"))
        .unwrap();
    let want = merged_day(s.as_ref(), P, DAY);
    assert_eq!(want.pages.len(), 1);
    let t = merged_sections(reader.as_ref(), P, DAY, Sections::TOTALS);
    assert_eq!(
        (&t.events, &t.visits),
        (&want.events, &want.visits),
        "remote_readers_see_checkpoints: totals alone"
    );
    let pages = merged_sections(reader.as_ref(), P, DAY, Sections::PAGES);
    assert_eq!(
        pages.pages, want.pages,
        "remote_readers_see_checkpoints: pages after totals"
    );
    let both = merged_sections(
        reader.as_ref(),
        P,
        DAY,
        Sections::SOURCES | Sections::FILTERED,
    );
    assert_eq!(
        (&both.sources, &both.filtered),
        (&want.sources, &want.filtered)
    );
    assert_eq!(
        merged_day(reader.as_ref(), P, DAY),
        want,
        "remote_readers_see_checkpoints: every section"
    );
}
