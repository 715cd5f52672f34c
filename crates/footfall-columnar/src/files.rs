//! The columnar files beside the archive, and how they are made from it.
//!
//! Layout: `columns/property=<id>/date=<local date>/events.parquet`, one file per
//! property and local day, with `manifest.json` beside it naming the archive files it
//! was made from. A day's file is a pure function of those archive files (and of
//! [`crate::FORMAT`]), so making it again gives the same rows: exactly once by
//! construction, whatever crashed in between. [`Columns::refresh`] remakes every day
//! whose archive files changed since its manifest, and a new [`crate::FORMAT`] (a
//! change of the rules or the schema) remakes every day.
//!
//! A day's rows are its events (by the property's local time), each with its whole
//! visit. Visits are found in the events of a window around the day — from 24 hours
//! before its local midnight to 6 hours after the next — so a visit that began the
//! evening before, or runs past midnight, is whole; a visit longer than that window
//! would be cut (none is in practice: it takes an event every 30 minutes all day).
//! Consecutive days to make are made together from one read of their archive files
//! (up to [`MAX_RUN_DAYS`]); a day's rows are the same either way, but for a visit
//! longer than the margins.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

use chrono::{Duration, NaiveDate, TimeZone};
use chrono_tz::Tz;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::Compression;
use datafusion::parquet::file::properties::WriterProperties;
use footfall_archive::{Archive, FileInfo};
use footfall_event::AsEventView;
use footfall_processor::rows::EventRow;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use crate::{table, Error, Result, FORMAT};

const BEFORE_MS: i64 = 24 * 3_600_000;
const AFTER_MS: i64 = 6 * 3_600_000;
const HOUR_MS: i64 = 3_600_000;
/// At most this many consecutive days are made from one read (bounds memory).
const MAX_RUN_DAYS: usize = 7;

/// Archive files decoded, and days' files encoded, at once when making days: the
/// parallelism a rebuild from the archive uses too.
const MAKE_THREADS: usize = 2;

/// A day's Parquet file and its number of rows.
type DayFile = (Vec<u8>, u64);

/// One day's rows as a Parquet file.
fn day_file(day: &mut [&EventRow], tz: &Tz) -> Result<DayFile> {
    day.sort_by_key(|r| r.timestamp);
    let batch = table::to_batch(day, tz)?;
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let mut buf = Vec::new();
    let mut w = ArrowWriter::try_new(&mut buf, table::schema(), Some(props))?;
    w.write(&batch)?;
    w.close()?;
    Ok((buf, day.len() as u64))
}

/// What a day's file was made from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Manifest {
    format: u32,
    /// The property's zone and visit gap the rows were made with.
    zone: String,
    gap_ms: i64,
    /// Archive files (name, bytes) read for the day, sorted.
    sources: Vec<(String, u64)>,
    rows: u64,
}

/// A property's zone and visit gap in milliseconds (None: the property is gone).
pub type Settings = dyn Fn(&str) -> Option<(Tz, i64)> + Send + Sync;

/// What one [`Columns::refresh`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct RefreshReport {
    /// Days whose file was made again.
    pub days: u64,
    pub rows: u64,
}

/// The columnar files of every property, on the archive's object store.
pub struct Columns {
    archive: Archive,
    /// Manifests already read or written (the object store holds the truth).
    known: Mutex<HashMap<(String, NaiveDate), Manifest>>,
}

/// Local midnight starting `date` (the first instant of the day, even where midnight
/// itself is skipped by a clock change).
fn day_start(tz: &Tz, date: NaiveDate) -> i64 {
    let mut t = date.and_hms_opt(0, 0, 0).unwrap();
    for _ in 0..4 {
        if let Some(x) = tz.from_local_datetime(&t).earliest() {
            return x.timestamp_millis();
        }
        t += Duration::minutes(30);
    }
    t.and_utc().timestamp_millis()
}

/// The UTC milliseconds `[from, to)` of events read for `date`.
fn window(tz: &Tz, date: NaiveDate) -> (i64, i64) {
    (
        day_start(tz, date) - BEFORE_MS,
        day_start(tz, date + Duration::days(1)) + AFTER_MS,
    )
}

/// UTC start of an archive file's hour.
fn hour_start(f: &FileInfo) -> i64 {
    f.date
        .and_hms_opt(f.hour, 0, 0)
        .unwrap()
        .and_utc()
        .timestamp_millis()
}

/// The local dates whose window holds part of `f`'s hour.
fn days_of(tz: &Tz, f: &FileInfo) -> Vec<NaiveDate> {
    let h = hour_start(f);
    let first = footfall_store::rollup::local_time(tz, h - AFTER_MS - 1).date();
    let last = footfall_store::rollup::local_time(tz, h + HOUR_MS + BEFORE_MS).date();
    first
        .iter_days()
        .take_while(|d| *d <= last)
        .filter(|d| {
            let (a, b) = window(tz, *d);
            h < b && h + HOUR_MS > a
        })
        .collect()
}

impl Columns {
    /// The files beside `archive`.
    pub fn new(archive: Archive) -> Self {
        Self {
            archive,
            known: Mutex::new(HashMap::new()),
        }
    }

    pub fn archive(&self) -> &Archive {
        &self.archive
    }

    fn dir(property: &str, date: NaiveDate) -> String {
        format!("columns/property={property}/date={date}")
    }

    /// The days of `property` that have a file in `[from, to]`, with the file's path on
    /// the object store.
    pub async fn day_files(
        &self,
        property: &str,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<(NaiveDate, Path)>> {
        Ok(self
            .day_objects(property, from, to)
            .await?
            .into_iter()
            .map(|(d, m)| (d, m.location))
            .collect())
    }

    /// [`Self::day_files`] with each file's size and modification time.
    pub async fn day_objects(
        &self,
        property: &str,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<(NaiveDate, object_store::ObjectMeta)>> {
        let base = self
            .archive
            .path_of(&format!("columns/property={property}"));
        let metas: Vec<_> = self
            .archive
            .object_store()
            .list(Some(&base))
            .try_collect()
            .await?;
        let mut out = Vec::new();
        for m in metas {
            let s = m.location.as_ref();
            if !s.ends_with("/events.parquet") {
                continue;
            }
            let Some(d) = s
                .rsplit('/')
                .nth(1)
                .and_then(|x| x.strip_prefix("date="))
                .and_then(|x| NaiveDate::parse_from_str(x, "%Y-%m-%d").ok())
            else {
                continue;
            };
            if d >= from && d <= to {
                out.push((d, m));
            }
        }
        out.sort_by(|a, b| (a.0, &a.1.location).cmp(&(b.0, &b.1.location)));
        Ok(out)
    }

    async fn manifest(&self, property: &str, date: NaiveDate) -> Result<Option<Manifest>> {
        if let Some(m) = self
            .known
            .lock()
            .unwrap()
            .get(&(property.to_string(), date))
        {
            return Ok(Some(m.clone()));
        }
        let path = self
            .archive
            .path_of(&format!("{}/manifest.json", Self::dir(property, date)));
        match self.archive.object_store().get(&path).await {
            Ok(r) => {
                let bytes = r.bytes().await?;
                // An unreadable manifest only means the day is made again.
                let m: Option<Manifest> = serde_json::from_slice(&bytes).ok();
                if let Some(m) = &m {
                    self.known
                        .lock()
                        .unwrap()
                        .insert((property.to_string(), date), m.clone());
                }
                Ok(m)
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Makes every day of every property whose archive files differ from its
    /// manifest's (or whose manifest is of another [`FORMAT`], zone or visit gap);
    /// `settings` gives a property's zone and visit gap in milliseconds (None: the
    /// property is gone, skipped).
    pub async fn refresh(&self, settings: &Settings) -> Result<RefreshReport> {
        let files = self.archive.list(None, None).await?;
        let mut by_property: BTreeMap<&str, Vec<&FileInfo>> = BTreeMap::new();
        for f in &files {
            by_property.entry(&f.property).or_default().push(f);
        }
        let mut report = RefreshReport::default();
        for (property, files) in by_property {
            let Some((tz, gap_ms)) = settings(property) else {
                continue;
            };
            let mut sources: BTreeMap<NaiveDate, BTreeSet<(String, u64)>> = BTreeMap::new();
            for f in &files {
                for d in days_of(&tz, f) {
                    sources
                        .entry(d)
                        .or_default()
                        .insert((f.path.clone(), f.bytes));
                }
            }
            // Days to make, in runs of consecutive days: a run reads its archive files
            // once (neighbouring days share most of their windows).
            let mut run: Vec<(NaiveDate, Vec<(String, u64)>)> = Vec::new();
            for (date, srcs) in sources {
                let srcs: Vec<(String, u64)> = srcs.into_iter().collect();
                let up_to_date = self.manifest(property, date).await?.is_some_and(|m| {
                    m.format == FORMAT
                        && m.zone == tz.name()
                        && m.gap_ms == gap_ms
                        && m.sources == srcs
                });
                if up_to_date {
                    continue;
                }
                let follows = run
                    .last()
                    .is_some_and(|(d, _)| *d + Duration::days(1) == date);
                if !follows || run.len() >= MAX_RUN_DAYS {
                    report.rows += self.make_days(property, &tz, gap_ms, &mut run).await?;
                }
                run.push((date, srcs));
                report.days += 1;
            }
            report.rows += self.make_days(property, &tz, gap_ms, &mut run).await?;
        }
        Ok(report)
    }

    /// Forgets what was made for `property` in `[from, to]`, so that the next refresh
    /// makes those days again (reprocessing after a fix of the rules).
    pub async fn invalidate(&self, property: &str, from: NaiveDate, to: NaiveDate) -> Result<()> {
        for d in from.iter_days().take_while(|d| *d <= to) {
            self.known
                .lock()
                .unwrap()
                .remove(&(property.to_string(), d));
            let path = self
                .archive
                .path_of(&format!("{}/manifest.json", Self::dir(property, d)));
            match self.archive.object_store().delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Deletes the files of `property` in `[from, to]` (data and manifest), after its
    /// events there were deleted from the archive: the next refresh makes again the days
    /// that still have events, and the others stay gone.
    pub async fn forget(&self, property: &str, from: NaiveDate, to: NaiveDate) -> Result<()> {
        let store = self.archive.object_store();
        for d in from.iter_days().take_while(|d| *d <= to) {
            self.known
                .lock()
                .unwrap()
                .remove(&(property.to_string(), d));
            for name in ["events.parquet", "manifest.json"] {
                let path = self
                    .archive
                    .path_of(&format!("{}/{name}", Self::dir(property, d)));
                match store.delete(&path).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(())
    }

    /// Makes the files of a run of consecutive days (each with its archive file names and
    /// sizes) from one read of their archive files, and empties the run; answers the
    /// rows written.
    async fn make_days(
        &self,
        property: &str,
        tz: &Tz,
        gap: i64,
        run: &mut Vec<(NaiveDate, Vec<(String, u64)>)>,
    ) -> Result<u64> {
        let days = std::mem::take(run);
        let (Some((first, _)), Some((last, _))) = (days.first(), days.last()) else {
            return Ok(0);
        };
        let (from, to) = (window(tz, *first).0, window(tz, *last).1);
        let names: BTreeSet<&str> = days
            .iter()
            .flat_map(|(_, s)| s.iter().map(|(n, _)| n.as_str()))
            .collect();
        let names: Vec<String> = names.into_iter().map(str::to_string).collect();
        let per_file = self.archive.read_files(&names, MAKE_THREADS).await?;
        let tz2 = *tz;
        let dates: Vec<NaiveDate> = days.iter().map(|(d, _)| *d).collect();
        let files = tokio::task::spawn_blocking(move || -> Result<Vec<DayFile>> {
            // Events in the window, with their log position; sorted by index rather than
            // moved (an event is a large struct, and a sort of them was a fifth of the
            // time).
            let mut logged = Vec::with_capacity(per_file.iter().map(Vec::len).sum());
            let mut order: Vec<(i32, i64, u32)> = Vec::with_capacity(logged.capacity());
            for e in per_file.into_iter().flatten() {
                if e.timestamp >= from && e.timestamp < to {
                    order.push((e.log_partition, e.log_offset, logged.len() as u32));
                    logged.push(e.into_logged());
                }
            }
            // Log order within a partition, as live processing saw them.
            order.sort_unstable();
            let views: Vec<_> = order
                .iter()
                .map(|k| logged[k.2 as usize].as_view())
                .collect();
            let rows = footfall_processor::rows::event_rows(&views, gap);
            let mut by_day: BTreeMap<NaiveDate, Vec<&EventRow>> = BTreeMap::new();
            for r in &rows {
                let d = footfall_store::rollup::local_time(&tz2, r.timestamp).date();
                by_day.entry(d).or_default().push(r);
            }
            // The days' files are encoded in parallel, thread t taking days t,
            // t + MAKE_THREADS, ….
            let threads = MAKE_THREADS.min(dates.len()).max(1);
            let mut shares: Vec<Vec<(usize, Vec<&EventRow>)>> = vec![Vec::new(); threads];
            for (i, d) in dates.iter().enumerate() {
                shares[i % threads].push((i, by_day.remove(d).unwrap_or_default()));
            }
            let mut made: Vec<(usize, Result<DayFile>)> = std::thread::scope(|s| {
                let handles: Vec<_> = shares
                    .into_iter()
                    .map(|share| {
                        s.spawn(move || {
                            share
                                .into_iter()
                                .map(|(i, mut day)| (i, day_file(&mut day, &tz2)))
                                .collect::<Vec<_>>()
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .flat_map(|h| h.join().expect("encoding a day does not panic"))
                    .collect()
            });
            made.sort_by_key(|(i, _)| *i);
            made.into_iter().map(|(_, r)| r).collect()
        })
        .await
        .map_err(|e| Error::Other(e.to_string()))??;
        let mut total = 0;
        for ((date, sources), (bytes, rows)) in days.into_iter().zip(files) {
            self.put_day(property, tz, gap, date, sources, bytes, rows)
                .await?;
            total += rows;
        }
        Ok(total)
    }

    /// Writes one day's file, then its manifest.
    #[allow(clippy::too_many_arguments)]
    async fn put_day(
        &self,
        property: &str,
        tz: &Tz,
        gap: i64,
        date: NaiveDate,
        sources: Vec<(String, u64)>,
        bytes: Vec<u8>,
        rows: u64,
    ) -> Result<()> {
        let dir = Self::dir(property, date);
        let store = self.archive.object_store();
        let data_path = self.archive.path_of(&format!("{dir}/events.parquet"));
        if rows == 0 {
            match store.delete(&data_path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        } else {
            store.put(&data_path, PutPayload::from(bytes)).await?;
        }
        // The manifest last: a crash before it only means the day is made again.
        let m = Manifest {
            format: FORMAT,
            zone: tz.name().to_string(),
            gap_ms: gap,
            sources,
            rows,
        };
        let path = self.archive.path_of(&format!("{dir}/manifest.json"));
        let json = serde_json::to_vec(&m).map_err(|e| Error::Other(e.to_string()))?;
        store.put(&path, PutPayload::from(json)).await?;
        self.known
            .lock()
            .unwrap()
            .insert((property.to_string(), date), m);
        Ok(())
    }
}

/// The columnar role's loop: refreshes every `interval` (a failed pass is logged and
/// retried at the next).
pub async fn refresh_loop(
    columns: std::sync::Arc<Columns>,
    interval: std::time::Duration,
    settings: std::sync::Arc<Settings>,
) {
    loop {
        match columns.refresh(&*settings).await {
            Ok(r) if r.days > 0 => {
                tracing::debug!(days = r.days, rows = r.rows, "columnar files made")
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "columnar refresh failed; will retry"),
        }
        tokio::time::sleep(interval).await;
    }
}
