//! Bench data: synthetic registers built once into `target/bench-data/` and reused.
#![allow(dead_code)]

use std::path::PathBuf;

use krr::dev::generate::{DEFAULT_AS_OF, GenerateOptions, generate_file};
use krr::snapshot::{BuildOptions, build_file};

/// Register sizes to bench, from `KRR_BENCH_SIZES` (comma-separated), default 1M and 5.5M.
pub fn sizes() -> Vec<u64> {
    std::env::var("KRR_BENCH_SIZES")
        .unwrap_or_else(|_| "1000000,5500000".into())
        .split(',')
        .map(|s| s.trim().parse().expect("KRR_BENCH_SIZES: numbers"))
        .collect()
}

pub fn label(n: u64) -> String {
    if n.is_multiple_of(1_000_000) {
        format!("{}M", n / 1_000_000)
    } else if n.is_multiple_of(100_000) {
        format!("{}.{}M", n / 1_000_000, n % 1_000_000 / 100_000)
    } else {
        n.to_string()
    }
}

fn dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-data");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The JSONL export of `n` persons (seed 1), generated on first use.
pub fn export(n: u64) -> PathBuf {
    let path = dir().join(format!("register-{n}.jsonl"));
    if !path.exists() {
        eprintln!("generating {n} persons into {} (once)", path.display());
        let tmp = path.with_extension("jsonl.tmp");
        generate_file(
            &tmp,
            &GenerateOptions {
                count: n,
                seed: 1,
                as_of: DEFAULT_AS_OF,
                progress: false,
            },
        )
        .unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    }
    path
}

/// The snapshot of `n` persons, built on first use.
pub fn snapshot(n: u64) -> PathBuf {
    let path = dir().join(format!("register-{n}.krr"));
    if !path.exists() {
        let input = export(n);
        eprintln!("building {} (once)", path.display());
        build_file(&input, &path, &BuildOptions::now()).unwrap();
    }
    path
}
