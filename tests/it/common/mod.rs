//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod http;

use std::path::{Path, PathBuf};

use krr::dev::generate::{GenerateOptions, generate_file};
use krr::model::time::Timestamp;
use krr::snapshot::{BuildOptions, build_file};

/// The keys of a person object, in the order of `api.md`.
pub const ORDER: [&str; 11] = [
    "personidentifikator",
    "reservasjon",
    "reservasjonstidspunkt",
    "reservasjon_oppdatert",
    "status",
    "varslingsstatus",
    "kontaktinformasjon",
    "digital_post",
    "sertifikat",
    "spraak",
    "spraak_oppdatert",
];

/// Build time used by the tests: 2026-11-20T12:00:00Z (fixed, so the 18-month rule gives
/// the same answer on any day).
pub const BUILD_TIME: Timestamp = Timestamp(1_795_176_000);

pub fn build_opts() -> BuildOptions {
    BuildOptions {
        build_time: BUILD_TIME,
        journal: None,
        progress: false,
        shrink: None,
        previous: None,
    }
}

/// Generates `count` persons with `seed` into `dir`, builds a snapshot; returns both paths.
pub fn register(dir: &Path, name: &str, count: u64, seed: u64) -> (PathBuf, PathBuf) {
    let jsonl = dir.join(format!("{name}.jsonl"));
    let krr = dir.join(format!("{name}.krr"));
    generate_file(
        &jsonl,
        &GenerateOptions {
            count,
            seed,
            as_of: krr::dev::generate::DEFAULT_AS_OF,
            progress: false,
        },
    )
    .unwrap();
    build_file(&jsonl, &krr, &build_opts()).unwrap();
    (jsonl, krr)
}

/// The source lines as JSON values.
pub fn source_values(jsonl: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(jsonl)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A new file in `target/tmp/test-logs/` for the logs of this test binary (or of a server
/// it runs). CI scans the directory after the whole test run for 11-digit numbers
/// (`tools/scan-logs`): no personal number may appear in any log, at any level.
pub fn log_file(name: &str) -> std::fs::File {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("test-logs");
    std::fs::create_dir_all(&dir).unwrap();
    let exe = std::env::current_exe().unwrap();
    let exe = exe.file_stem().unwrap().to_string_lossy();
    let exe = exe.split('-').next().unwrap_or("test").to_string();
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let pid = std::process::id();
    std::fs::File::create(dir.join(format!("{exe}-{name}-{pid}-{n}.log"))).unwrap()
}

/// Sends this process's logs (krr at trace level) to a [`log_file`]; once per process.
pub fn init_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let file = log_file("in-process");
        let _ = tracing_subscriber::fmt()
            .json()
            .with_env_filter(tracing_subscriber::EnvFilter::new("krr=trace,info"))
            .with_writer(std::sync::Mutex::new(file))
            .try_init();
    });
}

/// Object keys in order.
pub fn keys(v: &serde_json::Value) -> Vec<String> {
    v.as_object().unwrap().keys().cloned().collect()
}
