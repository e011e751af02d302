//! The journal as a directory of segment files `<first sequence number>.journal`, written
//! by one thread ([`writer`]), read back at start-up and by the builder
//! ([`scan`](mod@scan)), and trimmed once a snapshot holds it ([`compact`](mod@compact)). One writer per directory (a `LOCK` file).

pub mod compact;
pub mod io;
pub mod scan;
pub mod writer;

use std::fs::File;
use std::path::Path;

pub use compact::compact;
pub use scan::{Cut, Mode, Scan, SegmentInfo, scan, segment_files};
pub use writer::{ApplyFn, Journal, JournalOptions};

use crate::journal::{Backend, BoxFuture, Change, Entry, JournalError, JournalStats};

impl Backend for Journal {
    fn append(&self, change: Change) -> BoxFuture<'_, Result<Entry, JournalError>> {
        Box::pin(Journal::append(self, change))
    }

    fn since(&self, seq: u64) -> Result<Vec<Entry>, JournalError> {
        let scan = scan(&self.dir, Mode::ReadOnly)?;
        // A snapshot that folded less than the journal still holds is not served over a
        // gap: the reload fails and says what is missing.
        scan.check_complete(&self.dir, seq)?;
        let mut entries = scan.entries;
        entries.retain(|e| e.seq > seq);
        Ok(entries)
    }

    fn reserve(&self, snapshot: u64, count: u64, folded: u64) -> Result<u64, JournalError> {
        let entries = scan(&self.dir, Mode::ReadOnly)?.entries;
        let mut newest_other = None;
        for e in &entries {
            if let Change::Reserve { snapshot: s, .. } = e.change {
                if s == snapshot {
                    return Ok(e.seq);
                }
                newest_other = Some((e.seq, s));
            }
        }
        if let Some((first, newer)) = newest_other.filter(|&(first, _)| first > folded) {
            return Err(JournalError::OutOfOrder {
                snapshot,
                folded,
                newer,
                first,
            });
        }
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.send(Change::Reserve { snapshot, count }, reply)?;
        rx.blocking_recv()
            .map_err(|_| JournalError::Closed)?
            .map(|e| e.seq)
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

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_owned(),
        source,
    }
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}
