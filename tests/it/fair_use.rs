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
