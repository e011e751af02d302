//! The journal writer: one thread owns the open segment and makes groups of changes
//! durable with one `fdatasync` each (group commit) before they are acknowledged.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::journal::file::io::{self, Files, OsFiles, SegmentFile};
use crate::journal::file::{Mode, Scan, io_err, scan};
use crate::journal::format::{self, GroupPos, SEGMENT_HEADER_LEN, encode_grouped, segment_header};
use crate::journal::{Change, Entry, JournalError, JournalStats};
use crate::model::time::Timestamp;

/// Writer settings.
#[derive(Clone, Copy, Debug)]
pub struct JournalOptions {
    /// A new segment is started once the open one has reached this size.
    pub segment_bytes: u64,
    /// Most changes made durable by one sync.
    pub max_batch: usize,
    /// Refuse to open when changes above the served snapshot's folded sequence number are
    /// missing (off only while no snapshot is served: then nothing says what was folded).
    pub require_complete: bool,
}

impl Default for JournalOptions {
    fn default() -> JournalOptions {
        JournalOptions {
            segment_bytes: 64 << 20,
            max_batch: 4096,
            require_complete: true,
        }
    }
}

/// Called with each durable group, before its changes are acknowledged.
pub type ApplyFn = Box<dyn FnMut(&[Entry]) + Send>;

struct Request {
    change: Change,
    reply: tokio::sync::oneshot::Sender<Result<Entry, JournalError>>,
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
    files: Arc<dyn Files>,
    /// The open segment and its path; `None` when the next group starts a new segment
    /// (at start-up when the sequence does not carry on from the newest, after a rotation,
    /// or after a failed creation, which the next group tries again).
    file: Option<(Box<dyn SegmentFile>, PathBuf)>,
    len: u64,
    next_seq: u64,
    opts: JournalOptions,
    stats: Arc<JournalStats>,
    /// Why changes are refused right now (cleared by the next group that is made durable),
    /// or for good after a failed sync.
    refusing: Option<Refusal>,
}

/// Why the writer refuses changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refusal {
    /// The disk is full (ENOSPC, EDQUOT): retried with the next change.
    NoSpace,
    /// Another I/O error on create or write: retried with the next change.
    Io,
    /// A sync failed (or a half write could not be undone): what is on disk is unknown, so
    /// nothing more is taken until an operator restarts the service.
    Stopped,
}

impl Refusal {
    fn of(e: &std::io::Error) -> Refusal {
        // ENOSPC 28, EDQUOT 122 on Linux.
        if e.kind() == std::io::ErrorKind::StorageFull || matches!(e.raw_os_error(), Some(28 | 122))
        {
            Refusal::NoSpace
        } else {
            Refusal::Io
        }
    }

    /// Its code in [`JournalStats::refusing`] (1 + its index in `REFUSAL_REASONS`).
    fn code(self) -> u8 {
        match self {
            Refusal::NoSpace => 1,
            Refusal::Io => 2,
            Refusal::Stopped => 3,
        }
    }

    fn label(self) -> &'static str {
        crate::journal::REFUSAL_REASONS[usize::from(self.code() - 1)]
    }
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
        Journal::open_with(dir, after_seq, opts, apply, Arc::new(OsFiles))
    }

    /// [`Journal::open`] writing through `files` (the fault-injection seam of tests).
    pub fn open_with(
        dir: &Path,
        after_seq: u64,
        opts: JournalOptions,
        apply: ApplyFn,
        files: Arc<dyn Files>,
    ) -> Result<(Journal, Scan), JournalError> {
        // A group's records carry its length as a u16.
        let opts = JournalOptions {
            max_batch: opts.max_batch.clamp(1, usize::from(u16::MAX)),
            ..opts
        };
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
        // Every change the served snapshot has not folded in must still be here.
        if opts.require_complete {
            scan.check_complete(dir, after_seq)?;
        }
        let stats = Arc::new(JournalStats::default());
        let mut next_seq = scan.last_seq().max(after_seq) + 1;
        let mut writer = Writer {
            dir: dir.to_owned(),
            files,
            file: None,
            len: 0,
            next_seq,
            opts,
            stats: stats.clone(),
            refusing: None,
        };
        match scan.segments.last() {
            // Keep appending to the newest segment when the sequence carries on from it.
            Some(seg) if seg.first_seq + seg.records == next_seq => {
                let file = writer
                    .files
                    .open_append(&seg.path)
                    .map_err(io_err(&seg.path))?;
                writer.file = Some((file, seg.path.clone()));
                writer.len = seg.good_len;
                if scan.head.is_none() {
                    // A journal from before HEAD existed: name its newest segment now.
                    if let Err(e) = write_head(&*writer.files, dir, seg.first_seq) {
                        tracing::warn!(cause = %e, "cannot write the journal's HEAD file");
                    }
                }
            }
            // Otherwise the first group creates a segment (not now: a full disk must not
            // keep the service from starting and serving lookups).
            last => {
                if let Some(seg) = last {
                    next_seq = next_seq.max(seg.first_seq + seg.records);
                    writer.next_seq = next_seq;
                }
            }
        }
        stats.last_seq.store(next_seq - 1, Ordering::Relaxed);
        // The caller replays what recovery read before it serves anything.
        stats.visible_seq.store(next_seq - 1, Ordering::Release);
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
        self.send(change, reply)?;
        rx.await.map_err(|_| JournalError::Closed)?
    }

    pub(super) fn send(
        &self,
        change: Change,
        reply: tokio::sync::oneshot::Sender<Result<Entry, JournalError>>,
    ) -> Result<(), JournalError> {
        self.tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .ok_or(JournalError::Closed)?
            .send(Request { change, reply })
            .map_err(|_| JournalError::Closed)
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

/// Creates the segment starting at `first_seq` (header written and synced, directory
/// synced; a half-made segment is removed again), then records it as the newest in
/// `HEAD`. A `HEAD` that cannot be written is logged and left behind: it only lags (names
/// an older segment), which hides a deleted newest segment but loses nothing; the next
/// rotation writes it again.
fn create_segment(
    files: &dyn Files,
    dir: &Path,
    first_seq: u64,
) -> Result<(Box<dyn SegmentFile>, PathBuf), std::io::Error> {
    let path = dir.join(format::segment_name(first_seq));
    let mut file = match files.create_new(&path) {
        // Left by an earlier attempt whose clean-up failed: no record is numbered from
        // here yet (the sequence has not passed it), so it holds at most a header.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            if std::fs::metadata(&path).map_or(true, |m| m.len() > SEGMENT_HEADER_LEN as u64) {
                return Err(e);
            }
            files.remove(&path)?;
            files.create_new(&path)?
        }
        r => r?,
    };
    let made = io::write_all(&mut *file, &segment_header(first_seq))
        .map_err(|(_, e)| e)
        .and_then(|()| file.sync_data())
        .and_then(|()| files.sync_dir(dir));
    if let Err(e) = made {
        drop(file);
        let _ = files.remove(&path);
        let _ = files.sync_dir(dir);
        return Err(e);
    }
    if let Err(e) = write_head(files, dir, first_seq) {
        tracing::warn!(dir = %dir.display(), cause = %e, "cannot update the journal's HEAD file; it names an older segment until the next one is created");
    }
    Ok((file, path))
}

/// Writes `HEAD` (the newest segment's first sequence number) durably: to a temporary
/// name, synced, renamed over the old one, directory synced.
fn write_head(files: &dyn Files, dir: &Path, first_seq: u64) -> Result<(), std::io::Error> {
    let tmp = dir.join(format::HEAD_TMP);
    let _ = files.remove(&tmp);
    let mut f = files.create_new(&tmp)?;
    io::write_all(&mut *f, format::head_text(first_seq).as_bytes()).map_err(|(_, e)| e)?;
    f.sync_data()?;
    drop(f);
    files.rename(&tmp, &dir.join(format::HEAD))?;
    files.sync_dir(dir)
}

/// How a group failed, for its waiters.
enum Failed {
    /// Nothing of it can be on disk.
    NotMade(std::io::Error),
    /// Some of it may be on disk (a half write, or a failed sync).
    Uncertain(std::io::Error),
}

impl Writer {
    fn run(mut self, rx: &mpsc::Receiver<Request>, mut apply: ApplyFn) {
        let mut batch: Vec<Request> = Vec::with_capacity(self.opts.max_batch);
        let mut entries: Vec<Entry> = Vec::with_capacity(self.opts.max_batch);
        let mut buf: Vec<u8> = Vec::with_capacity(self.opts.max_batch * 64);
        // A reservation of change ids is a group of its own: one taken from the queue while
        // a group of PATCHes was being gathered waits here for the next round.
        let mut held: Option<Request> = None;
        let is_reservation = |r: &Request| matches!(r.change, Change::Reserve { .. });
        while let Some(first) = held.take().or_else(|| rx.recv().ok()) {
            let alone = is_reservation(&first);
            batch.push(first);
            while !alone && batch.len() < self.opts.max_batch {
                match rx.try_recv() {
                    Ok(r) if is_reservation(&r) => {
                        held = Some(r);
                        break;
                    }
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            if self.refusing == Some(Refusal::Stopped) {
                metrics::counter!(crate::metrics::JOURNAL_FAILURES).increment(batch.len() as u64);
                for r in batch.drain(..) {
                    let _ = r.reply.send(Err(JournalError::Stopped));
                }
                continue;
            }
            let at = Timestamp::now();
            buf.clear();
            entries.clear();
            let len = u16::try_from(batch.len()).expect("max_batch fits a group's u16 length");
            let mut seq = self.next_seq;
            for (i, r) in batch.iter().enumerate() {
                let e = Entry {
                    seq,
                    at,
                    change: r.change,
                };
                seq = e.last_seq() + 1;
                let index = u16::try_from(i).expect("below len");
                encode_grouped(&e, GroupPos { index, len }, &mut buf);
                entries.push(e);
            }
            match self.commit(&buf) {
                Ok(took) => {
                    self.next_seq = seq;
                    self.recovered();
                    metrics::histogram!(crate::metrics::JOURNAL_FSYNC_SECONDS)
                        .record(took.as_secs_f64());
                    metrics::counter!(crate::metrics::JOURNAL_RECORDS)
                        .increment(entries.len() as u64);
                    let last = entries.last().expect("a batch is never empty").last_seq();
                    self.stats.last_seq.store(last, Ordering::Release);
                    self.stats.syncs.fetch_add(1, Ordering::Relaxed);
                    self.stats
                        .records
                        .fetch_add(entries.len() as u64, Ordering::Relaxed);
                    self.stats
                        .sync_nanos
                        .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
                    apply(&entries);
                    self.stats.visible_seq.store(last, Ordering::Release);
                    for (r, e) in batch.drain(..).zip(&entries) {
                        // A waiter that went away (client hung up) still had its change made
                        // durable.
                        let _ = r.reply.send(Ok(*e));
                    }
                }
                Err(failed) => {
                    // The sequence numbers are given again: none of this group is
                    // acknowledged, and what may be on disk of it is cut or unknown.
                    metrics::counter!(crate::metrics::JOURNAL_FAILURES)
                        .increment(batch.len() as u64);
                    for r in batch.drain(..) {
                        let err = match &failed {
                            Failed::NotMade(e) => JournalError::Refused(e.to_string()),
                            Failed::Uncertain(e) => JournalError::Uncertain(e.to_string()),
                        };
                        let _ = r.reply.send(Err(err));
                    }
                }
            }
        }
    }

    /// Writes `buf` as one group and syncs it; returns the sync's duration. A failure
    /// leaves the file as it was (a half write is cut again) or stops the journal.
    fn commit(&mut self, buf: &[u8]) -> Result<Duration, Failed> {
        if self.file.is_some()
            && self.len > SEGMENT_HEADER_LEN as u64
            && self.len + buf.len() as u64 > self.opts.segment_bytes
        {
            self.file = None;
        }
        if self.file.is_none() {
            match create_segment(&*self.files, &self.dir, self.next_seq) {
                Ok(file) => {
                    self.file = Some(file);
                    self.len = SEGMENT_HEADER_LEN as u64;
                }
                Err(e) => return Err(self.refuse(Refusal::of(&e), "segment creation", e)),
            }
        }
        let (file, path) = self.file.as_mut().expect("created above");
        if let Err((written, e)) = io::write_all(&mut **file, buf) {
            // Undo the half write so the next group starts on a clean frame boundary.
            // The cut is synced before the sequence numbers are given out again, so no crash
            // can leave this group's bytes under the next group's.
            let cut = file.set_len(self.len).and_then(|()| {
                if written == 0 {
                    Ok(())
                } else {
                    file.sync_data()
                }
            });
            return Err(match cut {
                Ok(()) if written == 0 => self.refuse(Refusal::of(&e), "write", e),
                Ok(()) => {
                    let _ = self.refuse(Refusal::of(&e), "write", e);
                    Failed::Uncertain(std::io::Error::other(
                        "part of the change reached the disk before the write failed",
                    ))
                }
                Err(cut) => {
                    let path = path.clone();
                    tracing::error!(file = %path.display(), cause = %cut, "a half-written group could not be cut off");
                    Failed::Uncertain(self.stop(e))
                }
            });
        }
        let started = Instant::now();
        if let Err(e) = file.sync_data() {
            return Err(Failed::Uncertain(self.stop(e)));
        }
        self.len += buf.len() as u64;
        Ok(started.elapsed())
    }

    /// Changes are refused for now; says so once (log and gauge) per spell.
    fn refuse(&mut self, why: Refusal, what: &str, e: std::io::Error) -> Failed {
        if self.refusing != Some(why) {
            self.stats.refusing.store(why.code(), Ordering::Relaxed);
            tracing::error!(dir = %self.dir.display(), reason = why.label(), cause = %e,
                "journal {what} failed; changes are refused until it works again (lookups go on)");
            self.refusing = Some(why);
        }
        Failed::NotMade(e)
    }

    /// A failed sync: what is on disk is unknown and the kernel may have dropped the
    /// pages, so the journal takes nothing more; lookups go on until an operator restarts.
    fn stop(&mut self, e: std::io::Error) -> std::io::Error {
        self.stats
            .refusing
            .store(Refusal::Stopped.code(), Ordering::Relaxed);
        tracing::error!(dir = %self.dir.display(), cause = %e,
            "journal sync failed; the journal takes no more changes until the service is restarted (lookups go on)");
        self.refusing = Some(Refusal::Stopped);
        e
    }

    fn recovered(&mut self) {
        if self.refusing.take().is_some() {
            self.stats.refusing.store(0, Ordering::Relaxed);
            tracing::info!(dir = %self.dir.display(), "the journal takes changes again");
        }
    }
}
