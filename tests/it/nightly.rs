//! `tools/nightly` against the real binary: a citizen's change goes into the journal, the
//! script builds a snapshot with the journal folded in, publishes it, has the service
//! reload, and compacts the journal; the change is still answered, now from the snapshot.

use std::process::Command;
use std::time::Duration;

use hyper::{Method, StatusCode};

use crate::common::http::*;
use krr::dev::mint::MintOptions;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nightly_script_folds_publishes_reloads_and_compacts() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("snapshots")).unwrap();
    let (jsonl, krr) = crate::common::register(dir.path(), "reg", 400, 9);
    std::fs::rename(&krr, dir.path().join("snapshots/reg.krr")).unwrap();
    let register = crate::common::source_values(&jsonl);
    let mut bin = spawn_serve(dir.path(), &["--no-watch"], "info");
    let first = bin.startup["fields"]["snapshot"]
        .as_str()
        .unwrap()
        .to_string();

    // A citizen changes their language: journal and overlay.
    let me = register
        .iter()
        .find(|v| v["status"] == "AKTIV" && v["spraak"] != "se")
        .map(id)
        .unwrap();
    let citizen = format!(
        "Bearer {}",
        token(MintOptions {
            scope: "krr:user/kontaktinformasjon.read krr:user/spraak.write".into(),
            pid: Some(me.into()),
            user: true,
            ..Default::default()
        })
    );
    let a = call(
        bin.api,
        Method::PATCH,
        "/rest/v1/person",
        &[
            ("Authorization", &citizen),
            ("Content-Type", "application/json"),
        ],
        r#"{"spraak":"se"}"#,
    )
    .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    let overlay = |m: &str| metric(m, "krr_overlay_entries", "");
    let scrape = |admin| async move {
        String::from_utf8(
            call(admin, Method::GET, "/metrics", &[], Vec::<u8>::new())
                .await
                .body,
        )
        .unwrap()
    };
    assert_eq!(overlay(&scrape(bin.admin).await), Some(1.0));

    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/nightly");
    // The first snapshot was built at the tests' fixed time; this one a second later (read
    // by `krr snapshot build` from KRR_BUILD_TIME), so the 18-month rule gives the same
    // answers whatever the day the test runs (at the clock's time it changed some).
    let out = Command::new("bash")
        .env("KRR_BUILD_TIME", "2026-11-20T12:00:01Z")
        .arg(&script)
        .arg("--export")
        .arg(&jsonl)
        .arg("--snapshot-dir")
        .arg(dir.path().join("snapshots"))
        .arg("--journal-dir")
        .arg(dir.path().join("journal"))
        .args(["--admin", &bin.admin.to_string()])
        .args(["--krr", env!("CARGO_BIN_EXE_krr")])
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "nightly failed:\n{said}");
    assert!(said.contains("nightly: serving"), "{said}");
    assert!(
        !has_personal_number(&said),
        "the script's output holds a personal number"
    );

    // The new snapshot is served, holds the change (the overlay is empty), and answers it.
    let metrics = scrape(bin.admin).await;
    assert_eq!(overlay(&metrics), Some(0.0), "{metrics}");
    // The first snapshot's persons took change ids 1..=400 when it was first served (its
    // reservation); the PATCH took 401.
    assert_eq!(
        metric(&metrics, "krr_snapshot_journal_seq", ""),
        Some(401.0)
    );
    // The build followed the served snapshot (--previous): nothing changed against what
    // was served (the PATCH was already visible, and keeps its id 401).
    assert!(
        said.contains("0 new, 0 changed, 0 gone, 0 renumbered"),
        "{said}"
    );
    assert_eq!(
        metric(&metrics, "krr_snapshot_info", &format!(r#"id="{first}""#)),
        Some(0.0)
    );
    let a = call(
        bin.api,
        Method::GET,
        "/rest/v1/person",
        &[("Authorization", &citizen)],
        Vec::<u8>::new(),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json()["spraak"], "se");
    let published: Vec<_> = std::fs::read_dir(dir.path().join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("krr-") && n.ends_with(".krr"))
        .collect();
    assert_eq!(published.len(), 1, "{published:?}");

    // A bad export: the script fails, nothing is published, the service keeps serving.
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"personidentifikator\":\"x\"}\n").unwrap();
    let out = Command::new("bash")
        .arg(&script)
        .arg("--export")
        .arg(&bad)
        .arg("--snapshot-dir")
        .arg(dir.path().join("snapshots"))
        .args(["--admin", &bin.admin.to_string()])
        .args(["--krr", env!("CARGO_BIN_EXE_krr")])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(readiness(bin.admin).await, StatusCode::OK);
    let left: Vec<_> = std::fs::read_dir(dir.path().join("snapshots/.staging"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "the failed build left files behind");

    Command::new("kill")
        .args(["-TERM", &bin.child.id().to_string()])
        .status()
        .unwrap();
    for _ in 0..500 {
        if let Some(s) = bin.child.try_wait().unwrap() {
            assert!(s.success());
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the service did not stop");
}
