//! The change feed (`POST /rest/v2/krr/hentEndringer`) from memory: the served snapshot's
//! index of persons by latest change id, merged with the overlay's changes by sequence
//! number.
//!
//! **What a replica may answer.** Change ids become visible in increasing order:
//! - nothing above the journal's *visible* sequence number (every change up to it is
//!   applied here; see [`crate::journal::JournalStats::visible_seq`]);
//! - nothing at or past a reservation of change ids for a snapshot this replica does not
//!   serve yet (another replica, or this one between reserving and swapping, made it):
//!   those ids belong to persons this replica cannot show yet;
//! - nothing of a served snapshot whose own changes have no ids yet (the journal could not
//!   reserve them): the feed then answers 503 until they have.
//!
//! A person is listed once, at its latest change id: a snapshot entry whose person has a
//! later visible change in the overlay is left out there (it comes at the overlay's id),
//! and an overlay change older than the snapshot's id of its person is left out.

use crate::model::fnr::PersonId;
use crate::snapshot::Snapshot;
use crate::store::overlay::Overlay;

/// Most entries of one page.
pub const MAX_PAGE: usize = 1000;

/// One page of the feed: the persons, in change-id order, and the ids around them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeedPage {
    /// The persons, ascending change id.
    pub ids: Vec<PersonId>,
    /// Their change ids.
    pub change_ids: Vec<u64>,
    /// The request's `fraEndringsId`.
    pub fra: u64,
    /// The last entry's change id (`fra` when the page is empty).
    pub til: u64,
    /// The newest change id this replica answers.
    pub siste: u64,
}

/// Why no page can be given now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FeedUnavailable {
    /// The served snapshot's own changes have no ids yet.
    #[error(
        "the served snapshot's changes are not numbered yet (the journal has not reserved their ids)"
    )]
    NotNumbered,
}

/// The newest change id this replica may answer, given the journal's visible sequence
/// number (see the module doc).
pub fn horizon(
    snapshot: &Snapshot,
    overlay: &Overlay,
    visible: u64,
) -> Result<u64, FeedUnavailable> {
    let base = snapshot.feed_base().ok_or(FeedUnavailable::NotNumbered)?;
    let fence = overlay
        .reservation_after(base)
        .map_or(u64::MAX, |(first, _)| first);
    Ok(visible.min(fence.saturating_sub(1)))
}

/// The page after `fra`: at most `max` persons whose latest change id is in
/// `fra + 1..=horizon`.
pub fn page(
    snapshot: &Snapshot,
    overlay: &Overlay,
    visible: u64,
    fra: u64,
    max: usize,
) -> Result<FeedPage, FeedUnavailable> {
    let upto = horizon(snapshot, overlay, visible)?;
    let base = snapshot.feed_base().ok_or(FeedUnavailable::NotNumbered)?;
    let len = snapshot.feed_len();
    // The snapshot's newest id at or below the horizon.
    let end = snapshot.feed_start(upto, base);
    let newest_snapshot = end.checked_sub(1).map_or(0, |p| snapshot.feed_id(p, base));
    let siste = newest_snapshot.max(overlay.newest_change(upto).unwrap_or(0));
    let mut page = FeedPage {
        ids: Vec::with_capacity(max.min(MAX_PAGE)),
        change_ids: Vec::with_capacity(max.min(MAX_PAGE)),
        fra,
        til: fra,
        siste,
    };
    if fra >= upto || max == 0 {
        return Ok(page);
    }
    let filter = overlay.filter();
    let overlay_any = !filter.is_empty();
    // The page is made window by window: a window whose entries are all listed later (at
    // newer changes in the overlay, beyond it) gives nothing, and the next window is read,
    // so a page is empty only when nothing is left below the horizon.
    let mut after = fra;
    loop {
        let start = snapshot.feed_start(after, base);
        // This page lists ids up to `bound`: the horizon, or the id of the snapshot's `max`-th
        // entry after the cursor when it has that many (the overlay's changes beyond it could
        // not be on this page, and are not looked at).
        let bound = match start.checked_add(max).filter(|&p| p <= end) {
            Some(p) => snapshot.feed_id(p - 1, base).min(upto),
            None => upto,
        };
        // The snapshot's id of a person (its latest change there), if it is listable now.
        let held = |pid: PersonId| {
            snapshot
                .get(pid)
                .and_then(|rec| snapshot.feed_id_of(&rec, base))
        };
        // The overlay's changes in range, as copied now: a person whose snapshot id is at least
        // the change's (and listable) is listed there instead.
        let changes: Vec<(u64, u64)> = if overlay_any {
            overlay.changes_between(after, bound, max, |seq, key| {
                PersonId::from_key(key)
                    .is_some_and(|pid| held(pid).is_none_or(|h| h < seq || h > upto))
            })
        } else {
            Vec::new()
        };
        // A person's change in that copy; a person with a change in range that is not in it
        // (beyond `max`) is looked up in the overlay, within the horizon.
        let copied: std::collections::HashMap<u64, u64> =
            changes.iter().map(|&(seq, key)| (key, seq)).collect();
        let mut changes = changes.into_iter().peekable();
        let mut pos = start;
        while page.ids.len() < max {
            let from_snapshot = (pos < end.min(len))
                .then(|| (snapshot.feed_id(pos, base), snapshot.feed_key(pos)))
                .filter(|s| s.0 <= bound);
            let (id, key) = match (from_snapshot, changes.peek().copied()) {
                (Some(s), Some(c)) if c.0 < s.0 => {
                    changes.next();
                    c
                }
                (Some(s), _) => {
                    pos += 1;
                    // Listed at its newer change in the overlay instead (on this page or a
                    // later one).
                    let later = overlay_any
                        && match copied.get(&s.1) {
                            Some(&seq) => seq > s.0,
                            None => PersonId::from_key(s.1).is_some_and(|pid| {
                                filter.may_hold(pid)
                                    && overlay
                                        .get(pid)
                                        .is_some_and(|c| c.seq > s.0 && c.seq <= upto)
                            }),
                        };
                    if later {
                        continue;
                    }
                    s
                }
                (None, Some(c)) => {
                    changes.next();
                    c
                }
                (None, None) => break,
            };
            let Some(pid) = PersonId::from_key(key) else {
                continue;
            };
            page.ids.push(pid);
            page.change_ids.push(id);
            page.til = id;
        }
        if !page.ids.is_empty() || bound >= upto {
            break;
        }
        after = bound;
    }
    Ok(page)
}
