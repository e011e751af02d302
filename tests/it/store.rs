//! Refusing corrupt files precisely, and hot-swapping under readers.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::common::{register, source_values};
use krr::model::Groups;
use krr::model::fnr::PersonId;
use krr::snapshot::format::{HEADER_LEN, Header, off};
use krr::snapshot::{Snapshot, SnapshotError};
use krr::store::Store;
use krr::store::lookup::{BatchOptions, write_personer};
use krr::store::overlay::Overlay;

fn corrupt(
    good: &[u8],
    dir: &std::path::Path,
    name: &str,
    edit: impl FnOnce(&mut Vec<u8>),
) -> std::path::PathBuf {
    let mut bytes = good.to_vec();
    edit(&mut bytes);
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Rewrites the header after a body edit, so only the deeper checks can catch it.
fn reseal(bytes: &mut [u8]) {
    let mut h = Header::decode(&bytes[..HEADER_LEN]).unwrap();
    h.body_checksum = krr::snapshot::format::body_checksum(&bytes[HEADER_LEN..], 1);
    bytes[..HEADER_LEN].copy_from_slice(&h.encode());
}

#[test]
fn corrupt_files_are_refused_with_a_precise_error() {
    let dir = tempfile::tempdir().unwrap();
    let (_, krr) = register(dir.path(), "good", 500, 1);
    let good = std::fs::read(&krr).unwrap();
    let body_len = (good.len() - HEADER_LEN) as u64;
    let d = dir.path();

    let check = |path: std::path::PathBuf, want: &str, ok: &dyn Fn(&SnapshotError) -> bool| {
        let err = Snapshot::open(&path).unwrap_err();
        assert!(ok(&err), "{}: {err:?}", path.display());
        assert_eq!(err.to_string(), want);
    };

    check(
        corrupt(&good, d, "flipped-body", |b| {
            let at = b.len() / 2;
            b[at] ^= 0x10;
        }),
        &{
            let mut b = good.clone();
            let at = b.len() / 2;
            b[at] ^= 0x10;
            let actual = krr::snapshot::format::body_checksum(&b[HEADER_LEN..], 1);
            let expected = Header::decode(&good).unwrap().body_checksum;
            format!(
                "body checksum mismatch: header says {expected:016x}, body hashes to {actual:016x} (the body is corrupt)"
            )
        },
        &|e| matches!(e, SnapshotError::BodyChecksum { .. }),
    );
    check(
        corrupt(&good, d, "flipped-header", |b| b[off::RECORDS] ^= 1),
        "header checksum mismatch (the header is corrupt)",
        &|e| matches!(e, SnapshotError::HeaderChecksum),
    );
    check(
        corrupt(&good, d, "truncated", |b| {
            b.pop();
        }),
        &format!(
            "length mismatch: header says {} bytes, file has {} (truncated or padded)",
            good.len(),
            good.len() - 1
        ),
        &|e| matches!(e, SnapshotError::Length { .. }),
    );
    check(
        corrupt(&good, d, "padded", |b| b.push(0)),
        &format!(
            "length mismatch: header says {} bytes, file has {} (truncated or padded)",
            good.len(),
            good.len() + 1
        ),
        &|e| matches!(e, SnapshotError::Length { .. }),
    );
    check(
        corrupt(&good, d, "short", |b| b.truncate(100)),
        "file is too short to be a snapshot (100 bytes)",
        &|e| matches!(e, SnapshotError::TooShort { len: 100 }),
    );
    check(
        corrupt(&good, d, "empty", |b| b.clear()),
        "file is too short to be a snapshot (0 bytes)",
        &|e| matches!(e, SnapshotError::TooShort { len: 0 }),
    );
    check(
        corrupt(&good, d, "magic", |b| b[0] = b'X'),
        "not a krr snapshot (wrong magic number)",
        &|e| matches!(e, SnapshotError::BadMagic),
    );
    check(
        corrupt(&good, d, "version", |b| {
            let mut h = Header::decode(b).unwrap();
            h.version = 3;
            b[..HEADER_LEN].copy_from_slice(&h.encode());
        }),
        "unsupported snapshot format version 3 (this build reads version 2); rebuild it from the export with this build's `krr snapshot build`",
        &|e| {
            matches!(
                e,
                SnapshotError::UnsupportedVersion {
                    found: 3,
                    supported: 2
                }
            )
        },
    );
    // A body edited and resealed with a matching checksum: an empty slot made to look used.
    check(
        corrupt(&good, d, "resealed", |b| {
            let empty_slot: Vec<u8> = [[0xffu8; 8], [0u8; 8]].concat();
            let at = HEADER_LEN
                + b[HEADER_LEN..]
                    .windows(16)
                    .position(|w| w == empty_slot.as_slice())
                    .expect("an empty slot");
            b[at..at + 8].copy_from_slice(&1u64.to_le_bytes());
            reseal(b);
        }),
        "corrupt body layout: 501 slots in use, header says 500 persons",
        &|e| matches!(e, SnapshotError::Layout(_)),
    );
    let missing = Snapshot::open(&d.join("missing.krr")).unwrap_err();
    assert!(matches!(missing, SnapshotError::Io { .. }), "{missing:?}");
    assert_eq!(body_len, Header::decode(&good).unwrap().body_len);
}

#[test]
fn a_refused_file_leaves_the_current_snapshot_serving() {
    let dir = tempfile::tempdir().unwrap();
    let (_, a) = register(dir.path(), "a", 300, 1);
    let bad = dir.path().join("bad.krr");
    let mut bytes = std::fs::read(&a).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&bad, bytes).unwrap();

    let store = Store::empty();
    assert!(store.current().is_none());
    assert!(store.load_file(&bad).is_err());
    assert!(
        store.current().is_none(),
        "nothing published from a refused file"
    );
    let served = store.load_file(&a).unwrap();
    let err = store.load_file(&bad).unwrap_err();
    assert!(matches!(err, SnapshotError::BodyChecksum { .. }));
    let now = store.current();
    assert!(Arc::ptr_eq(now.as_ref().unwrap(), &served));
}

#[test]
fn swapping_while_readers_hold_the_old_snapshot_is_safe() {
    let dir = tempfile::tempdir().unwrap();
    let (ja, a) = register(dir.path(), "a", 1500, 11);
    let (jb, b) = register(dir.path(), "b", 1500, 12);
    let id = |v: &serde_json::Value| {
        PersonId::parse(v["personidentifikator"].as_str().unwrap().as_bytes()).unwrap()
    };
    // Ids from both registers: each snapshot knows half of them.
    let ids: Vec<PersonId> = source_values(&ja)
        .iter()
        .take(300)
        .chain(source_values(&jb).iter().take(300))
        .map(id)
        .collect();
    let answer = |snap: &Snapshot| {
        let mut out = Vec::new();
        write_personer(
            snap,
            &Overlay::new(),
            &ids,
            BatchOptions::v1(Groups::ALL),
            &mut out,
        );
        out
    };
    let want_a = answer(&Snapshot::open(&a).unwrap());
    let want_b = answer(&Snapshot::open(&b).unwrap());
    assert_ne!(want_a, want_b);

    let store = Arc::new(Store::empty());
    store.load_file(&a).unwrap();

    // A reader holding the old snapshot keeps reading it, whole, after a swap; the old
    // mapping goes away only when that reader lets go.
    let held = store.current();
    let weak = Arc::downgrade(held.as_ref().unwrap());
    store.load_file(&b).unwrap();
    assert_eq!(answer(held.as_ref().unwrap()), want_a);
    drop(held);
    assert!(
        weak.upgrade().is_none(),
        "old snapshot unmapped after its last reader"
    );

    // Readers in a loop while the main thread swaps back and forth: every answer is wholly
    // one snapshot's.
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (store, stop, want_a, want_b) =
                (store.clone(), stop.clone(), want_a.clone(), want_b.clone());
            let ids = ids.clone();
            std::thread::spawn(move || {
                let mut out = Vec::new();
                let (mut saw_a, mut saw_b) = (0, 0);
                while !stop.load(Ordering::Relaxed) {
                    let guard = store.current();
                    out.clear();
                    write_personer(
                        guard.as_ref().unwrap(),
                        &Overlay::new(),
                        &ids,
                        BatchOptions::v1(Groups::ALL),
                        &mut out,
                    );
                    if out == want_a {
                        saw_a += 1;
                    } else if out == want_b {
                        saw_b += 1;
                    } else {
                        panic!("an answer mixing snapshots or corrupt");
                    }
                }
                (saw_a, saw_b)
            })
        })
        .collect();
    for i in 0..60 {
        store.load_file(if i % 2 == 0 { &a } else { &b }).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        let (saw_a, saw_b) = r.join().unwrap();
        assert!(saw_a + saw_b > 0);
    }
}
