//! The request id: taken from the client when it sends one we may repeat, else made here;
//! sent back as `X-Request-Id` on every answer of the public API (errors included), and in
//! the request's span, so the access line and every log line of the request carry it.
//!
//! A client's id is taken from the first of `X-Request-Id`, `X-Correlation-Id` and
//! `Nav-Call-Id` (NAV's call id) that holds 1–128 visible ASCII characters and no run of 11
//! or more digits: an id that could be a personal number is never logged or echoed (a new
//! one is made instead). A made id is 16 lower-case hex digits (64 random bits).

use hyper::HeaderMap;
use hyper::header::{HeaderName, HeaderValue};

/// The answer's header.
pub const HEADER: HeaderName = HeaderName::from_static("x-request-id");
/// The headers a client's id is read from, in order (names made once: a lookup by a
/// string parses the name first).
pub const SOURCES: [HeaderName; 3] = [
    HEADER,
    HeaderName::from_static("x-correlation-id"),
    HeaderName::from_static("nav-call-id"),
];
/// The longest id taken from a client.
pub const MAX_LEN: usize = 128;

/// Whether `s` may be a metric label or a consumer key: 1–64 visible ASCII characters, no
/// run of 11 or more digits.
pub fn label_safe(s: &str) -> bool {
    s.len() <= 64 && acceptable(s.as_bytes())
}

/// Whether `id` may be repeated: 1–[`MAX_LEN`] visible ASCII characters, no run of 11 or
/// more digits.
pub fn acceptable(id: &[u8]) -> bool {
    if id.is_empty() || id.len() > MAX_LEN || !id.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return false;
    }
    let mut run = 0;
    for b in id {
        run = if b.is_ascii_digit() { run + 1 } else { 0 };
        if run >= 11 {
            return false;
        }
    }
    true
}

/// The request's id: the client's (see the module doc) or a new one.
pub fn of(headers: &HeaderMap) -> HeaderValue {
    // The first value of each source, found in one pass over the few headers a request
    // has (a lookup by name hashes the name, three times over).
    static NAMES: [HeaderName; 3] = SOURCES;
    let mut first: [Option<&HeaderValue>; 3] = [None; 3];
    for (name, value) in headers {
        if let Some(i) = NAMES.iter().position(|s| s == name) {
            first[i].get_or_insert(value);
        }
    }
    first
        .into_iter()
        .flatten()
        .find(|v| acceptable(v.as_bytes()))
        .cloned()
        .unwrap_or_else(generate)
}

/// A new id: 16 hex digits.
pub fn generate() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = [0u8; 16];
    let mut bits = rand::random::<u64>();
    for d in id.iter_mut().rev() {
        *d = HEX[(bits & 0xf) as usize];
        bits >>= 4;
    }
    HeaderValue::from_bytes(&id).expect("hex digits are a header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(headers: &[(&str, &str)], echoed: Option<&str>) {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(
                hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let id = of(&h);
        match echoed {
            Some(want) => assert_eq!(id.to_str().unwrap(), want, "{headers:?}"),
            None => {
                let s = id.to_str().unwrap();
                assert_eq!(s.len(), 16, "{s}");
                assert!(s.bytes().all(|b| b.is_ascii_hexdigit()), "{s}");
            }
        }
    }

    #[test]
    fn ids_are_echoed_only_when_they_are_safe() {
        check(&[("X-Request-Id", "abc-123")], Some("abc-123"));
        check(&[("X-Correlation-Id", "corr.1")], Some("corr.1"));
        check(&[("Nav-Call-Id", "nav-7f3a")], Some("nav-7f3a"));
        // The first acceptable one, in the order of SOURCES.
        check(
            &[("Nav-Call-Id", "nav"), ("X-Request-Id", "req")],
            Some("req"),
        );
        check(
            &[("X-Request-Id", "call-01818012345"), ("Nav-Call-Id", "nav")],
            Some("nav"),
        );
        // Ten digits in a row pass, eleven do not.
        check(&[("X-Request-Id", "a0123456789b")], Some("a0123456789b"));
        check(&[("X-Request-Id", "a01234567890b")], None);
        check(&[("X-Request-Id", "01818012345")], None);
        check(&[("X-Request-Id", "has space")], None);
        check(&[("X-Request-Id", "")], None);
        check(
            &[("X-Request-Id", &"x".repeat(128))],
            Some(&"x".repeat(128)),
        );
        check(&[("X-Request-Id", &"x".repeat(129))], None);
        check(&[], None);
        // Only the first value of a name counts, as a lookup by name finds it.
        check(
            &[
                ("X-Request-Id", "has space"),
                ("X-Request-Id", "second"),
                ("Nav-Call-Id", "nav"),
            ],
            Some("nav"),
        );
        check(
            &[("X-Request-Id", "first"), ("X-Request-Id", "second")],
            Some("first"),
        );
        assert!(!acceptable("æøå".as_bytes()));
    }
}
