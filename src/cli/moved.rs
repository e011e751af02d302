//! `krr loadtest` and `krr peers` moved to their own binary, `krr-bench`, so that the
//! service links no Redis client and no histogram library. The old names stay, hidden, to
//! say where they went.

use std::process::ExitCode;

/// Whatever was given after the old command name (`--help` included: it says where the
/// tool went too).
#[derive(clap::Args)]
#[command(disable_help_flag = true)]
pub struct Moved {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    args: Vec<String>,
}

/// Says where `command` went; exit 2, as for any usage error.
pub fn explain(command: &str) -> ExitCode {
    eprintln!(
        "error: `krr {command}` moved to the krr-bench tool: \
         `cargo run --release -p krr-bench -- {command} …` (or target/release/krr-bench {command} …)"
    );
    ExitCode::from(2)
}
