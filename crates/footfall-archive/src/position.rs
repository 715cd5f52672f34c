//! Where the archiver keeps its position ([`ArchiverState`]): the seam between the
//! exactly-once protocol and the storage that makes it durable.
//!
//! On one machine the position is a file in the data directory ([`FilePosition`]). A
//! cluster's archiver keeps it in the shared database instead (footfall-pg), because its
//! data directory is not durable there (a Kubernetes pod's `emptyDir` goes with the pod):
//! an archiver that came back without its position would start again from the oldest
//! record the broker retains and archive those records a second time.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::{ArchiverState, Error, Result};

/// Contract ([`contract::run`] in every implementation's tests):
///
/// - [`load`](PositionStore::load) answers the state last saved, or `None` when none
///   ever was.
/// - [`save`](PositionStore::save) is durable when it returns: after a crash, `load` of
///   a new store over the same place answers it.
/// - A store shared between machines fences: once another store over the same place has
///   saved (another archiver took over), `save` fails with [`Error::State`] instead of
///   writing, so that two archivers never both commit (the one that fails stops).
pub trait PositionStore: Send + Sync {
    fn load(&self) -> Result<Option<ArchiverState>>;
    fn save(&self, state: &ArchiverState) -> Result<()>;
}

/// The position in `archiver.json` in a directory (written whole: temporary file, fsync,
/// rename, fsync of the directory). Not shared, so it does not fence.
pub struct FilePosition {
    path: PathBuf,
}

impl FilePosition {
    /// The position in `dir` (created at the first save: reading creates nothing).
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        Ok(Self {
            path: dir.as_ref().join("archiver.json"),
        })
    }
}

impl PositionStore for FilePosition {
    fn load(&self) -> Result<Option<ArchiverState>> {
        match fs::read(&self.path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| Error::State(e.to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn save(&self, state: &ArchiverState) -> Result<()> {
        if let Some(dir) = self.path.parent() {
            fs::create_dir_all(dir)?;
        }
        let tmp = self.path.with_extension("json.tmp");
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec(state).map_err(|e| Error::State(e.to_string()))?)?;
        f.sync_all()?;
        fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

/// The [`PositionStore`] contract as a test suite every implementation runs. `open`
/// makes a new store over the same place each time it is called (a restarted archiver);
/// `shared` says whether the implementation is shared between machines (and fences).
pub mod contract {
    use super::*;

    pub fn run(open: &dyn Fn() -> Box<dyn PositionStore>, shared: bool) {
        let a = open();
        assert_eq!(a.load().expect("load"), None, "nothing saved yet");
        let mut s = ArchiverState {
            offsets: vec![10, 0, 7],
            pending: vec![None, Some((0, 4)), None],
        };
        a.save(&s).expect("first save");
        assert_eq!(a.load().expect("load").as_ref(), Some(&s), "read back");
        s.offsets[1] = 4;
        s.pending[1] = None;
        a.save(&s).expect("second save");
        // A restarted archiver finds the last state.
        let b = open();
        assert_eq!(
            b.load().expect("load").as_ref(),
            Some(&s),
            "after a restart"
        );
        if shared {
            // b has loaded: it takes over. a's next save is refused, b's goes through.
            s.offsets[0] = 11;
            b.save(&s).expect("the newer archiver saves");
            let stale = ArchiverState {
                offsets: vec![99, 99, 99],
                pending: vec![None; 3],
            };
            assert!(
                matches!(a.save(&stale), Err(Error::State(_))),
                "the older archiver is fenced off"
            );
            assert_eq!(open().load().expect("load").as_ref(), Some(&s));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_position_contract() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("archive-state");
        contract::run(
            &|| Box::new(FilePosition::open(&path).unwrap()) as Box<dyn PositionStore>,
            false,
        );
    }
}
