//! Keeping personal numbers out of messages: parser and path texts may quote input values.

/// Replaces every run of six or more digits by `…`: parser messages may quote input values,
/// and a personal number must not reach an error message.
pub fn redact_digits(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if run.len() >= 6 {
            out.push('…');
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in msg.chars() {
        if c.is_ascii_digit() {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::redact_digits;

    #[test]
    fn runs_of_six_or_more_digits_are_cut() {
        assert_eq!(redact_digits("a 12345 b 123456 c"), "a 12345 b … c");
        assert_eq!(redact_digits("12345678901"), "…");
        assert_eq!(redact_digits("no digits"), "no digits");
    }
}
