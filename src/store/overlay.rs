//! The overlay: acknowledged changes not yet in the served snapshot, consulted before it.
//!
//! A PATCH is applied here after its journal record is durable and before it is
//! acknowledged, so every read that starts after the acknowledgement sees it. Only the
//! language can change, so an entry holds the person's new `spraak` segment pre-rendered;
//! a lookup copies every other segment from the snapshot record and this one from here.
//!
//! Entries leave when a snapshot that holds them is published ([`Overlay::prune`]): the
//! snapshot folded in their sequence number, or it has a newer `spraak_oppdatert` of its
//! own, or it no longer has the person as AKTIV.
//!
//! **The filter.** A batch asks the overlay about every id it found, and after a busy day
//! most ids are not in it. A 2^21-bit filter (256 KiB, stays in L2) in front of the map
//! answers "certainly not changed" with one bit test; only ids whose bit is set pay for the
//! map's lock and lookup. Bits are set by [`Overlay::apply`] and never cleared in place
//! (a cleared bit could hide an entry from a reader); after a prune a new filter is built
//! from the map and swapped in. `apply` and that rebuild are serialised by one mutex, so a
//! reader that loads the filter after an acknowledgement always finds the change's bit:
//! either the apply set it in that filter, or the filter was built from the map after the
//! apply.
//! The filter also has a flag, set with its first bit: while it is clear, a whole batch
//! (and a single-person read) skips the overlay after one load, with the same guarantee.

use std::collections::BTreeMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use arc_swap::ArcSwap;
use dashmap::DashMap;

use crate::journal::{Change, Entry};
use crate::model::Spraak;
use crate::model::fnr::PersonId;
use crate::model::time::Timestamp;
use crate::render;
use crate::snapshot::Snapshot;

/// One person's acknowledged language change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Changed {
    /// The journal sequence number of the change.
    pub seq: u64,
    /// When it was made (`spraak_oppdatert`).
    pub at: Timestamp,
    /// The new language.
    pub spraak: Spraak,
    /// `,"spraak":"…","spraak_oppdatert":"…"` (58 bytes), as the record's spraak segment
    /// would be; held inline so a lookup that finds the entry reads no other memory.
    segment: [u8; SEGMENT_MAX],
    segment_len: u8,
}

impl Changed {
    /// The pre-rendered spraak segment.
    pub fn segment(&self) -> &[u8] {
        &self.segment[..usize::from(self.segment_len)]
    }
}

/// Hashes a personal number key (already unique per person) with a 64-bit finalizer.
#[derive(Debug, Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(self.0 ^ u64::from(b));
        }
    }

    fn write_u64(&mut self, k: u64) {
        // murmur3's fmix64: every input bit affects the shard and bucket bits.
        let mut h = k ^ self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^= h >> 33;
        self.0 = h;
    }
}

/// Room for a rendered spraak segment (`,"spraak":"nb","spraak_oppdatert":"…+01"` is 58).
const SEGMENT_MAX: usize = 64;

/// Bits of the filter (a power of two).
const FILTER_BITS: usize = 1 << 21;

/// A one-hash bit filter of changed persons: a clear bit means "not in the overlay".
#[derive(Debug)]
pub struct Filter {
    words: Box<[AtomicU64]>,
    /// Set with the first bit: a filter that never had one answers "nothing changed" for a
    /// whole batch without touching the map (whose emptiness check read-locks every shard).
    any: AtomicBool,
}

impl Filter {
    fn new() -> Filter {
        Filter {
            words: (0..FILTER_BITS / 64).map(|_| AtomicU64::new(0)).collect(),
            any: AtomicBool::new(false),
        }
    }

    #[inline]
    fn bit(key: u64) -> (usize, u64) {
        let mut h = IdHasher::default();
        h.write_u64(key);
        let b = (h.finish() as usize) & (FILTER_BITS - 1);
        (b / 64, 1 << (b % 64))
    }

    fn set(&self, key: u64) {
        let (w, m) = Filter::bit(key);
        self.words[w].fetch_or(m, Ordering::Release);
        self.any.store(true, Ordering::Release);
    }

    /// True when no change was applied since this filter was made (from an empty map):
    /// every id is certainly not in the overlay. Same guarantee as [`Filter::may_hold`].
    #[inline]
    pub fn is_empty(&self) -> bool {
        !self.any.load(Ordering::Acquire)
    }

    /// Hints the CPU to load `id`'s filter word (a batch does this with its slot prefetches).
    #[inline]
    pub fn prefetch(&self, id: PersonId) {
        let (w, _) = Filter::bit(id.key());
        crate::snapshot::load::prefetch_read(std::ptr::from_ref(&self.words[w]).cast());
    }

    /// False when `id` is certainly not in the overlay.
    #[inline]
    pub fn may_hold(&self, id: PersonId) -> bool {
        let (w, m) = Filter::bit(id.key());
        self.words[w].load(Ordering::Acquire) & m != 0
    }
}

/// Changed persons by personal number.
#[derive(Debug)]
pub struct Overlay {
    map: DashMap<u64, Changed, BuildHasherDefault<IdHasher>>,
    filter: ArcSwap<Filter>,
    /// Serialises `apply` with the filter rebuild (see the module doc).
    writers: std::sync::Mutex<()>,
    /// The same changes by sequence number (the change feed's order): seq → person key.
    /// Only the feed reads it; writers change it under `writers`.
    by_seq: std::sync::Mutex<BTreeMap<u64, u64>>,
    /// Reservations of change ids the journal holds: first id → snapshot id. The feed of a
    /// replica answers nothing at or past a reservation of a snapshot it does not serve yet.
    reserved: std::sync::Mutex<BTreeMap<u64, u64>>,
}

impl Default for Overlay {
    fn default() -> Overlay {
        Overlay {
            map: DashMap::default(),
            filter: ArcSwap::from_pointee(Filter::new()),
            writers: std::sync::Mutex::new(()),
            by_seq: std::sync::Mutex::new(BTreeMap::new()),
            reserved: std::sync::Mutex::new(BTreeMap::new()),
        }
    }
}

impl Overlay {
    /// An empty overlay.
    pub fn new() -> Overlay {
        Overlay::default()
    }

    /// Applies a durable journal entry; an entry older than the one held is ignored.
    pub fn apply(&self, entry: &Entry) {
        let (id, spraak) = match entry.change {
            Change::SetSpraak { id, spraak } => (id, spraak),
            Change::Reserve { snapshot, .. } => {
                lock(&self.reserved).insert(entry.seq, snapshot);
                return;
            }
        };
        let mut rendered = Vec::with_capacity(64);
        render::write_spraak(Some(spraak), Some(entry.at), &mut rendered);
        // Every language and every instant in 1970..2099 renders to the same length.
        let mut segment = [0u8; SEGMENT_MAX];
        segment[..rendered.len()].copy_from_slice(&rendered);
        let changed = Changed {
            seq: entry.seq,
            at: entry.at,
            spraak,
            segment,
            segment_len: rendered.len() as u8,
        };
        let _serial = self.writers.lock().unwrap_or_else(|e| e.into_inner());
        let mut replaced = None;
        let mut newer = true;
        self.map
            .entry(id.key())
            .and_modify(|held| {
                if held.seq < changed.seq {
                    replaced = Some(held.seq);
                    *held = changed.clone();
                } else {
                    newer = false;
                }
            })
            .or_insert(changed);
        if newer {
            let mut by_seq = lock(&self.by_seq);
            if let Some(old) = replaced {
                by_seq.remove(&old);
            }
            by_seq.insert(entry.seq, id.key());
        }
        self.filter.load().set(id.key());
    }

    /// Up to `max` changes with sequence numbers in `after + 1..=upto`, ascending, for
    /// which `keep(seq, key)` holds.
    pub fn changes_between(
        &self,
        after: u64,
        upto: u64,
        max: usize,
        mut keep: impl FnMut(u64, u64) -> bool,
    ) -> Vec<(u64, u64)> {
        if after >= upto {
            return Vec::new();
        }
        lock(&self.by_seq)
            .range(after + 1..=upto)
            .map(|(&s, &k)| (s, k))
            .filter(|&(s, k)| keep(s, k))
            .take(max)
            .collect()
    }

    /// The newest change's sequence number at or below `upto`.
    pub fn newest_change(&self, upto: u64) -> Option<u64> {
        lock(&self.by_seq)
            .range(..=upto)
            .next_back()
            .map(|(&s, _)| s)
    }

    /// The first reserved change id above `after` (a reservation made after the one of the
    /// snapshot served), if any.
    pub fn reservation_after(&self, after: u64) -> Option<(u64, u64)> {
        lock(&self.reserved)
            .range(after.saturating_add(1)..)
            .next()
            .map(|(&f, &s)| (f, s))
    }

    /// The reservation of `snapshot`, if this replica knows of one.
    pub fn reservation_of(&self, snapshot: u64) -> Option<u64> {
        lock(&self.reserved)
            .iter()
            .find(|&(_, &s)| s == snapshot)
            .map(|(&f, _)| f)
    }

    /// Forgets reservations older than `base` (the served snapshot's own).
    pub fn forget_reservations_before(&self, base: u64) {
        lock(&self.reserved).retain(|&first, _| first >= base);
    }

    /// The filter to test a batch's ids against (load it once per request).
    #[inline]
    pub fn filter(&self) -> arc_swap::Guard<Arc<Filter>> {
        self.filter.load()
    }

    /// Applies the entries a snapshot does not hold yet (recovery after a restart). Returns
    /// how many were applied.
    pub fn replay(&self, entries: &[Entry], snapshot: Option<&Snapshot>) -> usize {
        let mut applied = 0;
        for e in entries {
            if snapshot.is_none_or(|s| !s.holds(e)) {
                self.apply(e);
                applied += 1;
            }
        }
        applied
    }

    /// Calls `f` with `id`'s changed spraak segment, if it has one (the entry is read-locked
    /// for the duration of `f`, so keep it short: copy bytes).
    #[inline]
    pub fn with_spraak<R>(&self, id: PersonId, f: impl FnOnce(Option<&[u8]>) -> R) -> R {
        match self.map.get(&id.key()) {
            Some(c) => f(Some(c.segment())),
            None => f(None),
        }
    }

    /// `id`'s change, if any.
    pub fn get(&self, id: PersonId) -> Option<Changed> {
        self.map.get(&id.key()).map(|c| c.clone())
    }

    /// Number of changed persons.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when nothing is changed. Read-locks every shard of the map: the request path asks
    /// the filter instead ([`Filter::is_empty`]).
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Drops the entries `snapshot` already holds (see the module doc); returns how many.
    /// Call it after publishing `snapshot`.
    pub fn prune(&self, snapshot: &Snapshot) -> usize {
        let before = self.map.len();
        self.map.retain(|&key, c| {
            let Some(id) = PersonId::from_key(key) else {
                return false;
            };
            let entry = Entry {
                seq: c.seq,
                at: c.at,
                change: Change::SetSpraak {
                    id,
                    spraak: c.spraak,
                },
            };
            !snapshot.holds(&entry)
        });
        let dropped = before.saturating_sub(self.map.len());
        if dropped > 0 {
            // Bits of dropped entries are only cleared by building a new filter.
            let _serial = self.writers.lock().unwrap_or_else(|e| e.into_inner());
            let fresh = Filter::new();
            let mut by_seq = BTreeMap::new();
            for e in self.map.iter() {
                fresh.set(*e.key());
                by_seq.insert(e.seq, *e.key());
            }
            self.filter.store(Arc::new(fresh));
            *lock(&self.by_seq) = by_seq;
        }
        dropped
    }
}

impl Snapshot {
    /// True when showing this snapshot's record is right without `entry`: the snapshot folded
    /// the entry in, holds a newer language change of its own, or does not have the person
    /// as AKTIV (deleted persons cannot change language; unknown ones have nothing to show).
    pub fn holds(&self, entry: &Entry) -> bool {
        if entry.seq <= self.header().journal_seq {
            return true;
        }
        if let Change::Reserve { .. } = entry.change {
            // Made after this snapshot was built: the overlay keeps it (the feed's fence).
            return false;
        }
        let Some(rec) = entry.change.person().and_then(|id| self.get(id)) else {
            return true;
        };
        if rec.is_slettet() {
            return true;
        }
        rec.spraak_oppdatert().is_some_and(|t| t > entry.at)
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, id: PersonId, spraak: Spraak) -> Entry {
        Entry {
            seq,
            at: Timestamp(1_795_176_000 + seq.cast_signed()),
            change: Change::SetSpraak { id, spraak },
        }
    }

    #[test]
    fn newer_changes_win_and_the_filter_sees_every_change() {
        let ids = crate::dev::generate::synthetic_ids(5000, 9).unwrap();
        let o = Overlay::new();
        assert!(o.is_empty());
        assert!(
            o.filter().is_empty(),
            "a new overlay's filter says nothing changed"
        );
        o.apply(&entry(2, ids[0], Spraak::Se));
        assert!(
            !o.filter().is_empty(),
            "one change and the filter's flag is set"
        );
        o.apply(&entry(1, ids[0], Spraak::Nn));
        let c = o.get(ids[0]).unwrap();
        assert_eq!((c.seq, c.spraak), (2, Spraak::Se));
        assert_eq!(
            std::str::from_utf8(c.segment()).unwrap(),
            r#","spraak":"se","spraak_oppdatert":"2026-11-20T13:00:02+01""#
        );
        for (i, &id) in ids.iter().enumerate().skip(1).step_by(2) {
            o.apply(&entry(10 + i as u64, id, Spraak::En));
        }
        let f = o.filter();
        for (i, &id) in ids.iter().enumerate() {
            if i == 0 || i % 2 == 1 {
                assert!(f.may_hold(id), "a changed person is never filtered out");
            }
        }
        // Unchanged persons mostly skip the map (2,500 of 2^21 bits are set).
        let passed = ids
            .iter()
            .step_by(2)
            .skip(1)
            .filter(|&&id| f.may_hold(id))
            .count();
        assert!(passed < 25, "{passed} unchanged persons passed the filter");
    }
}
