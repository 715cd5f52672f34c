//! [`EventLog`] on the Kafka protocol (Apache Kafka, Redpanda, tansu, or any compatible
//! broker), through librdkafka.
//!
//! - **Append**: the records of one call that go to one partition (chosen by the
//!   collector, by visitor, as with the embedded log) are packed into one message, a
//!   [`frame`], and produced by an idempotent producer with `acks=all`, so a broker
//!   retry neither duplicates nor reorders a partition's records. The append's callback
//!   gets `Ok` only when the broker acknowledged every message of the call; a message
//!   the broker did not take within `delivery_timeout` fails the whole call, and the
//!   collector answers 503 (the client retries; records of the call that did land are
//!   counted again, as with any at-least-once collector).
//! - **Read**: one consumer per partition, assigned by hand at the offset asked for (no
//!   consumer group: which node processes which partition is decided above the log).
//!   Consumers see only records replicated to every in-sync replica, so a record is
//!   readable only once it is durable. A record's offset is its message's Kafka offset
//!   and its index in the frame ([`frame::offset`]); a read returns whole frames (the
//!   first one from the record asked for), so it may pass `max_bytes` by one frame.
//!   Offsets are contiguous (no compaction, no transactions), so a reader that is
//!   handed a record past the one it expects knows the broker skipped some and fetches
//!   them again rather than reading on ([`KafkaLog::read`]).
//! - **Retention** is the topic's (`retention.ms`, `retention.bytes` on the broker):
//!   `enforce_retention` deletes nothing. Set the topic's retention longer than the
//!   processor and archiver can fall behind.

pub mod frame;
pub mod testing;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use footfall_log::{AppendCallback, Error, EventLog, Offset, Record, Result};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Message, Offset as KOffset, TopicPartitionList};

/// How the log reaches its broker and batches what it sends.
#[derive(Debug, Clone)]
pub struct KafkaOptions {
    /// `host:port[,host:port…]`.
    pub brokers: String,
    pub topic: String,
    /// How long the producer waits to fill a batch (librdkafka `linger.ms`): more
    /// means fewer, larger requests, and that much more latency per acknowledgement.
    /// A request's events are one message per partition already, so 0 (the default)
    /// measured best: 352–404k events/s against 269–311k with 1 ms.
    pub linger: Duration,
    /// Largest batch per partition request (`batch.size`).
    pub batch_bytes: usize,
    /// `none`, `gzip`, `snappy` or `lz4` (`compression.type`).
    pub compression: String,
    /// A record not acknowledged by the broker within this fails its append
    /// (`message.timeout.ms`): the collector answers 503 inside its request timeout.
    pub delivery_timeout: Duration,
    /// How long the broker may hold a fetch that has nothing to return yet
    /// (`fetch.wait.max.ms`). With tansu 0.6 it also bounds how fast a partition is
    /// read back (see docs/DISTRIBUTED.md), so the cluster script sets 10 ms.
    pub fetch_wait: Duration,
    /// Extra librdkafka settings (`security.protocol`, `sasl.*`, …).
    pub extra: Vec<(String, String)>,
}

impl Default for KafkaOptions {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            topic: "footfall-events".into(),
            linger: Duration::ZERO,
            batch_bytes: 1 << 20,
            compression: "lz4".into(),
            delivery_timeout: Duration::from_secs(5),
            fetch_wait: Duration::from_millis(100),
            extra: Vec::new(),
        }
    }
}

/// One append call waiting for its records' acknowledgements.
struct Pending {
    remaining: AtomicUsize,
    /// Per message produced: its partition and the indices of the call's records in it.
    frames: Vec<(u32, Vec<usize>)>,
    seen_end: Arc<Vec<AtomicU64>>,
    offsets: Mutex<Vec<Offset>>,
    error: Mutex<Option<String>>,
    done: Mutex<Option<AppendCallback>>,
    generation: Arc<AtomicU64>,
    healthy: Arc<AtomicBool>,
    deadline: Instant,
}

impl Pending {
    /// Fails the append now if it is still waiting past its deadline: librdkafka's own
    /// timeout (`message.timeout.ms`) is checked lazily and was seen to answer 9 s late
    /// for a 2 s setting after a broker died. Acknowledgements that arrive later change
    /// nothing (the client was told 503 and retries).
    fn expire(&self, now: Instant) -> bool {
        if now < self.deadline {
            return false;
        }
        if let Some(done) = self.done.lock().unwrap().take() {
            self.healthy.store(false, Ordering::Relaxed);
            done(Err(Error::Unavailable(
                "the broker did not acknowledge in time".into(),
            )));
        }
        true
    }

    /// Message `index` of the call was acknowledged at Kafka offset `r`, or failed.
    fn message_done(&self, index: usize, r: std::result::Result<i64, String>) {
        match r {
            Ok(o) => {
                let (partition, records) = &self.frames[index];
                let mut offsets = self.offsets.lock().unwrap();
                for (j, &i) in records.iter().enumerate() {
                    offsets[i] = frame::offset(o, j);
                }
                self.seen_end[*partition as usize].fetch_max(o as u64 + 1, Ordering::Relaxed);
            }
            Err(e) => {
                self.error.lock().unwrap().get_or_insert(e);
            }
        }
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            let result = match self.error.lock().unwrap().take() {
                Some(e) => Err(Error::Unavailable(format!(
                    "the broker did not acknowledge: {e}"
                ))),
                None => {
                    self.generation.fetch_add(1, Ordering::Release);
                    self.healthy.store(true, Ordering::Relaxed);
                    Ok(std::mem::take(&mut *self.offsets.lock().unwrap()))
                }
            };
            if let Some(done) = self.done.lock().unwrap().take() {
                done(result);
            }
        }
    }
}

/// The producer's context: routes each acknowledgement to its append.
struct Delivery;

impl ClientContext for Delivery {}

impl ProducerContext for Delivery {
    type DeliveryOpaque = Box<(Arc<Pending>, usize)>;

    fn delivery(&self, r: &DeliveryResult<'_>, opaque: Self::DeliveryOpaque) {
        let (pending, index) = *opaque;
        match r {
            Ok(m) => pending.message_done(index, Ok(m.offset())),
            Err((e, _)) => {
                pending.healthy.store(false, Ordering::Relaxed);
                pending.message_done(index, Err(e.to_string()))
            }
        }
    }
}

struct Reader {
    consumer: BaseConsumer,
    /// The offset the consumer will hand out next (-1: not assigned yet).
    position: i64,
    /// How far back the last re-fetch after a gap went (0: none since the last record
    /// in sequence; see [`KafkaLog::read`]).
    rewound: i64,
    /// No record was taken since the caller's last assignment (for the log line).
    assigned: bool,
    /// When the records expected next were first found missing (see [`KafkaLog::read`]).
    gap_since: Option<Instant>,
}

fn assign(c: &BaseConsumer, topic: &str, partition: u32, at: i64) -> Result<()> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition as i32, KOffset::Offset(at))
        .map_err(io_error)?;
    c.assign(&tpl).map_err(io_error)
}

pub struct KafkaLog {
    opts: KafkaOptions,
    partitions: u32,
    producer: ThreadedProducer<Delivery>,
    send_lock: Mutex<()>,
    readers: Vec<Mutex<Option<Reader>>>,
    /// For watermarks and health: a consumer that never consumes.
    probe: BaseConsumer,
    generation: Arc<AtomicU64>,
    healthy: Arc<AtomicBool>,
    last_probe: Mutex<Option<Instant>>,
    /// Appends waiting for acknowledgements, swept by the deadline thread.
    waiting: Arc<Mutex<Vec<std::sync::Weak<Pending>>>>,
    stop_sweeper: Arc<AtomicBool>,
    /// Per partition, past the last message this process appended or read (a Kafka
    /// offset). Some
    /// brokers (tansu 0.6) report a high watermark one past the last *batch's* first
    /// offset; the end is the larger of the two.
    seen_end: Arc<Vec<AtomicU64>>,
    end_cache: Vec<Mutex<(Option<Instant>, i64)>>,
}

fn client_config(opts: &KafkaOptions) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &opts.brokers);
    for (k, v) in &opts.extra {
        c.set(k, v);
    }
    c
}

fn consumer(opts: &KafkaOptions) -> Result<BaseConsumer> {
    client_config(opts)
        .set("group.id", "footfall-log-reader")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", opts.fetch_wait.as_millis().to_string())
        .create()
        .map_err(io_error)
}

fn io_error(e: KafkaError) -> Error {
    Error::Io(std::io::Error::other(e.to_string()))
}

/// How far back a reader fetches again after the broker skipped records, at most.
const MAX_REWIND: i64 = 4096;

/// How long a reader keeps fetching records the broker skipped before it reads on
/// without them (an error in the log); a processor's partition stalls meanwhile.
const GAP_PATIENCE: Duration = Duration::from_secs(30);

/// How long a read waits for records the broker has but has not sent yet.
const READ_WAIT: Duration = Duration::from_secs(5);

/// How old a partition's end may be when a read at it answers "nothing more": bounds
/// the watermark requests of an idle reader to a few a second.
const END_MAX_AGE: Duration = Duration::from_millis(100);

/// How long metadata and watermark requests may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

impl KafkaLog {
    /// Connects to the brokers and reads the topic's partition count. The topic must
    /// exist (created with the number of partitions wanted; `scripts/cluster.sh` does).
    pub fn open(opts: KafkaOptions) -> Result<Self> {
        let probe = consumer(&opts)?;
        let md = probe
            .fetch_metadata(Some(&opts.topic), REQUEST_TIMEOUT)
            .map_err(io_error)?;
        let partitions = md
            .topics()
            .iter()
            .find(|t| t.name() == opts.topic)
            .filter(|t| t.error().is_none())
            .map(|t| t.partitions().len() as u32)
            .unwrap_or(0);
        if partitions == 0 {
            return Err(Error::Io(std::io::Error::other(format!(
                "topic `{}` does not exist on {} (create it with the partitions wanted)",
                opts.topic, opts.brokers
            ))));
        }
        let producer: ThreadedProducer<Delivery> = client_config(&opts)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", opts.linger.as_millis().to_string())
            .set("batch.size", opts.batch_bytes.to_string())
            .set("compression.type", &opts.compression)
            .set(
                "message.timeout.ms",
                opts.delivery_timeout.as_millis().to_string(),
            )
            .create_with_context(Delivery)
            .map_err(io_error)?;
        let waiting: Arc<Mutex<Vec<std::sync::Weak<Pending>>>> = Arc::default();
        let stop_sweeper = Arc::new(AtomicBool::new(false));
        {
            let (waiting, stop) = (waiting.clone(), stop_sweeper.clone());
            std::thread::Builder::new()
                .name("kafka-deadlines".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(50));
                        let now = Instant::now();
                        waiting.lock().unwrap().retain(|w| match w.upgrade() {
                            Some(p) => !p.expire(now),
                            None => false,
                        });
                    }
                })
                .map_err(Error::Io)?;
        }
        Ok(Self {
            waiting,
            stop_sweeper,
            partitions,
            producer,
            send_lock: Mutex::new(()),
            readers: (0..partitions).map(|_| Mutex::new(None)).collect(),
            probe,
            generation: Arc::new(AtomicU64::new(0)),
            healthy: Arc::new(AtomicBool::new(true)),
            last_probe: Mutex::new(None),
            seen_end: Arc::new((0..partitions).map(|_| AtomicU64::new(0)).collect()),
            end_cache: (0..partitions).map(|_| Mutex::new((None, 0))).collect(),
            opts,
        })
    }

    fn watermarks(&self, partition: u32) -> Option<(i64, i64)> {
        match self
            .probe
            .fetch_watermarks(&self.opts.topic, partition as i32, REQUEST_TIMEOUT)
        {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, partition, "kafka watermarks unavailable");
                self.healthy.store(false, Ordering::Relaxed);
                None
            }
        }
    }

    /// Creates the topic with `partitions` partitions, each kept on `replicas` brokers;
    /// an existing topic is left as it is.
    pub fn create_topic(opts: &KafkaOptions, partitions: u32, replicas: u32) -> Result<()> {
        use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        use rdkafka::types::RDKafkaErrorCode;
        let admin: AdminClient<rdkafka::client::DefaultClientContext> =
            client_config(opts).create().map_err(io_error)?;
        let topic = NewTopic::new(
            &opts.topic,
            partitions as i32,
            TopicReplication::Fixed(replicas as i32),
        );
        let results = futures_executor::block_on(admin.create_topics(
            [&topic],
            &AdminOptions::new().operation_timeout(Some(REQUEST_TIMEOUT)),
        ))
        .map_err(io_error)?;
        for r in results {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(Error::Io(std::io::Error::other(format!(
                        "creating topic {name}: {code}"
                    ))))
                }
            }
        }
        Ok(())
    }

    /// The partition's end as last asked of the broker (at most [`END_MAX_AGE`] ago),
    /// or as far as this process has appended or read, whichever is later.
    fn known_end(&self, partition: u32) -> i64 {
        let mut cached = self.end_cache[partition as usize].lock().unwrap();
        if cached.0.is_none_or(|t| t.elapsed() > END_MAX_AGE) {
            if let Some((_, high)) = self.watermarks(partition) {
                *cached = (Some(Instant::now()), high);
            }
        }
        let seen = self.seen_end[partition as usize].load(Ordering::Relaxed) as i64;
        cached.1.max(seen)
    }

    /// Waits until every record produced so far is acknowledged (or failed).
    pub fn flush(&self, timeout: Duration) {
        let _ = self.producer.flush(timeout);
    }
}

impl EventLog for KafkaLog {
    fn partitions(&self) -> u32 {
        self.partitions
    }

    fn append(&self, records: Vec<(u32, Vec<u8>)>, done: AppendCallback) {
        if records.is_empty() {
            done(Ok(Vec::new()));
            return;
        }
        if let Some((p, _)) = records.iter().find(|(p, _)| *p >= self.partitions) {
            done(Err(Error::NoSuchPartition(*p)));
            return;
        }
        let frames = frame::pack(&records, self.partitions);
        drop(records);
        let pending = Arc::new(Pending {
            remaining: AtomicUsize::new(frames.len()),
            frames: frames
                .iter()
                .map(|f| (f.partition, f.records.clone()))
                .collect(),
            seen_end: self.seen_end.clone(),
            offsets: Mutex::new(vec![0; frames.iter().map(|f| f.records.len()).sum()]),
            error: Mutex::new(None),
            done: Mutex::new(Some(done)),
            generation: self.generation.clone(),
            healthy: self.healthy.clone(),
            deadline: Instant::now() + self.opts.delivery_timeout,
        });
        self.waiting.lock().unwrap().push(Arc::downgrade(&pending));
        // One call's messages are queued together, so that its records stay
        // contiguous in each partition (the contract) when collectors append
        // concurrently and a partition's records fill more than one frame.
        let _queued_together = self.send_lock.lock().unwrap();
        for (i, f) in frames.iter().enumerate() {
            let record = BaseRecord::<(), [u8], _>::with_opaque_to(
                &self.opts.topic,
                Box::new((pending.clone(), i)),
            )
            .partition(f.partition as i32)
            .payload(f.body.as_slice());
            if let Err((e, rejected)) = self.producer.send(record) {
                // Not queued (queue full, message too large…): this message fails now,
                // and with it the call.
                let (pending, index) = *rejected.delivery_opaque;
                pending.message_done(index, Err(e.to_string()));
            }
        }
    }

    fn end_offset(&self, partition: u32) -> Offset {
        let seen = &self.seen_end[partition as usize];
        if let Some((_, high)) = self.watermarks(partition) {
            seen.fetch_max(high.max(0) as u64, Ordering::Relaxed);
        }
        frame::offset(seen.load(Ordering::Relaxed) as i64, 0)
    }

    fn backlog(&self, partition: u32, from: Offset) -> footfall_log::Backlog {
        // A message partly read counts as behind: its remaining events are.
        let end = frame::split(self.end_offset(partition)).0;
        let (at, _) = frame::split(from);
        footfall_log::Backlog::Messages(end.saturating_sub(at).max(0) as u64)
    }

    fn start_offset(&self, partition: u32) -> Offset {
        let low = self
            .watermarks(partition)
            .map(|(low, _)| low.max(0))
            .unwrap_or(0);
        frame::offset(low, 0)
    }

    fn read(&self, partition: u32, from: Offset, max_bytes: usize) -> Result<Vec<Record>> {
        let slot = self
            .readers
            .get(partition as usize)
            .ok_or(Error::NoSuchPartition(partition))?;
        let mut slot = slot.lock().unwrap();
        if slot.is_none() {
            *slot = Some(Reader {
                consumer: consumer(&self.opts)?,
                position: -1,
                rewound: 0,
                assigned: false,
                gap_since: None,
            });
        }
        let reader = slot.as_mut().expect("set above");
        let (from, mut skip) = frame::split(from);
        if reader.position != from {
            assign(&reader.consumer, &self.opts.topic, partition, from)?;
            reader.position = from;
            reader.rewound = 0;
            reader.assigned = true;
            reader.gap_since = None;
        }
        let mut out = Vec::new();
        let mut bytes = 0usize;
        // Wait briefly for the first record; take what else is already fetched. Empty
        // means "at the end" (the contract), so with nothing fetched yet, the partition's
        // end decides whether to keep waiting for records the broker has.
        let mut wait = Duration::from_millis(20);
        let mut deadline: Option<Instant> = None;
        while bytes < max_bytes {
            let Some(m) = reader.consumer.poll(wait) else {
                if !out.is_empty() {
                    break;
                }
                let end = self.known_end(partition);
                if reader.position >= end {
                    break;
                }
                let d = *deadline.get_or_insert_with(|| Instant::now() + READ_WAIT);
                if Instant::now() >= d {
                    break; // the broker is slow: the caller asks again
                }
                wait = Duration::from_millis(20);
                continue;
            };
            wait = Duration::ZERO;
            let m = m.map_err(io_error)?;
            let offset = m.offset();
            if offset < reader.position {
                continue; // before the offset asked for (a batch's start, a rewind)
            }
            if offset > reader.position {
                // Footfall's topic has no compaction and no transactions, so offsets
                // are contiguous and a record past the one expected means the broker
                // skipped some. tansu 0.6 does, two ways: it answers a fetch from the
                // middle of a batch with the next batch, and it advances a
                // partition's end before it stores the batch that end covers, so a
                // fetch at the end can return a later batch (another producer's)
                // without the one being stored — which the consumer would never ask
                // for again. So: fetch again from further back (4× further each time,
                // up to MAX_REWIND), keeping only what is at or past the expected
                // offset, until the missing records come. A gap is accepted only
                // where records are gone by retention, or after GAP_PATIENCE.
                let since = *reader.gap_since.get_or_insert_with(Instant::now);
                let retained = self
                    .watermarks(partition)
                    .is_none_or(|(low, _)| reader.position >= low);
                if retained && since.elapsed() < GAP_PATIENCE {
                    reader.rewound = (reader.rewound * 4)
                        .clamp(64, MAX_REWIND)
                        .min(reader.position);
                    tracing::info!(
                        partition,
                        expected = reader.position,
                        got = offset,
                        after_assignment = reader.assigned,
                        "the broker skipped records; fetching again from further back"
                    );
                    assign(
                        &reader.consumer,
                        &self.opts.topic,
                        partition,
                        reader.position - reader.rewound,
                    )?;
                    wait = Duration::from_millis(20);
                    continue;
                }
                if retained {
                    tracing::error!(
                        partition,
                        expected = reader.position,
                        got = offset,
                        "the broker has not sent these records for {GAP_PATIENCE:?}; reading on without them"
                    );
                } else {
                    tracing::warn!(
                        partition,
                        expected = reader.position,
                        got = offset,
                        "records before the log's start are gone (retention); reading on"
                    );
                }
            }
            reader.gap_since = None;
            reader.rewound = 0;
            reader.assigned = false;
            // One copy per message; the records are slices of it.
            let body = bytes::Bytes::copy_from_slice(m.payload().unwrap_or_default());
            let Some(records) = frame::unpack(&body) else {
                return Err(Error::Corrupt {
                    partition,
                    offset: frame::offset(offset, 0),
                });
            };
            bytes += body.len();
            reader.position = offset + 1;
            self.seen_end[partition as usize].fetch_max((offset + 1) as u64, Ordering::Relaxed);
            let last = records.len().saturating_sub(1);
            for (j, payload) in records.into_iter().enumerate().skip(skip) {
                out.push(Record {
                    offset: frame::offset(offset, j),
                    next: if j == last {
                        frame::offset(offset + 1, 0)
                    } else {
                        frame::offset(offset, j + 1)
                    },
                    payload,
                });
            }
            skip = 0;
        }
        Ok(out)
    }

    fn wait_for_append(&self, seen_generation: u64, timeout: Duration) -> u64 {
        // Appends by other processes are not seen here: a short pause, then the
        // processor polls the broker again (a read itself waits for new records).
        let g = self.generation.load(Ordering::Acquire);
        if g == seen_generation {
            std::thread::sleep(timeout.min(Duration::from_millis(10)));
        }
        g.max(seen_generation + 1)
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn enforce_retention(
        &self,
        _safe: &[Offset],
        _max_age: Duration,
        _max_bytes: u64,
    ) -> Result<u64> {
        Ok(0)
    }

    fn healthy(&self) -> bool {
        // Asked by readiness probes: at most one metadata request a second.
        let mut last = self.last_probe.lock().unwrap();
        if last.is_none_or(|t| t.elapsed() > Duration::from_secs(1)) {
            *last = Some(Instant::now());
            let ok = self
                .probe
                .fetch_metadata(Some(&self.opts.topic), Duration::from_secs(2))
                .is_ok();
            self.healthy.store(ok, Ordering::Relaxed);
        }
        self.healthy.load(Ordering::Relaxed)
    }

    fn retained_bytes(&self) -> u64 {
        0
    }
}

impl Drop for KafkaLog {
    fn drop(&mut self) {
        self.flush(Duration::from_secs(5));
        self.stop_sweeper.store(true, Ordering::Relaxed);
    }
}
