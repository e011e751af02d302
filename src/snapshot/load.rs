//! Opening a snapshot: check, map, verify, and read persons in place.
//!
//! # Safety
//!
//! This is the crate's only module with `unsafe` code, for two reasons:
//!
//! 1. **Mapping the file** (`MmapOptions::map`). A mapping is only sound while nobody
//!    changes the file underneath it. Snapshot files are immutable by contract: the builder
//!    writes a temporary file and renames it into place, and a newer snapshot is a new file,
//!    never an edit of an old one (`docs/format.md` says so to operators). Replacing or
//!    deleting the path does not affect an existing mapping: the old inode lives on until the
//!    last reader unmaps it.
//!    The builder maps its input export the same way and under the same contract.
//! 2. **Reading the archive without re-validating it** (`rkyv::access_unchecked`). The body
//!    is validated once with `rkyv::access` (bytecheck) in [`Snapshot::open`], after its
//!    checksum matched; the mapping is immutable afterwards, so later accesses may skip it.

#![allow(unsafe_code)]

use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::{Mmap, MmapOptions};

use crate::model::Groups;
use crate::model::fnr::PersonId;
use crate::render;
use crate::snapshot::SnapshotError;
use crate::snapshot::format::{
    self, ArchivedBody, EMPTY, HEADER_LEN, Header, RECORD_HEADER_LEN, home_slot,
};

pub use crate::snapshot::record::Record;

/// An open, verified snapshot. Cheap to share behind an `Arc`; unmapped when dropped.
pub struct Snapshot {
    map: Mmap,
    header: Header,
    path: PathBuf,
    mask: usize,
    /// The first change id of this snapshot's own changes, once the journal has reserved
    /// them (set before the snapshot is served; the feed answers nothing of a snapshot
    /// without it).
    feed_base: std::sync::OnceLock<u64>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("id", &self.header.id())
            .field("path", &self.path)
            .field("records", &self.header.counts.records)
            .finish()
    }
}

impl Snapshot {
    /// Opens `path`: checks the header, maps and prefaults the file, verifies the body
    /// checksum (on every core) and the archive's structure. Any failure is a precise
    /// [`SnapshotError`]; nothing is kept of a refused file.
    pub fn open(path: &Path) -> Result<Snapshot, SnapshotError> {
        let io = |source| SnapshotError::Io {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let header = Header::read_from(&file, path)?;
        let expected = (HEADER_LEN as u64).checked_add(header.body_len);
        if expected != Some(len) {
            return Err(SnapshotError::Length {
                expected: expected.unwrap_or(u64::MAX),
                actual: len,
            });
        }
        // SAFETY: snapshot files are never modified after they are renamed into place (see
        // the module documentation).
        let map = unsafe { MmapOptions::new().map(&file) }.map_err(io)?;
        prefault(&map);
        let body = &map[HEADER_LEN..];
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let actual = format::body_checksum(body, threads);
        if actual != header.body_checksum {
            return Err(SnapshotError::BodyChecksum {
                expected: header.body_checksum,
                actual,
            });
        }
        let archived = rkyv::access::<ArchivedBody, rkyv::rancor::Error>(body)
            .map_err(|e| SnapshotError::Layout(format!("archive does not validate: {e}")))?;
        let slots = archived.slots.as_slice();
        if !slots.len().is_power_of_two() {
            return Err(SnapshotError::Layout(
                "slot table length is not a power of two".into(),
            ));
        }
        if header.max_probe as usize >= slots.len() {
            return Err(SnapshotError::Layout(
                "probe limit exceeds the slot table".into(),
            ));
        }
        if archived.certs.len() != header.counts.certs as usize {
            return Err(SnapshotError::Layout(
                "certificate count differs from the header".into(),
            ));
        }
        let records_len = archived.records.len() as u64;
        let mut used = 0u64;
        for s in slots {
            if s.key.to_native() != EMPTY {
                used += 1;
                if s.offset
                    .to_native()
                    .checked_add(RECORD_HEADER_LEN as u64)
                    .is_none_or(|end| end > records_len)
                {
                    return Err(SnapshotError::Layout(
                        "a slot points past the records".into(),
                    ));
                }
            }
        }
        if used != header.counts.records {
            return Err(SnapshotError::Layout(format!(
                "{used} slots in use, header says {} persons",
                header.counts.records
            )));
        }
        let feed_keys = archived.feed_keys.len() as u64;
        let feed_ids = archived.feed_ids.as_slice();
        if feed_keys != header.feed.entries
            || feed_ids.len() as u64 != header.feed.entries - header.feed.pending
        {
            return Err(SnapshotError::Layout(
                "the change feed's index differs from the header".into(),
            ));
        }
        if feed_ids
            .windows(2)
            .any(|w| w[0].to_native() >= w[1].to_native())
        {
            return Err(SnapshotError::Layout(
                "the change feed's ids are not ascending".into(),
            ));
        }
        let mask = slots.len() - 1;
        Ok(Snapshot {
            map,
            header,
            path: path.to_owned(),
            mask,
            feed_base: std::sync::OnceLock::new(),
        })
    }

    #[inline]
    fn body(&self) -> &ArchivedBody {
        // SAFETY: the body was validated by `rkyv::access` in `open`, and the mapping is
        // immutable for the life of `self`.
        unsafe { rkyv::access_unchecked::<ArchivedBody>(&self.map[HEADER_LEN..]) }
    }

    /// The decoded header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The snapshot id (its body checksum in hex).
    pub fn id(&self) -> String {
        self.header.id()
    }

    /// The file this snapshot was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of persons.
    pub fn len(&self) -> u64 {
        self.header.counts.records
    }

    /// True for a snapshot of no persons.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Size of the mapped file in bytes.
    pub fn file_len(&self) -> u64 {
        self.map.len() as u64
    }

    /// Finds a person: one hash, usually one cache line of slots, then the record.
    #[inline]
    pub fn get(&self, id: PersonId) -> Option<Record<'_>> {
        self.find(id).and_then(|at| self.record_at(at))
    }

    /// Where `id`'s record starts, if the snapshot holds it (reads only the slot table).
    #[inline]
    pub fn find(&self, id: PersonId) -> Option<RecordOffset> {
        let slots = self.body().slots.as_slice();
        let key = id.key();
        let mut i = home_slot(key, self.mask);
        for _ in 0..=self.header.max_probe {
            let s = &slots[i];
            let k = s.key.to_native();
            if k == key {
                return Some(RecordOffset(s.offset.to_native() as usize));
            }
            if k == EMPTY {
                return None;
            }
            i = (i + 1) & self.mask;
        }
        None
    }

    /// The record at `at` (from [`Snapshot::find`]).
    #[inline]
    pub fn record_at(&self, at: RecordOffset) -> Option<Record<'_>> {
        Record::decode(self.body().records.as_slice(), at.0)
    }

    /// Hints the CPU to start loading the record at `at`.
    #[inline]
    pub fn prefetch_record(&self, at: RecordOffset) {
        let records = self.body().records.as_slice();
        // Records average about 480 bytes; the first four lines hold most of one, and the
        // hardware prefetcher follows on from there.
        for line in 0..8 {
            if let Some(b) = records.get(at.0 + line * 64) {
                prefetch_read(b);
            }
        }
    }

    /// Hints the CPU to start loading the slot `id` hashes to.
    #[inline]
    pub fn prefetch(&self, id: PersonId) {
        let slots = self.body().slots.as_slice();
        let s = &slots[home_slot(id.key(), self.mask)];
        prefetch_read(std::ptr::from_ref(s).cast());
    }

    /// The pre-rendered `,"sertifikat":"…"` segment of certificate `n`.
    #[inline]
    pub fn cert_segment(&self, n: u16) -> &[u8] {
        self.body()
            .certs
            .get(usize::from(n))
            .map_or(&[], |c| c.as_slice())
    }

    /// Appends `rec` rendered with `groups` (a whole JSON object): the record's segments
    /// and the certificate's, assembled by [`render::write_stored`]. `spraak`, when given,
    /// replaces the record's spraak segment (a change from the overlay).
    #[inline]
    pub fn write_record(
        &self,
        rec: &Record<'_>,
        groups: Groups,
        spraak: Option<&[u8]>,
        out: &mut Vec<u8>,
    ) {
        let cert = match rec.cert() {
            Some(c) if groups.contains(Groups::SERTIFIKAT) => Some(self.cert_segment(c)),
            _ => None,
        };
        render::write_stored(rec.stored(), cert, groups, spraak, out);
    }

    /// The snapshot's id as a number (its body checksum), as reservations name it.
    pub fn raw_id(&self) -> u64 {
        self.header.body_checksum
    }

    /// Entries of the change feed's index.
    #[inline]
    pub fn feed_len(&self) -> usize {
        self.body().feed_keys.len()
    }

    /// The personal number (as an integer) at `pos` of the feed's index.
    #[inline]
    pub fn feed_key(&self, pos: usize) -> u64 {
        self.body().feed_keys[pos].to_native()
    }

    /// The change id at `pos` of the feed's index, given the base of this snapshot's own
    /// changes.
    #[inline]
    pub fn feed_id(&self, pos: usize, base: u64) -> u64 {
        let ids = self.body().feed_ids.as_slice();
        match ids.get(pos) {
            Some(id) => id.to_native(),
            None => base + (pos - ids.len()) as u64,
        }
    }

    /// The first position of the feed's index whose change id is above `after`.
    pub fn feed_start(&self, after: u64, base: u64) -> usize {
        let ids = self.body().feed_ids.as_slice();
        let known = ids.partition_point(|id| id.to_native() <= after);
        if known < ids.len() {
            return known;
        }
        let own = after.saturating_sub(base.saturating_sub(1));
        (ids.len() as u64 + own).min(self.feed_len() as u64) as usize
    }

    /// The change id of the person whose record is `rec`, if its feed position is valid.
    #[inline]
    pub fn feed_id_of(&self, rec: &Record<'_>, base: u64) -> Option<u64> {
        let pos = rec.feed_position();
        (pos < self.feed_len()).then(|| self.feed_id(pos, base))
    }

    /// The base of this snapshot's own change ids, once reserved.
    pub fn feed_base(&self) -> Option<u64> {
        self.feed_base.get().copied()
    }

    /// Records the base of this snapshot's own change ids (the first value set stays).
    pub fn set_feed_base(&self, base: u64) {
        let _ = self.feed_base.set(base);
    }

    /// Every personal number in the snapshot, in slot order (for tools, tests and benches).
    pub fn ids(&self) -> impl Iterator<Item = PersonId> + '_ {
        self.body()
            .slots
            .as_slice()
            .iter()
            .map(|s| s.key.to_native())
            .filter(|&k| k != EMPTY)
            .filter_map(PersonId::from_key)
    }
}

/// Prefaults every page of `map` so the request path takes no page fault, asking first
/// for huge-page mappings: where the page cache holds the file in 2 MiB folios (ext4 and
/// others on recent kernels), each is then mapped by one page-table entry, and a random
/// lookup costs far fewer TLB misses. Both requests are hints; if the kernel refuses them,
/// every page is touched instead.
fn prefault(map: &Mmap) {
    #[cfg(target_os = "linux")]
    {
        let _ = map.advise(memmap2::Advice::HugePage);
        if map.advise(memmap2::Advice::PopulateRead).is_ok() {
            return;
        }
    }
    let mut sum = 0u8;
    for page in map.chunks(4096) {
        sum = sum.wrapping_add(page[0]);
    }
    std::hint::black_box(sum);
}

/// Maps an export read-only for the builder (multi-GB exports are not copied into memory).
pub(crate) fn map_input(file: &File) -> std::io::Result<Mmap> {
    // SAFETY: exports, like snapshots, are not modified while a build reads them (the
    // operator contract in `docs/format.md`); the builder only reads the bytes.
    let map = unsafe { Mmap::map(file) }?;
    // Hints only: map 2 MiB page-cache folios whole (far fewer faults over a multi-GB
    // export) and read ahead aggressively.
    #[cfg(target_os = "linux")]
    {
        let _ = map.advise(memmap2::Advice::HugePage);
        let _ = map.advise(memmap2::Advice::Sequential);
    }
    Ok(map)
}

/// Hints the CPU to start loading the cache line at `p` (never faults, whatever `p` is).
#[inline]
pub fn prefetch_read(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: a prefetch is only a hint; it never faults, whatever the address.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// The position of a record in a snapshot (valid only for the snapshot that gave it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordOffset(usize);
