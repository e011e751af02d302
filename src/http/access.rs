//! The access log: one line per request of the public API, target `krr::access`, with what
//! an operator needs (method, route, status, persons, micros, consumer, request id).
//!
//! Formatting it through `tracing`'s formatter cost about 4 µs of CPU a request, a sixth of
//! a single-person lookup. `krr serve` therefore installs a [sink](install) and the line is
//! written here, in the same shape as the other log lines (JSON or text), into a
//! thread-local buffer with a cached timestamp: well under a microsecond. The `KRR_LOG`
//! filter still decides (`krr::access=warn` turns the lines off). Without a sink (the
//! library embedded, tests) the line is an ordinary `tracing` event.

use std::cell::RefCell;
use std::io::Write;
use std::sync::OnceLock;

/// One request, as the access line tells it.
#[derive(Debug)]
pub struct Record<'a> {
    /// The method's fixed label.
    pub method: &'static str,
    /// The route's label.
    pub route: &'static str,
    /// The answer's status.
    pub status: u16,
    /// Persons returned.
    pub persons: u64,
    /// Time to answer, microseconds.
    pub micros: u64,
    /// The consumer key (organisation number, `client:<id>`), `-` when none.
    pub consumer: &'a str,
    /// The request id (visible ASCII, never an 11-digit run).
    pub request_id: &'a str,
}

type WriteFn = Box<dyn Fn(&[u8]) + Send + Sync>;

struct Sink {
    json: bool,
    write: WriteFn,
    /// Whether `krr::access` is enabled at INFO, asked once: the filter is set with the
    /// global subscriber before the first request and never changes (asking every request
    /// was a twelfth of the line's cost).
    enabled: OnceLock<bool>,
}

static SINK: OnceLock<Sink> = OnceLock::new();

/// Sends access lines (whole lines, newline included) to `write`, formatted as JSON or text.
/// The first call wins. Whether `krr::access` is enabled is asked of the subscriber at the
/// first line and kept: install the global subscriber (with its final filter) before the
/// first request, and do not reload the filter or scope another subscriber afterwards.
pub fn install(json: bool, write: impl Fn(&[u8]) + Send + Sync + 'static) {
    let _ = SINK.set(Sink {
        json,
        write: Box::new(write),
        enabled: OnceLock::new(),
    });
}

thread_local! {
    /// The line being made, and the second whose `YYYY-MM-DDTHH:MM:SS` is cached.
    static LINE: RefCell<(Vec<u8>, u64, [u8; 19])> = const { RefCell::new((Vec::new(), u64::MAX, [0; 19])) };
}

/// Writes the access line of `r` (when `krr::access` is enabled at INFO).
pub fn log(r: &Record<'_>) {
    let Some(sink) = SINK.get() else {
        if !tracing::enabled!(target: "krr::access", tracing::Level::INFO) {
            return;
        }
        tracing::info!(
            target: "krr::access",
            method = r.method,
            route = r.route,
            status = r.status,
            persons = r.persons,
            micros = r.micros,
            consumer = r.consumer,
            request_id = r.request_id,
            "request"
        );
        return;
    };
    if !*sink
        .enabled
        .get_or_init(|| tracing::enabled!(target: "krr::access", tracing::Level::INFO))
    {
        return;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    // `try_with`: nothing is written by a thread whose locals are being destroyed.
    let _ = LINE.try_with(|cell| {
        let Ok(mut cell) = cell.try_borrow_mut() else {
            return;
        };
        let (line, second, stamp) = &mut *cell;
        if *second != now.as_secs() {
            *second = now.as_secs();
            let t = chrono::DateTime::from_timestamp(i64::try_from(now.as_secs()).unwrap_or(0), 0)
                .unwrap_or_default();
            let mut s = &mut stamp[..];
            let _ = write!(s, "{}", t.format("%Y-%m-%dT%H:%M:%S"));
        }
        line.clear();
        format(line, stamp, now.subsec_micros(), r, sink.json);
        (sink.write)(line);
    });
}

/// What surrounds the fields of a line in one format: before the timestamp, then before
/// each field (method, route, status, persons, micros, consumer, request id), then the end.
struct Shape {
    start: &'static [u8],
    before: [&'static [u8]; 7],
    end: &'static [u8],
}

/// The JSON shape of `tracing_subscriber`'s JSON lines.
const JSON: Shape = Shape {
    start: b"{\"timestamp\":\"",
    before: [
        b"Z\",\"level\":\"INFO\",\"fields\":{\"message\":\"request\",\"method\":\"",
        b"\",\"route\":\"",
        b"\",\"status\":",
        b",\"persons\":",
        b",\"micros\":",
        b",\"consumer\":\"",
        b"\",\"request_id\":\"",
    ],
    end: b"\"},\"target\":\"krr::access\"}\n",
};

/// The text shape of `tracing_subscriber`'s full format.
const TEXT: Shape = Shape {
    start: b"",
    before: [
        b"Z  INFO krr::access: request method=\"",
        b"\" route=\"",
        b"\" status=",
        b" persons=",
        b" micros=",
        b" consumer=\"",
        b"\" request_id=\"",
    ],
    end: b"\"\n",
};

/// The line of `r` at `stamp` + `micros` (no `core::fmt`: it was a third of the line's
/// cost).
fn format(out: &mut Vec<u8>, stamp: &[u8; 19], micros: u32, r: &Record<'_>, json: bool) {
    let shape = if json { &JSON } else { &TEXT };
    let mut n = itoa::Buffer::new();
    out.extend_from_slice(shape.start);
    out.extend_from_slice(stamp);
    out.push(b'.');
    six_digits(out, micros);
    let [method, route, status, persons, took, consumer, request_id] = shape.before;
    out.extend_from_slice(method);
    out.extend_from_slice(r.method.as_bytes());
    out.extend_from_slice(route);
    out.extend_from_slice(r.route.as_bytes());
    out.extend_from_slice(status);
    out.extend_from_slice(n.format(r.status).as_bytes());
    out.extend_from_slice(persons);
    out.extend_from_slice(n.format(r.persons).as_bytes());
    out.extend_from_slice(took);
    out.extend_from_slice(n.format(r.micros).as_bytes());
    out.extend_from_slice(consumer);
    escaped(out, r.consumer);
    out.extend_from_slice(request_id);
    escaped(out, r.request_id);
    out.extend_from_slice(shape.end);
}

/// `v` (below a million) as six digits, zero-padded.
fn six_digits(out: &mut Vec<u8>, v: u32) {
    let mut digits = [b'0'; 6];
    let mut v = v % 1_000_000;
    for d in digits.iter_mut().rev() {
        *d = b'0' + (v % 10) as u8;
        v /= 10;
    }
    out.extend_from_slice(&digits);
}

/// `s` inside a JSON (or quoted text) string: `"` and `\` escaped, anything that is not
/// visible ASCII as `\u00XX` (the values are visible ASCII already; this keeps a line a
/// line whatever comes).
fn escaped(out: &mut Vec<u8>, s: &str) {
    if !s.bytes().any(|b| ESCAPE[usize::from(b)]) {
        out.extend_from_slice(s.as_bytes());
        return;
    }
    for &b in s.as_bytes() {
        match b {
            b'"' | b'\\' => out.extend_from_slice(&[b'\\', b]),
            _ if !ESCAPE[usize::from(b)] => out.push(b),
            _ => crate::render::write_u_escape(b, out),
        }
    }
}

/// The bytes [`escaped`] does not write as they are: `"`, `\`, and all but visible ASCII and
/// the space (a table: the two comparisons a byte cost a quarter of the line).
const ESCAPE: [bool; 256] = {
    let mut t = [true; 256];
    let mut b = 0x20;
    while b <= 0x7e {
        t[b] = b == b'"' as usize || b == b'\\' as usize;
        b += 1;
    }
    t
};

#[cfg(test)]
mod tests {
    use super::*;

    fn record<'a>(consumer: &'a str, request_id: &'a str) -> Record<'a> {
        Record {
            method: "POST",
            route: "/rest/v1/personer",
            status: 200,
            persons: 1000,
            micros: 5120,
            consumer,
            request_id,
        }
    }

    #[test]
    fn json_lines_have_the_shape_of_the_other_log_lines_and_parse() {
        let mut out = Vec::new();
        format(
            &mut out,
            b"2026-12-02T15:04:05",
            7,
            &record("991825827", "nav-\"1\"\\x"),
            true,
        );
        assert_eq!(out.last(), Some(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["timestamp"], "2026-12-02T15:04:05.000007Z");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["target"], "krr::access");
        let f = &v["fields"];
        assert_eq!(f["message"], "request");
        assert_eq!(f["method"], "POST");
        assert_eq!(f["route"], "/rest/v1/personer");
        assert_eq!(f["status"], 200);
        assert_eq!(f["persons"], 1000);
        assert_eq!(f["micros"], 5120);
        assert_eq!(f["consumer"], "991825827");
        assert_eq!(f["request_id"], "nav-\"1\"\\x");
    }

    #[test]
    fn every_ascii_character_is_escaped_exactly_when_it_must_be() {
        for b in 0u8..=0x7f {
            let s = (b as char).to_string();
            let mut out = b"\"".to_vec();
            escaped(&mut out, &s);
            out.push(b'"');
            let back: String = serde_json::from_slice(&out).unwrap();
            assert_eq!(back, s, "byte {b:#04x}");
            let plain = (0x20..=0x7e).contains(&b) && b != b'"' && b != b'\\';
            assert_eq!(out.len() == 3, plain, "byte {b:#04x}");
        }
    }

    #[test]
    fn text_lines_are_one_line_whatever_the_values() {
        let mut out = Vec::new();
        format(
            &mut out,
            b"2026-12-02T15:04:05",
            123_456,
            &record("-", "a\nb"),
            false,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "2026-12-02T15:04:05.123456Z  INFO krr::access: request method=\"POST\" route=\"/rest/v1/personer\" status=200 persons=1000 micros=5120 consumer=\"-\" request_id=\"a\\u000ab\"\n"
        );
    }
}
