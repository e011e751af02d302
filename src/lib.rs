//! krr: the lookup service of Norway's contact and reservation register (KRR), rebuilt for
//! speed and trust.
//!
//! # Layout
//!
//! The modules follow the data's path through the service, and each imports only modules
//! listed above it here (no cycles; `tools/import-graph` checks it in CI):
//!
//! ```text
//! register export (JSONL) ─► snapshot::source ─► model ─► render ─► snapshot::build ─► *.krr
//!                                                                                 │ mmap
//!   request ─► http ─► auth ─► store::lookup ◄─ store (ArcSwap) ◄─ store::reload ◄┘
//!                        │            ▲
//!   PATCH ───────────────┴► journal ─► store::overlay          journal ─► snapshot::build
//! ```
//!
//! - [`metrics`]: metric names and the process-wide recorder (a leaf: every layer records).
//! - [`model`]: the domain: personal numbers, Oslo time, the person, the groups a caller may
//!   see, redaction of personal numbers from messages (a leaf).
//! - [`render`]: every byte of answer JSON: person → pre-rendered segments, the segments
//!   of a stored record → a person object, `IKKE_REGISTRERT` persons.
//! - [`journal`]: the durable PATCH journal: the `Backend` trait, the segment files (group
//!   commit, CRC32C frames, recovery, compaction) and the PostgreSQL journal of replicas.
//! - [`snapshot`]: the file format, the export's source format, the builder (with the
//!   journal folded in), the zero-copy loader, snapshot directories, object storage.
//! - [`store`]: what is served: the hot-swapped snapshot, the overlay, batch lookups, the
//!   one reload path, following object storage.
//! - [`auth`]: OAuth2 access tokens: JWKS, verification, scopes.
//! - [`ops`]: the scrape step of `/metrics` and the process's signals.
//! - [`http`]: the public API and the admin listener over hyper (one route table,
//!   handlers, errors, `application/jose`).
//! - [`app`]: configuration → a running service (`prepare`, `run`).
//! - [`dev`]: development only: the synthetic register, test tokens, development keys.
//!
//! The `krr` binary (`src/main.rs`, `src/cli/`) parses the command line and calls these;
//! the load and comparison tools are a crate of their own (`tools/krr-bench`).
//! `ARCHITECTURE.md` has the invariants; `docs/format.md` the bytes of a snapshot and of
//! the journal.

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod metrics;
pub mod model;

pub mod render;

pub mod journal;
pub mod snapshot;

pub mod store;

pub mod auth;

pub mod ops;

pub mod http;

pub mod app;

pub mod dev;
