//! `krr`: the command line. Parses arguments and calls the library; nothing else.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::{Parser, Subcommand};

use krr::fnr::PersonId;
use krr::render::Groups;
use krr::snapshot::{self, BuildOptions, Header, Snapshot};
use krr::time::Timestamp;

#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(name = "krr", version, about = "The KRR lookup service and its tools")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a deterministic synthetic register as JSONL (Tenor-style ids).
    Generate {
        /// Number of persons.
        #[arg(long, env = "KRR_COUNT")]
        count: u64,
        /// Seed: the same seed and count give the same file.
        #[arg(long, env = "KRR_SEED", default_value_t = 1)]
        seed: u64,
        /// Output file.
        #[arg(long, env = "KRR_OUT")]
        out: PathBuf,
        /// Reference time the ages of contact data count back from (RFC 3339).
        #[arg(long, env = "KRR_AS_OF", value_parser = parse_time)]
        as_of: Option<Timestamp>,
    },
    /// Build and inspect snapshot files.
    Snapshot {
        #[command(subcommand)]
        command: SnapshotCommand,
    },
}

#[derive(Subcommand)]
enum SnapshotCommand {
    /// Build a snapshot from a JSONL export; bad lines are reported with line numbers.
    Build {
        /// The export (JSON Lines, one person per line).
        #[arg(long, env = "KRR_INPUT")]
        input: PathBuf,
        /// Journal directory to fold in.
        #[arg(long, env = "KRR_JOURNAL")]
        journal: Option<PathBuf>,
        /// The snapshot file to write (atomically).
        #[arg(long, env = "KRR_OUT")]
        out: PathBuf,
        /// Build time (RFC 3339), the instant the 18-month rule is evaluated at; default now.
        #[arg(long, env = "KRR_BUILD_TIME", value_parser = parse_time)]
        build_time: Option<Timestamp>,
    },
    /// Print a snapshot's header and verify its checksum.
    Inspect {
        /// The snapshot file.
        path: PathBuf,
        /// Also print this person's full JSON (every group).
        #[arg(long)]
        get: Option<String>,
    },
}

fn parse_time(s: &str) -> Result<Timestamp, String> {
    Timestamp::parse(s).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let tty = std::io::stderr().is_terminal();
    match cli.command {
        Command::Generate {
            count,
            seed,
            out,
            as_of,
        } => {
            let started = Instant::now();
            let opts = krr::generate::GenerateOptions {
                count,
                seed,
                as_of: as_of.unwrap_or(krr::generate::DEFAULT_AS_OF),
                progress: tty,
            };
            krr::generate::generate_file(&out, &opts)?;
            eprintln!(
                "wrote {count} persons to {} in {:.2} s",
                out.display(),
                started.elapsed().as_secs_f64()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Snapshot {
            command:
                SnapshotCommand::Build {
                    input,
                    journal,
                    out,
                    build_time,
                },
        } => {
            let started = Instant::now();
            let mut opts = BuildOptions::now();
            if let Some(t) = build_time {
                opts.build_time = t;
            }
            opts.journal = journal;
            opts.progress = tty;
            let report = snapshot::build_file(&input, &out, &opts)?;
            if let Some(note) = &report.journal_note {
                eprintln!("journal: {note}");
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
            let t = &report.timings;
            eprintln!(
                "phases: parse {:.2} s, assemble {:.2} s, write+fsync {:.2} s",
                t.parse.as_secs_f64(),
                t.assemble.as_secs_f64(),
                t.write.as_secs_f64()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Snapshot {
            command: SnapshotCommand::Inspect { path, get },
        } => inspect(path, get),
    }
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
    let mut head = [0u8; snapshot::format::HEADER_LEN];
    let header = std::fs::File::open(&path)
        .and_then(|f| std::os::unix::fs::FileExt::read_exact_at(&f, &mut head, 0))
        .map_err(anyhow::Error::from)
        .and_then(|()| Header::decode(&head).map_err(anyhow::Error::from));
    if let Ok(h) = &header {
        print_header(&mut out, h)?;
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
                if !krr::lookup::write_person(&snap, id, Groups::ALL, &mut buf) {
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
        snapshot::format::HEADER_LEN as u64 + h.body_len,
        snapshot::format::HEADER_LEN,
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
    writeln!(out, "max probe     {}", h.max_probe)?;
    Ok(())
}
