//! Embedded [`RollupStore`]: rollups in memory behind a read-write lock, checkpointed
//! as one file written to a temporary name, fsynced, then renamed over the previous one
//! (rename is atomic on POSIX file systems), then the directory fsynced.
//!
//! File layout: `FFCKPT01` magic, postcard body, CRC-32 of the body (LE u32). A file
//! whose checksum fails is refused loudly instead of silently starting empty.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

use serde::{Deserialize, Serialize};

use crate::{Checkpoint, Error, PropertyRollup, Result, RollupStore, Rollups};

const MAGIC: &[u8; 8] = b"FFCKPT01";

#[derive(Serialize, Deserialize)]
struct Body {
    offsets: Vec<u64>,
    processor_state: Vec<u8>,
    rollups: Rollups,
}

pub struct SnapshotStore {
    path: PathBuf,
    rollups: RwLock<Rollups>,
    loaded: Option<Checkpoint>,
    bytes: AtomicU64,
}

impl SnapshotStore {
    /// Opens the store in `dir`, loading the last checkpoint if there is one.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        fs::create_dir_all(dir)?;
        let path = dir.join("checkpoint.bin");
        let _ = fs::remove_file(dir.join("checkpoint.bin.tmp"));
        let (rollups, loaded, bytes) = match fs::read(&path) {
            Ok(data) => {
                let corrupt = |why: &str| Error::Corrupt(path.display().to_string(), why.into());
                if data.len() < 12 || &data[..8] != MAGIC {
                    return Err(corrupt("bad header"));
                }
                let body = &data[8..data.len() - 4];
                let crc = u32::from_le_bytes(data[data.len() - 4..].try_into().unwrap());
                if crc32fast::hash(body) != crc {
                    return Err(corrupt("checksum mismatch"));
                }
                let b: Body = postcard::from_bytes(body).map_err(|e| corrupt(&e.to_string()))?;
                (
                    b.rollups,
                    Some(Checkpoint {
                        offsets: b.offsets,
                        processor_state: b.processor_state,
                    }),
                    data.len() as u64,
                )
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Rollups::default(), None, 0),
            Err(e) => return Err(e.into()),
        };
        Ok(Self {
            path,
            rollups: RwLock::new(rollups),
            loaded,
            bytes: AtomicU64::new(bytes),
        })
    }
}

impl RollupStore for SnapshotStore {
    fn last_checkpoint(&self) -> Option<Checkpoint> {
        self.loaded.clone()
    }

    fn update(&self, f: &mut dyn FnMut(&mut Rollups)) {
        f(&mut self.rollups.write().unwrap())
    }

    fn read(&self, property: &str, f: &mut dyn FnMut(Option<&PropertyRollup>)) {
        f(self.rollups.read().unwrap().properties.get(property))
    }

    fn checkpoint(&self, offsets: &[u64], processor_state: &[u8]) -> Result<()> {
        let mut data = MAGIC.to_vec();
        {
            let r = self.rollups.read().unwrap();
            #[derive(Serialize)]
            struct BodyRef<'a> {
                offsets: &'a [u64],
                processor_state: &'a [u8],
                rollups: &'a Rollups,
            }
            postcard::to_io(
                &BodyRef {
                    offsets,
                    processor_state,
                    rollups: &r,
                },
                &mut data,
            )
            .map_err(|e| Error::Corrupt("serialise".into(), e.to_string()))?;
        }
        let crc = crc32fast::hash(&data[8..]);
        data.extend_from_slice(&crc.to_le_bytes());
        let tmp = self.path.with_extension("bin.tmp");
        {
            let mut f = File::create(&tmp)?;
            f.write_all(&data)?;
            f.sync_all()?;
        }
        fs::rename(&tmp, &self.path)?;
        File::open(self.path.parent().unwrap())?.sync_all()?;
        self.bytes.store(data.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn checkpoint_bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_round_trip_and_atomicity() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SnapshotStore::open(dir.path()).unwrap();
            assert!(s.last_checkpoint().is_none());
            s.update(&mut |r| {
                r.property_mut("FF-A")
                    .days
                    .entry(crate::LocalDay(1))
                    .or_default()
                    .events
                    .pageviews = 5
            });
            s.checkpoint(&[10, 20], b"state").unwrap();
            // Changed after the checkpoint: must not survive a "crash".
            s.update(&mut |r| {
                r.property_mut("FF-A")
                    .days
                    .entry(crate::LocalDay(1))
                    .or_default()
                    .events
                    .pageviews = 99
            });
        }
        let s = SnapshotStore::open(dir.path()).unwrap();
        let c = s.last_checkpoint().unwrap();
        assert_eq!(c.offsets, vec![10, 20]);
        assert_eq!(c.processor_state, b"state");
        let mut pv = 0;
        s.read("FF-A", &mut |p| {
            pv = p.unwrap().days[&crate::LocalDay(1)].events.pageviews
        });
        assert_eq!(pv, 5);
        // A corrupted file is refused, not treated as empty.
        let path = dir.path().join("checkpoint.bin");
        let mut data = fs::read(&path).unwrap();
        data[10] ^= 1;
        fs::write(&path, data).unwrap();
        assert!(SnapshotStore::open(dir.path()).is_err());
    }
}
