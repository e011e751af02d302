//! In-process fuzzing on the stable toolchain: seeded, structure-aware mutation of the
//! committed corpora (`tests/fuzz/corpus/<target>/`) against every parser a client or a
//! file can reach: the `/personer` and PATCH bodies, `Accept-Encoding`, the token verifier,
//! the gzip encoder (round trips through another decoder), the quota file, the export's line
//! parser, the journal's recovery scan, and the snapshot header and verification. Each
//! target must answer every input with a value or an error: a panic, a stack overflow (the
//! process dies) or an accepted forgery fails the run. Inputs that once failed are kept in
//! `tests/fuzz/regressions/<target>/` and replayed first.
//!
//! CI runs a bounded number of iterations per target (`KRR_FUZZ_ITERS`, default 3 000, a
//! few seconds); a longer run: `KRR_FUZZ_ITERS=1000000 KRR_FUZZ_SEED=7 cargo test --release
//! --test it fuzz:: -- --nocapture`. A failing input is written to `target/fuzz-failures/`.

use std::path::{Path, PathBuf};

use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn iterations() -> u64 {
    std::env::var("KRR_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3_000)
}

fn seed() -> u64 {
    std::env::var("KRR_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

fn dir(kind: &str, target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz")
        .join(kind)
        .join(target)
}

fn files(kind: &str, target: &str) -> Vec<Vec<u8>> {
    let Ok(entries) = std::fs::read_dir(dir(kind, target)) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    paths.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

/// Tokens that make JSON and text parsers take their rarer paths.
const DICTIONARY: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b"\\",
    b":",
    b",",
    b"null",
    b"true",
    b"false",
    b"1e999",
    b"-0",
    b"\\u0000",
    b"\\ud800",
    b"\xff",
    b"\xc3\x28",
    b"\"personidentifikatorer\"",
    b"\"inkluderIkkeRegistrerte\"",
    b"\"spraak\"",
    b"\"status\"",
    b"\"AKTIV\"",
    b"\"SLETTET\"",
    b"05838099865",
    b"99999999999",
    b"00000000000",
    b"1.5",
    b"18446744073709551616",
    b"2099-12-31T23:59:59+01",
    b"\"alg\"",
    b"\"none\"",
    b"\"crit\"",
    b"\"kid\"",
    b"\r\n",
    b"\n",
];

/// One mutation of `input` (byte, range and dictionary edits, splices with `others`).
fn mutate(rng: &mut ChaCha8Rng, input: &[u8], others: &[Vec<u8>]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        let len = out.len();
        match rng.random_range(0..10) {
            0 if len > 0 => {
                let i = rng.random_range(0..len);
                out[i] ^= 1 << rng.random_range(0..8);
            }
            1 if len > 0 => {
                let i = rng.random_range(0..len);
                out[i] = [0u8, 0x7f, 0x80, 0xff, b'0', b'9', b'"'][rng.random_range(0..7)];
            }
            2 => {
                let i = rng.random_range(0..=len);
                out.insert(i, rng.random());
            }
            3 if len > 0 => {
                let a = rng.random_range(0..len);
                let b = rng.random_range(a..=len.min(a + 64));
                out.drain(a..b);
            }
            4 if len > 0 => {
                let a = rng.random_range(0..len);
                let b = rng.random_range(a..=len.min(a + 64));
                let copy = out[a..b].to_vec();
                let at = rng.random_range(0..=out.len());
                out.splice(at..at, copy);
            }
            5 | 6 => {
                let t = DICTIONARY[rng.random_range(0..DICTIONARY.len())];
                let at = rng.random_range(0..=len);
                out.splice(at..at, t.iter().copied());
            }
            7 if !others.is_empty() => {
                let other = &others[rng.random_range(0..others.len())];
                let at = rng.random_range(0..=len);
                let from = rng.random_range(0..=other.len());
                out.truncate(at);
                out.extend_from_slice(&other[from..]);
            }
            8 => {
                // Deep nesting, the classic stack exhaustion.
                let n = rng.random_range(50..20_000);
                let at = rng.random_range(0..=len);
                let open = if rng.random() {
                    b"["
                } else {
                    b"{\"a\":" as &[u8]
                };
                let nest: Vec<u8> = open.repeat(n);
                out.splice(at..at, nest);
            }
            _ if len > 0 => out.truncate(rng.random_range(0..len)),
            _ => {}
        }
    }
    out
}

/// Runs `check` on the regressions, the corpus and `iterations()` mutants of it.
fn run(target: &str, check: &mut dyn FnMut(&[u8]) -> Result<(), String>) {
    let corpus = files("corpus", target);
    assert!(!corpus.is_empty(), "no corpus for {target}");
    let mut rng = ChaCha8Rng::seed_from_u64(seed() ^ target.len() as u64);
    let replay = files("regressions", target)
        .into_iter()
        .chain(corpus.iter().cloned());
    let fail = |input: &[u8], why: String| -> ! {
        let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-failures");
        std::fs::create_dir_all(&out).unwrap();
        let file = out.join(format!(
            "{target}-{:016x}",
            xxhash_rust::xxh3::xxh3_64(input)
        ));
        std::fs::write(&file, input).unwrap();
        panic!("fuzz {target}: {why}; input kept in {}", file.display());
    };
    for input in replay {
        if let Err(why) = check(&input) {
            fail(&input, why);
        }
    }
    let n = iterations();
    for _ in 0..n {
        let base = &corpus[rng.random_range(0..corpus.len())];
        let input = mutate(&mut rng, base, &corpus);
        if let Err(why) = check(&input) {
            fail(&input, why);
        }
    }
    eprintln!(
        "fuzz {target}: {n} mutants and {} seeds, no failure",
        corpus.len()
    );
}

/// Runs `f`, turning a panic into an error.
fn no_panic<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| {
        p.downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_string()))
            .unwrap_or_else(|| "panic".into())
    })
}

#[test]
fn personer_body() {
    run("personer", &mut |input| {
        for v2 in [false, true] {
            let mut b = input.to_vec();
            if let Ok(r) = no_panic(|| krr::http::personer::parse_personer(&mut b, v2))?
                && (r.ids.is_empty() || r.ids.len() > 1000)
            {
                return Err(format!("accepted {} ids", r.ids.len()));
            }
            // The plain reading, where it reads at all, is the document's.
            if let Some(fast) = no_panic(|| krr::http::personer::parse_plain(input, v2))? {
                let mut b = input.to_vec();
                match krr::http::personer::parse_dom(&mut b, v2) {
                    Ok(dom) if dom == fast => {}
                    other => {
                        return Err(format!(
                            "plain reading {} ids (v2 {v2}), the document's {:?}",
                            fast.ids.len(),
                            other.map(|r| r.ids.len())
                        ));
                    }
                }
            }
        }
        Ok(())
    });
}

#[test]
fn feed_body() {
    run("feed", &mut |input| {
        let mut b = input.to_vec();
        let parsed = no_panic(|| krr::http::feed::parse_feed_request(&mut b))?;
        // What is accepted is what the input says: a non-negative integer fraEndringsId.
        // (Checked against serde_json where it reads the body too: the two parsers differ
        // on some escapes in fields the feed ignores.)
        if let Ok(fra) = parsed
            && let Ok(v) = serde_json::from_slice::<serde_json::Value>(input)
            && v["fraEndringsId"].as_u64() != Some(fra)
        {
            return Err(format!("accepted fraEndringsId {fra} for {v}"));
        }
        Ok(())
    });
}

#[test]
fn patch_body() {
    run("spraak", &mut |input| {
        let mut b = input.to_vec();
        no_panic(|| krr::http::person::parse_spraak(&mut b)).map(drop)
    });
}

#[test]
fn export_line() {
    let mut parser = krr::snapshot::source::LineParser::new();
    run("line", &mut |input| {
        no_panic(|| parser.parse(input)).map(drop)
    });
}

#[test]
fn journal_segment() {
    let tmp = tempfile::tempdir().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed());
    run("journal", &mut |input| {
        // Sometimes re-seal the frames after the mutation, so recovery reads past the
        // checksums into sequence and payload checks.
        let mut bytes = input.to_vec();
        if rng.random_bool(0.5) {
            reseal_frames(&mut bytes);
        }
        let path = tmp.path().join(krr::journal::format::segment_name(1));
        std::fs::write(&path, &bytes).unwrap();
        let scanned = no_panic(|| krr::journal::scan(tmp.path(), krr::journal::Mode::ReadOnly))?;
        if let Ok(scan) = scanned {
            for (i, e) in scan.entries.iter().enumerate() {
                if e.seq != i as u64 + 1 {
                    return Err(format!("entry {i} has sequence {}", e.seq));
                }
            }
        }
        Ok(())
    });
}

/// Recomputes the CRC of every frame whose length field fits, walking the segment.
fn reseal_frames(b: &mut [u8]) {
    let mut at = krr::journal::format::SEGMENT_HEADER_LEN;
    while at + 24 <= b.len() {
        let len = u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as usize;
        if len == 0 || len > 4096 || at + 24 + len > b.len() {
            return;
        }
        let crc = crc32c::crc32c(&b[at + 8..at + 24 + len]);
        b[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
        at += 24 + len;
    }
}

#[test]
fn snapshot_file() {
    let tmp = tempfile::tempdir().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed());
    let probe: Vec<_> = krr::dev::generate::synthetic_ids(20, 21).unwrap();
    run("snapshot", &mut |input| {
        let mut bytes = input.to_vec();
        let header = krr::snapshot::format::HEADER_LEN;
        if bytes.len() >= header && rng.random_bool(0.5) {
            use krr::snapshot::format::{body_checksum, off};
            // Re-seal the body (its length and checksum) and then the header, so the range
            // checks and the body's layout checks are reached.
            if rng.random_bool(0.7) {
                let body_len = (bytes.len() - header) as u64;
                bytes[off::BODY_LEN..off::BODY_LEN + 8].copy_from_slice(&body_len.to_le_bytes());
                let sum = body_checksum(&bytes[header..], 1);
                bytes[off::BODY_CHECKSUM..off::BODY_CHECKSUM + 8]
                    .copy_from_slice(&sum.to_le_bytes());
            }
            let at = off::HEADER_CHECKSUM;
            let sum = xxhash_rust::xxh3::xxh3_64(&bytes[..at]);
            bytes[at..at + 8].copy_from_slice(&sum.to_le_bytes());
        }
        let _ = no_panic(|| krr::snapshot::Header::decode(&bytes))?;
        let path = tmp.path().join("f.krr");
        std::fs::write(&path, &bytes).unwrap();
        if let Ok(s) = no_panic(|| krr::snapshot::Snapshot::open(&path))? {
            no_panic(|| {
                let stored: Vec<_> = s.ids().collect();
                for id in probe.iter().chain(&stored) {
                    if let Some(r) = s.get(*id) {
                        let _ = r.is_slettet();
                        let mut out = Vec::new();
                        s.write_record(&r, krr::model::Groups::ALL, None, &mut out);
                    }
                }
            })?;
        }
        Ok(())
    });
}

#[test]
fn access_token() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let jwks = std::fs::read(crate::common::http::fixture("keys/jwks.json")).unwrap();
    let keys = krr::auth::jwks::KeySet::parse(&jwks).unwrap();
    let store = std::sync::Arc::new(krr::auth::jwks::KeyStore::fixed(keys));
    let issuers = || vec!["https://maskinporten.no/".into()];
    let verifier = krr::auth::Verifier::new(store.clone(), issuers(), None, 60);
    // The reference: a verifier of its own (its own cache), only ever given the token that
    // `bearer` reads from the header as text.
    let reference = krr::auth::Verifier::new(store, issuers(), None, 60);
    // Tokens are minted now (they expire), not committed: the corpus holds claim sets.
    let seeds: Vec<String> = files("corpus", "token")
        .iter()
        .map(|claims| {
            let key = std::fs::read(crate::common::http::fixture("keys/issuer-rsa.pem")).unwrap();
            let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
            h.kid = Some("test-rsa".into());
            let mut v: serde_json::Value = serde_json::from_slice(claims).unwrap();
            v["exp"] = (chrono::Utc::now().timestamp() + 3600).into();
            jsonwebtoken::encode(
                &h,
                &v,
                &jsonwebtoken::EncodingKey::from_rsa_pem(&key).unwrap(),
            )
            .unwrap()
        })
        .collect();
    let decoded = |t: &str| -> Vec<Vec<u8>> {
        use base64::Engine;
        t.split('.')
            .map(|p| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(p)
                    .unwrap_or_default()
            })
            .collect()
    };
    let originals: Vec<Vec<Vec<u8>>> = seeds.iter().map(|t| decoded(t)).collect();
    // The seeds verified (and so kept by the verifier) first: mutants then also meet the
    // cache, which finds kept tokens by their bytes before the header is read as text.
    for t in &seeds {
        let _ = rt.block_on(verifier.verify(t));
    }
    // Taken from the cache or not, a header gets exactly what the reference gives the
    // token read from it as text.
    let same_as_text = |header: &[u8], what: &str| {
        let direct = no_panic(|| rt.block_on(verifier.verify_header(Some(header))))
            .unwrap_or_else(|p| panic!("{what}: panic {p}"));
        let via_text = match krr::auth::token::bearer(Some(header)) {
            Ok(t) => rt.block_on(reference.verify(t)),
            Err(e) => Err(e),
        };
        assert_eq!(
            direct.as_deref().map_err(Clone::clone),
            via_text.as_deref().map_err(Clone::clone),
            "{what}: {}",
            String::from_utf8_lossy(header)
        );
    };
    // The spellings around a kept token that the byte path reads itself or must leave to
    // the text: scheme case, ASCII and Unicode white space at each edge, a tab for the
    // space, invalid UTF-8.
    let kept = seeds[0].as_bytes();
    for (before, scheme, gap, after) in [
        (&b""[..], &b"Bearer"[..], &b" "[..], &b""[..]),
        (b"", b"bEaReR", b" ", b""),
        (b" \t", b"BEARER", b"  \t", b"\t \r\n"),
        (b"\x0b", b"Bearer", b" ", b""),
        (b"", b"Bearer", b" \x0b", b""),
        (b"", b"Bearer", b" ", b"\x0b"),
        (b"\xc2\xa0", b"Bearer", b" ", b""),
        (b"", b"Bearer", b" \xc2\xa0", b""),
        (b"", b"Bearer", b" ", b"\xc2\xa0"),
        (b"", b"Bearer", b"\t", b""),
        (b"", b"Bearer", b" ", b"\xff"),
        (b"\xff", b"Bearer", b" ", b""),
        (b"", b"Basic", b" ", b""),
    ] {
        let header = [before, scheme, gap, kept, after].concat();
        same_as_text(&header, "fixed token header");
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed());
    let n = iterations();
    for i in 0..n {
        let base = seeds[rng.random_range(0..seeds.len())].as_bytes();
        let header = mutate(&mut rng, &[b"Bearer ", base].concat(), &[]);
        same_as_text(&header, &format!("fuzz token header {i}"));
        let mutant = mutate(&mut rng, base, &[]);
        let Ok(token) = std::str::from_utf8(&mutant) else {
            continue;
        };
        let verified = no_panic(|| rt.block_on(verifier.verify(token)))
            .unwrap_or_else(|p| panic!("fuzz token {i}: panic {p} on {token}"));
        // Accepted only if it says exactly what a signed original says (base64 may spell
        // the same bytes differently).
        if verified.is_ok() && !originals.contains(&decoded(token)) {
            panic!("fuzz token {i}: a forged token was accepted: {token}");
        }
        let _ = rng.next_u32();
    }
    eprintln!(
        "fuzz token: {n} mutants of {} seeds, no failure",
        seeds.len()
    );
}

#[test]
fn accept_encoding() {
    use krr::http::coding::{Coding, negotiate};
    run("accept_encoding", &mut |input| {
        let Ok(value) = hyper::header::HeaderValue::from_bytes(input) else {
            return Ok(());
        };
        let mut headers = hyper::HeaderMap::new();
        headers.insert(hyper::header::ACCEPT_ENCODING, value);
        let chosen = no_panic(|| negotiate(&headers))?;
        // A coding is only chosen when the header names it (or `*`).
        let text = String::from_utf8_lossy(input).to_ascii_lowercase();
        let named = match chosen {
            Coding::Identity => true,
            Coding::Gzip => text.contains("gzip") || text.contains('*'),
            Coding::Zstd => text.contains("zstd") || text.contains('*'),
        };
        if named {
            Ok(())
        } else {
            Err(format!("chose {chosen:?} for {text:?}"))
        }
    });
}

#[test]
fn deflate_round_trip() {
    use std::io::Read;
    run("deflate", &mut |input| {
        // The block size from the input too, down to one byte a block.
        let chunk = 1 + usize::from(input.first().copied().unwrap_or(0)) * 37;
        let z = no_panic(|| krr::http::coding::deflate::deflate(input, chunk))?;
        let mut back = Vec::new();
        flate2::read::DeflateDecoder::new(&z[..])
            .read_to_end(&mut back)
            .map_err(|e| format!("not a DEFLATE stream: {e}"))?;
        if back == input {
            Ok(())
        } else {
            Err(format!("{} bytes came back as {}", input.len(), back.len()))
        }
    });
}

#[test]
fn quota_file() {
    let path = Path::new("quotas.toml");
    run("quota_file", &mut |input| {
        let text = String::from_utf8_lossy(input);
        match no_panic(|| krr::http::quota::parse_file(&text, path))? {
            Ok(_) => Ok(()),
            // An operator's file may hold anything; its errors never repeat an 11-digit run.
            Err(e) if crate::common::http::has_personal_number(&e.to_string()) => {
                Err(format!("error repeats a personal number: {e}"))
            }
            Err(_) => Ok(()),
        }
    });
}
