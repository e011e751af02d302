//! What goes wrong with a journal, either kind.

use std::path::PathBuf;

/// What went wrong with the journal. Messages name files and offsets, never a person.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// A file operation failed.
    #[error("journal {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Damage that is not a torn tail (see the recovery policy).
    #[error(
        "journal segment {file} is damaged at byte {offset}: {reason}; only the newest \
         segment's tail may be cut, so this needs an operator (restore the segment or move it \
         aside after folding the journal into a snapshot)"
    )]
    Corrupt {
        /// The segment.
        file: PathBuf,
        /// Where the damage starts.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The writer has stopped (the service is shutting down).
    #[error("the journal is closed")]
    Closed,
    /// Another process (or writer) holds the journal.
    #[error("journal {0} is in use by another process (its LOCK file is locked)")]
    Locked(PathBuf),
    /// The journal database could not be reached (or too many changes wait for it); the
    /// change was not made.
    #[error("the journal database is unavailable: {0}")]
    Unavailable(String),
    /// The journal database did not answer in time: the change may or may not have been
    /// made (a commit whose answer was lost).
    #[error("the journal database did not answer in time")]
    Timeout,
    /// The journal database answered with an error (schema missing, permissions, …).
    #[error("the journal database refused: {0}")]
    Database(String),
}
