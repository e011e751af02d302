//! The committed snapshots: today's code must read the version-2 one and still write it
//! byte for byte from the committed export, and must refuse the version-1 one (written by
//! builds before the change feed) with the remedy. A format change fails here on purpose:
//! bump `format::VERSION`, regenerate the fixture (commands below) and say so in
//! `docs/format.md`.
//!
//! ```sh
//! krr generate --count 60 --seed 2026 --out tests/fixtures/register-v1.jsonl   # (an older generator's output)
//! krr snapshot build --input tests/fixtures/register-v1.jsonl \
//!     --out tests/fixtures/register-v2.krr --build-time 2026-11-20T12:00:00Z
//! ```

use std::path::PathBuf;

use krr::model::Groups;
use krr::model::fnr::PersonId;
use krr::model::time::Timestamp;
use krr::snapshot::{BuildOptions, Snapshot, build_file};
use krr::store::lookup::write_person;
use krr::store::overlay::Overlay;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

#[test]
fn the_committed_v1_snapshot_is_refused_with_the_remedy() {
    let err = Snapshot::open(&fixture("register-v1.krr")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "unsupported snapshot format version 1 (this build reads version 2); rebuild it from \
         the export with this build's `krr snapshot build`"
    );
}

#[test]
fn the_committed_v2_snapshot_is_read_and_rewritten_byte_for_byte() {
    let committed = fixture("register-v2.krr");
    let snap = Snapshot::open(&committed).unwrap();
    let h = snap.header();
    assert_eq!(h.version, 2);
    assert_eq!(h.counts.records, 60);
    assert_eq!(
        h.build_time,
        Timestamp::parse("2026-11-20T12:00:00Z").unwrap()
    );
    assert_eq!(snap.id(), "75e570038f20a086");

    let export = std::fs::read_to_string(fixture("register-v1.jsonl")).unwrap();
    for line in export.lines() {
        let src: serde_json::Value = serde_json::from_str(line).unwrap();
        let id = src["personidentifikator"].as_str().unwrap();
        let mut out = Vec::new();
        assert!(write_person(
            &snap,
            &Overlay::new(),
            PersonId::parse(id.as_bytes()).unwrap(),
            Groups::ALL,
            &mut out
        ));
        let got: serde_json::Value = serde_json::from_slice(&out).unwrap();
        for (k, v) in src.as_object().unwrap() {
            match v.as_object() {
                // The source's contact fields; the derived *_duplisert come on top.
                Some(inner) => {
                    for (f, x) in inner {
                        assert_eq!(&got[k][f], x, "{k}.{f}");
                    }
                }
                None => assert_eq!(&got[k], v, "{k}"),
            }
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let rebuilt = dir.path().join("rebuilt.krr");
    let opts = BuildOptions {
        build_time: h.build_time,
        journal: None,
        progress: false,
        shrink: None,
        previous: None,
    };
    build_file(&fixture("register-v1.jsonl"), &rebuilt, &opts).unwrap();
    assert!(
        std::fs::read(&rebuilt).unwrap() == std::fs::read(&committed).unwrap(),
        "the builder no longer writes format version 2 byte for byte"
    );
}
