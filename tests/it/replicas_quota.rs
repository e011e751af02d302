//! Quotas over several replicas (issue 18): behind a load balancer each replica enforces
//! its `--quota-share` of every quota, so a consumer gets its quota once, not once per
//! replica. Two `krr serve` processes on 127.0.0.1, each with its own copy of the snapshot
//! and its own journal, requests spread over both as a round-robin balancer would.

use hyper::{Method, StatusCode};

use crate::common::http::*;

/// A replica serving `snapshot` with `flags`.
fn replica(snapshot: &std::path::Path, flags: &[&str]) -> (tempfile::TempDir, Binary) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("snapshots")).unwrap();
    std::fs::copy(snapshot, dir.path().join("snapshots/reg.krr")).unwrap();
    let b = spawn_serve(dir.path(), flags, "info,krr::access=warn");
    (dir, b)
}

/// Single-id lookups sent round-robin to `replicas` until `n` are answered; returns how
/// many were served (200) and the policies the replicas announced.
async fn spread(replicas: &[&Binary], token: &str, id: &str, n: usize) -> (usize, Vec<String>) {
    let auth = format!("Bearer {token}");
    let mut served = 0;
    let mut policies = Vec::new();
    for i in 0..n {
        let r = call(
            replicas[i % replicas.len()].api,
            Method::POST,
            "/rest/v1/personer",
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            ids_body(&[id]),
        )
        .await;
        match r.status {
            StatusCode::OK => served += 1,
            StatusCode::TOO_MANY_REQUESTS => {}
            other => panic!("unexpected {other}"),
        }
        policies.push(r.header("ratelimit-policy").to_string());
    }
    (served, policies)
}

#[test]
fn replicas_with_a_quota_share_grant_a_consumer_its_quota_once() {
    let src = tempfile::tempdir().unwrap();
    let (jsonl, krr) = crate::common::register(src.path(), "reg", 50, 9);
    let id = crate::common::source_values(&jsonl)[0]["personidentifikator"]
        .as_str()
        .unwrap()
        .to_string();
    // A burst of 20 persons and 1 person a second (nothing refills during the test to
    // speak of): two replicas, each with half.
    let quota = [
        "--quota-persons-per-second",
        "1",
        "--quota-burst",
        "20",
        "--quota-share",
        "0.5",
    ];
    let (_a_dir, a) = replica(&krr, &quota);
    let (_b_dir, b) = replica(&krr, &quota);
    let token = scoped(ALL_SCOPES);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let started = std::time::Instant::now();
    let (served, policies) = rt.block_on(spread(&[&a, &b], &token, &id, 60));
    // 10 + 10, plus at most one refilled person a replica per 2 s elapsed.
    let refill = 2 * (started.elapsed().as_secs() as usize / 2 + 1);
    assert!(
        (20..=20 + refill).contains(&served),
        "served {served} of 60 over two replicas with a quota of 20"
    );
    assert!(
        policies
            .iter()
            .all(|p| p == "\"persons\";q=10;qu=\"persons\";w=20"),
        "{policies:?}"
    );
    // Without the share, the same two replicas would grant it twice.
    let full = ["--quota-persons-per-second", "1", "--quota-burst", "20"];
    let (_c_dir, c) = replica(&krr, &full);
    let (_d_dir, d) = replica(&krr, &full);
    let (served, _) = rt.block_on(spread(&[&c, &d], &token, &id, 60));
    assert!(served >= 40, "served {served}");
}
