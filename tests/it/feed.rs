//! The change feed (`POST /rest/v2/krr/hentEndringer`) at the real boundary: a full copy
//! from 0, PATCHes after the cursor, a rebuild with `--previous` that changes, reserves,
//! removes and adds persons, a PATCH between the build and the swap, restart and
//! compaction, the fence of a reservation not yet served, and the errors.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use serde_json::{Value, json};

use crate::common::http::*;
use crate::common::{BUILD_TIME, build_opts};
use krr::model::time::Timestamp;
use krr::snapshot::{JournalInput, build_file};

const FEED: &str = "/rest/v2/krr/hentEndringer";
const FEED_SCOPES: &str =
    "krr:global/hentendring.read krr:global/kontaktinformasjon.read krr:global/digitalpost.read";
const WRITE: &str = "krr:user/spraak.write";

/// One page, asserted to be a 200 in the shape Altinn's client parses.
async fn page(s: &Server, token: &str, fra: u64) -> Value {
    let a = post(s, FEED, token, &json!({ "fraEndringsId": fra }).to_string()).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.header("content-type"), "application/json");
    let v = a.json();
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        ["list", "fraEndringsId", "tilEndringsId", "sisteEndringsId"],
        "the answer's keys, in order"
    );
    assert_eq!(v["fraEndringsId"], fra);
    assert!(v["list"].as_array().unwrap().len() <= 1000);
    v
}

/// Copies from `from` as a client does: until `tilEndringsId == sisteEndringsId`. Returns
/// the entries in order and the last cursor.
async fn copy(s: &Server, token: &str, from: u64) -> (Vec<Value>, u64) {
    let mut fra = from;
    let mut all = Vec::new();
    for _ in 0..1000 {
        let v = page(s, token, fra).await;
        let list = v["list"].as_array().unwrap();
        let til = v["tilEndringsId"].as_u64().unwrap();
        let siste = v["sisteEndringsId"].as_u64().unwrap();
        if list.is_empty() {
            assert_eq!(
                til, fra,
                "an empty page's tilEndringsId is its fraEndringsId"
            );
        } else {
            assert!(til > fra, "tilEndringsId {til} grows past {fra}");
        }
        assert!(til <= siste);
        all.extend(list.iter().cloned());
        if til == siste {
            return (all, til);
        }
        fra = til;
    }
    panic!("the copy did not end in 1000 pages");
}

/// What `/rest/v1/personer` answers for `ids` with `scopes`.
async fn personer(s: &Server, scopes: &str, ids: &[&str]) -> Vec<Value> {
    let mut out = Vec::new();
    for chunk in ids.chunks(1000) {
        let a = post(s, "/rest/v1/personer", &scoped(scopes), &ids_body(chunk)).await;
        assert_eq!(a.status, 200);
        out.extend(a.json()["personer"].as_array().unwrap().iter().cloned());
    }
    out
}

fn ids(list: &[Value]) -> Vec<String> {
    list.iter().map(|v| id(v).to_string()).collect()
}

/// A server on a register of `count` persons (more than one page).
async fn server_with(count: u64) -> Server {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let snapshots = dir.path().join("snapshots");
    std::fs::create_dir(&snapshots).unwrap();
    let (_, krr) = crate::common::register(dir.path(), "reg", count, 33);
    std::fs::rename(&krr, snapshots.join("reg.krr")).unwrap();
    start(Options {
        reuse: Some(dir),
        ..Options::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_copy_returns_every_person_once_as_personer_shows_them() {
    let s = server_with(2500).await;
    let token = scoped(FEED_SCOPES);
    let (all, last) = copy(&s, &token, 0).await;
    assert_eq!(all.len(), 2500, "a first build: every person is a change");
    let got = ids(&all);
    let unique: HashSet<&String> = got.iter().collect();
    assert_eq!(unique.len(), 2500, "each person once");
    let registered: HashSet<String> = s.register.iter().map(|v| id(v).to_string()).collect();
    assert_eq!(
        unique.into_iter().cloned().collect::<HashSet<_>>(),
        registered
    );
    let refs: Vec<&str> = got.iter().map(String::as_str).collect();
    let expected = personer(
        &s,
        "krr:global/kontaktinformasjon.read krr:global/digitalpost.read",
        &refs,
    )
    .await;
    assert_eq!(all, expected, "each entry is what /personer shows");
    // Three pages of at most 1000, and the copy ends at sisteEndringsId.
    let first = page(&s, &token, 0).await;
    assert_eq!(first["list"].as_array().unwrap().len(), 1000);
    assert_eq!(first["sisteEndringsId"].as_u64(), Some(last));
    let after = page(&s, &token, last).await;
    assert_eq!(after["list"], json!([]));
    assert_eq!(after["tilEndringsId"].as_u64(), Some(last));

    // The groups follow the other read scopes; the feed scope alone shows the
    // always-returned fields.
    let bare = page(&s, &scoped("krr:global/hentendring.read"), 0).await;
    for e in bare["list"].as_array().unwrap() {
        for k in e.as_object().unwrap().keys() {
            assert!(
                [
                    "personidentifikator",
                    "reservasjon",
                    "reservasjonstidspunkt",
                    "reservasjon_oppdatert",
                    "status"
                ]
                .contains(&k.as_str()),
                "{k} shown without its scope"
            );
        }
    }
    let spraak = page(
        &s,
        &scoped("krr:global/hentendring.read global/spraak.read"),
        0,
    )
    .await;
    let e = &spraak["list"][0];
    assert!(e.get("kontaktinformasjon").is_none());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_precise() {
    let s = start(Options::default()).await;
    let token = scoped(FEED_SCOPES);
    for (body, message) in [
        (
            r#"{"fraEndringsId":-1}"#,
            "fraEndringsId must be a non-negative integer",
        ),
        (
            r#"{"fraEndringsId":"0"}"#,
            "fraEndringsId must be a non-negative integer",
        ),
        (
            r#"{"fraEndringsId":0.5}"#,
            "fraEndringsId must be a non-negative integer",
        ),
        (r#"{}"#, "fraEndringsId is required"),
        ("{", "request body is not valid JSON"),
    ] {
        check_error(&post(&s, FEED, &token, body).await, 400, message);
    }
    let a = post(
        &s,
        FEED,
        &scoped("krr:global/kontaktinformasjon.read"),
        r#"{"fraEndringsId":0}"#,
    )
    .await;
    check_error(&a, 403, "the token has no scope for the change feed");
    assert!(
        a.header("www-authenticate")
            .contains("krr:global/hentendring.read")
    );
    let a = post(&s, FEED, "", r#"{"fraEndringsId":0}"#).await;
    assert_eq!(a.status, 401);
    // JOSE works as on the other endpoints.
    let auth = format!("Bearer {token}");
    let a = call(
        s.addr,
        hyper::Method::POST,
        FEED,
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
            ("Accept", "application/jose"),
        ],
        r#"{"fraEndringsId":0}"#.to_string(),
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("content-type"), "application/jose");
    assert_eq!(String::from_utf8_lossy(&a.body).split('.').count(), 3);
    s.stop().await;
}

/// PATCHes `pid`'s language; asserts the 204.
async fn set_language(s: &Server, pid: &str, lang: &str) {
    let a = patch_person(
        s.addr,
        &user(WRITE, pid),
        json!({ "spraak": lang }).to_string(),
    )
    .await;
    assert_eq!(a.status, 204, "{}", String::from_utf8_lossy(&a.body));
}

fn aktiv(s: &Server) -> Vec<String> {
    s.register
        .iter()
        .filter(|v| v["status"] == "AKTIV")
        .map(|v| id(v).to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patches_after_the_cursor_are_exactly_what_the_feed_returns() {
    let s = start(Options::default()).await;
    let token = scoped(FEED_SCOPES);
    let (_, cursor) = copy(&s, &token, 0).await;
    let people = aktiv(&s);
    set_language(&s, &people[3], "se").await;
    set_language(&s, &people[7], "en").await;
    set_language(&s, &people[3], "nn").await;
    let (changed, next) = copy(&s, &token, cursor).await;
    assert_eq!(
        ids(&changed),
        [people[7].clone(), people[3].clone()],
        "each person once, at its latest change"
    );
    assert_eq!(changed[1]["spraak"], "nn", "as the person is now");
    assert!(next > cursor);
    let (none, same) = copy(&s, &token, next).await;
    assert!(none.is_empty());
    assert_eq!(same, next);
    // The full copy still lists every person once, the changed ones last.
    let (all, _) = copy(&s, &token, 0).await;
    assert_eq!(all.len(), 800);
    assert_eq!(ids(&all[798..]), [people[7].clone(), people[3].clone()]);
    s.stop().await;
}

/// Tomorrow's export: `jsonl` with persons changed, reserved, removed and added. Returns
/// the export's path and the ids of each kind.
fn tomorrow(dir: &Path, jsonl: &Path, people: &[String]) -> (std::path::PathBuf, Vec<String>) {
    let lines: Vec<Value> = crate::common::source_values(jsonl);
    let extra = krr::dev::generate::synthetic_ids(5000, 777).unwrap();
    let present: HashSet<String> = lines.iter().map(|v| id(v).to_string()).collect();
    let added: Vec<String> = extra
        .iter()
        .map(|p| {
            let mut s = Vec::new();
            p.write_to(&mut s);
            String::from_utf8(s).unwrap()
        })
        .filter(|p| !present.contains(p))
        .take(2)
        .collect();
    let (email, reserve, remove) = (&people[10..13], &people[20..22], &people[30..32]);
    let mut out = String::new();
    for mut v in lines {
        let pid = id(&v).to_string();
        if remove.contains(&pid) {
            continue;
        }
        if email.contains(&pid) {
            v["kontaktinformasjon"]["epostadresse"] = json!(format!("ny.{}@example.no", &pid[..4]));
            v["kontaktinformasjon"]["epostadresse_oppdatert"] = json!("2026-11-21T10:00:00+01");
        }
        if reserve.contains(&pid) {
            v["reservasjon"] = json!("JA");
            v["reservasjonstidspunkt"] = json!("2026-11-21T09:00:00+01");
            v["reservasjon_oppdatert"] = json!("2026-11-21T09:00:00+01");
        }
        out.push_str(&v.to_string());
        out.push('\n');
    }
    for pid in &added {
        out.push_str(
            &json!({"personidentifikator": pid, "reservasjon": "NEI", "status": "AKTIV"})
                .to_string(),
        );
        out.push('\n');
    }
    let path = dir.join("tomorrow.jsonl");
    std::fs::write(&path, out).unwrap();
    let mut expected: Vec<String> = [email, reserve, remove].concat();
    expected.extend(added);
    (path, expected)
}

/// Builds `export` following the served snapshot, into the snapshot directory, an hour
/// after the first build.
fn rebuild(s: &Server, export: &Path, name: &str) {
    let mut opts = build_opts();
    opts.build_time = Timestamp(BUILD_TIME.0 + 3600);
    opts.previous = Some(s.dir.path().join("snapshots/reg.krr"));
    opts.journal = Some(JournalInput::Dir(s.dir.path().join("journal")));
    let out = s.dir.path().join(format!("{name}.tmp"));
    build_file(export, &out, &opts).unwrap();
    std::fs::rename(
        &out,
        s.dir.path().join("snapshots").join(format!("{name}.krr")),
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_returns_exactly_its_changes_and_a_patch_before_the_swap_hides_none() {
    let s = start(Options::default()).await;
    let token = scoped(FEED_SCOPES);
    let (_, cursor) = copy(&s, &token, 0).await;
    let people = aktiv(&s);
    let (export, expected) = tomorrow(s.dir.path(), &s.dir.path().join("reg.jsonl"), &people);
    rebuild(&s, &export, "tomorrow");
    // Between the build and the swap a PATCH is made and read from the feed.
    set_language(&s, &people[40], "se").await;
    let (before_swap, cursor2) = copy(&s, &token, cursor).await;
    assert_eq!(ids(&before_swap), [people[40].clone()]);
    let r = reload(&s).await;
    assert_eq!(r["result"], "swapped", "{r}");
    // The cursor taken after the PATCH still gets every change of the build.
    let (after_swap, cursor3) = copy(&s, &token, cursor2).await;
    let got: HashSet<String> = ids(&after_swap).into_iter().collect();
    let want: HashSet<String> = expected.iter().cloned().collect();
    assert_eq!(got, want, "exactly the build's changes");
    assert_eq!(after_swap.len(), expected.len(), "each once");
    let by_id: HashMap<String, &Value> =
        after_swap.iter().map(|v| (id(v).to_string(), v)).collect();
    for gone in &people[30..32] {
        assert_eq!(
            by_id[gone]["status"], "IKKE_REGISTRERT",
            "a person gone from the export"
        );
    }
    for reserved in &people[20..22] {
        assert_eq!(by_id[reserved]["reservasjon"], "JA");
        assert_eq!(
            by_id[reserved]["reservasjonstidspunkt"],
            "2026-11-21T09:00:00+01"
        );
        assert_eq!(by_id[reserved]["varslingsstatus"], "KAN_IKKE_VARSLES");
    }
    assert!(cursor3 > cursor2);
    // The PATCH folded into the build keeps its place: a full copy has it once, with the
    // persons gone, as /personer shows them.
    let (all, _) = copy(&s, &token, 0).await;
    let all_ids = ids(&all);
    assert_eq!(
        all_ids.len(),
        800 + 2,
        "800 persons, less 2 gone, plus 2 new, plus the 2 gone"
    );
    assert_eq!(all_ids.iter().collect::<HashSet<_>>().len(), all_ids.len());
    let refs: Vec<&str> = all_ids.iter().map(String::as_str).collect();
    let expected = personer(
        &s,
        "krr:global/kontaktinformasjon.read krr:global/digitalpost.read",
        &refs,
    )
    .await;
    assert_eq!(all, expected);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_and_compaction_give_the_same_copy() {
    // Small segments, so that a compaction has whole segments to remove.
    let journal_opts = krr::journal::JournalOptions {
        segment_bytes: 64,
        ..krr::journal::JournalOptions::default()
    };
    let s = start(Options {
        journal: journal_opts,
        ..Options::default()
    })
    .await;
    let token = scoped(FEED_SCOPES);
    let people = aktiv(&s);
    set_language(&s, &people[1], "se").await;
    set_language(&s, &people[2], "en").await;
    let before = copy(&s, &token, 0).await;
    let dir = s.stop().await;
    let s = start(Options {
        reuse: Some(dir),
        journal: journal_opts,
        ..Options::default()
    })
    .await;
    assert_eq!(copy(&s, &token, 0).await, before, "after a restart");
    // A rebuild that folds the journal, then a compaction of what it folded.
    let (export, _) = tomorrow(s.dir.path(), &s.dir.path().join("reg.jsonl"), &people);
    rebuild(&s, &export, "tomorrow");
    assert_eq!(reload(&s).await["result"], "swapped");
    set_language(&s, &people[3], "nn").await;
    let before = copy(&s, &token, 0).await;
    let folded = s
        .state
        .store
        .current()
        .as_ref()
        .unwrap()
        .header()
        .journal_seq;
    let journal = s.dir.path().join("journal");
    let dir = s.stop().await;
    let removed = krr::journal::compact(&journal, folded).unwrap();
    assert!(
        !removed.is_empty(),
        "compaction removed the folded segments"
    );
    let s = start(Options {
        reuse: Some(dir),
        journal: journal_opts,
        ..Options::default()
    })
    .await;
    assert_eq!(
        copy(&s, &token, 0).await,
        before,
        "after compaction and a restart"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_not_yet_served_fences_the_feed() {
    let s = start(Options::default()).await;
    let token = scoped(FEED_SCOPES);
    let (_, cursor) = copy(&s, &token, 0).await;
    let people = aktiv(&s);
    set_language(&s, &people[5], "se").await;
    let (_, seen) = copy(&s, &token, cursor).await;
    // Another replica reserves ids for a snapshot this one has not swapped to.
    let journal = s.state.journal.clone().unwrap();
    let first = tokio::task::spawn_blocking(move || journal.reserve(0xabcd, 50, u64::MAX))
        .await
        .unwrap()
        .unwrap();
    assert!(first > seen);
    // A snapshot built before that reservation (it folded less) gets no ids after it.
    let journal = s.state.journal.clone().unwrap();
    let refused = tokio::task::spawn_blocking(move || journal.reserve(0x1234, 5, first - 1))
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(
            refused,
            krr::journal::JournalError::OutOfOrder { newer: 0xabcd, .. }
        ),
        "{refused}"
    );
    set_language(&s, &people[6], "en").await;
    let v = page(&s, &token, seen).await;
    assert_eq!(
        v["list"],
        json!([]),
        "nothing at or past the reservation: {v}"
    );
    assert!(v["sisteEndringsId"].as_u64().unwrap() < first);
    // /personer shows the PATCH at once: only the feed waits.
    let p = personer(&s, "global/spraak.read", &[people[6].as_str()]).await;
    assert_eq!(p[0]["spraak"], "en");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_pages_list_every_person_once_when_a_window_is_all_patched() {
    let s = start(Options::default()).await;
    let token = scoped(FEED_SCOPES);
    let (all, _) = copy(&s, &token, 0).await;
    // The first three persons in feed order (AKTIV ones) get a later change: a page of
    // three from 0 finds its first window all listed later, and must read on.
    let first: Vec<String> = all
        .iter()
        .filter(|v| v["status"] == "AKTIV")
        .take(3)
        .map(|v| id(v).to_string())
        .collect();
    assert_eq!(
        ids(&all[..3]),
        first,
        "the register starts with AKTIV persons"
    );
    for p in &first {
        set_language(&s, p, "se").await;
    }
    let snapshot = s.state.store.current().as_ref().unwrap().clone();
    let overlay = s.state.store.overlay();
    let visible = s
        .state
        .journal
        .as_ref()
        .unwrap()
        .stats()
        .visible_seq
        .load(std::sync::atomic::Ordering::Acquire);
    let mut fra = 0;
    let mut listed: Vec<krr::model::fnr::PersonId> = Vec::new();
    loop {
        let p = krr::store::feed::page(&snapshot, overlay, visible, fra, 3).unwrap();
        assert!(p.ids.len() <= 3);
        assert!(
            !p.ids.is_empty() || p.til == p.siste,
            "an empty page before the end"
        );
        assert!(
            p.change_ids.windows(2).all(|w| w[0] < w[1]),
            "ascending ids"
        );
        listed.extend(&p.ids);
        fra = p.til;
        if p.til == p.siste {
            break;
        }
    }
    assert_eq!(listed.len(), 800, "every person once");
    let unique: HashSet<_> = listed.iter().map(|p| p.key()).collect();
    assert_eq!(unique.len(), 800);
    let last: Vec<String> = listed[797..]
        .iter()
        .map(|p| {
            let mut b = Vec::new();
            p.write_to(&mut b);
            String::from_utf8(b).unwrap()
        })
        .collect();
    assert_eq!(
        last, first,
        "the patched persons at their new ids, in order"
    );
    s.stop().await;
}

/// A person who leaves the export and comes back is in the feed's index once.
#[test]
fn a_person_gone_and_back_is_indexed_once() {
    let dir = tempfile::tempdir().unwrap();
    let (jsonl, first) = crate::common::register(dir.path(), "r", 30, 5);
    let lines: Vec<String> = std::fs::read_to_string(&jsonl)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let build = |name: &str, keep: &dyn Fn(usize) -> bool, previous: &Path, hour: i64| {
        let input = dir.path().join(format!("{name}.jsonl"));
        let text: Vec<&str> = lines
            .iter()
            .enumerate()
            .filter(|(i, _)| keep(*i))
            .map(|(_, l)| l.as_str())
            .collect();
        std::fs::write(&input, text.join("\n")).unwrap();
        let out = dir.path().join(format!("{name}.krr"));
        let mut opts = build_opts();
        opts.build_time = Timestamp(BUILD_TIME.0 + hour * 3600);
        opts.previous = Some(previous.to_path_buf());
        build_file(&input, &out, &opts).unwrap();
        out
    };
    let without = build("without", &|i| i != 7, &first, 1);
    let back = build("back", &|_| true, &without, 2);
    let again = build("again", &|_| true, &back, 3);
    for path in [&without, &back, &again] {
        let s = krr::snapshot::Snapshot::open(path).unwrap();
        let keys: HashSet<u64> = (0..s.feed_len()).map(|p| s.feed_key(p)).collect();
        assert_eq!(
            keys.len(),
            s.feed_len(),
            "{}: a person twice",
            path.display()
        );
        assert_eq!(s.feed_len(), 30, "{}", path.display());
    }
}
