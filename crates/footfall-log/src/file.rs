//! The embedded log: per partition a directory of segment files named by their base
//! offset. A record is framed as `len: u32 LE | crc32(payload): u32 LE | payload`; the
//! offset of a record is its byte position in the partition.
//!
//! One writer thread does group commit: it takes every append waiting in its queue,
//! writes them, fsyncs each touched segment once, then answers them all. The active
//! segment is kept a few MiB longer than its records, in zeros, so that those fsyncs
//! flush data only. On open, the last segment of each partition is scanned and cut at
//! the first torn or corrupt frame or the zeros (a crash can only tear what was never
//! acknowledged).

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use crate::{AppendCallback, Error, EventLog, Offset, Record, Result};

const HEADER: usize = 8;

#[derive(Debug, Clone)]
pub struct FileLogOptions {
    pub partitions: u32,
    /// A segment is sealed and a new one started once it reaches this size.
    pub segment_bytes: u64,
    pub max_record_bytes: usize,
    /// Skip fsync (tests of logic only; never in production).
    pub fsync: bool,
    /// Open for reading only (e.g. `footfall archive verify` beside a running server):
    /// nothing is truncated or written; the readable end is the valid prefix at open.
    pub read_only: bool,
}

impl Default for FileLogOptions {
    fn default() -> Self {
        Self {
            partitions: 4,
            segment_bytes: 64 * 1024 * 1024,
            max_record_bytes: 1024 * 1024,
            fsync: true,
            read_only: false,
        }
    }
}

#[derive(Debug, Clone)]
struct Segment {
    base: Offset,
    path: PathBuf,
    /// The writer's handle while this is the active segment: readers following the
    /// tail (the processor, thousands of times a second under beacon load) then read
    /// without opening and closing the file each time. Sealed segments have none, so
    /// that a long-retained log does not hold a descriptor per segment.
    file: Option<Arc<File>>,
}

impl Segment {
    /// A segment read by opening its file (every segment but the active one).
    fn closed(base: Offset, path: PathBuf) -> Self {
        Segment {
            base,
            path,
            file: None,
        }
    }
}

struct Shared {
    dir: PathBuf,
    durable_end: Vec<AtomicU64>,
    /// Sorted segments per partition; the last is the active one.
    segments: Mutex<Vec<Vec<Segment>>>,
    poisoned: AtomicBool,
    poison_reason: Mutex<String>,
    /// The last append failed for want of space (taken back cleanly): appends are tried
    /// and refused until one succeeds.
    full: AtomicBool,
    generation: Mutex<u64>,
    appended: Condvar,
    /// Tests: the partition whose next write (`.0`) or flush (`.1`) fails.
    #[cfg(test)]
    faults: Mutex<(Option<usize>, Option<usize>)>,
}

/// A write (`flush == false`) or flush of `partition` that a test made fail.
#[cfg(test)]
fn injected(shared: &Shared, partition: usize, flush: bool) -> std::io::Result<()> {
    let mut f = shared.faults.lock().unwrap();
    let slot = if flush { &mut f.1 } else { &mut f.0 };
    if *slot == Some(partition) {
        *slot = None;
        return Err(std::io::Error::other("injected fault"));
    }
    Ok(())
}

#[cfg(not(test))]
#[inline(always)]
fn injected(_: &Shared, _: usize, _: bool) -> std::io::Result<()> {
    Ok(())
}

struct Request {
    records: Vec<(u32, Vec<u8>)>,
    done: AppendCallback,
}

/// The embedded, file-backed [`EventLog`].
pub struct FileLog {
    shared: Arc<Shared>,
    opts: FileLogOptions,
    tx: Mutex<Option<Sender<Request>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

fn segment_path(dir: &Path, partition: u32, base: Offset) -> PathBuf {
    dir.join(format!("p{partition:04}"))
        .join(format!("{base:020}.seg"))
}

fn sync_dir(path: &Path) -> std::io::Result<()> {
    File::open(path)?.sync_all()
}

/// The checksum of an erased record's payload (`len` zeros).
fn erased_crc(len: usize) -> u32 {
    let mut h = crc32fast::Hasher::new();
    let zeros = [0u8; 4096];
    let mut left = len;
    while left > 0 {
        let n = left.min(zeros.len());
        h.update(&zeros[..n]);
        left -= n;
    }
    h.finalize()
}

/// Scans frames of a segment and returns the length of its valid prefix, and whether
/// anything but zeros (written ahead, see [`ZERO_AHEAD`]) follows it.
fn valid_prefix(path: &Path, max_record: usize) -> std::io::Result<(u64, bool)> {
    let mut data = Vec::new();
    File::open(path)?.read_to_end(&mut data)?;
    let mut pos = 0usize;
    while pos + HEADER <= data.len() {
        let len = u32::from_le_bytes(data[pos..pos + 4].try_into().unwrap()) as usize;
        let crc = u32::from_le_bytes(data[pos + 4..pos + 8].try_into().unwrap());
        if len == 0 || len > max_record || pos + HEADER + len > data.len() {
            break;
        }
        if crc32fast::hash(&data[pos + HEADER..pos + HEADER + len]) != crc && crc != erased_crc(len)
        {
            break;
        }
        pos += HEADER + len;
    }
    let torn = data[pos..].iter().any(|b| *b != 0);
    Ok((pos as u64, torn))
}

impl FileLog {
    /// Opens (creating if needed) the log in `dir`, recovering torn tails.
    pub fn open(dir: impl AsRef<Path>, opts: FileLogOptions) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir)?;
        let mut all_segments = Vec::new();
        let mut ends = Vec::new();
        let mut files = Vec::new();
        for p in 0..opts.partitions {
            let pdir = dir.join(format!("p{p:04}"));
            if !opts.read_only {
                fs::create_dir_all(&pdir)?;
            }
            let entries = match fs::read_dir(&pdir) {
                Ok(e) => e,
                Err(e) if opts.read_only && e.kind() == std::io::ErrorKind::NotFound => {
                    all_segments.push(vec![Segment::closed(0, segment_path(&dir, p, 0))]);
                    ends.push(0);
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let mut segs: Vec<Segment> = entries
                .filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name().into_string().ok()?;
                    let base = name.strip_suffix(".seg")?.parse::<u64>().ok()?;
                    Some(Segment::closed(base, e.path()))
                })
                .collect();
            segs.sort_by_key(|s| s.base);
            if segs.is_empty() && opts.read_only {
                all_segments.push(vec![Segment::closed(0, segment_path(&dir, p, 0))]);
                ends.push(0);
                continue;
            }
            if segs.is_empty() {
                let path = segment_path(&dir, p, 0);
                File::create(&path)?.sync_all()?;
                sync_dir(&pdir)?;
                segs.push(Segment::closed(0, path));
            }
            let last = segs.last().unwrap().clone();
            let (valid, torn) = valid_prefix(&last.path, opts.max_record_bytes)?;
            if opts.read_only {
                ends.push(last.base + valid);
                all_segments.push(segs);
                continue;
            }
            let file = OpenOptions::new().read(true).write(true).open(&last.path)?;
            if file.metadata()?.len() != valid {
                if torn {
                    tracing::warn!(
                        partition = p,
                        segment = %last.path.display(),
                        kept = valid,
                        "cutting torn tail of log segment"
                    );
                }
                file.set_len(valid)?;
                file.sync_all()?;
            }
            ends.push(last.base + valid);
            let file = Arc::new(file);
            segs.last_mut().expect("at least one segment").file = Some(file.clone());
            files.push((file, last.base, valid));
            all_segments.push(segs);
        }
        let shared = Arc::new(Shared {
            dir: dir.clone(),
            durable_end: ends.iter().map(|e| AtomicU64::new(*e)).collect(),
            segments: Mutex::new(all_segments),
            poisoned: AtomicBool::new(false),
            poison_reason: Mutex::new(String::new()),
            full: AtomicBool::new(false),
            generation: Mutex::new(0),
            appended: Condvar::new(),
            #[cfg(test)]
            faults: Mutex::new((None, None)),
        });
        if opts.read_only {
            return Ok(Self {
                shared,
                opts,
                tx: Mutex::new(None),
                writer: Mutex::new(None),
            });
        }
        let (tx, rx) = mpsc::channel();
        let writer_shared = shared.clone();
        let writer_opts = opts.clone();
        let writer = std::thread::Builder::new()
            .name("footfall-log-writer".into())
            .spawn(move || writer_loop(writer_shared, writer_opts, files, rx))?;
        Ok(Self {
            shared,
            opts,
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
        })
    }

    /// Stops the writer after it has answered every append already queued.
    pub fn close(&self) {
        self.tx.lock().unwrap().take();
        if let Some(w) = self.writer.lock().unwrap().take() {
            let _ = w.join();
        }
    }

    #[cfg(test)]
    fn segments_of(&self, partition: u32) -> Result<Vec<Segment>> {
        self.shared
            .segments
            .lock()
            .unwrap()
            .get(partition as usize)
            .cloned()
            .ok_or(Error::NoSuchPartition(partition))
    }
}

impl Drop for FileLog {
    fn drop(&mut self) {
        self.close();
    }
}

struct Active {
    file: Arc<File>,
    base: Offset,
    len: u64,
    /// The file's length: zeros written ahead of `len` (see [`ZERO_AHEAD`]).
    zeroed: u64,
}

/// Bytes of zeros written ahead of the records. A write into space the file already
/// has changes no metadata, so its fdatasync flushes data alone; an append that grows
/// the file makes every fdatasync commit the file system's journal as well, which on
/// small group commits cost more than the data. Zeros are never read: readers stop at
/// the durable end, and open cuts a segment back to its last valid record.
const ZERO_AHEAD: u64 = 4 * 1024 * 1024;

/// Bytes of a segment from a record boundary on. Large windows (catching up, replays)
/// map the page cache instead of copying it (the copy was about 4% of processing); small
/// ones (following the tail) are copied, because unmapping costs every thread of the
/// process a TLB flush, which slowed beacon ingest by about 5%.
///
/// Mapping is sound here because no mapped byte is ever cut from its file: readers map
/// only durable records, below `durable_end`; sealing cuts a segment to its records (the
/// zeros after them are never mapped); torn tails are cut on open, before any reader; and
/// retention unlinks whole files, which leaves existing mappings intact.
enum Window {
    Mapped {
        map: memmap2::Mmap,
        /// Bytes between the page boundary the mapping starts at and the offset asked for.
        skip: usize,
    },
    Copied(Vec<u8>),
}

/// Windows at least this large are mapped rather than copied.
const MAP_FROM: usize = 256 * 1024;

impl Window {
    fn load(file: &File, at: u64, len: usize) -> std::io::Result<Window> {
        use std::os::unix::fs::FileExt;
        if len < MAP_FROM {
            let mut buf = vec![0; len];
            file.read_exact_at(&mut buf, at)?;
            return Ok(Window::Copied(buf));
        }
        static PAGE: OnceLock<u64> = OnceLock::new();
        // SAFETY: sysconf only reads a system constant.
        let page = *PAGE.get_or_init(|| match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
            n if n > 0 => n as u64,
            _ => 4096,
        });
        let start = at - at % page;
        let skip = (at - start) as usize;
        let mut opts = memmap2::MmapOptions::new();
        opts.offset(start).len(skip + len);
        #[cfg(target_os = "linux")]
        opts.populate();
        // SAFETY: see the type's comment: the mapped range stays in the file for as long
        // as the mapping lives.
        let map = unsafe { opts.map(file)? };
        Ok(Window::Mapped { map, skip })
    }
}

impl AsRef<[u8]> for Window {
    fn as_ref(&self) -> &[u8] {
        match self {
            Window::Mapped { map, skip } => &map[*skip..],
            Window::Copied(v) => v,
        }
    }
}

fn poison(shared: &Shared, why: String) {
    tracing::error!(error = %why, "event log poisoned; refusing appends");
    *shared.poison_reason.lock().unwrap() = why;
    shared.poisoned.store(true, Ordering::SeqCst);
}

fn writer_loop(
    shared: Arc<Shared>,
    opts: FileLogOptions,
    files: Vec<(Arc<File>, Offset, u64)>,
    rx: Receiver<Request>,
) {
    let mut active: Vec<Active> = files
        .into_iter()
        .map(|(file, base, len)| Active {
            file,
            base,
            len,
            zeroed: len,
        })
        .collect();
    let mut bufs: Vec<Vec<u8>> = vec![Vec::new(); active.len()];
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        let mut bytes: usize = batch[0].records.iter().map(|r| r.1.len()).sum();
        while bytes < 16 * 1024 * 1024 {
            match rx.try_recv() {
                Ok(r) => {
                    bytes += r.records.iter().map(|r| r.1.len()).sum::<usize>();
                    batch.push(r);
                }
                Err(_) => break,
            }
        }
        if shared.poisoned.load(Ordering::SeqCst) {
            let why = shared.poison_reason.lock().unwrap().clone();
            for r in batch {
                (r.done)(Err(Error::Poisoned(why.clone())));
            }
            continue;
        }
        // Assign offsets and frame records into per-partition buffers.
        let mut results: Vec<Result<Vec<Offset>>> = Vec::with_capacity(batch.len());
        let mut pending_end: Vec<u64> = active.iter().map(|a| a.base + a.len).collect();
        for req in &batch {
            let mut offsets = Vec::with_capacity(req.records.len());
            let mut err = None;
            for (p, payload) in &req.records {
                if *p as usize >= active.len() {
                    err = Some(Error::NoSuchPartition(*p));
                    break;
                }
                if payload.is_empty() || payload.len() > opts.max_record_bytes {
                    err = Some(Error::RecordTooLarge(payload.len(), opts.max_record_bytes));
                    break;
                }
            }
            if let Some(e) = err {
                results.push(Err(e));
                continue;
            }
            for (p, payload) in &req.records {
                let p = *p as usize;
                offsets.push(pending_end[p]);
                let b = &mut bufs[p];
                b.extend_from_slice(&(payload.len() as u32).to_le_bytes());
                b.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
                b.extend_from_slice(payload);
                pending_end[p] += (HEADER + payload.len()) as u64;
            }
            results.push(Ok(offsets));
        }
        // A request is answered as soon as every partition it wrote to is durable: the
        // device flushes of one group commit are serial, so a beacon to the first
        // partition need not wait for the flush of the second.
        let last: Vec<Option<usize>> = batch
            .iter()
            .zip(&results)
            .map(|(r, res)| match res {
                Ok(_) => r.records.iter().map(|(p, _)| *p as usize).max(),
                Err(_) => None,
            })
            .collect();
        let mut pending: Vec<Unanswered> = batch.into_iter().zip(results).map(Some).collect();
        // Requests that wrote nothing (rejected, or empty) need no flush.
        answer(&mut pending, |i| last[i].is_none());
        let written: Vec<usize> = (0..bufs.len()).filter(|&p| !bufs[p].is_empty()).collect();
        let lens: Vec<u64> = bufs.iter().map(|b| b.len() as u64).collect();
        let mut failure = None;
        let mut full = false;
        // What a failure must take back: ranges of this group's records not yet durable.
        let mut undo: Vec<Withdrawal> = Vec::new();
        for (k, &p) in written.iter().enumerate() {
            // The first partition is flushed right away; the others' writeback starts now
            // so that their data transfers overlap the earlier partitions' flushes.
            let start_writeback = opts.fsync && k > 0;
            let buf = &bufs[p];
            let res = write_partition(
                &shared,
                &opts,
                p as u32,
                &mut active[p],
                buf,
                start_writeback,
            );
            bufs[p].clear();
            let a = &active[p];
            match res {
                Ok(()) => undo.push(Withdrawal::written(p, a.len, lens[p])),
                Err(e) => {
                    // Part of the buffer may be in the file. With fsync on, only the space
                    // zeroed ahead can hold it (a failure to zero ahead wrote none of it).
                    let end = match opts.fsync {
                        true => (a.len + lens[p]).min(a.zeroed.max(a.len)),
                        false => a.len + lens[p],
                    };
                    undo.push(Withdrawal {
                        partition: p,
                        start: a.len,
                        end,
                    });
                    // A full disk refused the bytes before any fsync: once they are
                    // taken back, the files are as before and a later append may succeed.
                    full = is_full(&e);
                    failure = Some(format!("partition {p}: {e}"));
                    break;
                }
            }
        }
        if failure.is_none() {
            undo.clear();
            for (k, &p) in written.iter().enumerate() {
                if opts.fsync {
                    let res = injected(&shared, p, true).and_then(|()| active[p].file.sync_data());
                    if let Err(e) = res {
                        failure = Some(format!("partition {p}: {e}"));
                        // Partitions are flushed in order and an append is answered with
                        // its last one, so nothing from here on has been answered.
                        undo = written[k..]
                            .iter()
                            .map(|&q| Withdrawal::written(q, active[q].len, lens[q]))
                            .collect();
                        break;
                    }
                }
                let a = &active[p];
                shared.durable_end[p].store(a.base + a.len, Ordering::SeqCst);
                answer(&mut pending, |i| last[i] == Some(p));
            }
        }
        for b in bufs.iter_mut() {
            b.clear();
        }
        if let Some(why) = failure {
            let clean = withdraw(&mut active, &undo, opts.fsync);
            if full && clean {
                if !shared.full.swap(true, Ordering::SeqCst) {
                    tracing::error!(error = %why, "event log: disk full; refusing appends until space returns");
                }
                for (req, _) in pending.into_iter().flatten() {
                    (req.done)(Err(Error::Unavailable(format!("disk full: {why}"))));
                }
                continue;
            }
            poison(&shared, why.clone());
            for (req, _) in pending.into_iter().flatten() {
                (req.done)(Err(Error::Poisoned(why.clone())));
            }
            continue;
        }
        if !written.is_empty() && shared.full.swap(false, Ordering::SeqCst) {
            tracing::warn!("event log: space is back; appends succeed again");
        }
        {
            let mut g = shared.generation.lock().unwrap();
            *g += 1;
            shared.appended.notify_all();
        }
    }
    for a in &active {
        let _ = a.file.set_len(a.len);
        let _ = a.file.sync_all();
    }
}

/// Bytes of one partition's active segment that a failed group commit wrote and no
/// answered append needs.
struct Withdrawal {
    partition: usize,
    start: u64,
    end: u64,
}

impl Withdrawal {
    /// The `len` bytes a successful write just added before `end`.
    fn written(partition: usize, end: u64, len: u64) -> Self {
        Withdrawal {
            partition,
            start: end - len,
            end,
        }
    }
}

/// Takes back the records of a failed group commit that are not durable yet: they are
/// overwritten with zeros (where a reopen stops reading) and the partition's end moves
/// back, so that an append answered with an error leaves nothing behind for a restart to
/// read and a retry to count twice. Best effort: the device that failed may fail this
/// too, which is logged. Only records in partitions flushed before a failed flush stay
/// (their appends' other records were not durable).
///
/// Answers whether every range was taken back (and flushed, with fsync on).
fn withdraw(active: &mut [Active], undo: &[Withdrawal], fsync: bool) -> bool {
    let mut clean = true;
    for w in undo {
        let a = &mut active[w.partition];
        let (_, mut res) = write_zeros(&a.file, w.start, w.end);
        if res.is_ok() && fsync {
            res = a.file.sync_data();
        }
        if let Err(e) = res {
            clean = false;
            tracing::error!(
                partition = w.partition,
                error = %e,
                "could not take back the records of failed appends; a restart may read them"
            );
        }
        a.len = a.len.min(w.start);
    }
    clean
}

/// Whether a write failed for want of space (or quota): a condition that passes, unlike
/// a failing device.
fn is_full(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    ) || e.raw_os_error() == Some(libc::ENOSPC)
}

/// Writes zeros over `from..to` of `file`; returns how far it got, and the error if it
/// stopped short.
fn write_zeros(file: &File, from: u64, to: u64) -> (u64, std::io::Result<()>) {
    use std::os::unix::fs::FileExt;
    static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
    let mut at = from;
    while at < to {
        let n = ((to - at) as usize).min(ZEROS.len());
        if let Err(e) = file.write_all_at(&ZEROS[..n], at) {
            return (at, Err(e));
        }
        at += n as u64;
    }
    (at, Ok(()))
}

/// An append of the group being committed, with its result, until it is answered.
type Unanswered = Option<(Request, Result<Vec<Offset>>)>;

/// Answers the appends `which` selects (each once).
fn answer(pending: &mut [Unanswered], which: impl Fn(usize) -> bool) {
    for (i, slot) in pending.iter_mut().enumerate() {
        if which(i) {
            if let Some((req, res)) = slot.take() {
                (req.done)(res);
            }
        }
    }
}

fn write_partition(
    shared: &Shared,
    opts: &FileLogOptions,
    partition: u32,
    a: &mut Active,
    buf: &[u8],
    start_writeback: bool,
) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    if a.len >= opts.segment_bytes {
        // Seal the full segment (without its zeros) and start the next at its end.
        a.file.set_len(a.len)?;
        a.file.sync_all()?;
        let base = a.base + a.len;
        let path = segment_path(&shared.dir, partition, base);
        let file = Arc::new(
            OpenOptions::new()
                .create(true)
                .truncate(true)
                .read(true)
                .write(true)
                .open(&path)?,
        );
        if opts.fsync {
            sync_dir(path.parent().unwrap())?;
        }
        {
            let mut all = shared.segments.lock().unwrap();
            let segs = &mut all[partition as usize];
            if let Some(sealed) = segs.last_mut() {
                sealed.file = None;
            }
            segs.push(Segment {
                base,
                path,
                file: Some(file.clone()),
            });
        }
        *a = Active {
            file,
            base,
            len: 0,
            zeroed: 0,
        };
    }
    let need = a.len + buf.len() as u64;
    if opts.fsync && need > a.zeroed {
        // Never past the segment's size, where it will be sealed anyway.
        let upto = (need + ZERO_AHEAD).min(opts.segment_bytes.max(need));
        let (reached, res) = write_zeros(&a.file, a.zeroed, upto);
        a.zeroed = reached;
        res?;
        a.file.sync_data()?;
    }
    // Positioned writes: one system call, where seek-then-write took two.
    if let Err(e) = injected(shared, partition as usize, false) {
        // As a device that fails part way: the first half of the buffer is in the file.
        a.file.write_all_at(&buf[..buf.len() / 2], a.len)?;
        return Err(e);
    }
    a.file.write_all_at(buf, a.len)?;
    if start_writeback {
        start_writeback_of(&a.file, a.len, buf.len() as u64);
    }
    a.len += buf.len() as u64;
    Ok(())
}

/// Asks the kernel to start writing a range to the device now, without waiting. Only a
/// head start for the `fdatasync` that follows (which still makes it durable); on
/// systems without `sync_file_range` it does nothing.
#[cfg(target_os = "linux")]
fn start_writeback_of(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain system call on an open descriptor; its result is only a hint, so
    // an error is ignored (the fdatasync after it reports real failures).
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback_of(_: &File, _: u64, _: u64) {}

impl EventLog for FileLog {
    fn partitions(&self) -> u32 {
        self.opts.partitions
    }

    fn append(&self, records: Vec<(u32, Vec<u8>)>, done: AppendCallback) {
        if self.shared.poisoned.load(Ordering::SeqCst) {
            let why = self.shared.poison_reason.lock().unwrap().clone();
            return done(Err(Error::Poisoned(why)));
        }
        let guard = self.tx.lock().unwrap();
        match guard.as_ref() {
            Some(tx) => {
                if let Err(mpsc::SendError(req)) = tx.send(Request { records, done }) {
                    (req.done)(Err(Error::Closed));
                }
            }
            None => done(Err(Error::Closed)),
        }
    }

    fn end_offset(&self, partition: u32) -> Offset {
        self.shared
            .durable_end
            .get(partition as usize)
            .map(|a| a.load(Ordering::SeqCst))
            .unwrap_or(0)
    }

    fn start_offset(&self, partition: u32) -> Offset {
        self.shared.segments.lock().unwrap()[partition as usize][0].base
    }

    fn read(&self, partition: u32, from: Offset, max_bytes: usize) -> Result<Vec<Record>> {
        let end = self.end_offset(partition);
        if from >= end {
            return Ok(Vec::new());
        }
        // Only the segment holding `from` (and where the next begins) is copied out of
        // the lock: a long-retained log has hundreds of segments, and the tail is read
        // thousands of times a second.
        let (seg, next_base) = {
            let all = self.shared.segments.lock().unwrap();
            let segs = all
                .get(partition as usize)
                .ok_or(Error::NoSuchPartition(partition))?;
            let idx = segs.partition_point(|s| s.base <= from);
            if idx == 0 {
                return Err(Error::OffsetNotRetained {
                    partition,
                    offset: from,
                    first: segs.first().map_or(0, |s| s.base),
                });
            }
            (segs[idx - 1].clone(), segs.get(idx).map(|s| s.base))
        };
        let seg_end = next_base.unwrap_or(end).min(end);
        let opened;
        let file: &File = match &seg.file {
            Some(f) => f,
            None => match File::open(&seg.path) {
                Ok(f) => {
                    opened = f;
                    &opened
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(Error::OffsetNotRetained {
                        partition,
                        offset: from,
                        first: self.start_offset(partition),
                    })
                }
                Err(e) => return Err(e.into()),
            },
        };
        let at = from - seg.base;
        let available = (seg_end - from) as usize;
        let mut window = Window::load(file, at, available.min(max_bytes.max(HEADER)))?;
        // Frame boundaries first; the payloads become slices of the one mapping.
        let mut spans = Vec::new();
        let mut pos = 0usize;
        let mut whole = false;
        loop {
            let data = window.as_ref();
            if pos + HEADER > data.len() {
                break;
            }
            let len = u32::from_le_bytes(data[pos..pos + 4].try_into().unwrap()) as usize;
            let crc = u32::from_le_bytes(data[pos + 4..pos + 8].try_into().unwrap());
            let offset = from + pos as u64;
            if len == 0 || len > self.opts.max_record_bytes {
                return Err(Error::Corrupt { partition, offset });
            }
            if pos + HEADER + len > data.len() {
                if spans.is_empty() && !whole && HEADER + len <= available {
                    // A single record larger than max_bytes: read it whole.
                    window = Window::load(file, at, HEADER + len)?;
                    whole = true;
                    continue;
                }
                break;
            }
            let payload = &data[pos + HEADER..pos + HEADER + len];
            // A record being erased (or cut short by a crash while it was) has the
            // checksum of zeros before its payload is all zeros: it reads as zeros.
            let erased = crc32fast::hash(payload) != crc;
            if erased && crc != erased_crc(len) {
                return Err(Error::Corrupt { partition, offset });
            }
            spans.push((offset, pos + HEADER, len, erased));
            pos += HEADER + len;
        }
        let buf = bytes::Bytes::from_owner(window);
        let out = spans
            .into_iter()
            .map(|(offset, start, len, erased)| Record {
                offset,
                next: offset + (HEADER + len) as u64,
                payload: if erased {
                    bytes::Bytes::from(vec![0u8; len])
                } else {
                    buf.slice(start..start + len)
                },
            })
            .collect();
        Ok(out)
    }

    fn wait_for_append(&self, seen_generation: u64, timeout: Duration) -> u64 {
        let g = self.shared.generation.lock().unwrap();
        if *g != seen_generation {
            return *g;
        }
        let (g, _) = self.shared.appended.wait_timeout(g, timeout).unwrap();
        *g
    }

    fn generation(&self) -> u64 {
        *self.shared.generation.lock().unwrap()
    }

    fn enforce_retention(&self, safe: &[Offset], max_age: Duration, max_bytes: u64) -> Result<u64> {
        let mut freed = 0;
        let now = SystemTime::now();
        let mut all = self.shared.segments.lock().unwrap();
        for (p, segs) in all.iter_mut().enumerate() {
            let safe_p = safe.get(p).copied().unwrap_or(0);
            let end = self.end_offset(p as u32);
            loop {
                if segs.len() < 2 {
                    break;
                }
                let seg_end = segs[1].base;
                if seg_end > safe_p {
                    break;
                }
                let total = end - segs[0].base;
                let old = fs::metadata(&segs[0].path)
                    .and_then(|m| m.modified())
                    .map(|m| now.duration_since(m).unwrap_or_default() > max_age)
                    .unwrap_or(true);
                if !(old || total > max_bytes) {
                    break;
                }
                fs::remove_file(&segs[0].path)?;
                freed += seg_end - segs[0].base;
                segs.remove(0);
            }
        }
        Ok(freed)
    }

    fn healthy(&self) -> bool {
        !self.shared.poisoned.load(Ordering::SeqCst) && !self.shared.full.load(Ordering::SeqCst)
    }

    fn erase(&self, partition: u32, offsets: &[Offset]) -> Result<u64> {
        use std::os::unix::fs::FileExt;
        let end = self.end_offset(partition);
        let segs: Vec<(Offset, PathBuf)> = {
            let all = self.shared.segments.lock().unwrap();
            all.get(partition as usize)
                .ok_or(Error::NoSuchPartition(partition))?
                .iter()
                .map(|s| (s.base, s.path.clone()))
                .collect()
        };
        let mut offsets = offsets.to_vec();
        offsets.sort_unstable();
        offsets.dedup();
        // Per segment: its file and the (position, length) of each record to erase.
        let mut work: Vec<(File, Vec<(u64, usize)>)> = Vec::new();
        let mut current: Option<usize> = None;
        for off in offsets {
            if off >= end {
                return Err(Error::Corrupt {
                    partition,
                    offset: off,
                });
            }
            let idx = segs.partition_point(|(base, _)| *base <= off);
            if idx == 0 {
                continue; // removed by retention already
            }
            if current != Some(idx - 1) {
                let f = match OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&segs[idx - 1].1)
                {
                    Ok(f) => f,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e.into()),
                };
                work.push((f, Vec::new()));
                current = Some(idx - 1);
            }
            let (file, records) = work.last_mut().unwrap();
            let at = off - segs[idx - 1].0;
            let mut head = [0u8; HEADER];
            file.read_exact_at(&mut head, at)?;
            let len = u32::from_le_bytes(head[..4].try_into().unwrap()) as usize;
            let crc = u32::from_le_bytes(head[4..].try_into().unwrap());
            if len == 0 || len > self.opts.max_record_bytes {
                return Err(Error::Corrupt {
                    partition,
                    offset: off,
                });
            }
            if crc == erased_crc(len) {
                continue; // erased before
            }
            let mut payload = vec![0u8; len];
            file.read_exact_at(&mut payload, at + HEADER as u64)?;
            if crc32fast::hash(&payload) != crc {
                return Err(Error::Corrupt {
                    partition,
                    offset: off,
                });
            }
            records.push((at, len));
        }
        let mut erased = 0;
        for (file, records) in &work {
            // The checksums of zeros first, made durable before any payload changes:
            // readers take a record with that checksum as erased whatever its payload
            // holds, so a crash part way through leaves it erased, not damaged.
            for &(at, len) in records {
                file.write_all_at(&erased_crc(len).to_le_bytes(), at + 4)?;
            }
            file.sync_data()?;
            for &(at, len) in records {
                file.write_all_at(&vec![0u8; len], at + HEADER as u64)?;
            }
            file.sync_data()?;
            erased += records.len() as u64;
        }
        Ok(erased)
    }

    fn retained_bytes(&self) -> u64 {
        let segs = self.shared.segments.lock().unwrap();
        (0..self.opts.partitions)
            .map(|p| self.end_offset(p) - segs[p as usize][0].base)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Files(tempfile::TempDir);

    impl crate::contract::Harness for Files {
        fn open(&mut self) -> Arc<dyn EventLog> {
            Arc::new(
                FileLog::open(
                    self.0.path(),
                    FileLogOptions {
                        partitions: 3,
                        segment_bytes: 4096,
                        ..Default::default()
                    },
                )
                .unwrap(),
            )
        }
    }

    #[test]
    fn event_log_contract() {
        crate::contract::run(&mut Files(tempfile::tempdir().unwrap()));
    }

    #[test]
    fn erased_records_read_as_zeros_and_keep_every_offset() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let opts = FileLogOptions {
            partitions: 1,
            segment_bytes: 256,
            ..Default::default()
        };
        let log = FileLog::open(dir.path(), opts.clone()).unwrap();
        let recs: Vec<Vec<u8>> = (0..40u8).map(|i| vec![i + 1; 10 + i as usize]).collect();
        let offs: Vec<Offset> = recs
            .iter()
            .map(|r| append_sync(&log, vec![(0, r.clone())]).unwrap()[0])
            .collect();
        assert!(log.shared.segments.lock().unwrap()[0].len() > 3);
        // Records in several segments, twice over (the second time erases nothing).
        let gone = [offs[1], offs[17], offs[18], offs[39]];
        assert_eq!(log.erase(0, &gone).unwrap(), 4);
        assert_eq!(log.erase(0, &gone).unwrap(), 0);
        assert!(
            log.erase(0, &[log.end_offset(0)]).is_err(),
            "beyond the end"
        );
        let want: Vec<Vec<u8>> = recs
            .iter()
            .zip(&offs)
            .map(|(r, o)| {
                if gone.contains(o) {
                    vec![0; r.len()]
                } else {
                    r.clone()
                }
            })
            .collect();
        assert_eq!(read_all(&log, 0), want);
        drop(log);
        // A crash part way through an erasure: the checksum of zeros is written, the
        // payload not yet. It reads as erased, and nothing after it is lost at reopen.
        let log = FileLog::open(dir.path(), opts.clone()).unwrap();
        let (seg, at) = {
            let all = log.shared.segments.lock().unwrap();
            let s = all[0].iter().rev().find(|s| s.base <= offs[30]).unwrap();
            (s.path.clone(), offs[30] - s.base)
        };
        drop(log);
        let f = OpenOptions::new().write(true).open(&seg).unwrap();
        f.write_all_at(&erased_crc(recs[30].len()).to_le_bytes(), at + 4)
            .unwrap();
        drop(f);
        let log = FileLog::open(dir.path(), opts).unwrap();
        let mut want = want;
        want[30] = vec![0; recs[30].len()];
        assert_eq!(read_all(&log, 0), want);
        assert_eq!(
            log.end_offset(0),
            offs[39] + (HEADER + recs[39].len()) as u64
        );
    }
    use std::io::Write;
    use std::sync::mpsc::channel;

    fn append_sync(log: &FileLog, recs: Vec<(u32, Vec<u8>)>) -> Result<Vec<Offset>> {
        let (tx, rx) = channel();
        log.append(
            recs,
            Box::new(move |r| {
                tx.send(r).unwrap();
            }),
        );
        rx.recv().unwrap()
    }

    fn read_all(log: &FileLog, p: u32) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut at = log.start_offset(p);
        loop {
            let recs = log.read(p, at, 100).unwrap();
            if recs.is_empty() {
                return out;
            }
            for r in recs {
                at = r.next;
                out.push(r.payload.to_vec());
            }
        }
    }

    fn opts() -> FileLogOptions {
        FileLogOptions {
            partitions: 2,
            segment_bytes: 64,
            ..Default::default()
        }
    }

    #[test]
    fn append_read_roll_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut expect = [Vec::new(), Vec::new()];
        {
            let log = FileLog::open(dir.path(), opts()).unwrap();
            for i in 0..50u32 {
                let payload = format!("record-{i}").into_bytes();
                append_sync(&log, vec![(i % 2, payload.clone())]).unwrap();
                // Following the tail reads through the writer's handle, across rolls.
                assert_eq!(read_all(&log, i % 2).last(), Some(&payload));
                expect[(i % 2) as usize].push(payload);
            }
            assert_eq!(read_all(&log, 0), expect[0]);
            let segs = log.segments_of(0).unwrap();
            assert!(segs.len() > 3);
            let (active, sealed) = segs.split_last().unwrap();
            assert!(
                active.file.is_some(),
                "the active segment is read by its handle"
            );
            assert!(
                sealed.iter().all(|s| s.file.is_none()),
                "sealed segments hold no descriptor"
            );
        }
        let log = FileLog::open(dir.path(), opts()).unwrap();
        assert_eq!(read_all(&log, 0), expect[0]);
        assert_eq!(read_all(&log, 1), expect[1]);
    }

    #[test]
    fn torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let o = FileLogOptions {
            partitions: 1,
            ..Default::default()
        };
        {
            let log = FileLog::open(dir.path(), o.clone()).unwrap();
            append_sync(&log, vec![(0, b"one".to_vec()), (0, b"two".to_vec())]).unwrap();
        }
        let seg = segment_path(dir.path(), 0, 0);
        // A torn frame: header promising 100 bytes, only 3 present.
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&100u32.to_le_bytes()).unwrap();
        f.write_all(&[0, 0, 0, 0, 1, 2, 3]).unwrap();
        drop(f);
        let log = FileLog::open(dir.path(), o.clone()).unwrap();
        assert_eq!(read_all(&log, 0), vec![b"one".to_vec(), b"two".to_vec()]);
        append_sync(&log, vec![(0, b"three".to_vec())]).unwrap();
        assert_eq!(read_all(&log, 0).len(), 3);
        drop(log);
        // A flipped byte in the last record is detected by its checksum and cut.
        let mut data = fs::read(&seg).unwrap();
        let n = data.len();
        data[n - 1] ^= 0xff;
        fs::write(&seg, data).unwrap();
        let log = FileLog::open(dir.path(), o).unwrap();
        assert_eq!(read_all(&log, 0).len(), 2);
    }

    #[test]
    fn zeros_ahead_are_cut_on_open_and_sealed_segments_have_none() {
        let dir = tempfile::tempdir().unwrap();
        let o = FileLogOptions {
            partitions: 1,
            segment_bytes: 1 << 20,
            ..Default::default()
        };
        let seg = segment_path(dir.path(), 0, 0);
        // A crash while running: the log is never closed, its file keeps the zeros.
        let crashed = FileLog::open(dir.path(), o.clone()).unwrap();
        append_sync(&crashed, vec![(0, b"one".to_vec()), (0, b"two".to_vec())]).unwrap();
        assert_eq!(fs::metadata(&seg).unwrap().len(), o.segment_bytes);
        std::mem::forget(crashed);
        let log = FileLog::open(dir.path(), o.clone()).unwrap();
        assert_eq!(log.end_offset(0), 2 * (HEADER as u64) + 6);
        assert_eq!(read_all(&log, 0), vec![b"one".to_vec(), b"two".to_vec()]);
        // Fill past one segment: the sealed one is cut to its records.
        for i in 0..40u8 {
            append_sync(&log, vec![(0, vec![i + 1; 40_000])]).unwrap();
        }
        let segs = log.segments_of(0).unwrap();
        assert!(segs.len() >= 2);
        assert_eq!(fs::metadata(&segs[0].path).unwrap().len(), segs[1].base);
        assert_eq!(read_all(&log, 0).len(), 42);
        let end = log.end_offset(0);
        drop(log);
        // A clean close leaves no zeros either.
        let last = segs.last().unwrap();
        assert_eq!(fs::metadata(&last.path).unwrap().len(), end - last.base);
    }

    #[test]
    fn retention_respects_safe_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let log = FileLog::open(dir.path(), opts()).unwrap();
        let mut offsets = Vec::new();
        for i in 0..40u32 {
            offsets.extend(append_sync(&log, vec![(0, vec![i as u8 + 1; 20])]).unwrap());
        }
        let freed = log.enforce_retention(&[0, 0], Duration::ZERO, 0).unwrap();
        assert_eq!(freed, 0, "nothing is below the safe offset 0");
        let safe = offsets[20];
        log.enforce_retention(&[safe, 0], Duration::ZERO, 0)
            .unwrap();
        let start = log.start_offset(0);
        assert!(start > 0 && start <= safe);
        let remaining = read_all(&log, 0);
        assert!(remaining.len() >= 20 && remaining.len() < 40);
        assert_eq!(remaining.last().unwrap(), &vec![40u8; 20]);
        assert!(matches!(
            log.read(0, 0, 100),
            Err(Error::OffsetNotRetained { .. })
        ));
    }

    #[test]
    fn group_commit_under_concurrency() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(FileLog::open(dir.path(), FileLogOptions::default()).unwrap());
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for i in 0..50 {
                        append_sync(&log, vec![(t % 4, format!("{t}-{i}").into_bytes())]).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let total: usize = (0..4).map(|p| read_all(&log, p).len()).sum();
        assert_eq!(total, 400);
    }

    #[test]
    fn reads_from_any_record_with_any_window() {
        // Records of many sizes (some larger than a page or the read window) start at
        // unaligned offsets; reading from every record with small and large windows must
        // return exactly the records that follow, each whole.
        for segment_bytes in [64, 1 << 20] {
            let dir = tempfile::tempdir().unwrap();
            let o = FileLogOptions {
                segment_bytes,
                ..opts()
            };
            reads_from_any_record(&FileLog::open(dir.path(), o).unwrap());
        }
    }

    fn reads_from_any_record(log: &FileLog) {
        let sizes = [
            1usize, 13, 4095, 4096, 4097, 9000, 7, 300, 20_000, 2, 4088, 65,
        ];
        let records: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| (0..n).map(|b| (b * 31 + i) as u8).collect())
            .collect();
        for r in &records {
            append_sync(log, vec![(0, r.clone())]).unwrap();
        }
        let mut offsets = vec![log.start_offset(0)];
        for r in &records {
            offsets.push(offsets.last().unwrap() + (HEADER + r.len()) as u64);
        }
        // With 64-byte segments every record ends one, so reads also meet segment ends.
        for window in [1, 100, 4096, 1 << 20] {
            for (i, &from) in offsets[..records.len()].iter().enumerate() {
                let got = log.read(0, from, window).unwrap();
                assert!(!got.is_empty(), "window {window} from record {i}");
                for (k, rec) in got.iter().enumerate() {
                    assert_eq!(rec.offset, offsets[i + k]);
                    assert_eq!(rec.next, offsets[i + k + 1]);
                    assert_eq!(&rec.payload[..], &records[i + k][..], "window {window}");
                }
            }
        }
    }

    #[test]
    fn an_append_is_answered_only_when_all_its_partitions_are_durable() {
        // Requests spanning one to four partitions, from several threads, so that group
        // commits mix them: each answer must find every one of its records below the
        // durable end of its partition (the writer answers partition by partition).
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(FileLog::open(dir.path(), FileLogOptions::default()).unwrap());
        let threads: Vec<_> = (0..6u32)
            .map(|t| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for i in 0..60u32 {
                        let parts: Vec<u32> = (0..1 + (t + i) % 4).map(|k| (t + k) % 4).collect();
                        let recs: Vec<(u32, Vec<u8>)> = parts
                            .iter()
                            .map(|&p| (p, format!("{t}-{i}-{p}").into_bytes()))
                            .collect();
                        let (tx, rx) = channel();
                        let check = log.clone();
                        log.append(
                            recs,
                            Box::new(move |r| {
                                let offsets = r.unwrap();
                                let late: Vec<(u32, Offset)> = parts
                                    .iter()
                                    .zip(offsets)
                                    .filter(|(p, o)| check.end_offset(**p) <= *o)
                                    .map(|(p, o)| (*p, o))
                                    .collect();
                                tx.send(late).unwrap();
                            }),
                        );
                        assert_eq!(rx.recv().unwrap(), vec![], "answered before durable");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let total: usize = (0..4).map(|p| read_all(&log, p).len()).sum();
        assert_eq!(
            total,
            (0..6u32)
                .map(|t| (0..60u32).map(|i| 1 + (t + i) as usize % 4).sum::<usize>())
                .sum::<usize>()
        );
    }

    #[test]
    fn failed_appends_leave_no_records_behind() {
        // A write that fails part way, and a flush that fails, on the second partition of
        // a group whose first partition was written (with the flush: and made durable
        // first). After a clean stop and after a crash (the process gone with everything
        // written still in the files), a reopened log holds no record of the failed
        // append that was not durable: it was answered with an error, and a client
        // retrying it must not find it counted already. What a flush made durable before
        // the failure stays (other appends' records are interleaved with it).
        for flush in [false, true] {
            for crash in [false, true] {
                let dir = tempfile::tempdir().unwrap();
                let opts = FileLogOptions {
                    partitions: 2,
                    ..Default::default()
                };
                let mut kept = [vec![b"a0".to_vec()], vec![b"a1".to_vec()]];
                if flush {
                    kept[0].push(b"b0".to_vec());
                }
                let log = FileLog::open(dir.path(), opts.clone()).unwrap();
                append_sync(&log, vec![(0, b"a0".to_vec()), (1, b"a1".to_vec())]).unwrap();
                *log.shared.faults.lock().unwrap() = match flush {
                    false => (Some(1), None),
                    true => (None, Some(1)),
                };
                let failed = vec![
                    (1, b"b1-first-record".to_vec()),
                    (1, b"b1-second-record".to_vec()),
                    (0, b"b0".to_vec()),
                ];
                let r = append_sync(&log, failed);
                assert!(matches!(r, Err(Error::Poisoned(_))), "{r:?}");
                assert!(matches!(
                    append_sync(&log, vec![(0, b"c0".to_vec())]),
                    Err(Error::Poisoned(_))
                ));
                for p in 0..2 {
                    assert_eq!(read_all(&log, p), kept[p as usize], "flush {flush}");
                }
                if crash {
                    // The writer thread and its files stay as they are, as after a kill.
                    std::mem::forget(log);
                } else {
                    drop(log);
                }
                let log = FileLog::open(dir.path(), opts).unwrap();
                for p in 0..2 {
                    assert_eq!(
                        read_all(&log, p),
                        kept[p as usize],
                        "partition {p}, flush {flush}, crash {crash}"
                    );
                }
                append_sync(&log, vec![(0, b"d0".to_vec())]).unwrap();
            }
        }
    }
}
