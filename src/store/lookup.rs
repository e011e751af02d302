//! Batch lookups: ids + groups → the `{"personer":[…]}` answer, written into a reused buffer.
//!
//! This is exactly what `POST /rest/v1|v2/personer` serves. The answer keeps request order
//! and duplicates (clients index it by position). v1 answers an unknown id as
//! `IKKE_REGISTRERT`; v2 does so only with `inkluderIkkeRegistrerte`, and otherwise leaves
//! it out.
//!
//! Ids are resolved in groups of [`PREFETCH`]: every slot of the group is prefetched, then
//! the slots are read and every record prefetched, then the records are copied out, so the
//! cache misses of a group overlap instead of following one another.

use crate::model::Groups;
use crate::model::fnr::PersonId;
use crate::render;
use crate::snapshot::Snapshot;
use crate::snapshot::load::RecordOffset;
use crate::store::overlay::Overlay;

/// How many ids are prefetched together.
pub const PREFETCH: usize = 32;

/// What to write for a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchOptions {
    /// The groups the caller's scopes allow.
    pub groups: Groups,
    /// Whether unknown ids appear (as `IKKE_REGISTRERT`) or are left out.
    pub include_not_registered: bool,
}

impl BatchOptions {
    /// `/rest/v1/personer`: unknown ids always appear.
    pub fn v1(groups: Groups) -> BatchOptions {
        BatchOptions {
            groups,
            include_not_registered: true,
        }
    }

    /// `/rest/v2/personer`: unknown ids appear only with `inkluderIkkeRegistrerte: true`.
    pub fn v2(groups: Groups, inkluder_ikke_registrerte: bool) -> BatchOptions {
        BatchOptions {
            groups,
            include_not_registered: inkluder_ikke_registrerte,
        }
    }
}

/// What a batch found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// Entries for registered persons (AKTIV or SLETTET).
    pub found: usize,
    /// Ids not in the register (written or left out).
    pub not_registered: usize,
}

/// Appends `{"personer":[…]}` for `ids` to `out` (which is not cleared: callers reuse it).
/// Changes in `overlay` are shown over the snapshot's records.
pub fn write_personer(
    snapshot: &Snapshot,
    overlay: &Overlay,
    ids: &[PersonId],
    opts: BatchOptions,
    out: &mut Vec<u8>,
) -> BatchStats {
    out.extend_from_slice(render::PERSONER_OPEN);
    let stats = write_entries(snapshot, overlay, ids, opts, out);
    out.extend_from_slice(render::PERSONER_CLOSE);
    stats
}

/// Appends the person objects of `ids`, comma-separated, without a frame (the items of
/// `{"personer":[…]}` and of the change feed's `list`).
pub fn write_entries(
    snapshot: &Snapshot,
    overlay: &Overlay,
    ids: &[PersonId],
    opts: BatchOptions,
    out: &mut Vec<u8>,
) -> BatchStats {
    let mut stats = BatchStats::default();
    // One lock-free check per batch (the filter's flag): with nothing changed, no id pays
    // for the overlay.
    let overlay = opts
        .groups
        .contains(Groups::SPRAAK)
        .then(|| (overlay, overlay.filter()))
        .filter(|(_, filter)| !filter.is_empty());
    let mut first = true;
    // Groups go through a pipeline: while group g is copied out, the records of group g + 1
    // (its slots read just before) and the slots of group g + 2 are already on their way,
    // so the copying hides the cache misses of the groups behind it.
    let prefetch_slots = |group: &[PersonId]| {
        for &id in group {
            snapshot.prefetch(id);
            if let Some((_, filter)) = &overlay {
                filter.prefetch(id);
            }
        }
    };
    let resolve = |group: &[PersonId]| {
        let mut offsets: [Option<RecordOffset>; PREFETCH] = [None; PREFETCH];
        for (slot, &id) in offsets.iter_mut().zip(group) {
            *slot = snapshot.find(id);
            if let Some(at) = *slot {
                snapshot.prefetch_record(at);
            }
        }
        offsets
    };
    let groups: Vec<&[PersonId]> = ids.chunks(PREFETCH).collect();
    if let Some(g) = groups.first() {
        prefetch_slots(g);
    }
    if let Some(g) = groups.get(1) {
        prefetch_slots(g);
    }
    let mut next = groups.first().map(|g| resolve(g));
    for (k, group) in groups.iter().enumerate() {
        let offsets = next.take().unwrap_or([None; PREFETCH]);
        next = groups.get(k + 1).map(|g| resolve(g));
        if let Some(g) = groups.get(k + 2) {
            prefetch_slots(g);
        }
        for (at, &id) in offsets.iter().zip(group.iter()) {
            match at.and_then(|at| snapshot.record_at(at)) {
                Some(rec) => {
                    if !first {
                        out.push(b',');
                    }
                    first = false;
                    match &overlay {
                        Some((o, filter)) if filter.may_hold(id) => o.with_spraak(id, |spraak| {
                            snapshot.write_record(&rec, opts.groups, spraak, out);
                        }),
                        _ => snapshot.write_record(&rec, opts.groups, None, out),
                    }
                    stats.found += 1;
                }
                None => {
                    stats.not_registered += 1;
                    if opts.include_not_registered {
                        if !first {
                            out.push(b',');
                        }
                        first = false;
                        render::write_not_registered(id, opts.groups, out);
                    }
                }
            }
        }
    }
    stats
}

/// Appends one person object (the user endpoint's answer), with `overlay`'s change if it
/// has one; `false` if `id` is not registered.
pub fn write_person(
    snapshot: &Snapshot,
    overlay: &Overlay,
    id: PersonId,
    groups: Groups,
    out: &mut Vec<u8>,
) -> bool {
    match snapshot.get(id) {
        Some(rec) => {
            if !overlay.filter().may_hold(id) {
                snapshot.write_record(&rec, groups, None, out);
                return true;
            }
            overlay.with_spraak(id, |spraak| {
                snapshot.write_record(&rec, groups, spraak, out)
            });
            true
        }
        None => false,
    }
}
