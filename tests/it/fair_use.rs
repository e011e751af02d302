//! Fair use and traceability (issue 18): request ids.

use hyper::{Method, StatusCode};

use crate::common::http::*;

/// The answer of one lookup with `headers` added (the token first).
async fn lookup(
    addr: std::net::SocketAddr,
    token: Option<&str>,
    headers: &[(&str, &str)],
) -> Answer {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut all: Vec<(&str, &str)> = vec![("Content-Type", "application/json")];
    if let Some(a) = &auth {
        all.push(("Authorization", a));
    }
    all.extend_from_slice(headers);
    call(
        addr,
        Method::POST,
        "/rest/v1/personer",
        &all,
        ids_body(&["20914695016"]),
    )
    .await
}

fn generated(id: &str) -> bool {
    id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

#[test]
fn request_ids_are_echoed_generated_or_refused_and_logged_without_personal_numbers() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("snapshots")).unwrap();
    let (_, krr) = crate::common::register(dir.path(), "reg", 50, 5);
    std::fs::rename(&krr, dir.path().join("snapshots/reg.krr")).unwrap();
    let serve = spawn_serve(dir.path(), &[], "info");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let t = scoped(ALL_SCOPES);
    rt.block_on(async {
        // Echoed from each of the three headers, on a success and on errors.
        for (header, id) in [
            ("X-Request-Id", "req-4f1c"),
            ("X-Correlation-Id", "corr-77aa"),
            ("Nav-Call-Id", "navcall-0001"),
        ] {
            let ok = lookup(serve.api, Some(&t), &[(header, id)]).await;
            assert_eq!(ok.status, StatusCode::OK);
            assert_eq!(ok.header("x-request-id"), id, "{header}");
            let unauthorized = lookup(serve.api, None, &[(header, id)]).await;
            assert_eq!(unauthorized.status, StatusCode::UNAUTHORIZED);
            assert_eq!(unauthorized.header("x-request-id"), id, "{header}");
        }
        let missing = call(
            serve.api,
            Method::GET,
            "/nowhere",
            &[("X-Request-Id", "nf-1")],
            "",
        )
        .await;
        assert_eq!(missing.status, StatusCode::NOT_FOUND);
        assert_eq!(missing.header("x-request-id"), "nf-1");
        // None sent: a new one each time.
        let a = lookup(serve.api, Some(&t), &[]).await;
        let b = lookup(serve.api, Some(&t), &[]).await;
        assert!(generated(a.header("x-request-id")));
        assert_ne!(a.header("x-request-id"), b.header("x-request-id"));
        // An id holding a personal number (an 11-digit run) is not repeated.
        let r = lookup(serve.api, Some(&t), &[("X-Request-Id", "id-20914695016")]).await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(generated(r.header("x-request-id")));
    });
    // The access lines carry the ids; the refused one is nowhere.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let lines = serve.lines.lock().unwrap().clone();
    for id in ["req-4f1c", "corr-77aa", "navcall-0001", "nf-1"] {
        assert!(
            lines
                .iter()
                .any(|l| l.contains("krr::access")
                    && l.contains(&format!("\"request_id\":\"{id}\""))),
            "no access line with {id}"
        );
    }
    let text = lines.join("\n");
    assert!(!text.contains("20914695016"));
    assert!(!has_personal_number(&text));
}

#[tokio::test]
async fn past_max_in_flight_requests_are_shed_at_once_with_retry_after() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = start(Options {
        limits: krr::http::Limits {
            max_in_flight: 1,
            body_timeout: std::time::Duration::from_secs(5),
            ..krr::http::Limits::default()
        },
        ..Options::default()
    })
    .await;
    let t = scoped(ALL_SCOPES);
    let body = ids_body(&[id(&s.register[0])]);
    // One request in progress: its body comes in two parts.
    let mut slow = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let head = format!(
        "POST /rest/v1/personer HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {t}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    slow.write_all(&body.as_bytes()[..5]).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    // The next one is answered at once, with nothing done.
    let started = std::time::Instant::now();
    let shed = post(&s, "/rest/v1/personer", &t, &body).await;
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
    check_error(
        &shed,
        503,
        "the service is at capacity; nothing was done, try again shortly",
    );
    assert_eq!(shed.header("retry-after"), "1");
    assert!(!shed.header("x-request-id").is_empty());
    // The first one finishes; then the service takes requests again.
    slow.write_all(&body.as_bytes()[5..]).await.unwrap();
    let mut buf = vec![0u8; 65536];
    let n = slow.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let again = post(&s, "/rest/v1/personer", &t, &body).await;
    assert_eq!(again.status, StatusCode::OK);
}

/// A machine token of organisation `org` with every global scope.
fn org_token(org: &str) -> String {
    token(krr::dev::mint::MintOptions {
        scope: ALL_SCOPES.into(),
        consumer: org.into(),
        ..Default::default()
    })
}

/// A batch of `n` of the register's ids.
fn batch(s: &Server, n: usize) -> String {
    let ids: Vec<&str> = s.register.iter().take(n).map(id).collect();
    ids_body(&ids)
}

async fn rejections(s: &Server, org: &str) -> f64 {
    let text = admin(s, Method::GET, "/metrics").await;
    metric(
        std::str::from_utf8(&text.body).unwrap(),
        "krr_quota_rejections_total",
        &format!("consumer=\"{org}\""),
    )
    .unwrap_or(0.0)
}

/// Uses up `org`'s burst of 5 (a batch of 3 and two single ids, each answer saying what is
/// left) and returns the sixth request's answer, refused; `None` when the sequence took
/// a second or more (a person refilled: the counts differ).
async fn use_up(s: &Server, org: &str) -> Option<Answer> {
    let a = org_token(org);
    let rejected_before = rejections(s, org).await;
    let started = std::time::Instant::now();
    let first = post(s, "/rest/v1/personer", &a, &batch(s, 3)).await;
    let second = post(s, "/rest/v1/personer", &a, &batch(s, 1)).await;
    let third = post(s, "/rest/v1/personer", &a, &batch(s, 1)).await;
    let refused = post(s, "/rest/v1/personer", &a, &batch(s, 1)).await;
    if started.elapsed() >= std::time::Duration::from_millis(900) {
        return None;
    }
    for r in [&first, &second, &third] {
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(
            r.header("ratelimit-policy"),
            "\"persons\";q=5;qu=\"persons\";w=5"
        );
    }
    assert_eq!(first.header("ratelimit"), "\"persons\";r=2;t=3");
    assert!(second.header("ratelimit").starts_with("\"persons\";r=1;"));
    assert!(third.header("ratelimit").starts_with("\"persons\";r=0;"));
    // The next is refused with nothing done, and says when to come back.
    check_error(
        &refused,
        429,
        "this consumer's quota of persons is used up; nothing was done, try again after Retry-After seconds",
    );
    assert_eq!(refused.header("retry-after"), "1");
    assert!(refused.header("ratelimit").starts_with("\"persons\";r=0;"));
    assert!(!refused.header("x-request-id").is_empty());
    assert_eq!(rejections(s, org).await, rejected_before + 1.0);
    Some(refused)
}

#[tokio::test]
async fn a_consumer_over_its_quota_gets_429_until_it_refills_and_others_are_untouched() {
    // 5 persons at once, one more a second.
    let s = start(Options {
        quotas: krr::http::quota::QuotaSettings {
            persons_per_second: Some(1),
            burst: Some(5),
            ..Default::default()
        },
        ..Options::default()
    })
    .await;
    let b = org_token("889640782");
    // The exact counts hold when the sequence takes less than the second that refills a
    // person; on a stalled machine it is tried again with another consumer.
    let mut tried = Vec::new();
    let (org, refused) = loop {
        let org = ["974760673", "912000187", "913000272"][tried.len()];
        match use_up(&s, org).await {
            Some(refused) => break (org, refused),
            None if tried.len() < 2 => tried.push(org),
            None => panic!("every try stalled past a second: {tried:?}"),
        }
    };
    let a = org_token(org);
    // As the OpenAPI document describes it.
    let doc = call(s.addr, Method::GET, "/openapi.json", &[], "")
        .await
        .json();
    crate::ops::validate(
        &doc,
        "over quota",
        "/rest/v1/personer",
        &Method::POST,
        &refused,
    );
    // A batch larger than the burst can never be served: 400, not an endless 429 (to a
    // consumer within its quota: one over it is refused before its body is read).
    let too_large = post(&s, "/rest/v1/personer", &b, &batch(&s, 6)).await;
    check_error(
        &too_large,
        400,
        "this request asks for 6 persons, more than this consumer's quota allows at once (5); send smaller batches",
    );
    // Another consumer has its own bucket (the refused batch cost it nothing).
    for _ in 0..5 {
        let r = post(&s, "/rest/v1/personer", &b, &batch(&s, 1)).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    // A change-feed page costs its entries, charged once it is made: the page of the whole
    // (800-person) register puts a fresh consumer deep in debt.
    let reader = token(krr::dev::mint::MintOptions {
        scope: format!("{ALL_SCOPES} krr:global/hentendring.read"),
        consumer: "914000357".into(),
        ..Default::default()
    });
    let page = post(
        &s,
        "/rest/v2/krr/hentEndringer",
        &reader,
        r#"{"fraEndringsId":0}"#,
    )
    .await;
    assert_eq!(page.status, StatusCode::OK);
    let entries = page.json()["list"].as_array().unwrap().len() as u64;
    assert!(entries > 5, "{entries}");
    let after = post(&s, "/rest/v1/personer", &reader, &batch(&s, 1)).await;
    assert_eq!(after.status, StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = after.header("retry-after").parse().unwrap();
    // Owed: the entries less the burst of 5, at one a second (give or take the second
    // the requests took).
    assert!(
        (entries - 6..=entries - 4).contains(&wait),
        "Retry-After {wait} for {entries} entries"
    );
    // After the wait, served again.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let again = post(&s, "/rest/v1/personer", &a, &batch(&s, 1)).await;
    assert_eq!(again.status, StatusCode::OK);
    // A citizen's own lookup costs one person of its client's quota ("client:krr-token").
    let pid = id(&s.register[0]).to_string();
    let citizen = user("krr:user/kontaktinformasjon.read", &pid);
    let read_at = std::time::Instant::now();
    let r = call(
        s.addr,
        Method::GET,
        "/rest/v1/person",
        &[("Authorization", &format!("Bearer {citizen}"))],
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("ratelimit"), "\"persons\";r=4;t=1");
    // A change of language costs one person once it is made.
    let writer = user("krr:user/spraak.write", &pid);
    let r = patch_person(s.addr, &writer, r#"{"spraak":"nn"}"#).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    // (Unless a second passed since the lookup, refilling one.)
    if read_at.elapsed() < std::time::Duration::from_millis(900) {
        assert!(
            r.header("ratelimit").starts_with("\"persons\";r=3;"),
            "{}",
            r.header("ratelimit")
        );
    }
}

fn write(path: &std::path::Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[tokio::test]
async fn the_quota_file_overrides_per_consumer_and_is_reloaded() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("quotas.toml");
    write(
        &file,
        "# per-consumer quotas\n[consumers.\"974760673\"]\npersons_per_second = 1\nburst = 3\n",
    );
    let s = start(Options {
        quotas: krr::http::quota::QuotaSettings {
            file: Some(file.clone()),
            ..Default::default()
        },
        ..Options::default()
    })
    .await;
    let limited = org_token("974760673");
    let free = org_token("889640782");
    for _ in 0..3 {
        let r = post(&s, "/rest/v1/personer", &limited, &batch(&s, 1)).await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.header("ratelimit-policy").contains(";q=3;"));
    }
    assert_eq!(
        post(&s, "/rest/v1/personer", &limited, &batch(&s, 1))
            .await
            .status,
        StatusCode::TOO_MANY_REQUESTS
    );
    // A consumer without an override, and no default: no quota, no RateLimit headers.
    let r = post(&s, "/rest/v1/personer", &free, &batch(&s, 1000)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.headers.get("ratelimit").is_none());
    assert!(r.headers.get("ratelimit-policy").is_none());
    // A larger burst, reloaded: what was used stays counted, the new room is there at once.
    write(
        &file,
        "[consumers.\"974760673\"]\npersons_per_second = 1\nburst = 10\n",
    );
    let v = reload(&s).await;
    assert_eq!(v["quotas"]["result"], "reloaded", "{v}");
    assert_eq!(v["quotas"]["consumers"], 1);
    let r = post(&s, "/rest/v1/personer", &limited, &batch(&s, 5)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.header("ratelimit-policy").contains(";q=10;"));
    // A broken file is refused with the reason; the quotas in force stay.
    write(
        &file,
        "[consumers.\"974760673\"]\npersons_per_second = 1\nburst = 10\nbrust = 3\n",
    );
    let r = admin(&s, Method::POST, "/admin/reload").await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    let v = r.json();
    assert_eq!(v["quotas"]["result"], "failed");
    let reason = v["quotas"]["reason"].as_str().unwrap();
    assert!(reason.contains("line 4"), "{reason}");
    assert!(reason.contains("unknown field `brust`"), "{reason}");
    let r = post(&s, "/rest/v1/personer", &limited, &batch(&s, 1)).await;
    assert!(r.header("ratelimit-policy").contains(";q=10;"));
}

#[tokio::test]
async fn quota_settings_and_files_that_cannot_be_used_stop_the_start_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str)] = &[
        (
            "[consumers.\"974760673\"]\npersons_per_second = \"many\"\n",
            "line 2: invalid type: string \"many\", expected u64",
        ),
        (
            "[consumers.\"974760673\"]\nburst = 10\n",
            "line 1: missing field `persons_per_second`",
        ),
        (
            "[consumers.\"974760673\"]\npersons_per_second = 0\n",
            "line 1: [consumers.\"974760673\"]: persons_per_second must be at least 1",
        ),
        (
            "[consumers.\"20914695016\"]\npersons_per_second = 5\n",
            "line 1: [consumers.\"…\"]: a consumer is a 9-digit organisation number or client:<client_id>",
        ),
        ("[consumers\n", "line 1: "),
        ("[limits]\n", "unknown field `limits`"),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("q{i}.toml"));
        write(&file, text);
        let settings = krr::http::quota::QuotaSettings {
            file: Some(file.clone()),
            ..Default::default()
        };
        let e = krr::http::quota::Quotas::new(settings)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!("the quota file {}", file.display())),
            "{e}"
        );
        assert!(e.contains(want), "case {i}: {e}");
        assert!(!e.contains("20914695016"), "{e}");
    }
    let missing = dir.path().join("nowhere.toml");
    let e = krr::http::quota::Quotas::new(krr::http::quota::QuotaSettings {
        file: Some(missing.clone()),
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with(&format!(
            "cannot read the quota file {}: ",
            missing.display()
        )),
        "{e}"
    );
    let e = krr::http::quota::Quotas::new(krr::http::quota::QuotaSettings {
        share: 1.5,
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert_eq!(
        e,
        "--quota-share must be above 0 and at most 1 (1/N for N replicas), not 1.5"
    );
}

#[test]
fn sighup_rereads_the_quota_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("snapshots")).unwrap();
    let (_, krr) = crate::common::register(dir.path(), "reg", 20, 3);
    std::fs::rename(&krr, dir.path().join("snapshots/reg.krr")).unwrap();
    let file = dir.path().join("quotas.toml");
    write(
        &file,
        "[consumers.\"974760673\"]\npersons_per_second = 1\nburst = 30\n",
    );
    let serve = spawn_serve(
        dir.path(),
        &["--quota-file", file.to_str().unwrap()],
        "info,krr::access=warn",
    );
    let t = org_token("974760673");
    let policy = |rt: &tokio::runtime::Runtime| {
        let a = rt.block_on(lookup(serve.api, Some(&t), &[]));
        a.header("ratelimit-policy").to_string()
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    assert_eq!(policy(&rt), "\"persons\";q=30;qu=\"persons\";w=30");
    write(
        &file,
        "[consumers.\"974760673\"]\npersons_per_second = 2\nburst = 40\n",
    );
    serve.sighup();
    let mut seen = String::new();
    for _ in 0..20 {
        seen = policy(&rt);
        if seen.contains("q=40") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(seen, "\"persons\";q=40;qu=\"persons\";w=20");
    std::thread::sleep(std::time::Duration::from_millis(100));
    let lines = serve.lines.lock().unwrap().clone();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("quota file reloaded") && l.contains("\"consumers\":1")),
        "no reload line"
    );
}
