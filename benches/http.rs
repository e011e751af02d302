//! The full HTTP path in process: the real server on loopback (`krr::app::prepare`, the
//! same accept loop, routes, token check and rendering as `krr serve`), a hyper client on a
//! kept-alive connection in the bench. `POST /rest/v1/personer` with batches of 1, 100 and
//! 1000 ids, all groups, a fresh draw of ids across the whole snapshot for every request.
//! The library-level batch (no HTTP) is `benches/batch.rs`.

// Test and bench code: a panic is the run failing, with its line; casts are on small
// counts and measured values.
#![allow(
    clippy::unwrap_used,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use krr::app::{Config, prepare};
use krr::auth::JwksSource;
use krr::dev::mint::{MintOptions, mint};
use krr::model::fnr::PersonId;
use krr::snapshot::Snapshot;

const SCOPES: &str = "krr:global/kontaktinformasjon.read krr:global/digitalpost.read";

fn body(ids: &[PersonId], n: usize, rng: &mut ChaCha8Rng) -> Bytes {
    let mut b = Vec::with_capacity(n * 15 + 32);
    b.extend_from_slice(b"{\"personidentifikatorer\":[");
    for i in 0..n {
        if i > 0 {
            b.push(b',');
        }
        b.push(b'"');
        b.extend_from_slice(&ids[rng.random_range(0..ids.len())].digits());
        b.push(b'"');
    }
    b.extend_from_slice(b"]}");
    Bytes::from(b)
}

fn http(c: &mut Criterion) {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keys");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let token = mint(
        &std::fs::read(fixtures.join("issuer-rsa.pem")).unwrap(),
        &MintOptions {
            scope: SCOPES.into(),
            kid: Some("test-rsa".into()),
            ttl: 24 * 3600,
            ..MintOptions::default()
        },
    )
    .unwrap();
    let auth = format!("Bearer {token}");
    let mut g = c.benchmark_group("http_personer_all_groups");
    for n in common::sizes() {
        let file = common::snapshot(n);
        let ids: Vec<PersonId> = Snapshot::open(&file).unwrap().ids().collect();
        // The service's directory holds a link to the bench snapshot (no copy).
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("snapshots")).unwrap();
        std::os::unix::fs::symlink(&file, dir.path().join("snapshots/bench.krr")).unwrap();
        let config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            snapshot_dir: dir.path().join("snapshots"),
            jwks: Some(JwksSource::File(fixtures.join("jwks.json"))),
            issuers: vec!["https://maskinporten.no/".into()],
            jwks_refresh: Duration::from_secs(3600),
            journal_dir: dir.path().join("journal"),
            admin_listen: None,
            watch: false,
            ..Config::default()
        };
        let prepared = rt.block_on(prepare(&config)).unwrap();
        let addr = prepared.listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = rt.spawn(krr::http::run(
            prepared.listener,
            Arc::clone(&prepared.state),
            async {
                let _ = stopped.await;
            },
        ));
        let mut sender = Some(rt.block_on(async {
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            stream.set_nodelay(true).unwrap();
            let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.unwrap();
            tokio::spawn(conn);
            sender
        }));
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for batch in [1usize, 100, 1000] {
            g.throughput(Throughput::Elements(batch as u64));
            g.bench_function(format!("{batch}/{}", common::label(n)), |b| {
                b.iter_custom(|iters| {
                    // Bodies are drawn outside the timed part. The client runs as a task of
                    // the server's runtime (as a client on another machine would not share
                    // the bench thread), so a request costs no extra thread hand-over.
                    let bodies: Vec<Bytes> =
                        (0..iters).map(|_| body(&ids, batch, &mut rng)).collect();
                    let mut s = sender.take().expect("the connection is back");
                    let auth = auth.clone();
                    let (s, total) = rt.block_on(async move {
                        tokio::spawn(async move {
                            let mut total = Duration::ZERO;
                            for body in bodies {
                                let req = Request::post("/rest/v1/personer")
                                    .header("host", "krr")
                                    .header("authorization", &auth)
                                    .header("content-type", "application/json")
                                    .body(Full::new(body))
                                    .unwrap();
                                let started = Instant::now();
                                s.ready().await.unwrap();
                                let resp = s.send_request(req).await.unwrap();
                                let status = resp.status();
                                let bytes = resp.into_body().collect().await.unwrap().to_bytes();
                                total += started.elapsed();
                                assert_eq!(status, 200);
                                let count =
                                    memchr::memmem::find_iter(&bytes, b"\"personidentifikator\"")
                                        .count();
                                assert_eq!(count, batch);
                            }
                            (s, total)
                        })
                        .await
                        .unwrap()
                    });
                    sender = Some(s);
                    total
                })
            });
        }
        drop(sender);
        let _ = stop.send(());
        rt.block_on(server).unwrap();
    }
    g.finish();
}

criterion_group!(benches, http);
criterion_main!(benches);
