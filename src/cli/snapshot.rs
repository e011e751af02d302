//! `krr snapshot build / publish / inspect`.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::Subcommand;

use krr::model::Groups;
use krr::model::fnr::PersonId;
use krr::model::time::Timestamp;
use krr::snapshot::format::HEADER_LEN;
use krr::snapshot::remote::Remote;
use krr::snapshot::{BuildOptions, Header, JournalInput, Snapshot, build_file};
use krr::store::overlay::Overlay;

#[derive(Subcommand)]
pub enum SnapshotCommand {
    /// Build a snapshot from a JSONL export; bad lines are reported with line numbers.
    Build {
        /// The export (JSON Lines, one person per line).
        #[arg(long, env = "KRR_INPUT")]
        input: PathBuf,
        /// Journal directory to fold in.
        #[arg(long, env = "KRR_JOURNAL", conflicts_with = "journal_url")]
        journal: Option<PathBuf>,
        /// Journal in PostgreSQL to fold in (`postgres://…`), read as one consistent prefix.
        #[arg(long, env = "KRR_JOURNAL_URL")]
        journal_url: Option<String>,
        /// The snapshot file to write (atomically).
        #[arg(long, env = "KRR_OUT")]
        out: PathBuf,
        /// Build time (RFC 3339), the instant the 18-month rule is evaluated at; default now.
        #[arg(long, env = "KRR_BUILD_TIME", value_parser = super::parse_time)]
        build_time: Option<Timestamp>,
        /// The snapshot this one follows (the one served): the persons whose answers differ
        /// from it become the change feed's changes (without it every person is one), and a
        /// result with more than --max-shrink percent fewer persons is refused (an empty
        /// or cut export).
        #[arg(long, env = "KRR_PREVIOUS")]
        previous: Option<PathBuf>,
        /// With --previous: most percent fewer persons the new snapshot may have.
        #[arg(long, env = "KRR_MAX_SHRINK", default_value_t = krr::snapshot::DEFAULT_MAX_SHRINK_PERCENT)]
        max_shrink: f64,
        /// With --previous: build even when more persons are lost than --max-shrink allows.
        #[arg(long, requires = "previous")]
        allow_shrink: bool,
    },
    /// Upload a snapshot to object storage, then point `CURRENT` at it (replicas following
    /// the prefix with --snapshot-url fetch and serve it; never a half-uploaded one).
    Publish {
        /// The snapshot file (verified before it is uploaded).
        path: PathBuf,
        /// `s3://bucket/prefix` (credentials, region and endpoint from AWS_* variables).
        #[arg(long, env = "KRR_SNAPSHOT_URL")]
        to: String,
    },
    /// Print a snapshot's header and verify its checksum.
    #[command(
        after_help = "Exit status: 0 the snapshot verifies (and --get's person is in it); \
        1 the command could not run (e.g. --get is not 11 digits); 2 the snapshot is refused or \
        unreadable (the reason is printed after `verdict`); 3 --get's person is not in it."
    )]
    Inspect {
        /// The snapshot file.
        path: PathBuf,
        /// Also print this person's full JSON (every group).
        #[arg(long)]
        get: Option<String>,
    },
}

pub fn run(command: SnapshotCommand) -> anyhow::Result<ExitCode> {
    match command {
        SnapshotCommand::Build {
            input,
            journal,
            journal_url,
            out,
            build_time,
            previous,
            max_shrink,
            allow_shrink,
        } => {
            let shrink = match &previous {
                Some(p) if !allow_shrink => Some(krr::snapshot::ShrinkGuard {
                    previous_records: krr::snapshot::Header::read(p)
                        .with_context(|| format!("--previous {}", p.display()))?
                        .counts
                        .records,
                    max_percent: max_shrink,
                }),
                _ => None,
            };
            build(
                input,
                journal,
                journal_url,
                out,
                build_time,
                shrink,
                previous,
            )
        }
        SnapshotCommand::Publish { path, to } => publish(path, to),
        SnapshotCommand::Inspect { path, get } => inspect(path, get),
    }
}

fn build(
    input: PathBuf,
    journal: Option<PathBuf>,
    journal_url: Option<String>,
    out: PathBuf,
    build_time: Option<Timestamp>,
    shrink: Option<krr::snapshot::ShrinkGuard>,
    previous: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let mut opts = BuildOptions::now();
    opts.shrink = shrink;
    opts.previous = previous;
    if let Some(t) = build_time {
        opts.build_time = t;
    }
    opts.journal = match (journal, journal_url) {
        (Some(dir), _) => Some(JournalInput::Dir(dir)),
        (None, Some(url)) => {
            let (entries, last_seq) =
                super::runtime()?.block_on(krr::journal::pg::read_all(&url))?;
            Some(JournalInput::Read { entries, last_seq })
        }
        (None, None) => None,
    };
    opts.progress = std::io::stderr().is_terminal();
    let report = build_file(&input, &out, &opts)?;
    if let Some(j) = &report.journal {
        eprintln!(
            "journal: {} records for {} persons folded up to sequence {}: {} applied, \
             {} kept the export's newer change, {} not in the export or SLETTET",
            j.records, j.persons, j.folded_seq, j.applied, j.superseded, j.not_applicable
        );
        if let Some(cut) = &j.torn_tail {
            eprintln!(
                "journal: {} ends in an unacknowledged torn record ({}; {} bytes at byte {}), not folded",
                cut.file.display(),
                cut.reason,
                cut.dropped_bytes,
                cut.offset
            );
        }
    }
    let h = &report.header;
    eprintln!(
        "built {} ({} persons, {} lines, {} → {} bytes) in {:.2} s, id {}",
        out.display(),
        h.counts.records,
        report.lines,
        report.input_bytes,
        report.output_bytes,
        started.elapsed().as_secs_f64(),
        h.id()
    );
    let f = &report.feed;
    match f.previous {
        Some(prev) => eprintln!(
            "change feed: against {prev:016x}: {} new, {} changed, {} gone, {} renumbered \
             (the previous snapshot's changes had no ids in the journal given), {} kept their ids",
            f.new, f.changed, f.gone, f.renumbered, f.kept
        ),
        None => eprintln!(
            "change feed: a first build (no --previous): all {} persons are changes",
            f.own
        ),
    }
    eprintln!(
        "shared contact details (*_duplisert JA): {} e-mail addresses, {} mobile numbers",
        f.shared_emails, f.shared_mobiles
    );
    let t = &report.timings;
    eprintln!(
        "phases: parse {:.2} s, compare {:.2} s, assemble {:.2} s, write+fsync {:.2} s",
        t.parse.as_secs_f64(),
        t.compare.as_secs_f64(),
        t.assemble.as_secs_f64(),
        t.write.as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

fn publish(path: PathBuf, to: String) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let remote = Remote::new(&to)?;
    let p = super::runtime()?.block_on(remote.publish(&path))?;
    eprintln!(
        "published {} ({} bytes) as {} under {to}; CURRENT points to it ({:.1} s)",
        p.id,
        p.size,
        p.key,
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

fn inspect(path: PathBuf, get: Option<String>) -> anyhow::Result<ExitCode> {
    let id = match get.as_deref() {
        None => None,
        Some(s) => Some(
            PersonId::parse(s.as_bytes())
                .context("--get must be a personal number of 11 digits")?,
        ),
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "snapshot      {}", path.display())?;
    // Show the header even when the body turns out corrupt.
    if let Ok(h) = Header::read(&path) {
        print_header(&mut out, &h)?;
    }
    let started = Instant::now();
    match Snapshot::open(&path) {
        Ok(snap) => {
            writeln!(
                out,
                "verdict       OK: checksum and layout verified in {:.3} s",
                started.elapsed().as_secs_f64()
            )?;
            if let Some(id) = id {
                let mut buf = Vec::new();
                let none = Overlay::new();
                if !krr::store::lookup::write_person(&snap, &none, id, Groups::ALL, &mut buf) {
                    eprintln!("that personal number is not in this snapshot");
                    return Ok(ExitCode::from(3));
                }
                buf.push(b'\n');
                out.write_all(&buf)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            writeln!(out, "verdict       REFUSED: {e}")?;
            Ok(ExitCode::from(2))
        }
    }
}

fn print_header(out: &mut impl Write, h: &Header) -> std::io::Result<()> {
    let c = &h.counts;
    writeln!(out, "id            {}", h.id())?;
    writeln!(out, "format        version {}", h.version)?;
    writeln!(out, "built         {}", h.build_time.to_oslo_string())?;
    writeln!(out, "journal seq   {}", h.journal_seq)?;
    writeln!(
        out,
        "size          {} bytes (header {}, body {})",
        HEADER_LEN as u64 + h.body_len,
        HEADER_LEN,
        h.body_len
    )?;
    writeln!(
        out,
        "persons       {} (AKTIV {}, SLETTET {})",
        c.records, c.aktiv, c.slettet
    )?;
    writeln!(out, "reserved      {}", c.reservert)?;
    writeln!(out, "kan varsles   {}", c.kan_varsles)?;
    writeln!(out, "digital post  {}", c.digital_post)?;
    writeln!(out, "certificates  {}", c.certs)?;
    let f = &h.feed;
    let previous = match f.previous {
        0 => "none (a first build)".to_string(),
        p => format!("{p:016x}"),
    };
    writeln!(
        out,
        "change feed   {} entries, {} of them this snapshot's own changes; compared with {previous}",
        f.entries, f.pending
    )?;
    writeln!(out, "max probe     {}", h.max_probe)?;
    Ok(())
}
