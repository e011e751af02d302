//! `krr generate`: the deterministic synthetic register.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use krr::dev::generate::{
    ChangeOptions, DEFAULT_AS_OF, GenerateOptions, change_file, generate_file,
};
use krr::model::time::Timestamp;

#[derive(clap::Args)]
pub struct GenerateArgs {
    /// Number of persons (not with --changes-from).
    #[arg(long, env = "KRR_COUNT", required_unless_present = "changes_from")]
    count: Option<u64>,
    /// Write "tomorrow's export" instead: the persons of this export with --change-rate of
    /// them changed (new e-mail or mobile, reservation set or lifted, a validation, a
    /// language, deleted, gone) and a tenth of that rate of new persons, stamped --as-of.
    #[arg(long, env = "KRR_CHANGES_FROM", conflicts_with = "count")]
    changes_from: Option<PathBuf>,
    /// With --changes-from: the share of persons changed, in percent (e.g. 0.5%).
    #[arg(long, env = "KRR_CHANGE_RATE", default_value = "0.5%", value_parser = parse_percent)]
    change_rate: f64,
    /// Seed: the same seed and count give the same file.
    #[arg(long, env = "KRR_SEED", default_value_t = 1)]
    seed: u64,
    /// Output file.
    #[arg(long, env = "KRR_OUT")]
    out: PathBuf,
    /// Reference time the ages of contact data count back from (RFC 3339); with
    /// --changes-from, when the changes were made (default: a day after the default).
    #[arg(long, env = "KRR_AS_OF", value_parser = super::parse_time)]
    as_of: Option<Timestamp>,
}

fn parse_percent(s: &str) -> Result<f64, String> {
    let n: f64 = s
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("{s:?} is not a percentage (e.g. 0.5%)"))?;
    if !(0.0..=100.0).contains(&n) {
        return Err(format!("{s} is not between 0 and 100 %"));
    }
    Ok(n / 100.0)
}

pub fn run(a: GenerateArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    if let Some(from) = &a.changes_from {
        let opts = ChangeOptions {
            rate: a.change_rate,
            seed: a.seed,
            at: a.as_of.unwrap_or(Timestamp(DEFAULT_AS_OF.0 + 86_400)),
        };
        let r = change_file(from, &a.out, &opts)?;
        eprintln!(
            "wrote {} from {}: {} persons, {} changed, {} gone, {} new, in {:.2} s",
            a.out.display(),
            from.display(),
            r.persons,
            r.changed,
            r.removed,
            r.added,
            started.elapsed().as_secs_f64()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let count = a.count.unwrap_or(0);
    let opts = GenerateOptions {
        count,
        seed: a.seed,
        as_of: a.as_of.unwrap_or(DEFAULT_AS_OF),
        progress: std::io::stderr().is_terminal(),
    };
    generate_file(&a.out, &opts)?;
    eprintln!(
        "wrote {} persons to {} in {:.2} s",
        count,
        a.out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}
