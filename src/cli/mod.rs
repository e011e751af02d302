//! The `krr` command line: one file per command family. Each parses its flags with clap
//! and calls the library; errors are `anyhow` here and typed below.
//!
//! | command | file |
//! |---|---|
//! | `krr serve` | [`serve`] |
//! | `krr demo` | [`demo`] |
//! | `krr generate` | [`generate`] |
//! | `krr snapshot build / publish / inspect` | [`snapshot`] |
//! | `krr journal inspect / init / compact` | [`journal`] |
//! | `krr token` | [`token`] |
//! | `krr loadtest`, `krr peers` (moved to `krr-bench`) | [`moved`] |
//! | `--log-format`, `KRR_LOG` | [`logging`] |

mod demo;
mod generate;
mod journal;
mod keys;
mod logging;
mod moved;
mod serve;
mod snapshot;
mod token;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use krr::model::time::Timestamp;

pub use logging::LogFormat;

#[derive(Parser)]
#[command(name = "krr", version, about = "The KRR lookup service and its tools")]
pub struct Cli {
    /// Log format on stderr: `text` (human-readable) or `json` (one object a line).
    #[arg(
        long,
        global = true,
        env = "KRR_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a deterministic synthetic register as JSONL (Tenor-style ids).
    Generate(generate::GenerateArgs),
    /// Build and inspect snapshot files.
    Snapshot {
        #[command(subcommand)]
        command: snapshot::SnapshotCommand,
    },
    /// Serve the API.
    Serve(Box<serve::ServeArgs>),
    /// Inspect and compact the PATCH journal.
    Journal {
        #[command(subcommand)]
        command: journal::JournalCommand,
    },
    /// Mint a signed test token (development and load tests); prints the token alone.
    Token(token::TokenArgs),
    /// Make the keys a service of your own needs (token issuer with its JWKS, response
    /// signing).
    Keys {
        #[command(subcommand)]
        command: keys::KeysCommand,
    },
    /// Moved: `krr-bench loadtest` (tools/krr-bench) drives a running service.
    #[command(hide = true)]
    Loadtest(moved::Moved),
    /// The quick start: a synthetic register, development keys, and the service trusting
    /// only those keys; prints a curl command that works. Reuses what exists.
    Demo(demo::DemoArgs),
    /// Moved: `krr-bench peers` (tools/krr-bench) loads and drives Redis and PostgreSQL.
    #[command(hide = true)]
    Peers(moved::Moved),
}

/// Runs one command.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Generate(args) => generate::run(args),
        Command::Snapshot { command } => snapshot::run(command),
        Command::Serve(args) => serve::run(*args, cli.log_format),
        Command::Journal { command } => journal::run(command),
        Command::Token(args) => token::run(args),
        Command::Keys { command } => keys::run(command),
        Command::Demo(args) => demo::run(args, cli.log_format),
        Command::Loadtest(_) => Ok(moved::explain("loadtest")),
        Command::Peers(_) => Ok(moved::explain("peers")),
    }
}

/// `--build-time`, `--as-of`: RFC 3339.
fn parse_time(s: &str) -> Result<Timestamp, String> {
    Timestamp::parse(s).map_err(|e| e.to_string())
}

/// A multi-threaded tokio runtime for the commands that talk to the network.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}
