//! Operations: health and readiness, metrics, the reload path (admin, concurrent triggers,
//! refused files, the directory watcher), snapshots swapped under load, and the OpenAPI
//! document checked against real answers.
//!
//! Longer than 500 lines on purpose: the reload path's cases share one harness of
//! snapshot variants and publishing helpers defined here.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rand::seq::IndexedRandom;
use serde_json::{Value, json};

use crate::common::http::*;
use krr::dev::mint::MintOptions;
use krr::model::time::Timestamp;
use krr::snapshot::{BuildOptions, build_file};

/// The source of `register` with every AKTIV person's language set to variant `i`'s (its
/// `spraak_oppdatert` is 2026-01-(i+1)), so an answer tells which snapshot it came from.
fn variant_source(register: &[Value], i: u32) -> String {
    let mut out = String::new();
    for v in register {
        let mut v = v.clone();
        if v["status"] == "AKTIV" {
            v["spraak"] = json!(["nb", "nn", "en", "se"][i as usize % 4]);
            v["spraak_oppdatert"] = json!(format!("2026-01-{:02}T12:00:00+01", i + 1));
        }
        out.push_str(&v.to_string());
        out.push('\n');
    }
    out
}

/// Builds variant `i` (build time grows with `i`) into `work`; returns the file.
fn build_variant(register: &[Value], i: u32, work: &Path) -> PathBuf {
    let src = work.join(format!("v{i}.jsonl"));
    std::fs::write(&src, variant_source(register, i)).unwrap();
    let out = work.join(format!("v{i}.krr"));
    build_file(
        &src,
        &out,
        &BuildOptions {
            build_time: Timestamp(crate::common::BUILD_TIME.0 + i64::from(i) * 60),
            journal: None,
            progress: false,
            shrink: None,
            previous: None,
        },
    )
    .unwrap();
    out
}

/// Publishes `file` into the snapshot directory as a publisher should: copy to a dot-name,
/// then rename (atomic).
fn publish(s: &Server, file: &Path, name: &str) {
    let dir = s.dir.path().join("snapshots");
    let tmp = dir.join(format!(".{name}"));
    std::fs::copy(file, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

/// A copy of `file` with one byte of its body flipped (the checksum no longer matches).
fn corrupt_copy(file: &Path, to: &Path) {
    let mut bytes = std::fs::read(file).unwrap();
    let at = bytes.len() - 100;
    bytes[at] ^= 0x55;
    std::fs::write(to, bytes).unwrap();
}

#[tokio::test]
async fn readiness_waits_for_the_first_snapshot_and_drops_at_shutdown() {
    let s = start(Options {
        with_snapshot: false,
        ..Options::default()
    })
    .await;
    for path in [
        "/health/readiness",
        "/actuator/health/readiness",
        "/actuator/health",
    ] {
        let a = admin(&s, Method::GET, path).await;
        assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{path}");
        assert_eq!(a.json(), json!({"status": "DOWN"}), "{path}");
    }
    for path in ["/health/liveness", "/actuator/health/liveness"] {
        let a = admin(&s, Method::GET, path).await;
        assert_eq!(a.status, StatusCode::OK, "{path}");
        assert_eq!(a.json(), json!({"status": "UP"}));
    }
    // Lookups answer 503 until a snapshot is there.
    let a = post(
        &s,
        "/rest/v1/personer",
        &scoped(ALL_SCOPES),
        &ids_body(&["20914695016"]),
    )
    .await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);

    // A snapshot appears; a reload serves it and readiness comes up.
    let (_, krr) = crate::common::register(s.dir.path(), "reg", 50, 3);
    publish(&s, &krr, "reg.krr");
    let out = reload(&s).await;
    assert_eq!(out["result"], "swapped", "{out}");
    assert_eq!(out["old"], Value::Null);
    assert_eq!(out["new"].as_str(), served_id(&s).as_deref());
    for path in ["/health/readiness", "/actuator/health/readiness"] {
        let a = admin(&s, Method::GET, path).await;
        assert_eq!(a.status, StatusCode::OK, "{path}");
        assert_eq!(a.json(), json!({"status": "UP"}));
    }

    // The first moment of shutdown: readiness is down though the snapshot is still there.
    s.state.begin_shutdown();
    let a = admin(&s, Method::GET, "/health/readiness").await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.json(), json!({"status": "DOWN"}));
    let a = admin(&s, Method::GET, "/health/liveness").await;
    assert_eq!(a.status, StatusCode::OK);

    // Wrong methods and unknown paths get the usual error shape.
    let a = admin(&s, Method::GET, "/admin/reload").await;
    check_error(&a, 405, "method not allowed here; use POST");
    let a = admin(&s, Method::POST, "/metrics").await;
    check_error(&a, 405, "method not allowed here; use GET, HEAD");
    let a = admin(&s, Method::GET, "/nothing").await;
    check_error(&a, 404, "no such admin endpoint");
    // The admin routes are not on the public listener.
    let a = call(s.addr, Method::GET, "/metrics", &[], Vec::<u8>::new()).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    s.stop().await;
}

#[tokio::test]
async fn two_triggers_at_once_make_one_swap_and_a_corrupt_file_is_refused() {
    let s = start(Options::default()).await;
    let work = s.dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let first = served_id(&s).unwrap();

    // Nothing newer: unchanged.
    let out = reload(&s).await;
    assert_eq!(
        out,
        json!({"result": "unchanged", "current": first, "refused": []})
    );

    // A newer file, two triggers at once: one swap; the other finds nothing newer.
    let v1 = build_variant(&s.register, 1, &work);
    publish(&s, &v1, "v1.krr");
    let (a, b) = tokio::join!(
        reload(&s),
        s.state.reloader.as_ref().unwrap().reload("test")
    );
    let b = serde_json::to_value(&b).unwrap();
    let mut results = [a["result"].clone(), b["result"].clone()];
    results.sort_by_key(|r| r.to_string());
    assert_eq!(results, [json!("swapped"), json!("unchanged")], "{a} {b}");
    let swapped = if a["result"] == "swapped" { &a } else { &b };
    assert_eq!(swapped["old"], first);
    let v1_id = served_id(&s).unwrap();
    assert_eq!(swapped["new"], v1_id);
    assert_ne!(v1_id, first);

    // A newer but corrupt file is refused with the reason, counted, and changes nothing.
    let refusals = |t: &str| metric(t, "krr_snapshot_refusals_total", "").unwrap_or(0.0);
    let before = String::from_utf8(admin(&s, Method::GET, "/metrics").await.body).unwrap();
    let v2 = build_variant(&s.register, 2, &work);
    corrupt_copy(&v2, &work.join("bad.krr"));
    publish(&s, &work.join("bad.krr"), "v2.krr");
    let out = reload(&s).await;
    assert_eq!(out["result"], "unchanged", "{out}");
    assert_eq!(out["current"], v1_id);
    let refused = out["refused"].as_array().unwrap();
    assert_eq!(refused.len(), 1, "{out}");
    assert!(refused[0]["file"].as_str().unwrap().ends_with("v2.krr"));
    assert!(
        refused[0]["reason"].as_str().unwrap().contains("checksum"),
        "{out}"
    );
    let after = String::from_utf8(admin(&s, Method::GET, "/metrics").await.body).unwrap();
    assert!(refusals(&after) >= refusals(&before) + 1.0);
    assert_eq!(served_id(&s).unwrap(), v1_id);
    // The refused file is not verified again until it changes.
    let out = reload(&s).await;
    assert_eq!(out["refused"], json!([]), "{out}");

    // It is replaced by a good copy (same name): now it is served.
    publish(&s, &v2, "v2.krr");
    let out = reload(&s).await;
    assert_eq!(out["result"], "swapped", "{out}");
    assert_eq!(out["old"], v1_id);

    // An older file than the served one is never swapped in.
    let v0 = build_variant(&s.register, 0, &work);
    publish(&s, &v0, "v0.krr");
    let out = reload(&s).await;
    assert_eq!(out["result"], "unchanged", "{out}");
    s.stop().await;
}

#[tokio::test]
async fn the_watcher_sees_an_atomic_rename_and_a_replaced_symlink() {
    let s = start(Options::default()).await;
    let work = s.dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let reloader = s.state.reloader.clone().unwrap();
    let _watcher = krr::store::reload::watch(reloader, Duration::from_millis(50)).unwrap();
    let wait_for_change = |from: String| {
        let s = &s;
        async move {
            let started = Instant::now();
            loop {
                let now = served_id(s).unwrap();
                if now != from {
                    return now;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(20),
                    "the watcher did not reload"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };

    // Atomic rename into the directory.
    let first = served_id(&s).unwrap();
    let v1 = build_variant(&s.register, 1, &work);
    publish(&s, &v1, "v1.krr");
    let second = wait_for_change(first).await;

    // A symlink `current.krr` replaced atomically (new link under a dot-name, renamed over).
    let v2 = build_variant(&s.register, 2, &work);
    let v3 = build_variant(&s.register, 3, &work);
    let dir = s.dir.path().join("snapshots");
    std::os::unix::fs::symlink(&v2, dir.join(".current.krr")).unwrap();
    std::fs::rename(dir.join(".current.krr"), dir.join("current.krr")).unwrap();
    let third = wait_for_change(second).await;
    std::os::unix::fs::symlink(&v3, dir.join(".current.krr")).unwrap();
    std::fs::rename(dir.join(".current.krr"), dir.join("current.krr")).unwrap();
    let fourth = wait_for_change(third.clone()).await;
    assert_ne!(fourth, third);
    s.stop().await;
}

/// Clients send batch lookups continuously while snapshots are swapped many times, a
/// corrupt one among them: no request fails, and every answer comes wholly from one
/// snapshot (all its AKTIV persons carry one variant's language date), never from an older
/// one than a client has already seen.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshots_swap_under_load_without_a_failed_request() {
    const SWAPS: u32 = 12;
    const CORRUPT_AT: u32 = 6;
    const CLIENTS: usize = 4;

    let s = start(Options {
        with_snapshot: false,
        ..Options::default()
    })
    .await;
    let work = s.dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let (jsonl, _) = crate::common::register(&work, "reg", 1500, 11);
    let register = crate::common::source_values(&jsonl);
    let files: Vec<PathBuf> = (0..=SWAPS)
        .map(|i| build_variant(&register, i, &work))
        .collect();
    publish(&s, &files[0], "v00.krr");
    assert_eq!(reload(&s).await["result"], "swapped");

    let ids: Arc<Vec<String>> = Arc::new(register.iter().map(|v| id(v).to_string()).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let answers = Arc::new(AtomicU64::new(0));
    let token = scoped(ALL_SCOPES);
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let (ids, stop, answers, addr) = (ids.clone(), stop.clone(), answers.clone(), s.addr);
        let auth = format!("Bearer {token}");
        clients.push(tokio::spawn(async move {
            let client: Client<HttpConnector, Full<Bytes>> =
                Client::builder(TokioExecutor::new()).build(HttpConnector::new());
            let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(c as u64);
            let mut seen = Vec::new();
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let batch: Vec<&str> = ids
                    .choose_multiple(&mut rng, 200)
                    .map(String::as_str)
                    .collect();
                let req = Request::post(format!("http://{addr}/rest/v1/personer"))
                    .header("Authorization", &auth)
                    .header("Content-Type", "application/json")
                    .body(Full::new(Bytes::from(ids_body(&batch))))
                    .unwrap();
                let resp = match client.request(req).await {
                    Ok(r) => r,
                    Err(e) => {
                        failures.push(format!("request failed: {e}"));
                        continue;
                    }
                };
                let status = resp.status();
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                if status != StatusCode::OK {
                    failures.push(format!("status {status}"));
                    continue;
                }
                let v: Value = serde_json::from_slice(&body).unwrap();
                let personer = v["personer"].as_array().unwrap();
                assert_eq!(personer.len(), batch.len());
                let mut days: Vec<&str> = personer
                    .iter()
                    .filter(|p| p["status"] == "AKTIV")
                    .map(|p| &p["spraak_oppdatert"].as_str().unwrap()[..10])
                    .collect();
                days.sort_unstable();
                days.dedup();
                assert_eq!(days.len(), 1, "one answer mixes snapshots: {days:?}");
                let variant: u32 = days[0][8..10].parse::<u32>().unwrap() - 1;
                if let Some(&last) = seen.last() {
                    assert!(
                        variant >= last,
                        "went back from variant {last} to {variant}"
                    );
                }
                if seen.last() != Some(&variant) {
                    seen.push(variant);
                }
                answers.fetch_add(1, Ordering::Relaxed);
            }
            (seen, failures)
        }));
    }

    let mut swapped = 0;
    for i in 1..=SWAPS {
        // Let the clients run on each snapshot for a while.
        let floor = answers.load(Ordering::Relaxed) + 25;
        while answers.load(Ordering::Relaxed) < floor {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if i == CORRUPT_AT {
            let bad = work.join("bad.krr");
            corrupt_copy(&files[i as usize], &bad);
            publish(&s, &bad, "bad.krr");
            let out = reload(&s).await;
            assert_eq!(out["result"], "unchanged", "{out}");
            assert_eq!(out["refused"].as_array().unwrap().len(), 1, "{out}");
            continue;
        }
        publish(&s, &files[i as usize], &format!("v{i:02}.krr"));
        let out = reload(&s).await;
        assert_eq!(out["result"], "swapped", "{out}");
        swapped += 1;
    }
    let floor = answers.load(Ordering::Relaxed) + 25;
    while answers.load(Ordering::Relaxed) < floor {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut variants_seen = std::collections::BTreeSet::new();
    for c in clients {
        let (seen, failures) = c.await.unwrap();
        assert_eq!(
            failures,
            Vec::<String>::new(),
            "failed requests during swaps"
        );
        variants_seen.extend(seen);
    }
    assert_eq!(swapped, SWAPS - 1);
    assert!(
        !variants_seen.contains(&CORRUPT_AT),
        "the corrupt snapshot was served"
    );
    assert!(
        variants_seen.len() >= SWAPS as usize - 1,
        "clients saw only {variants_seen:?}"
    );
    s.stop().await;
}

/// The OpenAPI document: served at `/openapi.json`, and real answers of every endpoint
/// (success and error) validate against the schema it gives for their path, method and
/// status.
#[tokio::test]
async fn real_answers_validate_against_the_openapi_document() {
    let s = start(Options::default()).await;
    let served = call(s.addr, Method::GET, "/openapi.json", &[], Vec::<u8>::new()).await;
    assert_eq!(served.status, StatusCode::OK);
    assert_eq!(served.header("content-type"), "application/json");
    let doc = served.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));

    let all = format!("Bearer {}", scoped(ALL_SCOPES));
    let kontakt = format!("Bearer {}", scoped("krr:global/kontaktinformasjon.read"));
    let ids: Vec<&str> = s.register.iter().take(40).map(id).collect();
    let aktiv = s
        .register
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
    let slettet = s.register.iter().find(|v| v["status"] == "SLETTET").map(id);
    let json_ct = ("Content-Type", "application/json");
    let mut body_v1 = ids.clone();
    body_v1.push("20914695016");
    let cases: Vec<Case> = vec![
        (
            "all groups",
            Method::POST,
            "/rest/v1/personer",
            vec![("Authorization", &all), json_ct],
            ids_body(&body_v1),
        ),
        (
            "one scope",
            Method::POST,
            "/rest/v1/personer",
            vec![("Authorization", &kontakt), json_ct],
            ids_body(&ids),
        ),
        (
            "v2",
            Method::POST,
            "/rest/v2/personer",
            vec![("Authorization", &all), json_ct],
            json!({"personidentifikatorer": body_v1, "inkluderIkkeRegistrerte": true}).to_string(),
        ),
        (
            "bad json",
            Method::POST,
            "/rest/v1/personer",
            vec![("Authorization", &all), json_ct],
            "{".into(),
        ),
        (
            "no token",
            Method::POST,
            "/rest/v1/personer",
            vec![json_ct],
            ids_body(&ids),
        ),
        (
            "no scope",
            Method::POST,
            "/rest/v1/personer",
            vec![("Authorization", &citizen), json_ct],
            ids_body(&ids),
        ),
        (
            "wrong method",
            Method::GET,
            "/rest/v1/personer",
            vec![("Authorization", &all)],
            String::new(),
        ),
        (
            "media type",
            Method::POST,
            "/rest/v1/personer",
            vec![("Authorization", &all), ("Content-Type", "text/plain")],
            ids_body(&ids),
        ),
        (
            "own entry",
            Method::GET,
            "/rest/v1/person",
            vec![("Authorization", &citizen)],
            String::new(),
        ),
        (
            "patch",
            Method::PATCH,
            "/rest/v1/person",
            vec![("Authorization", &citizen), json_ct],
            r#"{"spraak":"nn"}"#.into(),
        ),
        (
            "bad patch",
            Method::PATCH,
            "/rest/v1/person",
            vec![("Authorization", &citizen), json_ct],
            r#"{"spraak":"xx"}"#.into(),
        ),
        (
            "print",
            Method::GET,
            "/rest/v1/printSertifikat",
            vec![("Authorization", &all)],
            String::new(),
        ),
        (
            "print v2",
            Method::GET,
            "/rest/v2/printSertifikat",
            vec![("Authorization", &all)],
            String::new(),
        ),
    ];
    let feed = format!(
        "Bearer {}",
        scoped(&format!("krr:global/hentendring.read {ALL_SCOPES}"))
    );
    let mut cases = cases;
    for (what, body) in [
        ("feed", r#"{"fraEndringsId":0}"#),
        ("feed, bad cursor", r#"{"fraEndringsId":-3}"#),
    ] {
        cases.push((
            what,
            Method::POST,
            "/rest/v2/krr/hentEndringer",
            vec![("Authorization", &feed), json_ct],
            body.into(),
        ));
    }
    let mut checked = 0;
    for (what, method, path, headers, body) in cases {
        let a = call(s.addr, method.clone(), path, &headers, body).await;
        validate(&doc, what, path, &method, &a);
        checked += 1;
    }
    if let Some(gone) = slettet {
        let token = format!(
            "Bearer {}",
            token(MintOptions {
                scope: "krr:user/spraak.write".into(),
                pid: Some(gone.into()),
                user: true,
                ..Default::default()
            })
        );
        let a = call(
            s.addr,
            Method::PATCH,
            "/rest/v1/person",
            &[("Authorization", &token), json_ct],
            r#"{"spraak":"nn"}"#,
        )
        .await;
        assert_eq!(a.status, StatusCode::CONFLICT);
        validate(&doc, "slettet", "/rest/v1/person", &Method::PATCH, &a);
        checked += 1;
    }
    assert!(checked >= 13);
    s.stop().await;
}

/// What a case is called, its method, path, headers and body.
type Case<'a> = (&'a str, Method, &'a str, Vec<(&'a str, &'a str)>, String);

/// Checks `a` against the document's schema for `path`, `method` and its status.
pub(crate) fn validate(doc: &Value, what: &str, path: &str, method: &Method, a: &Answer) {
    let status = a.status.as_u16().to_string();
    let item = format!("/paths/{}", path.replace('~', "~0").replace('/', "~1"));
    let mut op = format!("{item}/{}", method.as_str().to_lowercase());
    if doc.pointer(&op).is_none() && status == "405" {
        // A method the path does not have: its 405 is described under the methods it has.
        let first = doc.pointer(&item).and_then(Value::as_object).unwrap();
        op = format!("{item}/{}", first.keys().next().unwrap());
    }
    let mut response = format!("{op}/responses/{status}");
    let resolved = doc
        .pointer(&response)
        .unwrap_or_else(|| panic!("{what}: the document has no {status} for {method} {path}"));
    if let Some(r) = resolved.get("$ref").and_then(Value::as_str) {
        response = r.trim_start_matches('#').to_string();
    }
    let r = doc.pointer(&response).unwrap();
    if a.body.is_empty() {
        assert!(
            r.get("content").is_none(),
            "{what}: {status} has no body, the document says it has one"
        );
        return;
    }
    let ct = a.header("content-type").to_string();
    let schema = format!("{response}/content/{}/schema", ct.replace('/', "~1"));
    assert!(
        doc.pointer(&schema).is_some(),
        "{what}: the document has no {ct} body for {status} of {method} {path}"
    );
    // The whole document is the root, so `#/components/...` references resolve.
    let mut root = doc.clone();
    root["$schema"] = json!("https://json-schema.org/draft/2020-12/schema");
    root["$ref"] = json!(format!("#{schema}"));
    let validator = jsonschema::draft202012::new(&root)
        .unwrap_or_else(|e| panic!("{what}: the schema at {schema} does not compile: {e}"));
    let body: Value = serde_json::from_slice(&a.body).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&body)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{what}: {method} {path} {status} does not match the document: {errors:?}"
    );
}
