//! Snapshots: one immutable file per register generation, built from an export and
//! memory-mapped by the service.
//!
//! - [`format`](mod@format): the bytes (header, rkyv body, record layout, checksums).
//! - [`build`](mod@build): export (JSONL) → validated persons → pre-rendered records → file,
//!   written atomically.
//! - [`load`]: open, verify, map and look up persons (the only `unsafe` of the crate).
//! - [`feed`]: the build's register-wide passes: `*_duplisert`, and the change feed's
//!   index compared with the previous snapshot.
//! - [`fold`]: the journal folded into a build; `write` (private): the body lined up and
//!   written atomically.
//! - [`error`]: why a file is refused, why a build fails.
//! - [`record`]: one person's record: header bytes written and read in one place.
//! - [`source`]: the export's format: one JSON line → a validated person.
//! - [`dir`]: a directory of snapshot files, newest first.
//! - [`remote`]: snapshots in S3-compatible object storage: publish, pointer, download.

pub mod build;
pub mod dir;
pub mod error;
pub mod feed;
pub mod fold;
pub mod format;
pub mod load;
pub mod record;
pub mod remote;
pub mod source;
mod write;

pub use build::{
    BuildOptions, BuildReport, BuildTimings, DEFAULT_MAX_SHRINK_PERCENT, JournalInput, ShrinkGuard,
    build_bytes, build_file, shrinks_too_much,
};
pub use error::{BuildError, LineError, MAX_REPORTED_ERRORS, SnapshotError};
pub use feed::FeedReport;
pub use fold::JournalFold;
pub use format::{Counts, Header};
pub use load::{Snapshot, prefetch_read};
pub use record::Record;
