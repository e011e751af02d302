//! `krr journal inspect / init / compact`, for the journal directory or the PostgreSQL
//! journal.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use krr::snapshot::Snapshot;
use krr::snapshot::dir::open_newest;

#[derive(Subcommand)]
pub enum JournalCommand {
    /// Print the segments, sequence range and tail state; read only (safe while serving).
    Inspect {
        /// The journal directory.
        #[arg(long, env = "KRR_JOURNAL_DIR", default_value = "data/journal")]
        journal_dir: PathBuf,
        /// Inspect the journal in PostgreSQL instead.
        #[arg(long, env = "KRR_JOURNAL_URL")]
        journal_url: Option<String>,
        /// Where the served snapshots are: the newest valid one's folded sequence number
        /// decides whether every change the journal must still hold is there.
        #[arg(long, env = "KRR_SNAPSHOT_DIR", default_value = "snapshots")]
        snapshot_dir: PathBuf,
    },
    /// Create the PostgreSQL journal's tables (idempotent; the service also does it).
    Init {
        /// The journal database (`postgres://user@host/db`).
        #[arg(long, env = "KRR_JOURNAL_URL")]
        journal_url: String,
    },
    /// Remove the segments (or PostgreSQL rows) wholly folded into a snapshot (never the
    /// newest segment). With PostgreSQL, run it once every replica serves that snapshot.
    Compact {
        /// The journal directory.
        #[arg(long, env = "KRR_JOURNAL_DIR", default_value = "data/journal")]
        journal_dir: PathBuf,
        /// Compact the journal in PostgreSQL instead.
        #[arg(long, env = "KRR_JOURNAL_URL")]
        journal_url: Option<String>,
        /// The snapshot whose folded sequence number decides; default: the one the service
        /// serves (its copy in --snapshot-dir/.served), else the newest valid one there.
        #[arg(long)]
        snapshot: Option<PathBuf>,
        /// Where the served snapshots are.
        #[arg(long, env = "KRR_SNAPSHOT_DIR", default_value = "snapshots")]
        snapshot_dir: PathBuf,
    },
}

pub fn run(command: JournalCommand) -> anyhow::Result<ExitCode> {
    match command {
        JournalCommand::Init { journal_url } => {
            super::runtime()?.block_on(krr::journal::pg::init(&journal_url))?;
            eprintln!("journal tables ready in the database");
            Ok(ExitCode::SUCCESS)
        }
        JournalCommand::Inspect {
            journal_url: Some(url),
            ..
        } => {
            let (entries, last_seq) =
                super::runtime()?.block_on(krr::journal::pg::read_all(&url))?;
            let mut out = std::io::stdout().lock();
            let reservations = entries
                .iter()
                .filter(|e| matches!(e.change, krr::journal::Change::Reserve { .. }))
                .count();
            writeln!(
                out,
                "records {}  first seq {}  last seq {last_seq}  (and {reservations} reservations of change ids)",
                entries.len() - reservations,
                entries.first().map_or(0, |e| e.seq)
            )?;
            Ok(ExitCode::SUCCESS)
        }
        JournalCommand::Inspect {
            journal_dir,
            snapshot_dir,
            ..
        } => {
            let scan = krr::journal::scan(&journal_dir, krr::journal::Mode::ReadOnly)?;
            let mut out = std::io::stdout().lock();
            for seg in &scan.segments {
                writeln!(
                    out,
                    "{}  first {}  records {}  bytes {}",
                    seg.path.display(),
                    seg.first_seq,
                    seg.records,
                    seg.good_len
                )?;
            }
            writeln!(
                out,
                "records {}  last seq {}",
                scan.entries.len(),
                scan.last_seq()
            )?;
            for (first, last) in &scan.gaps {
                writeln!(
                    out,
                    "gap           sequence {first} to {last} is in no segment"
                )?;
            }
            if let Some(h) = scan.head {
                writeln!(out, "head          newest segment created starts at {h}")?;
            }
            // Against the served snapshot when there is one; without, only HEAD can tell.
            let served = served_snapshot(&snapshot_dir);
            let folded = served.as_ref().map_or(u64::MAX, |s| s.header().journal_seq);
            let complete = scan.check_complete(&journal_dir, folded);
            match (&complete, &served) {
                (Ok(()), Some(s)) => writeln!(
                    out,
                    "complete      yes: every change above sequence {folded} (folded into snapshot {}) is here",
                    s.id()
                )?,
                (Ok(()), None) => writeln!(
                    out,
                    "complete      unknown: no valid snapshot in {} to check against",
                    snapshot_dir.display()
                )?,
                (Err(e), _) => writeln!(out, "complete      NO: {e}")?,
            }
            match &scan.cut {
                None => writeln!(out, "tail          clean")?,
                Some(c) => writeln!(
                    out,
                    "tail          torn: {} ({} bytes at byte {} of {}); the service cuts it at start",
                    c.reason,
                    c.dropped_bytes,
                    c.offset,
                    c.file.display()
                )?,
            }
            Ok(if complete.is_ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        JournalCommand::Compact {
            journal_dir,
            journal_url,
            snapshot,
            snapshot_dir,
        } => {
            // Verified like the service verifies it: a refused snapshot must not decide.
            let snap = match snapshot {
                Some(p) => std::sync::Arc::new(Snapshot::open(&p)?),
                None => std::sync::Arc::new(served_snapshot(&snapshot_dir).ok_or_else(|| {
                    anyhow::anyhow!(
                        "no valid snapshot in {}; nothing is compacted",
                        snapshot_dir.display()
                    )
                })?),
            };
            let folded = snap.header().journal_seq;
            if let Some(url) = journal_url {
                let rows = super::runtime()?.block_on(krr::journal::pg::compact(&url, folded))?;
                eprintln!(
                    "{rows} journal rows removed; snapshot {} holds the journal up to sequence {folded}",
                    snap.id()
                );
                return Ok(ExitCode::SUCCESS);
            }
            let removed = krr::journal::compact(&journal_dir, folded)?;
            for p in &removed {
                eprintln!("removed {}", p.display());
            }
            eprintln!(
                "{} segment{} removed; snapshot {} holds the journal up to sequence {folded}",
                removed.len(),
                if removed.len() == 1 { "" } else { "s" },
                snap.id()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The snapshot the service serves: its private copy in `.served/` when there is one (the
/// newest file of the directory may be one the service refused, e.g. for --max-shrink),
/// else the newest valid file of the directory.
fn served_snapshot(dir: &std::path::Path) -> Option<Snapshot> {
    let private = dir.join(krr::store::reload::PRIVATE_DIR);
    open_newest(&private)
        .ok()
        .flatten()
        .or_else(|| open_newest(dir).ok().flatten())
}
