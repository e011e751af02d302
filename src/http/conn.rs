//! A connection's socket as the server uses it: a write that makes no progress for
//! `--write-timeout` fails, so a client that never reads its answers (alone, or with
//! pipelined requests queued behind them) loses its connection and its slot instead of
//! holding both forever. Any byte taken resets the clock: a slow but moving reader is
//! served.
//!
//! It also gives hyper's own error answers the contract's JSON body. A request hyper cannot
//! parse (a bad request line, an invalid `Content-Length`, headers past the buffer) never
//! reaches the service: hyper answers it itself, `HTTP/1.1 400 …` with `content-length: 0`,
//! and closes. The service's own errors always carry a JSON body, so an error head with a
//! zero length written on its own is hyper's, and it is written with the body instead.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// `inner` with a stall timeout on writes.
#[derive(Debug)]
pub struct WriteDeadline<S> {
    inner: S,
    timeout: Duration,
    stalled: Option<Pin<Box<Sleep>>>,
    /// hyper's bodiless error answer being written as the JSON one: the bytes, how many
    /// are written, and the length of hyper's buffer (reported once all are written).
    rewrite: Option<(Vec<u8>, usize, usize)>,
    /// The connection's admission gate and a waker made of it: reads wake through it
    /// ([`crate::http::gate`]).
    gate: Option<(std::sync::Arc<crate::http::gate::Gate>, std::task::Waker)>,
}

impl<S> WriteDeadline<S> {
    /// Wraps `inner`; a write (or flush) pending for `timeout` without progress fails.
    pub fn new(inner: S, timeout: Duration) -> WriteDeadline<S> {
        WriteDeadline {
            inner,
            timeout,
            stalled: None,
            rewrite: None,
            gate: None,
        }
    }

    /// Reads wake the connection through `gate`, which judges each arrival.
    pub fn with_gate(mut self, gate: std::sync::Arc<crate::http::gate::Gate>) -> Self {
        gate.enable();
        let waker = std::task::Waker::from(gate.clone());
        self.gate = Some((gate, waker));
        self
    }

    /// Pending: arms (or polls) the stall clock; once it runs out the write fails.
    fn stall<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let timeout = self.timeout;
        let clock = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match clock.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => {
                self.stalled = None;
                metrics::counter!(crate::metrics::CONNECTIONS_TIMED_OUT, "stage" => "write")
                    .increment(1);
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client took none of its answer within the write timeout",
                )))
            }
        }
    }

    fn progressed<T>(
        &mut self,
        r: Poll<io::Result<T>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<T>> {
        match r {
            Poll::Ready(r) => {
                self.stalled = None;
                Poll::Ready(r)
            }
            Poll::Pending => self.stall(cx),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteDeadline<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match &this.gate {
            Some((gate, waker)) => {
                gate.register(cx.waker());
                Pin::new(&mut this.inner).poll_read(&mut Context::from_waker(waker), buf)
            }
            None => Pin::new(&mut this.inner).poll_read(cx, buf),
        }
    }
}

impl<S: AsyncWrite + Unpin> WriteDeadline<S> {
    /// Writes the JSON answer in place of hyper's bodiless one; reports `buf`'s length
    /// (hyper's bytes) as written once every byte of it is.
    fn poll_rewrite(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        loop {
            let Some((bytes, done, reported)) = &mut self.rewrite else {
                return Poll::Ready(Ok(0));
            };
            if *done == bytes.len() {
                let n = *reported;
                self.rewrite = None;
                return Poll::Ready(Ok(n));
            }
            match Pin::new(&mut self.inner).poll_write(cx, &bytes[*done..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    *done += n;
                    self.stalled = None;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return self.stall(cx),
            }
        }
    }
}

/// The JSON answer for hyper's own bodiless error answer `head`, or `None` when `head`
/// is not one (see the module doc).
pub fn json_for_hyper_error(head: &[u8]) -> Option<Vec<u8>> {
    let rest = head.strip_prefix(b"HTTP/1.1 ")?;
    let status: u16 = std::str::from_utf8(rest.get(..3)?).ok()?.parse().ok()?;
    // Answers that succeed (nearly all) stop here, before any scan of the buffer.
    if status < 400 || !head.ends_with(b"\r\n\r\n") {
        return None;
    }
    let end = memchr::memmem::find(head, b"\r\n\r\n")?;
    if end + 4 != head.len() {
        return None;
    }
    let head = std::str::from_utf8(&head[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let mut others = Vec::new();
    let mut zero_length = false;
    for line in lines {
        if line.eq_ignore_ascii_case("content-length: 0") {
            zero_length = true;
        } else {
            others.push(line);
        }
    }
    if !zero_length {
        return None;
    }
    let code = hyper::StatusCode::from_u16(status).ok()?;
    let reason = code.canonical_reason().unwrap_or("");
    let message = match status {
        400 => {
            "the request is not valid HTTP/1.1 (its request line, a header or its Content-Length)"
        }
        414 => "the request target is too long",
        431 => "the request's headers are too large",
        501 => "the request uses a transfer coding this service does not implement",
        505 => "only HTTP/1.1 and HTTP/1.0 are served",
        _ => reason,
    };
    let mut body = Vec::with_capacity(160);
    crate::render::write_error(status, reason, message, "", &mut body);
    let mut out = format!("{status_line}\r\n");
    for line in others {
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str(&format!(
        "content-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    ));
    let mut out = out.into_bytes();
    out.extend_from_slice(&body);
    Some(out)
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.rewrite.is_none()
            && let Some(json) = json_for_hyper_error(buf)
        {
            this.rewrite = Some((json, 0, buf.len()));
        }
        if this.rewrite.is_some() {
            return this.poll_rewrite(cx);
        }
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.progressed(r, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // An error head is written alone: one non-empty slice.
        let mut filled = bufs.iter().filter(|b| !b.is_empty());
        if let (Some(only), None) = (filled.next(), filled.next()) {
            return self.poll_write(cx, only);
        }
        if self.rewrite.is_some() {
            return self.get_mut().poll_rewrite(cx);
        }
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.progressed(r, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_flush(cx);
        this.progressed(r, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.progressed(r, cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn hyper_error_heads_get_the_json_body_and_nothing_else_does() {
        let head = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: Wed, 02 Dec 2026 03:11:17 GMT\r\n\r\n";
        let out = String::from_utf8(json_for_hyper_error(head).unwrap()).unwrap();
        let (h, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(
            h.starts_with("HTTP/1.1 400 Bad Request\r\nconnection: close\r\ndate: "),
            "{h}"
        );
        assert!(
            h.ends_with(&format!(
                "content-type: application/json\r\ncontent-length: {}",
                body.len()
            )),
            "{h}"
        );
        assert!(body.starts_with(r#"{"status":400,"error":"Bad Request","message":"the request is not valid HTTP/1.1"#), "{body}");
        // Not hyper's: a success, a body after the head, a non-zero length, a 204.
        for other in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"[..],
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n{}",
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 95\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\n\r\n",
        ] {
            assert_eq!(json_for_hyper_error(other), None);
        }
    }

    #[tokio::test]
    async fn a_write_nobody_takes_fails_after_the_timeout_and_a_moving_one_does_not() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut w = WriteDeadline::new(a, Duration::from_millis(100));
        let started = std::time::Instant::now();
        let err = w.write_all(&[0u8; 1024]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(100));
        // A reader taking 64 bytes every 50 ms (slower in total than the timeout) is served.
        let (a, mut b2) = tokio::io::duplex(64);
        let mut w = WriteDeadline::new(a, Duration::from_millis(100));
        let reader = tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut got = 0;
            let mut buf = [0u8; 64];
            while got < 1024 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                got += b2.read(&mut buf).await.unwrap();
            }
        });
        w.write_all(&[0u8; 1024]).await.unwrap();
        reader.await.unwrap();
        drop(b.shutdown().await);
    }
}
