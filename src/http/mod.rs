//! The HTTP service: hyper 1 over tokio, HTTP/1.1 with keep-alive.
//!
//! - [`server`]: the accept loop (connection cap, header timeout, graceful drain);
//! - [`route`]: the one table of public routes (path, metric label, methods, handler) and
//!   the request wrapper (span, metrics, access line);
//! - [`request`]: what every handler shares: authentication, content negotiation, bodies;
//! - [`personer`], [`person`], [`print`](mod@print): the handlers; [`error`]: the error body;
//!   [`jose`]: `application/jose`; [`admin`]: the admin listener.
//!
//! [`run`] accepts connections until `shutdown` resolves. **The request path does no file
//! I/O and takes no lock shared by all requests** (ARCHITECTURE.md says which one it may
//! take): it reads the snapshot through the store's lock-free guard,
//! verifies tokens against keys held in memory (a cache hit for a reused token), and writes
//! the answer into one buffer sized for the batch.
//!
//! Limits: at most `max_connections` open connections (the accept loop waits for a free
//! slot), request headers within `header_timeout`, the body within `body_timeout` and at
//! most `max_body_bytes`.

pub mod access;
pub mod admin;
pub mod coding;
pub mod conn;
pub mod error;
pub mod feed;
pub mod gate;
pub mod jose;
pub mod meters;
pub mod person;
pub mod personer;
pub mod print;
pub mod quota;
pub mod request;
pub mod request_id;
pub mod route;
pub mod server;
pub mod tls;
pub mod usage;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::auth::Verifier;
use crate::store::Store;

pub use jose::{JoseSigner, SignError, Signing};
pub use print::{PrintCertError, print_body};
pub use server::{Listener, run, serve};

/// The answer's representation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `application/json`.
    Json,
    /// `application/jose` (compact JWS of the JSON).
    Jose,
}

/// Connection and request limits.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most open connections.
    pub max_connections: usize,
    /// Most requests in progress (all connections, HTTP/2 streams included); past it a
    /// request is answered 503 at once.
    pub max_in_flight: usize,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Time allowed for a request's headers.
    pub header_timeout: Duration,
    /// Time allowed for a request's body.
    pub body_timeout: Duration,
    /// Time a connection may take none of its answer before it is closed.
    pub write_timeout: Duration,
    /// At shutdown, time allowed for requests in flight to finish.
    pub shutdown_grace: Duration,
    /// Consumers with usage labels of their own; later ones count as `other`.
    pub metrics_max_consumers: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 1024,
            max_in_flight: 1024,
            max_body_bytes: 64 * 1024,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(10),
            metrics_max_consumers: 1000,
        }
    }
}

/// Everything a request needs.
#[derive(Debug)]
pub struct AppState {
    /// The served snapshot.
    pub store: Arc<Store>,
    /// Token verification.
    pub verifier: Verifier,
    /// Signs `application/jose` answers, when configured.
    pub signer: Option<Signing>,
    /// The pre-rendered `printSertifikat` answer, when configured.
    pub print_body: Option<Bytes>,
    /// The same answer signed, once at start (it never changes), when a signer is configured.
    pub print_jose: Option<Bytes>,
    /// Limits.
    pub limits: Limits,
    /// Where PATCHes are made durable (`None`: the service takes no changes, PATCH is 503).
    pub journal: Option<std::sync::Arc<dyn crate::journal::Backend>>,
    /// The reload path (admin `POST /admin/reload`, SIGHUP, the watcher).
    pub reloader: Option<Arc<crate::store::reload::Reloader>>,
    /// The public listener's TLS settings, when it speaks TLS (re-read on reload).
    pub tls: Option<tls::Tls>,
    /// Per-consumer quotas (persons per second and burst).
    pub quotas: quota::Quotas,
    /// The request path's metric handles.
    pub meters: meters::Meters,
    /// Usage per consumer (bounded labels).
    pub usage: usage::Usage,
    /// Requests in progress on the public listener.
    pub in_flight: std::sync::atomic::AtomicUsize,
    /// Set at the first moment of shutdown: readiness answers 503 from then on.
    pub shutting_down: std::sync::atomic::AtomicBool,
}

impl AppState {
    /// Ready: a snapshot is loaded and shutdown has not begun.
    pub fn is_ready(&self) -> bool {
        !self
            .shutting_down
            .load(std::sync::atomic::Ordering::Acquire)
            && self.store.current().is_some()
    }

    /// Marks the start of shutdown (readiness goes down at once).
    pub fn begin_shutdown(&self) {
        self.shutting_down
            .store(true, std::sync::atomic::Ordering::Release);
    }
}
