//! The hot-swapped handle to the snapshot being served.
//!
//! Readers call [`Store::current`] once per request and keep the guard for the whole
//! request: every person of one answer comes from one snapshot. Publishing a new snapshot is
//! one atomic pointer swap; the old snapshot stays mapped until its last reader drops its
//! guard, and is unmapped then. **Opening and verifying a file happens before the swap, off
//! the request path; a refused file changes nothing.**

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwapOption;

use crate::snapshot::{Snapshot, SnapshotError};

/// What a reader holds for the duration of one request.
pub type Guard = arc_swap::Guard<Option<Arc<Snapshot>>>;

/// The currently served snapshot, if any.
#[derive(Debug, Default)]
pub struct Store {
    current: ArcSwapOption<Snapshot>,
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

    /// Publishes `snapshot`; returns the one it replaced.
    pub fn publish(&self, snapshot: Snapshot) -> Option<Arc<Snapshot>> {
        self.current.swap(Some(Arc::new(snapshot)))
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
