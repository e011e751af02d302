//! The hot-swapped handle to the snapshot being served.
//!
//! Readers call [`Store::current`] once per request and keep the guard for the whole
//! request: every person of one answer comes from one snapshot. Publishing a new snapshot is
//! one atomic pointer swap; the old snapshot stays mapped until its last reader drops its
//! guard, and is unmapped then. **Opening and verifying a file happens before the swap, off
//! the request path; a refused file changes nothing.**
//!
//! The store also holds the [`Overlay`] of acknowledged changes. Publishing a snapshot
//! prunes from it what the new snapshot holds, *after* the swap: a reader in between sees
//! the change twice over (overlay and snapshot agree), never not at all.

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwapOption;

use crate::overlay::Overlay;
use crate::snapshot::{Snapshot, SnapshotError};

/// What a reader holds for the duration of one request.
pub type Guard = arc_swap::Guard<Option<Arc<Snapshot>>>;

/// The currently served snapshot, if any.
#[derive(Debug, Default)]
pub struct Store {
    current: ArcSwapOption<Snapshot>,
    overlay: Overlay,
}

impl Store {
    /// A store serving nothing yet (the API answers 503 until a snapshot is published).
    pub fn empty() -> Store {
        Store::default()
    }

    /// The snapshot to answer one request from (a cheap, lock-free guard).
    #[inline]
    pub fn current(&self) -> Guard {
        self.current.load()
    }

    /// The acknowledged changes shown over the snapshot.
    #[inline]
    pub fn overlay(&self) -> &Overlay {
        &self.overlay
    }

    /// Publishes `snapshot`, then drops the overlay entries it holds; returns the snapshot it
    /// replaced.
    pub fn publish(&self, snapshot: Snapshot) -> Option<Arc<Snapshot>> {
        let snapshot = Arc::new(snapshot);
        let old = self.current.swap(Some(snapshot.clone()));
        let dropped = self.overlay.prune(&snapshot);
        if dropped > 0 {
            tracing::info!(
                snapshot = %snapshot.id(),
                dropped,
                remaining = self.overlay.len(),
                "overlay entries now held by the snapshot dropped"
            );
        }
        old
    }

    /// Opens and verifies `path`, then publishes it. On error the current snapshot stays.
    pub fn load_file(&self, path: &Path) -> Result<Arc<Snapshot>, SnapshotError> {
        let snapshot = Snapshot::open(path)?;
        self.publish(snapshot);
        Ok(self
            .current()
            .as_ref()
            .map(Arc::clone)
            .expect("just published"))
    }
}

/// The `*.krr` files of `dir` whose headers decode, newest build first. Files whose header
/// cannot be read are logged and skipped (the name only; nothing personal is in a path).
pub fn candidates(
    dir: &Path,
) -> std::io::Result<Vec<(std::path::PathBuf, crate::snapshot::Header)>> {
    let mut out = Vec::new();
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
        let header = std::fs::File::open(&path).and_then(|f| {
            let mut head = [0u8; crate::snapshot::format::HEADER_LEN];
            std::os::unix::fs::FileExt::read_exact_at(&f, &mut head, 0)?;
            Ok(head)
        });
        match header.map(|h| crate::snapshot::Header::decode(&h)) {
            Ok(Ok(h)) => out.push((path, h)),
            Ok(Err(e)) => {
                metrics::counter!(crate::metrics::SNAPSHOT_REFUSALS).increment(1);
                tracing::warn!(file = %path.display(), cause = %e, "snapshot refused")
            }
            Err(e) => {
                metrics::counter!(crate::metrics::SNAPSHOT_REFUSALS).increment(1);
                tracing::warn!(file = %path.display(), cause = %e, "snapshot unreadable")
            }
        }
    }
    out.sort_by(|a, b| {
        b.1.build_time
            .cmp(&a.1.build_time)
            .then_with(|| b.0.cmp(&a.0))
    });
    Ok(out)
}

impl Store {
    /// Publishes the newest snapshot of `dir` that passes every check; refused files are
    /// logged with the reason. `None` when no file qualifies (the current one stays).
    pub fn load_newest(&self, dir: &Path) -> std::io::Result<Option<Arc<Snapshot>>> {
        for (path, _) in candidates(dir)? {
            match self.load_file(&path) {
                Ok(s) => return Ok(Some(s)),
                Err(e) => tracing::warn!(file = %path.display(), cause = %e, "snapshot refused"),
            }
        }
        Ok(None)
    }
}
