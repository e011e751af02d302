//! krr: the lookup service of Norway's contact and reservation register (KRR), rebuilt for
//! speed and trust.
//!
//! # Layout
//!
//! The modules follow the data's path through the service:
//!
//! ```text
//! register export (JSONL) ─► source ─► model ─► render ─► snapshot::build ─► *.krr file
//!                                                                              │ mmap
//!                          lookup ◄─ store (ArcSwap, hot swap) ◄─ snapshot::load
//!                             ▲
//!   PATCH ─► journal (fdatasync, group commit) ─► overlay ─┘     journal ─► snapshot::build
//! ```
//!
//! - [`fnr`]: personal numbers: parsing to a compact key, control digits, kinds.
//! - [`time`]: timestamps as instants, written in Europe/Oslo time.
//! - [`model`]: the person with every group of the API, and the notification rule.
//! - [`source`]: one JSON line → a validated person (simd-json), with precise reasons.
//! - [`render`]: person → JSON segments in the API's key order, never `null`.
//! - [`snapshot`]: the file format, the builder and the zero-copy loader.
//! - [`store`]: the hot-swapped handle the service reads through, with the overlay.
//! - [`journal`]: the durable PATCH journal (group commit, CRC32C frames, recovery).
//! - [`overlay`]: acknowledged changes not yet in a snapshot, consulted before it.
//! - [`lookup`]: ids + groups → the `{"personer":[…]}` answer in a reused buffer.
//! - [`auth`]: OAuth2 access tokens: JWKS, verification, scopes, test-token minting.
//! - [`http`]: the public API over hyper (routes, errors, `application/jose`).
//! - [`serve`]: `krr serve` and `krr demo`: configuration, start-up, the quick start.
//! - [`generate`]: the deterministic synthetic register.
//! - [`loadtest`]: `krr loadtest`, the HTTP load generator with HdrHistogram latencies.
//! - [`reload`]: the one reload path (SIGHUP, admin, directory watcher) and the watcher.
//! - [`metrics`]: Prometheus metrics of the admin listener.
//!
//! `ARCHITECTURE.md` has the invariants; `docs/format.md` the bytes of a snapshot.

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod auth;
pub mod fnr;
pub mod generate;
pub mod http;
pub mod journal;
pub mod loadtest;
pub mod lookup;
pub mod metrics;
pub mod model;
pub mod overlay;
pub mod peers;
pub mod reload;
pub mod remote;
pub mod render;
pub mod serve;
pub mod snapshot;
pub mod source;
pub mod store;
pub mod time;
