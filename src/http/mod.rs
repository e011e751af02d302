//! The HTTP service: hyper 1 over tokio, HTTP/1.1 with keep-alive.
//!
//! [`run`] accepts connections until `shutdown` resolves. **The request path takes no lock
//! and does no file I/O**: it reads the snapshot through the store's lock-free guard,
//! verifies tokens against keys held in memory (a cache hit for a reused token), and writes
//! the answer into one buffer sized for the batch.
//!
//! Limits: at most `max_connections` open connections (the accept loop waits for a free
//! slot), request headers within `header_timeout`, the body within `body_timeout` and at
//! most `max_body_bytes`.

pub mod admin;
pub mod error;
pub mod jose;
pub mod routes;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::auth::Verifier;
use crate::store::Store;

pub use jose::JoseSigner;

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
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Time allowed for a request's headers.
    pub header_timeout: Duration,
    /// Time allowed for a request's body.
    pub body_timeout: Duration,
    /// At shutdown, time allowed for requests in flight to finish.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 1024,
            max_body_bytes: 64 * 1024,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(10),
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
    pub signer: Option<JoseSigner>,
    /// The pre-rendered `printSertifikat` answer, when configured.
    pub print_body: Option<Bytes>,
    /// Limits.
    pub limits: Limits,
    /// Where PATCHes are made durable (`None`: the service takes no changes, PATCH is 503).
    pub journal: Option<std::sync::Arc<dyn crate::journal::Backend>>,
    /// The reload path (admin `POST /admin/reload`, SIGHUP, the watcher).
    pub reloader: Option<Arc<crate::reload::Reloader>>,
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

/// Which routes a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    /// The public API.
    Api,
    /// Health, metrics, reload.
    Admin,
}

/// The `printSertifikat` answer for a provider and its certificate (PEM).
pub fn print_body(orgnr: &str, cert_pem: &str) -> Result<Bytes, String> {
    let cert = pem::parse_many(cert_pem)
        .map_err(|e| format!("print certificate: {e}"))?
        .into_iter()
        .find(|p| p.tag() == "CERTIFICATE")
        .ok_or("print certificate: no PEM certificate found")?;
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(cert.contents());
    let mut out = Vec::new();
    out.extend_from_slice(b"{\"postkasseleverandoerAdresse\":");
    crate::render::write_str(orgnr, &mut out);
    out.extend_from_slice(b",\"x509Sertifikat\":");
    crate::render::write_str(&b64, &mut out);
    out.push(b'}');
    Ok(Bytes::from(out))
}

/// Serves the public API on `listener` until `shutdown` resolves; then stops accepting,
/// lets requests in flight finish (at most `limits.shutdown_grace`) and returns.
pub async fn run(listener: TcpListener, state: Arc<AppState>, shutdown: impl Future<Output = ()>) {
    serve(listener, state, Listener::Api, shutdown).await;
}

/// Serves `which` routes on `listener`; see [`run`].
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    which: Listener,
    shutdown: impl Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(state.limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    let mut backoff = Duration::from_millis(10);
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.expect("semaphore never closed"),
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => {
                    backoff = Duration::from_millis(10);
                    stream
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(cause = %e, "accept failed; backing off");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let header_timeout = state.limits.header_timeout;
        let state = state.clone();
        let svc = service_fn(move |req| {
            let state = state.clone();
            async move {
                Ok::<_, Infallible>(match which {
                    Listener::Api => routes::handle(state, req).await,
                    Listener::Admin => admin::handle(state, req).await,
                })
            }
        });
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .keep_alive(true)
            .serve_connection(TokioIo::new(stream), svc);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(cause = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    // Keep-alive connections are closed after their current request; requests in flight
    // get the grace period to finish.
    let grace = state.limits.shutdown_grace;
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(grace) => tracing::warn!(
            grace_secs = grace.as_secs_f64(),
            "shutdown grace period over; connections still open are cut"
        ),
    }
}
