//! Hostile input and faults at the real boundary (issue 14): what an attacker or a careless
//! operator can send, and that the lookups every agency depends on keep answering.

use std::time::Duration;

use hyper::{Method, StatusCode};

use crate::common::http::*;

const WRITE: &str = "krr:user/spraak.write";

/// A body of `depth` nested arrays, and one hiding them in a field the service ignores.
fn nested(depth: usize) -> (String, String) {
    let deep = "[".repeat(depth) + &"]".repeat(depth);
    let hidden = format!(r#"{{"personidentifikatorer":["05838099865"],"x":{deep}}}"#);
    (deep, hidden)
}

#[tokio::test]
async fn deeply_nested_json_is_a_400_and_the_service_stays_up() {
    let s = start(Options::default()).await;
    let machine = scoped(ALL_SCOPES);
    let pid = id(&s.register[0]).to_string();
    let too_deep = "request body: JSON is nested deeper than 64 levels";
    let (deep, hidden) = nested(10_000);
    let objects = r#"{"a":"#.repeat(10_000) + "1" + &"}".repeat(10_000);
    for path in ["/rest/v1/personer", "/rest/v2/personer"] {
        for body in [&deep, &hidden, &objects] {
            check_error(&post(&s, path, &machine, body).await, 400, too_deep);
        }
    }
    let citizen = user(WRITE, &pid);
    let spraak = r#"{"spraak":"#.repeat(5_000) + r#""nb""# + &"}".repeat(5_000);
    for body in [&deep, &spraak] {
        let a = patch_person(s.addr, &citizen, body.clone()).await;
        check_error(&a, 400, too_deep);
    }
    // Still serving, and 64 levels (the bound) are only refused for what they are.
    let ok = post(&s, "/rest/v1/personer", &machine, &ids_body(&[&pid])).await;
    assert_eq!(ok.status, StatusCode::OK);
    let (_, at_bound) = nested(63);
    let a = post(&s, "/rest/v1/personer", &machine, &at_bound).await;
    assert_eq!(
        a.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&a.body)
    );
}

/// One client that pipelines cheap requests and never reads an answer, reconnecting each
/// time the server cuts it off, until `stop` is set.
async fn slow_reader(
    addr: std::net::SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use std::sync::atomic::Ordering;
    use tokio::io::AsyncWriteExt;
    let requests = "GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n".repeat(200);
    while !stop.load(Ordering::Relaxed) {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let Ok(mut c) = socket.connect(addr).await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        // Write until the server stops reading (its buffers are full) or cuts us off.
        while !stop.load(Ordering::Relaxed) {
            match tokio::time::timeout(Duration::from_millis(200), c.write_all(requests.as_bytes()))
                .await
            {
                Ok(Ok(())) => {}
                Ok(Err(_)) => break,
                Err(_) => {
                    // Blocked: the server's answers pile up unread. Is it still open?
                    let mut probe = [0u8; 1];
                    match c.try_read(&mut probe) {
                        Ok(0) => break,
                        Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => break,
                        _ => {}
                    }
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_readers_lose_their_slots_and_the_api_keeps_answering() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let limits = krr::http::Limits {
        max_connections: 8,
        write_timeout: Duration::from_millis(500),
        ..krr::http::Limits::default()
    };
    let s = start(Options {
        limits,
        ..Default::default()
    })
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let attackers: Vec<_> = (0..2 * limits.max_connections)
        .map(|_| tokio::spawn(slow_reader(s.addr, stop.clone())))
        .collect();
    // Let them take every slot.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let machine = scoped(ALL_SCOPES);
    let body = ids_body(&[id(&s.register[0])]);
    let mut slowest = Duration::ZERO;
    for _ in 0..5 {
        let started = std::time::Instant::now();
        let a = tokio::time::timeout(
            Duration::from_secs(10),
            post(&s, "/rest/v1/personer", &machine, &body),
        )
        .await
        .expect("the API answered while slow readers held connections");
        assert_eq!(a.status, StatusCode::OK);
        slowest = slowest.max(started.elapsed());
    }
    stop.store(true, Ordering::Relaxed);
    for a in attackers {
        a.abort();
    }
    let scrape = krr::metrics::handle().render();
    let cut = metric(
        &scrape,
        "krr_connections_timed_out_total",
        r#"stage="write""#,
    )
    .unwrap_or(0.0);
    assert!(
        cut >= 1.0,
        "no connection was cut for not reading:\n{scrape}"
    );
    eprintln!(
        "slowest lookup while {} slow readers tried: {slowest:?}",
        2 * limits.max_connections
    );
}

/// Builds the register `name` (`count` persons, `seed`) at `build_time` into `dir`.
fn build_at(
    dir: &std::path::Path,
    name: &str,
    count: u64,
    seed: u64,
    build_time: i64,
) -> std::path::PathBuf {
    let (jsonl, _) = crate::common::register(dir, name, count, seed);
    let out = dir.join(format!("{name}-at.krr"));
    let opts = krr::snapshot::BuildOptions {
        build_time: krr::model::time::Timestamp(build_time),
        ..crate::common::build_opts()
    };
    krr::snapshot::build_file(&jsonl, &out, &opts).unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cp_over_the_served_snapshot_under_load_fails_no_request() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let s = start(Options::default()).await;
    let served = s.dir.path().join("snapshots/reg.krr");
    let newer = build_at(
        s.dir.path(),
        "next",
        800,
        99,
        crate::common::BUILD_TIME.0 + 3600,
    );
    let machine = scoped(ALL_SCOPES);
    let ids: Vec<String> = s
        .register
        .iter()
        .take(50)
        .map(|v| id(v).to_string())
        .collect();
    let body = ids_body(&ids.iter().map(String::as_str).collect::<Vec<_>>());
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (addr, body, auth) = (s.addr, body.clone(), format!("Bearer {machine}"));
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let a = try_call(
                        addr,
                        Method::POST,
                        "/rest/v1/personer",
                        &[
                            ("Authorization", &auth),
                            ("Content-Type", "application/json"),
                        ],
                        body.clone(),
                    )
                    .await;
                    match a {
                        Some(a) if a.status == StatusCode::OK => ok.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The operator's 3 a.m. mistake: the same inode, truncated and rewritten.
    let inode =
        |p: &std::path::Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
    let before = inode(&served);
    let cp = std::process::Command::new("cp")
        .arg(&newer)
        .arg(&served)
        .status()
        .unwrap();
    assert!(cp.success());
    assert_eq!(
        inode(&served),
        before,
        "cp wrote a new file, not the same one"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let answer = reload(&s).await;
    assert_eq!(answer["result"], "swapped", "{answer}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed around the cp"
    );
    assert!(ok.load(Ordering::Relaxed) > 10);
    // The new register is what is served now; the published file is where the operator
    // put it.
    let new_id = krr::snapshot::Header::read(&newer).unwrap().id();
    assert_eq!(served_id(&s), Some(new_id));
    assert!(served.exists());
}

#[tokio::test]
async fn future_shrunken_and_unreadable_snapshots_are_refused_and_named() {
    let s = start(Options::default()).await;
    let snaps = s.dir.path().join("snapshots");
    let now = krr::model::time::Timestamp::now().0;
    // Built elsewhere with a clock far ahead: the builder refuses it here...
    let (jsonl, _) = crate::common::register(s.dir.path(), "future", 800, 5);
    let opts = krr::snapshot::BuildOptions {
        build_time: krr::model::time::Timestamp(now + 86_400 * 365),
        ..crate::common::build_opts()
    };
    let err = krr::snapshot::build_file(&jsonl, &snaps.join("future.krr"), &opts).unwrap_err();
    assert!(
        err.to_string().contains("is ahead of this machine's clock"),
        "{err}"
    );
    // ...and a file that says so anyway (its header re-sealed) is never served.
    let near = build_at(s.dir.path(), "near", 800, 5, now);
    let mut bytes = std::fs::read(&near).unwrap();
    bytes[krr::snapshot::format::off::BUILD_TIME..krr::snapshot::format::off::BUILD_TIME + 8]
        .copy_from_slice(&(now + 86_400 * 365).to_le_bytes());
    let at = krr::snapshot::format::off::HEADER_CHECKSUM;
    let sum = xxhash_rust::xxh3::xxh3_64(&bytes[..at]);
    bytes[at..at + 8].copy_from_slice(&sum.to_le_bytes());
    std::fs::write(snaps.join("future.krr"), &bytes).unwrap();
    std::fs::write(snaps.join("garbage.krr"), b"not a snapshot at all").unwrap();
    let answer = reload(&s).await;
    assert_eq!(answer["result"], "unchanged", "{answer}");
    let refused = answer["refused"].as_array().unwrap();
    let reason = |name: &str| {
        refused
            .iter()
            .find(|r| r["file"].as_str().unwrap().ends_with(name))
            .map(|r| r["reason"].as_str().unwrap().to_string())
            .unwrap_or_else(|| panic!("{name} is not named: {answer}"))
    };
    assert!(reason("future.krr").contains("ahead of this machine's clock"));
    assert!(
        reason("garbage.krr").contains("too short"),
        "{}",
        reason("garbage.krr")
    );
    std::fs::remove_file(snaps.join("future.krr")).unwrap();
    std::fs::remove_file(snaps.join("garbage.krr")).unwrap();
    // A correct snapshot after it is served (the future one did not hide it).
    std::fs::rename(&near, snaps.join("near.krr")).unwrap();
    let answer = reload(&s).await;
    assert_eq!(answer["result"], "swapped", "{answer}");

    // An export cut to 10 of 800 persons builds a valid snapshot; it is not swapped in...
    let cut = build_at(s.dir.path(), "cut", 10, 5, now + 1);
    std::fs::rename(&cut, snaps.join("cut.krr")).unwrap();
    let answer = reload(&s).await;
    assert_eq!(answer["result"], "unchanged", "{answer}");
    let why = answer["refused"][0]["reason"].as_str().unwrap();
    assert!(
        why.contains("has 10 persons") && why.contains("--max-shrink 1 %"),
        "{why}"
    );
    // ...unless the operator says so.
    let a = admin(&s, Method::POST, "/admin/reload?allow-shrink=true").await;
    assert_eq!(
        a.json()["result"],
        "swapped",
        "{}",
        String::from_utf8_lossy(&a.body)
    );
}

#[tokio::test]
async fn http_edges_host_head_and_encoded_paths() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = start(Options::default()).await;
    // No Host header in HTTP/1.1: 400 with the JSON body.
    let mut c = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    c.write_all(b"GET /openapi.json HTTP/1.1\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    c.read_to_string(&mut text).await.unwrap();
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("the request has no Host header"), "{text}");
    // Requests hyper refuses before the service sees them get the JSON body too.
    for raw in [
        &b"GARBAGE\r\n\r\n"[..],
        b"POST /rest/v1/personer HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"GET /openapi.json HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    ] {
        let mut c = tokio::net::TcpStream::connect(s.addr).await.unwrap();
        c.write_all(raw).await.unwrap();
        let mut text = String::new();
        c.read_to_string(&mut text).await.unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 400 Bad Request"), "{text}");
        assert!(head.contains("content-type: application/json"), "{text}");
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["status"], 400);
        assert_eq!(
            v["message"],
            "the request is not valid HTTP/1.1 (its request line, a header or its Content-Length)"
        );
    }
    // HEAD works like GET, without a body.
    let a = call(s.addr, Method::HEAD, "/openapi.json", &[], "").await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.body.is_empty());
    let a = call(s.addr, Method::HEAD, "/rest/v1/printSertifikat", &[], "").await;
    assert_eq!(a.status, StatusCode::OK);
    // A personal number spelled with escapes is redacted in the 404's path.
    let a = call(
        s.addr,
        Method::GET,
        "/rest/v1/x/%30%35%38%33%38%30%39%39%38%36%35",
        &[],
        "",
    )
    .await;
    check_error(&a, 404, "no such endpoint");
    assert_eq!(a.json()["path"], "/rest/v1/x/…");
    // printSertifikat as JOSE is the answer signed once at start.
    let a = call(
        s.addr,
        Method::GET,
        "/rest/v1/printSertifikat",
        &[("Accept", "application/jose")],
        "",
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body, s.state.print_jose.clone().unwrap().to_vec());
}

#[tokio::test]
async fn tokens_with_crit_iss_arrays_or_absurd_exp_are_refused_every_time() {
    let s = start(Options::default()).await;
    let body = ids_body(&[id(&s.register[0])]);
    let now = chrono::Utc::now().timestamp();
    let sign = |header: serde_json::Value, claims: serde_json::Value| {
        use base64::Engine;
        use rsa::pkcs8::DecodePrivateKey;
        use rsa::signature::{SignatureEncoding, Signer};
        let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let pem = std::fs::read_to_string(fixture("keys/issuer-rsa.pem")).unwrap();
        let k = rsa::RsaPrivateKey::from_pkcs8_pem(&pem)
            .or_else(|_| {
                <rsa::RsaPrivateKey as rsa::pkcs1::DecodeRsaPrivateKey>::from_pkcs1_pem(&pem)
            })
            .unwrap();
        let sig = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(k).sign(input.as_bytes());
        format!("{input}.{}", b64(&sig.to_bytes()))
    };
    let claims = |exp: serde_json::Value, iss: serde_json::Value| serde_json::json!({"iss": iss, "exp": exp, "scope": ALL_SCOPES});
    let rs256 = serde_json::json!({"alg": "RS256", "kid": "test-rsa"});
    let iss = serde_json::json!("https://maskinporten.no/");
    let cases = [
        (
            sign(
                serde_json::json!({"alg": "RS256", "kid": "test-rsa", "crit": ["exp"]}),
                claims(serde_json::json!(now + 600), iss.clone()),
            ),
            "token names critical header extensions (crit) this service does not understand",
        ),
        (
            sign(
                rs256.clone(),
                claims(
                    serde_json::json!(now + 600),
                    serde_json::json!(["https://maskinporten.no/"]),
                ),
            ),
            "wrong issuer",
        ),
        (
            sign(
                rs256.clone(),
                claims(serde_json::json!(i64::MAX), iss.clone()),
            ),
            "token exp is out of range",
        ),
        (
            sign(
                rs256.clone(),
                claims(serde_json::json!(i64::MAX - 30), iss.clone()),
            ),
            "token exp is out of range",
        ),
    ];
    for (token, why) in &cases {
        // The same answer every time (the cache must not make it flip).
        for _ in 0..6 {
            let a = post(&s, "/rest/v1/personer", token, &body).await;
            check_error(&a, 401, why);
        }
    }
}

/// A tmpfs of `size` mounted on a new directory, unmounted on drop; `None` when this
/// process may not mount (not root).
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let root = std::process::Command::new("id").arg("-u").output().unwrap();
        if String::from_utf8_lossy(&root.stdout).trim() != "0" {
            eprintln!("not root: the tmpfs test cannot mount and is not run");
            return None;
        }
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(ok.success(), "mount -t tmpfs failed as root");
        Some(Tmpfs(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.0.path())
            .status();
    }
}

#[tokio::test]
async fn a_full_journal_disk_refuses_changes_keeps_lookups_and_heals() {
    let Some(disk) = Tmpfs::mount("1m") else {
        return;
    };
    let s = start(Options {
        journal_dir: Some(disk.0.path().join("journal")),
        // A new segment every two changes: creation is where a full disk shows first.
        journal: krr::journal::JournalOptions {
            segment_bytes: 80,
            ..krr::journal::JournalOptions::default()
        },
        ..Default::default()
    })
    .await;
    let pid = id(&s.register[0]).to_string();
    let citizen = user(WRITE, &pid);
    let patch = |spraak: &'static str| {
        patch_person(s.addr, &citizen, format!(r#"{{"spraak":"{spraak}"}}"#))
    };
    assert_eq!(patch("en").await.status, StatusCode::NO_CONTENT);
    // Fill the disk.
    let filler = disk.0.path().join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        while f.write_all(&[0u8; 4096]).is_ok() {}
    }
    let mut refused = None;
    for _ in 0..20 {
        let a = patch("nn").await;
        if a.status != StatusCode::NO_CONTENT {
            refused = Some(a);
            break;
        }
    }
    let a = refused.expect("no PATCH was refused on a full disk");
    check_error(
        &a,
        503,
        "the journal cannot take changes now (its disk is full or failing); the change was not made, try again later",
    );
    // Lookups and readiness go on; the metric says why changes are refused.
    let machine = scoped(ALL_SCOPES);
    let ok = post(&s, "/rest/v1/personer", &machine, &ids_body(&[&pid])).await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(readiness(s.admin).await, StatusCode::OK);
    let scrape = String::from_utf8(admin(&s, Method::GET, "/metrics").await.body).unwrap();
    assert_eq!(
        metric(&scrape, "krr_journal_refusing", r#"reason="no-space""#),
        Some(1.0),
        "{scrape}"
    );
    // Space returns: changes are taken again, and the gauge goes down.
    std::fs::remove_file(&filler).unwrap();
    assert_eq!(patch("se").await.status, StatusCode::NO_CONTENT);
    let scrape = String::from_utf8(admin(&s, Method::GET, "/metrics").await.body).unwrap();
    assert_eq!(
        metric(&scrape, "krr_journal_refusing", r#"reason="no-space""#),
        Some(0.0)
    );
    let dir = s.stop().await;
    // Every acknowledged change is in the journal; nothing of the refused ones.
    let scan =
        krr::journal::scan(&disk.0.path().join("journal"), krr::journal::Mode::ReadOnly).unwrap();
    let last = scan.entries.last().unwrap();
    assert!(matches!(
        last.change,
        krr::journal::Change::SetSpraak {
            spraak: krr::model::Spraak::Se,
            ..
        }
    ));
    scan.check_complete(&disk.0.path().join("journal"), 0)
        .unwrap();
    drop(dir);
}

#[tokio::test]
async fn a_snapshot_the_journal_cannot_complete_is_refused_not_swapped() {
    let s = start(Options::default()).await;
    let pid = id(&s.register[0]).to_string();
    let a = patch_person(s.addr, &user(WRITE, &pid), r#"{"spraak":"en"}"#).await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    // The journal's only segment is lost (HEAD still names it); a newer snapshot that
    // folded nothing arrives: serving it would lose the change.
    let journal = s.dir.path().join("journal");
    for (_, seg) in krr::journal::segment_files(&journal).unwrap() {
        std::fs::remove_file(seg).unwrap();
    }
    let newer = build_at(
        s.dir.path(),
        "next",
        800,
        77,
        crate::common::BUILD_TIME.0 + 60,
    );
    std::fs::rename(&newer, s.dir.path().join("snapshots/next.krr")).unwrap();
    let before = served_id(&s);
    let answer = reload(&s).await;
    assert_eq!(answer["result"], "unchanged", "{answer}");
    let why = answer["refused"][0]["reason"]
        .as_str()
        .unwrap_or_else(|| panic!("{answer}"));
    assert!(
        why.contains("not served")
            && why.contains("missing the changes with sequence numbers 1 to 1"),
        "{why}"
    );
    assert_eq!(served_id(&s), before);
    // Remembered: the next reload does not copy and verify it again.
    let answer = reload(&s).await;
    assert_eq!(answer["result"], "unchanged");
    assert!(answer["refused"].as_array().unwrap().is_empty(), "{answer}");
    // No copy of it is left behind.
    let copies = std::fs::read_dir(s.dir.path().join("snapshots/.served"))
        .unwrap()
        .count();
    assert_eq!(copies, 1);
}
