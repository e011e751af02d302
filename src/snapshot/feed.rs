//! The build's register-wide passes, between parsing and assembling:
//!
//! 1. **`*_duplisert`** (`mark_duplicates`): every AKTIV person's e-mail key (lower
//!    case) and mobile key (`+47`/`0047` removed) is hashed (128-bit xxh3) while parsing;
//!    the hashes of the whole register are sorted and the ones seen twice are duplicates.
//!    Records were rendered with `"NEI"`; the persons whose address or number is shared
//!    get `"JA"` in place (their piece is rewritten once, one byte shorter per field).
//! 2. **The change feed** (`order_feed`): every person's full answer (all groups) is
//!    compared with what the previous snapshot showed (its record, with the journal's
//!    change over it where that snapshot did not hold it). An unchanged person keeps the
//!    change id it had there (or its folded PATCH's, if later); a changed or new person,
//!    and a person gone since, becomes one of this snapshot's own changes, numbered when
//!    the snapshot is first served. Persons gone earlier stay in the index with their id
//!    (answered as `IKKE_REGISTRERT`). The index is ordered by change id, own changes last
//!    (in export order), and each record learns its position in it.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;

use crate::model::fnr::PersonId;
use crate::render;
use crate::snapshot::error::BuildError;
use crate::snapshot::fold::Fold;
use crate::snapshot::format::{RECORD_HEADER_LEN, rec};
use crate::snapshot::load::Snapshot;
use crate::snapshot::record::{Record, set_feed_position};
use crate::snapshot::write::Piece;

/// The hash a contact key is compared by (0 is kept for "none").
pub(super) fn contact_hash(key: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(key.as_bytes()).max(1)
}

/// Sets `"JA"` in the records of persons whose e-mail address or mobile number another
/// AKTIV person has too. Returns how many addresses and numbers are shared.
pub(super) fn mark_duplicates(pieces: &mut [Piece]) -> (u64, u64) {
    let collect = |mobile: bool| {
        let mut all: Vec<u128> = pieces
            .par_iter()
            .flat_map_iter(|p| {
                p.contacts
                    .iter()
                    .map(move |&(_, e, m)| if mobile { m } else { e })
            })
            .filter(|&h| h != 0)
            .collect();
        all.par_sort_unstable();
        let shared: HashSet<u128> = all
            .windows(2)
            .filter(|w| w[0] == w[1])
            .map(|w| w[0])
            .collect();
        shared
    };
    let emails = collect(false);
    let mobiles = collect(true);
    if emails.is_empty() && mobiles.is_empty() {
        return (0, 0);
    }
    pieces
        .par_iter_mut()
        .for_each(|p| patch_piece(p, &emails, &mobiles));
    (emails.len() as u64, mobiles.len() as u64)
}

const EMAIL_NEI: &[u8] = b"\"epostadresse_duplisert\":\"NEI\"";
const MOBILE_NEI: &[u8] = b"\"mobiltelefonnummer_duplisert\":\"NEI\"";

/// Rewrites the piece's records with `"JA"` where a person's key is shared.
fn patch_piece(p: &mut Piece, emails: &HashSet<u128>, mobiles: &HashSet<u128>) {
    let mut marks: Vec<(usize, bool, bool)> = p
        .contacts
        .iter()
        .filter_map(|&(i, e, m)| {
            let (e, m) = (
                e != 0 && emails.contains(&e),
                m != 0 && mobiles.contains(&m),
            );
            (e || m).then_some((i as usize, e, m))
        })
        .collect();
    if marks.is_empty() {
        return;
    }
    marks.sort_unstable_by_key(|m| m.0);
    let mut out = Vec::with_capacity(p.records.len());
    let mut next = marks.iter().peekable();
    for (i, entry) in p.entries.iter_mut().enumerate() {
        let start = entry.offset as usize;
        let rec = Record::decode(&p.records, start).expect("the builder's own record");
        let end = start + RECORD_HEADER_LEN + rec.stored().segments.len();
        let at = out.len();
        out.extend_from_slice(&p.records[start..end]);
        entry.offset = at as u64;
        let Some(&(_, e, m)) = next.next_if(|m| m.0 == i) else {
            continue;
        };
        let lens_at = |n: usize| at + 2 * n;
        let len = |out: &[u8], n: usize| {
            usize::from(u16::from_le_bytes([out[lens_at(n)], out[lens_at(n) + 1]]))
        };
        let kontakt = at + RECORD_HEADER_LEN + len(&out, 0) + len(&out, 1);
        let mut shrink = 0;
        for (wanted, pattern) in [(e, EMAIL_NEI), (m, MOBILE_NEI)] {
            if !wanted {
                continue;
            }
            let seg_len = len(&out, 2) - shrink;
            let seg = &out[kontakt..kontakt + seg_len];
            if let Some(pos) = memchr::memmem::find(seg, pattern) {
                // `"NEI"` → `"JA"`: the value starts after the key and its colon.
                let value = kontakt + pos + pattern.len() - 5;
                out.splice(value..value + 5, render::DUPLISERT_JA.iter().copied());
                shrink += 1;
            }
        }
        let new_len = (len(&out, 2) - shrink) as u16;
        out[lens_at(2)..lens_at(2) + 2].copy_from_slice(&new_len.to_le_bytes());
        debug_assert_eq!(rec::KONTAKT, 4);
    }
    p.records = out;
}

/// Where a person's change id comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mark {
    /// One of this snapshot's own changes.
    Own,
    /// Unchanged: the id it had.
    Kept(u64),
}

/// What the feed pass found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct FeedReport {
    /// The snapshot compared with, by id (none: a first build, every person a change).
    pub previous: Option<u64>,
    /// Persons new in the register (not in the previous snapshot).
    pub new: u64,
    /// Persons whose answer differs from the previous snapshot's.
    pub changed: u64,
    /// Persons gone from the export (answered as IKKE_REGISTRERT from now on).
    pub gone: u64,
    /// Persons given a new id although unchanged, because the previous snapshot's own
    /// changes were never numbered (it was not served, or its reservation is not in the
    /// journal given): a client sees them once more, and misses nothing.
    pub renumbered: u64,
    /// Persons (and persons gone earlier) keeping their id.
    pub kept: u64,
    /// This snapshot's own changes: new + changed + gone + renumbered.
    pub own: u64,
    /// Shared e-mail addresses and mobile numbers (`*_duplisert` JA).
    pub shared_emails: u64,
    /// Shared mobile numbers.
    pub shared_mobiles: u64,
}

/// The previous snapshot and what the journal says of it.
pub(super) struct Previous<'a> {
    pub(super) snapshot: &'a Snapshot,
    /// The first id of its own changes, when the journal holds its reservation.
    pub(super) base: Option<u64>,
}

/// Orders the change feed's index and writes each record's position into it; returns the
/// index (`feed_keys`, `feed_ids`) and what it found.
pub(super) fn order_feed(
    pieces: &mut [Piece],
    previous: Option<&Previous<'_>>,
    fold: &Fold,
) -> Result<(Vec<u64>, Vec<u64>, FeedReport), BuildError> {
    let mut report = FeedReport {
        previous: previous.map(|p| p.snapshot.raw_id()),
        ..FeedReport::default()
    };
    // Per piece: each entry's mark, and the counts of new / changed / renumbered.
    // The previous snapshot's feed positions whose person is in the export (set while
    // classifying): the others are gone.
    let seen: Vec<AtomicU64> = (0..previous.map_or(0, |p| p.snapshot.feed_len()).div_ceil(64))
        .map(|_| AtomicU64::new(0))
        .collect();
    let marks: Vec<(Vec<Mark>, [u64; 3])> = pieces
        .par_iter()
        .map(|p| classify(p, previous, fold, &seen))
        .collect();
    for (_, c) in &marks {
        report.new += c[0];
        report.changed += c[1];
        report.renumbered += c[2];
    }
    // (id, key, piece, entry) of every person keeping an id, and of persons gone.
    let mut kept: Vec<(u64, u64, u32, u32)> = Vec::new();
    let mut own: Vec<(u64, u32, u32)> = Vec::new();
    for (pi, (m, _)) in marks.iter().enumerate() {
        for (ei, mark) in m.iter().enumerate() {
            let key = pieces[pi].entries[ei].key;
            match *mark {
                Mark::Kept(id) => kept.push((id, key, pi as u32, ei as u32)),
                Mark::Own => own.push((key, pi as u32, ei as u32)),
            }
        }
    }
    if let Some(prev) = previous {
        let s = prev.snapshot;
        // Persons of the export that the previous snapshot has no record of: a person gone
        // earlier who is back is listed once, as one of this snapshot's changes, and their
        // old entry of the index goes.
        let back: HashSet<u64> = own
            .iter()
            .filter(|&&(key, _, _)| PersonId::from_key(key).and_then(|id| s.get(id)).is_none())
            .map(|&(key, _, _)| key)
            .collect();
        for pos in 0..s.feed_len() {
            if seen[pos / 64].load(Ordering::Relaxed) & (1 << (pos % 64)) != 0 {
                continue;
            }
            let key = s.feed_key(pos);
            if back.contains(&key) {
                continue;
            }
            let was_there = PersonId::from_key(key).and_then(|id| s.get(id)).is_some();
            let id = resolve(s, pos, prev.base);
            match (was_there, id) {
                (false, Some(id)) => kept.push((id, key, u32::MAX, 0)),
                (false, None) => {
                    report.renumbered += 1;
                    own.push((key, u32::MAX, 0));
                }
                (true, _) => {
                    report.gone += 1;
                    own.push((key, u32::MAX, 0));
                }
            }
        }
    }
    kept.par_sort_unstable_by_key(|k| k.0);
    if let Some(w) = kept.windows(2).find(|w| w[0].0 == w[1].0) {
        // An export that gives a person twice keeps that person's id twice: say that.
        if let Some(e) = duplicate_lines(pieces) {
            return Err(e);
        }
        return Err(BuildError::Limit(format!(
            "two persons of the previous snapshot share change id {}: it is damaged",
            w[0].0
        )));
    }
    report.kept = kept.len() as u64;
    report.own = own.len() as u64;
    let total = kept.len() + own.len();
    if total >= u32::MAX as usize {
        return Err(BuildError::Limit(format!(
            "{total} entries in the change feed's index"
        )));
    }
    let mut feed_keys = Vec::with_capacity(total);
    let mut feed_ids = Vec::with_capacity(kept.len());
    let place = |pieces: &mut [Piece], pos: usize, piece: u32, entry: u32| {
        if piece != u32::MAX {
            let p = &mut pieces[piece as usize];
            let offset = p.entries[entry as usize].offset as usize;
            set_feed_position(&mut p.records, offset, pos as u32);
        }
    };
    for &(id, key, piece, entry) in &kept {
        place(pieces, feed_keys.len(), piece, entry);
        feed_keys.push(key);
        feed_ids.push(id);
    }
    for &(key, piece, entry) in &own {
        place(pieces, feed_keys.len(), piece, entry);
        feed_keys.push(key);
    }
    Ok((feed_keys, feed_ids, report))
}

/// The lines that give a personal number already given, as the build reports them.
fn duplicate_lines(pieces: &[Piece]) -> Option<BuildError> {
    let mut all: Vec<(u64, u64)> = pieces
        .iter()
        .flat_map(|p| p.entries.iter().map(|e| (e.key, e.line)))
        .collect();
    all.sort_unstable();
    let mut errors: Vec<crate::snapshot::error::LineError> = all
        .windows(2)
        .filter(|w| w[0].0 == w[1].0)
        .map(|w| crate::snapshot::error::LineError {
            line: w[1].1,
            reason: format!("personidentifikator already given on line {}", w[0].1),
        })
        .collect();
    if errors.is_empty() {
        return None;
    }
    errors.sort_by_key(|e| e.line);
    let total = errors.len() as u64;
    errors.truncate(crate::snapshot::error::MAX_REPORTED_ERRORS);
    Some(BuildError::Invalid { errors, total })
}

/// The id at `pos` of `s`'s index: its own changes need its reservation's base.
fn resolve(s: &Snapshot, pos: usize, base: Option<u64>) -> Option<u64> {
    let own_from = s.feed_len() - s.header().feed.pending as usize;
    if pos < own_from {
        Some(s.feed_id(pos, 0))
    } else {
        base.map(|b| s.feed_id(pos, b))
    }
}

/// True when the full answer (every group) of the new record equals the previous
/// snapshot's record `old` with `spraak` (a journal change it did not hold) over it. The
/// stored segments are compared as bytes, the certificate by the previous snapshot's number
/// of the same certificate (`new_cert`: `None` no certificate, `Some(None)` one the
/// previous snapshot does not have): what `write_stored` would render, without rendering.
fn same_answer(
    new: &Record<'_>,
    new_cert: Option<Option<u16>>,
    old: &Record<'_>,
    spraak: Option<&[u8]>,
) -> bool {
    let (n, o) = (new.stored(), old.stored());
    let body = |lens: &[u16; 5]| lens[..4].iter().map(|&l| usize::from(l)).sum::<usize>();
    let (nb, ob) = (body(&n.lens), body(&o.lens));
    if n.segments[..nb] != o.segments[..ob] {
        return false;
    }
    let old_spraak = match spraak {
        Some(seg) if !o.slettet => seg,
        _ => &o.segments[ob..],
    };
    if n.segments[nb..] != *old_spraak {
        return false;
    }
    match (new_cert, old.cert()) {
        (None, None) => true,
        (Some(Some(a)), Some(b)) => a == b,
        _ => false,
    }
}

/// Marks each entry of `p`; counts new, changed and renumbered persons.
fn classify(
    p: &Piece,
    previous: Option<&Previous<'_>>,
    fold: &Fold,
    seen: &[AtomicU64],
) -> (Vec<Mark>, [u64; 3]) {
    let Some(prev) = previous else {
        return (
            vec![Mark::Own; p.entries.len()],
            [p.entries.len() as u64, 0, 0],
        );
    };
    let s = prev.snapshot;
    // Each of the piece's certificates, as the previous snapshot's number of the same one
    // (compared once per certificate, not once per person).
    let cert_map: Vec<Option<u16>> = p
        .certs
        .iter()
        .map(|c| {
            let mut seg = Vec::with_capacity(c.len() + 16);
            render::write_sertifikat(c, &mut seg);
            (0..s.header().counts.certs)
                .filter_map(|k| u16::try_from(k).ok())
                .find(|&k| s.cert_segment(k) == seg.as_slice())
        })
        .collect();
    let mut counts = [0u64; 3];
    let mut spraak = Vec::with_capacity(64);
    let marks = p
        .entries
        .iter()
        .map(|e| {
            let Some(old) = PersonId::from_key(e.key).and_then(|id| s.get(id)) else {
                counts[0] += 1;
                return Mark::Own;
            };
            let pos = old.feed_position();
            if let Some(word) = seen.get(pos / 64) {
                word.fetch_or(1 << (pos % 64), Ordering::Relaxed);
            }
            let rec =
                Record::decode(&p.records, e.offset as usize).expect("the builder's own record");
            // What the previous snapshot showed: its record, with the journal's change over
            // it where it did not hold that change.
            let change = fold.latest(e.key).filter(|c| !s.holds(c));
            spraak.clear();
            if let Some(c) = &change
                && let crate::journal::Change::SetSpraak { spraak: lang, .. } = c.change
            {
                render::write_spraak(Some(lang), Some(c.at), &mut spraak);
            }
            let new_cert = rec
                .cert()
                .map(|c| cert_map.get(usize::from(c)).copied().flatten());
            let same = same_answer(
                &rec,
                new_cert,
                &old,
                change.is_some().then_some(spraak.as_slice()),
            );
            if !same {
                counts[1] += 1;
                return Mark::Own;
            }
            match resolve(s, old.feed_position(), prev.base)
                .filter(|_| old.feed_position() < s.feed_len())
            {
                Some(id) => Mark::Kept(change.map_or(id, |c| id.max(c.seq))),
                None => {
                    counts[2] += 1;
                    Mark::Own
                }
            }
        })
        .collect();
    (marks, counts)
}
