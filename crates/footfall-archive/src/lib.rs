//! The raw archive: every accepted event, as received (before enrichment, address
//! already truncated), in Avro object container files on object storage — the source of
//! truth that reprocessing rebuilds from.
//!
//! - [`Archive`] reads and writes archive files through `object_store` (a local
//!   directory by default, any S3-compatible store by URL).
//! - [`Archiver`] is a log consumer that seals batches of the log into files laid out by
//!   property, UTC date and hour of the event time:
//!   `events/property=FF-…/date=2026-11-26/hour=09/part-<partition>-<first offset>.avro`.
//!
//! Exactly once: a batch `[from, to)` of a partition is first recorded as *pending* in
//! the archiver's state file, then its files are written (names depend only on the
//! partition and `from`, so a redo overwrites the same names with the same events), then
//! the state commits `to`. After a crash the pending batch is redone before anything
//! else. A file is never changed after its batch committed. This crate never writes to
//! the log and never interprets events beyond grouping them.

pub mod position;
pub mod rebuild;
pub mod schema;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path as FsPath;
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, Timelike};
use footfall_event::LoggedEvent;
use footfall_log::EventLog;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

pub use schema::{ArchivedEvent, SCHEMA_JSON, SCHEMA_VERSION};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    #[error("invalid archive location `{0}`: {1}")]
    Location(String, String),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("log: {0}")]
    Log(#[from] footfall_log::Error),
    #[error("avro: {0}")]
    Avro(String),
    #[error("archiver state: {0}")]
    State(String),
}

/// One archive file, as listed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct FileInfo {
    pub property: String,
    pub date: NaiveDate,
    pub hour: u32,
    pub partition: u32,
    pub first_offset: u64,
    pub path: String,
    pub bytes: u64,
}

/// Archive files on an object store.
#[derive(Clone)]
pub struct Archive {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
}

impl Archive {
    /// A local directory (created if missing).
    pub fn local(dir: impl AsRef<FsPath>) -> Result<Self> {
        fs::create_dir_all(dir.as_ref())?;
        let store = object_store::local::LocalFileSystem::new_with_prefix(dir.as_ref())?;
        Ok(Self {
            store: Arc::new(store),
            prefix: Path::default(),
        })
    }

    /// `file:///abs/dir` or `s3://bucket/prefix`; `options` are object_store options
    /// (e.g. `aws_endpoint`, `aws_region`, `aws_access_key_id`, `aws_allow_http`), with
    /// the usual `AWS_*` environment variables as defaults.
    pub fn from_url(url: &str, options: &[(String, String)]) -> Result<Self> {
        let parsed =
            url::Url::parse(url).map_err(|e| Error::Location(url.into(), e.to_string()))?;
        if parsed.scheme() == "file" {
            return Self::local(parsed.path());
        }
        let mut opts: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| k.starts_with("AWS_"))
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect();
        opts.extend(options.iter().cloned());
        let (store, prefix) = object_store::parse_url_opts(&parsed, opts)
            .map_err(|e| Error::Location(url.into(), e.to_string()))?;
        Ok(Self {
            store: Arc::from(store),
            prefix,
        })
    }

    /// The object store the archive is on; files kept beside the archive (the columnar
    /// files) share it, named by [`Self::path_of`].
    pub fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The full path of a name relative to the archive's prefix.
    pub fn path_of(&self, rel: &str) -> Path {
        self.key(rel)
    }

    fn key(&self, rel: &str) -> Path {
        let mut p = self.prefix.clone();
        for part in rel.split('/') {
            p = p.clone().join(part);
        }
        p
    }

    /// Relative file name of a batch's group.
    pub fn file_name(
        property: &str,
        date: NaiveDate,
        hour: u32,
        partition: u32,
        from: u64,
    ) -> String {
        format!(
            "events/property={property}/date={date}/hour={hour:02}/part-{partition:04}-{from:020}.avro"
        )
    }

    /// Writes one file atomically (a put is all-or-nothing on every object store).
    pub async fn write_file(&self, rel: &str, events: &[ArchivedEvent]) -> Result<u64> {
        let data = schema::encode(events)?;
        let n = data.len() as u64;
        self.store
            .put(&self.key(rel), PutPayload::from(data))
            .await?;
        Ok(n)
    }

    /// Deletes a file by its name relative to the archive's prefix (one already gone is
    /// not an error).
    pub async fn delete_file(&self, rel: &str) -> Result<()> {
        match self.store.delete(&self.key(rel)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads a file by its name relative to the archive's prefix (as [`Self::list`]
    /// gives it). A prefix may itself be `events` or look like part of a name, so
    /// names are never guessed to be full paths.
    pub async fn read_file(&self, rel: &str) -> Result<Vec<ArchivedEvent>> {
        let bytes = self.store.get(&self.key(rel)).await?.bytes().await?;
        schema::decode(&bytes)
    }

    /// [`Self::read_file`] of each of `names`, in their order, with up to `parallel`
    /// files read and decoded at once (decoding on the blocking pool, as
    /// [`Self::read_for_rebuild`] does).
    pub async fn read_files(
        &self,
        names: &[String],
        parallel: usize,
    ) -> Result<Vec<Vec<ArchivedEvent>>> {
        use futures::{StreamExt, TryStreamExt};
        futures::stream::iter(names.iter().cloned())
            .map(|name| {
                let me = self.clone();
                async move {
                    let bytes = me.store.get(&me.key(&name)).await?.bytes().await?;
                    tokio::task::spawn_blocking(move || schema::decode(&bytes))
                        .await
                        .map_err(|e| Error::Avro(e.to_string()))?
                }
            })
            .buffered(parallel.max(1))
            .try_collect()
            .await
    }

    /// Reads and indexes `files` with up to `parallel` decodes at once, keeping events
    /// whose event time passes `keep`; answers them per log partition in log order, the
    /// order live processing saw them (see [`rebuild`]). `progress(bytes, events)` is
    /// called per file.
    pub async fn read_for_rebuild(
        &self,
        files: &[FileInfo],
        partitions: usize,
        parallel: usize,
        keep: impl Fn(i64) -> bool + Send + Sync + Copy + 'static,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<rebuild::RebuildInput> {
        use futures::StreamExt;
        let mut out = rebuild::RebuildInput::new(partitions);
        let mut stream = futures::stream::iter(files.iter().cloned())
            .map(|f| {
                let me = self.clone();
                async move {
                    let path = me.key(&f.path);
                    let bytes = me.store.get(&path).await?.bytes().await?;
                    tokio::task::spawn_blocking(move || {
                        let decoded = rebuild::decode_file(bytes.into(), keep)
                            .map_err(|e| Error::Avro(format!("{}: {e}", f.path)))?;
                        Ok::<_, Error>((f.bytes, decoded))
                    })
                    .await
                    .map_err(|e| Error::Avro(e.to_string()))?
                }
            })
            .buffer_unordered(parallel.max(1));
        while let Some(r) = stream.next().await {
            let (bytes, decoded) = r?;
            progress(bytes, decoded.total);
            out.push(decoded);
        }
        out.sort();
        Ok(out)
    }

    /// Files of `property` (or all) whose UTC date lies in `[from, to]` (or all dates).
    pub async fn list(
        &self,
        property: Option<&str>,
        dates: Option<(NaiveDate, NaiveDate)>,
    ) -> Result<Vec<FileInfo>> {
        let base = match property {
            Some(p) => self.key(&format!("events/property={p}")),
            None => self.key("events"),
        };
        let metas: Vec<_> = self.store.list(Some(&base)).try_collect().await?;
        let mut out = Vec::new();
        for m in metas {
            let full = m.location.to_string();
            // Only a whole leading path component is the prefix.
            let prefix = self.prefix.as_ref();
            let rel = if prefix.is_empty() {
                full.as_str()
            } else {
                full.strip_prefix(prefix)
                    .and_then(|r| r.strip_prefix('/'))
                    .unwrap_or(&full)
            }
            .to_string();
            let Some(info) = parse_name(&rel, m.size) else {
                continue; // not an archive file (e.g. an upload in progress elsewhere)
            };
            if let Some((a, b)) = dates {
                if info.date < a || info.date > b {
                    continue;
                }
            }
            out.push(FileInfo { path: rel, ..info });
        }
        out.sort();
        Ok(out)
    }
}

fn parse_name(rel: &str, bytes: u64) -> Option<FileInfo> {
    let mut it = rel.split('/');
    if it.next()? != "events" {
        return None;
    }
    let property = it.next()?.strip_prefix("property=")?.to_string();
    let date = NaiveDate::parse_from_str(it.next()?.strip_prefix("date=")?, "%Y-%m-%d").ok()?;
    let hour = it.next()?.strip_prefix("hour=")?.parse().ok()?;
    let file = it.next()?.strip_prefix("part-")?.strip_suffix(".avro")?;
    let (p, off) = file.split_once('-')?;
    Some(FileInfo {
        property,
        date,
        hour,
        partition: p.parse().ok()?,
        first_offset: off.parse().ok()?,
        path: rel.to_string(),
        bytes,
    })
}

/// The archiver's durable position.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ArchiverState {
    /// Per partition: records below this offset are archived.
    pub offsets: Vec<u64>,
    /// Per partition: a batch `[from, to)` being written.
    pub pending: Vec<Option<(u64, u64)>>,
}

/// What one `seal` did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct SealReport {
    pub events: u64,
    pub files: u64,
    pub bytes: u64,
}

/// Seals the log into archive files.
pub struct Archiver {
    archive: Archive,
    log: Arc<dyn EventLog>,
    position: Box<dyn position::PositionStore>,
    state: ArchiverState,
    /// Upper bound of log bytes per partition per batch (memory bound).
    pub batch_bytes: usize,
}

impl Archiver {
    /// Opens with the position in `state_dir` (created on first use).
    pub fn open(
        archive: Archive,
        log: Arc<dyn EventLog>,
        state_dir: impl AsRef<FsPath>,
    ) -> Result<Self> {
        Self::open_at(
            archive,
            log,
            Box::new(position::FilePosition::open(state_dir)?),
        )
    }

    /// Opens with the position kept in `position` (a file, or the shared database).
    pub fn open_at(
        archive: Archive,
        log: Arc<dyn EventLog>,
        position: Box<dyn position::PositionStore>,
    ) -> Result<Self> {
        let n = log.partitions() as usize;
        let state = match position.load()? {
            Some(s) => s,
            None => ArchiverState {
                offsets: (0..n as u32).map(|p| log.start_offset(p)).collect(),
                pending: vec![None; n],
            },
        };
        if state.offsets.len() != n {
            return Err(Error::State(format!(
                "state has {} partitions, the log {n}",
                state.offsets.len()
            )));
        }
        Ok(Self {
            archive,
            log,
            position,
            state,
            batch_bytes: 32 * 1024 * 1024,
        })
    }

    /// Offsets below which everything is archived (safe for log retention).
    pub fn offsets(&self) -> Vec<u64> {
        self.state.offsets.clone()
    }

    pub fn archive(&self) -> &Archive {
        &self.archive
    }

    /// Reads `[from, to)` of a partition (or up to `batch_bytes` from `from` when `to`
    /// is None), grouped by file. Returns the groups and the end offset.
    fn read_batch(
        &self,
        partition: u32,
        from: u64,
        to: Option<u64>,
    ) -> Result<(BTreeMap<String, Vec<ArchivedEvent>>, u64, u64)> {
        let limit = to.unwrap_or(u64::MAX);
        let mut at = from;
        let mut read = 0usize;
        let mut groups: BTreeMap<String, Vec<ArchivedEvent>> = BTreeMap::new();
        let mut n = 0;
        while at < limit && (to.is_some() || read < self.batch_bytes) {
            let recs = self.log.read(partition, at, 4 * 1024 * 1024)?;
            if recs.is_empty() {
                break;
            }
            for r in recs {
                if r.offset >= limit {
                    break;
                }
                read += r.payload.len();
                at = r.next;
                let e = match LoggedEvent::decode(&r.payload) {
                    Ok(e) => e,
                    Err(footfall_event::DecodeError::Erased) => continue,
                    Err(err) => {
                        tracing::error!(partition, offset = r.offset, error = %err, "undecodable record not archived");
                        continue;
                    }
                };
                let t = DateTime::from_timestamp_millis(e.timestamp).unwrap_or_default();
                let name =
                    Archive::file_name(&e.property, t.date_naive(), t.hour(), partition, from);
                groups
                    .entry(name)
                    .or_default()
                    .push(ArchivedEvent::from_logged(&e, partition, r.offset));
                n += 1;
                if to.is_none() && read >= self.batch_bytes {
                    break;
                }
            }
        }
        Ok((groups, at, n))
    }

    /// Writes a pending batch's files, then commits its end offset.
    async fn write_and_commit(
        &mut self,
        partition: usize,
        to: u64,
        groups: &BTreeMap<String, Vec<ArchivedEvent>>,
        events: u64,
        report: &mut SealReport,
    ) -> Result<()> {
        for (name, batch) in groups {
            report.bytes += self.archive.write_file(name, batch).await?;
        }
        self.state.offsets[partition] = to;
        self.state.pending[partition] = None;
        self.position.save(&self.state)?;
        report.events += events;
        report.files += groups.len() as u64;
        Ok(())
    }

    /// Archives everything durable in the log now, batch by batch; returns what it did.
    pub async fn seal(&mut self) -> Result<SealReport> {
        let mut report = SealReport::default();
        // Redo a batch a crash interrupted: same range, same names.
        for p in 0..self.state.pending.len() {
            if let Some((from, to)) = self.state.pending[p] {
                let (groups, _, n) = self.read_batch(p as u32, from, Some(to))?;
                self.write_and_commit(p, to, &groups, n, &mut report)
                    .await?;
            }
        }
        loop {
            let mut progressed = false;
            for p in 0..self.state.offsets.len() {
                let from = self.state.offsets[p];
                if self.log.end_offset(p as u32) <= from {
                    continue;
                }
                let (groups, to, n) = self.read_batch(p as u32, from, None)?;
                if to == from {
                    continue;
                }
                self.state.pending[p] = Some((from, to));
                self.position.save(&self.state)?;
                self.write_and_commit(p, to, &groups, n, &mut report)
                    .await?;
                progressed = true;
            }
            if !progressed {
                return Ok(report);
            }
        }
    }
}

/// A request to seal now; answered with the archived offsets once the seal is done.
pub type SealRequest = tokio::sync::oneshot::Sender<Result<Vec<u64>, String>>;

/// The archiver role: seals the log every `interval`, and at once when a request comes
/// (reprocessing asks before it reads the archive). `archived` always holds the offsets
/// below which everything is archived (what log retention may delete up to). A failed
/// seal is logged and retried at the next turn; nothing is skipped.
pub async fn seal_loop(
    mut archiver: Archiver,
    interval: std::time::Duration,
    mut requests: tokio::sync::mpsc::Receiver<SealRequest>,
    archived: std::sync::Arc<std::sync::Mutex<Vec<u64>>>,
) {
    loop {
        let mut waiting = Vec::new();
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            Some(req) = requests.recv() => waiting.push(req),
        }
        while let Ok(req) = requests.try_recv() {
            waiting.push(req);
        }
        let r = archiver.seal().await;
        match &r {
            Ok(rep) if rep.events > 0 => {
                tracing::debug!(events = rep.events, files = rep.files, "archive sealed")
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "archive seal failed; will retry"),
        }
        *archived.lock().unwrap() = archiver.offsets();
        for w in waiting {
            let _ = w.send(
                r.as_ref()
                    .map(|_| archiver.offsets())
                    .map_err(|e| e.to_string()),
            );
        }
    }
}

#[cfg(test)]
mod prefix_tests {
    use super::*;

    fn event(offset: i64) -> ArchivedEvent {
        ArchivedEvent {
            property: "FF-A".into(),
            received_at: 1,
            timestamp: 1,
            visitor: 7,
            name: "pageview".into(),
            url: None,
            referrer: None,
            title: None,
            props: Default::default(),
            revenue: None,
            interactive: true,
            user_agent: None,
            ip_prefix: None,
            log_partition: 0,
            log_offset: offset,
            server_side: false,
        }
    }

    /// A prefix that is also the first component of every file name (`events`), and
    /// one that only starts like it (`ev`): listed names read back.
    #[tokio::test]
    async fn files_read_back_under_any_prefix() {
        for prefix in ["events", "ev", "a/events", ""] {
            let a = Archive {
                store: Arc::new(object_store::memory::InMemory::new()),
                prefix: Path::from(prefix),
            };
            let date = NaiveDate::from_ymd_opt(2026, 12, 6).unwrap();
            let name = Archive::file_name("FF-A", date, 9, 0, 0);
            a.write_file(&name, &[event(0), event(1)]).await.unwrap();
            let files = a.list(Some("FF-A"), None).await.unwrap();
            assert_eq!(files.len(), 1, "prefix {prefix:?}");
            assert_eq!(files[0].path, name, "prefix {prefix:?}");
            assert_eq!(a.read_file(&files[0].path).await.unwrap().len(), 2);
        }
    }
}
