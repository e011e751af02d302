//! The citizens' API over real HTTP: GET and PATCH /rest/v1/person, the overlay seen by
//! every endpoint, a restart, and folding the journal into the next snapshot.

use hyper::{Method, StatusCode};
use serde_json::Value;

use crate::common::http::*;
use krr::dev::mint::MintOptions;
use krr::model::time::Timestamp;

const READ: &str = "krr:user/kontaktinformasjon.read krr:user/digitalpost.read";
const WRITE: &str = "krr:user/spraak.write";

async fn patch(s: &Server, path: &str, token: &str, content_type: &str, body: &str) -> Answer {
    let auth = format!("Bearer {token}");
    call(
        s.addr,
        Method::PATCH,
        path,
        &[("Authorization", &auth), ("Content-Type", content_type)],
        body.to_string(),
    )
    .await
}

async fn set_spraak(s: &Server, pid: &str, spraak: &str) -> Answer {
    patch(
        s,
        "/rest/v1/person",
        &user(WRITE, pid),
        "application/json",
        &format!(r#"{{"spraak":"{spraak}"}}"#),
    )
    .await
}

async fn get_person(s: &Server, path: &str, pid: &str) -> Answer {
    let auth = format!("Bearer {}", user(READ, pid));
    call(s.addr, Method::GET, path, &[("Authorization", &auth)], "").await
}

/// The person as `/personer` (v1 and v2) and `/person` (v1 and v2) show it; all four agree.
async fn everywhere(s: &Server, pid: &str) -> Value {
    let one = get_person(s, "/rest/v1/person", pid).await;
    assert_eq!(one.status, StatusCode::OK);
    let one = one.json();
    assert_eq!(get_person(s, "/rest/v2/person", pid).await.json(), one);
    let machine = scoped(ALL_SCOPES);
    for path in ["/rest/v1/personer", "/rest/v2/personer"] {
        let batch = post(s, path, &machine, &ids_body(&[pid])).await.json();
        assert_eq!(batch["personer"][0], one, "{path}");
    }
    one
}

fn aktiv_with_language<'a>(s: &'a Server, not: &str) -> &'a Value {
    s.register
        .iter()
        .find(|p| p["status"] == "AKTIV" && p.get("spraak").is_some_and(|l| l != not))
        .unwrap()
}

#[tokio::test]
async fn a_patch_is_seen_at_once_everywhere_and_survives_a_restart() {
    let s = start(Options::default()).await;
    let me = aktiv_with_language(&s, "se").clone();
    let pid = id(&me).to_string();
    let before = everywhere(&s, &pid).await;
    assert_eq!(before["spraak"], me["spraak"]);

    let started = Timestamp::now();
    let a = set_spraak(&s, &pid, "se").await;
    assert_eq!(
        a.status,
        StatusCode::NO_CONTENT,
        "{}",
        String::from_utf8_lossy(&a.body)
    );
    assert!(a.body.is_empty());
    let after = everywhere(&s, &pid).await;
    assert_eq!(after["spraak"], "se");
    let t = Timestamp::parse(after["spraak_oppdatert"].as_str().unwrap()).unwrap();
    assert!(
        t >= started && t <= Timestamp::now(),
        "spraak_oppdatert is now"
    );
    // Only the language changed.
    let mut unchanged = after.clone();
    unchanged["spraak"] = before["spraak"].clone();
    unchanged["spraak_oppdatert"] = before["spraak_oppdatert"].clone();
    if before.get("spraak_oppdatert").is_none() {
        unchanged
            .as_object_mut()
            .unwrap()
            .remove("spraak_oppdatert");
    }
    assert_eq!(unchanged, before);
    assert_eq!(s.state.store.overlay().len(), 1);

    // A second change of the same person wins over the first.
    assert_eq!(
        set_spraak(&s, &pid, "nn").await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(everywhere(&s, &pid).await["spraak"], "nn");
    let acknowledged = everywhere(&s, &pid).await;

    // Restart on the same directory: recovered from the journal.
    let dir = s.stop().await;
    let s = start(Options {
        reuse: Some(dir),
        ..Options::default()
    })
    .await;
    assert_eq!(everywhere(&s, &pid).await, acknowledged);
    assert_eq!(s.state.store.overlay().len(), 1);
}

#[tokio::test]
async fn folding_the_journal_into_a_snapshot_empties_the_overlay_and_changes_no_answer() {
    let s = start(Options::default()).await;
    let people: Vec<String> = s
        .register
        .iter()
        .filter(|p| p["status"] == "AKTIV")
        .take(20)
        .map(|p| id(p).to_string())
        .collect();
    for (i, pid) in people.iter().enumerate() {
        let a = set_spraak(&s, pid, ["nb", "nn", "en", "se"][i % 4]).await;
        assert_eq!(a.status, StatusCode::NO_CONTENT);
    }
    let ids: Vec<&str> = s.register.iter().map(id).collect();
    let machine = scoped(ALL_SCOPES);
    let before = post(&s, "/rest/v1/personer", &machine, &ids_body(&ids)).await;
    assert_eq!(before.status, StatusCode::OK);
    let mut person_before = Vec::new();
    for pid in &people {
        person_before.push(get_person(&s, "/rest/v1/person", pid).await.body);
    }
    assert_eq!(s.state.store.overlay().len(), 20);

    // The nightly build: the export plus the journal, then the swap.
    let out = s.dir.path().join("snapshots/folded.krr");
    let report = krr::snapshot::build_file(
        &s.dir.path().join("reg.jsonl"),
        &out,
        &krr::snapshot::BuildOptions {
            journal: Some(krr::snapshot::JournalInput::Dir(
                s.dir.path().join("journal"),
            )),
            ..crate::common::build_opts()
        },
    )
    .unwrap();
    // The first snapshot's 800 persons took change ids 1..=800 (its reservation, made when
    // it was first served); the 20 PATCHes came after them.
    assert_eq!(report.header.journal_seq, 820);
    assert_eq!(report.journal.as_ref().unwrap().applied, 20);
    let old_id = s.state.store.current().as_ref().unwrap().id();
    let new = s.state.store.load_file(&out).unwrap();
    assert_ne!(new.id(), old_id);
    assert_eq!(
        s.state.store.overlay().len(),
        0,
        "the snapshot holds every change"
    );

    let after = post(&s, "/rest/v1/personer", &machine, &ids_body(&ids)).await;
    assert_eq!(
        after.body, before.body,
        "the answer is byte for byte unchanged"
    );
    for (pid, b) in people.iter().zip(&person_before) {
        assert_eq!(&get_person(&s, "/rest/v1/person", pid).await.body, b);
    }

    // A change after the fold lands in the overlay again and is not lost on restart: the
    // newest snapshot records sequence 20, the journal replays 21.
    assert_eq!(
        set_spraak(&s, &people[0], "en").await.status,
        StatusCode::NO_CONTENT
    );
    let dir = s.stop().await;
    std::fs::remove_file(dir.path().join("snapshots/reg.krr")).unwrap();
    let s = start(Options {
        reuse: Some(dir),
        ..Options::default()
    })
    .await;
    assert_eq!(
        s.state
            .store
            .current()
            .as_ref()
            .unwrap()
            .header()
            .journal_seq,
        820,
        "800 change ids of the first snapshot, then the 20 PATCHes"
    );
    assert_eq!(s.state.store.overlay().len(), 1);
    assert_eq!(everywhere(&s, &people[0]).await["spraak"], "en");
}

#[tokio::test]
async fn every_bad_patch_gets_its_error() {
    let s = start(Options::default()).await;
    let me = aktiv_with_language(&s, "").clone();
    let pid = id(&me).to_string();
    let slettet = id(s
        .register
        .iter()
        .find(|p| p["status"] == "SLETTET")
        .unwrap())
    .to_string();
    let good = r#"{"spraak":"en"}"#;
    let json = "application/json";
    let p = "/rest/v1/person";

    for (body, message) in [
        (r#"{"spraak":"EN"}"#, "spraak must be one of nb, nn, en, se"),
        (r#"{"spraak":"sv"}"#, "spraak must be one of nb, nn, en, se"),
        (r#"{"spraak":7}"#, "spraak must be one of nb, nn, en, se"),
        ("{}", "spraak is required"),
        (r#"{"spraak":null}"#, "spraak is required"),
        (
            r#"{"spraak":"en","epostadresse":"x@y.no"}"#,
            "only spraak can be changed; the body has another field",
        ),
        ("", "request body is not valid JSON"),
        (r#"{"spraak":"en""#, "request body is not valid JSON"),
        (r#"["en"]"#, "request body must be a JSON object"),
    ] {
        check_error(
            &patch(&s, p, &user(WRITE, &pid), json, body).await,
            400,
            message,
        );
    }
    check_error(
        &patch(&s, p, &user(WRITE, &pid), "text/plain", good).await,
        415,
        "Content-Type must be application/json",
    );
    let big = format!(r#"{{"spraak":"en","x":"{}"}}"#, "a".repeat(70_000));
    check_error(
        &patch(&s, p, &user(WRITE, &pid), json, &big).await,
        413,
        "request body is larger than 65536 bytes",
    );
    // Scopes and tokens.
    let a = patch(&s, p, &user(READ, &pid), json, good).await;
    check_error(&a, 403, "the token has no scope for changing the language");
    assert!(
        a.header("www-authenticate")
            .contains(r#"scope="krr:user/spraak.write""#)
    );
    let legacy = patch(&s, p, &user("user/spraak.write", &pid), json, good).await;
    assert_eq!(
        legacy.status,
        StatusCode::NO_CONTENT,
        "the legacy scope name is accepted"
    );
    let machine = token(MintOptions {
        scope: WRITE.into(),
        pid: Some(pid.clone()),
        ..Default::default()
    });
    check_error(
        &patch(&s, p, &machine, json, good).await,
        403,
        "only a citizen's own token (ID-porten) may change a language",
    );
    let nobody = token(MintOptions {
        scope: WRITE.into(),
        user: true,
        ..Default::default()
    });
    check_error(
        &patch(&s, p, &nobody, json, good).await,
        403,
        "the token names no person (no pid claim)",
    );
    let a = call(s.addr, Method::PATCH, p, &[("Content-Type", json)], good).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    // Persons.
    check_error(
        &set_spraak(&s, "20914695016", "en").await,
        404,
        "the person is not registered",
    );
    check_error(
        &set_spraak(&s, &slettet, "en").await,
        409,
        "the person is deleted from the register (SLETTET); the language cannot be changed",
    );
    // Methods.
    let a = patch(&s, "/rest/v2/person", &user(WRITE, &pid), json, good).await;
    check_error(&a, 405, "method not allowed here; use GET, HEAD");
    let a = call(s.addr, Method::PUT, p, &[], good).await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(a.header("allow"), "GET, HEAD, PATCH");

    // Only the one good legacy-scope PATCH changed anything.
    assert_eq!(s.state.store.overlay().len(), 1);
    assert_eq!(everywhere(&s, &pid).await["spraak"], "en");
}

#[tokio::test]
async fn without_a_snapshot_a_patch_is_503() {
    let s = start(Options {
        with_snapshot: false,
        ..Options::default()
    })
    .await;
    let a = set_spraak(&s, "20914695016", "en").await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(a.headers.contains_key("retry-after"));
}
