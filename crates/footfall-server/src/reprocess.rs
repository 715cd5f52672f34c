//! Reprocessing jobs: rebuild a property's derived data for a local date range from the
//! archive with today's code and settings, then have the processor swap it in
//! atomically. Jobs run in the background; their progress is polled over HTTP.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chrono::{NaiveDate, TimeZone};
use footfall_archive::Archive;
use footfall_processor::{
    Install, InstallReport, PropertySettings, SessionRules, SettingsResolver,
};
use footfall_store::{Grain, LocalDay, RollupStore, Sections};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

/// Events are read this far beyond each edge of the range so that visits crossing the
/// edges are sessionised whole (a visit longer than this is cut at the margin).
pub const EDGE_MARGIN_MS: i64 = 12 * 3_600_000;

/// Asks the archiver to seal everything durable now; answers the archived offsets.
pub use footfall_archive::SealRequest;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReprocessRequest {
    #[serde(default)]
    pub property: Option<String>,
    #[serde(default)]
    pub all: bool,
    pub from: NaiveDate,
    pub to: NaiveDate,
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct JobStatus {
    pub id: u64,
    pub state: String,
    pub phase: String,
    pub property: Option<String>,
    pub events_read: u64,
    pub bytes_read: u64,
    pub bytes_total: u64,
    pub events_per_second: f64,
    pub eta_seconds: Option<f64>,
    pub elapsed_seconds: f64,
    pub error: Option<String>,
    pub result: Vec<Value>,
}

pub struct Reprocessor {
    pub archive: Archive,
    pub seal: mpsc::Sender<SealRequest>,
    pub installs: Mutex<std::sync::mpsc::Sender<Install>>,
    pub settings: SettingsResolver,
    pub store: Arc<dyn RollupStore>,
    pub partitions: usize,
    pub rules: SessionRules,
    pub properties: Arc<dyn Fn() -> Vec<String> + Send + Sync>,
    /// Called after a range of a property was rebuilt and installed, so that what else
    /// is derived from the archive is made again (the columnar files).
    pub rebuilt: std::sync::OnceLock<RebuiltHook>,
    jobs: Mutex<HashMap<u64, Arc<Mutex<JobStatus>>>>,
    next: AtomicU64,
}

/// `(property, first local date, last local date)` of a rebuilt range.
pub type RebuiltHook = Arc<
    dyn Fn(
            String,
            NaiveDate,
            NaiveDate,
        )
            -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>
        + Send
        + Sync,
>;

impl Reprocessor {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        archive: Archive,
        seal: mpsc::Sender<SealRequest>,
        installs: std::sync::mpsc::Sender<Install>,
        settings: SettingsResolver,
        store: Arc<dyn RollupStore>,
        partitions: usize,
        rules: SessionRules,
        properties: Arc<dyn Fn() -> Vec<String> + Send + Sync>,
    ) -> Self {
        Self {
            archive,
            seal,
            installs: Mutex::new(installs),
            settings,
            store,
            partitions,
            rules,
            properties,
            rebuilt: std::sync::OnceLock::new(),
            jobs: Mutex::default(),
            next: AtomicU64::new(1),
        }
    }

    pub fn status(&self, id: u64) -> Option<JobStatus> {
        let j = self.jobs.lock().unwrap().get(&id).cloned()?;
        let s = j.lock().unwrap().clone();
        Some(s)
    }

    /// Starts a job; returns its id.
    pub fn start(self: &Arc<Self>, req: ReprocessRequest) -> u64 {
        let id = self.next.fetch_add(1, Ordering::SeqCst);
        let status = Arc::new(Mutex::new(JobStatus {
            id,
            state: "running".into(),
            phase: "starting".into(),
            ..Default::default()
        }));
        self.jobs.lock().unwrap().insert(id, status.clone());
        let me = self.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let r = me.run(&req, &status, started).await;
            let mut s = status.lock().unwrap();
            s.elapsed_seconds = started.elapsed().as_secs_f64();
            match r {
                Ok(()) => {
                    s.state = "done".into();
                    s.phase = "done".into();
                    s.eta_seconds = Some(0.0);
                }
                Err(e) => {
                    tracing::error!(job = id, error = %e, "reprocess failed; old data keeps serving");
                    s.state = "failed".into();
                    s.error = Some(e);
                }
            }
        });
        id
    }

    /// After `footfall repair rollups` (which moved a damaged store aside and left
    /// `marker`): rebuilds every archived day of every property into the fresh store, as
    /// one job, and removes `marker` when it is done. A failed job keeps the marker, so
    /// the next start tries again. Events the archive does not hold yet come from the log,
    /// which the processor reads from its first retained record into the fresh store.
    pub async fn rebuild_after_repair(self: &Arc<Self>, marker: std::path::PathBuf) {
        let files = match self.archive.list(None, None).await {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(error = %e, "rebuild after repair: cannot list the archive; will retry at the next start");
                return;
            }
        };
        let today = chrono::Utc::now().date_naive();
        // UTC dates of the files; local dates reach a day to either side.
        let (Some(first), Some(last)) = (
            files.iter().map(|f| f.date).min(),
            files.iter().map(|f| f.date).max(),
        ) else {
            tracing::warn!(
                "rebuild after repair: the archive is empty; the log alone rebuilds the rollups"
            );
            let _ = std::fs::remove_file(&marker);
            return;
        };
        let req = ReprocessRequest {
            property: None,
            all: true,
            from: first.pred_opt().unwrap_or(first),
            to: last.max(today).succ_opt().unwrap_or(last),
            dry_run: false,
        };
        tracing::warn!(from = %req.from, to = %req.to, "rebuilding the rollups from the archive after a repair");
        let id = self.start(req);
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            let Some(s) = self.status(id) else { return };
            match s.state.as_str() {
                "done" => {
                    let _ = std::fs::remove_file(&marker);
                    tracing::warn!(
                        events = s.events_read,
                        seconds = s.elapsed_seconds,
                        "rollups rebuilt from the archive after a repair"
                    );
                    return;
                }
                "failed" => {
                    tracing::error!(error = ?s.error, "rebuild after repair failed; the next start tries again");
                    return;
                }
                _ => {}
            }
        }
    }

    /// Has the archiver seal everything durable now; answers the archived offsets, below
    /// which the archive holds every event of the log.
    pub async fn seal_now(&self) -> Result<Vec<u64>, String> {
        let (tx, rx) = oneshot::channel();
        self.seal
            .send(tx)
            .await
            .map_err(|_| "archiver stopped".to_string())?;
        rx.await.map_err(|_| "archiver stopped".to_string())?
    }

    async fn run(
        &self,
        req: &ReprocessRequest,
        status: &Mutex<JobStatus>,
        started: Instant,
    ) -> Result<(), String> {
        if req.to < req.from {
            return Err("`to` is before `from`".into());
        }
        let set_phase = |p: &str| status.lock().unwrap().phase = p.to_string();
        set_phase("sealing the archive");
        let archived = self.seal_now().await?;
        let properties = match (&req.property, req.all) {
            (Some(p), false) => vec![p.clone()],
            (None, true) => (self.properties)(),
            _ => return Err("give exactly one of `property` or `all`".into()),
        };
        for property in properties {
            status.lock().unwrap().property = Some(property.clone());
            let settings = (self.settings)(&property);
            let tz = settings.tz;
            let local_start = |d: NaiveDate| {
                tz.from_local_datetime(&d.and_hms_opt(0, 0, 0).unwrap())
                    .earliest()
                    .map(|t| t.timestamp_millis())
                    .unwrap_or_else(|| d.and_hms_opt(0, 0, 0).unwrap().and_utc().timestamp_millis())
            };
            let lo = local_start(req.from) - EDGE_MARGIN_MS;
            let hi = local_start(req.to.succ_opt().unwrap()) + EDGE_MARGIN_MS;
            let utc_day = |ms: i64| {
                chrono::DateTime::from_timestamp_millis(ms)
                    .unwrap()
                    .date_naive()
            };
            set_phase("listing archive files");
            let files = self
                .archive
                .list(Some(&property), Some((utc_day(lo), utc_day(hi))))
                .await
                .map_err(|e| e.to_string())?;
            status.lock().unwrap().bytes_total += files.iter().map(|f| f.bytes).sum::<u64>();
            set_phase("reading the archive");
            let input = self
                .archive
                .read_for_rebuild(
                    &files,
                    self.partitions,
                    2,
                    move |ts| ts >= lo && ts < hi,
                    |bytes, n| {
                        let mut s = status.lock().unwrap();
                        s.bytes_read += bytes;
                        s.events_read += n;
                        let secs = started.elapsed().as_secs_f64().max(1e-3);
                        s.events_per_second = s.events_read as f64 / secs;
                        let rate = s.bytes_read as f64 / secs;
                        s.eta_seconds =
                            Some(s.bytes_total.saturating_sub(s.bytes_read) as f64 / rate.max(1.0));
                    },
                )
                .await
                .map_err(|e| e.to_string())?;
            let n_events = input.len();
            set_phase("sessionising and rolling up");
            let rules = self.rules;
            // One thread per partition, in log order: the order live processing saw.
            let (state, rollups) = tokio::task::spawn_blocking(move || {
                footfall_processor::rebuild_parallel(
                    input.partitions(),
                    |p, f| input.for_each(p, f),
                    settings,
                    rules,
                )
            })
            .await
            .map_err(|e| e.to_string())?;
            let (d1, d2) = (LocalDay::from_date(req.from), LocalDay::from_date(req.to));
            let sum = |p: Option<&footfall_store::PropertyRollup>| {
                let mut t = (0u64, 0u64, 0i64);
                if let Some(p) = p {
                    for b in p.days_in(d1..=d2).flat_map(|(_, parts)| parts) {
                        t.0 += b.events.events;
                        t.1 += b.events.pageviews;
                        t.2 += b.visits.visits;
                    }
                }
                t
            };
            let new = sum(rollups.properties.get(&property));
            let mut old = (0, 0, 0);
            self.store
                .scan(
                    &property,
                    d1..=d2,
                    Grain::Day,
                    Sections::TOTALS,
                    &mut |parts| {
                        for (_, b) in parts {
                            old.0 += b.events.events;
                            old.1 += b.events.pageviews;
                            old.2 += b.visits.visits;
                        }
                    },
                )
                .map_err(|e| e.to_string())?;
            let mut entry = json!({
                "property": property, "from": req.from, "to": req.to, "events_in_window": n_events,
                "before": {"events": old.0, "pageviews": old.1, "visits": old.2},
                "rebuilt_from_archive": {"events": new.0, "pageviews": new.1, "visits": new.2},
                "dry_run": req.dry_run,
            });
            if !req.dry_run {
                set_phase("swapping in the rebuilt range");
                let (done_tx, done_rx) = std::sync::mpsc::channel();
                let job = Install {
                    property: property.clone(),
                    days: (d1, d2),
                    settings: PropertySettings {
                        tz,
                        gap_ms: settings.gap_ms,
                    },
                    state,
                    rollups,
                    archived: archived.clone(),
                    done: done_tx,
                };
                self.installs
                    .lock()
                    .unwrap()
                    .send(job)
                    .map_err(|_| "processor stopped".to_string())?;
                let report: InstallReport = tokio::task::spawn_blocking(move || done_rx.recv())
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|_| "processor stopped".to_string())??;
                entry["installed"] = json!(report);
                if let Some(hook) = self.rebuilt.get() {
                    hook(property.clone(), req.from, req.to).await?;
                }
            }
            status.lock().unwrap().result.push(entry);
        }
        Ok(())
    }
}
