//! The accept loop: a connection cap, header and write timeouts, a bounded read buffer,
//! and a graceful drain at shutdown.
//!
//! The public listener speaks HTTP/1.1 and HTTP/2: over TLS (`--tls-cert`) as ALPN
//! decides, on plain TCP by prior knowledge (h2c, recognised by its preface). The admin
//! listener is plain HTTP/1.1 only.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::http::AppState;
use crate::http::conn::WriteDeadline;
use crate::http::gate::{Admission, Gate};

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
    let builders = Arc::new(Builders::new(&state.limits));
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
        let write_timeout = state.limits.write_timeout;
        let handshake_timeout = state.limits.header_timeout;
        let activity = Arc::new(Activity::new());
        let gate = Gate::new(state.clone());
        let svc = {
            let state = state.clone();
            let activity = activity.clone();
            let gate = gate.clone();
            service_fn(move |req| {
                let state = state.clone();
                let busy = Busy::enter(activity.clone());
                let admitted = Admitted::start(&gate);
                async move {
                    let _busy = busy;
                    // Held (whole) until the answer is made.
                    let admitted = admitted;
                    Ok::<_, Infallible>(match which {
                        // Boxed: hyper moves this future whole; a pointer is cheap to move.
                        Listener::Api => {
                            Box::pin(super::route::handle(state, req, admitted.0)).await
                        }
                        Listener::Admin => Box::pin(super::admin::handle(state, req)).await,
                    })
                }
            })
        };
        let watcher = graceful.watcher();
        let builders = builders.clone();
        let tls = match which {
            Listener::Api => state.tls.as_ref().map(|t| t.acceptor()),
            Listener::Admin => None,
        };
        tokio::spawn(async move {
            let result = match (which, tls) {
                (Listener::Admin, _) => {
                    let io = TokioIo::new(WriteDeadline::new(stream, write_timeout));
                    watcher
                        .watch(builders.admin.serve_connection(io, svc))
                        .await
                }
                (Listener::Api, None) => {
                    // HTTP/1.1 or h2c: decided by the first bytes, which must come within
                    // the header timeout (hyper's own detection waits for ever).
                    let h2 = match sniff_h2(&stream, handshake_timeout).await {
                        Sniffed::Http1 => false,
                        Sniffed::Http2 => true,
                        Sniffed::Closed => return,
                        Sniffed::TimedOut => {
                            metrics::counter!(crate::metrics::CONNECTIONS_TIMED_OUT, "stage" => "preface")
                                .increment(1);
                            return;
                        }
                    };
                    let io = WriteDeadline::new(stream, write_timeout);
                    if h2 {
                        let io = TokioIo::new(io);
                        let served = watcher.watch(builders.h2.serve_connection(io, svc));
                        close_when_idle(served, &activity, handshake_timeout).await
                    } else {
                        let io = TokioIo::new(io.with_gate(gate));
                        watcher.watch(builders.h1.serve_connection(io, svc)).await
                    }
                }
                (Listener::Api, Some(acceptor)) => {
                    let tls = match tokio::time::timeout(handshake_timeout, acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            metrics::counter!(crate::metrics::TLS_HANDSHAKE_FAILURES, "cause" => "refused")
                                .increment(1);
                            tracing::debug!(cause = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            metrics::counter!(crate::metrics::TLS_HANDSHAKE_FAILURES, "cause" => "timeout")
                                .increment(1);
                            return;
                        }
                    };
                    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
                    metrics::counter!(crate::metrics::TLS_CONNECTIONS, "protocol" => if h2 { "h2" } else { "http/1.1" })
                        .increment(1);
                    let io = WriteDeadline::new(tls, write_timeout);
                    if h2 {
                        let io = TokioIo::new(io);
                        let served = watcher.watch(builders.h2.serve_connection(io, svc));
                        close_when_idle(served, &activity, handshake_timeout).await
                    } else {
                        let io = TokioIo::new(io.with_gate(gate));
                        watcher.watch(builders.h1.serve_connection(io, svc)).await
                    }
                }
            };
            if let Err(e) = result {
                tracing::debug!(cause = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    // Readiness goes down once the listener is closed (not before: a load balancer that
    // sees it down must find no new connection taken).
    if which == Listener::Api {
        state.begin_shutdown();
    }
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

/// The first bytes of every HTTP/2 connection (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the first bytes of a plain connection say.
enum Sniffed {
    /// Not the HTTP/2 preface.
    Http1,
    /// The preface: HTTP/2 by prior knowledge.
    Http2,
    /// The client closed (or the socket failed) first.
    Closed,
    /// Too few bytes within the header timeout.
    TimedOut,
}

/// Whether a plain connection speaks HTTP/2 (its first bytes are the preface) or HTTP/1.1
/// (they are not), read without taking them (`peek`).
async fn sniff_h2(stream: &tokio::net::TcpStream, timeout: Duration) -> Sniffed {
    let mut buf = [0u8; H2_PREFACE.len()];
    let sniff = async {
        let mut seen = 0;
        let mut pause = Duration::from_millis(1);
        loop {
            let Ok(n) = stream.peek(&mut buf).await else {
                return Sniffed::Closed;
            };
            if n == 0 {
                return Sniffed::Closed;
            }
            if buf[..n] != H2_PREFACE[..n] {
                return Sniffed::Http1;
            }
            if n == H2_PREFACE.len() {
                return Sniffed::Http2;
            }
            // A preface in pieces: peek returns the same bytes until more arrive, so wait,
            // longer each time nothing came (a stalled client costs a few wake-ups).
            if n == seen {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            seen = n;
        }
    };
    tokio::time::timeout(timeout, sniff)
        .await
        .unwrap_or(Sniffed::TimedOut)
}

/// Requests in progress on one connection and when the last one started or ended.
#[derive(Debug)]
struct Activity {
    started: tokio::time::Instant,
    active: std::sync::atomic::AtomicUsize,
    /// Milliseconds from `started` to the last start or end of a request.
    last_ms: std::sync::atomic::AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            started: tokio::time::Instant::now(),
            active: std::sync::atomic::AtomicUsize::new(0),
            last_ms: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_ms.store(ms, std::sync::atomic::Ordering::Release);
    }

    /// When the connection will have been idle for `idle`, if nothing starts before.
    fn idle_at(&self, idle: Duration) -> tokio::time::Instant {
        let last = self.last_ms.load(std::sync::atomic::Ordering::Acquire);
        self.started + Duration::from_millis(last) + idle
    }

    fn busy(&self) -> bool {
        self.active.load(std::sync::atomic::Ordering::Acquire) > 0
    }
}

/// A request's admission on its connection's [`Gate`], its place freed when dropped (the
/// answer made, or the request abandoned).
struct Admitted(Admission, Arc<Gate>);

impl Admitted {
    fn start(gate: &Arc<Gate>) -> Admitted {
        Admitted(gate.start(), gate.clone())
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if self.0 != Admission::Count {
            self.1.finish();
        }
    }
}

/// One request counted on its connection's [`Activity`] until dropped.
struct Busy(Arc<Activity>);

impl Busy {
    fn enter(a: Arc<Activity>) -> Busy {
        a.active.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        a.touch();
        Busy(a)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0
            .active
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Serves an HTTP/2 connection until it ends, or until no request has been in progress on
/// it for `idle` (then it is closed, as an idle HTTP/1.1 connection is after the header
/// timeout): a client cannot keep a connection slot with an open, silent connection.
async fn close_when_idle<F, E>(served: F, activity: &Activity, idle: Duration) -> Result<(), E>
where
    F: Future<Output = Result<(), E>>,
{
    tokio::pin!(served);
    loop {
        tokio::select! {
            r = &mut served => return r,
            () = tokio::time::sleep_until(activity.idle_at(idle)) => {
                if !activity.busy() && tokio::time::Instant::now() >= activity.idle_at(idle) {
                    metrics::counter!(crate::metrics::CONNECTIONS_TIMED_OUT, "stage" => "idle")
                        .increment(1);
                    return Ok(());
                }
            }
        }
    }
}

/// The connection builders of a listener: the admin listener's HTTP/1.1; the public one's
/// HTTP/1.1 and HTTP/2, chosen by ALPN (TLS) or by the first bytes (plain, h2c). Each is
/// hyper's own builder of its protocol: the choice is made before, so hyper-util's `auto`
/// connection (a layer polled around every request) has nothing left to decide.
struct Builders {
    admin: http1::Builder,
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
}

/// HTTP/2's limits: streams in progress per connection, the header list (as HTTP/1.1's
/// read buffer), and windows and send buffers sized so a 1 MB answer goes out without
/// waiting for window updates after every 64 KiB.
pub const H2_MAX_STREAMS: u32 = 64;
/// The flow-control window of one stream, and of the connection (four streams' worth).
pub const H2_STREAM_WINDOW: u32 = 1 << 20;
const H2_CONNECTION_WINDOW: u32 = 4 << 20;

/// The HTTP/1.1 connection builder of both listeners: hyper's timer, the header timeout
/// of `limits`, keep-alive, and the bounded read buffer.
pub fn http1_builder(limits: &super::Limits) -> http1::Builder {
    let mut h1 = http1::Builder::new();
    h1.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true)
        // Bounds what a client can queue: pipelined requests are read into this buffer
        // and answered one at a time, so at most this much waits per connection.
        .max_buf_size(MAX_READ_BUFFER);
    h1
}

impl Builders {
    fn new(limits: &super::Limits) -> Builders {
        let h1 = http1_builder(limits);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_concurrent_streams(H2_MAX_STREAMS)
            .max_header_list_size(MAX_READ_BUFFER as u32)
            .initial_stream_window_size(H2_STREAM_WINDOW)
            .initial_connection_window_size(H2_CONNECTION_WINDOW)
            .max_send_buf_size(H2_STREAM_WINDOW as usize)
            .max_pending_accept_reset_streams(Some(20))
            .max_local_error_reset_streams(Some(256))
            // A connection whose peer stops answering pings is closed.
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(limits.header_timeout);
        Builders {
            admin: h1.clone(),
            h1,
            h2,
        }
    }
}
