//! generate → build → open → look up, against the source, byte for byte where it matters.

use crate::common::{BUILD_TIME, ORDER, build_opts, keys, register, source_values};
use krr::model::Groups;
use krr::model::fnr::PersonId;
use krr::model::time::Timestamp;
use krr::snapshot::{Snapshot, build_bytes};
use krr::store::lookup::{BatchOptions, write_person, write_personer};
use krr::store::overlay::Overlay;
use serde_json::{Map, Value, json};

/// The notification rule of `api.md`, written again here from the text (not by calling the
/// library), applied to a source object.
fn expected_varsling(src: &Value, now: Timestamp) -> &'static str {
    const NO: &str = "KAN_IKKE_VARSLES";
    if src["status"] != "AKTIV" || src["reservasjon"] != "NEI" {
        return NO;
    }
    let Some(k) = src.get("kontaktinformasjon") else {
        return NO;
    };
    if k.get("epostadresse").is_none() && k.get("mobiltelefonnummer").is_none() {
        return NO;
    }
    let newest = [
        "epostadresse_oppdatert",
        "epostadresse_sist_verifisert",
        "epostadresse_sist_validert",
        "mobiltelefonnummer_oppdatert",
        "mobiltelefonnummer_sist_verifisert",
        "mobiltelefonnummer_sist_validert",
    ]
    .iter()
    .filter_map(|f| k.get(*f))
    .map(|t| Timestamp::parse(t.as_str().unwrap()).unwrap().0)
    .max();
    match newest {
        Some(t) if now.0 - t <= 548 * 86_400 => "KAN_VARSLES",
        _ => NO,
    }
}

/// How many AKTIV persons of the register have each e-mail address (lower case) and each
/// mobile number (a leading +47 or 0047 removed): the rule of `*_duplisert`, written again
/// here from `api.md`.
struct Shared {
    emails: std::collections::HashMap<String, usize>,
    mobiles: std::collections::HashMap<String, usize>,
}

fn mobile_key(m: &str) -> String {
    m.strip_prefix("+47")
        .or_else(|| m.strip_prefix("0047"))
        .unwrap_or(m)
        .to_string()
}

fn shared(src: &[Value]) -> Shared {
    let mut s = Shared {
        emails: Default::default(),
        mobiles: Default::default(),
    };
    for v in src.iter().filter(|v| v["status"] == "AKTIV") {
        let k = &v["kontaktinformasjon"];
        if let Some(e) = k["epostadresse"].as_str() {
            *s.emails.entry(e.to_lowercase()).or_default() += 1;
        }
        if let Some(m) = k["mobiltelefonnummer"].as_str() {
            *s.mobiles.entry(mobile_key(m)).or_default() += 1;
        }
    }
    s
}

/// The full answer expected for a source object: its fields in API order plus the derived
/// varslingsstatus and `*_duplisert`.
fn expected_full(src: &Value, shared: &Shared) -> Value {
    let mut out = Map::new();
    for k in ORDER {
        if k == "varslingsstatus" {
            out.insert(k.into(), json!(expected_varsling(src, BUILD_TIME)));
        } else if k == "kontaktinformasjon"
            && let Some(kontakt) = src.get(k)
        {
            let mut o = Map::new();
            for (field, derived) in [
                ("epostadresse", None),
                ("epostadresse_oppdatert", None),
                ("epostadresse_sist_verifisert", None),
                ("epostadresse_sist_validert", None),
                (
                    "epostadresse_duplisert",
                    kontakt["epostadresse"]
                        .as_str()
                        .map(|e| shared.emails[&e.to_lowercase()] > 1),
                ),
                ("mobiltelefonnummer", None),
                ("mobiltelefonnummer_oppdatert", None),
                ("mobiltelefonnummer_sist_verifisert", None),
                ("mobiltelefonnummer_sist_validert", None),
                (
                    "mobiltelefonnummer_duplisert",
                    kontakt["mobiltelefonnummer"]
                        .as_str()
                        .map(|m| shared.mobiles[&mobile_key(m)] > 1),
                ),
            ] {
                if let Some(d) = derived {
                    o.insert(field.into(), json!(if d { "JA" } else { "NEI" }));
                } else if let Some(v) = kontakt.get(field) {
                    o.insert(field.into(), v.clone());
                }
            }
            out.insert(k.into(), Value::Object(o));
        } else if let Some(v) = src.get(k) {
            out.insert(k.into(), v.clone());
        }
    }
    Value::Object(out)
}

fn id_of(v: &Value) -> PersonId {
    PersonId::parse(v["personidentifikator"].as_str().unwrap().as_bytes()).unwrap()
}

#[test]
fn every_person_reads_back_exactly_as_its_source() {
    let dir = tempfile::tempdir().unwrap();
    let (jsonl, krr) = register(dir.path(), "reg", 4000, 42);
    let snap = Snapshot::open(&krr).unwrap();
    let src = source_values(&jsonl);
    let shared = shared(&src);
    assert_eq!(snap.len(), 4000);
    let mut kinds = std::collections::BTreeMap::<&str, usize>::new();
    let mut out = Vec::new();
    for s in &src {
        out.clear();
        assert!(write_person(
            &snap,
            &Overlay::new(),
            id_of(s),
            Groups::ALL,
            &mut out
        ));
        let raw = std::str::from_utf8(&out).unwrap();
        assert!(!raw.contains("null"), "{raw}");
        let got: Value = serde_json::from_slice(&out).unwrap();
        let want = expected_full(s, &shared);
        assert_eq!(got, want);
        assert_eq!(keys(&got), keys(&want), "key order");
        for (kind, present) in [
            ("slettet", s["status"] == "SLETTET"),
            ("reservert", s["reservasjon"] == "JA"),
            ("kan_varsles", got["varslingsstatus"] == "KAN_VARSLES"),
            (
                "kan_ikke_varsles_aktiv_nei",
                got["varslingsstatus"] == "KAN_IKKE_VARSLES" && s["reservasjon"] == "NEI",
            ),
            ("digital_post", s.get("digital_post").is_some()),
            (
                "no_kontakt_aktiv",
                s["status"] == "AKTIV" && s.get("kontaktinformasjon").is_none(),
            ),
            (
                "email_only",
                s.get("kontaktinformasjon")
                    .is_some_and(|k| k.get("mobiltelefonnummer").is_none()),
            ),
            (
                "mobile_only",
                s.get("kontaktinformasjon")
                    .is_some_and(|k| k.get("epostadresse").is_none()),
            ),
            (
                "no_spraak_aktiv",
                s["status"] == "AKTIV" && s.get("spraak").is_none(),
            ),
            ("se", s["spraak"] == "se"),
            (
                "epostadresse_duplisert",
                got["kontaktinformasjon"]["epostadresse_duplisert"] == "JA",
            ),
            (
                "mobiltelefonnummer_duplisert",
                got["kontaktinformasjon"]["mobiltelefonnummer_duplisert"] == "JA",
            ),
            (
                "reservasjonstidspunkt",
                got.get("reservasjonstidspunkt").is_some(),
            ),
            (
                "sist_validert",
                got["kontaktinformasjon"]
                    .get("epostadresse_sist_validert")
                    .is_some(),
            ),
        ] {
            *kinds.entry(kind).or_default() += usize::from(present);
        }
    }
    for (kind, n) in &kinds {
        assert!(*n > 0, "the sample has no person of kind {kind}: {kinds:?}");
    }
    let h = snap.header();
    assert_eq!(h.counts.slettet as usize, kinds["slettet"]);
    assert_eq!(h.counts.kan_varsles as usize, kinds["kan_varsles"]);
    assert_eq!(h.counts.digital_post as usize, kinds["digital_post"]);
    assert_eq!(
        h.counts.certs, 2,
        "certificates are stored once per provider"
    );
    assert_eq!(h.build_time, BUILD_TIME);
}

#[test]
fn each_group_combination_renders_exactly_its_keys_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (jsonl, krr) = register(dir.path(), "reg", 2000, 7);
    let snap = Snapshot::open(&krr).unwrap();
    let src = source_values(&jsonl);
    let pick = |f: &dyn Fn(&Value) -> bool| src.iter().find(|s| f(s)).unwrap().clone();
    let samples = [
        pick(&|s| s["status"] == "SLETTET"),
        pick(&|s| s["reservasjon"] == "JA"),
        pick(&|s| s.get("digital_post").is_some() && s.get("spraak").is_some()),
        pick(&|s| s["status"] == "AKTIV" && s.get("kontaktinformasjon").is_none()),
        pick(&|s| s["status"] == "AKTIV" && s.get("spraak").is_none()),
    ];
    let group_of = |key: &str| match key {
        "varslingsstatus" => Some(Groups::VARSLING),
        "kontaktinformasjon" => Some(Groups::KONTAKT),
        "digital_post" => Some(Groups::DIGITALPOST),
        "sertifikat" => Some(Groups::SERTIFIKAT),
        "spraak" | "spraak_oppdatert" => Some(Groups::SPRAAK),
        _ => None,
    };
    let shared = shared(&src);
    let mut out = Vec::new();
    for s in &samples {
        let full = expected_full(s, &shared);
        for groups in Groups::every_combination() {
            out.clear();
            write_personer(
                &snap,
                &Overlay::new(),
                &[id_of(s)],
                BatchOptions::v1(groups),
                &mut out,
            );
            let raw = std::str::from_utf8(&out).unwrap();
            assert!(!raw.contains("null"), "{raw}");
            let got: Value = serde_json::from_slice(&out).unwrap();
            let person = &got["personer"][0];
            let want: Vec<String> = keys(&full)
                .into_iter()
                .filter(|k| group_of(k).is_none_or(|g| groups.contains(g)))
                .collect();
            assert_eq!(keys(person), want, "groups {groups:?}");
            for k in &want {
                assert_eq!(person[k], full[k], "{k}");
            }
        }
    }
}

#[test]
fn batches_keep_order_and_duplicates_with_v1_and_v2_semantics() {
    let dir = tempfile::tempdir().unwrap();
    let (jsonl, krr) = register(dir.path(), "reg", 1000, 3);
    let snap = Snapshot::open(&krr).unwrap();
    let src = source_values(&jsonl);
    let a = id_of(&src[10]);
    let b = id_of(&src[500]);
    // Valid synthetic numbers of the same permutation, beyond the generated count.
    let more = krr::dev::generate::synthetic_ids(1002, 3).unwrap();
    let (u1, u2) = (more[1000], more[1001]);
    let digits = |id: PersonId| String::from_utf8(id.digits().to_vec()).unwrap();
    let ids = [a, u1, a, b, u2, b, b];
    let run = |opts: BatchOptions| {
        let mut out = b"previous answer".to_vec();
        out.clear();
        let stats = write_personer(&snap, &Overlay::new(), &ids, opts, &mut out);
        (serde_json::from_slice::<Value>(&out).unwrap(), stats)
    };

    let (v1, stats) = run(BatchOptions::v1(Groups::ALL));
    assert_eq!((stats.found, stats.not_registered), (5, 2));
    let got: Vec<&str> = v1["personer"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["personidentifikator"].as_str().unwrap())
        .collect();
    let want: Vec<String> = ids.iter().map(|&i| digits(i)).collect();
    assert_eq!(got, want);
    assert_eq!(
        v1["personer"][1],
        json!({"personidentifikator": digits(u1), "status": "IKKE_REGISTRERT", "varslingsstatus": "KAN_IKKE_VARSLES"})
    );
    assert_eq!(v1["personer"][0], v1["personer"][2]);

    let (v1_no_varsling, _) = run(BatchOptions::v1(Groups::KONTAKT));
    assert_eq!(
        v1_no_varsling["personer"][4],
        json!({"personidentifikator": digits(u2), "status": "IKKE_REGISTRERT"})
    );

    let (v2, _) = run(BatchOptions::v2(Groups::ALL, false));
    let got: Vec<&str> = v2["personer"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["personidentifikator"].as_str().unwrap())
        .collect();
    assert_eq!(got, [a, a, b, b, b].map(digits));
    let (v2_incl, _) = run(BatchOptions::v2(Groups::ALL, true));
    assert_eq!(v2_incl, v1);

    // Nothing found and nothing included is an empty list, not a missing one.
    let mut out = Vec::new();
    write_personer(
        &snap,
        &Overlay::new(),
        &[u1],
        BatchOptions::v2(Groups::ALL, false),
        &mut out,
    );
    assert_eq!(out, br#"{"personer":[]}"#);
}

#[test]
fn invalid_lines_are_reported_by_number_first_twenty_and_a_count() {
    let dir = tempfile::tempdir().unwrap();
    let ok = |id: PersonId| {
        format!(
            r#"{{"personidentifikator":"{}","reservasjon":"NEI","status":"AKTIV"}}"#,
            String::from_utf8(id.digits().to_vec()).unwrap()
        )
    };
    let ids = krr::dev::generate::synthetic_ids(100, 5).unwrap();
    let mut lines = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        lines.push(ok(*id));
        if i % 3 == 0 {
            lines.push(r#"{"personidentifikator":"11822648951","status":"AKTIV"}"#.into());
        }
    }
    let input = lines.join("\n");
    let out = dir.path().join("bad.krr");
    let err = build_bytes(input.as_bytes(), &out, &build_opts()).unwrap_err();
    let krr::snapshot::BuildError::Invalid { errors, total } = &err else {
        panic!("{err}");
    };
    assert_eq!(*total, 34);
    assert_eq!(errors.len(), 20);
    let want: Vec<u64> = (0..20).map(|k| 2 + 4 * k).collect();
    assert_eq!(errors.iter().map(|e| e.line).collect::<Vec<_>>(), want);
    assert!(
        errors
            .iter()
            .all(|e| e.reason == "personidentifikator has a wrong second control digit")
    );
    let msg = err.to_string();
    assert!(msg.starts_with("34 invalid lines in the input; the first 20:\n  line 2: personidentifikator has a wrong second control digit"), "{msg}");
    assert!(
        !msg.contains("1182264895"),
        "no personal number in the message"
    );
    assert!(!out.exists());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "no temporary left"
    );
}

#[test]
fn duplicates_name_both_lines() {
    let dir = tempfile::tempdir().unwrap();
    let input = "\n{\"personidentifikator\":\"11822648950\",\"status\":\"SLETTET\"}\n\
                 {\"personidentifikator\":\"20914695016\",\"status\":\"SLETTET\"}\n\
                 {\"personidentifikator\":\"11822648950\",\"reservasjon\":\"JA\",\"status\":\"AKTIV\"}\n";
    let err = build_bytes(input.as_bytes(), &dir.path().join("d.krr"), &build_opts()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "1 invalid line in the input; the first 1:\n  line 4: personidentifikator already given on line 2"
    );
}

#[test]
fn blank_lines_crlf_and_an_empty_export_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let input = "{\"personidentifikator\":\"11822648950\",\"status\":\"SLETTET\"}\r\n\r\n   \n\
                 {\"personidentifikator\":\"20914695016\",\"reservasjon\":\"JA\",\"status\":\"AKTIV\"}";
    let out = dir.path().join("c.krr");
    let report = build_bytes(input.as_bytes(), &out, &build_opts()).unwrap();
    assert_eq!(report.header.counts.records, 2);
    assert_eq!(report.lines, 4);
    let snap = Snapshot::open(&out).unwrap();
    let mut buf = Vec::new();
    assert!(write_person(
        &snap,
        &Overlay::new(),
        PersonId::parse(b"20914695016").unwrap(),
        Groups::ALL,
        &mut buf
    ));
    assert_eq!(
        buf,
        br#"{"personidentifikator":"20914695016","reservasjon":"JA","status":"AKTIV","varslingsstatus":"KAN_IKKE_VARSLES"}"#
    );

    let empty = dir.path().join("empty.krr");
    build_bytes(b"", &empty, &build_opts()).unwrap();
    let snap = Snapshot::open(&empty).unwrap();
    assert!(snap.is_empty());
    assert!(snap.get(PersonId::parse(b"20914695016").unwrap()).is_none());
}

/// Digdir's published test persons (in the shared fixtures, not copied into this
/// repository), converted to the source shape: at a build time between the sheet's dates,
/// every person gets the notification status the sheet expects.
#[test]
fn digdir_test_persons_get_the_expected_notification_status() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/fixtures/digdir/oppslagstjenesten_testdata_med_forventet_respons_0.csv");
    let Ok(csv) = std::fs::read_to_string(&path) else {
        eprintln!("skipped: {} is not beside this checkout", path.display());
        return;
    };
    let mut lines = Vec::new();
    let mut expected = Vec::new();
    for row in csv.lines().skip(1) {
        let f: Vec<&str> = row.split(',').collect();
        let get = |i: usize| f.get(i).copied().filter(|v| !v.is_empty() && *v != "-");
        let mut p = Map::new();
        p.insert("personidentifikator".into(), json!(f[0]));
        if let Some(r) = get(1) {
            p.insert("reservasjon".into(), json!(r));
        }
        p.insert("status".into(), json!(f[2]));
        let mut k = Map::new();
        for (col, key) in [
            (9, "epostadresse"),
            (7, "epostadresse_oppdatert"),
            (8, "epostadresse_sist_verifisert"),
            (6, "mobiltelefonnummer"),
            (4, "mobiltelefonnummer_oppdatert"),
            (5, "mobiltelefonnummer_sist_verifisert"),
        ] {
            if let Some(v) = get(col) {
                k.insert(key.into(), json!(v));
            }
        }
        if !k.is_empty() {
            p.insert("kontaktinformasjon".into(), Value::Object(k));
        }
        if let (Some(adr), Some(org)) = (get(10), get(11)) {
            p.insert(
                "digital_post".into(),
                json!({"postkasseadresse": adr, "postkasseleverandoeradresse": org}),
            );
        }
        if let Some(c) = get(12) {
            p.insert("sertifikat".into(), json!(c));
        }
        if f.len() == 16 {
            if let Some(s) = get(13) {
                p.insert("spraak".into(), json!(s));
            }
            if let Some(t) = get(14) {
                p.insert("spraak_oppdatert".into(), json!(t));
            }
        }
        lines.push(Value::Object(p).to_string());
        expected.push((f[0].to_string(), f[3].to_string()));
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("digdir.krr");
    let mut opts = build_opts();
    // 2019-01-01: after the 2017 changes (within 18 months), before the 2020 ones.
    opts.build_time = Timestamp::parse("2019-01-01T00:00:00+01").unwrap();
    build_bytes(lines.join("\n").as_bytes(), &out, &opts).unwrap();
    let snap = Snapshot::open(&out).unwrap();
    assert_eq!(snap.len() as usize, expected.len());
    assert_eq!(snap.header().counts.certs, 2);
    // Digdir's test persons share contact details (the sheet's +4799999999 and its
    // "…-test@minid.norge.no" addresses), as families do in the register: `*_duplisert` is
    // JA exactly where another AKTIV person of the sheet has the same value.
    let sources: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let shared = shared(&sources);
    let mut duplicated = 0;
    for src in &sources {
        let mut buf = Vec::new();
        assert!(write_person(
            &snap,
            &Overlay::new(),
            id_of(src),
            Groups::ALL,
            &mut buf
        ));
        let got: Value = serde_json::from_slice(&buf).unwrap();
        // (The sheet's times are RFC 3339 with fractions; the answer's are Oslo time.)
        let want = &expected_full(src, &shared)["kontaktinformasjon"];
        for field in ["epostadresse_duplisert", "mobiltelefonnummer_duplisert"] {
            assert_eq!(
                got["kontaktinformasjon"][field], want[field],
                "{field}: {got}"
            );
        }
        duplicated +=
            usize::from(got["kontaktinformasjon"]["mobiltelefonnummer_duplisert"] == "JA");
    }
    assert!(
        duplicated >= 2,
        "the sheet's shared mobile number is marked"
    );
    for (id, want) in expected {
        let mut buf = Vec::new();
        assert!(write_person(
            &snap,
            &Overlay::new(),
            PersonId::parse(id.as_bytes()).unwrap(),
            Groups::ALL,
            &mut buf
        ));
        let got: Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(
            got["varslingsstatus"],
            want.as_str(),
            "test person on row with note: {got}"
        );
    }
}
