//! The serving store for processed metrics: the rollup model, unique counting, and the
//! [`RollupStore`] seam between the processor (the only writer) and the query API.
//!
//! The embedded implementation, [`SnapshotStore`], keeps rollups in memory and makes
//! them durable as atomic checkpoints together with the processor's log offsets and
//! session state — the way a stream processor checkpoints its state. A PostgreSQL
//! implementation satisfies the same contract at scale. This crate must never read the
//! log or know how events are sessionised.

pub mod hll;
pub mod maps;
pub mod rollup;
mod snapshot;

pub use hll::{CountingHll, Hll};
pub use maps::{IdMap, IdSet, KeyMap};
pub use rollup::{
    Bucket, EventStats, LocalDay, LocalHour, MinuteStats, PropertyRollup, Rollups, VisitKey,
    VisitStats, SEP, VISIT_FIELDS,
};
pub use snapshot::SnapshotStore;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("checkpoint {0} is corrupt: {1}")]
    Corrupt(String, String),
}

/// What was durable together at the last checkpoint.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Checkpoint {
    /// Per log partition: the offset of the first record not yet reflected.
    pub offsets: Vec<u64>,
    /// The processor's own state (open visits), opaque to the store.
    pub processor_state: Vec<u8>,
}

/// The rollup store contract.
///
/// - **Visible**: a change made inside `update` is seen by every `read` that starts after
///   `update` returns; a `read` never sees half of an `update`.
/// - **Durable**: nothing is durable until `checkpoint` returns `Ok`. A checkpoint
///   records the rollups, the given offsets and processor state atomically: after any
///   crash, the store reopens with exactly the rollups of some completed checkpoint and
///   `last_checkpoint` returns the offsets and state saved with them — never a mix.
///   Replaying the log from those offsets therefore counts every record exactly once.
/// - There is one writer (the processor); readers are concurrent.
pub trait RollupStore: Send + Sync + 'static {
    /// The checkpoint the store was opened at (None for a new store).
    fn last_checkpoint(&self) -> Option<Checkpoint>;

    /// Applies changes; visible to readers when it returns.
    fn update(&self, f: &mut dyn FnMut(&mut Rollups));

    /// Reads one property's rollups (None if it has no data).
    fn read(&self, property: &str, f: &mut dyn FnMut(Option<&PropertyRollup>));

    /// Makes the current rollups durable together with `offsets` and `processor_state`.
    fn checkpoint(&self, offsets: &[u64], processor_state: &[u8]) -> Result<()>;

    /// Size in bytes of the last checkpoint written or loaded.
    fn checkpoint_bytes(&self) -> u64;
}
