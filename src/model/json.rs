//! A guard every JSON parse of the service goes through first: one pass over the bytes
//! that refuses nesting deeper than a bound, so no parser (simd-json's DOM builder and
//! serde's `IgnoredAny` both recurse) can be driven to overflow a thread's stack by a
//! body like `[[[[…]]]]`, also not inside a field the service ignores.
//!
//! Only brackets outside strings count; escapes inside strings are honoured. The pass
//! does not validate JSON (the parser after it does), so unbalanced input is left to it.

/// The deepest nesting any JSON the service reads may have. The deepest legitimate
/// documents (a person of the export, a token's claims, a JWKS) need fewer than 8 levels.
pub const MAX_DEPTH: usize = 64;

/// JSON nested deeper than [`MAX_DEPTH`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("JSON is nested deeper than {max} levels")]
pub struct TooDeep {
    /// The bound that was passed.
    pub max: usize,
}

/// Refuses `bytes` when objects and arrays nest deeper than `max` levels.
pub fn check_depth(bytes: &[u8], max: usize) -> Result<(), TooDeep> {
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                // Skip the string: to the next unescaped quote (or the end).
                i += 1;
                loop {
                    match memchr::memchr2(b'"', b'\\', &bytes[i.min(bytes.len())..]) {
                        None => return Ok(()),
                        Some(n) if bytes[i + n] == b'\\' => i += n + 2,
                        Some(n) => {
                            i += n;
                            break;
                        }
                    }
                    if i >= bytes.len() {
                        return Ok(());
                    }
                }
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return Err(TooDeep { max });
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(open: &str, close: &str, n: usize) -> Vec<u8> {
        format!("{}{}", open.repeat(n), close.repeat(n)).into_bytes()
    }

    #[test]
    fn depth_is_counted_outside_strings_only() {
        assert_eq!(check_depth(&nested("[", "]", 64), 64), Ok(()));
        assert_eq!(
            check_depth(&nested("[", "]", 65), 64),
            Err(TooDeep { max: 64 })
        );
        assert_eq!(
            check_depth(&nested("{\"a\":", "}", 65), 64),
            Err(TooDeep { max: 64 })
        );
        // Brackets inside strings, escaped quotes, and a string ending in a backslash pair.
        let s = format!(
            r#"{{"x":"{}\"{}\\","y":[1]}}"#,
            "[".repeat(100),
            "{".repeat(100)
        );
        assert_eq!(check_depth(s.as_bytes(), 2), Ok(()));
        // Hidden in an ignored field of a real body.
        let mut body = br#"{"personidentifikatorer":["05838099865"],"x":"#.to_vec();
        body.extend(nested("[", "]", 10_000));
        body.push(b'}');
        assert!(check_depth(&body, MAX_DEPTH).is_err());
        // Unterminated strings and escapes at the very end do not read past the end.
        for s in [&b"\""[..], b"\"\\", b"[\"\\\"", b"\"abc\\"] {
            assert_eq!(check_depth(s, 1), Ok(()));
        }
        // Unbalanced closers never underflow.
        assert_eq!(check_depth(b"]]]][[", 2), Ok(()));
        assert!(check_depth(b"]]]][[[", 2).is_err());
    }
}
