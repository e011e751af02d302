//! Folding the journal into a build: the latest change of each person, applied to the
//! export's person unless the export's own change is newer or the person is not AKTIV.

use std::collections::HashMap;
use std::path::Path;

use xxhash_rust::xxh3::Xxh3Builder;

use crate::journal::{Change, Cut, Entry, Mode, scan};
use crate::model::time::Timestamp;
use crate::model::{Person, Spraak, Status};
use crate::snapshot::BuildError;

/// What folding a journal into a build did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JournalFold {
    /// Good records read.
    pub records: u64,
    /// Distinct persons they change (the latest change of each counts).
    pub persons: u64,
    /// Persons whose change was folded in.
    pub applied: u64,
    /// Persons whose export line has a newer `spraak_oppdatert` (the export wins).
    pub superseded: u64,
    /// Persons not in the export, or SLETTET in it (nothing to change).
    pub not_applicable: u64,
    /// The sequence number recorded in the header: everything up to it is folded.
    pub folded_seq: u64,
    /// A torn tail at the end of the journal (left in place: the service owns the file).
    pub torn_tail: Option<Cut>,
}

/// The latest journal change of each person, and the journal's reservations of change ids.
#[derive(Default)]
pub(super) struct Fold {
    latest: HashMap<u64, (u64, Timestamp, Spraak), Xxh3Builder>,
    /// Snapshot id → the first change id reserved for its changes.
    pub(super) reservations: HashMap<u64, u64>,
}

impl Fold {
    pub(super) fn read(dir: &Path) -> Result<(Fold, JournalFold), BuildError> {
        if !dir.is_dir() {
            return Err(BuildError::Io {
                path: dir.to_owned(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "journal directory does not exist",
                ),
            });
        }
        // Only what is durable: a group the service has not synced yet could still be lost
        // or cut, and its sequence numbers given to other changes this snapshot would then
        // claim to hold.
        let scan = scan(dir, Mode::Durable).map_err(|e| BuildError::Journal(e.to_string()))?;
        // After a compaction the newest segment may hold no record yet; its start still
        // says how far the sequence has come.
        let folded_seq = scan
            .last_seq()
            .max(scan.segments.last().map_or(0, |s| s.first_seq - 1));
        Ok(Fold::from_entries(&scan.entries, folded_seq, scan.cut))
    }

    /// The fold of `entries` (in sequence order), everything up to `folded_seq` counted as
    /// folded.
    pub(super) fn from_entries(
        entries: &[Entry],
        folded_seq: u64,
        torn_tail: Option<Cut>,
    ) -> (Fold, JournalFold) {
        let mut latest = HashMap::with_hasher(Xxh3Builder::new());
        let mut reservations = HashMap::new();
        for e in entries {
            match e.change {
                Change::SetSpraak { id, spraak } => {
                    latest.insert(id.key(), (e.seq, e.at, spraak));
                }
                Change::Reserve { snapshot, .. } => {
                    reservations.entry(snapshot).or_insert(e.seq);
                }
            }
        }
        let report = JournalFold {
            records: entries.len() as u64,
            persons: latest.len() as u64,
            folded_seq: folded_seq.max(entries.last().map_or(0, Entry::last_seq)),
            torn_tail,
            ..JournalFold::default()
        };
        (
            Fold {
                latest,
                reservations,
            },
            report,
        )
    }

    /// `key`'s latest journal change, as an entry.
    pub(super) fn latest(&self, key: u64) -> Option<Entry> {
        let &(seq, at, spraak) = self.latest.get(&key)?;
        Some(Entry {
            seq,
            at,
            change: Change::SetSpraak {
                id: crate::model::fnr::PersonId::from_key(key)?,
                spraak,
            },
        })
    }

    /// Applies `p`'s journal change, if it has one: 1 in the first place when folded, 1 in
    /// the second when the export's own change is newer.
    pub(super) fn apply(&self, p: &mut Person) -> (u64, u64) {
        let Some(&(_, at, spraak)) = self.latest.get(&p.id.key()) else {
            return (0, 0);
        };
        if p.status != Status::Aktiv {
            return (0, 0);
        }
        if p.spraak_oppdatert.is_some_and(|t| t > at) {
            return (0, 1);
        }
        p.spraak = Some(spraak);
        p.spraak_oppdatert = Some(at);
        (1, 0)
    }
}
