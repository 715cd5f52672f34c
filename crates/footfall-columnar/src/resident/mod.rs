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
    table: tokio::sync::OnceCell<Option<Arc<Table>>>,
    used: AtomicU64,
}

/// The resident tables, least recently used dropped first beyond the budget.
pub struct Resident {
    budget: usize,
    entries: Mutex<Vec<Arc<Entry>>>,
    clock: AtomicU64,
}

/// The default memory budget of resident tables.
pub const DEFAULT_BUDGET: usize = 4 << 30;

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
    pub(crate) async fn table(
        &self,
        store: &Arc<dyn ObjectStore>,
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
        let entry = {
            let mut entries = self.entries.lock().unwrap();
            match entries.iter().find(|e| e.key == key) {
                Some(e) => e.clone(),
                None => {
                    let e = Arc::new(Entry {
                        key,
                        table: tokio::sync::OnceCell::new(),
                        used: AtomicU64::new(0),
                    });
                    entries.push(e.clone());
                    e
                }
            }
        };
        entry.used.store(
            self.clock.fetch_add(1, Ordering::Relaxed),
            Ordering::Relaxed,
        );
        let budget = self.budget;
        let loaded = entry
            .table
            .get_or_try_init(|| async {
                let size: u64 = files.iter().map(|m| m.size).sum();
                if size as usize > budget {
                    return Ok(None);
                }
                let started = std::time::Instant::now();
                let bytes: Vec<bytes::Bytes> = futures::stream::iter(files.iter().cloned())
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
                    files = files.len(),
                    rows = table.rows(),
                    bytes = table.bytes,
                    ms = started.elapsed().as_millis() as u64,
                    "resident table made"
                );
                Ok::<_, String>((table.bytes <= budget).then(|| Arc::new(table)))
            })
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
        self.evict(&entry);
        table
    }

    /// Drops the least recently used tables until the held ones fit the budget.
    fn evict(&self, keep: &Arc<Entry>) {
        let mut entries = self.entries.lock().unwrap();
        loop {
            let held: usize = entries
                .iter()
                .filter_map(|e| e.table.get().and_then(|t| t.as_ref()).map(|t| t.bytes))
                .sum();
            if held <= self.budget {
                break;
            }
            let oldest = entries
                .iter()
                .enumerate()
                .filter(|(_, e)| !Arc::ptr_eq(e, keep) && e.table.initialized())
                .min_by_key(|(_, e)| e.used.load(Ordering::Relaxed))
                .map(|(i, _)| i);
            match oldest {
                Some(i) => {
                    entries.remove(i);
                }
                None => break,
            }
        }
        // Sets of files that were replaced are not asked for again.
        const MAX_ENTRIES: usize = 32;
        while entries.len() > MAX_ENTRIES {
            let oldest = entries
                .iter()
                .enumerate()
                .filter(|(_, e)| !Arc::ptr_eq(e, keep))
                .min_by_key(|(_, e)| e.used.load(Ordering::Relaxed))
                .map(|(i, _)| i);
            match oldest {
                Some(i) => {
                    entries.remove(i);
                }
                None => break,
            }
        }
    }
}
