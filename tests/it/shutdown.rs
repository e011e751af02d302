//! The real `krr serve` binary, logging JSON at trace level: every kind of request, good and
//! bad, then SIGTERM with a request in flight. Shows graceful shutdown (readiness down at
//! once, no new connections, the request in flight answered, exit 0) and that no log line
//! and no metric holds a personal number.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use hyper::{Method, StatusCode};
use serde_json::Value;

use crate::common::http::*;
use krr::dev::mint::MintOptions;

/// A request's method, path, headers and body, and the status it must get.
type Case<'a> = (Method, &'a str, Vec<(&'a str, &'a str)>, String, u16);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_no_log_line_holds_a_personal_number() {
    let dir = tempfile::tempdir().unwrap();
    let snapshots = dir.path().join("snapshots");
    std::fs::create_dir(&snapshots).unwrap();
    let (jsonl, krr) = crate::common::register(dir.path(), "reg", 300, 5);
    std::fs::rename(&krr, snapshots.join("reg.krr")).unwrap();
    let register = crate::common::source_values(&jsonl);

    let Binary {
        mut child,
        api,
        admin,
        startup,
        lines,
        stdout,
    } = spawn_serve(
        dir.path(),
        &["--shutdown-grace", "10", "--no-watch"],
        "trace",
    );
    // The start-up line: version, snapshot id, record count, addresses.
    for k in ["version", "snapshot", "persons", "listen", "admin"] {
        assert!(!startup["fields"][k].is_null(), "start-up line lacks {k}");
    }
    assert_eq!(startup["fields"]["persons"], 300);

    // Every kind of request, each with personal numbers in it somewhere.
    let all = format!("Bearer {}", scoped(ALL_SCOPES));
    let ids: Vec<&str> = register.iter().take(20).map(id).collect();
    let aktiv = register
        .iter()
        .find(|v| v["status"] == "AKTIV")
        .map(id)
        .unwrap();
    let citizen = format!(
        "Bearer {}",
        token(MintOptions {
            scope: "krr:user/kontaktinformasjon.read krr:user/spraak.write".into(),
            pid: Some(aktiv.into()),
            user: true,
            ..Default::default()
        })
    );
    let json = ("Content-Type", "application/json");
    let mut bad_ids = ids.clone();
    bad_ids.push("1234567890");
    let someone_else = format!(
        "Bearer {}",
        token(MintOptions {
            scope: "krr:user/kontaktinformasjon.read".into(),
            pid: Some(ids[1].into()),
            user: true,
            ..Default::default()
        })
    );
    let by_path = format!("/rest/v1/person/{aktiv}");
    let by_query = format!("/rest/v1/person?personidentifikator={aktiv}");
    let requests: Vec<Case> = vec![
        (
            Method::POST,
            "/rest/v1/personer",
            vec![("Authorization", &all), json],
            ids_body(&ids),
            200,
        ),
        (
            Method::POST,
            "/rest/v2/personer",
            vec![("Authorization", &all), json],
            ids_body(&ids),
            200,
        ),
        (
            Method::POST,
            "/rest/v1/personer",
            vec![("Authorization", &all), json],
            ids_body(&bad_ids),
            400,
        ),
        (
            Method::POST,
            "/rest/v1/personer",
            vec![("Authorization", &all), json],
            format!("{{\"personidentifikatorer\":[\"{aktiv}\""),
            400,
        ),
        (
            Method::POST,
            "/rest/v1/personer",
            vec![("Authorization", "Bearer x.y.z"), json],
            ids_body(&ids),
            401,
        ),
        (
            Method::GET,
            "/rest/v1/person",
            vec![("Authorization", &citizen)],
            String::new(),
            200,
        ),
        (
            Method::PATCH,
            "/rest/v1/person",
            vec![("Authorization", &citizen), json],
            r#"{"spraak":"en"}"#.into(),
            204,
        ),
        (
            Method::PATCH,
            "/rest/v1/person",
            vec![("Authorization", &citizen), json],
            format!("{{\"{aktiv}\":\"en\"}}"),
            400,
        ),
        (
            Method::GET,
            &by_path,
            vec![("Authorization", &citizen)],
            String::new(),
            404,
        ),
        (
            Method::GET,
            &by_query,
            vec![("Authorization", &someone_else)],
            String::new(),
            200,
        ),
        (
            Method::POST,
            "/rest/v1/personer",
            vec![("Authorization", &someone_else), json],
            ids_body(&ids),
            403,
        ),
    ];
    for (method, path, headers, body, status) in requests {
        let a = call(api, method.clone(), path, &headers, body).await;
        assert_eq!(a.status.as_u16(), status, "{method} {}", a.status);
        if status >= 400 {
            assert!(
                !has_personal_number(&String::from_utf8_lossy(&a.body)),
                "an error body holds a personal number ({method}, {status})"
            );
        }
    }
    let a = call(admin, Method::POST, "/admin/reload", &[], Vec::<u8>::new()).await;
    assert_eq!(a.status, StatusCode::OK);
    let metrics = call(admin, Method::GET, "/metrics", &[], Vec::<u8>::new()).await;
    let metrics = String::from_utf8(metrics.body).unwrap();
    assert!(metrics.contains("krr_http_requests_total"));

    // A request in flight: headers and half its body sent.
    let body = ids_body(&ids);
    let (first, rest) = body.split_at(body.len() / 2);
    let mut inflight = TcpStream::connect(api).unwrap();
    write!(
        inflight,
        "POST /rest/v1/personer HTTP/1.1\r\nHost: krr\r\nAuthorization: {all}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{first}",
        body.len()
    )
    .unwrap();
    inflight.flush().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    // Readiness goes down at once, while the request is still in flight.
    let started = Instant::now();
    loop {
        let a = try_call(
            admin,
            Method::GET,
            "/health/readiness",
            &[],
            Vec::<u8>::new(),
        )
        .await;
        if a.is_some_and(|a| a.status == StatusCode::SERVICE_UNAVAILABLE) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "readiness stayed up"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // No new connections are accepted.
    assert!(
        TcpStream::connect_timeout(&api, Duration::from_secs(1)).is_err(),
        "a new connection was accepted during shutdown"
    );
    // The request in flight is answered in full.
    inflight.write_all(rest.as_bytes()).unwrap();
    inflight
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut answer = String::new();
    inflight.read_to_string(&mut answer).unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "{}",
        &answer[..answer.len().min(200)]
    );
    let json_at = answer.find("\r\n\r\n").unwrap() + 4;
    let v: Value = serde_json::from_str(&answer[json_at..]).unwrap();
    assert_eq!(v["personer"].as_array().unwrap().len(), ids.len());

    // Exit 0 within the grace period.
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "exit status {status}");
    let stdout = stdout.join().unwrap();

    let lines = lines.lock().unwrap().clone();
    let text = lines.join("\n");
    for expected in [
        "shutting down",
        "journal: changes written by this process",
        "krr stopped",
        "reload: nothing newer to serve",
    ] {
        assert!(text.contains(expected), "no {expected:?} in the logs");
    }
    // The consumer's organisation number is on the request spans (audit).
    assert!(
        text.contains("\"consumer\":\"991825827\""),
        "no consumer in the logs"
    );
    // Trace level was really on (so the scan covers the most verbose output).
    assert!(lines.iter().any(|l| l.contains("\"level\":\"TRACE\"")));
    // The detector finds a personal number where one is.
    assert!(has_personal_number(&format!("{{\"pid\":\"{aktiv}\"}}")));
    for (n, line) in lines.iter().enumerate() {
        assert!(
            !has_personal_number(line),
            "log line {n} holds an 11-digit number (see target/tmp/test-logs)"
        );
    }
    assert!(
        !has_personal_number(&stdout),
        "stdout holds an 11-digit number"
    );
    assert!(
        !has_personal_number(&metrics),
        "/metrics holds an 11-digit number"
    );
}
