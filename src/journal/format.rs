//! The journal's bytes. `docs/format.md` describes the same layout in prose.
//!
//! A journal is a directory of segment files named `<first seq, 20 digits>.journal`, each
//!
//! ```text
//! segment header, SEGMENT_HEADER_LEN (24) bytes, little-endian:
//!   0  [u8; 8]  magic "KRRJRNL\0"
//!   8  u32      format version (1)
//!  12  u32      CRC32C of bytes 0..12 and 16..24
//!  16  u64      sequence number of the segment's first record
//! then records, one after the other:
//!   0  u32      payload length
//!   4  u32      CRC32C of bytes 8..(24 + payload length)
//!   8  u64      sequence number (each record's is the previous one's + 1)
//!  16  i64      time of the change, Unix seconds
//!  24  payload  the change: a kind byte, then the kind's fields
//! ```
//!
//! Payload kind 2, *set language* (written since the journal tells commit groups apart):
//! `u8 2`, `u64` personal number, `u8` language (0 nb, 1 nn, 2 en, 3 se), `u16` the record's
//! index in its commit group, `u16` the group's length: 14 bytes, a frame of 38. The
//! group fields let recovery tell a torn last group (unacknowledged) from damage to a group
//! whose sync returned (a later group follows it). Kind 1 is the same change without them
//! (10 bytes, a frame of 34), as older builds wrote it; it is still read.
//!
//! Payload kind 3, *change ids reserved for a snapshot*: `u8 3`, `u64` the snapshot's id
//! (its body checksum), `u64` how many of its persons changed, `u16` index, `u16` group
//! length (always a group of its own): 21 bytes, a frame of 45. The record's sequence
//! number is the first change id of the snapshot's changes, and it takes
//! `max(count, 1)` sequence numbers: the next record's is that much higher.

use crate::model::Spraak;
use crate::model::fnr::PersonId;
use crate::model::time::Timestamp;

/// First eight bytes of every segment.
pub const MAGIC: [u8; 8] = *b"KRRJRNL\0";
/// The format version this build writes and reads.
pub const VERSION: u32 = 1;
/// Segment header size.
pub const SEGMENT_HEADER_LEN: usize = 24;
/// Bytes of a frame before its payload.
pub const FRAME_HEADER_LEN: usize = 24;
/// Largest payload a reader accepts (anything longer is corruption).
pub const MAX_PAYLOAD: u32 = 4096;
/// The file naming the newest segment ever created (its first sequence number), written
/// durably each time a segment is created: a newest segment that disappears is noticed.
pub const HEAD: &str = "HEAD";
/// `HEAD` while it is written.
pub const HEAD_TMP: &str = "HEAD.tmp";

/// The text of `HEAD`.
pub fn head_text(first_seq: u64) -> String {
    format!("krr-journal-head 1 newest-segment {first_seq}\n")
}

/// The newest segment's first sequence number from `HEAD`'s text.
pub fn parse_head(text: &str) -> Option<u64> {
    text.strip_prefix("krr-journal-head 1 newest-segment ")?
        .strip_suffix('\n')?
        .parse()
        .ok()
}

/// File name suffix of a segment.
pub const SUFFIX: &str = "journal";

const KIND_SET_SPRAAK: u8 = 1;
const KIND_SET_SPRAAK_GROUPED: u8 = 2;
const KIND_RESERVE: u8 = 3;

/// Where a record sits in the commit group it was written and synced with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupPos {
    /// Its index in the group (0 for the first).
    pub index: u16,
    /// Records in the group.
    pub len: u16,
}

impl GroupPos {
    /// The sequence number of the group's first record, given this record's.
    pub fn first_seq(self, seq: u64) -> Option<u64> {
        seq.checked_sub(u64::from(self.index))
    }
}

/// One change a PATCH makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// `spraak` set (and `spraak_oppdatert` set to the entry's time).
    SetSpraak {
        /// Whose language.
        id: PersonId,
        /// The new language.
        spraak: Spraak,
    },
    /// Change ids reserved for a snapshot's own changes, when it is first served: the
    /// entry's sequence number is the first, and the snapshot's `count` changed persons
    /// get `seq..seq + count` in the order of its feed index.
    Reserve {
        /// The snapshot's id (its body checksum).
        snapshot: u64,
        /// Its changed persons.
        count: u64,
    },
}

impl Change {
    /// The person the change is for (none for a reservation).
    pub fn person(&self) -> Option<PersonId> {
        match *self {
            Change::SetSpraak { id, .. } => Some(id),
            Change::Reserve { .. } => None,
        }
    }

    /// Sequence numbers (change ids) the change takes: 1, or a reservation's count (at
    /// least 1).
    pub fn width(&self) -> u64 {
        match *self {
            Change::SetSpraak { .. } => 1,
            Change::Reserve { count, .. } => count.max(1),
        }
    }
}

/// A durable change: what, when, and its place in the journal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Sequence number (from 1, without gaps: each entry's is the one before's
    /// [`Entry::last_seq`] + 1). It is also the change's id in the feed.
    pub seq: u64,
    /// When the change was made (this is `spraak_oppdatert`).
    pub at: Timestamp,
    /// The change.
    pub change: Change,
}

impl Entry {
    /// The last sequence number the entry takes (a reservation takes several).
    pub fn last_seq(&self) -> u64 {
        self.seq + self.change.width() - 1
    }
}

fn spraak_code(s: Spraak) -> u8 {
    match s {
        Spraak::Nb => 0,
        Spraak::Nn => 1,
        Spraak::En => 2,
        Spraak::Se => 3,
    }
}

/// The name of the segment starting at `first_seq`.
pub fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}.{SUFFIX}")
}

/// The first sequence number a segment file name stands for, if it is one.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SUFFIX)?.strip_suffix('.')?;
    if digits.len() != 20 || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The 24 header bytes of a segment starting at `first_seq`.
pub fn segment_header(first_seq: u64) -> [u8; SEGMENT_HEADER_LEN] {
    let mut h = [0u8; SEGMENT_HEADER_LEN];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&first_seq.to_le_bytes());
    let crc = header_crc(&h);
    h[12..16].copy_from_slice(&crc.to_le_bytes());
    h
}

fn header_crc(h: &[u8; SEGMENT_HEADER_LEN]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&h[0..12]), &h[16..24])
}

/// Why a segment header was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// Fewer than 24 bytes.
    #[error("segment header is incomplete")]
    Short,
    /// Not a journal segment.
    #[error("not a krr journal segment (wrong magic number)")]
    Magic,
    /// A version this build cannot read.
    #[error("unsupported journal format version {0}")]
    Version(u32),
    /// The header's checksum does not match.
    #[error("segment header checksum mismatch")]
    Checksum,
}

/// Decodes a segment header; returns the first sequence number.
pub fn decode_segment_header(b: &[u8]) -> Result<u64, HeaderError> {
    let h: &[u8; SEGMENT_HEADER_LEN] = b
        .get(..SEGMENT_HEADER_LEN)
        .and_then(|s| s.try_into().ok())
        .ok_or(HeaderError::Short)?;
    if h[0..8] != MAGIC {
        return Err(HeaderError::Magic);
    }
    let version = u32::from_le_bytes(h[8..12].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(HeaderError::Version(version));
    }
    let crc = u32::from_le_bytes(h[12..16].try_into().expect("4 bytes"));
    if crc != header_crc(h) {
        return Err(HeaderError::Checksum);
    }
    Ok(u64::from_le_bytes(h[16..24].try_into().expect("8 bytes")))
}

/// Appends the frame of `entry` to `out` as payload kind 1 (no group fields; what older
/// builds wrote, kept for crafting such journals in tests and tools).
pub fn encode(entry: &Entry, out: &mut Vec<u8>) {
    encode_frame(entry, None, out);
}

/// Appends the frame of `entry`, record `group.index` of a group of `group.len`.
pub fn encode_grouped(entry: &Entry, group: GroupPos, out: &mut Vec<u8>) {
    encode_frame(entry, Some(group), out);
}

fn encode_frame(entry: &Entry, group: Option<GroupPos>, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0u8; 8]);
    out.extend_from_slice(&entry.seq.to_le_bytes());
    out.extend_from_slice(&entry.at.0.to_le_bytes());
    match entry.change {
        Change::SetSpraak { id, spraak } => {
            out.push(if group.is_some() {
                KIND_SET_SPRAAK_GROUPED
            } else {
                KIND_SET_SPRAAK
            });
            out.extend_from_slice(&id.key().to_le_bytes());
            out.push(spraak_code(spraak));
        }
        Change::Reserve { snapshot, count } => {
            out.push(KIND_RESERVE);
            out.extend_from_slice(&snapshot.to_le_bytes());
            out.extend_from_slice(&count.to_le_bytes());
        }
    }
    // A reservation always says its group (a group of its own).
    let group = match entry.change {
        Change::Reserve { .. } => Some(group.unwrap_or(GroupPos { index: 0, len: 1 })),
        Change::SetSpraak { .. } => group,
    };
    if let Some(g) = group {
        out.extend_from_slice(&g.index.to_le_bytes());
        out.extend_from_slice(&g.len.to_le_bytes());
    }
    let payload_len = (out.len() - start - FRAME_HEADER_LEN) as u32;
    let crc = crc32c::crc32c(&out[start + 8..]);
    out[start..start + 4].copy_from_slice(&payload_len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Why the bytes at some offset are not a good frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The bytes end inside a frame (a write cut short by a crash).
    #[error("the last record is incomplete (torn write)")]
    Torn,
    /// The length field is impossible.
    #[error("record length {0} is impossible")]
    Length(u32),
    /// The checksum does not match the bytes.
    #[error("record checksum mismatch")]
    Checksum,
    /// A payload of a kind this build does not know, or with wrong fields.
    #[error("record payload is not a known change")]
    Payload,
}

/// Decodes the frame at the start of `b`; returns the entry and the frame's length.
/// Sequence continuity is the caller's check.
pub fn decode(b: &[u8]) -> Result<(Entry, usize), FrameError> {
    decode_frame(b).map(|(e, len, _)| (e, len))
}

/// [`decode`], with the record's place in its commit group (`None` for kind 1 records,
/// which do not say).
pub fn decode_frame(b: &[u8]) -> Result<(Entry, usize, Option<GroupPos>), FrameError> {
    if b.len() < FRAME_HEADER_LEN {
        return Err(FrameError::Torn);
    }
    let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
    let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
    let len = u32_at(0);
    if len == 0 || len > MAX_PAYLOAD {
        return Err(FrameError::Length(len));
    }
    let total = FRAME_HEADER_LEN + len as usize;
    if b.len() < total {
        return Err(FrameError::Torn);
    }
    if crc32c::crc32c(&b[8..total]) != u32_at(4) {
        return Err(FrameError::Checksum);
    }
    let seq = u64_at(8);
    let at = Timestamp(u64_at(16).cast_signed());
    let payload = &b[FRAME_HEADER_LEN..total];
    if let [KIND_RESERVE, rest @ ..] = payload {
        if rest.len() != 20 {
            return Err(FrameError::Payload);
        }
        let u64_of = |i: usize| u64::from_le_bytes(rest[i..i + 8].try_into().expect("8 bytes"));
        let g = GroupPos {
            index: u16::from_le_bytes([rest[16], rest[17]]),
            len: u16::from_le_bytes([rest[18], rest[19]]),
        };
        let count = u64_of(8);
        if g.index >= g.len || count > i64::MAX as u64 / 2 {
            return Err(FrameError::Payload);
        }
        let change = Change::Reserve {
            snapshot: u64_of(0),
            count,
        };
        return Ok((Entry { seq, at, change }, total, Some(g)));
    }
    let (rest, group) = match payload {
        [KIND_SET_SPRAAK, rest @ ..] if rest.len() == 9 => (rest, None),
        [KIND_SET_SPRAAK_GROUPED, rest @ ..] if rest.len() == 13 => {
            let u = |i: usize| u16::from_le_bytes([rest[i], rest[i + 1]]);
            let g = GroupPos {
                index: u(9),
                len: u(11),
            };
            if g.index >= g.len {
                return Err(FrameError::Payload);
            }
            (rest, Some(g))
        }
        _ => return Err(FrameError::Payload),
    };
    let id = PersonId::from_key(u64::from_le_bytes(rest[..8].try_into().expect("8")))
        .ok_or(FrameError::Payload)?;
    let spraak = *Spraak::ALL
        .get(usize::from(rest[8]))
        .ok_or(FrameError::Payload)?;
    let change = Change::SetSpraak { id, spraak };
    Ok((Entry { seq, at, change }, total, group))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64) -> Entry {
        Entry {
            seq,
            at: Timestamp(1_790_000_000),
            change: Change::SetSpraak {
                id: PersonId::parse(b"20914695016").unwrap(),
                spraak: Spraak::Se,
            },
        }
    }

    #[test]
    fn frames_round_trip() {
        let mut out = Vec::new();
        encode(&entry(7), &mut out);
        assert_eq!(out.len(), 34);
        assert_eq!(decode(&out), Ok((entry(7), 34)));
        for cut in 0..out.len() {
            assert_eq!(decode(&out[..cut]), Err(FrameError::Torn), "cut at {cut}");
        }
        for i in 4..out.len() {
            let mut bad = out.clone();
            bad[i] ^= 0x40;
            assert_eq!(decode(&bad), Err(FrameError::Checksum), "flip at {i}");
        }
        let mut zero = out.clone();
        zero[..4].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(decode(&zero), Err(FrameError::Length(0)));
        assert_eq!(decode(&[0u8; 64]), Err(FrameError::Length(0)));
    }

    #[test]
    fn grouped_frames_round_trip() {
        let g = GroupPos { index: 2, len: 5 };
        let mut out = Vec::new();
        encode_grouped(&entry(9), g, &mut out);
        assert_eq!(out.len(), 38);
        assert_eq!(decode_frame(&out), Ok((entry(9), 38, Some(g))));
        assert_eq!(g.first_seq(9), Some(7));
        let mut bad = Vec::new();
        encode_grouped(&entry(9), GroupPos { index: 5, len: 5 }, &mut bad);
        assert_eq!(decode(&bad), Err(FrameError::Payload));
    }

    #[test]
    fn reservations_round_trip_and_take_their_width() {
        let e = Entry {
            seq: 100,
            at: Timestamp(1_790_000_000),
            change: Change::Reserve {
                snapshot: 0xfeed,
                count: 5000,
            },
        };
        let mut out = Vec::new();
        encode_grouped(&e, GroupPos { index: 0, len: 1 }, &mut out);
        assert_eq!(out.len(), 45);
        let (back, len, g) = decode_frame(&out).unwrap();
        assert_eq!((back, len, g), (e, 45, Some(GroupPos { index: 0, len: 1 })));
        assert_eq!(back.last_seq(), 5099);
        let empty = Change::Reserve {
            snapshot: 1,
            count: 0,
        };
        assert_eq!(
            empty.width(),
            1,
            "a reservation takes at least its own number"
        );
    }

    #[test]
    fn segment_headers() {
        let h = segment_header(42);
        assert_eq!(decode_segment_header(&h), Ok(42));
        assert_eq!(decode_segment_header(&h[..10]), Err(HeaderError::Short));
        let mut bad = h;
        bad[20] ^= 1;
        assert_eq!(decode_segment_header(&bad), Err(HeaderError::Checksum));
        let mut bad = h;
        bad[0] = b'X';
        assert_eq!(decode_segment_header(&bad), Err(HeaderError::Magic));
        assert_eq!(segment_name(42), "00000000000000000042.journal");
        assert_eq!(parse_segment_name(&segment_name(42)), Some(42));
        assert_eq!(parse_segment_name("42.journal"), None);
        assert_eq!(parse_segment_name("00000000000000000042.journal.tmp"), None);
    }
}
