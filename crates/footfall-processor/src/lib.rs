//! The processor: reads the event log, sessionises, updates rollups, and checkpoints its
//! log offsets atomically with the rollups and session state (exactly-once results).
//!
//! It depends only on the [`EventLog`] and [`RollupStore`] traits. It must never
//! acknowledge anything to clients and never write to the log.

pub mod sessions;

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono_tz::Tz;
use footfall_event::EventView;
use footfall_log::EventLog;
use footfall_store::RollupStore;

pub use sessions::{SessionRules, SessionState, Visit};

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
}

impl Default for ProcessorOptions {
    fn default() -> Self {
        Self {
            rules: SessionRules::default(),
            checkpoint_interval: Duration::from_secs(5),
            read_batch_bytes: 1024 * 1024,
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

pub struct Processor {
    log: Arc<dyn EventLog>,
    store: Arc<dyn RollupStore>,
    settings: SettingsResolver,
    opts: ProcessorOptions,
    state: SessionState,
    offsets: Vec<u64>,
    stats: Arc<ProcessorStats>,
    last_checkpoint: Instant,
    dirty: bool,
}

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
        let (offsets, state) = match store.last_checkpoint() {
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
        Ok(Self {
            log,
            store,
            settings,
            opts,
            state,
            offsets,
            stats,
            last_checkpoint: Instant::now(),
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
        self.store.checkpoint(&self.offsets, &self.state.encode())?;
        for (p, o) in self.offsets.iter().enumerate() {
            self.stats.checkpointed[p].store(*o, Ordering::SeqCst);
        }
        self.stats
            .open_visits
            .store(self.state.open_visits() as u64, Ordering::Relaxed);
        self.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
        self.stats
            .last_checkpoint_ms
            .store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
        self.last_checkpoint = Instant::now();
        self.dirty = false;
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
                self.catch_up()?;
                self.checkpoint()?;
                return Ok(());
            }
            let n = self.step()?;
            if self.dirty && self.last_checkpoint.elapsed() >= self.opts.checkpoint_interval {
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
