//! Content coding of the public API's answers (RFC 9110 §8.4, §12.5.3): `gzip` and `zstd`,
//! chosen by the request's `Accept-Encoding` q-values.
//!
//! - [`negotiate`] reads `Accept-Encoding`: the coding with the highest q-value wins; ties
//!   go to zstd, then gzip, then identity (the smaller answer first). No header, an empty
//!   one, or one that refuses every coding we have gives identity.
//! - [`encode`] compresses a finished answer **a block of [`CHUNK`] bytes at a time,
//!   yielding to the runtime between blocks**, so a 1 MB answer never holds a worker for
//!   more than about 0.1 ms while other connections wait:
//!   - **gzip** is [`deflate`]'s encoder, written for these answers (its module says
//!     how): 1.5 times libdeflate's level 1 in the service for 12 % more bytes, and unlike
//!     libdeflate it streams;
//!   - **zstd** is zstd's own library at level [`ZSTD_LEVEL`], streamed.
//!
//!   The measurements behind both choices are in the README ("Compressed answers") and
//!   `benches/coding.rs`.
//!
//! Answers under [`MIN_SIZE`] bytes and error answers stay identity; every public answer
//! carries `Vary: Accept-Encoding`.

pub mod deflate;

use hyper::HeaderMap;
use hyper::header::{ACCEPT_ENCODING, HeaderValue};

/// Answers smaller than this are sent as they are (the coding's framing would eat most of
/// the gain).
pub const MIN_SIZE: usize = 1024;
/// Bytes zstd compresses between two yields to the runtime.
pub const CHUNK: usize = 64 * 1024;
/// zstd's level: on these answers level 1 is 10 % slower than level -1 and 20 % smaller
/// (README, "Compressed answers").
pub const ZSTD_LEVEL: i32 = 1;

/// A content coding the service sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Coding {
    /// No coding.
    Identity,
    /// gzip (RFC 1952).
    Gzip,
    /// zstd (RFC 8878).
    Zstd,
}

impl Coding {
    /// The `Content-Encoding` value (`None` for identity).
    pub fn header(self) -> Option<&'static str> {
        match self {
            Coding::Identity => None,
            Coding::Gzip => Some("gzip"),
            Coding::Zstd => Some("zstd"),
        }
    }

    /// The metric label.
    pub fn label(self) -> &'static str {
        self.header().unwrap_or("identity")
    }
}

/// A q-value in thousandths (RFC 9110 §12.4.2: `0`–`1` with at most three decimals), or
/// `None` when it is not one.
fn qvalue(s: &str) -> Option<u16> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut thousandths: u16 = 0;
    for b in frac.bytes().chain(std::iter::repeat(b'0')).take(3) {
        thousandths = thousandths * 10 + u16::from(b - b'0');
    }
    match int {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// The coding to answer with, from the request's `Accept-Encoding` fields (see the module
/// doc). An element that cannot be read (a bad q-value) is ignored.
pub fn negotiate(headers: &HeaderMap) -> Coding {
    // q-values of gzip, zstd, identity and `*`, when named.
    let (mut gzip, mut zstd, mut identity, mut star) = (None, None, None, None);
    let mut any = false;
    for value in headers.get_all(ACCEPT_ENCODING) {
        let Ok(value) = value.to_str() else { continue };
        for element in value.split(',') {
            let mut parts = element.split(';');
            let name = parts.next().unwrap_or("").trim();
            if name.is_empty() {
                continue;
            }
            let mut q = Some(1000);
            for param in parts {
                let Some((k, v)) = param.split_once('=') else {
                    continue;
                };
                if k.trim().eq_ignore_ascii_case("q") {
                    q = qvalue(v.trim());
                }
            }
            let Some(q) = q else { continue };
            any = true;
            let slot = if name.eq_ignore_ascii_case("gzip") || name.eq_ignore_ascii_case("x-gzip") {
                &mut gzip
            } else if name.eq_ignore_ascii_case("zstd") {
                &mut zstd
            } else if name.eq_ignore_ascii_case("identity") {
                &mut identity
            } else if name == "*" {
                &mut star
            } else {
                continue;
            };
            // A coding named twice keeps its highest weight.
            *slot = Some(slot.map_or(q, |old: u16| old.max(q)));
        }
    }
    if !any {
        return Coding::Identity;
    }
    let zstd = zstd.or(star).unwrap_or(0);
    let gzip = gzip.or(star).unwrap_or(0);
    // Identity is acceptable unless refused by name or by `*;q=0`; it is also the answer
    // when everything is refused (RFC 9110 allows sending it rather than a 406).
    let identity = identity.or(star.filter(|&q| q == 0)).unwrap_or(1);
    let best = zstd.max(gzip);
    if best == 0 || identity > best {
        Coding::Identity
    } else if zstd == best {
        Coding::Zstd
    } else {
        Coding::Gzip
    }
}

/// `body` in `coding` (see the module doc).
pub async fn encode(coding: Coding, body: bytes::Bytes) -> bytes::Bytes {
    match coding {
        Coding::Identity => body,
        Coding::Gzip => gzip(&body).await.into(),
        Coding::Zstd => zstd(&body).await.into(),
    }
}

/// gzip's fixed header: no name, no time, "unknown" operating system.
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];

/// `body` as one gzip member with [`deflate`]'s encoder, a block of [`CHUNK`] bytes at a
/// time with a yield between blocks.
pub async fn gzip(body: &[u8]) -> Vec<u8> {
    let mut d = deflate::Deflater::new(body.len() / 8 + 64);
    d.put_bytes(&GZIP_HEADER);
    let mut crc = crc32fast::Hasher::new();
    let mut hashed = 0;
    loop {
        let last = d.block(body, CHUNK);
        let done = d.position();
        crc.update(&body[hashed..done]);
        hashed = done;
        if last {
            break;
        }
        tokio::task::yield_now().await;
    }
    let mut out = d.finish();
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    // ISIZE is the length modulo 2^32 (RFC 1952).
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out
}

/// `body` as one zstd frame, a chunk at a time with a yield between chunks.
pub async fn zstd(body: &[u8]) -> Vec<u8> {
    use zstd::zstd_safe::{CCtx, CParameter, InBuffer, OutBuffer};
    let mut cctx = CCtx::create();
    cctx.set_parameter(CParameter::CompressionLevel(ZSTD_LEVEL))
        .expect("zstd accepts level 1");
    cctx.set_pledged_src_size(Some(body.len() as u64))
        .expect("a new context takes a size");
    // Written straight into the answer's buffer (its spare capacity), no copy.
    let mut out = Vec::with_capacity(body.len() / 8 + 64);
    for (i, chunk) in body.chunks(CHUNK).enumerate() {
        if i > 0 {
            tokio::task::yield_now().await;
        }
        let mut input = InBuffer::around(chunk);
        while input.pos < chunk.len() {
            out.reserve(CCtx::out_size());
            let len = out.len();
            let mut o = OutBuffer::around_pos(&mut out, len);
            cctx.compress_stream(&mut o, &mut input)
                .expect("zstd compresses any input");
        }
    }
    loop {
        out.reserve(CCtx::out_size());
        let len = out.len();
        let mut o = OutBuffer::around_pos(&mut out, len);
        if cctx.end_stream(&mut o).expect("zstd ends any frame") == 0 {
            break;
        }
    }
    out
}

/// The `Vary` value of every public answer: the coding, and the representation (JSON or
/// JOSE) chosen by `Accept`.
pub fn vary() -> HeaderValue {
    HeaderValue::from_static("accept, accept-encoding")
}

/// Whether an answer of `status` and `len` bytes is worth encoding.
pub fn worth(status: hyper::StatusCode, len: usize) -> bool {
    status.is_success() && len >= MIN_SIZE
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(values: &[&str], want: Coding) {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
        }
        assert_eq!(negotiate(&h), want, "{values:?}");
    }

    #[test]
    fn q_values_choose_the_coding() {
        check(&[], Coding::Identity);
        check(&[""], Coding::Identity);
        check(&["gzip"], Coding::Gzip);
        check(&["x-gzip"], Coding::Gzip);
        check(&["GZIP"], Coding::Gzip);
        check(&["zstd"], Coding::Zstd);
        check(&["gzip, deflate, br, zstd"], Coding::Zstd);
        check(&["gzip, deflate, br"], Coding::Gzip);
        check(&["gzip;q=1.0, zstd;q=0.5"], Coding::Gzip);
        check(&["gzip;q=0.2", "zstd;q=0.3"], Coding::Zstd);
        check(&["zstd;q=0, gzip;q=0.001"], Coding::Gzip);
        check(&["gzip;q=0, zstd;q=0"], Coding::Identity);
        check(&["*"], Coding::Zstd);
        check(&["*;q=0.5, zstd;q=0"], Coding::Gzip);
        check(&["*;q=0"], Coding::Identity);
        check(&["identity"], Coding::Identity);
        check(&["identity;q=1, gzip;q=0.5"], Coding::Identity);
        check(&["identity;q=0.5, gzip;q=0.6"], Coding::Gzip);
        check(&["br"], Coding::Identity);
        check(&["gzip ; Q=0.8 , zstd;q=0.7"], Coding::Gzip);
        // Unreadable q-values drop their element.
        check(&["gzip;q=2"], Coding::Identity);
        check(&["gzip;q=0.0001"], Coding::Identity);
        check(&["gzip;q=abc, zstd;q=0.1"], Coding::Zstd);
        check(&["gzip;q=1.001"], Coding::Identity);
        check(&["gzip;q=1.000"], Coding::Gzip);
    }

    /// Several blocks of JSON-like text with repeats near and far.
    fn answer_like() -> Vec<u8> {
        let mut out = b"{\"personer\":[".to_vec();
        for i in 0..3000u32 {
            let cert = if i % 3 == 0 {
                "MIIDyTCCArGgAwIBAgIUaWDxIzme+f0B7M0QSi14".repeat(30)
            } else {
                String::new()
            };
            out.extend_from_slice(
                format!(
                    "{{\"personidentifikator\":\"{:011}\",\"epostadresse\":\"nn{}@example.no\",\"sertifikat\":\"{cert}\"}},",
                    u64::from(i) * 7_919_993,
                    i * 31
                )
                .as_bytes(),
            );
        }
        out.extend_from_slice(b"{}]}");
        out
    }

    #[tokio::test]
    async fn gzip_and_zstd_decode_with_other_implementations() {
        use std::io::Read;
        for body in [answer_like(), Vec::new(), b"x".to_vec()] {
            let z = gzip(&body).await;
            let mut back = Vec::new();
            flate2::read::GzDecoder::new(&z[..])
                .read_to_end(&mut back)
                .unwrap();
            assert_eq!(back, body);
            let mut out = vec![0; body.len()];
            let n = libdeflater::Decompressor::new()
                .gzip_decompress(&z, &mut out)
                .unwrap();
            assert_eq!(&out[..n], &body[..]);
            let z = zstd(&body).await;
            assert_eq!(::zstd::stream::decode_all(&z[..]).unwrap(), body);
        }
        assert!(answer_like().len() > 3 * CHUNK, "several blocks");
    }

    #[test]
    fn q_values_parse_as_rfc_9110_says() {
        assert_eq!(qvalue("0"), Some(0));
        assert_eq!(qvalue("0.5"), Some(500));
        assert_eq!(qvalue("0.123"), Some(123));
        assert_eq!(qvalue("1"), Some(1000));
        assert_eq!(qvalue("1."), Some(1000));
        assert_eq!(qvalue("1.5"), None);
        assert_eq!(qvalue(".5"), None);
        assert_eq!(qvalue(""), None);
    }
}
