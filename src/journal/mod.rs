//! The PATCH journal: append-only, checksummed, sequence-numbered, durable before a change
//! is acknowledged.
//!
//! - [`format`]: segment and record bytes (CRC32C-framed).
//! - [`scan`]: reads every segment in order (recovery at start-up, and `snapshot build
//!   --journal`).
//! - [`Journal`]: the writer. One thread owns the open segment; PATCH handlers hand it their
//!   change and wait. The thread takes every change queued while the previous sync ran,
//!   writes them with one `write`, makes them durable with one `fdatasync` (**group commit**),
//!   applies them to the overlay, and only then answers each waiter. A failed write or sync
//!   stops the process: nothing that might be lost is acknowledged, and recovery at the next
//!   start cuts whatever was half written.
//! - [`compact`]: removes segments a snapshot has wholly folded in.
//! - [`Backend`]: what the service needs of a journal. [`Journal`] (this directory of
//!   segments, the single-machine default) and [`pg::PgJournal`] (a table shared by every
//!   replica) implement it with the same semantics: an entry is acknowledged once durable,
//!   applied to the overlay before the acknowledgement, sequence numbers without gaps, and
//!   recovery and merging by sequence number against the served snapshot's folded one.
//!
//! **Recovery policy, `truncate-torn-tail`**: a record that is incomplete or fails its
//! checksum at the end of the *newest* segment is what a crash during an append leaves; it
//! was never acknowledged (the sync had not returned), so the segment is cut at the last good
//! record and the cut is logged. A bad record anywhere else (an older segment, or sequence
//! numbers that skip) is not a torn write but damage, and start-up refuses it rather than
//! silently dropping acknowledged changes.

pub mod format;
pub mod pg;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Instant;

pub use format::{Change, Entry};
use format::{SEGMENT_HEADER_LEN, decode, decode_segment_header, encode, segment_header};

use crate::time::Timestamp;

/// What went wrong with the journal. Messages name files and offsets, never a person.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// A file operation failed.
    #[error("journal {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Damage that is not a torn tail (see the recovery policy).
    #[error(
        "journal segment {file} is damaged at byte {offset}: {reason}; only the newest \
         segment's tail may be cut, so this needs an operator (restore the segment or move it \
         aside after folding the journal into a snapshot)"
    )]
    Corrupt {
        /// The segment.
        file: PathBuf,
        /// Where the damage starts.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The writer has stopped (the service is shutting down).
    #[error("the journal is closed")]
    Closed,
    /// Another process (or writer) holds the journal.
    #[error("journal {0} is in use by another process (its LOCK file is locked)")]
    Locked(PathBuf),
    /// The journal database could not be reached (or too many changes wait for it); the
    /// change was not made.
    #[error("the journal database is unavailable: {0}")]
    Unavailable(String),
    /// The journal database did not answer in time: the change may or may not have been
    /// made (a commit whose answer was lost).
    #[error("the journal database did not answer in time")]
    Timeout,
    /// The journal database answered with an error (schema missing, permissions, …).
    #[error("the journal database refused: {0}")]
    Database(String),
}

/// Boxed future of the [`Backend`] methods (the trait is used as `dyn`).
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// A journal as the service uses it; see the module doc for the semantics both
/// implementations keep.
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// Appends `change`; resolves once it is durable and applied to the overlay, with its
    /// entry (sequence number and time).
    fn append(&self, change: Change) -> BoxFuture<'_, Result<Entry, JournalError>>;

    /// Every durable entry after sequence number `seq`, in order. Blocking: called on the
    /// reload thread, to fold into the overlay what a new snapshot does not hold.
    fn since(&self, seq: u64) -> Result<Vec<Entry>, JournalError>;

    /// Counters for metrics and the shutdown log.
    fn stats(&self) -> &JournalStats;

    /// Stops taking changes; what is queued is made durable and answered first.
    fn close(&self);

    /// Where the journal is, for logs (never a password).
    fn describe(&self) -> String;
}

impl Backend for Journal {
    fn append(&self, change: Change) -> BoxFuture<'_, Result<Entry, JournalError>> {
        Box::pin(Journal::append(self, change))
    }

    fn since(&self, seq: u64) -> Result<Vec<Entry>, JournalError> {
        let mut entries = scan(&self.dir, Mode::ReadOnly)?.entries;
        entries.retain(|e| e.seq > seq);
        Ok(entries)
    }

    fn stats(&self) -> &JournalStats {
        &self.stats
    }

    fn close(&self) {
        Journal::close(self);
    }

    fn describe(&self) -> String {
        self.dir.display().to_string()
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_owned(),
        source,
    }
}

/// One segment as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentInfo {
    /// The file.
    pub path: PathBuf,
    /// Sequence number of its first record (from the header).
    pub first_seq: u64,
    /// Records in it.
    pub records: u64,
    /// Bytes that hold good records (header included).
    pub good_len: u64,
}

impl SegmentInfo {
    /// Sequence number of its last record, if it has one.
    pub fn last_seq(&self) -> Option<u64> {
        (self.records > 0).then(|| self.first_seq + self.records - 1)
    }
}

/// A torn tail found (and, when repairing, cut).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cut {
    /// The newest segment.
    pub file: PathBuf,
    /// Where the good records end.
    pub offset: u64,
    /// Bytes after it.
    pub dropped_bytes: u64,
    /// What was wrong with the first bad record.
    pub reason: String,
}

/// Everything read from a journal directory.
#[derive(Clone, Debug, Default)]
pub struct Scan {
    /// Every good record, in sequence order.
    pub entries: Vec<Entry>,
    /// The segments, oldest first.
    pub segments: Vec<SegmentInfo>,
    /// The torn tail, if there was one.
    pub cut: Option<Cut>,
}

impl Scan {
    /// The last good sequence number (0: none).
    pub fn last_seq(&self) -> u64 {
        self.entries.last().map_or(0, |e| e.seq)
    }
}

/// Whether [`scan`] may change the files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Only read: a torn tail is left in place (a running service may be appending to it).
    ReadOnly,
    /// Recovery at start-up: a torn tail is cut off the file and the cut made durable.
    Repair,
}

/// The segment files of `dir`, oldest first (files with other names are left alone).
pub fn segment_files(dir: &Path) -> Result<Vec<(u64, PathBuf)>, JournalError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let path = entry.map_err(io_err(dir))?.path();
        if let Some(first) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(format::parse_segment_name)
        {
            out.push((first, path));
        }
    }
    out.sort();
    Ok(out)
}

/// Reads every segment of `dir` in order and checks frames, checksums and sequence
/// continuity; applies the recovery policy of the module doc.
pub fn scan(dir: &Path, mode: Mode) -> Result<Scan, JournalError> {
    let files = segment_files(dir)?;
    let mut out = Scan::default();
    let mut expected: Option<u64> = None;
    for (i, (named, path)) in files.iter().enumerate() {
        let newest = i + 1 == files.len();
        let bytes = std::fs::read(path).map_err(io_err(path))?;
        let corrupt = |offset: u64, reason: String| JournalError::Corrupt {
            file: path.clone(),
            offset,
            reason,
        };
        let first = match decode_segment_header(&bytes) {
            Ok(first) => first,
            // A crash while a new segment was being created: it holds no record.
            Err(format::HeaderError::Short) if newest => {
                out.cut = Some(Cut {
                    file: path.clone(),
                    offset: 0,
                    dropped_bytes: bytes.len() as u64,
                    reason: "segment header is incomplete (torn segment creation)".into(),
                });
                if mode == Mode::Repair {
                    std::fs::remove_file(path).map_err(io_err(path))?;
                    sync_dir(dir)?;
                }
                break;
            }
            Err(e) => return Err(corrupt(0, e.to_string())),
        };
        if first != *named {
            return Err(corrupt(
                16,
                format!(
                    "header says the segment starts at sequence {first}, its name says {named}"
                ),
            ));
        }
        // A later segment may start beyond the one before it (the writer skips to after a
        // snapshot's folded sequence number), never inside it.
        if let Some(want) = expected
            && first < want
        {
            return Err(corrupt(
                16,
                format!(
                    "segment starts at sequence {first}, inside the one before (which ends at {})",
                    want - 1
                ),
            ));
        }
        let mut at = SEGMENT_HEADER_LEN;
        let mut seq = first;
        let mut problem = None;
        while at < bytes.len() {
            match decode(&bytes[at..]) {
                Ok((e, len)) if e.seq == seq => {
                    out.entries.push(e);
                    seq += 1;
                    at += len;
                }
                Ok((e, _)) => {
                    problem = Some(format!("record has sequence {}, expected {seq}", e.seq));
                    break;
                }
                Err(e) => {
                    problem = Some(e.to_string());
                    break;
                }
            }
        }
        if let Some(reason) = problem {
            if !newest {
                return Err(corrupt(at as u64, reason));
            }
            out.cut = Some(Cut {
                file: path.clone(),
                offset: at as u64,
                dropped_bytes: (bytes.len() - at) as u64,
                reason,
            });
            if mode == Mode::Repair {
                let f = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(io_err(path))?;
                f.set_len(at as u64).map_err(io_err(path))?;
                f.sync_all().map_err(io_err(path))?;
            }
        }
        out.segments.push(SegmentInfo {
            path: path.clone(),
            first_seq: first,
            records: seq - first,
            good_len: at as u64,
        });
        expected = Some(seq);
    }
    if let Some(cut) = &out.cut {
        tracing::warn!(
            policy = "truncate-torn-tail",
            file = %cut.file.display(),
            offset = cut.offset,
            dropped_bytes = cut.dropped_bytes,
            reason = %cut.reason,
            repaired = mode == Mode::Repair,
            "journal ends in a torn record; it was never acknowledged and is cut off"
        );
    }
    Ok(out)
}

fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Removes the segments whose every record is at or below `folded_seq` (a snapshot holds
/// them), never the newest segment (the writer appends to it). Returns the removed files.
pub fn compact(dir: &Path, folded_seq: u64) -> Result<Vec<PathBuf>, JournalError> {
    let files = segment_files(dir)?;
    let mut removed = Vec::new();
    // Segment i ends where segment i + 1 starts, so its header is all that must be read.
    for pair in files.windows(2) {
        let (_, path) = &pair[0];
        let (next_first, _) = pair[1];
        if next_first <= folded_seq.saturating_add(1) {
            std::fs::remove_file(path).map_err(io_err(path))?;
            removed.push(path.clone());
        } else {
            break;
        }
    }
    if !removed.is_empty() {
        sync_dir(dir)?;
    }
    Ok(removed)
}

/// Writer settings.
#[derive(Clone, Copy, Debug)]
pub struct JournalOptions {
    /// A new segment is started once the open one has reached this size.
    pub segment_bytes: u64,
    /// Most changes made durable by one sync.
    pub max_batch: usize,
}

impl Default for JournalOptions {
    fn default() -> JournalOptions {
        JournalOptions {
            segment_bytes: 64 << 20,
            max_batch: 4096,
        }
    }
}

/// Counters of the writer (for metrics and benchmarks).
#[derive(Debug, Default)]
pub struct JournalStats {
    /// Last durable sequence number.
    pub last_seq: AtomicU64,
    /// Syncs done (each acknowledges a group of changes).
    pub syncs: AtomicU64,
    /// Records written by this writer.
    pub records: AtomicU64,
    /// Time spent in `fdatasync`, nanoseconds in total.
    pub sync_nanos: AtomicU64,
}

/// Called with each durable group, before its changes are acknowledged.
pub type ApplyFn = Box<dyn FnMut(&[Entry]) + Send>;

struct Request {
    change: Change,
    reply: tokio::sync::oneshot::Sender<Entry>,
}

/// The journal writer (see the module doc). Dropping it (or [`Journal::close`]) lets the
/// thread finish what is queued and stop.
#[derive(Debug)]
pub struct Journal {
    tx: std::sync::Mutex<Option<mpsc::Sender<Request>>>,
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
    stats: Arc<JournalStats>,
    dir: PathBuf,
}

struct Writer {
    dir: PathBuf,
    file: File,
    path: PathBuf,
    len: u64,
    next_seq: u64,
    opts: JournalOptions,
    stats: Arc<JournalStats>,
}

impl Journal {
    /// Recovers `dir` (created if missing) and starts the writer. New records get sequence
    /// numbers after both the journal's last record and `after_seq` (the served snapshot's
    /// folded sequence number, which matters once old segments have been compacted away).
    /// Returns the journal and what recovery read, for the caller to replay.
    pub fn open(
        dir: &Path,
        after_seq: u64,
        opts: JournalOptions,
        apply: ApplyFn,
    ) -> Result<(Journal, Scan), JournalError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        // One writer per journal: a second service on the same directory would interleave
        // sequence numbers. The lock goes with the writer thread (released when it ends).
        let lock_path = dir.join("LOCK");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(JournalError::Locked(dir.to_owned()));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_err(&lock_path)(e)),
        }
        let scan = scan(dir, Mode::Repair)?;
        let stats = Arc::new(JournalStats::default());
        let mut next_seq = scan.last_seq().max(after_seq) + 1;
        let writer = match scan.segments.last() {
            // Keep appending to the newest segment when the sequence carries on from it.
            Some(seg) if seg.first_seq + seg.records == next_seq => {
                let file = OpenOptions::new()
                    .append(true)
                    .open(&seg.path)
                    .map_err(io_err(&seg.path))?;
                Writer {
                    dir: dir.to_owned(),
                    file,
                    path: seg.path.clone(),
                    len: seg.good_len,
                    next_seq,
                    opts,
                    stats: stats.clone(),
                }
            }
            last => {
                if let Some(seg) = last {
                    next_seq = next_seq.max(seg.first_seq + seg.records);
                }
                let (file, path) = create_segment(dir, next_seq)?;
                Writer {
                    dir: dir.to_owned(),
                    file,
                    path,
                    len: SEGMENT_HEADER_LEN as u64,
                    next_seq,
                    opts,
                    stats: stats.clone(),
                }
            }
        };
        stats.last_seq.store(next_seq - 1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("krr-journal".into())
            .spawn(move || {
                writer.run(&rx, apply);
                drop(lock);
            })
            .map_err(io_err(dir))?;
        Ok((
            Journal {
                tx: std::sync::Mutex::new(Some(tx)),
                thread: std::sync::Mutex::new(Some(thread)),
                stats,
                dir: dir.to_owned(),
            },
            scan,
        ))
    }

    /// Appends `change`; resolves once it is durable and applied, with its entry.
    pub async fn append(&self, change: Change) -> Result<Entry, JournalError> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .ok_or(JournalError::Closed)?
            .send(Request { change, reply })
            .map_err(|_| JournalError::Closed)?;
        rx.await.map_err(|_| JournalError::Closed)
    }

    /// The writer's counters.
    pub fn stats(&self) -> &JournalStats {
        &self.stats
    }

    /// The journal directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stops taking changes (later appends fail with [`JournalError::Closed`]), lets the
    /// writer make everything queued durable and answer it, and waits for it to end.
    pub fn close(&self) {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.close();
    }
}

fn create_segment(dir: &Path, first_seq: u64) -> Result<(File, PathBuf), JournalError> {
    let path = dir.join(format::segment_name(first_seq));
    let mut file = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&path)
        .map_err(io_err(&path))?;
    file.write_all(&segment_header(first_seq))
        .and_then(|()| file.sync_all())
        .map_err(io_err(&path))?;
    sync_dir(dir)?;
    Ok((file, path))
}

/// The process stops: a change whose durability is unknown must not be acknowledged, and
/// carrying on after a failed fsync is not safe (the kernel may have dropped the pages).
fn fatal(what: &str, path: &Path, e: &dyn std::fmt::Display) -> ! {
    tracing::error!(file = %path.display(), cause = %e, "journal {what} failed; stopping the process so nothing unsafe is acknowledged");
    eprintln!(
        "krr: journal {what} failed on {}: {e}; stopping",
        path.display()
    );
    std::process::abort();
}

impl Writer {
    fn run(mut self, rx: &mpsc::Receiver<Request>, mut apply: ApplyFn) {
        let mut batch: Vec<Request> = Vec::with_capacity(self.opts.max_batch);
        let mut entries: Vec<Entry> = Vec::with_capacity(self.opts.max_batch);
        let mut buf: Vec<u8> = Vec::with_capacity(self.opts.max_batch * 64);
        while let Ok(first) = rx.recv() {
            batch.push(first);
            while batch.len() < self.opts.max_batch {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            let at = Timestamp::now();
            buf.clear();
            entries.clear();
            for r in &batch {
                let e = Entry {
                    seq: self.next_seq,
                    at,
                    change: r.change,
                };
                self.next_seq += 1;
                encode(&e, &mut buf);
                entries.push(e);
            }
            if self.len > SEGMENT_HEADER_LEN as u64
                && self.len + buf.len() as u64 > self.opts.segment_bytes
            {
                match create_segment(&self.dir, entries[0].seq) {
                    Ok((file, path)) => {
                        self.file = file;
                        self.path = path;
                        self.len = SEGMENT_HEADER_LEN as u64;
                    }
                    Err(e) => fatal("segment creation", &self.dir, &e),
                }
            }
            if let Err(e) = self.file.write_all(&buf) {
                fatal("write", &self.path, &e);
            }
            let started = Instant::now();
            if let Err(e) = self.file.sync_data() {
                fatal("fdatasync", &self.path, &e);
            }
            let took = started.elapsed();
            metrics::histogram!(crate::metrics::JOURNAL_FSYNC_SECONDS).record(took.as_secs_f64());
            metrics::counter!(crate::metrics::JOURNAL_RECORDS).increment(entries.len() as u64);
            self.len += buf.len() as u64;
            let last = entries.last().expect("a batch is never empty").seq;
            self.stats.last_seq.store(last, Ordering::Release);
            self.stats.syncs.fetch_add(1, Ordering::Relaxed);
            self.stats
                .records
                .fetch_add(entries.len() as u64, Ordering::Relaxed);
            self.stats
                .sync_nanos
                .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
            apply(&entries);
            for (r, e) in batch.drain(..).zip(&entries) {
                // A waiter that went away (client hung up) still had its change made durable.
                let _ = r.reply.send(*e);
            }
        }
    }
}
