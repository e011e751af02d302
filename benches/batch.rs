//! A batch of 1000 random ids, all groups: from the pre-rendered snapshot (what the service
//! does) against rendering the same persons from in-memory structs at request time.

// Test and bench code: a panic is the run failing, with its line; casts are on small
// counts and measured values.
#![allow(
    clippy::unwrap_used,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

mod common;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use krr::model::Groups;
use krr::model::Person;
use krr::model::fnr::PersonId;
use krr::model::time::Timestamp;
use krr::render::write_person;
use krr::snapshot::Snapshot;
use krr::store::lookup::{BatchOptions, write_personer};
use krr::store::overlay::Overlay;

const BATCH: usize = 1000;

fn draw<T: Copy>(pool: &[T], rng: &mut ChaCha8Rng) -> Vec<T> {
    (0..BATCH)
        .map(|_| pool[rng.random_range(0..pool.len())])
        .collect()
}

fn batch(c: &mut Criterion) {
    let mut g = c.benchmark_group("batch_1000_all_groups");
    g.throughput(Throughput::Elements(BATCH as u64));
    for n in common::sizes() {
        let snap = Snapshot::open(&common::snapshot(n)).unwrap();
        let ids: Vec<PersonId> = snap.ids().collect();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut out = Vec::with_capacity(4 << 20);
        let empty = Overlay::new();
        // A new draw of ids across the whole snapshot for every iteration (drawn outside
        // the timed part).
        g.bench_function(format!("prerendered/{}", common::label(n)), |b| {
            b.iter_batched_ref(
                || draw(&ids, &mut rng),
                |batch| {
                    out.clear();
                    write_personer(
                        &snap,
                        &empty,
                        batch,
                        BatchOptions::v1(Groups::ALL),
                        &mut out,
                    );
                    out.len()
                },
                BatchSize::SmallInput,
            )
        });
        // The same with 100,000 changed persons in the overlay (a busy day of PATCHes):
        // what consulting the dashmap costs every found id.
        g.bench_function(
            format!("prerendered_overlay_100k/{}", common::label(n)),
            |b| {
                let overlay = Overlay::new();
                for (k, &id) in ids.iter().step_by((ids.len() / 100_000).max(1)).enumerate() {
                    overlay.apply(&krr::journal::Entry {
                        seq: k as u64 + 1,
                        at: krr::model::time::Timestamp(1_790_000_000),
                        change: krr::journal::Change::SetSpraak {
                            id,
                            spraak: krr::model::Spraak::En,
                        },
                    });
                }
                b.iter_batched_ref(
                    || draw(&ids, &mut rng),
                    |batch| {
                        out.clear();
                        write_personer(
                            &snap,
                            &overlay,
                            batch,
                            BatchOptions::v1(Groups::ALL),
                            &mut out,
                        );
                        out.len()
                    },
                    BatchSize::SmallInput,
                )
            },
        );
    }

    // The alternative: persons held as structs, rendered (timestamps converted to Oslo
    // time) per request. No index lookup is timed here, so this is a lower bound for it.
    let n = common::sizes()[0];
    g.bench_function(
        format!("render_at_request_time/{}", common::label(n)),
        |b| {
            // Set up inside the closure, so a filter that skips this bench skips the setup.
            let text = std::fs::read_to_string(common::export(n)).unwrap();
            let mut parser = krr::snapshot::source::LineParser::new();
            let persons: Vec<Person> = text
                .lines()
                .map(|l| parser.parse(l.as_bytes()).unwrap())
                .collect();
            drop(text);
            let idx: Vec<usize> = (0..persons.len()).collect();
            let now = Timestamp(chrono::Utc::now().timestamp());
            let mut rng = ChaCha8Rng::seed_from_u64(2);
            let mut out = Vec::with_capacity(4 << 20);
            b.iter_batched_ref(
                || draw(&idx, &mut rng),
                |batch| {
                    out.clear();
                    out.extend_from_slice(b"{\"personer\":[");
                    for (k, &i) in batch.iter().enumerate() {
                        if k > 0 {
                            out.push(b',');
                        }
                        let p = &persons[i];
                        write_person(p, p.varslingsstatus_at(now), Groups::ALL, &mut out);
                    }
                    out.extend_from_slice(b"]}");
                    out.len()
                },
                BatchSize::SmallInput,
            )
        },
    );
    g.finish();
}

/// One page of the change feed (1000 persons, all groups) from a random cursor: the
/// index walk and the merge with the overlay, then the same rendering as `/personer`.
fn feed_page(c: &mut Criterion) {
    let mut g = c.benchmark_group("feed_page_1000_all_groups");
    g.throughput(Throughput::Elements(BATCH as u64));
    for n in common::sizes() {
        let snap = Snapshot::open(&common::snapshot(n)).unwrap();
        // As if the journal had reserved ids 1.. for this snapshot's changes.
        snap.set_feed_base(1);
        let len = snap.feed_len() as u64;
        let empty = Overlay::new();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut out = Vec::with_capacity(4 << 20);
        g.bench_function(format!("snapshot_index/{}", common::label(n)), |b| {
            b.iter_batched_ref(
                || rng.random_range(0..len),
                |fra| {
                    let page =
                        krr::store::feed::page(&snap, &empty, u64::MAX, *fra, BATCH).unwrap();
                    out.clear();
                    krr::store::lookup::write_entries(
                        &snap,
                        &empty,
                        &page.ids,
                        BatchOptions::v1(Groups::ALL),
                        &mut out,
                    );
                    out.len()
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, batch, feed_page);
criterion_main!(benches);
