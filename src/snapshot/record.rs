//! One person's record in a snapshot's records area: a [`RECORD_HEADER_LEN`]-byte header
//! (five segment lengths, the certificate number, flags; little-endian, at the offsets of
//! [`rec`]) followed by the segments. Written by the builder ([`encode_record_header`]) and
//! read by lookups ([`Record::decode`]), here only.

use crate::model::time::Timestamp;
use crate::render::Stored;
use crate::snapshot::format::{FLAG_SLETTET, NO_CERT, RECORD_HEADER_LEN, rec};

/// Writes a record header: the five segment lengths, the certificate number
/// ([`NO_CERT`] for none) and the flags, little-endian, at the offsets of [`rec`].
pub fn encode_record_header(h: &mut [u8], lens: &[u16; 5], cert: u16, flags: u16) {
    h[rec::FEED..rec::FEED + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    for (n, at) in [
        rec::HEAD,
        rec::VARSLING,
        rec::KONTAKT,
        rec::DIGITAL,
        rec::SPRAAK,
    ]
    .into_iter()
    .enumerate()
    {
        h[at..at + 2].copy_from_slice(&lens[n].to_le_bytes());
    }
    h[rec::CERT..rec::CERT + 2].copy_from_slice(&cert.to_le_bytes());
    h[rec::FLAGS..rec::FLAGS + 2].copy_from_slice(&flags.to_le_bytes());
}

/// One person's pre-rendered record inside a snapshot.
#[derive(Clone, Copy, Debug)]
pub struct Record<'a> {
    lens: [u16; 5],
    cert: u16,
    flags: u16,
    feed: u32,
    segments: &'a [u8],
}

/// Sets the feed position of the record at `offset` of `records`.
pub fn set_feed_position(records: &mut [u8], offset: usize, pos: u32) {
    let at = offset + rec::FEED;
    records[at..at + 4].copy_from_slice(&pos.to_le_bytes());
}

impl<'a> Record<'a> {
    /// Decodes the record at `offset` of the records area (`None` if it does not fit).
    #[inline]
    pub fn decode(records: &'a [u8], offset: usize) -> Option<Record<'a>> {
        let h = records.get(offset..offset + RECORD_HEADER_LEN)?;
        let u = |at: usize| u16::from_le_bytes([h[at], h[at + 1]]);
        let lens = [
            u(rec::HEAD),
            u(rec::VARSLING),
            u(rec::KONTAKT),
            u(rec::DIGITAL),
            u(rec::SPRAAK),
        ];
        let total: usize = lens.iter().map(|&l| usize::from(l)).sum();
        let start = offset + RECORD_HEADER_LEN;
        let segments = records.get(start..start + total)?;
        Some(Record {
            lens,
            cert: u(rec::CERT),
            flags: u(rec::FLAGS),
            feed: u32::from_le_bytes(h[rec::FEED..rec::FEED + 4].try_into().expect("4 bytes")),
            segments,
        })
    }

    #[inline]
    fn segment(&self, n: usize) -> &'a [u8] {
        let start: usize = self.lens[..n].iter().map(|&l| usize::from(l)).sum();
        &self.segments[start..start + usize::from(self.lens[n])]
    }

    /// `{"personidentifikator":…,"status":…` (no closing brace).
    #[inline]
    pub fn head(&self) -> &'a [u8] {
        self.segment(0)
    }
    /// `,"varslingsstatus":…`.
    #[inline]
    pub fn varsling(&self) -> &'a [u8] {
        self.segment(1)
    }
    /// `,"kontaktinformasjon":{…}` or empty.
    #[inline]
    pub fn kontakt(&self) -> &'a [u8] {
        self.segment(2)
    }
    /// `,"digital_post":{…}` or empty.
    #[inline]
    pub fn digital_post(&self) -> &'a [u8] {
        self.segment(3)
    }
    /// `,"spraak":…,"spraak_oppdatert":…` or empty.
    #[inline]
    pub fn spraak(&self) -> &'a [u8] {
        self.segment(4)
    }
    /// The person's certificate number, if any.
    #[inline]
    pub fn cert(&self) -> Option<u16> {
        (self.cert != NO_CERT).then_some(self.cert)
    }
    /// The segments in answer order, for [`crate::render::write_stored`].
    #[inline]
    pub fn stored(&self) -> Stored<'a> {
        Stored {
            segments: self.segments,
            lens: self.lens,
            slettet: self.is_slettet(),
        }
    }
    /// Record flags (`FLAG_*`).
    #[inline]
    pub fn flags(&self) -> u16 {
        self.flags
    }
    /// The person's position in the change feed's index.
    #[inline]
    pub fn feed_position(&self) -> usize {
        self.feed as usize
    }
    /// True for a SLETTET person.
    #[inline]
    pub fn is_slettet(&self) -> bool {
        self.flags & FLAG_SLETTET != 0
    }
    /// The stored `spraak_oppdatert`, read back from the spraak segment (not on the
    /// lookup path: the overlay uses it when a snapshot is published).
    pub fn spraak_oppdatert(&self) -> Option<Timestamp> {
        const KEY: &[u8] = b"\"spraak_oppdatert\":\"";
        let seg = self.spraak();
        let start = memchr::memmem::find(seg, KEY)? + KEY.len();
        let len = memchr::memchr(b'"', &seg[start..])?;
        let text = std::str::from_utf8(&seg[start..start + len]).ok()?;
        Timestamp::parse(text).ok()
    }
}
