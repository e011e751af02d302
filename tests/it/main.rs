//! The integration tests, one module per area, in one test binary (one link of the crate
//! instead of one per area). `tests/metrics.rs` stays a binary of its own: it reads the
//! process-wide metrics recorder and wants exact values, which other tests running in the
//! same process would change.
//!
//! Run one area with `cargo test --test it <area>::`, e.g. `cargo test --test it journal::`.

// Test and bench code: a panic is the run failing, with its line; casts are on small
// counts and measured values.
#![allow(
    clippy::unwrap_used,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

mod common;

mod citizen;
mod cli;
mod crash;
mod fair_use;
mod feed;
mod fixture;
mod fuzz;
mod hostile;
mod http;
mod journal;
mod journal_faults;
mod nightly;
mod ops;
mod replicas;
mod replicas_quota;
mod shutdown;
mod snapshot;
mod store;
mod wire;
