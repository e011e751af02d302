//! `krr-bench floor`: an HTTP/1.1 server that does no work, on the runtime the service uses,
//! to measure the floor under any service built on it.
//!
//! It reads each request (its head parsed with `httparse`, its body skipped by its
//! `Content-Length`) and writes one fixed answer: krr's `/rest/v1/personer` answer for a
//! typical person of a snapshot (the length nearest the mean), with the head krr writes,
//! made once at start. No token is checked, no id looked up, nothing counted or logged. A
//! request that cannot be read (a bad head, a head larger than the buffer, a bad
//! `Content-Length`, chunked) closes its connection, once the requests before it are
//! answered. Driven by `krr-bench loadtest --batch 1`, it shows what the tokio runtime and
//! the kernel's TCP cost per request on the box: what is left for the service's own
//! work when it is compared with another server (`tools/bench-floor`).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use krr::model::Groups;
use krr::snapshot::Snapshot;
use krr::store::lookup::{BatchOptions, write_personer};
use krr::store::overlay::Overlay;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The read buffer of a connection: the largest head (with its body) the floor reads.
const BUFFER: usize = 64 * 1024;

/// How many of the snapshot's first persons the typical answer is chosen from.
const TYPICAL_OF: usize = 1001;

/// The whole HTTP answer (head and body) to every request: `body` (see [`typical_body`])
/// after a head with the header set krr's answer has.
fn with_head(body: &[u8]) -> Vec<u8> {
    let date = httpdate::fmt_http_date(std::time::SystemTime::now());
    let mut out = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nvary: accept, accept-encoding\r\n\
         x-request-id: 0123456789abcdef\r\ncontent-length: {}\r\ndate: {date}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// The body of `/rest/v1/personer` with all groups for a typical person of `snapshot`: the
/// answer length nearest the mean of its first [`TYPICAL_OF`].
fn typical_body(snapshot: &Path) -> anyhow::Result<Vec<u8>> {
    let snap = Snapshot::open(snapshot)
        .with_context(|| format!("opening the snapshot {}", snapshot.display()))?;
    let overlay = Overlay::new();
    let bodies: Vec<Vec<u8>> = snap
        .ids()
        .take(TYPICAL_OF)
        .map(|id| {
            let mut body = Vec::new();
            write_personer(
                &snap,
                &overlay,
                &[id],
                BatchOptions::v1(Groups::ALL),
                &mut body,
            );
            body
        })
        .collect();
    anyhow::ensure!(!bodies.is_empty(), "the snapshot holds no person");
    let mean = bodies.iter().map(Vec::len).sum::<usize>() / bodies.len();
    bodies
        .into_iter()
        .min_by_key(|b| b.len().abs_diff(mean))
        .context("the snapshot holds no person")
}

/// Serves `answer` to every request on `listener`, for ever.
pub async fn serve(listener: tokio::net::TcpListener, answer: Arc<[u8]>) {
    loop {
        let stream = accept(&listener).await;
        let answer = answer.clone();
        tokio::spawn(async move {
            let _ = connection(stream, &answer).await;
        });
    }
}

/// The next connection on `listener`, with Nagle's algorithm off.
async fn accept(listener: &tokio::net::TcpListener) -> tokio::net::TcpStream {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                return stream;
            }
            // Out of file descriptors and the like: wait rather than spin.
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
        }
    }
}

/// Why a connection ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// The client closed it (or the socket failed).
    Closed,
    /// A request that cannot be read.
    BadRequest,
}

/// Answers every request read from `io` with `answer`, pipelined ones in one write. The
/// requests read whole before one that cannot be read are answered before the connection
/// is closed.
pub async fn connection<S>(mut io: S, answer: &[u8]) -> Result<End, std::io::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUFFER];
    let mut have = 0;
    let mut out = Vec::new();
    loop {
        let n = io.read(&mut buf[have..]).await?;
        if n == 0 {
            return Ok(End::Closed);
        }
        have += n;
        let (taken, requests, bad) = complete(&buf[..have]);
        match requests {
            0 => {}
            1 => io.write_all(answer).await?,
            n => {
                out.clear();
                for _ in 0..n {
                    out.extend_from_slice(answer);
                }
                io.write_all(&out).await?;
            }
        }
        if bad {
            io.flush().await?;
            return Ok(End::BadRequest);
        }
        buf.copy_within(taken..have, 0);
        have -= taken;
        if have == buf.len() {
            return Ok(End::BadRequest);
        }
    }
}

/// How many bytes of `buf` are whole requests, how many requests they are, and whether the
/// request after them cannot be read.
fn complete(buf: &[u8]) -> (usize, usize, bool) {
    let mut at = 0;
    let mut requests = 0;
    loop {
        match request_length(&buf[at..]) {
            Ok(Some(n)) => {
                at += n;
                requests += 1;
            }
            Ok(None) => return (at, requests, false),
            Err(()) => return (at, requests, true),
        }
    }
}

/// The length (head and body) of the request at the start of `buf`: `None` while it is not
/// all there, `Err` when it cannot be read or would not fit the buffer.
fn request_length(buf: &[u8]) -> Result<Option<usize>, ()> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let head = match req.parse(buf) {
        Ok(httparse::Status::Complete(head)) => head,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(()),
    };
    let mut length = 0usize;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(());
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            length = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or(())?;
        }
    }
    let whole = head
        .checked_add(length)
        .filter(|&n| n <= BUFFER)
        .ok_or(())?;
    Ok((buf.len() >= whole).then_some(whole))
}

/// Serves `body` to every request on `listener` through hyper's HTTP/1.1 server, set up
/// by `krr serve`'s own builder with its default limits: the same head as krr's answer (hyper adds `content-length` and `date`), after
/// the request's body is read whole. The floor under any service built on hyper, for ever.
pub async fn serve_hyper(listener: tokio::net::TcpListener, body: bytes::Bytes) {
    use http_body_util::{BodyExt, Full};
    use hyper::header::{CONTENT_TYPE, HeaderName, HeaderValue, VARY};
    let builder = Arc::new(krr::http::server::http1_builder(
        &krr::http::Limits::default(),
    ));
    loop {
        let stream = accept(&listener).await;
        let body = body.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let body = body.clone();
                    async move {
                        // A service reads the body it is sent; an unreadable one ends here.
                        req.into_body().collect().await?;
                        let mut resp = hyper::Response::new(Full::new(body));
                        let h = resp.headers_mut();
                        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                        h.insert(VARY, HeaderValue::from_static("accept, accept-encoding"));
                        h.insert(
                            HeaderName::from_static("x-request-id"),
                            HeaderValue::from_static("0123456789abcdef"),
                        );
                        Ok::<_, hyper::Error>(resp)
                    }
                });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = builder.serve_connection(io, svc).await;
        });
    }
}

/// `krr-bench floor`: binds `listen` and serves a typical person of `snapshot`'s answer,
/// with its own HTTP/1.1 reading and writing, or with hyper's (`hyper`).
pub fn run(listen: SocketAddr, snapshot: &Path, hyper: bool) -> anyhow::Result<()> {
    let body = typical_body(snapshot)?;
    let answer: Arc<[u8]> = with_head(&body).into();
    // The service's runtime: multi-threaded, a worker per core (krr::cli's `runtime`).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        eprintln!(
            "krr-bench floor: answering every request on {} with a {}-byte answer{}",
            listener.local_addr()?,
            answer.len(),
            if hyper { " through hyper" } else { "" }
        );
        if hyper {
            serve_hyper(listener, body.into()).await;
        } else {
            serve(listener, answer).await;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
    const REQ: &[u8] =
        b"POST /rest/v1/personer HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello";

    /// Writes `parts` one after the other to the floor (pausing between them so each is a
    /// read of its own), closes, and returns what came back and how the connection ended.
    async fn exchange(parts: &[&[u8]]) -> (Vec<u8>, End) {
        let (client, server) = tokio::io::duplex(1 << 20);
        let floor = tokio::spawn(async move { connection(server, ANSWER).await.unwrap() });
        let (mut rd, mut wr) = tokio::io::split(client);
        for p in parts {
            wr.write_all(p).await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        wr.shutdown().await.unwrap();
        drop(wr);
        let end = floor.await.unwrap();
        let mut got = Vec::new();
        rd.read_to_end(&mut got).await.unwrap();
        (got, end)
    }

    #[tokio::test]
    async fn one_answer_a_request_pipelined_or_in_pieces() {
        // Two pipelined, then one in three pieces (its head complete in the second, its body
        // in the third), then one cut in its head, which is never answered.
        let two = [REQ, REQ].concat();
        let (got, end) = exchange(&[&two, &REQ[..20], &REQ[20..64], &REQ[64..], &REQ[..10]]).await;
        assert_eq!(end, End::Closed);
        assert_eq!(got, [ANSWER, ANSWER, ANSWER].concat());
    }

    #[tokio::test]
    async fn a_request_it_cannot_read_closes_the_connection() {
        for bad in [
            &b"NOT HTTP\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\ncontent-length: x\r\n\r\n",
            b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\ncontent-length: 70000\r\n\r\n",
            b"POST / HTTP/1.1\r\ncontent-length: 18446744073709551615\r\n\r\n",
        ] {
            let (got, end) = exchange(&[REQ, bad]).await;
            assert_eq!(end, End::BadRequest, "{:?}", String::from_utf8_lossy(bad));
            assert_eq!(got, ANSWER, "the request before is answered");
            // The same, both in one read: the good ones are still answered first.
            let (got, end) = exchange(&[&[REQ, REQ, bad].concat()]).await;
            assert_eq!(end, End::BadRequest, "{:?}", String::from_utf8_lossy(bad));
            assert_eq!(
                got,
                [ANSWER, ANSWER].concat(),
                "the requests before are answered"
            );
        }
    }

    /// The hyper floor answers each request, pipelined ones too, with the fixed body and
    /// krr's header set, after reading its body.
    #[tokio::test]
    async fn the_hyper_floor_answers_every_request_with_the_body() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve_hyper(
            listener,
            bytes::Bytes::from_static(b"{\"p\":1}"),
        ));
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        let close =
            b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}";
        c.write_all(&[REQ, close].concat()).await.unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(std::time::Duration::from_secs(5), c.read_to_end(&mut got))
            .await
            .unwrap()
            .unwrap();
        let got = String::from_utf8(got).unwrap();
        assert_eq!(got.matches("HTTP/1.1 200 OK\r\n").count(), 2, "{got}");
        assert_eq!(got.matches("\r\n\r\n{\"p\":1}").count(), 2, "{got}");
        for header in [
            "content-type: application/json\r\n",
            "vary: accept, accept-encoding\r\n",
            "x-request-id: 0123456789abcdef\r\n",
            "content-length: 7\r\n",
        ] {
            assert_eq!(got.matches(header).count(), 2, "{header} in {got}");
        }
    }
}
