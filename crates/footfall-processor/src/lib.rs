//! The processor: reads the event log, sessionises, updates rollups, and checkpoints its
//! log offsets atomically with the rollups and session state (exactly-once results).
//!
//! It depends only on the [`EventLog`] and [`RollupStore`] traits. It must never
//! acknowledge anything to clients and never write to the log.

pub mod cluster;
pub mod rows;
pub mod sessions;

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono_tz::Tz;
use footfall_event::EventView;
use footfall_log::EventLog;
use footfall_store::{LocalDay, LocalHour, RollupStore, Rollups};

pub use sessions::{SessionRules, SessionState, Visit};

/// Turns transparent huge pages off for this process; binaries call it first in `main`.
///
/// The allocator asks for huge pages on its fresh memory, and the kernel then zeroes 2 MiB
/// at each first touch. Rollups and visitor sets grow into fresh memory all the time, and
/// that zeroing was 17% of processing: with huge pages off, processing ran 20% faster and
/// peak memory fell 5% (BENCHMARKS.md, "Processing"). Databases advise the same for their
/// servers. The kernel checks the setting at each page fault, so memory touched before
/// the call is unaffected and everything after is.
pub fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl with PR_SET_THP_DISABLE reads no memory of ours; it changes a flag of
    // the process.
    unsafe {
        if libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) != 0 {
            tracing::debug!("transparent huge pages could not be turned off");
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("log: {0}")]
    Log(#[from] footfall_log::Error),
    #[error("store: {0}")]
    Store(#[from] footfall_store::Error),
    #[error("checkpoint has {0} partitions but the log has {1}")]
    PartitionMismatch(usize, u32),
    #[error("processor state in the checkpoint is unreadable: {0}")]
    State(String),
}

/// What the processor needs to know of a property (its current metadata).
#[derive(Debug, Clone, Copy)]
pub struct PropertySettings {
    pub tz: Tz,
    /// The property's own session gap; `None` uses the processor's default.
    pub gap_ms: Option<i64>,
}

/// Resolves a property's settings by tracking id.
pub type SettingsResolver = Arc<dyn Fn(&str) -> PropertySettings + Send + Sync>;

#[derive(Debug, Clone)]
pub struct ProcessorOptions {
    pub rules: SessionRules,
    pub checkpoint_interval: Duration,
    pub read_batch_bytes: usize,
    /// On stop, process everything the log holds before the last checkpoint (a server
    /// shutting down), or checkpoint what is applied at once (a partition handed to
    /// another processor while events keep coming).
    pub drain_on_stop: bool,
}

impl Default for ProcessorOptions {
    fn default() -> Self {
        Self {
            rules: SessionRules::default(),
            checkpoint_interval: Duration::from_secs(5),
            read_batch_bytes: 1024 * 1024,
            drain_on_stop: true,
        }
    }
}

/// Live figures for /metrics and retention.
#[derive(Debug, Default)]
pub struct ProcessorStats {
    pub events_processed: AtomicU64,
    pub corrupt_records: AtomicU64,
    pub checkpoints: AtomicU64,
    pub last_checkpoint_ms: AtomicU64,
    /// Receive time of the last processed event (ms since epoch).
    pub last_received_at: AtomicI64,
    pub open_visits: AtomicU64,
    /// Size of the last checkpoint as the store reports it.
    pub checkpoint_bytes: AtomicU64,
    /// Offsets reflected in memory (visible) and in the last checkpoint (durable).
    pub offsets: Vec<AtomicU64>,
    pub checkpointed: Vec<AtomicU64>,
}

impl ProcessorStats {
    pub fn new(partitions: u32) -> Self {
        Self {
            offsets: (0..partitions).map(|_| AtomicU64::new(0)).collect(),
            checkpointed: (0..partitions).map(|_| AtomicU64::new(0)).collect(),
            ..Default::default()
        }
    }

    pub fn checkpointed_offsets(&self) -> Vec<u64> {
        self.checkpointed
            .iter()
            .map(|a| a.load(Ordering::SeqCst))
            .collect()
    }
}

/// What a node's /metrics reports of the processing it does: the one processor of the
/// embedded default ([`ProcessorStats`]), or the partition processors of a cluster node
/// ([`cluster::Board`]). Figures are read without stopping the processors, so they may
/// be a moment apart from one another.
pub trait Progress: Send + Sync {
    /// Events processed since the node started (not only by the processors running now).
    fn events(&self) -> u64;
    /// Visits held in processor state at the last checkpoints.
    fn open_visits(&self) -> u64;
    /// Size of the last checkpoints, summed over the partitions processed now.
    fn checkpoint_bytes(&self) -> u64;
    /// Receive time of the newest processed event (ms since epoch; 0 before any).
    fn last_received_at(&self) -> i64;
    /// Each log partition processed now, with the offset its results reflect.
    fn positions(&self) -> Vec<(u32, footfall_log::Offset)>;
}

impl Progress for ProcessorStats {
    fn events(&self) -> u64 {
        self.events_processed.load(Ordering::Relaxed)
    }
    fn open_visits(&self) -> u64 {
        self.open_visits.load(Ordering::Relaxed)
    }
    fn checkpoint_bytes(&self) -> u64 {
        self.checkpoint_bytes.load(Ordering::Relaxed)
    }
    fn last_received_at(&self) -> i64 {
        self.last_received_at.load(Ordering::Relaxed)
    }
    fn positions(&self) -> Vec<(u32, footfall_log::Offset)> {
        self.offsets
            .iter()
            .enumerate()
            .map(|(p, o)| (p as u32, o.load(Ordering::SeqCst)))
            .collect()
    }
}

/// A range rebuilt from the archive, handed to the processor to swap in (see
/// docs/ARCHIVE.md). The processor first catches up to `archived`, then replays the
/// log records of the property from `archived` to its own position into the rebuild,
/// then replaces the range's buckets in one store update.
pub struct Install {
    pub property: String,
    /// Inclusive local days of the range.
    pub days: (LocalDay, LocalDay),
    pub settings: PropertySettings,
    pub state: SessionState,
    pub rollups: Rollups,
    /// Per partition: every record below this offset is in the rebuild.
    pub archived: Vec<u64>,
    pub done: std::sync::mpsc::Sender<std::result::Result<InstallReport, String>>,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct InstallReport {
    /// Log records of the property replayed into the rebuild after the archive point.
    pub replayed_from_log: u64,
    pub days_replaced: u32,
}

/// Sessionises one partition's events (`feed` calls its argument with each, in log
/// order) into a fresh state and rollups: the same code path as live processing, for
/// reprocessing from the archive.
pub fn rebuild(
    partition: usize,
    partitions: usize,
    feed: impl FnOnce(&mut dyn FnMut(&EventView<'_>)),
    settings: PropertySettings,
    defaults: SessionRules,
) -> (SessionState, Rollups) {
    let mut state = SessionState::new(partitions);
    let mut rollups = Rollups::default();
    let rules = SessionRules {
        gap_ms: settings.gap_ms.unwrap_or(defaults.gap_ms),
        ..defaults
    };
    feed(&mut |e| state.apply(partition, e, &settings.tz, &rules, &mut rollups));
    (state, rollups)
}

/// [`rebuild`] with one thread per log partition (a partition's state depends only on
/// its own records), the partial rollups merged at the end. `feed(p, f)` calls `f`
/// with partition `p`'s events in log order.
pub fn rebuild_parallel(
    partitions: usize,
    feed: impl Fn(usize, &mut dyn FnMut(&EventView<'_>)) + Sync,
    settings: PropertySettings,
    defaults: SessionRules,
) -> (SessionState, Rollups) {
    let n = partitions;
    let feed = &feed;
    let parts: Vec<(SessionState, Rollups)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|p| s.spawn(move || rebuild(p, n, |f| feed(p, f), settings, defaults)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("rebuild thread"))
            .collect()
    });
    let mut state = SessionState::new(n);
    let mut rollups = Rollups::default();
    for (p, (mut s, r)) in parts.into_iter().enumerate() {
        state.partitions[p] = std::mem::take(&mut s.partitions[p]);
        rollups.absorb(r);
    }
    (state, rollups)
}

pub struct Processor {
    installs: Option<std::sync::mpsc::Receiver<Install>>,
    log: Arc<dyn EventLog>,
    store: Arc<dyn RollupStore>,
    settings: SettingsResolver,
    opts: ProcessorOptions,
    state: SessionState,
    offsets: Vec<u64>,
    stats: Arc<ProcessorStats>,
    last_checkpoint: Instant,
    /// How long the last checkpoint took (see [`Processor::checkpoint_due`]).
    last_checkpoint_took: Duration,
    dirty: bool,
}

/// A checkpoint writes the whole session state, which grows with open visits (1.4 GB at
/// 100 M events over 30 days). Checkpoints are spaced at least this many times their
/// own duration apart, so writing them takes at most about a tenth of the processor's
/// time however large the state; a crash then replays at most that much more log.
const CHECKPOINT_SPACING: u32 = 9;

impl Processor {
    /// Restores from the store's last checkpoint (or starts at the log's beginning).
    pub fn new(
        log: Arc<dyn EventLog>,
        store: Arc<dyn RollupStore>,
        settings: SettingsResolver,
        opts: ProcessorOptions,
        stats: Arc<ProcessorStats>,
    ) -> Result<Self> {
        let n = log.partitions();
        let (offsets, state) = match store.last_checkpoint()? {
            Some(c) => {
                if c.offsets.len() != n as usize {
                    return Err(Error::PartitionMismatch(c.offsets.len(), n));
                }
                let s = SessionState::decode(&c.processor_state)
                    .map_err(|e| Error::State(e.to_string()))?;
                (c.offsets, s)
            }
            None => (
                (0..n).map(|p| log.start_offset(p)).collect(),
                SessionState::new(n as usize),
            ),
        };
        for (p, o) in offsets.iter().enumerate() {
            stats.offsets[p].store(*o, Ordering::SeqCst);
            stats.checkpointed[p].store(*o, Ordering::SeqCst);
        }
        footfall_enrich::warm_up_user_agents();
        Ok(Self {
            installs: None,
            log,
            store,
            settings,
            opts,
            state,
            offsets,
            stats,
            last_checkpoint: Instant::now(),
            last_checkpoint_took: Duration::ZERO,
            dirty: false,
        })
    }

    /// Processes what is readable now, one read batch per partition. Returns the
    /// number of records consumed.
    pub fn step(&mut self) -> Result<usize> {
        let mut batches = Vec::new();
        for p in 0..self.log.partitions() {
            let recs = self
                .log
                .read(p, self.offsets[p as usize], self.opts.read_batch_bytes)?;
            if !recs.is_empty() {
                batches.push((p as usize, recs));
            }
        }
        if batches.is_empty() {
            return Ok(0);
        }
        let consumed: usize = batches.iter().map(|(_, r)| r.len()).sum();
        for (p, recs) in &batches {
            self.offsets[*p] = recs.last().map(|r| r.next).unwrap_or(self.offsets[*p]);
        }
        let defaults = self.opts.rules;
        let settings = &self.settings;
        let state = &mut self.state;
        let stats = &self.stats;
        let mut last: Option<(String, PropertySettings)> = None;
        let mut last_received = 0;
        let mut applied = 0u64;
        // Decoding inside the update avoids holding a second copy of every event.
        self.store.update(&mut |rollups| {
            for (p, recs) in &batches {
                for r in recs {
                    let e = match EventView::decode(&r.payload) {
                        Ok(e) => e,
                        Err(footfall_event::DecodeError::Erased) => continue,
                        Err(err) => {
                            tracing::error!(partition = p, offset = r.offset, error = %err, "undecodable log record skipped");
                            stats.corrupt_records.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                    };
                    let s = match &last {
                        Some((id, s)) if *id == e.property => *s,
                        _ => {
                            let s = settings(e.property);
                            last = Some((e.property.to_string(), s));
                            s
                        }
                    };
                    let rules = SessionRules {
                        gap_ms: s.gap_ms.unwrap_or(defaults.gap_ms),
                        ..defaults
                    };
                    state.apply(*p, &e, &s.tz, &rules, rollups);
                    last_received = last_received.max(e.received_at);
                    applied += 1;
                }
            }
        });
        self.dirty = true;
        for (p, o) in self.offsets.iter().enumerate() {
            self.stats.offsets[p].store(*o, Ordering::SeqCst);
        }
        self.stats
            .events_processed
            .fetch_add(applied, Ordering::Relaxed);
        self.stats
            .last_received_at
            .fetch_max(last_received, Ordering::Relaxed);
        Ok(consumed)
    }

    /// Writes a checkpoint of rollups, offsets and session state.
    pub fn checkpoint(&mut self) -> Result<()> {
        let started = Instant::now();
        let state = &self.state;
        self.store
            .checkpoint(&self.offsets, &|w| state.write_to(w))?;
        for (p, o) in self.offsets.iter().enumerate() {
            self.stats.checkpointed[p].store(*o, Ordering::SeqCst);
        }
        self.stats
            .open_visits
            .store(self.state.open_visits() as u64, Ordering::Relaxed);
        self.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
        self.stats
            .checkpoint_bytes
            .store(self.store.checkpoint_bytes(), Ordering::Relaxed);
        let took = started.elapsed();
        self.stats
            .last_checkpoint_ms
            .store(took.as_millis() as u64, Ordering::Relaxed);
        self.last_checkpoint = Instant::now();
        self.last_checkpoint_took = took;
        self.dirty = false;
        Ok(())
    }

    /// Whether the running processor should checkpoint now: something changed, and the
    /// configured interval has passed and so has [`CHECKPOINT_SPACING`] times the last
    /// checkpoint's duration.
    pub fn checkpoint_due(&self) -> bool {
        let wait = self
            .opts
            .checkpoint_interval
            .max(self.last_checkpoint_took * CHECKPOINT_SPACING);
        self.dirty && self.last_checkpoint.elapsed() >= wait
    }

    /// Accepts rebuilt ranges to swap in between steps.
    pub fn set_install_channel(&mut self, rx: std::sync::mpsc::Receiver<Install>) {
        self.installs = Some(rx);
    }

    fn install(&mut self, mut job: Install) -> Result<InstallReport> {
        // 1. Reflect at least everything the rebuild saw, so nothing is counted twice.
        while self
            .offsets
            .iter()
            .zip(&job.archived)
            .any(|(live, archived)| live < archived)
        {
            if self.step()? == 0 {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        // 2. Records of the property after the archive point are in the live state
        // already; replay them into the rebuild too.
        let mut report = InstallReport::default();
        let rules = SessionRules {
            gap_ms: job.settings.gap_ms.unwrap_or(self.opts.rules.gap_ms),
            ..self.opts.rules
        };
        for p in 0..self.log.partitions() {
            let (from, until) = (job.archived[p as usize], self.offsets[p as usize]);
            footfall_log::for_each_record(
                self.log.as_ref(),
                p,
                from,
                until,
                self.opts.read_batch_bytes,
                |r| {
                    if let Ok(e) = EventView::decode(&r.payload) {
                        if e.property == job.property {
                            job.state.apply(
                                p as usize,
                                &e,
                                &job.settings.tz,
                                &rules,
                                &mut job.rollups,
                            );
                            report.replayed_from_log += 1;
                        }
                    }
                },
            )?;
        }
        // 3. One update: readers see the old range or the new one, never a mix.
        let (d1, d2) = job.days;
        let mut fresh = job
            .rollups
            .properties
            .remove(&job.property)
            .unwrap_or_default();
        // The range is copied by whole days and hours: its days must hold every hour.
        fresh.fold_all();
        self.store.update(&mut |r| {
            let live = r.property_mut(&job.property);
            let (h1, h2) = (
                LocalHour(d1.0 as i64 * 24),
                LocalHour((d2.0 as i64 + 1) * 24),
            );
            live.hours.retain(|h, _| *h < h1 || *h >= h2);
            live.unfolded.retain(|h| *h < h1 || *h >= h2);
            live.days.retain(|d, _| *d < d1 || *d > d2);
            // Evicted days of the range are replaced too (never loaded back).
            live.evicted.retain(|d| *d < d1 || *d > d2);
            for (h, b) in fresh.hours.range(h1..h2) {
                live.hours.insert(*h, b.clone());
            }
            for (d, b) in fresh.days.range(d1..=d2) {
                live.days.insert(*d, b.clone());
            }
            for d in d1.0..=d2.0 {
                live.dirty_days.insert(LocalDay(d));
            }
        });
        report.days_replaced = (d2.0 - d1.0 + 1) as u32;
        self.dirty = true;
        Ok(report)
    }

    fn serve_installs(&mut self) -> Result<()> {
        let jobs: Vec<Install> = match &self.installs {
            Some(rx) => rx.try_iter().collect(),
            None => return Ok(()),
        };
        for job in jobs {
            let done = job.done.clone();
            let r = self.install(job);
            if let Err(e) = &r {
                // The swap is one update at the very end: on failure the old data serves.
                tracing::error!(error = %e, "installing a rebuilt range failed");
            }
            let _ = done.send(r.map_err(|e| e.to_string()));
        }
        Ok(())
    }

    /// Processes until everything durable in the log now is reflected.
    pub fn catch_up(&mut self) -> Result<()> {
        while self.step()? > 0 {}
        Ok(())
    }

    /// Runs until `stop` is set, then drains what is in the log and checkpoints.
    pub fn run(mut self, stop: Arc<AtomicBool>) -> Result<()> {
        let mut generation = self.log.generation();
        loop {
            if stop.load(Ordering::SeqCst) {
                if self.opts.drain_on_stop {
                    self.catch_up()?;
                }
                self.checkpoint()?;
                return Ok(());
            }
            self.serve_installs()?;
            let n = self.step()?;
            if self.checkpoint_due() {
                self.checkpoint()?;
            }
            if n == 0 {
                generation = self
                    .log
                    .wait_for_append(generation, Duration::from_millis(100));
            }
        }
    }

    pub fn state(&self) -> &SessionState {
        &self.state
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use footfall_log::{FileLog, FileLogOptions};
    use footfall_store::SnapshotStore;

    #[test]
    fn checkpoints_are_spaced_by_their_own_duration() {
        let dir = tempfile::tempdir().unwrap();
        let log: Arc<dyn EventLog> =
            Arc::new(FileLog::open(dir.path().join("log"), FileLogOptions::default()).unwrap());
        let store: Arc<dyn RollupStore> =
            Arc::new(SnapshotStore::open(dir.path().join("rollups")).unwrap());
        let opts = ProcessorOptions {
            checkpoint_interval: Duration::from_millis(50),
            ..Default::default()
        };
        let stats = Arc::new(ProcessorStats::new(log.partitions()));
        let mut p = Processor::new(
            log,
            store,
            Arc::new(|_: &str| PropertySettings {
                tz: chrono_tz::UTC,
                gap_ms: None,
            }),
            opts,
            stats,
        )
        .unwrap();
        let ago = |ms| {
            Instant::now()
                .checked_sub(Duration::from_millis(ms))
                .unwrap()
        };
        // Nothing changed: never due.
        p.last_checkpoint = ago(60_000);
        assert!(!p.checkpoint_due());
        p.dirty = true;
        // Quick checkpoints: the configured interval decides.
        p.last_checkpoint_took = Duration::from_millis(1);
        p.last_checkpoint = ago(10);
        assert!(!p.checkpoint_due());
        p.last_checkpoint = ago(60);
        assert!(p.checkpoint_due());
        // A checkpoint of a second waits nine seconds, not the interval.
        p.last_checkpoint_took = Duration::from_secs(1);
        p.last_checkpoint = ago(2_000);
        assert!(!p.checkpoint_due());
        p.last_checkpoint = ago(9_100);
        assert!(p.checkpoint_due());
        // A real checkpoint records its own duration and is not due again at once.
        p.checkpoint().unwrap();
        assert!(p.last_checkpoint_took < Duration::from_secs(1));
        assert!(!p.checkpoint_due());
    }
}
