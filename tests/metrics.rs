//! Metrics: present, changing, and free of personal numbers. Its own test binary, so the
//! process-wide recorder holds only what this test did and the values can be exact.

// Test and bench code: a panic is the run failing, with its line; casts are on small
// counts and measured values.
#![allow(
    clippy::unwrap_used,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

#[path = "it/common/mod.rs"]
mod common;

use hyper::{Method, StatusCode};

use common::http::*;
use krr::dev::mint::MintOptions;

#[tokio::test]
async fn metrics_are_present_and_change() {
    let s = start(Options {
        limits: krr::http::Limits {
            metrics_max_consumers: 2,
            ..krr::http::Limits::default()
        },
        ..Options::default()
    })
    .await;
    let scrape =
        || async { String::from_utf8(admin(&s, Method::GET, "/metrics").await.body).unwrap() };
    let before = scrape().await;
    let ids: Vec<&str> = s.register.iter().take(3).map(id).collect();
    let a = post(
        &s,
        "/rest/v1/personer",
        &scoped(ALL_SCOPES),
        &ids_body(&ids),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    let a = post(&s, "/rest/v1/personer", "not-a-token", &ids_body(&ids)).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    // Usage per agency: two more organisations; the third labelled one is past
    // --metrics-max-consumers 2 and counts as `other`.
    for (consumer, n) in [("974760673", 2), ("889640782", 1)] {
        let t = token(MintOptions {
            scope: ALL_SCOPES.into(),
            consumer: format!("0192:{consumer}"),
            ..Default::default()
        });
        let a = post(&s, "/rest/v1/personer", &t, &ids_body(&ids[..n])).await;
        assert_eq!(a.status, StatusCode::OK);
    }
    // A citizen's PATCH goes through the journal (fsync histogram, sequence number, overlay).
    let me = s
        .register
        .iter()
        .find(|v| v["status"] == "AKTIV")
        .map(id)
        .unwrap();
    let citizen = token(MintOptions {
        scope: "krr:user/spraak.write".into(),
        pid: Some(me.into()),
        user: true,
        ..Default::default()
    });
    let auth = format!("Bearer {citizen}");
    let a = call(
        s.addr,
        Method::PATCH,
        "/rest/v1/person",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        r#"{"spraak":"se"}"#,
    )
    .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    // A file that is no snapshot: refused once by the reload below, counted once.
    std::fs::write(
        s.dir.path().join("snapshots/zz-not-a-snapshot.krr"),
        vec![7u8; 300],
    )
    .unwrap();
    let out = reload(&s).await;
    assert_eq!(out["result"], "unchanged", "{out}");
    let after = scrape().await;

    let ok = r#"route="/rest/v1/personer",method="POST",status="200""#;
    let n = |t: &str, name: &str, labels: &str| metric(t, name, labels).unwrap_or(0.0);
    assert!(
        n(&after, "krr_http_requests_total", ok) >= n(&before, "krr_http_requests_total", ok) + 1.0,
        "{after}"
    );
    assert!(
        n(&after, "krr_persons_returned_total", "")
            >= n(&before, "krr_persons_returned_total", "") + 3.0
    );
    // Usage counters move by exactly the persons returned, per consumer.
    let persons = |t: &str, c: &str| {
        n(
            t,
            "krr_consumer_persons_total",
            &format!(r#"consumer="{c}""#),
        )
    };
    assert_eq!(
        persons(&after, "991825827") - persons(&before, "991825827"),
        3.0,
        "{after}"
    );
    assert_eq!(
        persons(&after, "974760673") - persons(&before, "974760673"),
        2.0
    );
    assert_eq!(persons(&after, "other") - persons(&before, "other"), 1.0);
    assert!(
        !after
            .lines()
            .any(|l| l.starts_with("krr_consumer_requests_total") && l.contains("status=\"401\"")),
        "{after}"
    );
    assert_eq!(persons(&after, "889640782"), 0.0);
    assert_eq!(
        n(&after, "krr_persons_returned_total", "") - n(&before, "krr_persons_returned_total", ""),
        6.0
    );
    assert_eq!(
        n(
            &after,
            "krr_consumer_requests_total",
            r#"consumer="991825827",route="/rest/v1/personer",status="200""#
        ),
        1.0,
        "{after}"
    );
    // The citizen's PATCH: a user token counts by its client (`client:krr-token`), here the
    // third consumer, so `other`; the refused token has no caller and is not counted.
    assert_eq!(
        n(
            &after,
            "krr_consumer_requests_total",
            r#"consumer="other",route="/rest/v1/person",status="204""#
        ),
        1.0,
        "{after}"
    );
    // This process runs this test alone, so these counts are exact: the start-up swap went
    // through the reload path like every later one, and the admin reload found nothing newer
    // and one file that is no snapshot.
    assert_eq!(n(&before, "krr_reloads_total", r#"result="swapped""#), 1.0);
    assert_eq!(
        n(&after, "krr_reloads_total", r#"result="unchanged""#)
            - n(&before, "krr_reloads_total", r#"result="unchanged""#),
        1.0
    );
    assert_eq!(
        n(&after, "krr_snapshot_refusals_total", "")
            - n(&before, "krr_snapshot_refusals_total", ""),
        1.0,
        "{after}"
    );
    assert!(
        after.contains("krr_token_rejections_total{reason="),
        "{after}"
    );
    assert!(n(&after, "krr_journal_seq", "") >= 1.0);
    assert!(n(&after, "krr_overlay_entries", "") >= 1.0);
    assert_eq!(n(&after, "krr_ready", ""), 1.0);
    let snapshot = served_id(&s).unwrap();
    assert_eq!(
        metric(&after, "krr_snapshot_info", &format!(r#"id="{snapshot}""#)),
        Some(1.0)
    );
    for name in [
        "krr_http_request_duration_seconds_bucket",
        "krr_http_request_duration_seconds_count",
        "krr_journal_fsync_seconds_bucket",
        "krr_journal_records_total",
        "krr_snapshot_build_time_seconds",
        "krr_snapshot_age_seconds",
        "krr_snapshot_records",
        "krr_snapshot_journal_seq",
        "# TYPE krr_http_requests_total counter",
        "# TYPE krr_http_request_duration_seconds histogram",
    ] {
        assert!(after.contains(name), "{name} missing:\n{after}");
    }
    assert_eq!(
        metric(&after, "krr_snapshot_records", ""),
        Some(s.register.len() as f64)
    );
    // No label or value anywhere holds an 11-digit run.
    assert!(
        !has_personal_number(&after),
        "an 11-digit number in /metrics"
    );
    s.stop().await;
}
