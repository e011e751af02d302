//! Why a snapshot file is refused ([`SnapshotError`]) and why a build fails
//! ([`BuildError`]). Messages hold no personal data.

use std::path::PathBuf;

/// How many line errors a failed build reports (the total is always given).
pub const MAX_REPORTED_ERRORS: usize = 20;

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
    #[error(
        "unsupported snapshot format version {found} (this build reads version {supported}); \
         rebuild it from the export with this build's `krr snapshot build`"
    )]
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
    /// A header field holds a value no build writes.
    #[error("header field out of range: {0}")]
    HeaderField(String),
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
    /// The file was replaced between reading its header and taking it (an operator or a
    /// publisher still at work); the next reload looks again.
    #[error("the file changed while it was being loaded; it is looked at again at the next reload")]
    Changed,
}

/// One refused input line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineError {
    /// 1-based line number.
    pub line: u64,
    /// Why (never holds a personal number).
    pub reason: String,
}

/// Why a build failed. Nothing is written when it fails.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// Reading the input or writing the output failed.
    #[error("{path}: {source}")]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Some lines are invalid.
    #[error("{}", invalid_message(.errors, *.total))]
    Invalid {
        /// The first errors, by line number.
        errors: Vec<LineError>,
        /// How many lines are invalid in all.
        total: u64,
    },
    /// A limit of the format was exceeded.
    #[error("{0}")]
    Limit(String),
    /// The journal to fold in is damaged.
    #[error("{0}")]
    Journal(String),
    /// The snapshot named by `--previous` cannot be read (it must be the one served, a
    /// snapshot of this format version).
    #[error("--previous {0}")]
    Previous(String),
    /// The build time is ahead of this machine's clock: such a snapshot would look newer
    /// than every correct one after it.
    #[error(
        "build time {0} (Unix seconds) is ahead of this machine's clock by more than {max} s; \
         a snapshot from the future would hide every correct one built after it",
        max = crate::snapshot::format::MAX_FUTURE_SKEW_SECS
    )]
    FutureBuildTime(i64),
    /// The result lost more persons against the previous snapshot than allowed.
    #[error(
        "the new snapshot would have {new} persons, the previous one has {previous}: more than \
         --max-shrink {max_percent} % fewer (an empty or cut export?); nothing was written. \
         --allow-shrink builds it anyway"
    )]
    Shrink {
        /// Persons in the previous snapshot.
        previous: u64,
        /// Persons in the result.
        new: u64,
        /// The limit, percent.
        max_percent: f64,
    },
}

fn invalid_message(errors: &[LineError], total: u64) -> String {
    let mut m = format!(
        "{total} invalid line{} in the input; the first {}:",
        if total == 1 { "" } else { "s" },
        errors.len()
    );
    for e in errors {
        m.push_str(&format!("\n  line {}: {}", e.line, e.reason));
    }
    m
}
