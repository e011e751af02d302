//! Reload: one path, whatever triggered it (start-up, SIGHUP, `POST /admin/reload`, the
//! directory watcher).
//!
//! [`Reloader::reload`] looks at the headers of the snapshot directory's files (newest build
//! first), and for the first that is newer than the served one maps and verifies it **off
//! the request path** (a blocking task), folds in the journal entries it does not hold,
//! then swaps. A refused file is logged with the reason, counted, remembered (so it is not
//! verified again until it changes) and changes nothing; an older file is never swapped
//! in. Reloads are serialised: a second trigger during a reload waits for it and then finds
//! nothing newer, so two triggers make one swap, never a race.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::journal::{Backend, JournalError};
use crate::metrics::{SNAPSHOT_BUILD_TIME, SNAPSHOT_INFO, SNAPSHOT_JOURNAL_SEQ, SNAPSHOT_RECORDS};
use crate::snapshot::dir::scan_dir;
use crate::snapshot::{Snapshot, SnapshotError};
use crate::store::Store;

/// What a reload did.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Outcome {
    /// A newer snapshot is served now.
    Swapped {
        /// The snapshot served before (none at first load).
        old: Option<String>,
        /// The snapshot served now.
        new: String,
        /// Its file.
        file: PathBuf,
        /// Persons in it.
        persons: u64,
        /// Time to map, verify and swap, milliseconds.
        millis: u64,
        /// Files refused on the way (newer ones that failed their checks).
        refused: Vec<Refusal>,
    },
    /// Nothing newer to serve.
    Unchanged {
        /// The snapshot still served (none if none is loaded).
        current: Option<String>,
        /// Files refused on the way.
        refused: Vec<Refusal>,
    },
    /// The directory could not be read, or the journal could not be folded in.
    Failed {
        /// Why.
        reason: String,
    },
}

/// A file that failed its checks.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Refusal {
    /// The file.
    pub file: PathBuf,
    /// Why (names the failed check; no personal data).
    pub reason: String,
}

/// What a refused file looked like, so it is not verified again until it changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Seen {
    len: u64,
    modified: Option<std::time::SystemTime>,
}

fn seen(path: &Path) -> Option<Seen> {
    let m = std::fs::metadata(path).ok()?;
    Some(Seen {
        len: m.len(),
        modified: m.modified().ok(),
    })
}

/// The reload path (see the module doc).
#[derive(Debug)]
pub struct Reloader {
    store: Arc<Store>,
    dir: PathBuf,
    journal: OnceLock<Arc<dyn Backend>>,
    serial: tokio::sync::Mutex<()>,
    refused: Mutex<HashMap<PathBuf, Seen>>,
    /// Largest share of the served snapshot's persons (percent) a new one may lack.
    max_shrink_percent: f64,
}

impl Reloader {
    /// A reloader of `store` from `dir`. Until a journal is attached, nothing is folded in.
    pub fn new(store: Arc<Store>, dir: PathBuf) -> Reloader {
        Reloader {
            store,
            dir,
            journal: OnceLock::new(),
            serial: tokio::sync::Mutex::new(()),
            refused: Mutex::new(HashMap::new()),
            max_shrink_percent: DEFAULT_MAX_SHRINK_PERCENT,
        }
    }

    /// Refuses a snapshot with more than `percent` % fewer persons than the served one
    /// (an empty or truncated export builds a valid, nearly empty snapshot); a reload with
    /// `allow_shrink` serves it anyway.
    pub fn with_max_shrink(mut self, percent: f64) -> Reloader {
        self.max_shrink_percent = percent.clamp(0.0, 100.0);
        self
    }

    /// From now on every reload folds in what `journal` holds beyond the new snapshot. At
    /// start-up the journal is attached after it was recovered against the first snapshot;
    /// a second call changes nothing.
    pub fn attach_journal(&self, journal: Arc<dyn Backend>) {
        let _ = self.journal.set(journal);
    }

    /// The id of the snapshot served now.
    pub fn served_id(&self) -> Option<String> {
        self.store.current().as_ref().map(|s| s.id())
    }

    /// The directory watched.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reloads now (waits for a reload in progress first). `trigger` is logged.
    pub async fn reload(self: &Arc<Self>, trigger: &'static str) -> Outcome {
        self.reload_with(trigger, false).await
    }

    /// [`Reloader::reload`]; with `allow_shrink`, a snapshot that lost more persons than
    /// `--max-shrink` allows is served too (the operator's explicit choice).
    pub async fn reload_with(
        self: &Arc<Self>,
        trigger: &'static str,
        allow_shrink: bool,
    ) -> Outcome {
        let _serial = self.serial.lock().await;
        let this = self.clone();
        let outcome = tokio::task::spawn_blocking(move || this.reload_blocking(allow_shrink))
            .await
            .unwrap_or_else(|e| Outcome::Failed {
                reason: format!("reload task failed: {e}"),
            });
        let result = match &outcome {
            Outcome::Swapped {
                old,
                new,
                file,
                persons,
                millis,
                ..
            } => {
                tracing::info!(
                    trigger,
                    old = old.as_deref().unwrap_or("none"),
                    new = %new,
                    file = %file.display(),
                    persons,
                    millis,
                    "snapshot swapped"
                );
                "swapped"
            }
            Outcome::Unchanged { current, .. } => {
                tracing::info!(
                    trigger,
                    current = current.as_deref().unwrap_or("none"),
                    "reload: nothing newer to serve"
                );
                "unchanged"
            }
            Outcome::Failed { reason } => {
                tracing::error!(trigger, reason = %reason, "reload failed; the served snapshot stays");
                "failed"
            }
        };
        metrics::counter!(crate::metrics::RELOADS, "result" => result).increment(1);
        outcome
    }

    /// Numbers the served snapshot's own changes if they are not yet (at start-up the
    /// first snapshot is served before the journal is open; a reservation that failed is
    /// tried again here, at every reload). Blocking.
    pub fn number_served(&self) {
        if let (Some(journal), Some(s)) = (self.journal.get(), self.store.current().as_ref()) {
            number(&**journal, s);
            if let Some(base) = s.feed_base() {
                self.store.overlay().forget_reservations_before(base);
            }
        }
    }

    fn reload_blocking(&self, allow_shrink: bool) -> Outcome {
        self.number_served();
        let current = self.store.current();
        let (cur_id, cur_build, cur_records) = match current.as_ref() {
            Some(s) => (Some(s.id()), Some(s.header().build_time), s.len()),
            // At start-up the copy served before the restart is the baseline of
            // --max-shrink, so a restart does not take a snapshot a running service refused.
            None => (None, None, last_served_records(&self.dir)),
        };
        drop(current);
        let (candidates, header_refusals) = match scan_dir(&self.dir) {
            Ok(c) => c,
            Err(e) => {
                return Outcome::Failed {
                    reason: format!("cannot read {}: {e}", self.dir.display()),
                };
            }
        };
        let mut refused: Vec<Refusal> = header_refusals
            .into_iter()
            .map(|(file, reason)| Refusal { file, reason })
            .collect();
        for (path, header) in candidates {
            if cur_id.as_deref() == Some(header.id().as_str())
                || cur_build.is_some_and(|b| header.build_time < b)
            {
                break;
            }
            let now_seen = seen(&path);
            {
                let known = self.refused.lock().unwrap_or_else(|e| e.into_inner());
                if now_seen.is_some() && known.get(&path) == now_seen.as_ref() {
                    continue;
                }
            }
            let records = header.counts.records;
            if !allow_shrink && shrinks_too_much(cur_records, records, self.max_shrink_percent) {
                // Not remembered as refused: the same file is served by a forced reload.
                let reason = format!(
                    "has {records} persons, {:.1} % fewer than the served snapshot's {cur_records} \
                     (more than --max-shrink {} %); an empty or cut export? \
                     POST /admin/reload?allow-shrink=true serves it anyway",
                    100.0 * (cur_records - records) as f64 / cur_records as f64,
                    self.max_shrink_percent
                );
                tracing::warn!(file = %path.display(), cause = %reason, "snapshot refused; the served snapshot stays");
                metrics::counter!(crate::metrics::SNAPSHOT_REFUSALS).increment(1);
                refused.push(Refusal { file: path, reason });
                continue;
            }
            let started = Instant::now();
            let opened = match take_private(&self.dir, &path, &header.id()) {
                Ok(private) => {
                    let opened = Snapshot::open(&private);
                    if opened.is_err() {
                        let _ = std::fs::remove_file(&private);
                    }
                    opened
                }
                Err(e) => {
                    // A read-only or full snapshot directory: serving in place beats not
                    // serving, but an operator must know what writing over it would do.
                    tracing::warn!(file = %path.display(), cause = %e,
                        "no private copy could be taken; serving the published file in place (writing over it would crash the service)");
                    Snapshot::open(&path)
                }
            };
            match opened.and_then(|s| {
                if s.id() == header.id() {
                    Ok(s)
                } else {
                    // Only a copy of ours goes: a file served in place is the operator's.
                    if s.path().parent() == Some(self.dir.join(PRIVATE_DIR).as_path()) {
                        let _ = std::fs::remove_file(s.path());
                    }
                    Err(SnapshotError::Changed)
                }
            }) {
                Ok(snapshot) => {
                    let mapped = snapshot.path().to_owned();
                    let ours = mapped.parent() == Some(self.dir.join(PRIVATE_DIR).as_path());
                    match self.install(snapshot) {
                        Ok(()) => {}
                        // The journal lacks changes this snapshot did not fold: serving it
                        // would lose them. A refusal of this file (remembered until it
                        // changes); an older candidate may still do.
                        Err(e @ JournalError::Missing { .. }) => {
                            if ours {
                                let _ = std::fs::remove_file(&mapped);
                            }
                            refused.push(self.refuse(path, now_seen, format!("not served: {e}")));
                            continue;
                        }
                        Err(e) => {
                            if ours {
                                let _ = std::fs::remove_file(&mapped);
                            }
                            return Outcome::Failed {
                                reason: format!(
                                    "the journal cannot be read, so the snapshot is not swapped in: {e}"
                                ),
                            };
                        }
                    }
                    let served = self.store.current();
                    let s = served.as_ref().expect("just published");
                    drop_private_except(&self.dir, &s.id());
                    return Outcome::Swapped {
                        old: cur_id,
                        new: s.id(),
                        file: path,
                        persons: s.len(),
                        millis: started.elapsed().as_millis() as u64,
                        refused,
                    };
                }
                Err(e) => refused.push(self.refuse(path, now_seen, e.to_string())),
            }
        }
        Outcome::Unchanged {
            current: cur_id,
            refused,
        }
    }

    /// A refused file: logged, counted, and remembered as it looks now (`seen`), so it is
    /// not copied and verified again until it changes.
    fn refuse(&self, path: PathBuf, seen: Option<Seen>, reason: String) -> Refusal {
        tracing::warn!(file = %path.display(), cause = %reason, "snapshot refused; the served snapshot stays");
        metrics::counter!(crate::metrics::SNAPSHOT_REFUSALS).increment(1);
        if let Some(s) = seen {
            self.refused
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(path.clone(), s);
        }
        Refusal { file: path, reason }
    }

    /// Folds the journal entries `snapshot` does not hold into the overlay, then publishes
    /// it (which drops the entries it does hold). Replaying before the swap means no reader
    /// ever sees the new snapshot without a change it lacks.
    fn install(&self, snapshot: Snapshot) -> Result<(), JournalError> {
        if let Some(journal) = self.journal.get() {
            let entries = journal.since(snapshot.header().journal_seq)?;
            self.store.overlay().replay(&entries, Some(&snapshot));
            number(&**journal, &snapshot);
        }
        let old = self.store.publish(snapshot);
        let served = self.store.current();
        if let Some(s) = served.as_ref() {
            snapshot_published(old.as_ref().map(|o| o.id()).as_deref(), s);
        }
        drop(served);
        if let Some(old) = old {
            retire(old);
        }
        Ok(())
    }
}

/// Gives `snapshot`'s own changes their change ids (the journal's reservation for it, made
/// now if no replica has made it yet). A journal that cannot do it now leaves the feed
/// answering 503 for this snapshot until a later reload numbers it; lookups go on.
fn number(journal: &dyn Backend, snapshot: &Snapshot) {
    if snapshot.feed_base().is_some() {
        return;
    }
    let pending = snapshot.header().feed.pending;
    match journal.reserve(snapshot.raw_id(), pending, snapshot.header().journal_seq) {
        Ok(base) => {
            snapshot.set_feed_base(base);
            tracing::info!(snapshot = %snapshot.id(), first = base, changes = pending,
                "change ids reserved for the snapshot's changes");
        }
        Err(e) => {
            tracing::error!(snapshot = %snapshot.id(), cause = %e,
                "cannot reserve change ids for the snapshot's changes; the change feed answers 503 until a reload can");
        }
    }
}

pub use crate::snapshot::DEFAULT_MAX_SHRINK_PERCENT;
use crate::snapshot::shrinks_too_much;

/// The service's own directory inside the snapshot directory: it maps only files there.
pub const PRIVATE_DIR: &str = ".served";

/// Copies `public` to `<dir>/.served/<id>.krr` (through a temporary name) and returns
/// the copy. The service maps only its own copies: an operator who writes through the
/// published name (`cp new.krr snapshots/current.krr` truncates and rewrites the same
/// file) changes a file nobody maps, where mapping it would have meant SIGBUS for the
/// whole process. `std::fs::copy` uses `copy_file_range`, a reflink where the file
/// system has them; elsewhere it is one sequential copy per reload.
fn take_private(dir: &Path, public: &Path, id: &str) -> Result<PathBuf, SnapshotError> {
    let private_dir = dir.join(PRIVATE_DIR);
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| SnapshotError::Io { path, source }
    };
    std::fs::create_dir_all(&private_dir).map_err(io(&private_dir))?;
    let tmp = private_dir.join(format!(".{id}.copy"));
    let private = private_dir.join(format!("{id}.krr"));
    std::fs::copy(public, &tmp).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        SnapshotError::Io {
            path: private_dir.clone(),
            source: std::io::Error::new(
                e.kind(),
                format!("cannot take a private copy to serve: {e}"),
            ),
        }
    })?;
    std::fs::rename(&tmp, &private).map_err(io(&private))?;
    Ok(private)
}

/// Persons in the newest private copy (what was served before a restart), or 0.
fn last_served_records(dir: &Path) -> u64 {
    scan_dir(&dir.join(PRIVATE_DIR))
        .ok()
        .and_then(|(c, _)| c.first().map(|(_, h)| h.counts.records))
        .unwrap_or(0)
}

/// Removes every copy but the served one's (a retired snapshot's mapping stays valid
/// after its name is gone, until its last reader drops it).
fn drop_private_except(dir: &Path, id: &str) {
    let keep = format!("{id}.krr");
    let Ok(entries) = std::fs::read_dir(dir.join(PRIVATE_DIR)) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_str() != Some(keep.as_str()) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Records the served snapshot's gauges (after every swap).
fn snapshot_published(old: Option<&str>, snapshot: &Snapshot) {
    if let Some(old) = old {
        metrics::gauge!(SNAPSHOT_INFO, "id" => old.to_string()).set(0.0);
    }
    let h = snapshot.header();
    metrics::gauge!(SNAPSHOT_INFO, "id" => snapshot.id()).set(1.0);
    metrics::gauge!(SNAPSHOT_BUILD_TIME).set(h.build_time.0 as f64);
    metrics::gauge!(SNAPSHOT_RECORDS).set(h.counts.records as f64);
    metrics::gauge!(SNAPSHOT_JOURNAL_SEQ).set(h.journal_seq as f64);
}

/// Waits (here, on the reload thread) until requests still reading `old` are done, then
/// drops it, so the unmapping of gigabytes of page tables never lands on a request. Gives
/// up waiting after a minute (a stuck reader) and lets the last reader unmap it.
fn retire(old: Arc<Snapshot>) {
    let started = Instant::now();
    while Arc::strong_count(&old) > 1 && started.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(1));
    }
    let waited = started.elapsed();
    let id = old.id();
    let unmapping = Instant::now();
    let last = Arc::strong_count(&old) == 1;
    drop(old);
    tracing::debug!(
        snapshot = %id,
        readers_ms = waited.as_millis() as u64,
        unmap_ms = unmapping.elapsed().as_millis() as u64,
        unmapped_here = last,
        "old snapshot retired"
    );
}

/// Watches the snapshot directory (not its files: an atomic rename or a replaced symlink is
/// an event on the directory) and reloads after changes to `*.krr` names settle for
/// `settle`. Returns the watcher, which stops when dropped.
pub fn watch(
    reloader: Arc<Reloader>,
    settle: Duration,
) -> notify::Result<notify::RecommendedWatcher> {
    use notify::Watcher;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if matches!(event.kind, notify::EventKind::Access(_)) {
            return;
        }
        let relevant = event.paths.iter().any(|p| {
            p.extension().is_some_and(|e| e == "krr")
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| !n.starts_with('.'))
        });
        if relevant {
            let _ = tx.send(());
        }
    })?;
    watcher.watch(reloader.dir(), notify::RecursiveMode::NonRecursive)?;
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            // Let a burst of events (write, rename, several files) settle into one reload.
            tokio::time::sleep(settle).await;
            while rx.try_recv().is_ok() {}
            reloader.reload("watcher").await;
        }
    });
    Ok(watcher)
}
