//! Personal numbers (fødselsnummer, D-nummer, H-nummer, synthetic numbers).
//!
//! A personal number is 11 ASCII digits: `DDMMYY` birth date, a three-digit individual
//! number and two control digits. On the wire it is a string; inside the service it is a
//! [`PersonId`], the number itself as a `u64` (it fits in 37 bits), which is what the
//! snapshot index hashes.
//!
//! Two questions are kept apart:
//! - *Is it well formed?* ([`PersonId::parse`]): exactly 11 ASCII digits. This is all a
//!   lookup checks; the API answers an unknown well-formed number as not registered.
//! - *Is it a valid number?* ([`validate`]): a plausible date (after removing the D-number
//!   and H-/synthetic offsets) and both control digits right. The snapshot builder demands
//!   this of every record it accepts.
//!
//! A `PersonId` is deliberately not `Display`: personal numbers must never reach logs or
//! error messages by accident. Writing one out is an explicit call to [`PersonId::write_to`].

use std::fmt;

/// A well-formed personal number: 11 decimal digits held as an integer.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PersonId(u64);

/// Largest value an 11-digit number can take.
const MAX: u64 = 99_999_999_999;

impl PersonId {
    /// Parses exactly 11 ASCII digits; anything else is `None`.
    #[inline]
    pub fn parse(s: &[u8]) -> Option<PersonId> {
        if s.len() != 11 {
            return None;
        }
        let mut v = 0u64;
        for &c in s {
            let d = c.wrapping_sub(b'0');
            if d > 9 {
                return None;
            }
            v = v * 10 + u64::from(d);
        }
        Some(PersonId(v))
    }

    /// The number as an integer key (at most 37 bits).
    #[inline]
    pub fn key(self) -> u64 {
        self.0
    }

    /// Rebuilds an id from a key; `None` if it has more than 11 digits.
    #[inline]
    pub fn from_key(key: u64) -> Option<PersonId> {
        (key <= MAX).then_some(PersonId(key))
    }

    /// The 11 digits, zero-padded.
    #[inline]
    pub fn digits(self) -> [u8; 11] {
        let mut out = [b'0'; 11];
        let mut v = self.0;
        for slot in out.iter_mut().rev() {
            *slot = b'0' + (v % 10) as u8;
            v /= 10;
        }
        out
    }

    /// Appends the 11 digits to `out`.
    #[inline]
    pub fn write_to(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.digits());
    }
}

/// Redacted: shows only that this is a personal number, never the number.
impl fmt::Debug for PersonId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PersonId(***********)")
    }
}

/// Which kind of number a valid personal number is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kind {
    /// D-number: 40 added to the day (people without a Norwegian birth number).
    pub d_number: bool,
    /// What was added to the month: 0 ordinary, 40 H-number (and NAV's synthetic numbers),
    /// 80 synthetic (Skatteetaten's Tenor test data).
    pub month_offset: u8,
}

impl Kind {
    /// True for test numbers that can never belong to a real person (Tenor, month + 80).
    pub fn is_synthetic(self) -> bool {
        self.month_offset == 80
    }
}

/// Why a personal number is not valid. Never carries the number itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FnrError {
    /// Not exactly 11 ASCII digits.
    #[error("must be 11 digits")]
    Malformed,
    /// The day (after removing a D-number's 40) is not 1..=31, or past the month's end.
    #[error("has an impossible day of month")]
    BadDay,
    /// The month (after removing 40 or 80) is not 1..=12.
    #[error("has an impossible month")]
    BadMonth,
    /// The first control digit does not match, or the number cannot have one (remainder 1).
    #[error("has a wrong first control digit")]
    BadControl1,
    /// The second control digit does not match, or the number cannot have one.
    #[error("has a wrong second control digit")]
    BadControl2,
}

const W1: [u32; 9] = [3, 7, 6, 1, 8, 9, 4, 5, 2];
const W2: [u32; 10] = [5, 4, 3, 2, 7, 6, 5, 4, 3, 2];

/// Computes a mod-11 control digit; `None` when the remainder makes it 10 (no valid digit).
fn control(digits: &[u8], weights: &[u32]) -> Option<u8> {
    let sum: u32 = digits
        .iter()
        .zip(weights)
        .map(|(&d, &w)| u32::from(d) * w)
        .sum();
    match 11 - sum % 11 {
        11 => Some(0),
        10 => None,
        k => Some(k as u8),
    }
}

/// The two control digits for the first nine digits, or `None` if no number with this
/// prefix can be valid.
pub fn control_digits(first9: &[u8; 9]) -> Option<[u8; 2]> {
    let k1 = control(first9, &W1)?;
    let mut ten = [0u8; 10];
    ten[..9].copy_from_slice(first9);
    ten[9] = k1;
    let k2 = control(&ten, &W2)?;
    Some([k1, k2])
}

/// Checks that `s` is a valid personal number and tells its kind.
pub fn validate(s: &[u8]) -> Result<Kind, FnrError> {
    if PersonId::parse(s).is_none() {
        return Err(FnrError::Malformed);
    }
    let d: Vec<u8> = s.iter().map(|c| c - b'0').collect();
    let mut day = d[0] * 10 + d[1];
    let mut month = d[2] * 10 + d[3];
    let d_number = day > 40;
    if d_number {
        day -= 40;
    }
    let month_offset = match month {
        81..=92 => 80,
        41..=52 => 40,
        _ => 0,
    };
    month -= month_offset;
    if !(1..=12).contains(&month) {
        return Err(FnrError::BadMonth);
    }
    // The century is not known from the number alone, so February allows the 29th.
    let last_day = match month {
        2 => 29,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    if day == 0 || day > last_day {
        return Err(FnrError::BadDay);
    }
    let k1 = control(&d[..9], &W1).ok_or(FnrError::BadControl1)?;
    if k1 != d[9] {
        return Err(FnrError::BadControl1);
    }
    let k2 = control(&d[..10], &W2).ok_or(FnrError::BadControl2)?;
    if k2 != d[10] {
        return Err(FnrError::BadControl2);
    }
    Ok(Kind {
        d_number,
        month_offset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Completes a nine-digit prefix with its control digits (for numbers the tests build
    /// instead of committing: ordinary-looking ones use birth years that are still in the
    /// future, so they cannot be anyone's number).
    fn complete(first9: &str) -> String {
        let p: [u8; 9] = first9
            .bytes()
            .map(|c| c - b'0')
            .collect::<Vec<_>>()
            .try_into()
            .unwrap();
        let [k1, k2] = control_digits(&p).expect("prefix has control digits");
        format!("{first9}{k1}{k2}")
    }

    fn check(input: &str, expected: Result<Kind, FnrError>) {
        assert_eq!(validate(input.as_bytes()), expected, "input {input}");
    }

    const SYNTH: Kind = Kind {
        d_number: false,
        month_offset: 80,
    };

    #[test]
    fn api_md_vectors_are_valid_synthetic_numbers() {
        for id in [
            "11822648950",
            "20914695016",
            "11887197158",
            "06828498159",
            "01814797763",
        ] {
            check(id, Ok(SYNTH));
        }
    }

    #[test]
    fn kinds() {
        // Born 2039 (individual number 9xx): not yet assignable to anyone.
        let ordinary = complete("311239950");
        check(
            &ordinary,
            Ok(Kind {
                d_number: false,
                month_offset: 0,
            }),
        );
        let d_number = complete("711239950");
        check(
            &d_number,
            Ok(Kind {
                d_number: true,
                month_offset: 0,
            }),
        );
        let h_number = complete("315239950");
        check(
            &h_number,
            Ok(Kind {
                d_number: false,
                month_offset: 40,
            }),
        );
        let synthetic_d = complete("719239950");
        check(
            &synthetic_d,
            Ok(Kind {
                d_number: true,
                month_offset: 80,
            }),
        );
    }

    #[test]
    fn invalid_numbers() {
        check("1182264895", Err(FnrError::Malformed));
        check("118226489501", Err(FnrError::Malformed));
        check("1182264895a", Err(FnrError::Malformed));
        check("11822648951", Err(FnrError::BadControl2));
        check("11822648960", Err(FnrError::BadControl1));
        check("00822648950", Err(FnrError::BadDay));
        check("31842648950", Err(FnrError::BadDay)); // 31 April
        check("30822648950", Err(FnrError::BadDay)); // 30 February
        check("11932648950", Err(FnrError::BadMonth)); // month 93
        check("11002648950", Err(FnrError::BadMonth));
    }

    #[test]
    fn a_prefix_whose_first_remainder_is_one_has_no_valid_number() {
        // Find such a prefix among synthetic dates and check every completion is refused.
        let prefix = (0..1000)
            .map(|i| format!("0181{:02}{:03}", 47, i))
            .find(|p| {
                let d: Vec<u8> = p.bytes().map(|c| c - b'0').collect();
                control(&d, &W1).is_none()
            })
            .expect("some prefix has remainder 1");
        for k in 0..100 {
            let id = format!("{prefix}{k:02}");
            assert_eq!(validate(id.as_bytes()), Err(FnrError::BadControl1));
        }
    }

    #[test]
    fn parse_and_write_round_trip() {
        let id = PersonId::parse(b"01814797763").unwrap();
        assert_eq!(id.key(), 1_814_797_763);
        let mut out = Vec::new();
        id.write_to(&mut out);
        assert_eq!(out, b"01814797763");
        assert_eq!(PersonId::from_key(id.key()), Some(id));
        assert_eq!(PersonId::from_key(100_000_000_000), None);
        assert_eq!(PersonId::parse(b"0181479776"), None);
        assert_eq!(PersonId::parse(b"0181479776 "), None);
        assert_eq!(PersonId::parse("0181479776٣".as_bytes()), None);
    }

    #[test]
    fn debug_never_shows_the_number() {
        let id = PersonId::parse(b"01814797763").unwrap();
        assert!(!format!("{id:?}").contains("1814797763"));
    }
}
