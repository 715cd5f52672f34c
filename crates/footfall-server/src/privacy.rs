//! Deleting data (docs/SECURITY.md, "Deleting data"): a property's events older than its
//! retention, all of a property's events, or one visitor's — from the archive, the log,
//! the rollups and the columnar files, with a report of what went.
//!
//! The archive is the source every other copy is made from, so a deletion is:
//!
//! 1. seal the log into the archive, so that every event received until now is there;
//! 2. rewrite the property's archive files without the events to delete (a file left
//!    empty is deleted), noting each deleted event's log position and local date;
//! 3. erase those records in the log (the embedded log rewrites them as zeros in place;
//!    a broker's topic cannot, and its records expire with the topic's retention);
//! 4. rebuild the rollups of the dates that held them from the rewritten archive
//!    (reprocessing swaps the rebuilt range in as one update);
//! 5. forget the columnar files of those dates, which the next refresh makes again from
//!    the rewritten archive.
//!
//! Events received while a deletion runs are not covered by it: run it again once the
//! person or property has stopped sending.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use footfall_log::EventLog;
use serde::Serialize;
use serde_json::{json, Value};

use crate::reprocess::{RebuiltHook, ReprocessRequest, Reprocessor};

/// What to delete of a property.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Every event of the property.
    Everything,
    /// The events of one visitor id (see [`footfall_event::identity::visitor_id`]).
    Visitor(u64),
    /// Events whose local date (in the property's zone) is before this date.
    Before(NaiveDate),
}

impl Target {
    fn describe(&self) -> Value {
        match self {
            Target::Everything => json!("everything"),
            Target::Visitor(v) => json!({"visitor": format!("{v:016x}")}),
            Target::Before(d) => json!({"before": d}),
        }
    }
}

/// A deletion's progress, polled over HTTP like a reprocessing job's.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DeletionStatus {
    pub id: u64,
    pub state: String,
    pub phase: String,
    pub property: String,
    pub error: Option<String>,
    /// What was deleted, once done.
    pub report: Value,
}

/// A property's retention: events older than `months` months are deleted (0: kept).
#[derive(Debug, Clone, Default)]
pub struct RetentionPolicy {
    pub default_months: u32,
    pub by_property: HashMap<String, u32>,
}

impl RetentionPolicy {
    pub fn months(&self, property: &str) -> u32 {
        self.by_property
            .get(property)
            .copied()
            .unwrap_or(self.default_months)
    }

    /// The first local date kept for a property with `months` of retention on `today`:
    /// the same day of the month `months` months before (the month's last day where it
    /// has no such day).
    pub fn cutoff(today: NaiveDate, months: u32) -> NaiveDate {
        today
            .checked_sub_months(chrono::Months::new(months))
            .unwrap_or(NaiveDate::MIN)
    }
}

/// Runs deletions; one at a time (each rewrites the archive and swaps rollups).
pub struct Eraser {
    pub reprocessor: Arc<Reprocessor>,
    /// The log whose records are erased (None: no log on this node).
    pub log: Option<Arc<dyn EventLog>>,
    /// Forgets the columnar files of `(property, from, to)` (set when the node makes
    /// them).
    pub forget_columns: OnceLock<RebuiltHook>,
    jobs: Mutex<HashMap<u64, Arc<Mutex<DeletionStatus>>>>,
    next: AtomicU64,
    one_at_a_time: tokio::sync::Mutex<()>,
}

impl Eraser {
    pub fn new(reprocessor: Arc<Reprocessor>, log: Option<Arc<dyn EventLog>>) -> Self {
        Self {
            reprocessor,
            log,
            forget_columns: OnceLock::new(),
            jobs: Mutex::default(),
            next: AtomicU64::new(1),
            one_at_a_time: tokio::sync::Mutex::new(()),
        }
    }

    pub fn status(&self, id: u64) -> Option<DeletionStatus> {
        let j = self.jobs.lock().unwrap().get(&id).cloned()?;
        let s = j.lock().unwrap().clone();
        Some(s)
    }

    /// Starts a deletion in the background; answers its id.
    pub fn start(self: &Arc<Self>, property: String, target: Target) -> u64 {
        let id = self.next.fetch_add(1, Ordering::SeqCst);
        let status = Arc::new(Mutex::new(DeletionStatus {
            id,
            state: "running".into(),
            phase: "waiting for other deletions".into(),
            property: property.clone(),
            ..Default::default()
        }));
        self.jobs.lock().unwrap().insert(id, status.clone());
        let me = self.clone();
        tokio::spawn(async move {
            let r = me.delete(&property, target, &status).await;
            let mut s = status.lock().unwrap();
            match r {
                Ok(report) => {
                    s.state = "done".into();
                    s.phase = "done".into();
                    s.report = report;
                }
                Err(e) => {
                    tracing::error!(job = id, %property, error = %e, "deletion failed");
                    s.state = "failed".into();
                    s.error = Some(e);
                }
            }
        });
        id
    }

    /// Deletes `target` of `property` from every copy; answers the report.
    pub async fn delete(
        &self,
        property: &str,
        target: Target,
        status: &Mutex<DeletionStatus>,
    ) -> Result<Value, String> {
        let _one = self.one_at_a_time.lock().await;
        let started = Instant::now();
        let phase = |p: &str| status.lock().unwrap().phase = p.to_string();
        let r = &self.reprocessor;
        phase("sealing the log into the archive");
        let archived = r.seal_now().await?;
        let tz = (r.settings)(property).tz;
        let local_date = |ms: i64| footfall_store::rollup::local_time(&tz, ms).date();

        phase("rewriting the archive");
        // An event of local date d has a UTC date within a day of d.
        let dates = match target {
            Target::Before(cutoff) => Some((NaiveDate::MIN, cutoff)),
            _ => None,
        };
        let files = r
            .archive
            .list(Some(property), dates)
            .await
            .map_err(|e| e.to_string())?;
        let (mut rewritten, mut deleted_files, mut deleted_events, mut kept_events) =
            (0u64, 0u64, 0u64, 0u64);
        let mut positions: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
        let mut range: Option<(NaiveDate, NaiveDate)> = None;
        for f in &files {
            let events = r
                .archive
                .read_file(&f.path)
                .await
                .map_err(|e| e.to_string())?;
            let (gone, keep): (Vec<_>, Vec<_>) = events.into_iter().partition(|e| match target {
                Target::Everything => true,
                Target::Visitor(v) => e.visitor as u64 == v,
                Target::Before(cutoff) => local_date(e.timestamp) < cutoff,
            });
            if gone.is_empty() {
                continue;
            }
            for e in &gone {
                positions
                    .entry(e.log_partition as u32)
                    .or_default()
                    .push(e.log_offset as u64);
                let d = local_date(e.timestamp);
                range = Some(range.map_or((d, d), |(a, b)| (a.min(d), b.max(d))));
            }
            deleted_events += gone.len() as u64;
            kept_events += keep.len() as u64;
            if keep.is_empty() {
                r.archive
                    .delete_file(&f.path)
                    .await
                    .map_err(|e| e.to_string())?;
                deleted_files += 1;
            } else {
                r.archive
                    .write_file(&f.path, &keep)
                    .await
                    .map_err(|e| e.to_string())?;
                rewritten += 1;
            }
        }
        let mut report = json!({
            "property": property,
            "target": target.describe(),
            "archive": {"events_deleted": deleted_events, "files_deleted": deleted_files,
                        "files_rewritten": rewritten, "events_kept_in_rewritten_files": kept_events},
        });
        let Some((from, to)) = range else {
            report["log"] = json!({"records_erased": 0});
            report["note"] = json!("nothing to delete");
            report["seconds"] = json!(started.elapsed().as_secs_f64());
            return Ok(report);
        };

        phase("erasing the log's records");
        report["log"] = match &self.log {
            None => json!({"records_erased": 0, "note": "no log on this node"}),
            Some(log) => {
                let log = log.clone();
                let archived = archived.clone();
                let erased = tokio::task::spawn_blocking(move || {
                    let mut n = 0;
                    for (p, offs) in positions {
                        // Only what the archive held when sealed (all of these).
                        let below = archived.get(p as usize).copied().unwrap_or(0);
                        let offs: Vec<u64> = offs.into_iter().filter(|o| *o < below).collect();
                        n += log.erase(p, &offs)?;
                    }
                    Ok::<u64, footfall_log::Error>(n)
                })
                .await
                .map_err(|e| e.to_string())?;
                match erased {
                    Ok(n) => json!({"records_erased": n}),
                    Err(footfall_log::Error::Unsupported(why)) => {
                        json!({"records_erased": 0, "note": why})
                    }
                    Err(e) => return Err(format!("erasing the log's records: {e}")),
                }
            }
        };

        // Neighbouring days too: a visit that crossed midnight is rebuilt whole.
        let (from, to) = (from.pred_opt().unwrap_or(from), to.succ_opt().unwrap_or(to));
        phase("rebuilding the rollups");
        let job = r.start(ReprocessRequest {
            property: Some(property.to_string()),
            all: false,
            from,
            to,
            dry_run: false,
        });
        let done = loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let Some(s) = r.status(job) else {
                return Err("the rebuild job vanished".into());
            };
            match s.state.as_str() {
                "done" => break s,
                "failed" => return Err(format!("rebuilding the rollups: {:?}", s.error)),
                _ => {}
            }
        };
        report["rollups"] = json!({"rebuilt": [from, to], "result": done.result});
        if let Some(forget) = self.forget_columns.get() {
            phase("forgetting the columnar files");
            forget(property.to_string(), from, to).await?;
            report["columnar"] = json!({"forgotten": [from, to], "note": "made again from the archive at the next refresh"});
        }
        report["seconds"] = json!(started.elapsed().as_secs_f64());
        tracing::warn!(%property, report = %report, "data deleted");
        Ok(report)
    }

    /// Applies `policy` every `interval`: each property with a retention has its events
    /// before the cutoff deleted (a run that finds none does nothing more than list and
    /// read the archive's files of the cutoff's edge).
    pub async fn retention_loop(self: Arc<Self>, policy: RetentionPolicy, interval: Duration) {
        let mut t = tokio::time::interval(interval);
        loop {
            t.tick().await;
            for property in (self.reprocessor.properties)() {
                let months = policy.months(&property);
                if months == 0 {
                    continue;
                }
                let tz = (self.reprocessor.settings)(&property).tz;
                let today = chrono::Utc::now().with_timezone(&tz).date_naive();
                let cutoff = RetentionPolicy::cutoff(today, months);
                let status = Mutex::new(DeletionStatus::default());
                match self
                    .delete(&property, Target::Before(cutoff), &status)
                    .await
                {
                    Ok(report) if report["archive"]["events_deleted"] != json!(0) => {
                        tracing::info!(%property, %cutoff, report = %report, "retention applied")
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::error!(%property, error = %e, "retention failed; tried again next time")
                    }
                }
            }
        }
    }
}
