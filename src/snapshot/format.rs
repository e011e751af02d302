//! The snapshot file format, version 2. `docs/format.md` describes the same bytes in prose.
//!
//! ```text
//! offset 0    header, HEADER_LEN (256) bytes, little-endian, fields at the offsets in `off`
//! offset 256  body: an rkyv 0.8 archive (little-endian, 64-bit relative pointers) of `Body`
//! ```
//!
//! The body holds three things:
//! - `slots`: an open-addressing hash table (power-of-two length, linear probing) of
//!   `(key, offset)` pairs, `key` being the personal number as an integer and `offset` the
//!   record's position in `records`; empty slots have `key == EMPTY`. Slots are 16 bytes, four
//!   to a cache line, and the table is at most 70 % full, so a lookup usually reads one line.
//! - `records`: every person pre-rendered (see [`crate::render`]), each preceded by a
//!   `RECORD_HEADER_LEN`-byte header of segment lengths, the certificate number and flags.
//! - `certs`: the pre-rendered `,"sertifikat":"…"` segment of each distinct certificate,
//!   stored once and shared by every person whose mailbox provider uses it.
//! - `feed_keys`, `feed_ids`: the change feed's index, every person (and every person gone
//!   from the register since a snapshot before) once, in ascending order of their latest
//!   change id. The first `feed_ids.len()` entries have their ids (changes of earlier
//!   snapshots and folded PATCHes); the rest are this snapshot's own changes, which are
//!   numbered when the snapshot is first served (`base + i`, from the journal's
//!   reservation), so their ids are above every id of the journal when it is served.
//!   Each record's header holds its position in the feed.
//!
//! The body checksum is xxh3-64 over the little-endian xxh3-64 of each `CHECKSUM_CHUNK`-sized
//! piece of the body, so it can be verified on several cores. The header has its own
//! xxh3-64 over its first 248 bytes.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::model::time::Timestamp;
use crate::snapshot::SnapshotError;

/// First eight bytes of every snapshot.
pub const MAGIC: [u8; 8] = *b"KRRSNAP\0";
/// The format version this build writes and reads.
pub const VERSION: u32 = 2;
/// Header size; the body starts here (a multiple of the body's alignment).
pub const HEADER_LEN: usize = 256;
/// Size of the pieces the body checksum is computed over.
pub const CHECKSUM_CHUNK: usize = 64 << 20;
/// A slot key that no personal number has.
pub const EMPTY: u64 = u64::MAX;
/// Bytes before each record's segments.
pub const RECORD_HEADER_LEN: usize = 18;
/// Certificate number meaning "no certificate".
pub const NO_CERT: u16 = u16::MAX;
/// Largest share of slots in use.
pub const MAX_LOAD_PERCENT: u64 = 70;

/// Byte offsets of the header fields.
pub mod off {
    /// `[u8; 8]` magic.
    pub const MAGIC: usize = 0;
    /// `u32` format version.
    pub const VERSION: usize = 8;
    /// `u32` header length (always 256 in version 1).
    pub const HEADER_LEN: usize = 12;
    /// `u64` body length in bytes; the file is exactly header + body.
    pub const BODY_LEN: usize = 16;
    /// `u64` body checksum.
    pub const BODY_CHECKSUM: usize = 24;
    /// `i64` build time, Unix seconds.
    pub const BUILD_TIME: usize = 32;
    /// `u64` last journal sequence number folded in (0: none).
    pub const JOURNAL_SEQ: usize = 40;
    /// `u64` persons.
    pub const RECORDS: usize = 48;
    /// `u64` persons with status AKTIV.
    pub const AKTIV: usize = 56;
    /// `u64` persons with status SLETTET.
    pub const SLETTET: usize = 64;
    /// `u64` persons reserved (`reservasjon` JA).
    pub const RESERVERT: usize = 72;
    /// `u64` persons with varslingsstatus KAN_VARSLES.
    pub const KAN_VARSLES: usize = 80;
    /// `u64` persons with a digital mailbox.
    pub const DIGITAL_POST: usize = 88;
    /// `u32` distinct certificates.
    pub const CERTS: usize = 96;
    /// `u32` longest probe sequence in the slot table.
    pub const MAX_PROBE: usize = 100;
    /// `u64` entries of the change feed's index (persons, and persons gone).
    pub const FEED_ENTRIES: usize = 104;
    /// `u64` of them, this snapshot's own changes (numbered when it is first served).
    pub const FEED_PENDING: usize = 112;
    /// `u64` the id (body checksum) of the snapshot this one was compared with (0: none,
    /// a first build).
    pub const PREVIOUS: usize = 120;
    /// `u64` xxh3-64 of header bytes `0..HEADER_CHECKSUM`.
    pub const HEADER_CHECKSUM: usize = 248;
}

/// Record header field offsets (each `u16`, little-endian).
pub mod rec {
    /// Length of the head segment.
    pub const HEAD: usize = 0;
    /// Length of the varsling segment.
    pub const VARSLING: usize = 2;
    /// Length of the kontakt segment.
    pub const KONTAKT: usize = 4;
    /// Length of the digital post segment.
    pub const DIGITAL: usize = 6;
    /// Length of the spraak segment.
    pub const SPRAAK: usize = 8;
    /// Certificate number, or `NO_CERT`.
    pub const CERT: usize = 10;
    /// Flags (`FLAG_*`).
    pub const FLAGS: usize = 12;
    /// `u32`: the person's position in the change feed's index.
    pub const FEED: usize = 14;
}

/// Record flag: the person is SLETTET.
pub const FLAG_SLETTET: u16 = 1;
/// Record flag: the person is reserved.
pub const FLAG_RESERVERT: u16 = 1 << 1;
/// Record flag: varslingsstatus is KAN_VARSLES.
pub const FLAG_KAN_VARSLES: u16 = 1 << 2;
/// Record flag: the person has a digital mailbox.
pub const FLAG_DIGITAL_POST: u16 = 1 << 3;

/// The archived body.
#[derive(rkyv::Archive, rkyv::Serialize, Debug, Default)]
pub struct Body {
    /// The hash table.
    pub slots: Vec<Slot>,
    /// Pre-rendered persons (archived as one byte vector).
    pub records: RecordPieces,
    /// Pre-rendered certificate segments.
    pub certs: Vec<Vec<u8>>,
    /// The change feed's index: personal numbers (as integers), ascending change id.
    pub feed_keys: Vec<u64>,
    /// The change ids of the first `feed_ids.len()` entries of `feed_keys`, ascending.
    pub feed_ids: Vec<u64>,
}

/// The records as the builder rendered them, piece by piece; archived as one contiguous
/// `ArchivedVec<u8>` (the pieces are written one after the other), so the builder never
/// has to concatenate gigabytes in memory.
#[derive(Default)]
pub struct RecordPieces {
    /// The pieces, in order.
    pub pieces: Vec<Vec<u8>>,
}

impl RecordPieces {
    /// Total length in bytes.
    pub fn len(&self) -> usize {
        self.pieces.iter().map(Vec::len).sum()
    }

    /// True when there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl std::fmt::Debug for RecordPieces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordPieces")
            .field("pieces", &self.pieces.len())
            .field("bytes", &self.len())
            .finish()
    }
}

impl rkyv::Archive for RecordPieces {
    type Archived = rkyv::vec::ArchivedVec<u8>;
    type Resolver = rkyv::vec::VecResolver;

    fn resolve(&self, resolver: Self::Resolver, out: rkyv::Place<Self::Archived>) {
        rkyv::vec::ArchivedVec::resolve_from_len(self.len(), resolver, out);
    }
}

impl<S> rkyv::Serialize<S> for RecordPieces
where
    S: rkyv::rancor::Fallible + rkyv::ser::Writer<<S as rkyv::rancor::Fallible>::Error> + ?Sized,
{
    fn serialize(&self, s: &mut S) -> Result<Self::Resolver, S::Error> {
        // Bytes need no alignment; the vector's elements start here.
        let pos = s.pos();
        for piece in &self.pieces {
            s.write(piece)?;
        }
        Ok(rkyv::vec::VecResolver::from_pos(pos))
    }
}

/// One hash table slot.
#[derive(rkyv::Archive, rkyv::Serialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    /// Personal number as integer, or [`EMPTY`].
    pub key: u64,
    /// Offset of the record in `records`.
    pub offset: u64,
}

impl Slot {
    /// An unused slot.
    pub const EMPTY: Slot = Slot {
        key: EMPTY,
        offset: 0,
    };
}

/// The slot a key's probe sequence starts at (murmur3's 64-bit finaliser, masked).
#[inline]
pub fn home_slot(key: u64, mask: usize) -> usize {
    let mut h = key;
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    (h as usize) & mask
}

/// Number of slots for `n` persons: a power of two keeping the load at most 70 %.
pub fn slot_count(n: u64) -> usize {
    let min = (n * 100).div_ceil(MAX_LOAD_PERCENT).max(16);
    min.next_power_of_two() as usize
}

/// Counts of the register, kept in the header so `inspect` can show them without the body.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// All persons.
    pub records: u64,
    /// Status AKTIV.
    pub aktiv: u64,
    /// Status SLETTET.
    pub slettet: u64,
    /// Reserved.
    pub reservert: u64,
    /// KAN_VARSLES.
    pub kan_varsles: u64,
    /// With a digital mailbox.
    pub digital_post: u64,
    /// Distinct certificates.
    pub certs: u32,
}

/// What a snapshot holds of the change feed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FeedCounts {
    /// Entries of the feed's index (every person once, and persons gone).
    pub entries: u64,
    /// This snapshot's own changes: numbered from the journal's reservation when served.
    pub pending: u64,
    /// The id (body checksum) of the snapshot compared with; 0 for a first build.
    pub previous: u64,
}

/// How far ahead of this machine's clock a snapshot's build time may be (clock skew
/// between the machine that builds and the one that serves). Further ahead, a build is
/// refused and a file is never served.
pub const MAX_FUTURE_SKEW_SECS: i64 = 300;

/// The decoded header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Format version.
    pub version: u32,
    /// Body length in bytes.
    pub body_len: u64,
    /// Body checksum.
    pub body_checksum: u64,
    /// When the snapshot was built.
    pub build_time: Timestamp,
    /// Last journal sequence number folded in.
    pub journal_seq: u64,
    /// Register counts.
    pub counts: Counts,
    /// Longest probe sequence in the slot table.
    pub max_probe: u32,
    /// The change feed's counts.
    pub feed: FeedCounts,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl Header {
    /// The snapshot's id: its body checksum in hex (content-addressed, stable across copies).
    pub fn id(&self) -> String {
        format!("{:016x}", self.body_checksum)
    }

    /// The header's bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[off::MAGIC..off::MAGIC + 8].copy_from_slice(&MAGIC);
        let mut put32 = |at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_le_bytes());
        put32(off::VERSION, self.version);
        put32(off::HEADER_LEN, HEADER_LEN as u32);
        put32(off::CERTS, self.counts.certs);
        put32(off::MAX_PROBE, self.max_probe);
        let mut put64 = |at: usize, v: u64| b[at..at + 8].copy_from_slice(&v.to_le_bytes());
        put64(off::BODY_LEN, self.body_len);
        put64(off::BODY_CHECKSUM, self.body_checksum);
        put64(off::BUILD_TIME, self.build_time.0.cast_unsigned());
        put64(off::JOURNAL_SEQ, self.journal_seq);
        put64(off::RECORDS, self.counts.records);
        put64(off::AKTIV, self.counts.aktiv);
        put64(off::SLETTET, self.counts.slettet);
        put64(off::RESERVERT, self.counts.reservert);
        put64(off::KAN_VARSLES, self.counts.kan_varsles);
        put64(off::DIGITAL_POST, self.counts.digital_post);
        put64(off::FEED_ENTRIES, self.feed.entries);
        put64(off::FEED_PENDING, self.feed.pending);
        put64(off::PREVIOUS, self.feed.previous);
        let sum = xxhash_rust::xxh3::xxh3_64(&b[..off::HEADER_CHECKSUM]);
        b[off::HEADER_CHECKSUM..].copy_from_slice(&sum.to_le_bytes());
        b
    }

    /// Reads and checks the header of the snapshot file at `path` (its first
    /// [`HEADER_LEN`] bytes), without reading the body.
    pub fn read(path: &Path) -> Result<Header, SnapshotError> {
        let file = File::open(path).map_err(|source| SnapshotError::Io {
            path: path.to_owned(),
            source,
        })?;
        Header::read_from(&file, path)
    }

    /// [`Header::read`] of an open file.
    pub fn read_from(file: &File, path: &Path) -> Result<Header, SnapshotError> {
        let io = |source| SnapshotError::Io {
            path: path.to_owned(),
            source,
        };
        let len = file.metadata().map_err(io)?.len();
        if len < HEADER_LEN as u64 {
            return Err(SnapshotError::TooShort { len });
        }
        let mut head = [0u8; HEADER_LEN];
        file.read_exact_at(&mut head, 0).map_err(io)?;
        Header::decode(&head)
    }

    /// Decodes and checks a header: magic, version, header length and header checksum.
    pub fn decode(b: &[u8]) -> Result<Header, SnapshotError> {
        if b.len() < HEADER_LEN {
            return Err(SnapshotError::TooShort {
                len: b.len() as u64,
            });
        }
        if b[off::MAGIC..off::MAGIC + 8] != MAGIC {
            return Err(SnapshotError::BadMagic);
        }
        let version = u32_at(b, off::VERSION);
        if version != VERSION {
            return Err(SnapshotError::UnsupportedVersion {
                found: version,
                supported: VERSION,
            });
        }
        let header_len = u32_at(b, off::HEADER_LEN);
        if header_len as usize != HEADER_LEN {
            return Err(SnapshotError::HeaderLength { found: header_len });
        }
        let sum = xxhash_rust::xxh3::xxh3_64(&b[..off::HEADER_CHECKSUM]);
        if sum != u64_at(b, off::HEADER_CHECKSUM) {
            return Err(SnapshotError::HeaderChecksum);
        }
        let h = Header {
            version,
            body_len: u64_at(b, off::BODY_LEN),
            body_checksum: u64_at(b, off::BODY_CHECKSUM),
            build_time: Timestamp(u64_at(b, off::BUILD_TIME).cast_signed()),
            journal_seq: u64_at(b, off::JOURNAL_SEQ),
            counts: Counts {
                records: u64_at(b, off::RECORDS),
                aktiv: u64_at(b, off::AKTIV),
                slettet: u64_at(b, off::SLETTET),
                reservert: u64_at(b, off::RESERVERT),
                kan_varsles: u64_at(b, off::KAN_VARSLES),
                digital_post: u64_at(b, off::DIGITAL_POST),
                certs: u32_at(b, off::CERTS),
            },
            max_probe: u32_at(b, off::MAX_PROBE),
            feed: FeedCounts {
                entries: u64_at(b, off::FEED_ENTRIES),
                pending: u64_at(b, off::FEED_PENDING),
                previous: u64_at(b, off::PREVIOUS),
            },
        };
        h.check_ranges()?;
        Ok(h)
    }

    /// Every field within what a build can write: a header with a valid checksum but
    /// impossible values (a build tool's bug, a hand-made file) is refused here, before
    /// anything formats or trusts a field.
    fn check_ranges(&self) -> Result<(), SnapshotError> {
        let bad = |what: String| Err(SnapshotError::HeaderField(what));
        if self.build_time < crate::model::time::MIN || self.build_time > crate::model::time::MAX {
            return bad(format!(
                "build time {} (Unix seconds) is outside 1970..2099",
                self.build_time.0
            ));
        }
        let c = &self.counts;
        if c.aktiv.checked_add(c.slettet) != Some(c.records) {
            return bad(format!(
                "AKTIV ({}) and SLETTET ({}) do not add up to the records ({})",
                c.aktiv, c.slettet, c.records
            ));
        }
        for (name, n) in [
            ("reserved", c.reservert),
            ("notifiable", c.kan_varsles),
            ("digital post", c.digital_post),
            ("certificates", u64::from(c.certs)),
        ] {
            if n > c.records {
                return bad(format!("{name} ({n}) exceeds the records ({})", c.records));
            }
        }
        if self.feed.entries < c.records || self.feed.pending > self.feed.entries {
            return bad(format!(
                "the change feed's {} entries ({} pending) do not cover the {} records",
                self.feed.entries, self.feed.pending, c.records
            ));
        }
        if self.journal_seq > i64::MAX as u64 {
            return bad(format!(
                "journal sequence number {} is out of range",
                self.journal_seq
            ));
        }
        Ok(())
    }
}

/// Streaming computation of the body checksum.
pub struct BodyHasher {
    chunk: xxhash_rust::xxh3::Xxh3,
    in_chunk: usize,
    chunk_sums: Vec<u8>,
}

impl std::fmt::Debug for BodyHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyHasher")
            .field("in_chunk", &self.in_chunk)
            .field("chunks", &(self.chunk_sums.len() / 8))
            .finish()
    }
}

impl Default for BodyHasher {
    fn default() -> Self {
        BodyHasher {
            chunk: xxhash_rust::xxh3::Xxh3::new(),
            in_chunk: 0,
            chunk_sums: Vec::new(),
        }
    }
}

impl BodyHasher {
    /// Feeds the next bytes of the body.
    pub fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let take = (CHECKSUM_CHUNK - self.in_chunk).min(data.len());
            self.chunk.update(&data[..take]);
            self.in_chunk += take;
            data = &data[take..];
            if self.in_chunk == CHECKSUM_CHUNK {
                self.chunk_sums
                    .extend_from_slice(&self.chunk.digest().to_le_bytes());
                self.chunk.reset();
                self.in_chunk = 0;
            }
        }
    }

    /// The checksum of everything fed.
    pub fn finish(mut self) -> u64 {
        if self.in_chunk > 0 {
            self.chunk_sums
                .extend_from_slice(&self.chunk.digest().to_le_bytes());
        }
        xxhash_rust::xxh3::xxh3_64(&self.chunk_sums)
    }
}

/// The body checksum of `body`, computed on up to `threads` threads.
pub fn body_checksum(body: &[u8], threads: usize) -> u64 {
    let chunks: Vec<&[u8]> = body.chunks(CHECKSUM_CHUNK).collect();
    let mut sums = vec![0u64; chunks.len()];
    let threads = threads.clamp(1, chunks.len().max(1));
    let per = chunks.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        for (cs, out) in chunks.chunks(per).zip(sums.chunks_mut(per)) {
            s.spawn(move || {
                for (c, o) in cs.iter().zip(out.iter_mut()) {
                    *o = xxhash_rust::xxh3::xxh3_64(c);
                }
            });
        }
    });
    let bytes: Vec<u8> = sums.iter().flat_map(|s| s.to_le_bytes()).collect();
    xxhash_rust::xxh3::xxh3_64(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streaming_and_parallel_checksums_agree() {
        let pattern: Vec<u8> = (0..=250u8).collect();
        let mut data = pattern.repeat((CHECKSUM_CHUNK * 2 + 12345) / pattern.len() + 1);
        data.truncate(CHECKSUM_CHUNK * 2 + 12345);
        let mut h = BodyHasher::default();
        for piece in data.chunks(1_000_003) {
            h.update(piece);
        }
        let streamed = h.finish();
        assert_eq!(streamed, body_checksum(&data, 1));
        assert_eq!(streamed, body_checksum(&data, 2));
        assert_eq!(streamed, body_checksum(&data, 8));
        let mut flipped = data.clone();
        flipped[CHECKSUM_CHUNK + 5] ^= 1;
        assert_ne!(streamed, body_checksum(&flipped, 2));
    }

    #[test]
    fn header_round_trip_and_checks() {
        let h = Header {
            version: VERSION,
            body_len: 1234,
            body_checksum: 0xdead_beef,
            build_time: Timestamp(1_700_000_000),
            journal_seq: 42,
            counts: Counts {
                records: 10,
                aktiv: 9,
                slettet: 1,
                reservert: 2,
                kan_varsles: 5,
                digital_post: 3,
                certs: 2,
            },
            max_probe: 3,
            feed: FeedCounts {
                entries: 12,
                pending: 4,
                previous: 7,
            },
        };
        let b = h.encode();
        assert_eq!(Header::decode(&b).unwrap(), h);
        let mut bad = b;
        bad[off::RECORDS] ^= 1;
        assert!(matches!(
            Header::decode(&bad),
            Err(SnapshotError::HeaderChecksum)
        ));
        assert!(matches!(
            Header::decode(&b[..100]),
            Err(SnapshotError::TooShort { len: 100 })
        ));
    }

    #[test]
    fn slot_counts() {
        assert_eq!(slot_count(0), 16);
        assert_eq!(slot_count(7), 16);
        assert_eq!(slot_count(1_000_000), 2_097_152);
        assert_eq!(slot_count(5_500_000), 8_388_608);
    }
}
