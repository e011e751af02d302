//! Person → JSON, in the exact key order of `api.md`, never writing `null`.
//!
//! A person object is written as a sequence of *segments*, one per group, so that the
//! snapshot builder can store each segment pre-rendered and a lookup only has to copy the
//! segments the caller's scopes allow:
//!
//! ```text
//! {"personidentifikator":"…","reservasjon":"NEI","status":"AKTIV"   head (always)
//! ,"varslingsstatus":"KAN_VARSLES"                                  varsling
//! ,"kontaktinformasjon":{…}                                         kontakt
//! ,"digital_post":{…}                                               digitalpost
//! ,"sertifikat":"MII…"                                              sertifikat
//! ,"spraak":"nb","spraak_oppdatert":"…"                             spraak
//! }
//! ```
//!
//! Each segment starts with its own comma, so any subset concatenates into valid JSON.
//!
//! Every byte of an answer's JSON is written here: the segments (at build time), a stored
//! person assembled from its segments ([`write_stored`], at request time), a person not in
//! the register ([`write_not_registered`]), the `{"personer":[…]}` frame
//! ([`PERSONER_OPEN`], [`PERSONER_CLOSE`]), the error body ([`write_error`]), the
//! `printSertifikat` answer ([`write_print_provider`]) and string escaping ([`write_str`]).

use crate::model::Groups;
use crate::model::fnr::PersonId;
use crate::model::time::Timestamp;
use crate::model::{
    DigitalPost, Kontaktinformasjon, Person, Reservasjon, Spraak, Status, Varslingsstatus,
};

/// Appends the JSON escape `\u00XX` of the byte `c` (the one writer of it: JSON strings
/// here, the access line in `krr::http::access`).
pub fn write_u_escape(c: u8, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.extend_from_slice(b"\\u00");
    out.push(HEX[usize::from(c >> 4)]);
    out.push(HEX[usize::from(c & 0xf)]);
}

/// Appends `s` as a JSON string literal (quotes included), escaping as RFC 8259 requires.
pub fn write_str(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &c) in bytes.iter().enumerate() {
        let esc: &[u8] = match c {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x00..=0x1f => {
                out.extend_from_slice(&bytes[start..i]);
                write_u_escape(c, out);
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(esc);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

fn write_ts(t: Timestamp, out: &mut Vec<u8>) {
    out.push(b'"');
    t.write_oslo(out);
    out.push(b'"');
}

/// The reservation fields of the head segment.
#[derive(Clone, Copy, Debug)]
pub struct HeadReservasjon<'a> {
    /// `JA` or `NEI`.
    pub reservasjon: &'a str,
    /// When the person reserved.
    pub tidspunkt: Option<Timestamp>,
    /// When the reservation was last set or lifted.
    pub oppdatert: Option<Timestamp>,
}

/// Head segment: `{"personidentifikator":"…"` then `"reservasjon"`,
/// `"reservasjonstidspunkt"`, `"reservasjon_oppdatert"` (each when present) and `"status"`.
pub fn write_head(
    id: PersonId,
    reservasjon: Option<HeadReservasjon<'_>>,
    status: &str,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(b"{\"personidentifikator\":\"");
    id.write_to(out);
    out.push(b'"');
    if let Some(r) = reservasjon {
        out.extend_from_slice(b",\"reservasjon\":\"");
        out.extend_from_slice(r.reservasjon.as_bytes());
        out.push(b'"');
        if let Some(t) = r.tidspunkt {
            out.extend_from_slice(b",\"reservasjonstidspunkt\":");
            write_ts(t, out);
        }
        if let Some(t) = r.oppdatert {
            out.extend_from_slice(b",\"reservasjon_oppdatert\":");
            write_ts(t, out);
        }
    }
    out.extend_from_slice(b",\"status\":\"");
    out.extend_from_slice(status.as_bytes());
    out.push(b'"');
}

/// Varsling segment.
pub fn write_varsling(v: Varslingsstatus, out: &mut Vec<u8>) {
    out.extend_from_slice(b",\"varslingsstatus\":\"");
    out.extend_from_slice(v.as_str().as_bytes());
    out.push(b'"');
}

/// Kontakt segment; nothing when the group has no field.
pub fn write_kontakt(k: &Kontaktinformasjon, out: &mut Vec<u8>) {
    if k.is_empty() {
        return;
    }
    out.extend_from_slice(b",\"kontaktinformasjon\":{");
    let mut first = true;
    let mut key = |name: &str, out: &mut Vec<u8>| {
        if !first {
            out.push(b',');
        }
        first = false;
        out.push(b'"');
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\":");
    };
    if let Some(v) = &k.epostadresse {
        key("epostadresse", out);
        write_str(v, out);
    }
    if let Some(t) = k.epostadresse_oppdatert {
        key("epostadresse_oppdatert", out);
        write_ts(t, out);
    }
    if let Some(t) = k.epostadresse_sist_verifisert {
        key("epostadresse_sist_verifisert", out);
        write_ts(t, out);
    }
    if let Some(t) = k.epostadresse_sist_validert {
        key("epostadresse_sist_validert", out);
        write_ts(t, out);
    }
    if let Some(d) = k
        .epostadresse_duplisert
        .filter(|_| k.epostadresse.is_some())
    {
        key("epostadresse_duplisert", out);
        out.extend_from_slice(ja_nei(d));
    }
    if let Some(v) = &k.mobiltelefonnummer {
        key("mobiltelefonnummer", out);
        write_str(v, out);
    }
    if let Some(t) = k.mobiltelefonnummer_oppdatert {
        key("mobiltelefonnummer_oppdatert", out);
        write_ts(t, out);
    }
    if let Some(t) = k.mobiltelefonnummer_sist_verifisert {
        key("mobiltelefonnummer_sist_verifisert", out);
        write_ts(t, out);
    }
    if let Some(t) = k.mobiltelefonnummer_sist_validert {
        key("mobiltelefonnummer_sist_validert", out);
        write_ts(t, out);
    }
    if let Some(d) = k
        .mobiltelefonnummer_duplisert
        .filter(|_| k.mobiltelefonnummer.is_some())
    {
        key("mobiltelefonnummer_duplisert", out);
        out.extend_from_slice(ja_nei(d));
    }
    out.push(b'}');
}

fn ja_nei(b: bool) -> &'static [u8] {
    if b { DUPLISERT_JA } else { DUPLISERT_NEI }
}

/// `*_duplisert`'s value when another AKTIV person has the address or number.
pub const DUPLISERT_JA: &[u8] = b"\"JA\"";
/// `*_duplisert`'s value otherwise.
pub const DUPLISERT_NEI: &[u8] = b"\"NEI\"";

/// Digital post segment.
pub fn write_digital_post(d: &DigitalPost, out: &mut Vec<u8>) {
    out.extend_from_slice(b",\"digital_post\":{\"postkasseadresse\":");
    write_str(&d.postkasseadresse, out);
    out.extend_from_slice(b",\"postkasseleverandoeradresse\":");
    write_str(&d.postkasseleverandoeradresse, out);
    out.push(b'}');
}

/// Sertifikat segment.
pub fn write_sertifikat(base64_der: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(b",\"sertifikat\":");
    write_str(base64_der, out);
}

/// Spraak segment: `spraak` and `spraak_oppdatert`, each only when present.
pub fn write_spraak(spraak: Option<Spraak>, oppdatert: Option<Timestamp>, out: &mut Vec<u8>) {
    if let Some(s) = spraak {
        out.extend_from_slice(b",\"spraak\":\"");
        out.extend_from_slice(s.as_str().as_bytes());
        out.push(b'"');
    }
    if let Some(t) = oppdatert {
        out.extend_from_slice(b",\"spraak_oppdatert\":");
        write_ts(t, out);
    }
}

/// The segments of a person object, in the order they are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Segment {
    /// `{"personidentifikator":…,"reservasjon":…,"status":…` (always).
    Head,
    /// `,"varslingsstatus":…`.
    Varsling,
    /// `,"kontaktinformasjon":{…}`.
    Kontakt,
    /// `,"digital_post":{…}`.
    DigitalPost,
    /// `,"sertifikat":…`.
    Sertifikat,
    /// `,"spraak":…,"spraak_oppdatert":…`.
    Spraak,
}

impl Segment {
    /// Every segment, in wire order.
    pub const ALL: [Segment; 6] = [
        Segment::Head,
        Segment::Varsling,
        Segment::Kontakt,
        Segment::DigitalPost,
        Segment::Sertifikat,
        Segment::Spraak,
    ];

    /// The group that shows this segment (`None`: always shown).
    pub fn group(self) -> Option<Groups> {
        match self {
            Segment::Head => None,
            Segment::Varsling => Some(Groups::VARSLING),
            Segment::Kontakt => Some(Groups::KONTAKT),
            Segment::DigitalPost => Some(Groups::DIGITALPOST),
            Segment::Sertifikat => Some(Groups::SERTIFIKAT),
            Segment::Spraak => Some(Groups::SPRAAK),
        }
    }
}

/// Writes one segment of `p` (nothing when the person has no value for it).
///
/// The one place of the SLETTET rule: a deleted person shows no reservation and no group
/// but varsling, whatever the model holds.
pub fn write_segment(p: &Person, varsling: Varslingsstatus, seg: Segment, out: &mut Vec<u8>) {
    let aktiv = p.status == Status::Aktiv;
    match seg {
        Segment::Head => {
            let reservasjon = if aktiv {
                p.reservasjon.map(|r| HeadReservasjon {
                    reservasjon: r.as_str(),
                    tidspunkt: p.reservasjonstidspunkt.filter(|_| r == Reservasjon::Ja),
                    oppdatert: p.reservasjon_oppdatert,
                })
            } else {
                None
            };
            write_head(p.id, reservasjon, p.status.as_str(), out);
        }
        Segment::Varsling => write_varsling(varsling, out),
        _ if !aktiv => {}
        Segment::Kontakt => {
            if let Some(k) = &p.kontaktinformasjon {
                write_kontakt(k, out);
            }
        }
        Segment::DigitalPost => {
            if let Some(d) = &p.digital_post {
                write_digital_post(d, out);
            }
        }
        Segment::Sertifikat => {
            if let Some(c) = &p.sertifikat {
                write_sertifikat(c, out);
            }
        }
        Segment::Spraak => write_spraak(p.spraak, p.spraak_oppdatert, out),
    }
}

/// Writes a whole person object with the groups in `groups`.
///
/// `varsling` is the notification status to show (stored or derived).
pub fn write_person(p: &Person, varsling: Varslingsstatus, groups: Groups, out: &mut Vec<u8>) {
    for seg in Segment::ALL {
        if seg.group().is_none_or(|g| groups.contains(g)) {
            write_segment(p, varsling, seg, out);
        }
    }
    out.push(b'}');
}

/// Opens a `/personer` answer.
pub const PERSONER_OPEN: &[u8] = b"{\"personer\":[";
/// Closes a `/personer` answer.
pub const PERSONER_CLOSE: &[u8] = b"]}";

/// A person as a snapshot stores it: the segments in answer order (head, varsling,
/// kontakt, digital post, spraak; the certificate's segment is stored apart, once per
/// certificate) and their lengths.
#[derive(Clone, Copy, Debug)]
pub struct Stored<'a> {
    /// The segments, back to back.
    pub segments: &'a [u8],
    /// Their lengths, in that order.
    pub lens: [u16; 5],
    /// A SLETTET person (never shows a language change).
    pub slettet: bool,
}

/// Appends a stored person with `groups` as one JSON object: the wanted segments, the
/// certificate's segment `cert` (when the caller may see it) before the language, and
/// `spraak` (an overlay's change) in place of the stored language. The wanted segments are
/// copied as few contiguous runs (with every group: one run, the certificate, one run),
/// not one copy per segment.
#[inline]
pub fn write_stored(
    p: Stored<'_>,
    cert: Option<&[u8]>,
    groups: Groups,
    spraak: Option<&[u8]>,
    out: &mut Vec<u8>,
) {
    let spraak = spraak.filter(|_| groups.contains(Groups::SPRAAK) && !p.slettet);
    let wanted = [
        true,
        groups.contains(Groups::VARSLING),
        groups.contains(Groups::KONTAKT),
        groups.contains(Groups::DIGITALPOST),
        groups.contains(Groups::SPRAAK) && spraak.is_none(),
    ];
    let segs = p.segments;
    let (mut run, mut at) = (0, 0);
    for (n, &want) in wanted.iter().enumerate() {
        if n == 4
            && let Some(c) = cert
        {
            out.extend_from_slice(&segs[run..at]);
            out.extend_from_slice(c);
            run = at;
        }
        let len = usize::from(p.lens[n]);
        if !want {
            out.extend_from_slice(&segs[run..at]);
            run = at + len;
        }
        at += len;
    }
    out.extend_from_slice(&segs[run..at]);
    if let Some(seg) = spraak {
        out.extend_from_slice(seg);
    }
    out.push(b'}');
}

/// Writes the answer for an id the register does not hold.
pub fn write_not_registered(id: PersonId, groups: Groups, out: &mut Vec<u8>) {
    write_head(id, None, "IKKE_REGISTRERT", out);
    if groups.contains(Groups::VARSLING) {
        write_varsling(Varslingsstatus::KanIkkeVarsles, out);
    }
    out.push(b'}');
}

/// The error body every error answer carries: `{"status","error","message","path"}`
/// (`path` already free of personal numbers).
pub fn write_error(status: u16, reason: &str, message: &str, path: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"status\":");
    out.extend_from_slice(status.to_string().as_bytes());
    out.extend_from_slice(b",\"error\":");
    write_str(reason, out);
    out.extend_from_slice(b",\"message\":");
    write_str(message, out);
    out.extend_from_slice(b",\"path\":");
    write_str(path, out);
    out.push(b'}');
}

/// The `printSertifikat` answer: the provider's organisation number and its certificate
/// (base64 DER).
pub fn write_print_provider(orgnr: &str, base64_der: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"postkasseleverandoerAdresse\":");
    write_str(orgnr, out);
    out.extend_from_slice(b",\"x509Sertifikat\":");
    write_str(base64_der, out);
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_str(input: &str, expected: &str) {
        let mut out = Vec::new();
        write_str(input, &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), expected);
    }

    #[test]
    fn string_escaping() {
        check_str("a@b.no", r#""a@b.no""#);
        check_str("q\"b\\s", r#""q\"b\\s""#);
        check_str("nl\nt\t\u{1}", r#""nl\nt\t\u0001""#);
        check_str("blåbær", "\"blåbær\"");
        check_str("", r#""""#);
    }

    #[test]
    fn not_registered_shapes() {
        let id = PersonId::parse(b"20914695016").unwrap();
        let mut out = Vec::new();
        write_not_registered(id, Groups::NONE, &mut out);
        assert_eq!(
            out,
            br#"{"personidentifikator":"20914695016","status":"IKKE_REGISTRERT"}"#
        );
        out.clear();
        write_not_registered(id, Groups::VARSLING, &mut out);
        assert_eq!(
            out,
            br#"{"personidentifikator":"20914695016","status":"IKKE_REGISTRERT","varslingsstatus":"KAN_IKKE_VARSLES"}"#
        );
    }
}
