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

use std::hash::{BuildHasherDefault, Hasher};

use dashmap::DashMap;

use crate::fnr::PersonId;
use crate::journal::{Change, Entry};
use crate::model::Spraak;
use crate::render;
use crate::snapshot::Snapshot;
use crate::time::Timestamp;

/// One person's acknowledged language change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Changed {
    /// The journal sequence number of the change.
    pub seq: u64,
    /// When it was made (`spraak_oppdatert`).
    pub at: Timestamp,
    /// The new language.
    pub spraak: Spraak,
    /// `,"spraak":"…","spraak_oppdatert":"…"`, as the record's spraak segment would be.
    segment: Box<[u8]>,
}

impl Changed {
    /// The pre-rendered spraak segment.
    pub fn segment(&self) -> &[u8] {
        &self.segment
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

/// Changed persons by personal number.
#[derive(Debug, Default)]
pub struct Overlay {
    map: DashMap<u64, Changed, BuildHasherDefault<IdHasher>>,
}

impl Overlay {
    /// An empty overlay.
    pub fn new() -> Overlay {
        Overlay::default()
    }

    /// Applies a durable journal entry; an entry older than the one held is ignored.
    pub fn apply(&self, entry: &Entry) {
        let Change::SetSpraak { id, spraak } = entry.change;
        let mut segment = Vec::with_capacity(64);
        render::write_spraak(Some(spraak), Some(entry.at), &mut segment);
        let changed = Changed {
            seq: entry.seq,
            at: entry.at,
            spraak,
            segment: segment.into_boxed_slice(),
        };
        self.map
            .entry(id.key())
            .and_modify(|held| {
                if held.seq < changed.seq {
                    *held = changed.clone();
                }
            })
            .or_insert(changed);
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
            Some(c) => f(Some(&c.segment)),
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

    /// True when nothing is changed (checked once per request, not per id).
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
        before.saturating_sub(self.map.len())
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
        let Some(rec) = self.get(entry.change.person()) else {
            return true;
        };
        if rec.is_slettet() {
            return true;
        }
        rec.spraak_oppdatert().is_some_and(|t| t > entry.at)
    }
}
