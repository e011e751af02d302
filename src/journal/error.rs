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
    /// Changes the served snapshot has not folded in are missing from the journal
    /// (segments deleted or lost).
    #[error(
        "journal {dir} is missing the changes with sequence numbers {first} to {last}, which \
         the served snapshot has not folded in ({why}); restore the missing segments, or \
         serve a snapshot that folds them in"
    )]
    Missing {
        /// The journal directory.
        dir: PathBuf,
        /// First missing sequence number.
        first: u64,
        /// Last missing sequence number (or the first one's where the end is unknown).
        last: u64,
        /// What shows it.
        why: String,
    },
    /// The disk refused the change (full, or an I/O error on create or write); nothing of
    /// it is on disk. Later changes are tried again.
    #[error("the journal cannot take changes now: {0}")]
    Refused(String),
    /// The change may or may not be on disk (a write that failed half way, a failed sync).
    #[error("the journal could not confirm the change: {0}")]
    Uncertain(String),
    /// A sync failed earlier: the journal takes no more changes until a restart.
    #[error("the journal stopped taking changes after a failed sync; restart the service")]
    Stopped,
    /// The writer has stopped (the service is shutting down).
    #[error("the journal is closed")]
    Closed,
    /// Another process (or writer) holds the journal.
    #[error(
        "journal {0} is in use by another process (its LOCK file is locked): is another krr serve or demo running on it? Stop it, or give this one another --journal-dir (krr demo: --demo-dir)"
    )]
    Locked(PathBuf),
    /// Change ids are not reserved for a snapshot built before another snapshot's
    /// reservation: it is older than what the feed already shows.
    #[error(
        "snapshot {snapshot:016x} folded the journal up to {folded}, but snapshot {newer:016x} \
         reserved change ids from {first} after that: serve the newer snapshot (the change \
         feed answers 503 on this one)"
    )]
    OutOfOrder {
        /// The snapshot that asked.
        snapshot: u64,
        /// Its folded sequence number.
        folded: u64,
        /// The snapshot of the later reservation.
        newer: u64,
        /// That reservation's first id.
        first: u64,
    },
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
