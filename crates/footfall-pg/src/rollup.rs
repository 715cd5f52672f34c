//! [`RollupStore`] on PostgreSQL.
//!
//! Tables (docs/DISTRIBUTED.md):
//! - `ff_rollup_daily (property, day, part) → generation, <section>…, hours`: one local
//!   day of one property as written by one writer `part`. The day bucket is kept as one
//!   column per [`Sections`] section (`totals`, `pages`, `sources`, …) and its hour
//!   buckets as one more, each postcard-encoded, so a query fetches only what it reads:
//!   a dashboard's totals and top pages are a tenth of a day's bytes. A day's
//!   statistics are the merge of its parts (disjoint sets of visitors, so counts add
//!   and sketches merge exactly).
//! - `ff_rollup_minutes (property, part) → body`: realtime minutes.
//! - `ff_checkpoints (part) → generation, offsets, state`: the writer's log offsets and
//!   processor state.
//!
//! A checkpoint is one transaction: the changed days, the minutes and the checkpoint
//! row. It commits only if the part's generation is still the one this writer loaded or
//! last wrote, so a writer that another has replaced (a processor presumed dead that
//! was not) can never overwrite the newer one's rollups: it fails instead.
//!
//! Two ways to open it:
//! - [`PgRollupStore::open_writer`] (the processor role): the part's rollups are loaded
//!   into memory and updated there; reads in the same process see them at once.
//! - [`PgRollupStore::open_reader`] (query nodes): a read asks the database which
//!   generation each day of the range is at and fetches, in the same statement, only
//!   the sections its bounded cache does not hold at that generation — so an answer
//!   never mixes two checkpoints. For `max_staleness` after such a statement, reads of
//!   the same property within its range are answered from what it returned, without
//!   asking again: an answer is then at most that much older than the last checkpoint.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use std::collections::HashMap;
use std::time::{Duration, Instant};

use footfall_store::{
    Bucket, Checkpoint, Grain, LocalDay, LocalHour, Minute, MinuteStats, Part, RollupRead,
    RollupStore, Rollups, Sections,
};
use serde::{Deserialize, Serialize};

use crate::conn::Pool;
use crate::meta::ensure_schema;
use crate::Error;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS ff_rollup_daily (
    property TEXT NOT NULL,
    day INTEGER NOT NULL,
    part INTEGER NOT NULL,
    generation BIGINT NOT NULL,
    totals BYTEA NOT NULL,
    pages BYTEA NOT NULL,
    names BYTEA NOT NULL,
    sources BYTEA NOT NULL,
    entry_pages BYTEA NOT NULL,
    visit_keys BYTEA NOT NULL,
    props BYTEA NOT NULL,
    revenue BYTEA NOT NULL,
    filtered BYTEA NOT NULL,
    hours BYTEA NOT NULL,
    PRIMARY KEY (property, day, part)
);
CREATE TABLE IF NOT EXISTS ff_rollup_minutes (
    property TEXT NOT NULL,
    part INTEGER NOT NULL,
    generation BIGINT NOT NULL,
    body BYTEA NOT NULL,
    PRIMARY KEY (property, part)
);
CREATE TABLE IF NOT EXISTS ff_checkpoints (
    part INTEGER PRIMARY KEY,
    generation BIGINT NOT NULL,
    offsets BYTEA NOT NULL,
    state BYTEA NOT NULL
);
";

fn encode(v: &impl Serialize) -> Result<Vec<u8>, Error> {
    postcard::to_allocvec(v).map_err(|e| Error::Corrupt(e.to_string()))
}

fn decode<T: for<'de> Deserialize<'de>>(b: &[u8], what: &str) -> Result<T, Error> {
    postcard::from_bytes(b).map_err(|e| Error::Corrupt(format!("{what}: {e}")))
}

/// The bounded cache of a reader.
#[derive(Debug, Clone, Copy)]
pub struct ReadCacheOptions {
    /// Encoded bytes of day rows kept, about (least recently used go first).
    pub max_bytes: u64,
    /// Connections used for reads.
    pub connections: usize,
    /// How long what one statement returned answers later reads of the same property
    /// and range without asking the database again (0: every read asks).
    pub max_staleness: Duration,
}

impl Default for ReadCacheOptions {
    fn default() -> Self {
        Self {
            max_bytes: 256 << 20,
            connections: 4,
            max_staleness: Duration::from_millis(250),
        }
    }
}

/// The columns of a day row, in the order of [`Sections::EACH`], then `hours`.
fn columns() -> impl Iterator<Item = &'static str> {
    Sections::EACH
        .iter()
        .map(|(_, name)| *name)
        .chain(std::iter::once("hours"))
}

/// The bit of a cached row's mask that says it holds its hours.
const HOURS_BIT: i32 = 1 << 15;

type CacheKey = (String, i32);

/// A day row of one part as far as this reader fetched it.
#[derive(Default, Clone)]
struct CachedRow {
    /// Sections of `day` fetched; the others are empty.
    sections: Sections,
    day: Bucket,
    /// Fetched only for hour scans.
    hours: Option<Vec<(LocalHour, Bucket)>>,
    /// Encoded bytes fetched, for the cache's weight.
    bytes: usize,
}

impl CachedRow {
    fn holds(&self, need: Sections, hours: bool) -> bool {
        self.sections.contains(need) && (!hours || self.hours.is_some())
    }

    fn mask(&self) -> i32 {
        self.sections.bits() as i32 | if self.hours.is_some() { HOURS_BIT } else { 0 }
    }
}

/// The parts of one cached day: (part, generation, row).
type CachedDay = Arc<Vec<(i32, i64, Arc<CachedRow>)>>;

/// What one statement returned for a property: every row of the day range at its
/// generation then, answering reads within `max_staleness`.
struct Recent {
    at: Instant,
    days: RangeInclusive<i32>,
    rows: Vec<(i32, Arc<CachedRow>)>,
}

struct Writer {
    part: i32,
    /// When set, a checkpoint commits only while this owner holds the part's lease.
    lease_owner: Option<String>,
    rollups: RwLock<Rollups>,
    /// The generation of the part's checkpoint row this writer holds (0: none yet).
    generation: Mutex<i64>,
}

pub struct PgRollupStore {
    pool: Pool,
    writer: Option<Writer>,
    cache: moka::sync::Cache<CacheKey, CachedDay>,
    recent: Mutex<HashMap<String, Recent>>,
    max_staleness: Duration,
    bytes: AtomicU64,
}

/// A day row's columns decoded into a day bucket and its hours.
fn decode_row(
    cols: &[Option<&[u8]>],
    base: Option<&CachedRow>,
    hours_wanted: bool,
) -> Result<CachedRow, Error> {
    let mut row = base.cloned().unwrap_or_default();
    for ((s, name), col) in Sections::EACH.iter().zip(cols) {
        if let Some(b) = col {
            row.day
                .decode_section(*s, b)
                .map_err(|e| Error::Corrupt(format!("day row, {name}: {e}")))?;
            row.sections = row.sections | *s;
            row.bytes += b.len();
        }
    }
    if hours_wanted {
        if let Some(Some(b)) = cols.get(Sections::EACH.len()) {
            row.hours = Some(decode(b, "day row, hours")?);
            row.bytes += b.len();
        }
    }
    Ok(row)
}

impl PgRollupStore {
    /// The writer of `part` (a processor): loads that part's checkpoint and rollups.
    /// With `lease_owner`, each checkpoint commits only while that owner holds the
    /// part's lease ([`crate::PgLeases`]), so a processor that lost its partition
    /// (stalled past its lease) can no longer write it.
    pub fn open_writer(url: &str, part: i32, lease_owner: Option<String>) -> Result<Self, Error> {
        let pool = Pool::new(url, 1, "rollups-writer")?;
        ensure_schema(&pool, SCHEMA)?;
        ensure_schema(&pool, crate::leases::SCHEMA)?;
        let select = format!(
            "SELECT property, day, {} FROM ff_rollup_daily WHERE part = $1",
            columns().collect::<Vec<_>>().join(", ")
        );
        let (checkpoint, rows, minutes) = pool.call(move |c| {
            let mut t = c
                .build_transaction()
                .isolation_level(postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()?;
            // The processor state is read when the processor asks for it, not kept.
            let cp = t.query_opt(
                "SELECT generation, offsets, length(state) FROM ff_checkpoints WHERE part = $1",
                &[&part],
            )?;
            let cp = cp.map(|r| {
                (
                    r.get::<_, i64>(0),
                    r.get::<_, Vec<u8>>(1),
                    r.get::<_, i32>(2),
                )
            });
            let rows = t.query(select.as_str(), &[&part])?;
            let minutes: Vec<(String, Vec<u8>)> = t
                .query(
                    "SELECT property, body FROM ff_rollup_minutes WHERE part = $1",
                    &[&part],
                )?
                .into_iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            t.commit()?;
            Ok((cp, rows, minutes))
        })?;
        let mut rollups = Rollups::default();
        let mut bytes = 0u64;
        for r in rows {
            let property: String = r.get(0);
            let day: i32 = r.get(1);
            let cols: Vec<Option<&[u8]>> = (2..r.len()).map(|i| Some(r.get(i))).collect();
            let row = decode_row(&cols, None, true)?;
            bytes += row.bytes as u64;
            let p = rollups.property_mut(&property);
            p.days.insert(LocalDay(day), row.day);
            p.hours.extend(row.hours.unwrap_or_default());
        }
        for (property, body) in minutes {
            bytes += body.len() as u64;
            rollups.property_mut(&property).minutes = decode(&body, "minutes row")?;
        }
        let generation = match checkpoint {
            Some((g, offsets, state_len)) => {
                bytes += offsets.len() as u64 + state_len.max(0) as u64;
                g
            }
            None => 0,
        };
        Ok(Self {
            pool,
            writer: Some(Writer {
                part,
                lease_owner,
                rollups: RwLock::new(rollups),
                generation: Mutex::new(generation),
            }),
            cache: moka::sync::Cache::new(0),
            recent: Mutex::default(),
            max_staleness: Duration::ZERO,
            bytes: AtomicU64::new(bytes),
        })
    }

    /// A reader (a query node): answers from the database through a bounded cache.
    pub fn open_reader(url: &str, opts: ReadCacheOptions) -> Result<Self, Error> {
        let pool = Pool::new(url, opts.connections, "rollups-reader")?;
        ensure_schema(&pool, SCHEMA)?;
        let cache = moka::sync::Cache::builder()
            .max_capacity(opts.max_bytes)
            .weigher(|_k: &CacheKey, v: &CachedDay| {
                let bytes: usize = v.iter().map(|(_, _, r)| r.bytes + 64).sum();
                bytes.min(u32::MAX as usize) as u32
            })
            .build();
        Ok(Self {
            pool,
            writer: None,
            cache,
            recent: Mutex::default(),
            max_staleness: opts.max_staleness,
            bytes: AtomicU64::new(0),
        })
    }

    /// Whether the database answers (for `/readyz`).
    pub fn ping(&self) -> Result<(), Error> {
        self.pool.call(|c| c.simple_query("SELECT 1").map(|_| ()))
    }

    /// The rows of `days` that the last statement for `property` returned, if it was
    /// made within `max_staleness`, covered the range and fetched what is needed.
    fn recent_rows(
        &self,
        property: &str,
        days: &RangeInclusive<i32>,
        need: Sections,
        hours: bool,
    ) -> Option<Vec<(i32, Arc<CachedRow>)>> {
        if self.max_staleness.is_zero() {
            return None;
        }
        let recent = self.recent.lock().unwrap();
        let r = recent.get(property)?;
        if r.at.elapsed() > self.max_staleness
            || r.days.start() > days.start()
            || r.days.end() < days.end()
        {
            return None;
        }
        let rows: Vec<(i32, Arc<CachedRow>)> = r
            .rows
            .iter()
            .filter(|(d, _)| days.contains(d))
            .cloned()
            .collect();
        rows.iter()
            .all(|(_, row)| row.holds(need, hours))
            .then_some(rows)
    }

    /// Reader: the rows of `days` for `property`, each at its current generation and
    /// holding the `need`ed sections (and its hours, with `hours`). One statement (one
    /// snapshot, one round trip) lists every row of the range with its generation and
    /// sends only the columns the cache does not hold at that generation.
    fn fetch_days(
        &self,
        property: &str,
        days: RangeInclusive<LocalDay>,
        need: Sections,
        hours: bool,
    ) -> Result<Vec<(i32, Arc<CachedRow>)>, Error> {
        use postgres::types::Type;
        let (lo, hi) = (days.start().0, days.end().0);
        if let Some(rows) = self.recent_rows(property, &(lo..=hi), need, hours) {
            return Ok(rows);
        }
        let asked_at = Instant::now();
        let mut cached: BTreeMap<i32, CachedDay> = BTreeMap::new();
        let (mut c_day, mut c_part, mut c_gen, mut c_mask) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for d in lo..=hi {
            if let Some(parts) = self.cache.get(&(property.to_string(), d)) {
                for (part, gen, row) in parts.iter() {
                    c_day.push(d);
                    c_part.push(*part);
                    c_gen.push(*gen);
                    c_mask.push(row.mask());
                }
                cached.insert(d, parts);
            }
        }
        // A column comes back NULL where the cache holds it at the row's generation.
        let mut wanted: Vec<(i32, &str)> = Sections::EACH
            .iter()
            .filter(|(s, _)| need.contains(*s))
            .map(|(s, name)| (s.bits() as i32, *name))
            .collect();
        if hours {
            wanted.push((HOURS_BIT, "hours"));
        }
        let select: Vec<String> = columns()
            .map(|name| match wanted.iter().find(|(_, n)| *n == name) {
                Some((bit, _)) => {
                    format!("CASE WHEN c.m & {bit} <> 0 THEN NULL ELSE r.{name} END")
                }
                None => "NULL::bytea".to_string(),
            })
            .collect();
        let sql = format!(
            "SELECT r.day, r.part, r.generation, {}
             FROM ff_rollup_daily r
             LEFT JOIN unnest($4::int[], $5::int[], $6::bigint[], $7::int[]) AS c(d, p, g, m)
               ON c.d = r.day AND c.p = r.part AND c.g = r.generation
             WHERE r.property = $1 AND r.day BETWEEN $2 AND $3
             ORDER BY r.day, r.part",
            select.join(", ")
        );
        let prop = property.to_string();
        let rows = self.pool.call(move |c| {
            c.query_typed(
                &sql,
                &[
                    (&prop, Type::TEXT),
                    (&lo, Type::INT4),
                    (&hi, Type::INT4),
                    (&c_day, Type::INT4_ARRAY),
                    (&c_part, Type::INT4_ARRAY),
                    (&c_gen, Type::INT8_ARRAY),
                    (&c_mask, Type::INT4_ARRAY),
                ],
            )
        })?;
        // Each row: the cached one as it is, or decoded (on the cores there are, for
        // a range's worth of bytes) into a copy of what the cache held of it.
        let keys: Vec<(i32, i32, i64)> = rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        let base = |i: usize| -> Option<&Arc<CachedRow>> {
            let (day, part, gen) = keys[i];
            cached.get(&day).and_then(|ps| {
                ps.iter()
                    .find(|(p, g, _)| *p == part && *g == gen)
                    .map(|(_, _, r)| r)
            })
        };
        let decode_one = |i: usize| -> Result<Arc<CachedRow>, Error> {
            let r = &rows[i];
            let cols: Vec<Option<&[u8]>> = (3..r.len()).map(|c| r.get(c)).collect();
            let base = base(i);
            if cols.iter().all(Option::is_none) {
                return base
                    .cloned()
                    .ok_or_else(|| Error::Corrupt("a cached day row went missing".into()));
            }
            Ok(Arc::new(decode_row(
                &cols,
                base.map(|b| b.as_ref()),
                hours,
            )?))
        };
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(rows.len().max(1));
        let decoded: Vec<Result<Arc<CachedRow>, Error>> = if threads > 1 {
            std::thread::scope(|scope| {
                let handles: Vec<_> = (0..threads)
                    .map(|t| {
                        let decode_one = &decode_one;
                        let n = rows.len();
                        scope.spawn(move || {
                            (t..n)
                                .step_by(threads)
                                .map(|i| (i, decode_one(i)))
                                .collect::<Vec<_>>()
                        })
                    })
                    .collect();
                let mut all: Vec<(usize, Result<Arc<CachedRow>, Error>)> = handles
                    .into_iter()
                    .flat_map(|h| h.join().expect("a decoding thread"))
                    .collect();
                all.sort_by_key(|(i, _)| *i);
                all.into_iter().map(|(_, r)| r).collect()
            })
        } else {
            (0..rows.len()).map(decode_one).collect()
        };
        let mut result: Vec<(i32, Arc<CachedRow>)> = Vec::with_capacity(rows.len());
        let mut i = 0;
        while i < keys.len() {
            let day = keys[i].0;
            let mut day_parts: Vec<(i32, i64, Arc<CachedRow>)> = Vec::new();
            let mut changed = false;
            while i < keys.len() && keys[i].0 == day {
                let row = decoded[i]
                    .as_ref()
                    .map_err(|e| Error::Corrupt(e.to_string()))?;
                changed |= base(i).is_none_or(|b| !Arc::ptr_eq(b, row));
                day_parts.push((keys[i].1, keys[i].2, row.clone()));
                result.push((day, row.clone()));
                i += 1;
            }
            if changed || cached.get(&day).map(|c| c.len()) != Some(day_parts.len()) {
                self.cache
                    .insert((property.to_string(), day), Arc::new(day_parts));
            }
        }
        if !self.max_staleness.is_zero() {
            let mut recent = self.recent.lock().unwrap();
            if recent.len() > 10_000 {
                let max = self.max_staleness;
                recent.retain(|_, r| r.at.elapsed() <= max);
            }
            recent.insert(
                property.to_string(),
                Recent {
                    at: asked_at,
                    days: lo..=hi,
                    rows: result.clone(),
                },
            );
        }
        Ok(result)
    }
}

impl RollupRead for PgRollupStore {
    fn first_day(&self, property: &str) -> footfall_store::Result<Option<LocalDay>> {
        if let Some(w) = &self.writer {
            return Ok(w.rollups.read().unwrap().first_day_of(property));
        }
        let prop = property.to_string();
        let d: Option<i32> = self.pool.call(move |c| {
            Ok(c.query_one(
                "SELECT min(day) FROM ff_rollup_daily WHERE property = $1",
                &[&prop],
            )?
            .get(0))
        })?;
        Ok(d.map(LocalDay))
    }

    fn scan(
        &self,
        property: &str,
        days: RangeInclusive<LocalDay>,
        grain: Grain,
        sections: Sections,
        f: &mut dyn FnMut(&[Part<'_>]),
    ) -> footfall_store::Result<()> {
        if let Some(w) = &self.writer {
            w.rollups
                .read()
                .unwrap()
                .scan_into(property, days, grain, f);
            return Ok(());
        }
        if days.start() > days.end() {
            f(&[]);
            return Ok(());
        }
        let hours = grain == Grain::Hour;
        // Hour scans read whole hour buckets; the day's sections are not needed.
        let need = if hours { Sections::NONE } else { sections };
        let rows = self.fetch_days(property, days.clone(), need, hours)?;
        let mut parts: Vec<Part<'_>> = Vec::new();
        match grain {
            Grain::Day => {
                for (day, row) in &rows {
                    parts.push((*day as i64, &row.day));
                }
            }
            Grain::Hour => {
                for (_, row) in &rows {
                    parts.extend(row.hours.iter().flatten().map(|(h, b)| (h.0, b)));
                }
                // Parts of one day from several writers interleave by hour.
                parts.sort_by_key(|(k, _)| *k);
            }
        }
        f(&parts);
        Ok(())
    }

    fn minutes(
        &self,
        property: &str,
        minutes: RangeInclusive<i64>,
        f: &mut dyn FnMut(&[Minute<'_>]),
    ) -> footfall_store::Result<()> {
        if let Some(w) = &self.writer {
            w.rollups.read().unwrap().minutes_into(property, minutes, f);
            return Ok(());
        }
        let prop = property.to_string();
        let bodies: Vec<Vec<u8>> = self.pool.call(move |c| {
            Ok(c.query(
                "SELECT body FROM ff_rollup_minutes WHERE property = $1",
                &[&prop],
            )?
            .into_iter()
            .map(|r| r.get(0))
            .collect())
        })?;
        // Writers' minutes merged: one entry per minute.
        let mut merged: BTreeMap<i64, MinuteStats> = BTreeMap::new();
        for b in bodies {
            let m: BTreeMap<i64, MinuteStats> = decode(&b, "minutes row")?;
            for (k, s) in m.range(minutes.clone()) {
                let e = merged.entry(*k).or_default();
                e.pageviews += s.pageviews;
                e.events += s.events;
                e.visitors.merge(&s.visitors);
            }
        }
        let list: Vec<Minute<'_>> = merged.iter().map(|(k, v)| (*k, v)).collect();
        f(&list);
        Ok(())
    }
}

impl RollupStore for PgRollupStore {
    /// The part's checkpoint at the generation this writer holds (the one it opened
    /// at, or its own latest), read from the database: the processor state is not kept
    /// in memory between checkpoints.
    fn last_checkpoint(&self) -> footfall_store::Result<Option<Checkpoint>> {
        let Some(w) = &self.writer else {
            return Ok(None);
        };
        let generation = *w.generation.lock().unwrap();
        if generation == 0 {
            return Ok(None);
        }
        let part = w.part;
        let row = self.pool.call(move |c| {
            c.query_opt(
                "SELECT offsets, state FROM ff_checkpoints WHERE part = $1 AND generation = $2",
                &[&part, &generation],
            )
        })?;
        let Some(row) = row else {
            return Err(footfall_store::Error::Unavailable(format!(
                "the checkpoint of part {part} moved past generation {generation}: another writer holds it"
            )));
        };
        Ok(Some(Checkpoint {
            offsets: decode(&row.get::<_, Vec<u8>>(0), "offsets")?,
            processor_state: row.get(1),
        }))
    }

    fn update(&self, f: &mut dyn FnMut(&mut Rollups)) {
        match &self.writer {
            Some(w) => f(&mut w.rollups.write().unwrap()),
            None => tracing::error!("update on a read-only rollup store ignored"),
        }
    }

    fn checkpoint(
        &self,
        offsets: &[u64],
        processor_state: footfall_store::StateWriter<'_>,
    ) -> footfall_store::Result<()> {
        // A bytea parameter: the state is collected once.
        let state = footfall_store::collect_state(processor_state)?;
        let w = self.writer.as_ref().ok_or_else(|| {
            footfall_store::Error::Unavailable("checkpoint on a read-only rollup store".into())
        })?;
        let mut generation = w.generation.lock().unwrap();
        let (prev, next) = (*generation, *generation + 1);
        let part = w.part;
        let owner = w.lease_owner.clone();
        // Encoded under the read lock; the processor (the only writer) is here, so
        // nothing changes until the dirty marks are cleared below.
        // Per changed day: its columns, in the order of `columns()`.
        let mut days: Vec<(String, i32, Vec<Vec<u8>>)> = Vec::new();
        let mut minutes: Vec<(String, Vec<u8>)> = Vec::new();
        {
            let r = w.rollups.read().unwrap();
            for (prop, p) in r.properties.iter() {
                for day in &p.dirty_days {
                    if let Some(row) = p.day_data(*day) {
                        let mut cols = Sections::EACH
                            .iter()
                            .map(|(s, _)| row.day.encode_section(*s))
                            .collect::<Result<Vec<_>, _>>()
                            .map_err(|e| Error::Corrupt(e.to_string()))?;
                        cols.push(encode(&row.hours)?);
                        days.push((prop.clone(), day.0, cols));
                    }
                }
                if !p.minutes.is_empty() {
                    minutes.push((prop.clone(), encode(&p.minutes)?));
                }
            }
        }
        let written: Vec<(String, i32)> = days.iter().map(|(p, d, _)| (p.clone(), *d)).collect();
        let total: u64 = days
            .iter()
            .flat_map(|d| d.2.iter().map(|c| c.len() as u64))
            .sum::<u64>()
            + minutes.iter().map(|m| m.1.len() as u64).sum::<u64>()
            + state.len() as u64;
        let offsets = encode(&offsets.to_vec())?;
        let fenced = self.pool.call(move |c| {
            let mut t = c.transaction()?;
            // The checkpoint row is claimed first: by generation (no other writer
            // since ours) and, with leases, by the lease (ours, unexpired).
            let claimed = if prev == 0 {
                t.execute(
                    "INSERT INTO ff_checkpoints (part, generation, offsets, state)
                     SELECT $1, $2, $3, $4
                     WHERE $5::text IS NULL OR EXISTS (SELECT 1 FROM ff_leases l
                       WHERE l.part = $1 AND l.owner = $5 AND l.expires_at > now())
                     ON CONFLICT (part) DO NOTHING",
                    &[&part, &next, &offsets, &state, &owner],
                )?
            } else {
                t.execute(
                    "UPDATE ff_checkpoints SET generation = $2, offsets = $3, state = $4
                     WHERE part = $1 AND generation = $5
                       AND ($6::text IS NULL OR EXISTS (SELECT 1 FROM ff_leases l
                         WHERE l.part = $1 AND l.owner = $6 AND l.expires_at > now()))",
                    &[&part, &next, &offsets, &state, &prev, &owner],
                )?
            };
            if claimed != 1 {
                t.rollback()?;
                return Ok(true);
            }
            let names: Vec<&str> = columns().collect();
            let day_stmt = t.prepare(&format!(
                "INSERT INTO ff_rollup_daily (property, day, part, generation, {})
                 VALUES ($1, $2, $3, $4, {})
                 ON CONFLICT (property, day, part) DO UPDATE SET generation = EXCLUDED.generation, {}",
                names.join(", "),
                (5..5 + names.len()).map(|i| format!("${i}")).collect::<Vec<_>>().join(", "),
                names.iter().map(|n| format!("{n} = EXCLUDED.{n}")).collect::<Vec<_>>().join(", "),
            ))?;
            for (p, d, cols) in &days {
                let mut params: Vec<&(dyn postgres::types::ToSql + Sync)> =
                    vec![p, d, &part, &next];
                params.extend(cols.iter().map(|c| c as &(dyn postgres::types::ToSql + Sync)));
                t.execute(&day_stmt, &params)?;
            }
            let minute_stmt = t.prepare(
                "INSERT INTO ff_rollup_minutes (property, part, generation, body) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (property, part) DO UPDATE SET generation = EXCLUDED.generation, body = EXCLUDED.body",
            )?;
            for (p, body) in &minutes {
                t.execute(&minute_stmt, &[p, &part, &next, body])?;
            }
            t.commit()?;
            Ok(false)
        })?;
        if fenced {
            return Err(footfall_store::Error::Unavailable(format!(
                "rollup part {part}: another writer checkpointed it since generation {prev}, or this writer's lease is gone: this one stops"
            )));
        }
        *generation = next;
        let mut r = w.rollups.write().unwrap();
        for (prop, day) in &written {
            if let Some(p) = r.properties.get_mut(prop) {
                p.dirty_days.remove(&LocalDay(*day));
            }
        }
        self.bytes.store(total, Ordering::Relaxed);
        tracing::debug!(
            generation = next,
            days = written.len(),
            "rollup checkpoint committed to PostgreSQL"
        );
        Ok(())
    }

    fn checkpoint_bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}
