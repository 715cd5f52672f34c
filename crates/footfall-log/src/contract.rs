//! The [`EventLog`] contract as one test suite that every implementation runs against
//! itself (the file log in this crate's tests, Kafka in `footfall-kafka`'s), using the
//! trait only.

use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use crate::{EventLog, Offset, Record};

/// Opens logs of one implementation, all on the same storage (directory or topic),
/// which starts empty and has at least two partitions.
pub trait Harness {
    /// A log on the harness's storage; a second call after the first log was dropped
    /// is a restart (another process, for a broker).
    fn open(&mut self) -> Arc<dyn EventLog>;
}

/// Runs every check; panics with the check's name on the first failure.
pub fn run(h: &mut dyn Harness) {
    let log = h.open();
    assert!(log.partitions() >= 2, "the suite needs two partitions");
    let written = appends_are_read_back_in_order(log.as_ref());
    reads_start_where_asked(log.as_ref(), &written);
    reads_are_bounded(log.as_ref());
    bad_partitions_fail_the_append(log.as_ref());
    concurrent_appends_keep_each_partitions_order(log.clone());
    drop(log);
    records_survive_a_restart(h, &written);
}

/// Appends and waits for the answer.
pub fn append(log: &dyn EventLog, records: Vec<(u32, Vec<u8>)>) -> crate::Result<Vec<Offset>> {
    let (tx, rx) = mpsc::channel();
    log.append(
        records,
        Box::new(move |r| {
            let _ = tx.send(r);
        }),
    );
    rx.recv_timeout(Duration::from_secs(30))
        .expect("an append is answered")
}

/// Every record of `partition` from `from` to the end (polling briefly for records a
/// broker has not handed out yet).
pub fn read_all(log: &dyn EventLog, partition: u32, from: Offset, expect: usize) -> Vec<Record> {
    let mut out: Vec<Record> = Vec::new();
    let mut at = from;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while out.len() < expect && std::time::Instant::now() < deadline {
        let recs = log.read(partition, at, 64 * 1024).expect("read");
        if let Some(last) = recs.last() {
            at = last.next;
        }
        out.extend(recs);
    }
    out
}

fn payload(p: u32, i: usize) -> Vec<u8> {
    format!("p{p}-record-{i}-{}", "x".repeat(i % 50)).into_bytes()
}

fn appends_are_read_back_in_order(log: &dyn EventLog) -> Vec<Vec<Record>> {
    let g0 = log.generation();
    let start: Vec<Offset> = (0..2).map(|p| log.start_offset(p)).collect();
    let mut offsets: Vec<Vec<Offset>> = vec![Vec::new(), Vec::new()];
    for batch in 0..10 {
        let records: Vec<(u32, Vec<u8>)> = (0..20)
            .map(|i| ((i % 2) as u32, payload((i % 2) as u32, batch * 20 + i)))
            .collect();
        let got = append(log, records.clone()).expect("appends_are_read_back_in_order: append");
        assert_eq!(got.len(), records.len(), "one offset per record");
        for ((p, _), o) in records.iter().zip(got) {
            offsets[*p as usize].push(o);
        }
    }
    assert!(
        log.generation() > g0,
        "appends_are_read_back_in_order: generation moves"
    );
    let mut written = Vec::new();
    for p in 0..2u32 {
        let recs = read_all(log, p, start[p as usize], 100);
        assert_eq!(
            recs.len(),
            100,
            "appends_are_read_back_in_order: partition {p}"
        );
        let want: Vec<Vec<u8>> = (0..200)
            .filter(|i| (i % 20) % 2 == p as usize)
            .map(|i| payload(p, i))
            .collect();
        let got: Vec<Vec<u8>> = recs.iter().map(|r| r.payload.to_vec()).collect();
        assert_eq!(
            got, want,
            "appends_are_read_back_in_order: payloads in order"
        );
        let read_offsets: Vec<Offset> = recs.iter().map(|r| r.offset).collect();
        assert_eq!(
            read_offsets, offsets[p as usize],
            "offsets as the append gave them"
        );
        for w in recs.windows(2) {
            assert!(w[0].next <= w[1].offset && w[0].offset < w[0].next);
        }
        let end = recs.last().unwrap().next;
        assert!(
            log.end_offset(p) >= end,
            "end_offset is past every durable record"
        );
        assert!(
            log.read(p, end, 64 * 1024)
                .expect("read at the end")
                .is_empty(),
            "appends_are_read_back_in_order: nothing after the end"
        );
        // A reader past the last record has nothing to catch up; one at the first has.
        let nothing =
            |b: crate::Backlog| matches!(b, crate::Backlog::Bytes(0) | crate::Backlog::Messages(0));
        assert!(
            nothing(log.backlog(p, end)),
            "backlog at the end: {:?}",
            log.backlog(p, end)
        );
        assert!(
            !nothing(log.backlog(p, recs[0].offset)),
            "backlog at the first record: {:?}",
            log.backlog(p, recs[0].offset)
        );
        written.push(recs);
    }
    written
}

fn reads_start_where_asked(log: &dyn EventLog, written: &[Vec<Record>]) {
    for (p, recs) in written.iter().enumerate() {
        let mid = &recs[37];
        let from_mid = read_all(log, p as u32, mid.offset, recs.len() - 37);
        assert_eq!(
            from_mid.first().map(|r| r.offset),
            Some(mid.offset),
            "reads_start_where_asked"
        );
        assert_eq!(from_mid.len(), recs.len() - 37);
        // Backwards again: a reader may go back to any offset it was given.
        let again = read_all(log, p as u32, recs[3].offset, recs.len() - 3);
        assert_eq!(
            again.len(),
            recs.len() - 3,
            "reads_start_where_asked: going back"
        );
    }
}

fn reads_are_bounded(log: &dyn EventLog) {
    let start = log.start_offset(1);
    let mut got = Vec::new();
    for _ in 0..200 {
        got = log.read(1, start, 1).expect("read");
        if !got.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        !got.is_empty(),
        "reads_are_bounded: at least one record however small"
    );
    assert!(
        got.len() < 100,
        "reads_are_bounded: {} records for 1 byte",
        got.len()
    );
}

fn bad_partitions_fail_the_append(log: &dyn EventLog) {
    let r = append(
        log,
        vec![(0, b"ok".to_vec()), (log.partitions() + 5, b"no".to_vec())],
    );
    assert!(r.is_err(), "bad_partitions_fail_the_append");
    // The log goes on taking appends.
    append(log, vec![(0, b"after".to_vec())]).expect("bad_partitions_fail_the_append: next");
}

fn concurrent_appends_keep_each_partitions_order(log: Arc<dyn EventLog>) {
    let before: Vec<Offset> = (0..2).map(|p| log.end_offset(p)).collect();
    let threads: Vec<_> = (0..4u32)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                for i in 0..50 {
                    let recs = vec![
                        (t % 2, format!("t{t}-{i}-a").into_bytes()),
                        (t % 2, format!("t{t}-{i}-b").into_bytes()),
                    ];
                    append(log.as_ref(), recs).expect("concurrent append");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    for p in 0..2u32 {
        let recs = read_all(log.as_ref(), p, before[p as usize], 200);
        let texts: Vec<String> = recs
            .iter()
            .map(|r| String::from_utf8_lossy(&r.payload).into_owned())
            .filter(|s| s.starts_with('t'))
            .collect();
        assert_eq!(texts.len(), 200, "concurrent_appends: every record once");
        for t in (0..4u32).filter(|t| t % 2 == p) {
            let mine: Vec<&String> = texts
                .iter()
                .filter(|s| s.starts_with(&format!("t{t}-")))
                .collect();
            let want: Vec<String> = (0..50)
                .flat_map(|i| [format!("t{t}-{i}-a"), format!("t{t}-{i}-b")])
                .collect();
            assert_eq!(
                mine.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
                want.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
                "concurrent_appends_keep_each_partitions_order: thread {t}"
            );
        }
        // One append's records to a partition are contiguous.
        for w in texts.windows(2) {
            if w[0].ends_with("-a") {
                assert_eq!(
                    w[1],
                    w[0].replace("-a", "-b"),
                    "one append's records together"
                );
            }
        }
    }
}

fn records_survive_a_restart(h: &mut dyn Harness, written: &[Vec<Record>]) {
    let log = h.open();
    for (p, recs) in written.iter().enumerate() {
        // Empty means "at the end": a fresh reader's first read of records that exist
        // returns some (however long the broker takes to send them).
        assert!(
            !log.read(p as u32, recs[0].offset, 64 * 1024)
                .expect("read")
                .is_empty(),
            "records_survive_a_restart: the first read after a restart is not empty"
        );
        let again = read_all(log.as_ref(), p as u32, recs[0].offset, recs.len());
        assert_eq!(
            again[..recs.len()],
            recs[..],
            "records_survive_a_restart: partition {p}"
        );
    }
    append(log.as_ref(), vec![(1, b"after restart".to_vec())])
        .expect("records_survive_a_restart: appends go on");
}
