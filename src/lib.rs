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
//! ```
//!
//! - [`fnr`]: personal numbers: parsing to a compact key, control digits, kinds.
//! - [`time`]: timestamps as instants, written in Europe/Oslo time.
//! - [`model`]: the person with every group of the API, and the notification rule.
//! - [`source`]: one JSON line → a validated person (simd-json), with precise reasons.
//! - [`render`]: person → JSON segments in the API's key order, never `null`.
//! - [`snapshot`]: the file format, the builder and the zero-copy loader.
//! - [`store`]: the hot-swapped handle the service reads through.
//! - [`lookup`]: ids + groups → the `{"personer":[…]}` answer in a reused buffer.
//! - [`generate`]: the deterministic synthetic register.
//!
//! `ARCHITECTURE.md` has the invariants; `docs/format.md` the bytes of a snapshot.

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod fnr;
pub mod generate;
pub mod lookup;
pub mod model;
pub mod render;
pub mod snapshot;
pub mod source;
pub mod store;
pub mod time;
