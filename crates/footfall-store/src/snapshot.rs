//! Embedded [`RollupStore`]: rollups in memory behind a read-write lock, checkpointed
//! incrementally to local files.
//!
//! Layout of the store directory:
//! - `days/<property>/<local day>-<generation>.bin`: one local day of one property (the
//!   day bucket and its hour buckets). Written only when that day changed.
//! - `state-<generation>.bin`: the processor state saved with that checkpoint, streamed
//!   to the file as it is encoded (it is the largest thing a checkpoint writes, and
//!   holding it in memory once more would set the process's peak).
//! - `CURRENT`: the manifest — generation, log offsets, realtime minutes, and which
//!   file holds each day. Replaced atomically (write `CURRENT.tmp`, fsync, rename,
//!   fsync the directory).
//!
//! A checkpoint writes and fsyncs the changed days' files and the state file under a
//! new generation, then commits the manifest; only then are superseded files deleted. A crash at any point
//! leaves the previous manifest and every file it names intact, so the store reopens at
//! exactly one completed checkpoint. Files no manifest names are deleted on open.
//!
//! Every file is `magic | postcard body | crc32(body)`; a file whose checksum fails is
//! refused loudly rather than treated as empty.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::rollup::{DayData, DayLoader, MinuteStats};
use std::ops::RangeInclusive;

use crate::{
    Checkpoint, Error, Grain, LocalDay, Minute, Part, Result, RollupRead, RollupStore, Rollups,
    Sections,
};

const MANIFEST_MAGIC: &[u8; 8] = b"FFMANI03";
/// Manifests written before the state had a file of its own.
const MANIFEST_MAGIC_INLINE_STATE: &[u8; 8] = b"FFMANI02";
const DAY_MAGIC: &[u8; 8] = b"FFDAY002";
const STATE_MAGIC: &[u8; 8] = b"FFSTAT01";

#[derive(Serialize, Deserialize)]
struct Manifest {
    generation: u64,
    offsets: Vec<u64>,
    /// Bytes of `state-<generation>.bin`.
    state_bytes: u64,
    minutes: Vec<(String, BTreeMap<i64, MinuteStats>)>,
    /// (property, local day, generation of its file, file bytes)
    days: Vec<(String, i32, u64, u64)>,
}

/// The manifest as written before the state had a file of its own; still read.
#[derive(Serialize, Deserialize)]
struct ManifestInlineState {
    generation: u64,
    offsets: Vec<u64>,
    processor_state: Vec<u8>,
    minutes: Vec<(String, BTreeMap<i64, MinuteStats>)>,
    days: Vec<(String, i32, u64, u64)>,
}

/// The last committed checkpoint, and where its processor state is.
struct Committed {
    offsets: Vec<u64>,
    state: StateAt,
}

enum StateAt {
    /// `state-<generation>.bin`.
    File(u64),
    /// Inside a manifest of the earlier format; replaced by a file at the next
    /// checkpoint.
    Inline(Vec<u8>),
}

/// Hashes what passes through to the inner writer.
struct CrcWriter<W> {
    inner: W,
    crc: crc32fast::Hasher,
    bytes: u64,
}

impl<W: Write> Write for CrcWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Streams the state into `path` (`magic | state | crc32(state)`) and fsyncs it;
/// returns the file's bytes.
fn write_state(path: &Path, state: crate::StateWriter<'_>) -> Result<u64> {
    let mut f = File::create(path)?;
    f.write_all(STATE_MAGIC)?;
    // Buffered before hashing: the encoder writes a few bytes at a time.
    let mut w = std::io::BufWriter::with_capacity(
        1 << 20,
        CrcWriter {
            inner: f,
            crc: crc32fast::Hasher::new(),
            bytes: 0,
        },
    );
    state(&mut w)?;
    let CrcWriter {
        inner: mut f,
        crc,
        bytes,
    } = w.into_inner().map_err(|e| e.into_error())?;
    f.write_all(&crc.finalize().to_le_bytes())?;
    f.sync_all()?;
    Ok(bytes + 12)
}

/// Reads a state file, checking its header and checksum.
fn read_state(path: &Path) -> Result<Vec<u8>> {
    let mut data = fs::read(path)?;
    let corrupt = |why: &str| Error::Corrupt(path.display().to_string(), why.into());
    if data.len() < 12 || &data[..8] != STATE_MAGIC {
        return Err(corrupt("bad header"));
    }
    let crc = u32::from_le_bytes(data[data.len() - 4..].try_into().unwrap());
    data.truncate(data.len() - 4);
    if crc32fast::hash(&data[8..]) != crc {
        return Err(corrupt("checksum mismatch"));
    }
    data.drain(..8);
    Ok(data)
}

/// Checks a state file's header and checksum reading it in pieces, so opening the
/// store does not hold the state in memory.
fn verify_state(path: &Path) -> Result<u64> {
    use std::io::Read;
    let corrupt = |why: &str| Error::Corrupt(path.display().to_string(), why.into());
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    let mut magic = [0u8; 8];
    if len < 12 || f.read_exact(&mut magic).is_err() || &magic != STATE_MAGIC {
        return Err(corrupt("bad header"));
    }
    let mut body = (&mut f).take(len - 12);
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = body.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let mut crc = [0u8; 4];
    f.read_exact(&mut crc)?;
    if hasher.finalize() != u32::from_le_bytes(crc) {
        return Err(corrupt("checksum mismatch"));
    }
    Ok(len)
}

/// Where each day lives on disk: (generation, bytes).
type FileIndex = HashMap<(String, LocalDay), (u64, u64)>;

/// How much of the rollups the embedded store keeps in memory.
#[derive(Debug, Clone, Copy)]
pub struct MemoryBudget {
    /// Estimated bytes of resident days (twice their files' size) above which the
    /// oldest clean days are evicted after each checkpoint.
    pub resident_bytes: u64,
    /// The newest days of each property are never evicted (the processor writes
    /// there; late events reach back `processor.lateness_hours`).
    pub keep_newest_days: u32,
    /// Decoded evicted days kept for reads, in estimated bytes.
    pub read_cache_bytes: u64,
    /// Whether the hour buckets of days older than `keep_newest_days` stay only in
    /// their files (the day buckets stay in memory): about three quarters of a day's
    /// bytes, read only by hour-grain queries of those days.
    pub cold_hours_on_disk: bool,
}

impl MemoryBudget {
    /// Everything in memory (the store's behaviour before budgets; tests).
    pub const UNBOUNDED: MemoryBudget = MemoryBudget {
        resident_bytes: u64::MAX,
        keep_newest_days: u32::MAX,
        read_cache_bytes: 0,
        cold_hours_on_disk: false,
    };
}

/// In-memory size of a day per byte of its file (postcard is compact; maps and
/// sketches in memory are not). An estimate, used only to decide evictions.
const MEMORY_PER_FILE_BYTE: u64 = 2;

/// What loaders and readers share with the store: where files are, and which.
struct Files {
    dir: PathBuf,
    index: RwLock<FileIndex>,
    /// Decoded evicted days for reads: (property, day) → (generation, day, last use).
    cache: Mutex<ReadCache>,
}

/// A cached day: (generation, the day, estimated bytes, last use).
type Cached = (u64, Arc<DayData>, u64, u64);

#[derive(Default)]
struct ReadCache {
    entries: HashMap<(String, LocalDay), Cached>,
    bytes: u64,
    clock: u64,
    limit: u64,
}

impl ReadCache {
    fn get(&mut self, key: &(String, LocalDay), generation: u64) -> Option<Arc<DayData>> {
        self.clock += 1;
        let clock = self.clock;
        match self.entries.get_mut(key) {
            Some(e) if e.0 == generation => {
                e.3 = clock;
                Some(e.1.clone())
            }
            _ => None,
        }
    }

    fn put(&mut self, key: (String, LocalDay), generation: u64, d: Arc<DayData>, bytes: u64) {
        if bytes > self.limit {
            return;
        }
        self.clock += 1;
        if let Some(old) = self.entries.insert(key, (generation, d, bytes, self.clock)) {
            self.bytes -= old.2;
        }
        self.bytes += bytes;
        while self.bytes > self.limit {
            let Some(k) = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.3)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some(e) = self.entries.remove(&k) {
                self.bytes -= e.2;
            }
        }
    }
}

impl Files {
    /// An evicted day, from the read cache or its file.
    fn load(&self, prop: &str, day: LocalDay) -> Result<Arc<DayData>> {
        let key = (prop.to_string(), day);
        let (generation, bytes) = *self.index.read().unwrap().get(&key).ok_or_else(|| {
            Error::Corrupt(
                format!("{}/days/{}", self.dir.display(), property_dir(prop)),
                format!("no file for evicted day {}", day.0),
            )
        })?;
        if let Some(d) = self.cache.lock().unwrap().get(&key, generation) {
            return Ok(d);
        }
        let d: Arc<DayData> = Arc::new(unframe(
            &SnapshotStore::day_path(&self.dir, prop, day, generation),
            DAY_MAGIC,
        )?);
        self.cache
            .lock()
            .unwrap()
            .put(key, generation, d.clone(), bytes * MEMORY_PER_FILE_BYTE);
        Ok(d)
    }

    /// The loader of one property's evicted days (the processor writes to one). A
    /// day that cannot be read back is a broken store: the processor must stop rather
    /// than write that day anew from nothing.
    fn loader(self: &Arc<Self>, prop: &str) -> DayLoader {
        let (files, prop) = (self.clone(), prop.to_string());
        DayLoader(Some(Arc::new(move |day| match files.load(&prop, day) {
            Ok(d) => (*d).clone(),
            Err(e) => panic!(
                "evicted rollup day {} of {prop} cannot be read back: {e}",
                day.0
            ),
        })))
    }
}

pub struct SnapshotStore {
    dir: PathBuf,
    rollups: RwLock<Rollups>,
    committed: Mutex<Option<Committed>>,
    files: Arc<Files>,
    /// The last committed generation; held by a checkpoint from start to end.
    generation: Mutex<u64>,
    budget: MemoryBudget,
    bytes: AtomicU64,
}

fn frame(magic: &[u8; 8], body: &impl Serialize) -> Result<Vec<u8>> {
    let mut data = magic.to_vec();
    postcard::to_io(body, &mut data)
        .map_err(|e| Error::Corrupt("serialise".into(), e.to_string()))?;
    let crc = crc32fast::hash(&data[8..]);
    data.extend_from_slice(&crc.to_le_bytes());
    Ok(data)
}

fn unframe<T: DeserializeOwned>(path: &Path, magic: &[u8; 8]) -> Result<T> {
    let data = fs::read(path)?;
    let corrupt = |why: &str| Error::Corrupt(path.display().to_string(), why.into());
    if data.len() < 12 || &data[..8] != magic {
        return Err(corrupt("bad header"));
    }
    let body = &data[8..data.len() - 4];
    let crc = u32::from_le_bytes(data[data.len() - 4..].try_into().unwrap());
    if crc32fast::hash(body) != crc {
        return Err(corrupt("checksum mismatch"));
    }
    postcard::from_bytes(body).map_err(|e| corrupt(&e.to_string()))
}

/// Reads a manifest of either format; the second value is the processor state of the
/// earlier format, which kept it inside the manifest.
fn read_manifest(path: &Path) -> Result<(Manifest, Option<Vec<u8>>)> {
    let mut magic = [0u8; 8];
    {
        use std::io::Read;
        let _ = File::open(path)?.read(&mut magic)?;
    }
    if &magic == MANIFEST_MAGIC_INLINE_STATE {
        let m: ManifestInlineState = unframe(path, MANIFEST_MAGIC_INLINE_STATE)?;
        let manifest = Manifest {
            generation: m.generation,
            offsets: m.offsets,
            state_bytes: 0,
            minutes: m.minutes,
            days: m.days,
        };
        return Ok((manifest, Some(m.processor_state)));
    }
    Ok((unframe(path, MANIFEST_MAGIC)?, None))
}

/// Checks a file's header and checksum without decoding it.
fn verify(path: &Path, magic: &[u8; 8]) -> Result<()> {
    let data = fs::read(path)?;
    let corrupt = |why: &str| Error::Corrupt(path.display().to_string(), why.into());
    if data.len() < 12 || &data[..8] != magic {
        return Err(corrupt("bad header"));
    }
    let crc = u32::from_le_bytes(data[data.len() - 4..].try_into().unwrap());
    if crc32fast::hash(&data[8..data.len() - 4]) != crc {
        return Err(corrupt("checksum mismatch"));
    }
    Ok(())
}

/// The days loaded into memory at open: each property's newest days, then the newest
/// of all until the budget is spent.
fn resident_at_open(
    days: &[(String, i32, u64, u64)],
    budget: MemoryBudget,
) -> HashSet<(&str, i32)> {
    let mut newest: HashMap<&str, i32> = HashMap::new();
    for (p, d, _, _) in days {
        let e = newest.entry(p.as_str()).or_insert(*d);
        *e = (*e).max(*d);
    }
    let mut order: Vec<&(String, i32, u64, u64)> = days.iter().collect();
    order.sort_by_key(|(_, d, _, _)| std::cmp::Reverse(*d));
    let mut out = HashSet::new();
    let mut spent = 0u64;
    for (p, d, _, bytes) in order {
        let keep = budget.keep_newest_days != 0
            && *d > newest[p.as_str()] - budget.keep_newest_days.min(i32::MAX as u32) as i32;
        let cost = bytes * MEMORY_PER_FILE_BYTE;
        if keep || spent.saturating_add(cost) <= budget.resident_bytes {
            spent = spent.saturating_add(cost);
            out.insert((p.as_str(), *d));
        }
    }
    out
}

/// A directory name for a property id (tracking ids are safe; anything else is hex).
fn property_dir(id: &str) -> String {
    if !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        id.to_string()
    } else {
        let hex: String = id.bytes().map(|b| format!("{b:02x}")).collect();
        format!("x{hex}")
    }
}

fn write_synced(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut f = File::create(path)?;
    f.write_all(data)?;
    f.sync_all()
}

fn sync_dir(path: &Path) -> std::io::Result<()> {
    File::open(path)?.sync_all()
}

impl SnapshotStore {
    /// Opens the store in `dir` with every day in memory.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(dir, MemoryBudget::UNBOUNDED)
    }

    /// Opens the store in `dir` at its last checkpoint, keeping in memory what `budget`
    /// allows: the newest days of each property first. Every file is checked (its
    /// checksum) either way, so a damaged store refuses to open.
    pub fn open_with(dir: impl AsRef<Path>, budget: MemoryBudget) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(dir.join("days"))?;
        let _ = fs::remove_file(dir.join("CURRENT.tmp"));
        let current = dir.join("CURRENT");
        let mut rollups = Rollups::default();
        let mut index = FileIndex::new();
        let (loaded, generation, mut total) = if current.exists() {
            let (m, state) = read_manifest(&current)?;
            let mut total = fs::metadata(&current)?.len();
            let state = match state {
                Some(inline) => StateAt::Inline(inline),
                None => {
                    total += verify_state(&Self::state_path(&dir, m.generation))?;
                    StateAt::File(m.generation)
                }
            };
            let resident = resident_at_open(&m.days, budget);
            // Each property's newest day: hours of days before its window stay in files.
            let mut newest: HashMap<&str, i32> = HashMap::new();
            for (prop, day, _, _) in &m.days {
                let n = newest.entry(prop.as_str()).or_insert(*day);
                *n = (*n).max(*day);
            }
            let keep = budget
                .keep_newest_days
                .saturating_sub(1)
                .min(i32::MAX as u32) as i32;
            for (prop, day, gen, bytes) in &m.days {
                let path = Self::day_path(&dir, prop, LocalDay(*day), *gen);
                index.insert((prop.clone(), LocalDay(*day)), (*gen, *bytes));
                total += bytes;
                let p = rollups.property_mut(prop);
                if resident.contains(&(prop.as_str(), *day)) {
                    let f: DayData = unframe(&path, DAY_MAGIC)?;
                    p.days.insert(LocalDay(*day), f.day);
                    let cold = budget.cold_hours_on_disk
                        && *day < newest[prop.as_str()].saturating_sub(keep);
                    if cold && !f.hours.is_empty() {
                        p.hours_evicted.insert(LocalDay(*day));
                    } else {
                        p.hours.extend(f.hours);
                    }
                } else {
                    verify(&path, DAY_MAGIC)?;
                    p.evicted.insert(LocalDay(*day));
                }
            }
            for (prop, minutes) in m.minutes {
                rollups.property_mut(&prop).minutes = minutes;
            }
            (
                Some(Committed {
                    offsets: m.offsets,
                    state,
                }),
                m.generation,
                total,
            )
        } else {
            (None, 0, 0)
        };
        // Files of a checkpoint that never committed are not named by the manifest.
        let named: HashSet<PathBuf> = index
            .iter()
            .map(|((p, d), (g, _))| Self::day_path(&dir, p, *d, *g))
            .collect();
        for f in fs::read_dir(&dir)?.flatten() {
            let name = f.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("state-") && f.path() != Self::state_path(&dir, generation) {
                tracing::info!(file = %f.path().display(), "removing uncommitted state file");
                fs::remove_file(f.path())?;
            }
        }
        for pd in fs::read_dir(dir.join("days"))?.flatten() {
            for f in fs::read_dir(pd.path())?.flatten() {
                if !named.contains(&f.path()) {
                    tracing::info!(file = %f.path().display(), "removing uncommitted rollup file");
                    fs::remove_file(f.path())?;
                }
            }
        }
        if loaded.is_none() {
            total = 0;
        }
        let files = Arc::new(Files {
            dir: dir.clone(),
            index: RwLock::new(index),
            cache: Mutex::new(ReadCache {
                limit: budget.read_cache_bytes,
                ..Default::default()
            }),
        });
        for (id, p) in rollups.properties.iter_mut() {
            if !p.evicted.is_empty() || !p.hours_evicted.is_empty() {
                p.loader = files.loader(id);
            }
        }
        Ok(Self {
            dir,
            rollups: RwLock::new(rollups),
            committed: Mutex::new(loaded),
            files,
            generation: Mutex::new(generation),
            budget,
            bytes: AtomicU64::new(total),
        })
    }

    /// Days in memory and evicted, over all properties (for tests and metrics).
    pub fn resident_and_evicted_days(&self) -> (usize, usize) {
        let r = self.rollups.read().unwrap();
        r.properties.iter().fold((0, 0), |(a, b), (_, p)| {
            (a + p.days.len(), b + p.evicted.len())
        })
    }

    /// After a checkpoint: drops from memory the hour buckets of each property's clean
    /// days before its newest `keep_newest_days` (their day buckets stay).
    fn evict_cold_hours(&self) {
        if !self.budget.cold_hours_on_disk {
            return;
        }
        let keep = self
            .budget
            .keep_newest_days
            .saturating_sub(1)
            .min(i32::MAX as u32) as i32;
        // The rollups first, then the index: the order a loader takes them in.
        let mut r = self.rollups.write().unwrap();
        let index = self.files.index.read().unwrap();
        let mut dropped = 0usize;
        for (id, p) in r.properties.iter_mut() {
            let Some(newest) = p.days.keys().next_back().copied() else {
                continue;
            };
            let limit = LocalDay(newest.0.saturating_sub(keep));
            // Resident hours before the window: none in the steady state, so this
            // looks at the hours that just aged out, not at all history.
            let mut cold: Vec<LocalDay> = p
                .hours
                .range(..crate::LocalHour(limit.0 as i64 * 24))
                .map(|(h, _)| h.day())
                .collect();
            cold.dedup();
            let mut any = false;
            for d in cold {
                if index.contains_key(&(id.clone(), d)) && p.evict_hours(d) {
                    dropped += 1;
                    any = true;
                }
            }
            if any && p.loader.0.is_none() {
                p.loader = self.files.loader(id);
            }
        }
        if dropped > 0 {
            tracing::debug!(days = dropped, "hours of cold days left to their files");
        }
    }

    /// After a checkpoint: evicts the oldest clean days while the resident estimate is
    /// over the budget, keeping each property's newest days.
    fn evict_over_budget(&self) {
        if self.budget.resident_bytes == u64::MAX {
            return;
        }
        let index = self.files.index.read().unwrap().clone();
        let mut r = self.rollups.write().unwrap();
        let mut resident = 0u64;
        let mut candidates: Vec<(LocalDay, String)> = Vec::new();
        for (id, p) in r.properties.iter() {
            let keep_from = p.days.keys().next_back().map(|d| {
                d.0.saturating_sub(self.budget.keep_newest_days.saturating_sub(1) as i32)
            });
            for d in p.days.keys() {
                let bytes = index.get(&(id.clone(), *d)).map(|e| e.1).unwrap_or(0);
                // Without its hours a day holds about a quarter of its file's bytes.
                let share = if p.hours_evicted.contains(d) { 4 } else { 1 };
                resident += bytes * MEMORY_PER_FILE_BYTE / share;
                if keep_from.is_some_and(|k| d.0 < k || self.budget.keep_newest_days == 0) {
                    candidates.push((*d, id.clone()));
                }
            }
        }
        if resident <= self.budget.resident_bytes {
            return;
        }
        candidates.sort();
        let mut evicted = 0usize;
        for (day, id) in candidates {
            if resident <= self.budget.resident_bytes {
                break;
            }
            let Some(bytes) = index.get(&(id.clone(), day)).map(|e| e.1) else {
                continue; // never written: nothing to load it back from
            };
            let files = &self.files;
            let p = r.properties.get_mut(&id).expect("listed above");
            let share = if p.hours_evicted.contains(&day) { 4 } else { 1 };
            if p.evict(day) {
                if p.loader.0.is_none() {
                    p.loader = files.loader(&id);
                }
                resident = resident.saturating_sub(bytes * MEMORY_PER_FILE_BYTE / share);
                evicted += 1;
            }
        }
        tracing::debug!(evicted, resident, "rollup days evicted from memory");
    }

    fn state_path(dir: &Path, gen: u64) -> PathBuf {
        dir.join(format!("state-{gen:012}.bin"))
    }

    pub(crate) fn day_path(dir: &Path, prop: &str, day: LocalDay, gen: u64) -> PathBuf {
        dir.join("days")
            .join(property_dir(prop))
            .join(format!("{:+07}-{gen:012}.bin", day.0))
    }
}

impl RollupRead for SnapshotStore {
    fn first_day(&self, property: &str) -> Result<Option<LocalDay>> {
        Ok(self.rollups.read().unwrap().first_day_of(property))
    }

    fn scan(
        &self,
        property: &str,
        days: RangeInclusive<LocalDay>,
        grain: Grain,
        _: Sections,
        f: &mut dyn FnMut(&[Part<'_>]),
    ) -> Result<()> {
        // Evicted days of the range are loaded without holding the lock (the processor
        // keeps writing meanwhile); a day evicted in between is loaded on a second try.
        let mut loaded: BTreeMap<LocalDay, Arc<DayData>> = BTreeMap::new();
        // Days of the range this scan reads from files: evicted days, and at hour
        // grain the days whose hours are evicted.
        let from_files = |p: &crate::rollup::PropertyRollup| -> Vec<LocalDay> {
            let mut d: Vec<LocalDay> = p.evicted.range(days.clone()).copied().collect();
            if grain == Grain::Hour {
                d.extend(p.hours_evicted.range(days.clone()).copied());
                d.sort();
            }
            d
        };
        for _ in 0..4 {
            let missing: Vec<LocalDay> = {
                let r = self.rollups.read().unwrap();
                let Some(p) = r.properties.get(property) else {
                    f(&[]);
                    return Ok(());
                };
                if days.start() > days.end() {
                    Vec::new()
                } else {
                    from_files(p)
                        .into_iter()
                        .filter(|d| !loaded.contains_key(d))
                        .collect()
                }
            };
            for d in missing {
                loaded.insert(d, self.files.load(property, d)?);
            }
            let r = self.rollups.read().unwrap();
            let Some(p) = r.properties.get(property) else {
                f(&[]);
                return Ok(());
            };
            let evicted: Vec<LocalDay> = if days.start() > days.end() {
                Vec::new()
            } else {
                from_files(p)
            };
            if evicted.iter().any(|d| !loaded.contains_key(d)) {
                continue;
            }
            let mut parts = p.scan_parts(days.clone(), grain);
            if !evicted.is_empty() {
                for d in &evicted {
                    let data = &loaded[d];
                    match grain {
                        Grain::Day => parts.push((d.0 as i64, &data.day)),
                        Grain::Hour => parts.extend(data.hours.iter().map(|(h, b)| (h.0, b))),
                    }
                }
                parts.sort_by_key(|(k, _)| *k);
            }
            f(&parts);
            return Ok(());
        }
        Err(Error::Corrupt(
            self.dir.display().to_string(),
            "days kept being evicted during a read".into(),
        ))
    }

    fn minutes(
        &self,
        property: &str,
        minutes: RangeInclusive<i64>,
        f: &mut dyn FnMut(&[Minute<'_>]),
    ) -> Result<()> {
        self.rollups
            .read()
            .unwrap()
            .minutes_into(property, minutes, f);
        Ok(())
    }
}

impl RollupStore for SnapshotStore {
    fn last_checkpoint(&self) -> Result<Option<Checkpoint>> {
        let c = self.committed.lock().unwrap();
        let Some(c) = c.as_ref() else {
            return Ok(None);
        };
        let processor_state = match &c.state {
            StateAt::File(g) => read_state(&Self::state_path(&self.dir, *g))?,
            StateAt::Inline(s) => s.clone(),
        };
        Ok(Some(Checkpoint {
            offsets: c.offsets.clone(),
            processor_state,
        }))
    }

    fn update(&self, f: &mut dyn FnMut(&mut Rollups)) {
        f(&mut self.rollups.write().unwrap())
    }

    fn checkpoint(&self, offsets: &[u64], processor_state: crate::StateWriter<'_>) -> Result<()> {
        let mut committed = self.generation.lock().unwrap();
        let generation = *committed + 1;
        let mut written: Vec<((String, LocalDay), u64)> = Vec::new();
        let mut dirs = HashSet::new();
        let minutes;
        {
            // Readers keep reading meanwhile; the processor (the only writer) is here.
            let r = self.rollups.read().unwrap();
            for (prop, p) in r.properties.iter() {
                for day in &p.dirty_days {
                    let Some(body) = p.day_data(*day) else {
                        continue;
                    };
                    let data = frame(DAY_MAGIC, &body)?;
                    let path = Self::day_path(&self.dir, prop, *day, generation);
                    let parent = path.parent().unwrap().to_path_buf();
                    if dirs.insert(parent.clone()) {
                        fs::create_dir_all(&parent)?;
                    }
                    write_synced(&path, &data)?;
                    written.push(((prop.clone(), *day), data.len() as u64));
                }
            }
            minutes = r
                .properties
                .iter()
                .filter(|(_, p)| !p.minutes.is_empty())
                .map(|(k, p)| (k.clone(), p.minutes.clone()))
                .collect::<Vec<_>>();
        }
        for d in &dirs {
            sync_dir(d)?;
        }
        sync_dir(&self.dir.join("days"))?;
        let state_bytes = write_state(&Self::state_path(&self.dir, generation), processor_state)?;
        let mut index = self.files.index.read().unwrap().clone();
        let mut superseded = Vec::new();
        for (key, bytes) in &written {
            if let Some((old, _)) = index.insert(key.clone(), (generation, *bytes)) {
                superseded.push(Self::day_path(&self.dir, &key.0, key.1, old));
            }
        }
        let manifest = Manifest {
            generation,
            offsets: offsets.to_vec(),
            state_bytes,
            minutes,
            days: index
                .iter()
                .map(|((p, d), (g, b))| (p.clone(), d.0, *g, *b))
                .collect(),
        };
        let data = frame(MANIFEST_MAGIC, &manifest)?;
        let tmp = self.dir.join("CURRENT.tmp");
        write_synced(&tmp, &data)?;
        fs::rename(&tmp, self.dir.join("CURRENT"))?;
        sync_dir(&self.dir)?;
        // Committed: the written days are clean and the old files are garbage.
        {
            let mut w = self.rollups.write().unwrap();
            for ((prop, day), _) in &written {
                if let Some(p) = w.properties.get_mut(prop) {
                    p.dirty_days.remove(day);
                }
            }
        }
        *self.committed.lock().unwrap() = Some(Committed {
            offsets: offsets.to_vec(),
            state: StateAt::File(generation),
        });
        superseded.push(Self::state_path(&self.dir, *committed));
        for old in superseded {
            let _ = fs::remove_file(old);
        }
        let total: u64 =
            index.values().map(|(_, b)| b).sum::<u64>() + data.len() as u64 + state_bytes;
        self.bytes.store(total, Ordering::Relaxed);
        tracing::debug!(
            generation,
            days = written.len(),
            total,
            "rollup checkpoint committed"
        );
        *self.files.index.write().unwrap() = index;
        *committed = generation;
        drop(committed);
        self.evict_cold_hours();
        self.evict_over_budget();
        Ok(())
    }

    fn checkpoint_bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LocalHour;

    fn bump(s: &SnapshotStore, day: i32, n: u64) {
        s.update(&mut |r| {
            for b in r
                .property_mut("FF-A")
                .hour_and_day_mut(LocalHour(day as i64 * 24 + 3))
            {
                b.events.pageviews = n;
            }
        });
    }

    fn pageviews(s: &SnapshotStore, day: i32) -> Option<u64> {
        let mut out = None;
        s.scan(
            "FF-A",
            LocalDay(day)..=LocalDay(day),
            Grain::Day,
            Sections::TOTALS,
            // A day may come as its bucket and unfolded hours: their sum is the day.
            &mut |parts| {
                if !parts.is_empty() {
                    out = Some(parts.iter().map(|(_, b)| b.events.pageviews).sum());
                }
            },
        )
        .unwrap();
        out
    }

    struct Embedded(tempfile::TempDir);

    impl crate::contract::Harness for Embedded {
        fn open(&mut self) -> std::sync::Arc<dyn RollupStore> {
            std::sync::Arc::new(SnapshotStore::open(self.0.path()).unwrap())
        }
    }

    #[test]
    fn rollup_store_contract() {
        crate::contract::run(&mut Embedded(tempfile::tempdir().unwrap()));
    }

    /// The contract again with a budget that evicts every clean day at each checkpoint
    /// and opens with none in memory: reads and writes go through the files.
    struct Evicting(tempfile::TempDir);

    impl crate::contract::Harness for Evicting {
        fn open(&mut self) -> std::sync::Arc<dyn RollupStore> {
            std::sync::Arc::new(SnapshotStore::open_with(self.0.path(), NOTHING_RESIDENT).unwrap())
        }
    }

    const NOTHING_RESIDENT: MemoryBudget = MemoryBudget {
        resident_bytes: 0,
        keep_newest_days: 0,
        read_cache_bytes: 1 << 20,
        cold_hours_on_disk: true,
    };

    /// Day buckets stay; every clean day's hours go to its file.
    const HOURS_ON_DISK: MemoryBudget = MemoryBudget {
        resident_bytes: u64::MAX,
        keep_newest_days: 0,
        read_cache_bytes: 1 << 20,
        cold_hours_on_disk: true,
    };

    struct HoursOnDisk(tempfile::TempDir);

    impl crate::contract::Harness for HoursOnDisk {
        fn open(&mut self) -> std::sync::Arc<dyn RollupStore> {
            std::sync::Arc::new(SnapshotStore::open_with(self.0.path(), HOURS_ON_DISK).unwrap())
        }
    }

    #[test]
    fn rollup_store_contract_with_every_clean_day_evicted() {
        crate::contract::run(&mut Evicting(tempfile::tempdir().unwrap()));
    }

    #[test]
    fn rollup_store_contract_with_every_clean_days_hours_on_disk() {
        crate::contract::run(&mut HoursOnDisk(tempfile::tempdir().unwrap()));
    }

    #[test]
    fn cold_hours_are_read_from_files_and_loaded_back_for_writes() {
        let dir = tempfile::tempdir().unwrap();
        let budget = MemoryBudget {
            keep_newest_days: 2,
            ..HOURS_ON_DISK
        };
        let hour_totals = |s: &SnapshotStore| {
            let mut v = Vec::new();
            s.scan(
                "FF-A",
                LocalDay(0)..=LocalDay(9),
                Grain::Hour,
                Sections::ALL,
                &mut |parts| {
                    v = parts
                        .iter()
                        .map(|(k, b)| (*k, b.events.pageviews))
                        .collect();
                },
            )
            .unwrap();
            v
        };
        let s = SnapshotStore::open_with(dir.path(), budget).unwrap();
        for d in 1..=5 {
            bump(&s, d, d as u64);
        }
        let before = hour_totals(&s);
        s.checkpoint(&[1], &crate::state_bytes(b"")).unwrap();
        let cold = |s: &SnapshotStore| {
            let r = s.rollups.read().unwrap();
            let p = &r.properties["FF-A"];
            (
                p.hours_evicted.iter().map(|d| d.0).collect::<Vec<_>>(),
                p.hours.len(),
                p.days.len(),
            )
        };
        assert_eq!(
            cold(&s),
            (vec![1, 2, 3], 2, 5),
            "the two newest days keep their hours"
        );
        assert_eq!(hour_totals(&s), before, "hours read from files");
        assert_eq!(pageviews(&s, 2), Some(2), "day buckets stay in memory");
        // A write to a day whose hours are on disk loads them first.
        s.update(&mut |r| {
            let (h, d) = r.property_mut("FF-A").buckets_mut(LocalHour(2 * 24 + 7));
            h.events.pageviews += 10;
            if let Some(d) = d {
                d.events.pageviews += 10;
            }
        });
        assert_eq!(
            cold(&s),
            (vec![1, 3], 4, 5),
            "day 2's hours are back, and the new one"
        );
        assert_eq!(pageviews(&s, 2), Some(12));
        s.checkpoint(&[2], &crate::state_bytes(b"")).unwrap();
        // Day 2 holds the property's newest hour, not yet folded: it keeps its hours.
        assert_eq!(cold(&s).0, vec![1, 3]);
        drop(s);
        // Reopened: cold days' hours are not loaded at all.
        let s = SnapshotStore::open_with(dir.path(), budget).unwrap();
        assert_eq!(cold(&s), (vec![1, 2, 3], 2, 5));
        let after = hour_totals(&s);
        assert_eq!(after.len(), before.len() + 1);
        assert_eq!(pageviews(&s, 2), Some(12));
        let s = SnapshotStore::open(dir.path()).unwrap();
        assert_eq!(hour_totals(&s), after, "the same with everything in memory");
    }

    #[test]
    fn evicted_days_are_read_and_written_back() {
        let dir = tempfile::tempdir().unwrap();
        let s = SnapshotStore::open_with(dir.path(), NOTHING_RESIDENT).unwrap();
        for d in 1..=5 {
            bump(&s, d, d as u64);
        }
        s.checkpoint(&[1], &crate::state_bytes(b"")).unwrap();
        let (resident, evicted) = s.resident_and_evicted_days();
        assert_eq!((resident, evicted), (0, 5), "every clean day evicted");
        assert_eq!(pageviews(&s, 3), Some(3), "read back from its file");
        // A write to an evicted day loads it first: the day keeps what it had.
        s.update(&mut |r| {
            let (h, d) = r.property_mut("FF-A").buckets_mut(LocalHour(2 * 24 + 7));
            h.events.pageviews += 10;
            if let Some(d) = d {
                d.events.pageviews += 10;
            }
        });
        assert_eq!(pageviews(&s, 2), Some(12));
        assert_eq!(s.resident_and_evicted_days(), (1, 4));
        s.checkpoint(&[2], &crate::state_bytes(b"")).unwrap();
        // Day 2 holds the property's newest hour, not yet folded: it stays.
        assert_eq!(s.resident_and_evicted_days(), (1, 4));
        assert_eq!(pageviews(&s, 2), Some(12));
        assert_eq!(s.first_day("FF-A").unwrap(), Some(LocalDay(1)));
        drop(s);
        // Reopened with everything in memory: the same figures.
        let s = SnapshotStore::open(dir.path()).unwrap();
        assert_eq!(s.resident_and_evicted_days(), (5, 0));
        for (d, want) in [(1, 1), (2, 12), (3, 3), (4, 4), (5, 5)] {
            assert_eq!(pageviews(&s, d), Some(want), "day {d}");
        }
    }

    #[test]
    fn state_files_are_streamed_verified_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let state_files = || {
            let mut v: Vec<String> = fs::read_dir(dir.path())
                .unwrap()
                .flatten()
                .map(|f| f.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("state-"))
                .collect();
            v.sort();
            v
        };
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        {
            let s = SnapshotStore::open(dir.path()).unwrap();
            bump(&s, 1, 5);
            s.checkpoint(&[1], &crate::state_bytes(&big)).unwrap();
            s.checkpoint(&[2], &crate::state_bytes(b"second")).unwrap();
            // The store answers its own latest checkpoint.
            let c = s.last_checkpoint().unwrap().unwrap();
            assert_eq!(
                (c.offsets, c.processor_state),
                (vec![2], b"second".to_vec())
            );
            s.checkpoint(&[3], &crate::state_bytes(&big)).unwrap();
        }
        assert_eq!(
            state_files(),
            vec!["state-000000000003.bin"],
            "old states deleted"
        );
        // A state file of a checkpoint that never committed is removed on open.
        fs::write(dir.path().join("state-000000000004.bin"), b"partial").unwrap();
        let s = SnapshotStore::open(dir.path()).unwrap();
        assert_eq!(s.last_checkpoint().unwrap().unwrap().processor_state, big);
        assert_eq!(state_files(), vec!["state-000000000003.bin"]);
        drop(s);
        // A damaged state file: the store refuses to open and names the file.
        let path = dir.path().join("state-000000000003.bin");
        let mut data = fs::read(&path).unwrap();
        data[1_000_000] ^= 1;
        fs::write(&path, &data).unwrap();
        let err = SnapshotStore::open(dir.path()).err().expect("refused");
        assert!(err.to_string().contains("state-000000000003.bin"), "{err}");
        data[1_000_000] ^= 1;
        fs::write(&path, &data[..data.len() - 1]).unwrap();
        assert!(
            SnapshotStore::open(dir.path()).is_err(),
            "truncated state refused"
        );
    }

    #[test]
    fn manifests_with_the_state_inside_still_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SnapshotStore::open(dir.path()).unwrap();
            bump(&s, 1, 5);
            s.checkpoint(&[7], &crate::state_bytes(b"unused")).unwrap();
        }
        // Rewrite the store as the earlier format left it.
        let current = dir.path().join("CURRENT");
        let (m, _) = read_manifest(&current).unwrap();
        let old = ManifestInlineState {
            generation: m.generation,
            offsets: m.offsets,
            processor_state: b"inline".to_vec(),
            minutes: m.minutes,
            days: m.days,
        };
        fs::write(&current, frame(MANIFEST_MAGIC_INLINE_STATE, &old).unwrap()).unwrap();
        fs::remove_file(SnapshotStore::state_path(dir.path(), m.generation)).unwrap();
        {
            let s = SnapshotStore::open(dir.path()).unwrap();
            let c = s.last_checkpoint().unwrap().unwrap();
            assert_eq!(
                (c.offsets, c.processor_state),
                (vec![7], b"inline".to_vec())
            );
            assert_eq!(pageviews(&s, 1), Some(5));
            s.checkpoint(&[8], &crate::state_bytes(b"moved")).unwrap();
        }
        let s = SnapshotStore::open(dir.path()).unwrap();
        assert_eq!(
            s.last_checkpoint().unwrap().unwrap().processor_state,
            b"moved"
        );
        assert_eq!(pageviews(&s, 1), Some(5));
    }

    #[test]
    fn checkpoint_round_trip_and_atomicity() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SnapshotStore::open(dir.path()).unwrap();
            assert!(s.last_checkpoint().unwrap().is_none());
            bump(&s, 1, 5);
            bump(&s, 2, 7);
            s.checkpoint(&[10, 20], &crate::state_bytes(b"state"))
                .unwrap();
            // Only day 2 changes; day 1's file must be kept as it is.
            bump(&s, 2, 8);
            s.checkpoint(&[11, 21], &crate::state_bytes(b"state2"))
                .unwrap();
            // Changed after the last checkpoint: must not survive a "crash".
            bump(&s, 1, 99);
        }
        let s = SnapshotStore::open(dir.path()).unwrap();
        let c = s.last_checkpoint().unwrap().unwrap();
        assert_eq!(c.offsets, vec![11, 21]);
        assert_eq!(c.processor_state, b"state2");
        assert_eq!(pageviews(&s, 1), Some(5));
        assert_eq!(pageviews(&s, 2), Some(8));
        let files: Vec<_> = fs::read_dir(dir.path().join("days/FF-A"))
            .unwrap()
            .collect();
        assert_eq!(files.len(), 2, "superseded files are deleted");
        // A file of an uncommitted checkpoint is removed on open and changes nothing.
        fs::write(
            dir.path().join("days/FF-A/+000001-999999999999.bin"),
            b"junk",
        )
        .unwrap();
        let s = SnapshotStore::open(dir.path()).unwrap();
        assert_eq!(pageviews(&s, 1), Some(5));
        drop(s);
        // A corrupted committed file is refused, not treated as empty.
        let f = fs::read_dir(dir.path().join("days/FF-A"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let mut data = fs::read(&f).unwrap();
        data[10] ^= 1;
        fs::write(&f, data).unwrap();
        assert!(SnapshotStore::open(dir.path()).is_err());
    }
}
