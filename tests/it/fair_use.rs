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
