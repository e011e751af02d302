//! Removing the segments a snapshot has folded in.

use std::path::{Path, PathBuf};

use crate::journal::JournalError;
use crate::journal::file::{io_err, segment_files, sync_dir};

/// Removes the segments whose every record is at or below `folded_seq` (a snapshot holds
/// them), never the newest segment (the writer appends to it). Returns the removed files.
pub fn compact(dir: &Path, folded_seq: u64) -> Result<Vec<PathBuf>, JournalError> {
    let files = segment_files(dir)?;
    let mut removed = Vec::new();
    // Segment i ends where segment i + 1 starts, so its header is all that must be read.
    for pair in files.windows(2) {
        let (_, path) = &pair[0];
        let (next_first, _) = pair[1];
        if next_first <= folded_seq.saturating_add(1) {
            std::fs::remove_file(path).map_err(io_err(path))?;
            removed.push(path.clone());
        } else {
            break;
        }
    }
    if !removed.is_empty() {
        sync_dir(dir)?;
    }
    Ok(removed)
}
