//! `krr snapshot build`: export (JSONL) → snapshot file.
//!
//! 1. The input is memory-mapped and cut into pieces at line ends; pieces are parsed,
//!    validated and pre-rendered in parallel (rayon), each into its own record buffer.
//! 2. If any line is invalid the build stops: the first [`MAX_REPORTED_ERRORS`] errors by
//!    line number and the total count are returned, and no file is written.
//! 3. Certificates are interned (each distinct one stored once), record buffers are lined
//!    up (never copied into one), and the hash table is filled; a personal number seen
//!    twice is an error naming both lines.
//! 4. The body is serialised with rkyv straight into a temporary file next to the target,
//!    hashed on the way; the header is written last; then fsync, rename, fsync of the
//!    directory. A reader never sees half a file, and a crash leaves at most a temporary.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use base64::Engine;
use rayon::prelude::*;
use xxhash_rust::xxh3::Xxh3Builder;

use crate::model::time::Timestamp;
use crate::model::{Person, Reservasjon, Status, Varslingsstatus};
use crate::render::{self, Segment};
use crate::snapshot::error::{BuildError, LineError, MAX_REPORTED_ERRORS};
use crate::snapshot::feed::{FeedReport, Previous, contact_hash, mark_duplicates, order_feed};
use crate::snapshot::fold::{Fold, JournalFold};
use crate::snapshot::format::{
    Counts, FLAG_DIGITAL_POST, FLAG_KAN_VARSLES, FLAG_RESERVERT, FLAG_SLETTET, FeedCounts,
    HEADER_LEN, Header, NO_CERT, RECORD_HEADER_LEN, VERSION,
};
use crate::snapshot::record::encode_record_header;
use crate::snapshot::source::LineParser;
use crate::snapshot::write::{Entry, Piece, assemble, write_atomically};

/// Size of the pieces the input is cut into for parallel parsing.
const PIECE: usize = 4 << 20;

/// Build settings.
#[derive(Clone, Debug)]
pub struct BuildOptions {
    /// The time the 18-month rule is evaluated at, and the header's build time.
    pub build_time: Timestamp,
    /// The journal to fold in.
    pub journal: Option<JournalInput>,
    /// Draw a progress bar on a terminal.
    pub progress: bool,
    /// Refuse a result with more than `max_percent` % fewer persons than the snapshot it
    /// follows (`--previous`): an empty or cut export builds a valid, nearly empty snapshot.
    pub shrink: Option<ShrinkGuard>,
    /// The snapshot this one follows (the one served): persons whose answer differs from
    /// it become the change feed's new changes. `None`: a first build, every person is one.
    pub previous: Option<PathBuf>,
}

/// The persons of the snapshot a build follows, and how many percent fewer it may have.
#[derive(Clone, Copy, Debug)]
pub struct ShrinkGuard {
    /// Persons in the previous snapshot.
    pub previous_records: u64,
    /// Most percent fewer persons allowed.
    pub max_percent: f64,
}

/// `--max-shrink`'s default, percent.
pub const DEFAULT_MAX_SHRINK_PERCENT: f64 = 1.0;

/// True when `new` persons are more than `percent` % fewer than `before`.
pub fn shrinks_too_much(before: u64, new: u64, percent: f64) -> bool {
    new < before && (before - new) as f64 > before as f64 * percent / 100.0
}

/// A journal to fold into a build.
#[derive(Clone, Debug)]
pub enum JournalInput {
    /// A journal directory (read only; a running service may be appending).
    Dir(PathBuf),
    /// Entries already read (from the PostgreSQL journal), in sequence order, and the last
    /// sequence number handed out when they were read.
    Read {
        /// The entries.
        entries: Vec<crate::journal::Entry>,
        /// The journal's head: everything up to it is folded.
        last_seq: u64,
    },
}

impl BuildOptions {
    /// Build now, no journal, no progress bar.
    pub fn now() -> BuildOptions {
        BuildOptions {
            build_time: Timestamp(chrono::Utc::now().timestamp()),
            journal: None,
            progress: false,
            shrink: None,
            previous: None,
        }
    }
}

/// What a successful build did.
#[derive(Clone, Debug)]
pub struct BuildReport {
    /// The written header.
    pub header: Header,
    /// Input lines read (blank lines included).
    pub lines: u64,
    /// Input size in bytes.
    pub input_bytes: u64,
    /// Output file size in bytes.
    pub output_bytes: u64,
    /// What folding the journal did, when one was given.
    pub journal: Option<JournalFold>,
    /// What the change feed got: the persons new, changed and gone since `--previous`.
    pub feed: FeedReport,
    /// Wall time of each phase.
    pub timings: BuildTimings,
}

/// Wall time of each build phase.
#[derive(Clone, Copy, Debug, Default)]
pub struct BuildTimings {
    /// Parsing, validating and rendering (parallel).
    pub parse: std::time::Duration,
    /// Comparing with the previous snapshot, `*_duplisert`, the feed's index.
    pub compare: std::time::Duration,
    /// Interning certificates, concatenating records, filling the hash table.
    pub assemble: std::time::Duration,
    /// Serialising and writing the file, up to and including fsync, rename and dir fsync.
    pub write: std::time::Duration,
}

/// Builds a snapshot from the JSONL file `input` into `out`.
pub fn build_file(
    input: &Path,
    out: &Path,
    opts: &BuildOptions,
) -> Result<BuildReport, BuildError> {
    let io = |source| BuildError::Io {
        path: input.to_owned(),
        source,
    };
    let file = File::open(input).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    if len == 0 {
        return build_bytes(&[], out, opts);
    }
    let map = crate::snapshot::load::map_input(&file).map_err(io)?;
    build_bytes(&map, out, opts)
}

/// Builds a snapshot from JSONL bytes into `out`.
pub fn build_bytes(
    data: &[u8],
    out: &Path,
    opts: &BuildOptions,
) -> Result<BuildReport, BuildError> {
    if opts.build_time.0
        > crate::model::time::Timestamp::now().0 + crate::snapshot::format::MAX_FUTURE_SKEW_SECS
    {
        return Err(BuildError::FutureBuildTime(opts.build_time.0));
    }
    let (fold, mut journal) = match &opts.journal {
        None => (Fold::default(), None),
        Some(JournalInput::Dir(dir)) => {
            let (fold, report) = Fold::read(dir)?;
            (fold, Some(report))
        }
        Some(JournalInput::Read { entries, last_seq }) => {
            let (fold, report) = Fold::from_entries(entries, *last_seq, None);
            (fold, Some(report))
        }
    };

    let previous = match &opts.previous {
        None => None,
        Some(path) => Some(
            crate::snapshot::Snapshot::open(path)
                .map_err(|e| BuildError::Previous(format!("{}: {e}", path.display())))?,
        ),
    };

    let started = std::time::Instant::now();
    let bar = progress_bar(opts.progress, data.len() as u64);
    let build_time = opts.build_time;
    // One pass over the input: pieces number their lines from 0, and the numbers are made
    // absolute afterwards from the pieces' newline counts.
    let mut pieces: Vec<Piece> = split_pieces(data)
        .par_iter()
        .map(|bytes| {
            let piece = process_piece(bytes, build_time, &fold);
            bar.inc(bytes.len() as u64);
            piece
        })
        .collect();
    bar.finish_and_clear();
    let mut first_line = 1u64;
    for piece in &mut pieces {
        for e in &mut piece.errors {
            e.line += first_line;
        }
        for e in &mut piece.entries {
            e.line += first_line;
        }
        first_line += piece.newlines;
    }
    let lines = first_line - 1 + u64::from(!data.is_empty() && !data.ends_with(b"\n"));

    let total_errors: u64 = pieces.iter().map(|p| p.error_count).sum();
    if total_errors > 0 {
        let mut errors: Vec<LineError> = pieces.into_iter().flat_map(|p| p.errors).collect();
        errors.sort_by_key(|e| e.line);
        errors.truncate(MAX_REPORTED_ERRORS);
        return Err(BuildError::Invalid {
            errors,
            total: total_errors,
        });
    }

    if let Some(j) = &mut journal {
        j.applied = pieces.iter().map(|p| p.folded).sum();
        j.superseded = pieces.iter().map(|p| p.superseded).sum();
        j.not_applicable = j.persons - j.applied - j.superseded;
    }
    let parsed = std::time::Instant::now();
    let (shared_emails, shared_mobiles) = mark_duplicates(&mut pieces);
    let prev = previous.as_ref().map(|snapshot| Previous {
        snapshot,
        base: fold.reservations.get(&snapshot.raw_id()).copied(),
    });
    let (feed_keys, feed_ids, mut feed) = order_feed(&mut pieces, prev.as_ref(), &fold)?;
    feed.shared_emails = shared_emails;
    feed.shared_mobiles = shared_mobiles;
    // The previous snapshot is unmapped before the new body is written.
    drop(previous);
    let compared = std::time::Instant::now();
    let feed_counts = FeedCounts {
        entries: feed_keys.len() as u64,
        pending: feed.own,
        previous: feed.previous.unwrap_or(0),
    };
    let (body, counts, max_probe) = assemble(pieces, feed_keys, feed_ids)?;
    let assembled = std::time::Instant::now();
    let header = Header {
        version: VERSION,
        body_len: 0,
        body_checksum: 0,
        build_time,
        journal_seq: journal.as_ref().map_or(0, |j| j.folded_seq),
        counts,
        max_probe,
        feed: feed_counts,
    };
    if let Some(g) = opts.shrink
        && shrinks_too_much(g.previous_records, header.counts.records, g.max_percent)
    {
        return Err(BuildError::Shrink {
            previous: g.previous_records,
            new: header.counts.records,
            max_percent: g.max_percent,
        });
    }
    let header = write_atomically(&body, header, out)?;
    let timings = BuildTimings {
        parse: parsed - started,
        compare: compared - parsed,
        assemble: assembled - compared,
        write: assembled.elapsed(),
    };
    Ok(BuildReport {
        timings,
        header,
        lines,
        input_bytes: data.len() as u64,
        output_bytes: HEADER_LEN as u64 + header.body_len,
        journal,
        feed,
    })
}

fn progress_bar(enabled: bool, len: u64) -> indicatif::ProgressBar {
    if !enabled {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {msg} [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_message("parsing");
    bar
}

/// Cuts `data` into pieces of about `PIECE` bytes, each ending at a line end.
fn split_pieces(data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::with_capacity(data.len() / PIECE + 1);
    let mut rest = data;
    while !rest.is_empty() {
        if rest.len() <= PIECE {
            out.push(rest);
            break;
        }
        let cut = memchr::memchr(b'\n', &rest[PIECE..]).map_or(rest.len(), |i| PIECE + i + 1);
        out.push(&rest[..cut]);
        rest = &rest[cut..];
    }
    out
}

/// Parses one piece; line numbers in the result count from 0 within the piece.
fn process_piece(bytes: &[u8], now: Timestamp, fold: &Fold) -> Piece {
    let mut piece = Piece {
        // Rendered records are smaller than their JSON lines (certificates are stored apart).
        records: Vec::with_capacity(bytes.len()),
        ..Piece::default()
    };
    let mut parser = LineParser::new();
    let mut cert_ids: HashMap<String, u16, Xxh3Builder> = HashMap::with_hasher(Xxh3Builder::new());
    let fail = |piece: &mut Piece, line: u64, reason: String| {
        piece.error_count += 1;
        if piece.errors.len() < MAX_REPORTED_ERRORS {
            piece.errors.push(LineError { line, reason });
        }
    };
    let mut start = 0;
    let ends = memchr::memchr_iter(b'\n', bytes).chain(std::iter::once(bytes.len()));
    for (i, end) in ends.enumerate() {
        let line = i as u64;
        piece.newlines += u64::from(end < bytes.len());
        let raw = &bytes[start..end];
        start = end + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let mut person = match parser.parse(raw) {
            Ok(p) => p,
            Err(e) => {
                fail(&mut piece, line, e.reason);
                continue;
            }
        };
        let cert = match &person.sertifikat {
            None => NO_CERT,
            Some(c) => match cert_ids.get(c.as_str()) {
                Some(&n) => n,
                None => {
                    if let Err(reason) = check_certificate(c) {
                        fail(&mut piece, line, reason.to_string());
                        continue;
                    }
                    let n = piece.certs.len();
                    if n >= usize::from(NO_CERT) {
                        fail(&mut piece, line, "too many distinct certificates".into());
                        continue;
                    }
                    piece.certs.push(c.clone());
                    cert_ids.insert(c.clone(), n as u16);
                    n as u16
                }
            },
        };
        let (folded, superseded) = fold.apply(&mut person);
        piece.folded += folded;
        piece.superseded += superseded;
        // `*_duplisert` is rendered "NEI" here; the shared ones become "JA" once the whole
        // register is read (`feed::mark_duplicates`).
        let mut keys = (0, 0);
        if person.status == Status::Aktiv
            && let Some(k) = &mut person.kontaktinformasjon
        {
            if let Some(e) = &k.epostadresse {
                k.epostadresse_duplisert = Some(false);
                keys.0 = contact_hash(&crate::model::contact_key_email(e));
            }
            if let Some(m) = &k.mobiltelefonnummer {
                k.mobiltelefonnummer_duplisert = Some(false);
                keys.1 = contact_hash(crate::model::contact_key_mobile(m));
            }
        }
        let offset = piece.records.len() as u64;
        match write_record(&person, now, cert, &mut piece.records) {
            Ok(flags) => {
                count(&mut piece.counts, flags);
                if keys != (0, 0) {
                    piece
                        .contacts
                        .push((piece.entries.len() as u32, keys.0, keys.1));
                }
                piece.entries.push(Entry {
                    key: person.id.key(),
                    offset,
                    line,
                });
            }
            Err(reason) => {
                piece.records.truncate(offset as usize);
                fail(&mut piece, line, reason.to_string());
            }
        }
    }
    piece
}

fn count(c: &mut Counts, flags: u16) {
    c.records += 1;
    if flags & FLAG_SLETTET != 0 {
        c.slettet += 1;
    } else {
        c.aktiv += 1;
    }
    c.reservert += u64::from(flags & FLAG_RESERVERT != 0);
    c.kan_varsles += u64::from(flags & FLAG_KAN_VARSLES != 0);
    c.digital_post += u64::from(flags & FLAG_DIGITAL_POST != 0);
}

/// A certificate must be base64 (standard alphabet, padded) of a DER SEQUENCE.
fn check_certificate(c: &str) -> Result<(), &'static str> {
    let der = base64::engine::general_purpose::STANDARD
        .decode(c)
        .map_err(|_| "sertifikat is not base64")?;
    if der.first() != Some(&0x30) || der.len() < 64 {
        return Err("sertifikat is not a DER-encoded X.509 certificate");
    }
    Ok(())
}

/// Appends one record (header + segments) and returns its flags.
pub(crate) fn write_record(
    p: &Person,
    now: Timestamp,
    cert: u16,
    out: &mut Vec<u8>,
) -> Result<u16, &'static str> {
    let start = out.len();
    out.resize(start + RECORD_HEADER_LEN, 0);
    let aktiv = p.status == Status::Aktiv;
    let varsling = p.varslingsstatus_at(now);
    let mut lens = [0u16; 5];
    // The stored segments (the certificate is stored apart and shared).
    let stored = [
        Segment::Head,
        Segment::Varsling,
        Segment::Kontakt,
        Segment::DigitalPost,
        Segment::Spraak,
    ];
    for (len, seg) in lens.iter_mut().zip(stored) {
        let before = out.len();
        render::write_segment(p, varsling, seg, out);
        *len = u16::try_from(out.len() - before).map_err(|_| "record is too large to store")?;
    }
    let cert = if aktiv { cert } else { NO_CERT };
    let mut flags = 0;
    if !aktiv {
        flags |= FLAG_SLETTET;
    }
    if p.reservasjon == Some(Reservasjon::Ja) {
        flags |= FLAG_RESERVERT;
    }
    if varsling == Varslingsstatus::KanVarsles {
        flags |= FLAG_KAN_VARSLES;
    }
    if aktiv && p.digital_post.is_some() {
        flags |= FLAG_DIGITAL_POST;
    }
    encode_record_header(
        &mut out[start..start + RECORD_HEADER_LEN],
        &lens,
        cert,
        flags,
    );
    Ok(flags)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_end_at_line_ends_and_cover_everything() {
        let mut data = Vec::new();
        for i in 0..300_000 {
            data.extend_from_slice(format!("line {i} with some padding text\n").as_bytes());
        }
        data.extend_from_slice(b"last line without newline");
        let pieces = split_pieces(&data);
        assert!(pieces.len() > 1);
        assert_eq!(pieces.concat(), data);
        for p in &pieces[..pieces.len() - 1] {
            assert_eq!(p.last(), Some(&b'\n'));
        }
    }
}
