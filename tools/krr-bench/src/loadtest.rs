//! `krr-bench loadtest`: drives a running service over HTTP/1.1 keep-alive connections (or
//! HTTP/2 by prior knowledge, `--http2`) and reports throughput, latency and the bytes on
//! the wire per person.
//!
//! With `--accept-encoding` every answer must come in the coding the service should choose
//! (checked from `Content-Encoding`); every `--verify-every`-th answer of a connection is
//! decompressed and counted (decompressing all of them would spend the cores the service
//! is measured on).
//!
//! Every `/personer` request is a fresh draw of ids spread over the whole snapshot (a fixed
//! set of bodies would let caches flatter the figure); every PATCH sets a random language
//! of a random AKTIV person, with a user token for that person from a pool minted up front.
//! Every answer's status is checked, and a `/personer` answer must hold exactly as many
//! persons as were asked for. Latency is recorded per request in an HdrHistogram
//! (microseconds, 3 significant digits).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::net::TcpStream;

use krr::model::Spraak;
use krr::model::fnr::PersonId;

/// Which `/personer` endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Api {
    /// `/rest/v1/personer`.
    V1,
    /// `/rest/v2/personer` with `inkluderIkkeRegistrerte`.
    V2,
}

/// What to send.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// The service.
    pub target: SocketAddr,
    /// Concurrent connections (each sends one request at a time).
    pub connections: usize,
    /// Stop after this long (measured from the first request)...
    pub duration: Duration,
    /// ...or after this many requests in all, whichever comes first.
    pub requests: Option<u64>,
    /// Ids per `/personer` request.
    pub batch: usize,
    /// v1 or v2.
    pub api: Api,
    /// Percentage of requests that are PATCHes (0–100).
    pub patch_percent: u8,
    /// Ids to draw from (every person of the snapshot).
    pub ids: Arc<Vec<PersonId>>,
    /// Bearer token for `/personer`.
    pub machine_token: String,
    /// (person, bearer token with `krr:user/spraak.write` for that person) for PATCHes.
    pub user_tokens: Arc<Vec<(PersonId, String)>>,
    /// Seed of the draws.
    pub seed: u64,
    /// Keep every lookup's send time and latency ([`LoadReport::timeline`]).
    pub timeline: bool,
    /// `Accept-Encoding` to send with lookups.
    pub accept_encoding: Option<String>,
    /// The `Content-Encoding` lookups must come back in (`None`: identity).
    pub expect_encoding: Option<&'static str>,
    /// Decompress and count every n-th coded answer of a connection (the first always).
    pub verify_every: u64,
    /// HTTP/2 by prior knowledge instead of HTTP/1.1.
    pub http2: bool,
    /// The largest HTTP/2 frame the client accepts (`SETTINGS_MAX_FRAME_SIZE`; default
    /// 16 KiB).
    pub h2_frame_size: Option<u32>,
    /// After a 429 or 503 with `Retry-After`, the connection waits that long (at most
    /// 5 s) before its next request, as a well-behaved client does.
    pub honour_retry_after: bool,
}

/// One lookup of a timeline: when it was sent (Unix time, microseconds), how long its
/// answer took (microseconds), and whether it was right.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// Send time, microseconds since the Unix epoch.
    pub sent_unix_us: u64,
    /// Latency, microseconds.
    pub latency_us: u64,
    /// Status 200 with the right count.
    pub ok: bool,
}

/// Latency and counts of one kind of request.
#[derive(Clone, Debug)]
pub struct KindReport {
    /// Requests answered as expected.
    pub ok: u64,
    /// Latency of every answered request, microseconds.
    pub latency: Histogram<u64>,
}

impl KindReport {
    fn new() -> KindReport {
        KindReport {
            ok: 0,
            latency: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
        }
    }

    fn merge(&mut self, other: &KindReport) {
        self.ok += other.ok;
        self.latency.add(&other.latency).expect("same bounds");
    }

    fn summary(&self, secs: f64) -> serde_json::Value {
        let q = |q: f64| self.latency.value_at_quantile(q) as f64 / 1000.0;
        serde_json::json!({
            "ok": self.ok,
            "per_second": self.ok as f64 / secs,
            "latency_ms": {
                "p50": q(0.50), "p90": q(0.90), "p99": q(0.99), "p99_9": q(0.999),
                "max": self.latency.max() as f64 / 1000.0,
            },
        })
    }
}

/// What a run measured.
#[derive(Clone, Debug)]
pub struct LoadReport {
    /// Wall time from the first request to the last answer.
    pub elapsed: Duration,
    /// `/personer` requests.
    pub personer: KindReport,
    /// Persons returned by `/personer`.
    pub persons: u64,
    /// PATCHes answered 204.
    pub patches: KindReport,
    /// Body bytes of the `/personer` answers as received (coded or not).
    pub wire_bytes: u64,
    /// Answers decompressed and counted.
    pub verified: u64,
    /// Failures by kind (`status 503`, `count 999 != 1000`, `connection`…).
    pub errors: BTreeMap<String, u64>,
    /// Every lookup, when asked for ([`LoadOptions::timeline`]), in no particular order.
    pub timeline: Vec<Sample>,
}

impl LoadReport {
    /// All failures.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Body bytes received per person returned.
    pub fn wire_bytes_per_person(&self) -> f64 {
        self.wire_bytes as f64 / self.persons.max(1) as f64
    }

    /// The report as JSON (`--json`).
    pub fn to_json(&self, opts: &LoadOptions) -> serde_json::Value {
        let secs = self.elapsed.as_secs_f64();
        serde_json::json!({
            "connections": opts.connections,
            "batch": opts.batch,
            "api": format!("{:?}", opts.api).to_lowercase(),
            "patch_percent": opts.patch_percent,
            "seconds": secs,
            "persons_per_second": self.persons as f64 / secs,
            "protocol": if opts.http2 { "h2c" } else { "http/1.1" },
            "accept_encoding": opts.accept_encoding,
            "content_encoding": opts.expect_encoding.unwrap_or("identity"),
            "wire_bytes_per_person": self.wire_bytes_per_person(),
            "verified_answers": self.verified,
            "requests_per_second": (self.personer.ok + self.patches.ok) as f64 / secs,
            "personer": self.personer.summary(secs),
            "patch": self.patches.summary(secs),
            "errors": self.errors,
        })
    }

    /// The report for people.
    pub fn to_text(&self, opts: &LoadOptions) -> String {
        let secs = self.elapsed.as_secs_f64();
        let mut s = format!(
            "{} connections, {:.1} s, {} errors\n",
            opts.connections,
            secs,
            self.error_count()
        );
        let line = |name: &str, k: &KindReport| {
            let q = |q: f64| k.latency.value_at_quantile(q) as f64 / 1000.0;
            format!(
                "{name:<9} {:>9} ok  {:>10.0}/s  p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms\n",
                k.ok,
                k.ok as f64 / secs,
                q(0.5),
                q(0.9),
                q(0.99),
                q(0.999),
                k.latency.max() as f64 / 1000.0
            )
        };
        if self.personer.ok > 0 || opts.patch_percent < 100 {
            s.push_str(&line("personer", &self.personer));
            s.push_str(&format!(
                "persons   {:>9}     {:>10.0}/s ({} ids a request)\n",
                self.persons,
                self.persons as f64 / secs,
                opts.batch
            ));
            let per = self.wire_bytes_per_person();
            if self.wire_bytes > 0 {
                s.push_str(&format!(
                "wire      {per:>9.1} body bytes/person ({}, {}; {} answers decompressed and counted); a 10 Gbit/s link carries {:.2} M persons/s (arithmetic)\n",
                if opts.http2 { "h2c" } else { "HTTP/1.1" },
                opts.expect_encoding.unwrap_or("identity"),
                self.verified,
                10e9 / 8.0 / per.max(1.0) / 1e6,
            ));
            }
        }
        if self.patches.ok > 0 || opts.patch_percent > 0 {
            s.push_str(&line("patch", &self.patches));
        }
        for (kind, n) in &self.errors {
            s.push_str(&format!("error     {n:>9}  {kind}\n"));
        }
        s
    }
}

/// One connection's request sender.
enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl Sender {
    fn is_closed(&self) -> bool {
        match self {
            Sender::H1(s) => s.is_closed(),
            Sender::H2(s) => s.is_closed(),
        }
    }

    async fn ready(&mut self) -> hyper::Result<()> {
        match self {
            Sender::H1(s) => s.ready().await,
            Sender::H2(s) => s.ready().await,
        }
    }

    async fn send(
        &mut self,
        req: Request<Full<Bytes>>,
    ) -> hyper::Result<hyper::Response<hyper::body::Incoming>> {
        match self {
            Sender::H1(s) => s.send_request(req).await,
            Sender::H2(s) => s.send_request(req).await,
        }
    }
}

async fn connect(
    addr: SocketAddr,
    http2: bool,
    h2_frame_size: Option<u32>,
) -> std::io::Result<Sender> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let io = hyper_util::rt::TokioIo::new(stream);
    if http2 {
        let (sender, conn) =
            hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .initial_stream_window_size(1 << 20)
                .initial_connection_window_size(4 << 20)
                .max_frame_size(h2_frame_size)
                .handshake(io)
                .await
                .map_err(std::io::Error::other)?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        return Ok(Sender::H2(sender));
    }
    let (sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(Sender::H1(sender))
}

/// `bytes` decoded from `coding`.
fn decode(coding: &str, bytes: &[u8]) -> Result<Vec<u8>, String> {
    match coding {
        "zstd" => zstd::stream::decode_all(bytes).map_err(|e| format!("zstd: {e}")),
        "gzip" => {
            let mut d = libdeflater::Decompressor::new();
            let size = bytes
                .len()
                .checked_sub(4)
                .and_then(|at| bytes.get(at..))
                .map_or(0, |t| {
                    u32::from_le_bytes(t.try_into().expect("4 bytes")) as usize
                });
            let mut out = vec![0; size];
            let n = d
                .gzip_decompress(bytes, &mut out)
                .map_err(|e| format!("gzip: {e}"))?;
            out.truncate(n);
            Ok(out)
        }
        other => Err(format!("unexpected coding {other}")),
    }
}

/// Draws `n` ids uniformly from `ids` into `out` (cleared first), with the same sequence of
/// random numbers as one `ids[rng.random_range(0..len)]` per id. The picks are prefetched
/// before they are read: an id list of millions does not fit in cache, and a load tool
/// that waits for DRAM on every id steals the cores it shares with the service.
pub fn draw(ids: &[PersonId], n: usize, rng: &mut ChaCha8Rng, out: &mut Vec<PersonId>) {
    const AHEAD: usize = 64;
    let mut at = [0usize; AHEAD];
    out.clear();
    let mut left = n;
    while left > 0 {
        let k = left.min(AHEAD);
        for slot in &mut at[..k] {
            *slot = rng.random_range(0..ids.len());
            krr::snapshot::prefetch_read(std::ptr::from_ref(&ids[*slot]).cast());
        }
        out.extend(at[..k].iter().map(|&i| ids[i]));
        left -= k;
    }
}

/// Runs the load and returns what it measured.
pub async fn run(opts: LoadOptions) -> anyhow::Result<LoadReport> {
    anyhow::ensure!(!opts.ids.is_empty(), "no ids to draw from");
    anyhow::ensure!(
        opts.patch_percent == 0 || !opts.user_tokens.is_empty(),
        "PATCHes asked for, but no user tokens"
    );
    let opts = Arc::new(opts);
    let started = Instant::now();
    let epoch_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64;
    let deadline = started + opts.duration;
    let budget = Arc::new(std::sync::atomic::AtomicU64::new(
        opts.requests.unwrap_or(u64::MAX),
    ));
    let mut tasks = Vec::new();
    for c in 0..opts.connections {
        let opts = opts.clone();
        let budget = budget.clone();
        tasks.push(tokio::spawn(async move {
            connection(&opts, c as u64, (started, epoch_us), deadline, &budget).await
        }));
    }
    let mut report = LoadReport {
        elapsed: Duration::ZERO,
        personer: KindReport::new(),
        persons: 0,
        patches: KindReport::new(),
        wire_bytes: 0,
        verified: 0,
        errors: BTreeMap::new(),
        timeline: Vec::new(),
    };
    for t in tasks {
        let r = t.await?;
        report.personer.merge(&r.personer);
        report.patches.merge(&r.patches);
        report.persons += r.persons;
        report.wire_bytes += r.wire_bytes;
        report.verified += r.verified;
        for (k, n) in r.errors {
            *report.errors.entry(k).or_default() += n;
        }
        report.timeline.extend(r.timeline);
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

async fn connection(
    opts: &LoadOptions,
    n: u64,
    (started, epoch_us): (Instant, u64),
    deadline: Instant,
    budget: &std::sync::atomic::AtomicU64,
) -> LoadReport {
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed ^ (n.wrapping_mul(0x9e37_79b9_7f4a_7c15)));
    let mut report = LoadReport {
        elapsed: Duration::ZERO,
        personer: KindReport::new(),
        persons: 0,
        patches: KindReport::new(),
        wire_bytes: 0,
        verified: 0,
        errors: BTreeMap::new(),
        timeline: Vec::new(),
    };
    let fail = |report: &mut LoadReport, kind: String| {
        *report.errors.entry(kind).or_default() += 1;
    };
    let path = match opts.api {
        Api::V1 => "/rest/v1/personer",
        Api::V2 => "/rest/v2/personer",
    };
    let machine_auth = format!("Bearer {}", opts.machine_token);
    // HTTP/2 requests carry the authority in the URI (hyper's h2 client needs one).
    let base = if opts.http2 {
        format!("http://{}", opts.target)
    } else {
        String::new()
    };
    let uri = format!("{base}{path}");
    let patch_uri = format!("{base}/rest/v1/person");
    let mut coded_answers = 0u64;
    let mut sender: Option<Sender> = None;
    let mut body = Vec::with_capacity(opts.batch * 15 + 64);
    let mut picks = Vec::with_capacity(opts.batch);
    while Instant::now() < deadline {
        if budget
            .fetch_update(
                std::sync::atomic::Ordering::Relaxed,
                std::sync::atomic::Ordering::Relaxed,
                |b| b.checked_sub(1),
            )
            .is_err()
        {
            break;
        }
        let s = match sender.as_mut() {
            Some(s) if !s.is_closed() => s,
            _ => match connect(opts.target, opts.http2, opts.h2_frame_size).await {
                Ok(s) => sender.insert(s),
                Err(e) => {
                    fail(&mut report, format!("connect: {}", e.kind()));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        if s.ready().await.is_err() {
            fail(&mut report, "connection closed by the server".into());
            sender = None;
            continue;
        }
        let patch = opts.patch_percent > 0 && rng.random_range(0..100u8) < opts.patch_percent;
        let req = if patch {
            let (_, token) = &opts.user_tokens[rng.random_range(0..opts.user_tokens.len())];
            let spraak = Spraak::ALL[rng.random_range(0..4)];
            let mut req = Request::builder().method(Method::PATCH).uri(&patch_uri);
            if !opts.http2 {
                req = req.header("host", "krr");
            }
            req.header("authorization", format!("Bearer {token}"))
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(format!(
                    r#"{{"spraak":"{}"}}"#,
                    spraak.as_str()
                ))))
        } else {
            body.clear();
            body.extend_from_slice(b"{\"personidentifikatorer\":[");
            draw(&opts.ids, opts.batch, &mut rng, &mut picks);
            for (i, id) in picks.iter().enumerate() {
                if i > 0 {
                    body.push(b',');
                }
                body.push(b'"');
                body.extend_from_slice(&id.digits());
                body.push(b'"');
            }
            body.extend_from_slice(b"]");
            if opts.api == Api::V2 {
                body.extend_from_slice(b",\"inkluderIkkeRegistrerte\":true");
            }
            body.push(b'}');
            let mut req = Request::builder()
                .method(Method::POST)
                .uri(&uri)
                .header("authorization", &machine_auth)
                .header("content-type", "application/json");
            if !opts.http2 {
                req = req.header("host", "krr");
            }
            if let Some(ae) = &opts.accept_encoding {
                req = req.header("accept-encoding", ae);
            }
            req.body(Full::new(Bytes::copy_from_slice(&body)))
        }
        .expect("valid request");
        let sent = Instant::now();
        let mut retry_after = None;
        let answer = async {
            let resp = s.send(req).await?;
            let status = resp.status();
            retry_after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            let coding = resp
                .headers()
                .get("content-encoding")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let bytes = resp.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((status, coding, bytes))
        }
        .await;
        let micros = sent.elapsed().as_micros() as u64;
        let failures = report.error_count();
        match answer {
            Err(e) => {
                fail(&mut report, format!("connection: {e}"));
                sender = None;
            }
            Ok((status, _, bytes)) if patch => {
                if status == StatusCode::NO_CONTENT {
                    report.patches.ok += 1;
                    let _ = report.patches.latency.record(micros.max(1));
                } else {
                    fail(&mut report, format!("PATCH status {}", status.as_u16()));
                }
                drop(bytes);
            }
            Ok((status, coding, bytes)) => {
                report.wire_bytes += bytes.len() as u64;
                let counted = if status != StatusCode::OK {
                    Err(format!("personer status {}", status.as_u16()))
                } else if coding.as_deref() != opts.expect_encoding
                    // Small answers stay identity whatever was asked.
                    && !(coding.is_none() && bytes.len() < krr::http::coding::MIN_SIZE)
                {
                    Err(format!(
                        "personer answer in {}, not {}",
                        coding.as_deref().unwrap_or("identity"),
                        opts.expect_encoding.unwrap_or("identity")
                    ))
                } else if let Some(coding) = coding {
                    coded_answers += 1;
                    // Counted on a sample; the rest are trusted to hold the batch.
                    if (coded_answers - 1).is_multiple_of(opts.verify_every.max(1)) {
                        report.verified += 1;
                        decode(&coding, &bytes).map(|plain| {
                            memchr::memmem::find_iter(&plain, b"\"personidentifikator\"").count()
                        })
                    } else {
                        Ok(opts.batch)
                    }
                } else {
                    Ok(memchr::memmem::find_iter(&bytes, b"\"personidentifikator\"").count())
                };
                match counted {
                    Err(e) => fail(&mut report, e),
                    Ok(count) if count != opts.batch => fail(
                        &mut report,
                        format!("personer answer holds {count} persons, not {}", opts.batch),
                    ),
                    Ok(count) => {
                        report.personer.ok += 1;
                        report.persons += count as u64;
                        let _ = report.personer.latency.record(micros.max(1));
                    }
                }
            }
        }
        if opts.timeline && !patch {
            report.timeline.push(Sample {
                sent_unix_us: epoch_us + sent.duration_since(started).as_micros() as u64,
                latency_us: micros,
                ok: report.error_count() == failures,
            });
        }
        if let Some(secs) = retry_after.filter(|_| opts.honour_retry_after) {
            // Shed or over quota: come back when told (the refusal is counted as an error).
            let wait = Duration::from_secs(secs.min(5));
            let left = deadline.saturating_duration_since(Instant::now());
            tokio::time::sleep(wait.min(left)).await;
        }
    }
    report
}
