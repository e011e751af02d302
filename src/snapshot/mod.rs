//! Snapshots: one immutable file per register generation, built from an export and
//! memory-mapped by the service.
//!
//! - [`format`]: the bytes (header, rkyv body, record layout, checksums).
//! - [`build`](mod@build): export (JSONL) → validated persons → pre-rendered records → file,
//!   written atomically.
//! - [`load`]: open, verify, map and look up persons (the only `unsafe` of the crate).
//! - [`fold`]: the journal folded into a build; `write` (private): the body lined up and
//!   written atomically.
//! - [`record`]: one person's record: header bytes written and read in one place.
//! - [`source`]: the export's format: one JSON line → a validated person.
//! - [`dir`]: a directory of snapshot files, newest first.
//! - [`remote`]: snapshots in S3-compatible object storage: publish, pointer, download.

pub mod build;
pub mod dir;
pub mod fold;
pub mod format;
pub mod load;
pub mod record;
pub mod remote;
pub mod source;
mod write;

pub use build::{
    BuildError, BuildOptions, BuildReport, BuildTimings, JournalInput, LineError, build_bytes,
    build_file,
};
pub use fold::JournalFold;
pub use format::{Counts, Header};
pub use load::{Snapshot, prefetch_read};
pub use record::Record;

use std::path::PathBuf;

/// Why a snapshot file was refused. Messages hold no personal data.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// The file could not be read.
    #[error("cannot read snapshot {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Shorter than a header.
    #[error("file is too short to be a snapshot ({len} bytes)")]
    TooShort {
        /// The file's length.
        len: u64,
    },
    /// The first eight bytes are not the snapshot magic.
    #[error("not a krr snapshot (wrong magic number)")]
    BadMagic,
    /// A format version this build cannot read.
    #[error("unsupported snapshot format version {found} (this build reads version {supported})")]
    UnsupportedVersion {
        /// The file's version.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },
    /// The header length field is not the expected one.
    #[error("unexpected header length {found}")]
    HeaderLength {
        /// The file's header length.
        found: u32,
    },
    /// The header's own checksum does not match.
    #[error("header checksum mismatch (the header is corrupt)")]
    HeaderChecksum,
    /// File length is not header + body length.
    #[error(
        "length mismatch: header says {expected} bytes, file has {actual} (truncated or padded)"
    )]
    Length {
        /// Header length + body length from the header.
        expected: u64,
        /// The file's length.
        actual: u64,
    },
    /// The body checksum does not match.
    #[error(
        "body checksum mismatch: header says {expected:016x}, body hashes to {actual:016x} (the body is corrupt)"
    )]
    BodyChecksum {
        /// From the header.
        expected: u64,
        /// Computed.
        actual: u64,
    },
    /// The body is not a valid archive or its tables are inconsistent.
    #[error("corrupt body layout: {0}")]
    Layout(String),
}
