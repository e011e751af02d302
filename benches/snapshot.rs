//! Snapshot build (export → file) and open (map + verify + prefault).

// Test and bench code: a panic is the run failing, with its line; casts are on small
// counts and measured values.
#![allow(
    clippy::unwrap_used,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

mod common;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

use krr::snapshot::{BuildOptions, Snapshot, build_file};

fn open(c: &mut Criterion) {
    let mut g = c.benchmark_group("open_verify_prefault");
    g.sample_size(10);
    for n in common::sizes() {
        let path = common::snapshot(n);
        let len = std::fs::metadata(&path).unwrap().len();
        g.throughput(Throughput::Bytes(len));
        g.bench_function(common::label(n), |b| {
            b.iter(|| Snapshot::open(&path).unwrap().len())
        });
    }
    g.finish();
}

fn build(c: &mut Criterion) {
    let mut g = c.benchmark_group("build");
    g.sample_size(10);
    // Build time grows linearly; the smallest configured size keeps this bench short.
    let n = common::sizes()[0];
    let input = common::export(n);
    let out = input.with_extension("bench.krr");
    g.throughput(Throughput::Elements(n));
    g.bench_function(common::label(n), |b| {
        b.iter(|| {
            build_file(&input, &out, &BuildOptions::now())
                .unwrap()
                .header
                .counts
                .records
        })
    });
    let _ = std::fs::remove_file(&out);
    g.finish();
}

criterion_group!(benches, open, build);
criterion_main!(benches);
