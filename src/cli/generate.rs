//! `krr generate`: the deterministic synthetic register.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use krr::dev::generate::{DEFAULT_AS_OF, GenerateOptions, generate_file};
use krr::model::time::Timestamp;

#[derive(clap::Args)]
pub struct GenerateArgs {
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
    #[arg(long, env = "KRR_AS_OF", value_parser = super::parse_time)]
    as_of: Option<Timestamp>,
}

pub fn run(a: GenerateArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let opts = GenerateOptions {
        count: a.count,
        seed: a.seed,
        as_of: a.as_of.unwrap_or(DEFAULT_AS_OF),
        progress: std::io::stderr().is_terminal(),
    };
    generate_file(&a.out, &opts)?;
    eprintln!(
        "wrote {} persons to {} in {:.2} s",
        a.count,
        a.out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}
