//! The committed version-1 snapshot: today's code must read it, and must still write it
//! byte for byte from the committed export. A format change fails here on purpose: bump
//! `format::VERSION`, regenerate the fixture (commands below) and say so in
//! `docs/format.md`.
//!
//! ```sh
//! krr generate --count 60 --seed 2026 --out tests/fixtures/register-v1.jsonl
//! krr snapshot build --input tests/fixtures/register-v1.jsonl \
//!     --out tests/fixtures/register-v1.krr --build-time 2026-11-20T12:00:00Z
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
fn the_committed_v1_snapshot_is_read_and_rewritten_byte_for_byte() {
    let committed = fixture("register-v1.krr");
    let snap = Snapshot::open(&committed).unwrap();
    let h = snap.header();
    assert_eq!(h.version, 1);
    assert_eq!(h.counts.records, 60);
    assert_eq!(
        h.build_time,
        Timestamp::parse("2026-11-20T12:00:00Z").unwrap()
    );
    assert_eq!(snap.id(), "3631564267a30b11");

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
            assert_eq!(&got[k], v, "{k}");
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
        "the builder no longer writes format version 1 byte for byte"
    );
}
