//! The serving store for processed metrics: the rollup model, unique counting, and the
//! [`RollupStore`] seam between the processor (the only writer) and the query API.
//!
//! The embedded implementation, [`SnapshotStore`], keeps rollups in memory and makes
//! them durable as atomic checkpoints together with the processor's log offsets and
//! session state — the way a stream processor checkpoints its state. A PostgreSQL
//! implementation satisfies the same contract at scale. This crate must never read the
//! log or know how events are sessionised.

pub mod contract;
pub mod hll;
pub mod leases;
pub mod maps;
pub mod rollup;
mod snapshot;

pub use hll::{CountingHll, Hll};
pub use maps::{IdMap, IdSet, KeyMap};
pub use rollup::{
    Bucket, DayData, DayDataRef, DayLoader, EventStats, LocalDay, LocalHour, MinuteStats,
    PropertyRollup, Rollups, Sections, VisitKey, VisitStats, SEP, VISIT_FIELDS,
};
pub use snapshot::{MemoryBudget, SnapshotStore};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("checkpoint {0} is corrupt: {1}")]
    Corrupt(String, String),
    /// A remote store cannot be reached or refused the operation; retry later.
    #[error("rollup store unavailable: {0}")]
    Unavailable(String),
}

/// What was durable together at the last checkpoint.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Checkpoint {
    /// Per log partition: the offset of the first record not yet reflected.
    pub offsets: Vec<u64>,
    /// The processor's own state (open visits), opaque to the store.
    pub processor_state: Vec<u8>,
}

/// The time grain of a [`RollupRead::scan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grain {
    /// Parts keyed by [`LocalDay`] number.
    Day,
    /// Parts keyed by [`LocalHour`] number.
    Hour,
}

/// One part of the statistics of a time bucket, keyed by the bucket's [`LocalDay`] or
/// [`LocalHour`] number (by the scan's [`Grain`]).
pub type Part<'a> = (i64, &'a Bucket);

/// One realtime minute (minutes since the epoch, UTC) and its statistics.
pub type Minute<'a> = (i64, &'a MinuteStats);

/// What the query engine asks of the serving store: one property's statistics over a
/// range of its local days, and its realtime minutes.
///
/// Contract (every implementation passes `footfall_store::contract`):
/// - **Complete**: `scan` hands every statistic of the range exactly once: a time
///   bucket may come as several parts with the same key (merging them with
///   [`Bucket::merge`] gives the bucket), parts come in key order, and nothing outside
///   the range is included.
/// - **Consistent**: one call sees one state of the store: never half of a writer's
///   update or checkpoint.
/// - **Fresh**: it sees everything the store had committed or (in-process) updated
///   before the call began; a remote store states its own freshness bound.
/// - **Unavailable** stores answer `Err`, never an empty result in place of data.
pub trait RollupRead: Send + Sync + 'static {
    /// The first local day with statistics (None if the property has none).
    fn first_day(&self, property: &str) -> Result<Option<LocalDay>>;

    /// Calls `f` once with every part of `property` over local days `days` at `grain`
    /// (an empty slice if there are none). The parts borrow from the store for the
    /// duration of the call. Each part holds at least the `sections` asked for; other
    /// sections may be empty (a remote store fetches only what is asked).
    fn scan(
        &self,
        property: &str,
        days: std::ops::RangeInclusive<LocalDay>,
        grain: Grain,
        sections: Sections,
        f: &mut dyn FnMut(&[Part<'_>]),
    ) -> Result<()>;

    /// Calls `f` once with the realtime minutes of `property` (minutes since the epoch,
    /// UTC) within `minutes`, in order.
    fn minutes(
        &self,
        property: &str,
        minutes: std::ops::RangeInclusive<i64>,
        f: &mut dyn FnMut(&[Minute<'_>]),
    ) -> Result<()>;
}

/// Writes the processor's state into whatever a checkpoint keeps it in (a file, a
/// column). The store streams it, so a state of gigabytes is never held twice in
/// memory at a checkpoint; a store that needs the bytes collects them.
pub type StateWriter<'a> = &'a dyn Fn(&mut dyn std::io::Write) -> std::io::Result<()>;

/// A [`StateWriter`] of bytes already in memory.
pub fn state_bytes(bytes: &[u8]) -> impl Fn(&mut dyn std::io::Write) -> std::io::Result<()> + '_ {
    move |w| w.write_all(bytes)
}

/// Collects what a [`StateWriter`] writes.
pub fn collect_state(state: StateWriter<'_>) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    state(&mut out)?;
    Ok(out)
}

/// The rollup store contract: what the processor writes, on top of what queries read.
///
/// - **Visible**: a change made inside `update` is seen by every read that starts after
///   `update` returns; a read never sees half of an `update`.
/// - **Durable**: nothing is durable until `checkpoint` returns `Ok`. A checkpoint
///   records the rollups, the given offsets and processor state atomically: after any
///   crash, the store reopens with exactly the rollups of some completed checkpoint and
///   `last_checkpoint` returns the offsets and state saved with them — never a mix.
///   Replaying the log from those offsets therefore counts every record exactly once.
/// - There is one writer (the processor); readers are concurrent.
pub trait RollupStore: RollupRead {
    /// The checkpoint the store was opened at (None for a new store). The processor
    /// asks once, when it starts; a store may answer a later checkpoint of its own
    /// instead once it has written one.
    fn last_checkpoint(&self) -> Result<Option<Checkpoint>>;

    /// Applies changes; visible to readers when it returns.
    fn update(&self, f: &mut dyn FnMut(&mut Rollups));

    /// Makes the current rollups durable together with `offsets` and the processor
    /// state that `processor_state` writes.
    fn checkpoint(&self, offsets: &[u64], processor_state: StateWriter<'_>) -> Result<()>;

    /// Size in bytes of the last checkpoint written or loaded.
    fn checkpoint_bytes(&self) -> u64;
}

/// [`RollupRead`] over rollups held in memory, for the stores that hold them.
impl Rollups {
    pub fn first_day_of(&self, property: &str) -> Option<LocalDay> {
        self.properties.get(property).and_then(|p| p.first_day())
    }

    pub fn scan_into(
        &self,
        property: &str,
        days: std::ops::RangeInclusive<LocalDay>,
        grain: Grain,
        f: &mut dyn FnMut(&[Part<'_>]),
    ) {
        match self.properties.get(property) {
            Some(p) => f(&p.scan_parts(days, grain)),
            None => f(&[]),
        }
    }

    pub fn minutes_into(
        &self,
        property: &str,
        minutes: std::ops::RangeInclusive<i64>,
        f: &mut dyn FnMut(&[Minute<'_>]),
    ) {
        match self.properties.get(property) {
            Some(p) => f(&p.minute_parts(minutes)),
            None => f(&[]),
        }
    }
}

impl PropertyRollup {
    /// [`RollupRead::scan`] over this in-memory rollup: days as their day bucket and
    /// unfolded hours, hours as their hour buckets (which hold every hour).
    pub fn scan_parts(
        &self,
        days: std::ops::RangeInclusive<LocalDay>,
        grain: Grain,
    ) -> Vec<Part<'_>> {
        match grain {
            Grain::Hour => {
                let lo = LocalHour(days.start().0 as i64 * 24);
                let hi = LocalHour((days.end().0 as i64 + 1) * 24);
                if lo >= hi {
                    return Vec::new();
                }
                self.hours.range(lo..hi).map(|(h, b)| (h.0, b)).collect()
            }
            Grain::Day => {
                if days.start() > days.end() {
                    return Vec::new();
                }
                self.days_in(days)
                    .flat_map(|(d, parts)| parts.map(move |b| (d.0 as i64, b)))
                    .collect()
            }
        }
    }

    /// [`RollupRead::minutes`] over this in-memory rollup.
    pub fn minute_parts(&self, minutes: std::ops::RangeInclusive<i64>) -> Vec<Minute<'_>> {
        if minutes.start() > minutes.end() {
            return Vec::new();
        }
        self.minutes.range(minutes).map(|(m, s)| (*m, s)).collect()
    }
}
