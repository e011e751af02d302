//! The journal under faults, through its file seam (`krr::journal::file::io`): the Nth
//! create, write, sync or rename fails, and a machine crash forgets everything that was
//! not synced (not `kill -9`, which keeps the page cache). Every acknowledged change must
//! survive, refusals must be clean (nothing half there after a "not made"), a failed sync
//! must stop the journal for good, and a full disk must heal once space returns.

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rand::{Rng, SeedableRng};

use krr::journal::file::io::{Files, OsFiles, SegmentFile};
use krr::journal::{self, Change, Entry, Journal, JournalError, JournalOptions, Mode};
use krr::model::Spraak;
use krr::model::fnr::PersonId;

/// Which operation fails, and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Op {
    Create,
    Write,
    Sync,
    Rename,
}

#[derive(Debug, Default)]
struct Ledger {
    /// Calls so far, per operation.
    calls: HashMap<Op, usize>,
    /// Fail these calls (1-based) of each operation.
    fail: HashMap<Op, HashSet<usize>>,
    /// A failing write first writes this many bytes (and fails on the next call).
    partial: usize,
    /// The next write fails (the rest of a partial one).
    write_error_next: bool,
    /// Errors: ENOSPC unless set.
    error: Option<i32>,
    /// What each file held at its last sync (or when it was opened).
    durable: HashMap<PathBuf, Vec<u8>>,
    /// Files created since the directory was last synced.
    unsynced_names: HashSet<PathBuf>,
    /// Renames since the directory was last synced: (from, to, what `to` held durably).
    unsynced_renames: Vec<(PathBuf, PathBuf, Option<Vec<u8>>)>,
    /// Removes since the directory was last synced: (path, what it held durably).
    unsynced_removes: Vec<(PathBuf, Option<Vec<u8>>)>,
}

/// Real files under a ledger that knows what a crash would keep.
#[derive(Debug, Clone, Default)]
struct CrashModel(Arc<Mutex<Ledger>>);

impl CrashModel {
    fn fail(&self, op: Op, nth: usize) {
        self.0
            .lock()
            .unwrap()
            .fail
            .entry(op)
            .or_default()
            .insert(nth);
    }

    /// Counts a call; the error to fail it with, if it is one of the failing ones.
    fn call(&self, op: Op) -> Option<io::Error> {
        let mut l = self.0.lock().unwrap();
        let n = {
            let c = l.calls.entry(op).or_insert(0);
            *c += 1;
            *c
        };
        l.fail
            .get(&op)
            .is_some_and(|s| s.contains(&n))
            .then(|| io::Error::from_raw_os_error(l.error.unwrap_or(28)))
    }

    /// The machine loses power: every file goes back to what was synced, names that were
    /// not made durable go away, renames and removes not made durable are undone.
    fn crash(&self) {
        let mut guard = self.0.lock().unwrap();
        let l = &mut *guard;
        for (path, held) in l.unsynced_removes.drain(..).rev().collect::<Vec<_>>() {
            if let Some(bytes) = held {
                std::fs::write(&path, bytes).unwrap();
            }
        }
        for (_, to, before) in l.unsynced_renames.drain(..).rev().collect::<Vec<_>>() {
            let _ = std::fs::remove_file(&to);
            l.durable.remove(&to);
            if let Some(bytes) = before {
                std::fs::write(&to, &bytes).unwrap();
                l.durable.insert(to, bytes);
            }
        }
        for path in l.unsynced_names.drain() {
            let _ = std::fs::remove_file(&path);
            l.durable.remove(&path);
        }
        for (path, bytes) in &l.durable {
            if path.exists() {
                std::fs::write(path, bytes).unwrap();
            }
        }
    }
}

#[derive(Debug)]
struct ModelFile {
    path: PathBuf,
    file: std::fs::File,
    model: CrashModel,
}

impl SegmentFile for ModelFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        use std::io::Write;
        if std::mem::take(&mut self.model.0.lock().unwrap().write_error_next) {
            return Err(io::Error::from_raw_os_error(28));
        }
        if let Some(e) = self.model.call(Op::Write) {
            // Like the kernel: what fits is written and counted, the error comes next.
            let partial = self.model.0.lock().unwrap().partial.min(buf.len() - 1);
            if partial == 0 {
                return Err(e);
            }
            self.file.write_all(&buf[..partial])?;
            self.model.0.lock().unwrap().write_error_next = true;
            return Ok(partial);
        }
        self.file.write(buf)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        if let Some(e) = self.model.call(Op::Sync) {
            return Err(e);
        }
        self.file.sync_data()?;
        let now = std::fs::read(&self.path)?;
        self.model
            .0
            .lock()
            .unwrap()
            .durable
            .insert(self.path.clone(), now);
        Ok(())
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }
}

impl Files for CrashModel {
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn SegmentFile>> {
        if let Some(e) = self.call(Op::Create) {
            return Err(e);
        }
        let file = std::fs::OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(path)?;
        let mut l = self.0.lock().unwrap();
        l.unsynced_names.insert(path.to_owned());
        l.durable.insert(path.to_owned(), Vec::new());
        drop(l);
        Ok(Box::new(ModelFile {
            path: path.to_owned(),
            file,
            model: self.clone(),
        }))
    }

    fn open_append(&self, path: &Path) -> io::Result<Box<dyn SegmentFile>> {
        let file = std::fs::OpenOptions::new().append(true).open(path)?;
        let held = std::fs::read(path)?;
        self.0
            .lock()
            .unwrap()
            .durable
            .entry(path.to_owned())
            .or_insert(held);
        Ok(Box::new(ModelFile {
            path: path.to_owned(),
            file,
            model: self.clone(),
        }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        if let Some(e) = self.call(Op::Rename) {
            return Err(e);
        }
        let mut l = self.0.lock().unwrap();
        let before = match l.durable.remove(to) {
            Some(held) => Some(held),
            None => std::fs::read(to).ok(),
        };
        std::fs::rename(from, to)?;
        let moved = l.durable.remove(from).unwrap_or_default();
        l.durable.insert(to.to_owned(), moved);
        l.unsynced_names.remove(from);
        l.unsynced_renames
            .push((from.to_owned(), to.to_owned(), before));
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)?;
        let mut l = self.0.lock().unwrap();
        let held = l.durable.remove(path);
        if !l.unsynced_names.remove(path) {
            l.unsynced_removes.push((path.to_owned(), held));
        }
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        if let Some(e) = self.call(Op::Sync) {
            return Err(e);
        }
        OsFiles.sync_dir(dir)?;
        let mut l = self.0.lock().unwrap();
        l.unsynced_names.clear();
        l.unsynced_renames.clear();
        l.unsynced_removes.clear();
        Ok(())
    }
}

fn ids(n: u64) -> Vec<PersonId> {
    krr::dev::generate::synthetic_ids(n, 11).unwrap()
}

fn open_with(dir: &Path, model: &CrashModel, opts: JournalOptions) -> Journal {
    Journal::open_with(
        dir,
        0,
        opts,
        Box::new(|_: &[Entry]| {}),
        Arc::new(model.clone()),
    )
    .unwrap()
    .0
}

/// Appends `n` changes one after the other; the answers in order.
async fn append_all(
    j: &Journal,
    people: &[PersonId],
    from: usize,
    n: usize,
) -> Vec<Result<Entry, JournalError>> {
    let mut out = Vec::new();
    for i in from..from + n {
        let change = Change::SetSpraak {
            id: people[i % people.len()],
            spraak: Spraak::ALL[i % 4],
        };
        out.push(j.append(change).await);
    }
    out
}

#[tokio::test]
async fn a_full_disk_refuses_cleanly_and_heals_a_failed_sync_stops_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let model = CrashModel::default();
    let people = ids(50);
    let j = open_with(dir.path(), &model, JournalOptions::default());
    // The first group creates the segment: create 1, write 1 (header) ... then records.
    let ok = append_all(&j, &people, 0, 3).await;
    assert!(ok.iter().all(Result::is_ok));
    // The disk fills: the next write fails before a byte is written: "not made".
    let writes = model.0.lock().unwrap().calls[&Op::Write];
    model.fail(Op::Write, writes + 1);
    let refused = append_all(&j, &people, 3, 1).await;
    assert!(
        matches!(refused[0], Err(JournalError::Refused(_))),
        "{refused:?}"
    );
    // Space returns: changes are taken again, numbered on from the last durable one.
    let again = append_all(&j, &people, 4, 2).await;
    let seqs: Vec<u64> = again.iter().map(|r| r.as_ref().unwrap().seq).collect();
    assert_eq!(seqs, [4, 5]);
    // A write that fails half way: cut off again, answered "may or may not".
    model.0.lock().unwrap().partial = 10;
    let writes = model.0.lock().unwrap().calls[&Op::Write];
    model.fail(Op::Write, writes + 1);
    let half = append_all(&j, &people, 6, 1).await;
    assert!(
        matches!(half[0], Err(JournalError::Uncertain(_))),
        "{half:?}"
    );
    let after = append_all(&j, &people, 7, 1).await;
    assert_eq!(after[0].as_ref().unwrap().seq, 6);
    // A failed sync: that change is uncertain, and every later one is refused for good.
    let syncs = model.0.lock().unwrap().calls[&Op::Sync];
    model.fail(Op::Sync, syncs + 1);
    let failed = append_all(&j, &people, 8, 1).await;
    assert!(
        matches!(failed[0], Err(JournalError::Uncertain(_))),
        "{failed:?}"
    );
    let stopped = append_all(&j, &people, 9, 2).await;
    assert!(
        stopped
            .iter()
            .all(|r| matches!(r, Err(JournalError::Stopped))),
        "{stopped:?}"
    );
    j.close();
    // On disk: exactly the acknowledged changes, in order, no half record.
    let scan = journal::scan(dir.path(), Mode::ReadOnly).unwrap();
    assert!(scan.cut.is_none(), "{:?}", scan.cut);
    let on_disk: Vec<u64> = scan.entries.iter().map(|e| e.seq).collect();
    // Sequence 7 is the one whose sync failed: it may be there (it is here, the model's
    // disk kept the bytes); nothing after it.
    assert_eq!(on_disk, [1, 2, 3, 4, 5, 6, 7]);
}

#[tokio::test]
async fn segment_creation_failures_refuse_and_the_next_group_creates_it() {
    let dir = tempfile::tempdir().unwrap();
    let model = CrashModel::default();
    let people = ids(20);
    let opts = JournalOptions {
        segment_bytes: 200,
        ..JournalOptions::default()
    };
    let j = open_with(dir.path(), &model, opts);
    model.fail(Op::Create, 1);
    let first = append_all(&j, &people, 0, 1).await;
    assert!(
        matches!(first[0], Err(JournalError::Refused(_))),
        "{first:?}"
    );
    // HEAD's rename fails once on a later rotation: HEAD lags, nothing is refused.
    model.fail(Op::Rename, 2);
    let rest = append_all(&j, &people, 1, 30).await;
    assert!(rest.iter().all(Result::is_ok), "{rest:?}");
    j.close();
    let scan = journal::scan(dir.path(), Mode::ReadOnly).unwrap();
    assert_eq!(scan.entries.len(), 30);
    assert!(scan.segments.len() > 3, "{:?}", scan.segments);
    assert_eq!(scan.head, Some(scan.segments.last().unwrap().first_seq));
    scan.check_complete(dir.path(), 0).unwrap();
}

/// Random faults and a crash that keeps only what was synced: every acknowledged change
/// is there after recovery, in order.
#[tokio::test]
async fn every_acknowledged_change_survives_a_crash_that_drops_unsynced_data() {
    let people = ids(64);
    for seed in 0..40u64 {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let dir = tempfile::tempdir().unwrap();
        let opts = JournalOptions {
            segment_bytes: rng.random_range(100..600),
            max_batch: rng.random_range(1..8),
            ..JournalOptions::default()
        };
        let model = CrashModel::default();
        model.0.lock().unwrap().partial = rng.random_range(0..40);
        for op in [Op::Create, Op::Write, Op::Sync, Op::Rename] {
            for _ in 0..rng.random_range(0..3) {
                model.fail(op, rng.random_range(1..40));
            }
        }
        let mut acknowledged: Vec<Entry> = Vec::new();
        // Two lives: faults and a crash, then a restart on what the crash kept.
        for life in 0..2 {
            let j = open_with(dir.path(), &model, opts);
            let n = rng.random_range(5..40);
            // Concurrent appends, so groups hold several changes.
            let answers = futures::future::join_all((0..n).map(|i| {
                let change = Change::SetSpraak {
                    id: people[(i * 7 + life) % people.len()],
                    spraak: Spraak::ALL[i % 4],
                };
                j.append(change)
            }))
            .await;
            acknowledged.extend(answers.into_iter().filter_map(Result::ok));
            j.close();
            model.crash();
            // A new machine life: nothing pending, no faults left from before.
            *model.0.lock().unwrap() = Ledger::default();
        }
        let scan = journal::scan(dir.path(), Mode::ReadOnly)
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        let on_disk: HashMap<u64, Entry> = scan.entries.iter().map(|e| (e.seq, *e)).collect();
        for e in &acknowledged {
            assert_eq!(
                on_disk.get(&e.seq),
                Some(e),
                "seed {seed}: acknowledged {e:?} lost"
            );
        }
        scan.check_complete(dir.path(), 0)
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    }
}

/// A journal of `n` changes in segments of about five records each; the segment files.
async fn segmented(dir: &Path, n: usize) -> Vec<PathBuf> {
    let opts = JournalOptions {
        segment_bytes: 200,
        ..JournalOptions::default()
    };
    let (j, _) = Journal::open(dir, 0, opts, Box::new(|_: &[Entry]| {})).unwrap();
    let people = ids(20);
    assert!(
        append_all(&j, &people, 0, n)
            .await
            .iter()
            .all(Result::is_ok)
    );
    j.close();
    journal::segment_files(dir)
        .unwrap()
        .into_iter()
        .map(|(_, p)| p)
        .collect()
}

fn open_err(dir: &Path, after: u64) -> String {
    match Journal::open(
        dir,
        after,
        JournalOptions::default(),
        Box::new(|_: &[Entry]| {}),
    ) {
        Ok(_) => panic!("the journal opened"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn a_bad_record_with_intact_ones_after_it_is_damage_not_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let opts = JournalOptions::default();
    let (j, _) = Journal::open(dir.path(), 0, opts, Box::new(|_: &[Entry]| {})).unwrap();
    assert!(
        append_all(&j, &ids(5), 0, 6)
            .await
            .iter()
            .all(Result::is_ok)
    );
    j.close();
    let seg = journal::segment_files(dir.path()).unwrap()[0].1.clone();
    let good = std::fs::read(&seg).unwrap();
    // One bit of the third record's payload (records are 38 bytes after a 24-byte header).
    let third = 24 + 2 * 38;
    let mut flipped = good.clone();
    flipped[third + 30] ^= 0x04;
    std::fs::write(&seg, &flipped).unwrap();
    let err = open_err(dir.path(), 0);
    assert!(
        err.contains(&format!("is damaged at byte {third}"))
            && err.contains("(sequence 4) follows")
            && err.contains(seg.file_name().unwrap().to_str().unwrap()),
        "{err}"
    );
    // Nothing was cut: the acknowledged records after it are all still in the file.
    assert_eq!(std::fs::read(&seg).unwrap(), flipped);
    // The same bit in the last record is a torn tail: cut, and the journal opens.
    let mut last = good.clone();
    last[24 + 5 * 38 + 30] ^= 0x04;
    std::fs::write(&seg, &last).unwrap();
    let (j, scan) = Journal::open(dir.path(), 0, opts, Box::new(|_: &[Entry]| {})).unwrap();
    assert_eq!(scan.entries.len(), 5);
    assert_eq!(scan.cut.as_ref().unwrap().offset, (24 + 5 * 38) as u64);
    j.close();
}

#[test]
fn a_torn_last_group_with_intact_records_of_its_own_after_the_hole_is_cut() {
    use krr::journal::format::{GroupPos, encode_grouped, segment_header, segment_name};
    let dir = tempfile::tempdir().unwrap();
    let people = ids(8);
    let entry = |seq: u64| Entry {
        seq,
        at: krr::model::time::Timestamp(1_795_176_000),
        change: Change::SetSpraak {
            id: people[seq as usize % 8],
            spraak: Spraak::Nn,
        },
    };
    // A synced group of two, then the last group of four whose second record's page never
    // reached the disk (zeros) while its third and fourth did.
    let segment = || {
        let mut bytes = segment_header(1).to_vec();
        for (seq, index, len) in [
            (1, 0, 2),
            (2, 1, 2),
            (3, 0, 4),
            (4, 1, 4),
            (5, 2, 4),
            (6, 3, 4),
        ] {
            encode_grouped(&entry(seq), GroupPos { index, len }, &mut bytes);
        }
        bytes
    };
    let mut bytes = segment();
    let hole = 24 + 3 * 38;
    bytes[hole..hole + 38].fill(0);
    let path = dir.path().join(segment_name(1));
    std::fs::write(&path, &bytes).unwrap();
    let scan = journal::scan(dir.path(), Mode::Repair).unwrap();
    let seqs: Vec<u64> = scan.entries.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [1, 2, 3]);
    assert_eq!(scan.cut.unwrap().offset, hole as u64);
    // The same hole in the first group, with the second group after it: damage.
    let mut bytes = segment();
    bytes[24..24 + 38].fill(0);
    std::fs::write(&path, &bytes).unwrap();
    let err = journal::scan(dir.path(), Mode::Repair)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("is damaged at byte 24") && err.contains("(sequence 3) follows"),
        "{err}"
    );
}

#[tokio::test]
async fn missing_segments_are_refused_with_the_missing_range() {
    // The oldest segment deleted: records 1.. are gone, and no snapshot folded them.
    let dir = tempfile::tempdir().unwrap();
    let segs = segmented(dir.path(), 20).await;
    assert!(segs.len() >= 4, "{segs:?}");
    let second_first = journal::segment_files(dir.path()).unwrap()[1].0;
    std::fs::remove_file(&segs[0]).unwrap();
    let err = open_err(dir.path(), 0);
    assert!(
        err.contains(&format!(
            "missing the changes with sequence numbers 1 to {}",
            second_first - 1
        )),
        "{err}"
    );
    // A snapshot that folded them in makes the same directory fine.
    let (j, _) = Journal::open(
        dir.path(),
        second_first - 1,
        JournalOptions::default(),
        Box::new(|_: &[Entry]| {}),
    )
    .unwrap();
    j.close();

    // A middle segment deleted.
    let dir = tempfile::tempdir().unwrap();
    let segs = segmented(dir.path(), 20).await;
    let firsts: Vec<u64> = journal::segment_files(dir.path())
        .unwrap()
        .iter()
        .map(|(f, _)| *f)
        .collect();
    std::fs::remove_file(&segs[1]).unwrap();
    let err = open_err(dir.path(), 0);
    assert!(
        err.contains(&format!(
            "sequence numbers {} to {}",
            firsts[1],
            firsts[2] - 1
        )),
        "{err}"
    );

    // The newest deleted: only HEAD knows.
    let dir = tempfile::tempdir().unwrap();
    let segs = segmented(dir.path(), 20).await;
    let newest = *firsts.last().unwrap();
    std::fs::remove_file(segs.last().unwrap()).unwrap();
    let err = open_err(dir.path(), 0);
    assert!(
        err.contains(&format!(
            "HEAD names the segment starting at {newest} as the newest"
        )),
        "{err}"
    );
}

#[tokio::test]
async fn a_segment_creation_torn_after_its_length_reached_the_disk_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let segs = segmented(dir.path(), 6).await;
    let next = journal::segment_files(dir.path())
        .unwrap()
        .last()
        .unwrap()
        .0
        + 100;
    // Header-sized, all zeros, newer than what HEAD names: a creation cut by a crash.
    let torn = dir.path().join(krr::journal::format::segment_name(next));
    std::fs::write(&torn, [0u8; 24]).unwrap();
    let (j, scan) = Journal::open(
        dir.path(),
        0,
        JournalOptions::default(),
        Box::new(|_: &[Entry]| {}),
    )
    .unwrap();
    j.close();
    assert_eq!(scan.entries.len(), 6);
    assert!(!torn.exists());
    assert_eq!(
        segs.len(),
        journal::segment_files(dir.path()).unwrap().len()
    );
}

#[test]
fn folding_reads_only_what_is_durable_and_complete() {
    use krr::journal::format::{GroupPos, encode_grouped, segment_header, segment_name};
    let dir = tempfile::tempdir().unwrap();
    let people = ids(8);
    // A complete group of two, then the first two records of a group of three: its write
    // is under way (or failed half way), so a crash or a cut may still take it back.
    let mut bytes = segment_header(1).to_vec();
    for (seq, index, len) in [(1u64, 0, 2), (2, 1, 2), (3, 0, 3), (4, 1, 3)] {
        let e = Entry {
            seq,
            at: krr::model::time::Timestamp(1_795_176_000),
            change: Change::SetSpraak {
                id: people[seq as usize],
                spraak: Spraak::En,
            },
        };
        encode_grouped(&e, GroupPos { index, len }, &mut bytes);
    }
    std::fs::write(dir.path().join(segment_name(1)), &bytes).unwrap();
    let durable = journal::scan(dir.path(), Mode::Durable).unwrap();
    let seqs: Vec<u64> = durable.entries.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [1, 2]);
    // Recovery and the service's reads still see every record that is there.
    assert_eq!(
        journal::scan(dir.path(), Mode::ReadOnly)
            .unwrap()
            .entries
            .len(),
        4
    );
}
