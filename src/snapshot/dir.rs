//! A directory of snapshot files: which are candidates, newest first.
//!
//! Dot-files are a publisher's work in progress (`.name.krr` before its rename) and never
//! candidates.

use std::path::{Path, PathBuf};

use crate::model::time::Timestamp;
use crate::snapshot::format::MAX_FUTURE_SKEW_SECS;
use crate::snapshot::{Header, Snapshot, SnapshotError};

/// The `*.krr` files of `dir` whose headers decode, newest build first. Files whose header
/// cannot be read, or whose build time is ahead of the clock, are logged and skipped (the
/// name only; nothing personal is in a path). Every user of a snapshot directory (the
/// service, `journal compact`, `journal inspect`) sees the same candidates.
pub fn candidates(dir: &Path) -> std::io::Result<Vec<(PathBuf, Header)>> {
    scan_dir(dir).map(|(c, _)| c)
}

/// [`candidates`], and the files refused at the header stage with the reason.
pub fn scan_dir(dir: &Path) -> std::io::Result<HeaderScan> {
    let mut out = Vec::new();
    let mut refused = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        // Dot-files are a publisher's work in progress (`.name.krr` before its rename).
        if path.extension().is_none_or(|e| e != "krr")
            || path
                .file_name()
                .is_some_and(|n| n.as_encoded_bytes().starts_with(b"."))
        {
            continue;
        }
        match Header::read(&path) {
            Ok(h) if h.build_time.0 > Timestamp::now().0 + MAX_FUTURE_SKEW_SECS => {
                // Served, it would make every correct snapshot after it look older.
                let reason = format!(
                    "build time {} (Unix seconds) is ahead of this machine's clock; a snapshot from the future is never served",
                    h.build_time.0
                );
                metrics::counter!(crate::metrics::SNAPSHOT_REFUSALS).increment(1);
                tracing::warn!(file = %path.display(), cause = %reason, "snapshot refused");
                refused.push((path, reason));
            }
            Ok(h) => out.push((path, h)),
            Err(e @ SnapshotError::Io { .. }) => {
                metrics::counter!(crate::metrics::SNAPSHOT_REFUSALS).increment(1);
                tracing::warn!(file = %path.display(), cause = %e, "snapshot unreadable");
                refused.push((path, e.to_string()));
            }
            Err(e) => {
                metrics::counter!(crate::metrics::SNAPSHOT_REFUSALS).increment(1);
                tracing::warn!(file = %path.display(), cause = %e, "snapshot refused");
                refused.push((path, e.to_string()));
            }
        }
    }
    out.sort_by(|a, b| {
        b.1.build_time
            .cmp(&a.1.build_time)
            .then_with(|| b.0.cmp(&a.0))
    });
    Ok((out, refused))
}

/// What [`scan_dir`] found: the candidates, newest first, and the refused files.
pub type HeaderScan = (Vec<(PathBuf, Header)>, Vec<(PathBuf, String)>);

/// Opens the newest snapshot of `dir` that passes every check (without serving it: the
/// service publishes only through its reload path); refused files are logged with the
/// reason. `None` when no file qualifies.
pub fn open_newest(dir: &Path) -> std::io::Result<Option<Snapshot>> {
    for (path, _) in candidates(dir)? {
        match Snapshot::open(&path) {
            Ok(s) => return Ok(Some(s)),
            Err(e) => tracing::warn!(file = %path.display(), cause = %e, "snapshot refused"),
        }
    }
    Ok(None)
}
