//! Embedded [`RollupStore`]: rollups in memory behind a read-write lock, checkpointed
//! incrementally to local files.
//!
//! Layout of the store directory:
//! - `days/<property>/<local day>-<generation>.bin`: one local day of one property (the
//!   day bucket and its hour buckets). Written only when that day changed.
//! - `CURRENT`: the manifest — generation, log offsets, processor state, realtime
//!   minutes, and which file holds each day. Replaced atomically (write `CURRENT.tmp`,
//!   fsync, rename, fsync the directory).
//!
//! A checkpoint writes and fsyncs the changed days' files under a new generation, then
//! commits the manifest; only then are superseded files deleted. A crash at any point
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
use std::sync::{Mutex, RwLock};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::rollup::MinuteStats;
use std::ops::RangeInclusive;

use crate::{
    Bucket, Checkpoint, Error, Grain, LocalDay, LocalHour, Minute, Part, PropertyRollup, Result,
    RollupRead, RollupStore, Rollups,
};

const MANIFEST_MAGIC: &[u8; 8] = b"FFMANI02";
const DAY_MAGIC: &[u8; 8] = b"FFDAY002";

#[derive(Serialize, Deserialize)]
struct Manifest {
    generation: u64,
    offsets: Vec<u64>,
    processor_state: Vec<u8>,
    minutes: Vec<(String, BTreeMap<i64, MinuteStats>)>,
    /// (property, local day, generation of its file, file bytes)
    days: Vec<(String, i32, u64, u64)>,
}

#[derive(Serialize, Deserialize)]
struct DayFile {
    day: Bucket,
    hours: Vec<(LocalHour, Bucket)>,
}

#[derive(Serialize)]
struct DayFileRef<'a> {
    day: std::borrow::Cow<'a, Bucket>,
    hours: Vec<(LocalHour, &'a Bucket)>,
}

/// Where each day lives on disk: (generation, bytes).
type FileIndex = HashMap<(String, LocalDay), (u64, u64)>;

pub struct SnapshotStore {
    dir: PathBuf,
    rollups: RwLock<Rollups>,
    loaded: Option<Checkpoint>,
    files: Mutex<(u64, FileIndex)>,
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
    /// Opens the store in `dir`, loading the last checkpoint if there is one.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(dir.join("days"))?;
        let _ = fs::remove_file(dir.join("CURRENT.tmp"));
        let current = dir.join("CURRENT");
        let mut rollups = Rollups::default();
        let mut index = FileIndex::new();
        let (loaded, generation, mut total) = if current.exists() {
            let m: Manifest = unframe(&current, MANIFEST_MAGIC)?;
            let mut total = fs::metadata(&current)?.len();
            for (prop, day, gen, bytes) in &m.days {
                let path = Self::day_path(&dir, prop, LocalDay(*day), *gen);
                let f: DayFile = unframe(&path, DAY_MAGIC)?;
                let p = rollups.property_mut(prop);
                p.days.insert(LocalDay(*day), f.day);
                p.hours.extend(f.hours);
                index.insert((prop.clone(), LocalDay(*day)), (*gen, *bytes));
                total += bytes;
            }
            for (prop, minutes) in m.minutes {
                rollups.property_mut(&prop).minutes = minutes;
            }
            (
                Some(Checkpoint {
                    offsets: m.offsets,
                    processor_state: m.processor_state,
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
        Ok(Self {
            dir,
            rollups: RwLock::new(rollups),
            loaded,
            files: Mutex::new((generation, index)),
            bytes: AtomicU64::new(total),
        })
    }

    fn day_path(dir: &Path, prop: &str, day: LocalDay, gen: u64) -> PathBuf {
        dir.join("days")
            .join(property_dir(prop))
            .join(format!("{:+07}-{gen:012}.bin", day.0))
    }
}

fn day_file<'a>(p: &'a PropertyRollup, day: LocalDay) -> Option<DayFileRef<'a>> {
    let lo = LocalHour(day.0 as i64 * 24);
    let hi = LocalHour(day.0 as i64 * 24 + 24);
    Some(DayFileRef {
        // With its unfolded hours folded in, so that a loaded rollup has none.
        day: p.day_view(day)?,
        hours: p.hours.range(lo..hi).map(|(h, b)| (*h, b)).collect(),
    })
}

impl RollupRead for SnapshotStore {
    fn first_day(&self, property: &str) -> Result<Option<LocalDay>> {
        let r = self.rollups.read().unwrap();
        Ok(r.properties.get(property).and_then(|p| p.first_day()))
    }

    fn scan(
        &self,
        property: &str,
        days: RangeInclusive<LocalDay>,
        grain: Grain,
        f: &mut dyn FnMut(&[Part<'_>]),
    ) -> Result<()> {
        let r = self.rollups.read().unwrap();
        match r.properties.get(property) {
            Some(p) => f(&p.scan_parts(days, grain)),
            None => f(&[]),
        }
        Ok(())
    }

    fn minutes(
        &self,
        property: &str,
        minutes: RangeInclusive<i64>,
        f: &mut dyn FnMut(&[Minute<'_>]),
    ) -> Result<()> {
        let r = self.rollups.read().unwrap();
        match r.properties.get(property) {
            Some(p) => f(&p.minute_parts(minutes)),
            None => f(&[]),
        }
        Ok(())
    }
}

impl RollupStore for SnapshotStore {
    fn last_checkpoint(&self) -> Option<Checkpoint> {
        self.loaded.clone()
    }

    fn update(&self, f: &mut dyn FnMut(&mut Rollups)) {
        f(&mut self.rollups.write().unwrap())
    }

    fn checkpoint(&self, offsets: &[u64], processor_state: &[u8]) -> Result<()> {
        let mut files = self.files.lock().unwrap();
        let generation = files.0 + 1;
        let mut written: Vec<((String, LocalDay), u64)> = Vec::new();
        let mut dirs = HashSet::new();
        let minutes;
        {
            // Readers keep reading meanwhile; the processor (the only writer) is here.
            let r = self.rollups.read().unwrap();
            for (prop, p) in r.properties.iter() {
                for day in &p.dirty_days {
                    let Some(body) = day_file(p, *day) else {
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
        let mut index = files.1.clone();
        let mut superseded = Vec::new();
        for (key, bytes) in &written {
            if let Some((old, _)) = index.insert(key.clone(), (generation, *bytes)) {
                superseded.push(Self::day_path(&self.dir, &key.0, key.1, old));
            }
        }
        let manifest = Manifest {
            generation,
            offsets: offsets.to_vec(),
            processor_state: processor_state.to_vec(),
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
        for old in superseded {
            let _ = fs::remove_file(old);
        }
        let total: u64 = index.values().map(|(_, b)| b).sum::<u64>() + data.len() as u64;
        self.bytes.store(total, Ordering::Relaxed);
        tracing::debug!(
            generation,
            days = written.len(),
            total,
            "rollup checkpoint committed"
        );
        *files = (generation, index);
        Ok(())
    }

    fn checkpoint_bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            &mut |parts| out = parts.first().map(|(_, b)| b.events.pageviews),
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

    #[test]
    fn checkpoint_round_trip_and_atomicity() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SnapshotStore::open(dir.path()).unwrap();
            assert!(s.last_checkpoint().is_none());
            bump(&s, 1, 5);
            bump(&s, 2, 7);
            s.checkpoint(&[10, 20], b"state").unwrap();
            // Only day 2 changes; day 1's file must be kept as it is.
            bump(&s, 2, 8);
            s.checkpoint(&[11, 21], b"state2").unwrap();
            // Changed after the last checkpoint: must not survive a "crash".
            bump(&s, 1, 99);
        }
        let s = SnapshotStore::open(dir.path()).unwrap();
        let c = s.last_checkpoint().unwrap();
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
