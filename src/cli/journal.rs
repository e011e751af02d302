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
        /// The snapshot whose folded sequence number decides; default: the newest valid
        /// snapshot of --snapshot-dir.
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
            writeln!(
                out,
                "records {}  first seq {}  last seq {last_seq}",
                entries.len(),
                entries.first().map_or(0, |e| e.seq)
            )?;
            Ok(ExitCode::SUCCESS)
        }
        JournalCommand::Inspect { journal_dir, .. } => {
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
            Ok(ExitCode::SUCCESS)
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
                None => std::sync::Arc::new(open_newest(&snapshot_dir)?.ok_or_else(|| {
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
