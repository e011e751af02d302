//! Reading a journal directory: every segment in order, with the recovery policy
//! (`truncate-torn-tail`, see [`crate::journal`]).

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

use crate::journal::Entry;
use crate::journal::JournalError;
use crate::journal::file::{io_err, sync_dir};
use crate::journal::format::{self, SEGMENT_HEADER_LEN, decode_segment_header};

/// One segment as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentInfo {
    /// The file.
    pub path: PathBuf,
    /// Sequence number of its first record (from the header).
    pub first_seq: u64,
    /// Sequence numbers its records take (its record count, plus the extra numbers a
    /// reservation of change ids takes).
    pub records: u64,
    /// Bytes that hold good records (header included).
    pub good_len: u64,
}

impl SegmentInfo {
    /// The last sequence number its records take, if it has one.
    pub fn last_seq(&self) -> Option<u64> {
        (self.records > 0).then(|| self.first_seq + self.records - 1)
    }
}

/// A torn tail found (and, when repairing, cut).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cut {
    /// The newest segment.
    pub file: PathBuf,
    /// Where the good records end.
    pub offset: u64,
    /// Bytes after it.
    pub dropped_bytes: u64,
    /// What was wrong with the first bad record.
    pub reason: String,
}

/// Everything read from a journal directory.
#[derive(Clone, Debug, Default)]
pub struct Scan {
    /// Every good record, in sequence order.
    pub entries: Vec<Entry>,
    /// The segments, oldest first.
    pub segments: Vec<SegmentInfo>,
    /// The torn tail, if there was one.
    pub cut: Option<Cut>,
    /// Sequence numbers no segment holds between two segments (first, last). The writer
    /// leaves such a gap only below a snapshot's folded sequence number.
    pub gaps: Vec<(u64, u64)>,
    /// The newest segment ever created, from `HEAD` (absent in journals older than it).
    pub head: Option<u64>,
}

impl Scan {
    /// The last good sequence number (0: none).
    pub fn last_seq(&self) -> u64 {
        self.entries.last().map_or(0, Entry::last_seq)
    }

    /// Checks that every change above `folded` (the served snapshot's folded sequence
    /// number) is here: the oldest segment starts at or below `folded + 1`, no gap between
    /// segments lies above it, and the newest segment `HEAD` names still exists.
    pub fn check_complete(&self, dir: &Path, folded: u64) -> Result<(), JournalError> {
        let missing = |first: u64, last: u64, why: String| JournalError::Missing {
            dir: dir.to_owned(),
            first,
            last,
            why,
        };
        if let Some(h) = self.head
            && self.segments.last().is_none_or(|s| s.first_seq < h)
        {
            return Err(missing(
                h,
                h,
                format!("HEAD names the segment starting at {h} as the newest, and it is gone"),
            ));
        }
        if let Some(oldest) = self.segments.first()
            && oldest.first_seq > folded.saturating_add(1)
        {
            return Err(missing(
                folded + 1,
                oldest.first_seq - 1,
                format!("the oldest segment starts at {}", oldest.first_seq),
            ));
        }
        if let Some(&(first, last)) = self.gaps.iter().find(|(_, last)| *last > folded) {
            return Err(missing(
                first.max(folded + 1),
                last,
                "no segment holds them, between two that exist".into(),
            ));
        }
        Ok(())
    }
}

/// Whether [`scan`] may change the files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Only read: a torn tail is left in place (a running service may be appending to it).
    ReadOnly,
    /// Recovery at start-up: a torn tail is cut off the file and the cut made durable.
    Repair,
    /// Only read, and only what is durable (for folding into a snapshot while the service
    /// appends): the newest segment is `fdatasync`ed and read to the length it had before,
    /// and a commit group it ends in that is not complete is left out. What is read then
    /// can never be lost by a crash or cut by a failed write, so no sequence number a
    /// snapshot claims to have folded is ever given to another change.
    Durable,
}

/// The segment files of `dir`, oldest first (files with other names are left alone).
pub fn segment_files(dir: &Path) -> Result<Vec<(u64, PathBuf)>, JournalError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let path = entry.map_err(io_err(dir))?.path();
        if let Some(first) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(format::parse_segment_name)
        {
            out.push((first, path));
        }
    }
    out.sort();
    Ok(out)
}

/// The first offset at or after `from` where an intact record of a commit group *later*
/// than the one of sequence number `bad` starts (or any intact kind-1 record at or after
/// `bad`, which does not say its group): proof that `bad`'s group was synced before it.
/// Intact records of `bad`'s own group after it are what a torn write of that group can
/// leave (its pages reach the disk in any order) and prove nothing.
fn later_group_after(bytes: &[u8], from: usize, bad: u64) -> Option<(usize, u64)> {
    let mut at = from;
    while at + format::FRAME_HEADER_LEN <= bytes.len() {
        match format::decode_frame(&bytes[at..]) {
            Ok((e, len, group)) if e.seq >= bad => match group.map(|g| g.first_seq(e.seq)) {
                Some(Some(first)) if first <= bad => at += len,
                _ => return Some((at, e.seq)),
            },
            _ => at += 1,
        }
    }
    None
}

/// The bytes of `path` that are durable: its length is taken, then it is synced (which
/// makes everything written before durable), then that many bytes are read.
fn read_durable(path: &Path) -> Result<Vec<u8>, JournalError> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(io_err(path))?;
    let len = f.metadata().map_err(io_err(path))?.len();
    f.sync_data().map_err(io_err(path))?;
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    (&mut f)
        .take(len)
        .read_to_end(&mut bytes)
        .map_err(io_err(path))?;
    Ok(bytes)
}

/// `HEAD`'s sequence number, when the file exists.
fn read_head(dir: &Path) -> Result<Option<u64>, JournalError> {
    let path = dir.join(format::HEAD);
    match std::fs::read_to_string(&path) {
        Ok(text) => format::parse_head(&text)
            .map(Some)
            .ok_or(JournalError::Corrupt {
                file: path,
                offset: 0,
                reason: "HEAD is not a journal head record".into(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(&path)(e)),
    }
}

/// Reads every segment of `dir` in order and checks frames, checksums and sequence
/// continuity; applies the recovery policy of the module doc.
pub fn scan(dir: &Path, mode: Mode) -> Result<Scan, JournalError> {
    // HEAD before the listing: a segment created in between is then listed, never named
    // by HEAD and missing from the listing.
    let head = read_head(dir)?;
    let files = segment_files(dir)?;
    let mut out = Scan {
        head,
        ..Scan::default()
    };
    let mut expected: Option<u64> = None;
    for (i, (named, path)) in files.iter().enumerate() {
        let newest = i + 1 == files.len();
        let bytes = if newest && mode == Mode::Durable {
            read_durable(path)?
        } else {
            std::fs::read(path).map_err(io_err(path))?
        };
        let corrupt = |offset: u64, reason: String| JournalError::Corrupt {
            file: path.clone(),
            offset,
            reason,
        };
        let first = match decode_segment_header(&bytes) {
            Ok(first) => first,
            // A crash while a new segment was being created: it holds no record. Its header
            // is short, or (file systems that extend the length before the data lands)
            // header-sized but not a header, in a segment `HEAD` does not name yet.
            Err(e)
                if newest
                    && (e == format::HeaderError::Short
                        || (bytes.len() == SEGMENT_HEADER_LEN
                            && out.head.is_some_and(|h| h < *named))) =>
            {
                out.cut = Some(Cut {
                    file: path.clone(),
                    offset: 0,
                    dropped_bytes: bytes.len() as u64,
                    reason: "segment header is incomplete (torn segment creation)".into(),
                });
                if mode == Mode::Repair {
                    std::fs::remove_file(path).map_err(io_err(path))?;
                    sync_dir(dir)?;
                }
                break;
            }
            Err(e) => return Err(corrupt(0, e.to_string())),
        };
        if first != *named {
            return Err(corrupt(
                16,
                format!(
                    "header says the segment starts at sequence {first}, its name says {named}"
                ),
            ));
        }
        // A later segment may start beyond the one before it (the writer skips to after a
        // snapshot's folded sequence number), never inside it.
        if let Some(want) = expected
            && first > want
        {
            out.gaps.push((want, first - 1));
        }
        if let Some(want) = expected
            && first < want
        {
            return Err(corrupt(
                16,
                format!(
                    "segment starts at sequence {first}, inside the one before (which ends at {})",
                    want - 1
                ),
            ));
        }
        let mut at = SEGMENT_HEADER_LEN;
        let mut seq = first;
        let mut problem = None;
        let mut last_group = None;
        while at < bytes.len() {
            match format::decode_frame(&bytes[at..]) {
                Ok((e, len, group)) if e.seq == seq => {
                    out.entries.push(e);
                    seq = e.last_seq() + 1;
                    at += len;
                    last_group = group.map(|g| (g, e.seq));
                }
                Ok((e, _, _)) => {
                    problem = Some(format!("record has sequence {}, expected {seq}", e.seq));
                    break;
                }
                Err(e) => {
                    problem = Some(e.to_string());
                    break;
                }
            }
        }
        if let Some(reason) = problem {
            if !newest {
                return Err(corrupt(at as u64, reason));
            }
            // A torn write is the last group: no later group follows it. An intact record
            // of a later group was written only once the bad one's sync had returned: the
            // bad record was acknowledged, and is damage.
            if let Some((offset, seq_after)) = later_group_after(&bytes, at, seq) {
                return Err(corrupt(
                    at as u64,
                    format!(
                        "{reason}, and an intact record of a later commit group (sequence \
                         {seq_after}) follows at byte {offset}: acknowledged changes, not a torn write. If the machine \
                         crashed during a write and losing the records from byte {at} on is \
                         accepted, cut the file there (truncate -s {at})"
                    ),
                ));
            }
            out.cut = Some(Cut {
                file: path.clone(),
                offset: at as u64,
                dropped_bytes: (bytes.len() - at) as u64,
                reason,
            });
            if mode == Mode::Repair {
                let f = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(io_err(path))?;
                f.set_len(at as u64).map_err(io_err(path))?;
                f.sync_all().map_err(io_err(path))?;
            }
        }
        if newest
            && mode == Mode::Durable
            && let Some((g, last)) = last_group
            && g.index + 1 < g.len
            && let Some(group_first) = g.first_seq(last)
        {
            // The group's write is still under way (or failed half way): not folded.
            out.entries.retain(|e| e.seq < group_first);
        }
        out.segments.push(SegmentInfo {
            path: path.clone(),
            first_seq: first,
            records: seq - first,
            good_len: at as u64,
        });
        expected = Some(seq);
    }
    if let Some(cut) = &out.cut {
        tracing::warn!(
            policy = "truncate-torn-tail",
            file = %cut.file.display(),
            offset = cut.offset,
            dropped_bytes = cut.dropped_bytes,
            reason = %cut.reason,
            repaired = mode == Mode::Repair,
            "journal ends in a torn record; it was never acknowledged and is cut off"
        );
    }
    Ok(out)
}
