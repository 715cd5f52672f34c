//! The event log contract on a real Kafka-protocol broker: the one `scripts/kafka.sh`
//! starts, named by `FOOTFALL_TEST_KAFKA` (CI always sets it; without it the tests are
//! skipped loudly, and fail under CI).

use std::sync::Arc;
use std::time::{Duration, Instant};

use footfall_kafka::{KafkaLog, KafkaOptions};
use footfall_log::contract::append;
use footfall_log::EventLog;

fn broker(test: &str) -> Option<String> {
    match std::env::var("FOOTFALL_TEST_KAFKA") {
        Ok(b) => Some(b),
        Err(_) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("FOOTFALL_TEST_KAFKA is not set under CI: run the tests through scripts/test.sh")
        }
        Err(_) => {
            eprintln!("\n*** SKIPPED {test}: FOOTFALL_TEST_KAFKA is not set (scripts/kafka.sh start) ***\n");
            None
        }
    }
}

fn fresh_topic(brokers: &str, partitions: u32) -> KafkaOptions {
    let opts = KafkaOptions {
        brokers: brokers.to_string(),
        topic: format!("contract-{}-{}", std::process::id(), rand::random::<u32>()),
        delivery_timeout: Duration::from_secs(10),
        ..Default::default()
    };
    KafkaLog::create_topic(&opts, partitions, 1).expect("create the test topic");
    opts
}

struct Kafka(KafkaOptions);

impl footfall_log::contract::Harness for Kafka {
    fn open(&mut self) -> Arc<dyn EventLog> {
        Arc::new(KafkaLog::open(self.0.clone()).expect("open the Kafka log"))
    }
}

#[test]
fn event_log_contract_on_kafka() {
    let Some(b) = broker("event_log_contract_on_kafka") else {
        return;
    };
    footfall_log::contract::run(&mut Kafka(fresh_topic(&b, 3)));
}

/// A broker that does not answer fails the append within the delivery timeout — never
/// a hang, never an acknowledgement.
#[test]
fn an_unreachable_broker_fails_appends_in_time() {
    let opts = KafkaOptions {
        brokers: "127.0.0.1:1".into(),
        topic: "none".into(),
        delivery_timeout: Duration::from_millis(1500),
        ..Default::default()
    };
    let started = Instant::now();
    assert!(KafkaLog::open(opts).is_err(), "no metadata, no log");
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// A broker that goes away after the log opened: appends fail within the delivery
/// timeout (never a hang, never an acknowledgement) and the log reports itself
/// unhealthy. Runs a broker of its own so that it can kill it.
#[test]
fn a_broker_that_dies_fails_appends_in_time() {
    let Some(mut broker) =
        footfall_kafka::testing::Broker::start("a_broker_that_dies_fails_appends_in_time")
    else {
        return;
    };
    let mut opts = fresh_topic(&broker.address(), 2);
    opts.delivery_timeout = Duration::from_millis(2000);
    let log = KafkaLog::open(opts).expect("open");
    append(&log, vec![(0, b"before".to_vec())]).expect("an append while the broker lives");
    assert!(log.healthy());
    broker.kill();
    let started = Instant::now();
    let r = append(&log, vec![(1, b"during".to_vec())]);
    let took = started.elapsed();
    assert!(r.is_err(), "no acknowledgement without a broker");
    assert!(
        took < Duration::from_secs(5),
        "answered within the delivery timeout: {took:?}"
    );
    std::thread::sleep(Duration::from_millis(1100));
    assert!(!log.healthy(), "unhealthy without a broker");
}

/// Record batches of many messages read back through small fetches and small reads
/// (each read starting where the last one ended, often inside a batch): every record
/// comes back, in order, once.
#[test]
fn small_fetches_of_large_batches_skip_no_record() {
    let Some(b) = broker("small_fetches_of_large_batches_skip_no_record") else {
        return;
    };
    let mut opts = fresh_topic(&b, 1);
    // Appends made at once, with a linger: the producer packs many into one batch.
    opts.linger = Duration::from_millis(50);
    let writer = KafkaLog::open(opts.clone()).unwrap();
    let n = 600usize;
    let (tx, rx) = std::sync::mpsc::channel();
    for i in 0..n {
        let tx = tx.clone();
        let payload = format!("{i:06}{}", "x".repeat(400)).into_bytes();
        writer.append(
            vec![(0, payload)],
            Box::new(move |r| tx.send(r.map(|_| ())).unwrap()),
        );
    }
    for _ in 0..n {
        rx.recv_timeout(Duration::from_secs(20))
            .unwrap()
            .expect("appended");
    }
    // A reader whose fetches hold a few records each.
    let mut small = opts.clone();
    small.extra = vec![("fetch.message.max.bytes".into(), "2000".into())];
    let reader = KafkaLog::open(small).unwrap();
    // Read to the end by reading until nothing comes: tansu 0.6 reports a partition's
    // end as its last batch's first offset + 1 (docs/DISTRIBUTED.md).
    let mut seen = Vec::new();
    let mut at = reader.start_offset(0);
    loop {
        let recs = reader.read(0, at, 1500).unwrap();
        let Some(last) = recs.last() else { break };
        at = last.next;
        seen.extend(
            recs.iter()
                .map(|r| String::from_utf8_lossy(&r.payload[..6]).to_string()),
        );
    }
    let want: Vec<String> = (0..n).map(|i| format!("{i:06}")).collect();
    assert_eq!(seen.len(), n, "every record read once");
    assert_eq!(seen, want, "in order, none skipped");
}
