//! The journal on its own: group commit, recovery and its torn-tail policy, rotation,
//! compaction, the single-writer lock, and folding into a snapshot build.
//!
//! Longer than 500 lines on purpose: the recovery cases are table-driven over committed
//! journal bytes with the helpers at the top; they read best side by side.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use krr::journal::{
    self, Change, Entry, Journal, JournalError, JournalOptions, Mode, format::FRAME_HEADER_LEN,
};
use krr::model::Spraak;
use krr::model::fnr::PersonId;
use krr::model::time::Timestamp;
use krr::snapshot::{BuildOptions, Snapshot, build_file};
use krr::store::overlay::Overlay;

fn ids(n: u64) -> Vec<PersonId> {
    krr::dev::generate::synthetic_ids(n, 7).unwrap()
}

fn set(id: PersonId, i: usize) -> Change {
    Change::SetSpraak {
        id,
        spraak: Spraak::ALL[i % 4],
    }
}

/// Opens `dir` with an apply function that records every applied entry.
fn open(
    dir: &Path,
    after: u64,
    opts: JournalOptions,
) -> (Journal, journal::Scan, Arc<Mutex<Vec<Entry>>>) {
    let applied = Arc::new(Mutex::new(Vec::new()));
    let sink = applied.clone();
    let (j, scan) = Journal::open(
        dir,
        after,
        opts,
        Box::new(move |es| sink.lock().unwrap().extend_from_slice(es)),
    )
    .unwrap();
    (j, scan, applied)
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    journal::segment_files(dir)
        .unwrap()
        .into_iter()
        .map(|(_, p)| p)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_syncs_and_all_survive() {
    let dir = tempfile::tempdir().unwrap();
    let people = ids(400);
    let (j, scan, applied) = open(dir.path(), 0, JournalOptions::default());
    assert!(scan.entries.is_empty());
    let j = Arc::new(j);
    let mut tasks = Vec::new();
    for (i, &id) in people.iter().enumerate() {
        let j = j.clone();
        tasks.push(tokio::spawn(
            async move { j.append(set(id, i)).await.unwrap() },
        ));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.push(t.await.unwrap());
    }
    // Every change got its own sequence number, 1..=400, and was applied before its ack.
    let mut seqs: Vec<u64> = acked.iter().map(|e| e.seq).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=400).collect::<Vec<_>>());
    assert_eq!(applied.lock().unwrap().len(), 400);
    let stats = j.stats();
    // How many syncs the 400 shared depends on timing (the PATCH benchmark reports it).
    assert!(stats.syncs.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    assert_eq!(
        stats.last_seq.load(std::sync::atomic::Ordering::Relaxed),
        400
    );
    Arc::into_inner(j).unwrap().close();

    // A new writer recovers all of them and carries on from 401.
    let (j, scan, _) = open(dir.path(), 0, JournalOptions::default());
    assert_eq!(scan.entries.len(), 400);
    assert!(scan.cut.is_none());
    let mut by_seq = acked.clone();
    by_seq.sort_by_key(|e| e.seq);
    assert_eq!(scan.entries, by_seq);
    let next = j.append(set(people[0], 1)).await.unwrap();
    assert_eq!(next.seq, 401);
    j.close();
    assert_eq!(segment_files(dir.path()).len(), 1);
}

#[tokio::test]
async fn a_second_writer_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _, _) = open(dir.path(), 0, JournalOptions::default());
    let err =
        Journal::open(dir.path(), 0, JournalOptions::default(), Box::new(|_| {})).unwrap_err();
    assert!(matches!(err, JournalError::Locked(_)), "{err}");
    assert!(err.to_string().contains("is in use by another process"));
    j.close();
    let (j, _, _) = open(dir.path(), 0, JournalOptions::default());
    j.close();
}

/// The committed fixture: three good records, then a fourth cut off mid-write.
#[test]
fn torn_tail_fixture_recovers_to_the_record_before_it() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/journal-torn");
    let dir = tempfile::tempdir().unwrap();
    let name = "00000000000000000001.journal";
    std::fs::copy(fixture.join(name), dir.path().join(name)).unwrap();
    let file = dir.path().join(name);
    let before = std::fs::metadata(&file).unwrap().len();
    let want_len = 24 + 3 * 34;
    assert!(before > want_len, "the fixture has a torn tail");

    // Read only (what `snapshot build --journal` does): the file is left alone.
    let scan = journal::scan(dir.path(), Mode::ReadOnly).unwrap();
    assert_eq!(std::fs::metadata(&file).unwrap().len(), before);
    let expected = fixture_entries();
    assert_eq!(scan.entries, expected);
    let cut = scan.cut.clone().unwrap();
    assert_eq!(cut.offset, want_len);
    assert_eq!(cut.dropped_bytes, before - want_len);
    assert_eq!(cut.reason, "the last record is incomplete (torn write)");

    // Repair (start-up): cut at the last good record, then append after it.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (j, scan, _) = open(dir.path(), 0, JournalOptions::default());
    assert_eq!(scan.entries, expected);
    assert_eq!(std::fs::metadata(&file).unwrap().len(), want_len);
    let e = rt
        .block_on(j.append(set(expected[0].change.person().unwrap(), 0)))
        .unwrap();
    assert_eq!(e.seq, 4);
    j.close();
    let scan = journal::scan(dir.path(), Mode::ReadOnly).unwrap();
    assert!(scan.cut.is_none());
    assert_eq!(scan.entries.len(), 4);
}

fn fixture_entries() -> Vec<Entry> {
    let id = |s: &str| PersonId::parse(s.as_bytes()).unwrap();
    vec![
        Entry {
            seq: 1,
            at: Timestamp(1_795_176_000),
            change: Change::SetSpraak {
                id: id("20914695016"),
                spraak: Spraak::En,
            },
        },
        Entry {
            seq: 2,
            at: Timestamp(1_795_176_001),
            change: Change::SetSpraak {
                id: id("11887197158"),
                spraak: Spraak::Nn,
            },
        },
        Entry {
            seq: 3,
            at: Timestamp(1_795_176_002),
            change: Change::SetSpraak {
                id: id("20914695016"),
                spraak: Spraak::Se,
            },
        },
    ]
}

/// Rewrites the torn-tail fixture (run by hand: `cargo test --test journal -- --ignored`).
#[test]
#[ignore = "writes tests/fixtures/journal-torn; run by hand when the format changes"]
fn write_torn_fixture() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/journal-torn");
    std::fs::create_dir_all(&dir).unwrap();
    let mut bytes = journal::format::segment_header(1).to_vec();
    for e in fixture_entries() {
        journal::format::encode(&e, &mut bytes);
    }
    let mut torn = Vec::new();
    journal::format::encode(
        &Entry {
            seq: 4,
            at: Timestamp(1_795_176_003),
            change: set(PersonId::parse(b"11887197158").unwrap(), 0),
        },
        &mut torn,
    );
    bytes.extend_from_slice(&torn[..FRAME_HEADER_LEN + 3]);
    std::fs::write(dir.join("00000000000000000001.journal"), bytes).unwrap();
}

fn write_segment(dir: &Path, first: u64, entries: &[Entry]) -> PathBuf {
    let mut bytes = journal::format::segment_header(first).to_vec();
    for e in entries {
        journal::format::encode(e, &mut bytes);
    }
    let path = dir.join(journal::format::segment_name(first));
    std::fs::write(&path, bytes).unwrap();
    path
}

fn entries(from: u64, n: u64) -> Vec<Entry> {
    ids(n)
        .into_iter()
        .enumerate()
        .map(|(i, id)| Entry {
            seq: from + i as u64,
            at: Timestamp(1_795_176_000 + i as i64),
            change: set(id, i),
        })
        .collect()
}

#[test]
fn damage_that_is_not_a_torn_tail_is_refused() {
    // A flipped byte in an older segment: acknowledged changes after it would be lost.
    let dir = tempfile::tempdir().unwrap();
    let old = write_segment(dir.path(), 1, &entries(1, 5));
    write_segment(dir.path(), 6, &entries(6, 5));
    let mut bytes = std::fs::read(&old).unwrap();
    bytes[24 + 34 + 20] ^= 0x10;
    std::fs::write(&old, &bytes).unwrap();
    let err = journal::scan(dir.path(), Mode::Repair).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(
            "00000000000000000001.journal is damaged at byte 58: record checksum mismatch"
        ),
        "{msg}"
    );
    assert_eq!(std::fs::read(&old).unwrap(), bytes, "nothing was cut");

    // Segments that overlap.
    let dir = tempfile::tempdir().unwrap();
    write_segment(dir.path(), 1, &entries(1, 5));
    write_segment(dir.path(), 4, &entries(4, 5));
    let msg = journal::scan(dir.path(), Mode::ReadOnly)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("segment starts at sequence 4, inside the one before (which ends at 5)"),
        "{msg}"
    );

    // A record out of sequence inside a segment that is not the newest.
    let dir = tempfile::tempdir().unwrap();
    let mut es = entries(1, 5);
    es[2].seq = 9;
    write_segment(dir.path(), 1, &es);
    write_segment(dir.path(), 6, &entries(6, 1));
    let msg = journal::scan(dir.path(), Mode::ReadOnly)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("record has sequence 9, expected 3"), "{msg}");

    // Not a journal at all.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(journal::format::segment_name(1)),
        [b'x'; 64],
    )
    .unwrap();
    let msg = journal::scan(dir.path(), Mode::ReadOnly)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("not a krr journal segment (wrong magic number)"),
        "{msg}"
    );

    // A header whose start disagrees with the file name.
    let dir = tempfile::tempdir().unwrap();
    let p = write_segment(dir.path(), 3, &entries(3, 1));
    std::fs::rename(p, dir.path().join(journal::format::segment_name(2))).unwrap();
    let msg = journal::scan(dir.path(), Mode::ReadOnly)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("header says the segment starts at sequence 3, its name says 2"),
        "{msg}"
    );
}

#[test]
fn a_corrupt_last_record_of_the_newest_segment_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_segment(dir.path(), 1, &entries(1, 4));
    let mut bytes = std::fs::read(&p).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 0xff;
    std::fs::write(&p, &bytes).unwrap();
    let scan = journal::scan(dir.path(), Mode::Repair).unwrap();
    assert_eq!(scan.entries, entries(1, 3));
    let cut = scan.cut.unwrap();
    assert_eq!((cut.offset, cut.dropped_bytes), (24 + 3 * 34, 34));
    assert_eq!(cut.reason, "record checksum mismatch");
    assert_eq!(std::fs::read(&p).unwrap(), bytes[..24 + 3 * 34]);
}

#[test]
fn a_torn_new_segment_is_removed() {
    // A crash while the next segment was being created left a few of its header bytes.
    let dir = tempfile::tempdir().unwrap();
    write_segment(dir.path(), 1, &entries(1, 4));
    let torn = dir.path().join(journal::format::segment_name(5));
    std::fs::write(&torn, &journal::format::segment_header(5)[..7]).unwrap();
    let scan = journal::scan(dir.path(), Mode::ReadOnly).unwrap();
    assert_eq!(scan.entries.len(), 4);
    assert!(torn.exists(), "read only leaves it");
    let scan = journal::scan(dir.path(), Mode::Repair).unwrap();
    assert_eq!(scan.entries.len(), 4);
    assert_eq!(
        scan.cut.unwrap().reason,
        "segment header is incomplete (torn segment creation)"
    );
    assert!(!torn.exists());
    // But damage in an older segment is refused even when a newer one follows.
    let dir = tempfile::tempdir().unwrap();
    let p = write_segment(dir.path(), 1, &entries(1, 4));
    write_segment(dir.path(), 5, &entries(5, 1));
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() - 5]).unwrap();
    let msg = journal::scan(dir.path(), Mode::Repair)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("is damaged at byte 126: the last record is incomplete"),
        "{msg}"
    );
}

#[tokio::test]
async fn rotation_and_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let people = ids(50);
    // Segments of at most ~5 records (24-byte header + 38-byte frames).
    let opts = JournalOptions {
        segment_bytes: 24 + 5 * 38,
        max_batch: 1,
        ..JournalOptions::default()
    };
    let (j, _, _) = open(dir.path(), 0, opts);
    for (i, &id) in people.iter().enumerate() {
        j.append(set(id, i)).await.unwrap();
    }
    j.close();
    let files = segment_files(dir.path());
    assert_eq!(files.len(), 10, "{files:?}");
    let scan = journal::scan(dir.path(), Mode::ReadOnly).unwrap();
    assert_eq!(scan.last_seq(), 50);
    assert_eq!(scan.segments[1].first_seq, 6);

    // A snapshot folded up to 23: segments 1-5, 6-10, 11-15 and 16-20 go; 21-25 stays.
    let removed = journal::compact(dir.path(), 23).unwrap();
    assert_eq!(removed, files[..4].to_vec());
    let scan = journal::scan(dir.path(), Mode::ReadOnly).unwrap();
    assert_eq!(scan.entries.first().unwrap().seq, 21);
    assert_eq!(scan.last_seq(), 50);
    // Everything folded: all but the newest segment go, and the sequence carries on.
    let removed = journal::compact(dir.path(), 50).unwrap();
    assert_eq!(removed.len(), 5);
    assert_eq!(segment_files(dir.path()), vec![files[9].clone()]);
    let (j, scan, _) = open(dir.path(), 50, opts);
    assert_eq!(scan.last_seq(), 50);
    assert_eq!(j.append(set(people[0], 0)).await.unwrap().seq, 51);
    j.close();
}

#[tokio::test]
async fn sequence_numbers_continue_after_a_snapshot_when_the_journal_was_emptied() {
    let dir = tempfile::tempdir().unwrap();
    // The served snapshot folded up to 120 and the journal directory is new or emptied.
    let (j, _, _) = open(dir.path(), 120, JournalOptions::default());
    assert_eq!(j.append(set(ids(1)[0], 0)).await.unwrap().seq, 121);
    j.close();
    assert_eq!(
        segment_files(dir.path()),
        vec![dir.path().join(journal::format::segment_name(121))]
    );
}

/// The build folds the newest change of each person in, unless the export's own change is
/// newer, and records the sequence number; the overlay then drops what the snapshot holds.
#[test]
fn folding_into_a_build() {
    let dir = tempfile::tempdir().unwrap();
    let (jsonl, krr) = crate::common::register(dir.path(), "reg", 300, 3);
    let register = crate::common::source_values(&jsonl);
    let base = Snapshot::open(&krr).unwrap();
    let aktiv: Vec<&serde_json::Value> =
        register.iter().filter(|p| p["status"] == "AKTIV").collect();
    let slettet = register.iter().find(|p| p["status"] == "SLETTET").unwrap();
    let with_time = aktiv
        .iter()
        .find(|p| p.get("spraak_oppdatert").is_some())
        .unwrap();
    let pid = |v: &serde_json::Value| {
        PersonId::parse(v["personidentifikator"].as_str().unwrap().as_bytes()).unwrap()
    };
    let export_time = Timestamp::parse(with_time["spraak_oppdatert"].as_str().unwrap()).unwrap();
    let journal_dir = dir.path().join("journal");
    std::fs::create_dir(&journal_dir).unwrap();
    let later = Timestamp(crate::common::BUILD_TIME.0 + 60);
    let e = |seq: u64, at: Timestamp, id: PersonId, spraak: Spraak| Entry {
        seq,
        at,
        change: Change::SetSpraak { id, spraak },
    };
    let a = pid(aktiv.iter().find(|p| pid(p) != pid(with_time)).unwrap());
    let entries = vec![
        // Two changes of one person: the later one counts.
        e(1, later, a, Spraak::Nn),
        e(2, Timestamp(later.0 + 1), a, Spraak::Se),
        // Older than the export's own change: the export wins.
        e(3, Timestamp(export_time.0 - 1), pid(with_time), Spraak::En),
        // SLETTET and unknown persons: nothing to change.
        e(4, later, pid(slettet), Spraak::En),
        e(
            5,
            later,
            PersonId::parse(b"20914695016").unwrap(),
            Spraak::En,
        ),
    ];
    write_segment(&journal_dir, 1, &entries);

    // Before the build, the overlay shows the journal over the old snapshot.
    let overlay = Overlay::new();
    assert_eq!(
        overlay.replay(&entries, Some(&base)),
        2,
        "the superseded, SLETTET and unknown changes are not shown"
    );
    assert_eq!(overlay.len(), 1);
    assert_eq!(overlay.get(a).unwrap().spraak, Spraak::Se);

    let out = dir.path().join("folded.krr");
    let report = build_file(
        &jsonl,
        &out,
        &BuildOptions {
            journal: Some(krr::snapshot::JournalInput::Dir(journal_dir.clone())),
            ..crate::common::build_opts()
        },
    )
    .unwrap();
    let fold = report.journal.unwrap();
    assert_eq!(
        (
            fold.records,
            fold.persons,
            fold.applied,
            fold.superseded,
            fold.not_applicable
        ),
        (5, 4, 1, 1, 2)
    );
    assert_eq!(fold.folded_seq, 5);
    assert_eq!(report.header.journal_seq, 5);

    let folded = Snapshot::open(&out).unwrap();
    let mut buf = Vec::new();
    assert!(krr::store::lookup::write_person(
        &folded,
        &Overlay::new(),
        a,
        krr::model::Groups::ALL,
        &mut buf
    ));
    let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
    assert_eq!(v["spraak"], "se");
    assert_eq!(
        Timestamp::parse(v["spraak_oppdatert"].as_str().unwrap()).unwrap(),
        Timestamp(later.0 + 1)
    );
    assert_eq!(
        folded.get(pid(with_time)).unwrap().spraak_oppdatert(),
        Some(export_time)
    );
    // Everything else is byte for byte the same as without the journal.
    let mut plain = Vec::new();
    let mut with = Vec::new();
    for p in &register {
        let id = pid(p);
        if id == a {
            continue;
        }
        plain.clear();
        with.clear();
        krr::store::lookup::write_person(
            &base,
            &Overlay::new(),
            id,
            krr::model::Groups::ALL,
            &mut plain,
        );
        krr::store::lookup::write_person(
            &folded,
            &Overlay::new(),
            id,
            krr::model::Groups::ALL,
            &mut with,
        );
        assert_eq!(plain, with);
    }
    // The overlay drops everything the folded snapshot holds.
    assert_eq!(overlay.prune(&folded), 1);
    assert!(overlay.is_empty());
    // ...and the filter rebuilt from the empty map lets batches skip the overlay again.
    assert!(overlay.filter().is_empty());

    // A missing journal directory is an error, not an empty fold.
    let err = build_file(
        &jsonl,
        &dir.path().join("x.krr"),
        &BuildOptions {
            journal: Some(krr::snapshot::JournalInput::Dir(dir.path().join("nope"))),
            ..crate::common::build_opts()
        },
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("journal directory does not exist"),
        "{err}"
    );
}
