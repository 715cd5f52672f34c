//! [`RollupStore`] on PostgreSQL.
//!
//! Tables (docs/DISTRIBUTED.md):
//! - `ff_rollup_days (property, day, part) → generation, body`: one local day of one
//!   property as written by one writer `part` — the day bucket and its hour buckets,
//!   postcard-encoded. A day's statistics are the merge of its parts (disjoint sets of
//!   visitors, so counts add and sketches merge exactly).
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
//! - [`PgRollupStore::open_reader`] (query nodes): every read asks the database which
//!   generation each day of the range is at (one index range scan) and fetches only the
//!   days its bounded cache does not hold at that generation, in one repeatable-read
//!   transaction — so an answer is never older than the last committed checkpoint and
//!   never mixes two checkpoints.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use footfall_store::{
    Checkpoint, DayData, Grain, LocalDay, Minute, MinuteStats, Part, RollupRead, RollupStore,
    Rollups,
};
use serde::{Deserialize, Serialize};

use crate::conn::Pool;
use crate::meta::ensure_schema;
use crate::Error;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS ff_rollup_days (
    property TEXT NOT NULL,
    day INTEGER NOT NULL,
    part INTEGER NOT NULL,
    generation BIGINT NOT NULL,
    body BYTEA NOT NULL,
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
    /// Encoded bytes of day rows kept (least recently used go first).
    pub max_bytes: u64,
    /// Connections used for reads.
    pub connections: usize,
}

impl Default for ReadCacheOptions {
    fn default() -> Self {
        Self {
            max_bytes: 256 << 20,
            connections: 4,
        }
    }
}

type CacheKey = (String, i32);

/// The parts of one cached day: (part, generation, row).
type CachedDay = Arc<Vec<(i32, i64, Arc<DayData>)>>;

struct Writer {
    part: i32,
    /// When set, a checkpoint commits only while this owner holds the part's lease.
    lease_owner: Option<String>,
    rollups: RwLock<Rollups>,
    loaded: Option<Checkpoint>,
    /// The generation of the part's checkpoint row this writer holds (0: none yet).
    generation: Mutex<i64>,
}

pub struct PgRollupStore {
    pool: Pool,
    writer: Option<Writer>,
    cache: moka::sync::Cache<CacheKey, CachedDay>,
    bytes: AtomicU64,
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
        let (checkpoint, rows, minutes) = pool.call(move |c| {
            let mut t = c
                .build_transaction()
                .isolation_level(postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()?;
            let cp = t.query_opt(
                "SELECT generation, offsets, state FROM ff_checkpoints WHERE part = $1",
                &[&part],
            )?;
            let cp = cp.map(|r| {
                (
                    r.get::<_, i64>(0),
                    r.get::<_, Vec<u8>>(1),
                    r.get::<_, Vec<u8>>(2),
                )
            });
            let rows: Vec<(String, i32, Vec<u8>)> = t
                .query(
                    "SELECT property, day, body FROM ff_rollup_days WHERE part = $1",
                    &[&part],
                )?
                .into_iter()
                .map(|r| (r.get(0), r.get(1), r.get(2)))
                .collect();
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
        for (property, day, body) in rows {
            bytes += body.len() as u64;
            let row: DayData = decode(&body, "day row")?;
            let p = rollups.property_mut(&property);
            p.days.insert(LocalDay(day), row.day);
            p.hours.extend(row.hours);
        }
        for (property, body) in minutes {
            bytes += body.len() as u64;
            rollups.property_mut(&property).minutes = decode(&body, "minutes row")?;
        }
        let (generation, loaded) = match checkpoint {
            Some((g, offsets, state)) => {
                bytes += (offsets.len() + state.len()) as u64;
                (
                    g,
                    Some(Checkpoint {
                        offsets: decode(&offsets, "offsets")?,
                        processor_state: state,
                    }),
                )
            }
            None => (0, None),
        };
        Ok(Self {
            pool,
            writer: Some(Writer {
                part,
                lease_owner,
                rollups: RwLock::new(rollups),
                loaded,
                generation: Mutex::new(generation),
            }),
            cache: moka::sync::Cache::new(0),
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
                // Weighed by the rows' entry counts: a fair proxy for their size that is
                // cheap to compute (the maps make up the size).
                let entries: usize = v
                    .iter()
                    .map(|(_, _, r)| {
                        r.day.pages.len()
                            + r.day.visit_keys.len()
                            + r.day.props.len()
                            + r.hours.len() * 8
                            + 16
                    })
                    .sum();
                (entries * 256).min(u32::MAX as usize) as u32
            })
            .build();
        Ok(Self {
            pool,
            writer: None,
            cache,
            bytes: AtomicU64::new(0),
        })
    }

    /// Whether the database answers (for `/readyz`).
    pub fn ping(&self) -> Result<(), Error> {
        self.pool.call(|c| c.simple_query("SELECT 1").map(|_| ()))
    }

    /// Reader: the rows of `days` for `property`, each at its current generation, from
    /// the cache where it holds that generation. One statement (one snapshot, one round
    /// trip): it lists every row of the range with its generation, and sends the body
    /// only of rows the cache does not hold at that generation.
    fn fetch_days(
        &self,
        property: &str,
        days: RangeInclusive<LocalDay>,
    ) -> Result<Vec<(i32, Arc<DayData>)>, Error> {
        use postgres::types::Type;
        let (lo, hi) = (days.start().0, days.end().0);
        let mut cached: BTreeMap<i32, CachedDay> = BTreeMap::new();
        let (mut c_day, mut c_part, mut c_gen) = (Vec::new(), Vec::new(), Vec::new());
        for d in lo..=hi {
            if let Some(parts) = self.cache.get(&(property.to_string(), d)) {
                for (part, gen, _) in parts.iter() {
                    c_day.push(d);
                    c_part.push(*part);
                    c_gen.push(*gen);
                }
                cached.insert(d, parts);
            }
        }
        let prop = property.to_string();
        let rows: Vec<(i32, i32, i64, Option<Vec<u8>>)> = self.pool.call(move |c| {
            Ok(c.query_typed(
                "SELECT r.day, r.part, r.generation,
                        CASE WHEN EXISTS (SELECT 1 FROM unnest($4::int[], $5::int[], $6::bigint[]) AS c(d, p, g)
                                          WHERE c.d = r.day AND c.p = r.part AND c.g = r.generation)
                             THEN NULL ELSE r.body END
                 FROM ff_rollup_days r
                 WHERE r.property = $1 AND r.day BETWEEN $2 AND $3
                 ORDER BY r.day, r.part",
                &[
                    (&prop, Type::TEXT),
                    (&lo, Type::INT4),
                    (&hi, Type::INT4),
                    (&c_day, Type::INT4_ARRAY),
                    (&c_part, Type::INT4_ARRAY),
                    (&c_gen, Type::INT8_ARRAY),
                ],
            )?
            .into_iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect())
        })?;
        let mut result = Vec::with_capacity(rows.len());
        let mut day_parts: Vec<(i32, i64, Arc<DayData>)> = Vec::new();
        let mut i = 0;
        while i < rows.len() {
            let day = rows[i].0;
            day_parts.clear();
            let mut fetched = false;
            while i < rows.len() && rows[i].0 == day {
                let (_, part, gen, body) = &rows[i];
                let row = match body {
                    Some(b) => {
                        fetched = true;
                        Arc::new(decode::<DayData>(b, "day row")?)
                    }
                    None => cached
                        .get(&day)
                        .and_then(|ps| ps.iter().find(|(p, g, _)| p == part && g == gen))
                        .map(|(_, _, r)| r.clone())
                        .ok_or_else(|| Error::Corrupt("a cached day row went missing".into()))?,
                };
                day_parts.push((*part, *gen, row.clone()));
                result.push((day, row));
                i += 1;
            }
            if fetched || cached.get(&day).map(|c| c.len()) != Some(day_parts.len()) {
                self.cache
                    .insert((property.to_string(), day), Arc::new(day_parts.clone()));
            }
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
                "SELECT min(day) FROM ff_rollup_days WHERE property = $1",
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
        let rows = self.fetch_days(property, days.clone())?;
        let mut parts: Vec<Part<'_>> = Vec::new();
        match grain {
            Grain::Day => {
                for (day, row) in &rows {
                    parts.push((*day as i64, &row.day));
                }
            }
            Grain::Hour => {
                for (_, row) in &rows {
                    parts.extend(row.hours.iter().map(|(h, b)| (h.0, b)));
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
    fn last_checkpoint(&self) -> Option<Checkpoint> {
        self.writer.as_ref().and_then(|w| w.loaded.clone())
    }

    fn update(&self, f: &mut dyn FnMut(&mut Rollups)) {
        match &self.writer {
            Some(w) => f(&mut w.rollups.write().unwrap()),
            None => tracing::error!("update on a read-only rollup store ignored"),
        }
    }

    fn checkpoint(&self, offsets: &[u64], processor_state: &[u8]) -> footfall_store::Result<()> {
        let w = self.writer.as_ref().ok_or_else(|| {
            footfall_store::Error::Unavailable("checkpoint on a read-only rollup store".into())
        })?;
        let mut generation = w.generation.lock().unwrap();
        let (prev, next) = (*generation, *generation + 1);
        let part = w.part;
        let owner = w.lease_owner.clone();
        // Encoded under the read lock; the processor (the only writer) is here, so
        // nothing changes until the dirty marks are cleared below.
        let mut days: Vec<(String, i32, Vec<u8>)> = Vec::new();
        let mut minutes: Vec<(String, Vec<u8>)> = Vec::new();
        {
            let r = w.rollups.read().unwrap();
            for (prop, p) in r.properties.iter() {
                for day in &p.dirty_days {
                    if let Some(row) = p.day_data(*day) {
                        days.push((prop.clone(), day.0, encode(&row)?));
                    }
                }
                if !p.minutes.is_empty() {
                    minutes.push((prop.clone(), encode(&p.minutes)?));
                }
            }
        }
        let written: Vec<(String, i32)> = days.iter().map(|(p, d, _)| (p.clone(), *d)).collect();
        let total: u64 = days.iter().map(|d| d.2.len() as u64).sum::<u64>()
            + minutes.iter().map(|m| m.1.len() as u64).sum::<u64>()
            + processor_state.len() as u64;
        let offsets = encode(&offsets.to_vec())?;
        let state = processor_state.to_vec();
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
            let day_stmt = t.prepare(
                "INSERT INTO ff_rollup_days (property, day, part, generation, body) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (property, day, part) DO UPDATE SET generation = EXCLUDED.generation, body = EXCLUDED.body",
            )?;
            for (p, d, body) in &days {
                t.execute(&day_stmt, &[p, d, &part, &next, body])?;
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
