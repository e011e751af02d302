//! `krr-bench feed`: the change feed as a copy-keeping client uses it.
//!
//! 1. **Copy**: one client pages the whole register from `fraEndringsId` 0 until
//!    `tilEndringsId == sisteEndringsId`, one request after the other on one keep-alive
//!    connection; reports the time, pages/s, persons/s and the page latency (HdrHistogram).
//!    Every page is checked: 200, `tilEndringsId` grows, entries at most 1000.
//! 2. **Follow** (`--follow S`): for S seconds, PATCHes at `--patch-rate` per second (user
//!    tokens for AKTIV persons of `--snapshot`) while the client polls the feed from where
//!    the copy ended; reports how long after it was sent each PATCH appeared in the feed,
//!    and any acknowledged PATCH that never did.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};

use krr::model::fnr::PersonId;

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> anyhow::Result<Sender> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    // Pages are about 1 MB: read them in large pieces, not hyper's default 8 KiB growth.
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        .read_buf_exact_size(Some(1 << 20))
        .handshake(hyper_util::rt::TokioIo::new(stream))
        .await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// One page as the client reads it.
struct Page {
    ids: Vec<String>,
    til: u64,
    siste: u64,
}

async fn page(s: &mut Sender, addr: SocketAddr, token: &str, fra: u64) -> anyhow::Result<Page> {
    let req = Request::builder()
        .method(Method::POST)
        .uri("/rest/v2/krr/hentEndringer")
        .header("host", addr.to_string())
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(format!(
            "{{\"fraEndringsId\":{fra}}}"
        ))))?;
    s.ready().await?;
    let resp = s.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    anyhow::ensure!(
        status == StatusCode::OK,
        "the feed answered {status}: {}",
        String::from_utf8_lossy(&body)
    );
    // Read as a fast client would: the ids by their key, the cursor fields from the tail
    // (a page is about 1 MB; parsing it into a DOM here would measure this client, not
    // the service). The tail is parsed as JSON, so a malformed one is still caught.
    const ID: &[u8] = b"{\"personidentifikator\":\"";
    let ids: Vec<String> = memchr::memmem::find_iter(&body, ID)
        .filter_map(|at| body.get(at + ID.len()..at + ID.len() + 11))
        .map(|d| String::from_utf8_lossy(d).into_owned())
        .collect();
    let from = body.len().saturating_sub(256);
    let tail_at = memchr::memmem::rfind(&body[from..], b"],\"fraEndringsId\":")
        .map(|at| from + at)
        .ok_or_else(|| anyhow::anyhow!("the answer has no fraEndringsId after its list"))?;
    let tail: serde_json::Value = serde_json::from_slice(&[b"{", &body[tail_at + 2..]].concat())?;
    anyhow::ensure!(ids.len() <= 1000, "a page of {} entries", ids.len());
    let til = tail["tilEndringsId"].as_u64().unwrap_or(0);
    let siste = tail["sisteEndringsId"].as_u64().unwrap_or(0);
    anyhow::ensure!(
        tail["fraEndringsId"].as_u64() == Some(fra)
            && ids.is_empty() == (til == fra)
            && til >= fra
            && til <= siste,
        "inconsistent page: fra {fra}, til {til}, siste {siste}, {} entries",
        ids.len()
    );
    Ok(Page { ids, til, siste })
}

/// What to do.
pub struct FeedOptions {
    /// The service.
    pub target: SocketAddr,
    /// Machine token with the feed scope (and the read scopes whose groups to fetch).
    pub token: String,
    /// Seconds to follow the feed while PATCHes run (0: copy only).
    pub follow: Duration,
    /// PATCHes per second while following.
    pub patch_rate: u32,
    /// (person, user token with `krr:user/spraak.write`) to PATCH.
    pub users: Vec<(PersonId, String)>,
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// Runs the copy and, if asked, the follow; prints the report.
pub async fn run(o: FeedOptions) -> anyhow::Result<()> {
    let mut s = connect(o.target).await?;
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let started = Instant::now();
    let (mut fra, mut pages, mut persons, mut empty) = (0u64, 0u64, 0u64, 0u32);
    loop {
        let t = Instant::now();
        let p = page(&mut s, o.target, &o.token, fra).await?;
        latency.record(t.elapsed().as_micros().max(1) as u64)?;
        pages += 1;
        persons += p.ids.len() as u64;
        fra = p.til;
        if p.til == p.siste {
            break;
        }
        if p.ids.is_empty() {
            // The service says there is more but has none to give yet (a replica
            // catching up with its journal): wait a little, but not for ever.
            empty += 1;
            anyhow::ensure!(
                empty < 500,
                "the feed stays empty below sisteEndringsId {}",
                p.siste
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "copy from 0: {persons} persons in {pages} pages, {secs:.2} s: {:.0} pages/s, {:.0} persons/s; \
         page latency p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms; ended at {fra}",
        pages as f64 / secs,
        persons as f64 / secs,
        ms(&latency, 0.5),
        ms(&latency, 0.99),
        ms(&latency, 0.999),
        latency.max() as f64 / 1000.0,
    );
    if o.follow.is_zero() || o.users.is_empty() || o.patch_rate == 0 {
        return Ok(());
    }
    // PATCHes on a connection of their own; the time of each 204, by person.
    let acked: std::sync::Arc<std::sync::Mutex<HashMap<String, Instant>>> = Default::default();
    let patcher = {
        let acked = acked.clone();
        let (target, users, rate, follow) = (o.target, o.users.clone(), o.patch_rate, o.follow);
        tokio::spawn(async move {
            let mut s = connect(target).await?;
            let every = Duration::from_secs_f64(1.0 / f64::from(rate));
            let until = Instant::now() + follow;
            let langs = ["nb", "nn", "en", "se"];
            let mut n = 0usize;
            while Instant::now() < until {
                let (id, token) = &users[n % users.len()];
                let req = Request::builder()
                    .method(Method::PATCH)
                    .uri("/rest/v1/person")
                    .header("host", target.to_string())
                    .header("authorization", format!("Bearer {token}"))
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(format!(
                        "{{\"spraak\":\"{}\"}}",
                        langs[(n / users.len()) % 4]
                    ))))?;
                // Noted before it is sent: a poll may list the person before the 204 is
                // read here.
                let digits = String::from_utf8_lossy(&id.digits()).into_owned();
                acked
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(digits)
                    .or_insert_with(Instant::now);
                s.ready().await?;
                let resp = s.send_request(req).await?;
                let status = resp.status();
                let _ = resp.into_body().collect().await?;
                anyhow::ensure!(status == StatusCode::NO_CONTENT, "PATCH answered {status}");
                n += 1;
                tokio::time::sleep(every).await;
            }
            anyhow::Ok(n)
        })
    };
    let mut delay = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let mut seen = 0u64;
    let deadline = Instant::now() + o.follow + Duration::from_secs(5);
    let mut polls = 0u64;
    while Instant::now() < deadline {
        let p = page(&mut s, o.target, &o.token, fra).await?;
        polls += 1;
        let now = Instant::now();
        {
            let mut acked = acked.lock().unwrap_or_else(|e| e.into_inner());
            for id in &p.ids {
                if let Some(at) = acked.remove(id) {
                    delay.record(now.duration_since(at).as_micros().max(1) as u64)?;
                    seen += 1;
                }
            }
        }
        fra = p.til;
        if patcher.is_finished() && acked.lock().unwrap_or_else(|e| e.into_inner()).is_empty() {
            break;
        }
        if p.ids.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let made = patcher.await??;
    let missing = acked.lock().unwrap_or_else(|e| e.into_inner()).len();
    println!(
        "follow: {made} PATCHes at {} /s, {seen} seen in the feed ({polls} polls), {missing} not seen; \
         sent → in the feed p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        o.patch_rate,
        ms(&delay, 0.5),
        ms(&delay, 0.99),
        delay.max() as f64 / 1000.0
    );
    anyhow::ensure!(
        missing == 0,
        "{missing} acknowledged PATCHes never appeared in the feed"
    );
    Ok(())
}
