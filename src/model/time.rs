//! Timestamps: stored as instants, written in Europe/Oslo time.
//!
//! The register writes times as `yyyy-MM-ddTHH:mm:ss±HH` in Norwegian local time
//! (`2023-06-29T10:14:52+02` in summer, `2015-03-11T19:59:15+01` in winter). Inside the
//! service a time is a [`Timestamp`], whole seconds since the Unix epoch, so comparisons
//! (the 18-month rule) need no time zone. The zone rules come from `chrono-tz` (the IANA
//! database), never from a hand-made table.
//!
//! On input both that form and RFC 3339 (`Z`, `+01:00`, fractional seconds) are accepted.

use chrono::{DateTime, Datelike, Offset, TimeZone, Timelike};
use chrono_tz::Europe::Oslo;

/// An instant, in whole seconds since 1970-01-01T00:00:00Z.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i64);

/// Earliest accepted instant: 1970-01-01T00:00:00Z. Earlier times are not register data, and
/// Oslo's pre-1895 local mean time offset (+00:43) cannot be written as `±HH`.
pub const MIN: Timestamp = Timestamp(0);
/// Latest accepted instant: 2099-12-31T23:59:59Z.
pub const MAX: Timestamp = Timestamp(4_102_444_799);

/// Why a timestamp was refused. The message is safe to show (it holds no input text).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TimeError {
    /// Neither `yyyy-MM-ddTHH:mm:ss±HH` nor RFC 3339.
    #[error("is not a timestamp (expected yyyy-MM-ddTHH:mm:ss±HH or RFC 3339)")]
    Syntax,
    /// Well formed, but before 1970 or after 2099.
    #[error("is outside 1970..2099")]
    OutOfRange,
}

impl Timestamp {
    /// The current time (whole seconds).
    pub fn now() -> Timestamp {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Timestamp(i64::try_from(secs).unwrap_or(i64::MAX))
    }

    /// Parses the register's `±HH` form or RFC 3339; fractions of a second are dropped.
    pub fn parse(s: &str) -> Result<Timestamp, TimeError> {
        let b = s.as_bytes();
        // `2015-03-11T19:59:15+01`: complete the offset to RFC 3339's `+01:00`.
        let parsed = if b.len() == 22 && matches!(b[19], b'+' | b'-') {
            let mut full = [0u8; 25];
            full[..22].copy_from_slice(b);
            full[22..].copy_from_slice(b":00");
            // The slice is ASCII if the input was; otherwise parsing fails below anyway.
            let full = std::str::from_utf8(&full).map_err(|_| TimeError::Syntax)?;
            DateTime::parse_from_rfc3339(full)
        } else {
            DateTime::parse_from_rfc3339(s)
        };
        let t = Timestamp(parsed.map_err(|_| TimeError::Syntax)?.timestamp());
        if t < MIN || t > MAX {
            return Err(TimeError::OutOfRange);
        }
        Ok(t)
    }

    /// Appends the Europe/Oslo form, `yyyy-MM-ddTHH:mm:ss±HH`, to `out`.
    ///
    /// Only meaningful for instants in [`MIN`]..=[`MAX`] (where Oslo's offset is whole hours);
    /// every stored timestamp has been range-checked by [`Timestamp::parse`].
    pub fn write_oslo(self, out: &mut Vec<u8>) {
        // Clamped, so a value from outside (a damaged file) can never make this panic.
        let local = Oslo
            .timestamp_opt(self.0.clamp(MIN.0, MAX.0), 0)
            .single()
            .expect("a Unix instant maps to exactly one local time");
        let offset_secs = local.offset().fix().local_minus_utc();
        let mut buf = [0u8; 22];
        let year = local.year().clamp(0, 9999).cast_unsigned();
        put4(&mut buf[0..4], year);
        buf[4] = b'-';
        put2(&mut buf[5..7], local.month());
        buf[7] = b'-';
        put2(&mut buf[8..10], local.day());
        buf[10] = b'T';
        put2(&mut buf[11..13], local.hour());
        buf[13] = b':';
        put2(&mut buf[14..16], local.minute());
        buf[16] = b':';
        put2(&mut buf[17..19], local.second());
        buf[19] = if offset_secs < 0 { b'-' } else { b'+' };
        put2(&mut buf[20..22], offset_secs.unsigned_abs() / 3600);
        out.extend_from_slice(&buf);
    }

    /// The Oslo form as a `String` (for tools and tests; the hot path uses `write_oslo`).
    pub fn to_oslo_string(self) -> String {
        let mut v = Vec::with_capacity(22);
        self.write_oslo(&mut v);
        String::from_utf8(v).expect("ASCII")
    }
}

fn put2(dst: &mut [u8], v: u32) {
    dst[0] = b'0' + (v / 10 % 10) as u8;
    dst[1] = b'0' + (v % 10) as u8;
}

fn put4(dst: &mut [u8], v: u32) {
    put2(&mut dst[0..2], v / 100);
    put2(&mut dst[2..4], v % 100);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: Result<&str, TimeError>) {
        let got = Timestamp::parse(input).map(Timestamp::to_oslo_string);
        assert_eq!(got.as_deref().map_err(|e| *e), expected, "input {input}");
    }

    #[test]
    fn accepted_forms_and_their_oslo_rendering() {
        check("2023-06-29T10:14:52+02", Ok("2023-06-29T10:14:52+02"));
        check("2015-03-11T19:59:15+01", Ok("2015-03-11T19:59:15+01"));
        check(
            "2015-03-11T19:57:52.000+01:00",
            Ok("2015-03-11T19:57:52+01"),
        );
        check("2023-06-29T08:14:52Z", Ok("2023-06-29T10:14:52+02"));
        check("2023-06-29T08:14:52.999999Z", Ok("2023-06-29T10:14:52+02"));
        check("2023-12-31T23:30:00Z", Ok("2024-01-01T00:30:00+01"));
        check("2023-06-29T10:14:52-03", Ok("2023-06-29T15:14:52+02"));
    }

    #[test]
    fn daylight_saving_transitions() {
        // 2024-03-31 01:00Z: Oslo springs from +01 to +02.
        check("2024-03-31T00:59:59Z", Ok("2024-03-31T01:59:59+01"));
        check("2024-03-31T01:00:00Z", Ok("2024-03-31T03:00:00+02"));
        // 2024-10-27 01:00Z: back to +01; 02:30 local happens twice.
        check("2024-10-27T00:30:00Z", Ok("2024-10-27T02:30:00+02"));
        check("2024-10-27T01:30:00Z", Ok("2024-10-27T02:30:00+01"));
    }

    #[test]
    fn refused_forms() {
        check("", Err(TimeError::Syntax));
        check("2023-06-29", Err(TimeError::Syntax));
        // RFC 3339 (section 5.6) lets a space stand for the T; chrono accepts it, so do we.
        check("2023-06-29 10:14:52+02:00", Ok("2023-06-29T10:14:52+02"));
        check("2023-06-29T10:14:52 +02", Err(TimeError::Syntax));
        check("2023-06-29T10:14:52", Err(TimeError::Syntax));
        check("2023-06-29T10:14:52+2", Err(TimeError::Syntax));
        check("2023-13-29T10:14:52+02", Err(TimeError::Syntax));
        check("2023-06-29T25:14:52+02", Err(TimeError::Syntax));
        check("2023-06-29T10:14:52+02:00junk", Err(TimeError::Syntax));
        check("1969-12-31T23:59:59Z", Err(TimeError::OutOfRange));
        check("2100-01-01T00:00:00Z", Err(TimeError::OutOfRange));
        check("2023-06-29T10:14:52ø2", Err(TimeError::Syntax));
    }
}
