//! Resident tables: the query API's answers from the day files' rows held in memory.
//!
//! DataFusion reads the Parquet files at every query and counts distinct visitors with
//! hash sets; on two cores that is seconds per question at 10 M events. The questions
//! `/api/v2/query` and `/api/v2/funnel` ask have a fixed shape (filters, a breakdown,
//! counts), so this module answers them itself: a range's files are decoded once into
//! a [`Table`] (dictionary codes, sorted by visitor and visit) kept within a memory
//! budget, and [`exec`] scans it. The numbers are the SQL path's by construction and by
//! test (`resident_and_sql_paths_agree`): what the executor does not hold (revenue,
//! `time_on_page`, an `event:goal` breakdown, queries the rollups answer) goes to
//! DataFusion as before, and so does a range too large for the budget.

pub(crate) mod exec;
pub(crate) mod table;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::{StreamExt, TryStreamExt};
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
pub(crate) use table::Table;

/// What a table is made of: each file's path, size and modification time (a day made
/// again is a new table).
type Key = Vec<(String, u64, i64)>;

struct Entry {
    key: Key,
    /// What the table answers for (a property's date range): a newer set of files for
    /// the same scope replaces it.
    scope: String,
    table: tokio::sync::OnceCell<Option<Arc<Table>>>,
    used: AtomicU64,
    /// A task is making the table while an older one of the scope answers.
    building: std::sync::atomic::AtomicBool,
}

/// The resident tables, least recently used dropped first beyond the budget.
pub struct Resident {
    budget: usize,
    entries: Mutex<Vec<Arc<Entry>>>,
    clock: AtomicU64,
}

/// The default memory budget of resident tables.
pub const DEFAULT_BUDGET: usize = 4 << 30;

/// Reads and decodes the files; None when they are too large for `budget`.
async fn load(
    store: Arc<dyn ObjectStore>,
    files: Vec<ObjectMeta>,
    budget: usize,
) -> Result<Option<Arc<Table>>, String> {
    let size: u64 = files.iter().map(|m| m.size).sum();
    if size as usize > budget {
        return Ok(None);
    }
    let started = std::time::Instant::now();
    let count = files.len();
    let bytes: Vec<bytes::Bytes> = futures::stream::iter(files)
        .map(|m| {
            let store = store.clone();
            async move { store.get(&m.location).await?.bytes().await }
        })
        .buffered(4)
        .try_collect()
        .await
        .map_err(|e| e.to_string())?;
    let table = tokio::task::spawn_blocking(move || Table::build(&bytes))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    tracing::debug!(
        files = count,
        rows = table.rows(),
        bytes = table.bytes,
        ms = started.elapsed().as_millis() as u64,
        "resident table made"
    );
    Ok((table.bytes <= budget).then(|| Arc::new(table)))
}

impl Resident {
    pub fn new(budget: usize) -> Self {
        Self {
            budget,
            entries: Mutex::new(Vec::new()),
            clock: AtomicU64::new(0),
        }
    }

    /// The table of exactly these files, decoded if it is not held; None when the
    /// budget is 0, the files are too large for it, or they cannot be read (the caller
    /// asks DataFusion, which reports the error).
    ///
    /// When the files of `scope` changed (a day made again) and the table of the
    /// earlier files is held, that one answers while the new one is made in the
    /// background: answers lag the files by the making (seconds), instead of every
    /// first question after a refresh waiting for it.
    pub(crate) async fn table(
        &self,
        store: &Arc<dyn ObjectStore>,
        scope: &str,
        files: &[ObjectMeta],
    ) -> Option<Arc<Table>> {
        if self.budget == 0 || files.is_empty() {
            return None;
        }
        let key: Key = files
            .iter()
            .map(|m| {
                (
                    m.location.to_string(),
                    m.size,
                    m.last_modified.timestamp_millis(),
                )
            })
            .collect();
        let now = self.clock.fetch_add(1, Ordering::Relaxed);
        let (entry, older) = {
            let mut entries = self.entries.lock().unwrap();
            let entry = match entries.iter().find(|e| e.key == key) {
                Some(e) => e.clone(),
                None => {
                    let e = Arc::new(Entry {
                        key,
                        scope: scope.to_string(),
                        table: tokio::sync::OnceCell::new(),
                        used: AtomicU64::new(0),
                        building: Default::default(),
                    });
                    entries.push(e.clone());
                    e
                }
            };
            // A held table of the same scope made from other files.
            let older = entries
                .iter()
                .filter(|e| e.scope == scope && !Arc::ptr_eq(e, &entry))
                .filter_map(|e| e.table.get().cloned().flatten().map(|t| (e.clone(), t)))
                .max_by_key(|(e, _)| e.used.load(Ordering::Relaxed));
            (entry, older)
        };
        entry.used.store(now, Ordering::Relaxed);
        if !entry.table.initialized() {
            if let Some((old, table)) = older {
                if !entry.building.swap(true, Ordering::SeqCst) {
                    let (e, store, files, budget) =
                        (entry.clone(), store.clone(), files.to_vec(), self.budget);
                    tokio::spawn(async move {
                        let made = e.table.get_or_try_init(|| load(store, files, budget)).await;
                        if let Err(err) = made {
                            tracing::warn!(error = %err, "a resident table could not be made");
                        }
                        e.building.store(false, Ordering::SeqCst);
                    });
                }
                old.used.store(now, Ordering::Relaxed);
                return Some(table);
            }
        }
        let loaded = entry
            .table
            .get_or_try_init(|| load(store.clone(), files.to_vec(), self.budget))
            .await;
        let table = match loaded {
            Ok(t) => t.clone(),
            Err(e) => {
                tracing::warn!(error = %e, "a resident table could not be made; asking DataFusion");
                self.entries
                    .lock()
                    .unwrap()
                    .retain(|x| !Arc::ptr_eq(x, &entry));
                return None;
            }
        };
        // The scope's earlier tables are not asked for again.
        self.entries
            .lock()
            .unwrap()
            .retain(|x| Arc::ptr_eq(x, &entry) || x.scope != scope || !x.table.initialized());
        self.evict(&entry);
        table
    }

    /// Drops the least recently used tables until the held ones fit the budget, and
    /// entries beyond a count (sets of files that were replaced are not asked for
    /// again).
    fn evict(&self, keep: &Arc<Entry>) {
        const MAX_ENTRIES: usize = 32;
        let mut entries = self.entries.lock().unwrap();
        let held = |entries: &[Arc<Entry>]| -> usize {
            entries
                .iter()
                .filter_map(|e| e.table.get().and_then(|t| t.as_ref()).map(|t| t.bytes))
                .sum()
        };
        while held(&entries) > self.budget && remove_oldest(&mut entries, keep, true) {}
        while entries.len() > MAX_ENTRIES && remove_oldest(&mut entries, keep, false) {}
    }
}

/// Removes the least recently used entry other than `keep` (of those with a table made,
/// with `made`); false when there is none.
fn remove_oldest(entries: &mut Vec<Arc<Entry>>, keep: &Arc<Entry>, made: bool) -> bool {
    let oldest = entries
        .iter()
        .enumerate()
        .filter(|(_, e)| !Arc::ptr_eq(e, keep) && (!made || e.table.initialized()))
        .min_by_key(|(_, e)| e.used.load(Ordering::Relaxed))
        .map(|(i, _)| i);
    match oldest {
        Some(i) => {
            entries.remove(i);
            true
        }
        None => false,
    }
}
