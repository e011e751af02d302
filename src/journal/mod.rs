//! The PATCH journal: append-only, checksummed, sequence-numbered, durable before a change
//! is acknowledged.
//!
//! - [`Backend`] (this file): what the service needs of a journal; [`error`]: what goes
//!   wrong; [`format`](mod@format): segment and record bytes (CRC32C-framed).
//! - [`file`](mod@file): the journal as a directory of segment files, the single-machine
//!   default: [`scan`](fn@file::scan) reads every segment in order (recovery at start-up,
//!   and `snapshot build --journal`); [`Journal`] is the writer. One thread owns the open
//!   segment; PATCH handlers hand it their change and wait. The thread takes every change queued while the previous sync ran,
//!   writes them with one `write`, makes them durable with one `fdatasync` (**group commit**),
//!   applies them to the overlay, and only then answers each waiter. Nothing that might be
//!   lost is acknowledged: a failed create or write refuses the group (a half write is cut
//!   again, and the cut synced, before its sequence numbers are reused), a failed sync
//!   stops the journal until a restart; lookups never stop for it. Its file operations go
//!   through [`file::io`], the seam tests inject faults through.
//!   [`compact`](fn@file::compact) removes segments a snapshot has wholly folded in.
//! - [`pg`]: the journal as a PostgreSQL table shared by every replica.
//!
//! [`Journal`] and [`pg::PgJournal`] implement [`Backend`] with the same semantics: an entry is acknowledged once durable,
//!   applied to the overlay before the acknowledgement, sequence numbers without gaps, and
//!   recovery and merging by sequence number against the served snapshot's folded one.
//!
//! **Recovery policy, `truncate-torn-tail`**: a record that is incomplete or fails its
//! checksum in the *newest* segment, with no intact record of a later commit group after
//! it, is what a crash during an append leaves; it was never acknowledged (the sync had not
//! returned), so the segment is cut at the last good record and the cut is logged. A bad
//! record anywhere else (an older segment, before a later group, or sequence numbers that
//! skip) is not a torn write but damage, and start-up refuses it rather than silently
//! dropping acknowledged changes. So do missing segments above the served snapshot's folded
//! sequence number. A build folds only what is durable ([`Mode::Durable`]).

pub mod error;
pub mod file;
pub mod format;
pub mod pg;

use std::sync::atomic::{AtomicU8, AtomicU64};

pub use error::JournalError;
pub use file::{
    Cut, Journal, JournalOptions, Mode, Scan, SegmentInfo, compact, scan, segment_files,
};
pub use format::{Change, Entry};

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

    /// The first change id of snapshot `snapshot`'s own `count` changes: the reservation
    /// made for it before (by this process, an earlier run, or another replica), or a new
    /// one appended now through the same writer that numbers PATCHes. A new one is refused
    /// ([`JournalError::OutOfOrder`]) when another snapshot reserved ids after `folded` (the
    /// snapshot's folded sequence number): that one was built later, and this older one's
    /// changes must not get ids above it. Blocking: called on the reload thread before the
    /// snapshot is swapped in.
    fn reserve(&self, snapshot: u64, count: u64, folded: u64) -> Result<u64, JournalError>;

    /// Counters for metrics and the shutdown log.
    fn stats(&self) -> &JournalStats;

    /// Stops taking changes; what is queued is made durable and answered first.
    fn close(&self);

    /// Where the journal is, for logs (never a password).
    fn describe(&self) -> String;
}

/// Counters of the writer (for metrics and benchmarks).
#[derive(Debug, Default)]
pub struct JournalStats {
    /// Last durable sequence number.
    pub last_seq: AtomicU64,
    /// Every change up to this sequence number is applied here (the overlay and the
    /// reservations of change ids): the change feed answers no further. With PostgreSQL,
    /// what the follower has read in order (this replica's own commits may be ahead).
    pub visible_seq: AtomicU64,
    /// Syncs done (each acknowledges a group of changes).
    pub syncs: AtomicU64,
    /// Records written by this writer.
    pub records: AtomicU64,
    /// Time spent in `fdatasync`, nanoseconds in total.
    pub sync_nanos: AtomicU64,
    /// Why changes are refused now: 0 they are not, then the index + 1 into
    /// [`REFUSAL_REASONS`].
    pub refusing: AtomicU8,
}

/// The reasons a journal refuses changes, as the `reason` label of `krr_journal_refusing`.
pub const REFUSAL_REASONS: [&str; 3] = ["no-space", "io-error", "fsync-failed"];
