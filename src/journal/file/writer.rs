//! The journal writer: one thread owns the open segment and makes groups of changes
//! durable with one `fdatasync` each (group commit) before they are acknowledged.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::Instant;

use crate::journal::file::{Mode, Scan, io_err, scan, sync_dir};
use crate::journal::format::{self, SEGMENT_HEADER_LEN, encode, segment_header};
use crate::journal::{Change, Entry, JournalError, JournalStats};
use crate::model::time::Timestamp;

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
    pub(super) stats: Arc<JournalStats>,
    pub(super) dir: PathBuf,
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
