//! What the service serves: the hot-swapped snapshot and the overlay of changes over it.
//!
//! - this file: [`Store`], the `ArcSwap` handle requests read through;
//! - [`overlay`]: acknowledged changes not yet in a snapshot, consulted before it;
//! - [`lookup`]: ids + groups → the `{"personer":[…]}` answer, from snapshot and overlay;
//! - [`feed`]: the change feed's pages, from the snapshot's index and the overlay;
//! - [`reload`]: the one path every snapshot is published through (start-up included),
//!   and the directory watcher;
//! - [`follow`]: snapshots published to object storage, fetched and handed to [`reload`].
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

pub mod feed;
pub mod follow;
pub mod lookup;
pub mod overlay;
pub mod reload;

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwapOption;

use crate::snapshot::{Snapshot, SnapshotError};
use overlay::Overlay;

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
        if let Some(base) = snapshot.feed_base() {
            self.overlay.forget_reservations_before(base);
        }
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
    /// (For tools and tests; the service publishes only through [`reload::Reloader`].)
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
