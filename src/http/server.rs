//! The accept loop: a connection cap, header and write timeouts, a bounded read buffer,
//! and a graceful drain at shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::http::AppState;
use crate::http::conn::WriteDeadline;

/// A connection's read buffer: the largest request head (headers with a large token fit
/// several times) and the most pipelined bytes a client can queue ahead of its answers.
pub const MAX_READ_BUFFER: usize = 64 * 1024;

/// Which routes a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    /// The public API.
    Api,
    /// Health, metrics, reload.
    Admin,
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
        let io = TokioIo::new(WriteDeadline::new(stream, state.limits.write_timeout));
        let state = state.clone();
        let svc = service_fn(move |req| {
            let state = state.clone();
            async move {
                Ok::<_, Infallible>(match which {
                    Listener::Api => super::route::handle(state, req).await,
                    Listener::Admin => super::admin::handle(state, req).await,
                })
            }
        });
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .keep_alive(true)
            // Bounds what a client can queue: pipelined requests are read into this buffer
            // and answered one at a time, so at most this much waits per connection.
            .max_buf_size(MAX_READ_BUFFER)
            .serve_connection(io, svc);
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
