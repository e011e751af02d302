//! Content coding of a real answer: 1000 random persons of the bench register, all groups,
//! rendered as the service renders them. The implementations compared are the ones the
//! README's "Compressed answers" table chose between: krr's own gzip encoder
//! (`krr::http::coding::deflate`), libdeflate's level 1 and 2, miniz_oxide (flate2's
//! default) at level 1, and zstd's levels -1, 1 and 3. Each reports its size once on stderr
//! (`<name>: N bytes, P % of identity`); criterion reports the time and persons/s.
//!
//! `cargo bench --bench coding` (the register size from `KRR_BENCH_SIZES`, default 1M and
//! 5.5M).

// Test and bench code: a panic is the run failing, with its line; casts are on small
// counts and measured values.
#![allow(
    clippy::unwrap_used,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

mod common;

use std::io::Write;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use krr::model::Groups;
use krr::model::fnr::PersonId;
use krr::snapshot::Snapshot;
use krr::store::lookup::{BatchOptions, write_personer};
use krr::store::overlay::Overlay;

const BATCH: usize = 1000;

/// One implementation: answer bytes in, coded bytes out.
type Coder = Box<dyn FnMut(&[u8]) -> Vec<u8>>;

fn own_gzip(body: &[u8]) -> Vec<u8> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(krr::http::coding::gzip(body))
}

fn libdeflate(level: i32) -> impl FnMut(&[u8]) -> Vec<u8> {
    let mut c = libdeflater::Compressor::new(libdeflater::CompressionLvl::new(level).unwrap());
    move |body| {
        let mut out = vec![0; c.gzip_compress_bound(body.len())];
        let n = c.gzip_compress(body, &mut out).unwrap();
        out.truncate(n);
        out
    }
}

fn miniz(body: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(1));
    e.write_all(body).unwrap();
    e.finish().unwrap()
}

fn zstd_level(level: i32) -> impl FnMut(&[u8]) -> Vec<u8> {
    let mut c = zstd::bulk::Compressor::new(level).unwrap();
    move |body| c.compress(body).unwrap()
}

fn own_zstd(body: &[u8]) -> Vec<u8> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(krr::http::coding::zstd(body))
}

fn coding(c: &mut Criterion) {
    for n in common::sizes() {
        let snap = Snapshot::open(&common::snapshot(n)).unwrap();
        let ids: Vec<PersonId> = snap.ids().collect();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let batch: Vec<PersonId> = (0..BATCH)
            .map(|_| ids[rng.random_range(0..ids.len())])
            .collect();
        let mut body = Vec::with_capacity(4 << 20);
        write_personer(
            &snap,
            &Overlay::new(),
            &batch,
            BatchOptions::v1(Groups::ALL),
            &mut body,
        );
        let mut g = c.benchmark_group(format!("coding_1000_all_groups/{}", common::label(n)));
        g.throughput(Throughput::Elements(BATCH as u64));
        let mut coders: Vec<(&str, Coder)> = vec![
            ("gzip-krr", Box::new(own_gzip)),
            ("gzip-libdeflate-1", Box::new(libdeflate(1))),
            ("gzip-libdeflate-2", Box::new(libdeflate(2))),
            ("gzip-miniz-1", Box::new(miniz)),
            ("zstd-krr-streamed-1", Box::new(own_zstd)),
            ("zstd-bulk--1", Box::new(zstd_level(-1))),
            ("zstd-bulk-1", Box::new(zstd_level(1))),
            ("zstd-bulk-3", Box::new(zstd_level(3))),
        ];
        eprintln!("identity: {} bytes", body.len());
        for (name, f) in &mut coders {
            let size = f(&body).len();
            eprintln!(
                "{name}: {size} bytes, {:.1} % of identity, {:.0} bytes/person",
                size as f64 * 100.0 / body.len() as f64,
                size as f64 / BATCH as f64
            );
            g.bench_function(*name, |b| b.iter(|| f(&body).len()));
        }
        g.finish();
    }
}

criterion_group!(benches, coding);
criterion_main!(benches);
