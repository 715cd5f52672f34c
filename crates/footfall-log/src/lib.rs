//! The durable, partitioned event log: the seam between collectors and everything that
//! consumes accepted events (processor, archiver).
//!
//! [`EventLog`] is the contract; [`FileLog`] is the embedded implementation (segment
//! files on local disk, one directory per partition). A Kafka-protocol implementation
//! satisfies the same contract at scale. This crate knows nothing about events: records
//! are opaque bytes.

pub mod contract;
mod file;

pub use file::{FileLog, FileLogOptions};

use std::time::Duration;

/// Position of a record inside one partition. Offsets grow strictly with each record
/// but are not contiguous (the embedded log uses byte positions); consumers must only
/// store offsets the log gave them.
pub type Offset = u64;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A write or fsync failed earlier. The log refuses every append from then on rather
    /// than acknowledge data it may not have kept; restart to recover.
    #[error("log is poisoned after an I/O failure: {0}")]
    Poisoned(String),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("record of {0} bytes exceeds the maximum of {1}")]
    RecordTooLarge(usize, usize),
    #[error("partition {0} does not exist")]
    NoSuchPartition(u32),
    #[error("offset {offset} of partition {partition} is no longer retained (first is {first})")]
    OffsetNotRetained {
        partition: u32,
        offset: Offset,
        first: Offset,
    },
    #[error("corrupt record at offset {offset} of partition {partition}")]
    Corrupt { partition: u32, offset: Offset },
    #[error("log is closed")]
    Closed,
    /// A remote log (a broker) did not take the records in time; later appends may
    /// succeed (unlike [`Error::Poisoned`]).
    #[error("log unavailable: {0}")]
    Unavailable(String),
    #[error("not supported: {0}")]
    Unsupported(String),
}

/// One record read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub offset: Offset,
    /// Offset of the record that follows this one.
    pub next: Offset,
    /// A slice of the buffer the batch was read into (no copy per record).
    pub payload: bytes::Bytes,
}

/// Called once when an append has become durable (or has failed).
pub type AppendCallback = Box<dyn FnOnce(Result<Vec<Offset>>) + Send + 'static>;

/// A durable, partitioned, append-only log of opaque records.
///
/// Contract:
/// - **Durable**: when `append`'s callback receives `Ok(offsets)`, every record of that
///   call is on stable storage (fsynced) and will be returned by `read` after any crash
///   or restart, at the offset given, until retention removes it. On `Err`, none of the
///   records may be assumed kept (some may be; consumers see them as normal records).
/// - **Order**: within a partition, records are read back in append order; records of
///   one `append` call to the same partition are contiguous.
/// - **Visible**: a record is returned by `read` only once it is durable; `end_offset`
///   is the offset after the last durable record.
/// - **Failure**: after a failed write or fsync, the log is poisoned: every later append
///   fails with [`Error::Poisoned`] and `healthy()` is false. It never acknowledges a
///   record it could not make durable. Except a full disk: a write refused for want of
///   space, taken back cleanly before any fsync, fails its appends with
///   [`Error::Unavailable`] and leaves `healthy()` false until an append succeeds again
///   (each append tries), so the log recovers by itself when space returns.
/// - **Retention** only removes records below the `safe` offsets given by consumers.
pub trait EventLog: Send + Sync + 'static {
    fn partitions(&self) -> u32;

    /// Appends `(partition, payload)` records; `done` is called from a log thread.
    fn append(&self, records: Vec<(u32, Vec<u8>)>, done: AppendCallback);

    /// Offset after the last durable record of `partition`.
    fn end_offset(&self, partition: u32) -> Offset;

    /// First retained offset of `partition`.
    fn start_offset(&self, partition: u32) -> Offset;

    /// How far a reader at `from` is behind the end of `partition`, in the log's own
    /// unit: bytes where offsets are byte positions (this crate's file log), messages on
    /// a broker. For a processor's lag on /metrics.
    fn backlog(&self, partition: u32, from: Offset) -> Backlog {
        Backlog::Bytes(self.end_offset(partition).saturating_sub(from))
    }

    /// Reads durable records of `partition` starting at `from` (which must be an offset
    /// the log returned, or `start_offset`, or `end_offset`), up to about `max_bytes`.
    /// Returns an empty vector at the end.
    fn read(&self, partition: u32, from: Offset, max_bytes: usize) -> Result<Vec<Record>>;

    /// Blocks until new records may be readable, or `timeout` passes.
    fn wait_for_append(&self, seen_generation: u64, timeout: Duration) -> u64;

    /// A counter that grows whenever records become durable.
    fn generation(&self) -> u64;

    /// Deletes whole segments that lie entirely below `safe[partition]` and are older
    /// than `max_age` or beyond `max_bytes` per partition. Returns bytes freed.
    fn enforce_retention(&self, safe: &[Offset], max_age: Duration, max_bytes: u64) -> Result<u64>;

    /// Erases the records of `partition` at `offsets` (each the offset of a durable
    /// record): their payloads become zeros of the same length, durably, so that every
    /// offset stays where it was. Readers then get all-zero payloads for them (the event
    /// format reads a zero first byte as "erased"). Offsets no longer retained are
    /// skipped. Answers how many records were erased. For deleting a visitor's or a
    /// property's data; call it only for records every consumer has passed (a reader at
    /// such a record at the same moment may see it half rewritten). Logs that cannot
    /// rewrite records (a broker's topic) answer [`Error::Unsupported`].
    fn erase(&self, partition: u32, offsets: &[Offset]) -> Result<u64> {
        let _ = (partition, offsets);
        Err(Error::Unsupported(
            "this log cannot rewrite records; they expire with its retention".into(),
        ))
    }

    /// False once poisoned.
    fn healthy(&self) -> bool;

    /// Bytes retained, summed over partitions.
    fn retained_bytes(&self) -> u64;
}

/// What [`EventLog::backlog`] measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backlog {
    Bytes(u64),
    Messages(u64),
}

/// Calls `f` for every durable record of `partition` with `from <= offset < until`, in
/// order, reading `batch_bytes` at a time.
pub fn for_each_record(
    log: &dyn EventLog,
    partition: u32,
    from: Offset,
    until: Offset,
    batch_bytes: usize,
    mut f: impl FnMut(&Record),
) -> Result<()> {
    let mut at = from;
    while at < until {
        let recs = log.read(partition, at, batch_bytes)?;
        if recs.is_empty() {
            break;
        }
        for r in &recs {
            if r.offset >= until {
                return Ok(());
            }
            at = r.next;
            f(r);
        }
    }
    Ok(())
}

/// Stable partition choice: records of one key always go to the same partition.
pub fn partition_for(key: u64, partitions: u32) -> u32 {
    // Fibonacci hashing spreads keys that differ only in high or low bits.
    ((key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) % partitions as u64) as u32
}

/// The offsets below which every consumer is done, per partition: the minimum over
/// consumers (the processor's checkpointed offsets, the archiver's sealed ones…).
/// Retention deletes only below these. A consumer that lists no partitions (not
/// started yet) holds everything back.
pub fn safe_to_delete(consumers: &[Vec<Offset>]) -> Vec<Offset> {
    let Some(n) = consumers.iter().map(Vec::len).max() else {
        return Vec::new();
    };
    (0..n)
        .map(|p| {
            consumers
                .iter()
                .map(|c| c.get(p).copied().unwrap_or(0))
                .min()
                .unwrap_or(0)
        })
        .collect()
}

/// One partition of a log, seen as a log of one partition (partition 0), for a consumer
/// that owns only that partition (a processor of a cluster). Appends are refused: this
/// view is for reading.
pub struct OnePartition {
    inner: std::sync::Arc<dyn EventLog>,
    partition: u32,
}

impl OnePartition {
    pub fn new(inner: std::sync::Arc<dyn EventLog>, partition: u32) -> Self {
        Self { inner, partition }
    }

    fn check(&self, partition: u32) -> Result<()> {
        if partition == 0 {
            Ok(())
        } else {
            Err(Error::NoSuchPartition(partition))
        }
    }
}

impl EventLog for OnePartition {
    fn partitions(&self) -> u32 {
        1
    }

    fn append(&self, _records: Vec<(u32, Vec<u8>)>, done: AppendCallback) {
        done(Err(Error::Closed));
    }

    fn end_offset(&self, partition: u32) -> Offset {
        if partition == 0 {
            self.inner.end_offset(self.partition)
        } else {
            0
        }
    }

    fn start_offset(&self, partition: u32) -> Offset {
        if partition == 0 {
            self.inner.start_offset(self.partition)
        } else {
            0
        }
    }

    fn backlog(&self, partition: u32, from: Offset) -> Backlog {
        if partition == 0 {
            self.inner.backlog(self.partition, from)
        } else {
            Backlog::Bytes(0)
        }
    }

    fn read(&self, partition: u32, from: Offset, max_bytes: usize) -> Result<Vec<Record>> {
        self.check(partition)?;
        self.inner.read(self.partition, from, max_bytes)
    }

    fn wait_for_append(&self, seen_generation: u64, timeout: Duration) -> u64 {
        self.inner.wait_for_append(seen_generation, timeout)
    }

    fn generation(&self) -> u64 {
        self.inner.generation()
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
        self.inner.healthy()
    }

    fn retained_bytes(&self) -> u64 {
        0
    }
}

#[cfg(test)]
mod retention_tests {
    #[test]
    fn safe_offsets_are_the_slowest_consumers() {
        use super::safe_to_delete as s;
        assert_eq!(s(&[vec![10, 20], vec![15, 5]]), vec![10, 5]);
        assert_eq!(s(&[vec![10, 20], vec![]]), vec![0, 0]);
        assert_eq!(s(&[]), Vec::<u64>::new());
    }
}
