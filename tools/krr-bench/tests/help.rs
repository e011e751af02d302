//! `krr-bench loadtest` and `krr-bench peers …` take exactly the flags `krr loadtest` and
//! `krr peers …` took (recorded in `tests/fixtures/cli-help/` of the service's crate), with
//! the same texts and defaults; only the program name, the service's global `--log-format`
//! (the load tool writes no logs) and so the column widths differ.

// Test and bench code: a panic is the run failing, with its line; casts are on small
// counts and measured values.
#![allow(
    clippy::unwrap_used,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

use std::path::Path;
use std::process::Command;

/// `text` with every run of white space made one space (clap aligns columns by the longest
/// flag, which the dropped option changes), without the `--log-format` option.
fn normalised(text: &str) -> String {
    const LOG_FORMAT: &str = "--log-format <LOG_FORMAT> Log format on stderr: `text` \
        (human-readable) or `json` (one object a line) [env: KRR_LOG_FORMAT=] [default: text] \
        [possible values: text, json] ";
    let words = text.split_whitespace().collect::<Vec<_>>().join(" ") + " ";
    // A command group whose one option was `--log-format` no longer shows `[OPTIONS]`.
    words
        .replace(LOG_FORMAT, "")
        .replace("[OPTIONS] <COMMAND>", "<COMMAND>")
}

/// Options added to `krr-bench loadtest` since the move (issue 17), as `normalised` prints
/// them: taken out of its help before the comparison with the recorded `krr loadtest`.
const ADDED_TO_LOADTEST: &str = "--accept-encoding <ACCEPT_ENCODING> `Accept-Encoding` of the \
    lookups (e.g. `gzip`, `zstd`); answers are checked to come in the coding the service should \
    choose for it --verify-every <VERIFY_EVERY> Decompress and count every n-th coded answer of \
    each connection [default: 16] --http2 HTTP/2 by prior knowledge (h2c) instead of HTTP/1.1 \
    --h2-frame-size <H2_FRAME_SIZE> With --http2: the largest frame the client accepts (16384 to \
    16777215; default HTTP/2's 16384) --honour-retry-after After a 429 or 503 with Retry-After, \
    a connection waits that long (at most 5 s) before its next request, as a well-behaved client \
    does ";

#[test]
fn the_moved_commands_keep_their_flags() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/cli-help");
    for args in [
        &["loadtest"][..],
        &["peers"],
        &["peers", "load"],
        &["peers", "bench"],
    ] {
        let recorded =
            std::fs::read_to_string(dir.join(format!("{}.txt", args.join("-")))).unwrap();
        let want = normalised(&recorded).replace("Usage: krr ", "Usage: krr-bench ");
        let mut all = args.to_vec();
        all.push("--help");
        let o = Command::new(env!("CARGO_BIN_EXE_krr-bench"))
            .args(&all)
            .env_clear()
            .output()
            .unwrap();
        assert!(o.status.success(), "krr-bench {all:?}");
        let got = String::from_utf8(o.stdout).unwrap();
        let got = if args == ["loadtest"] {
            let n = normalised(&got);
            assert!(n.contains(ADDED_TO_LOADTEST), "{n}");
            n.replace(ADDED_TO_LOADTEST, "")
        } else {
            got
        };
        assert!(
            recorded.contains("--log-format") && !want.contains("--log-format"),
            "the --log-format option of {args:?} was not taken out"
        );
        assert_eq!(
            normalised(&got),
            want,
            "krr-bench {} --help",
            args.join(" ")
        );
    }
}
