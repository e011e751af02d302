//! Three `krr serve` replicas sharing a PostgreSQL journal and an S3 bucket, all on
//! 127.0.0.1, as issue 7 asks:
//!
//! - a snapshot published once reaches all three;
//! - a PATCH through one replica is seen by the other two within a bounded time (measured
//!   and printed: run with `--nocapture` to see the figures);
//! - killing a replica loses nothing it acknowledged;
//! - restarting PostgreSQL makes PATCHes fail with 503 while reads keep working, and they
//!   resume afterwards;
//! - `snapshot build --journal-url` folds the journal, the published fold reaches all three
//!   with nothing lost, and `journal compact --journal-url` trims the table;
//! - a corrupt object behind the pointer is refused while the served snapshot stays.
//!
//! PostgreSQL (initdb, pg_ctl; Debian's `postgresql-15`) runs as the `postgres` user when
//! the test runs as root. The S3 server is `s3s` in this process (a dev-dependency).
//!
//! Longer than 500 lines on purpose: one end-to-end scenario whose steps build on each
//! other (the same PostgreSQL, bucket and replicas throughout), and its harness.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hyper::{Method, StatusCode};

use crate::common::http::*;

const READ: &str = "krr:user/kontaktinformasjon.read";
const WRITE: &str = "krr:user/spraak.write";
const LANGS: [&str; 4] = ["nb", "nn", "en", "se"];

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn is_root() -> bool {
    let out = Command::new("id").arg("-u").output().expect("id -u runs");
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

/// A PostgreSQL program: the Debian cluster's, or the one on PATH.
fn pg_bin(name: &str) -> PathBuf {
    for dir in ["/usr/lib/postgresql/15/bin", "/usr/local/bin", "/usr/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!(
        "PostgreSQL's {name} is not installed: tests/it/replicas.rs needs PostgreSQL 15's \
         programs (apt-get install postgresql-15)"
    );
}

/// A throw-away PostgreSQL cluster on a free port.
struct Postgres {
    data: PathBuf,
    port: u16,
    as_postgres: bool,
}

impl Postgres {
    fn command(&self, program: &str) -> Command {
        let mut c = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(pg_bin(program));
            c
        } else {
            Command::new(pg_bin(program))
        };
        c.stdout(Stdio::null()).stderr(Stdio::piped());
        c
    }

    fn run(&self, mut c: Command, what: &str) {
        let out = c.output().unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(
            out.status.success(),
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn init(dir: &Path) -> Postgres {
        let as_postgres = is_root();
        let data = dir.join("pg");
        std::fs::create_dir(&data).unwrap();
        if as_postgres {
            // The cluster belongs to `postgres`, who must be able to reach it.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
            let ok = Command::new("chown")
                .arg("postgres:postgres")
                .arg(&data)
                .status()
                .unwrap();
            assert!(ok.success(), "chown postgres");
        }
        let pg = Postgres {
            data,
            port: free_port(),
            as_postgres,
        };
        let mut c = pg.command("initdb");
        c.arg("-D").arg(&pg.data).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
        ]);
        pg.run(c, "initdb");
        pg.start();
        pg
    }

    fn start(&self) {
        let mut c = self.command("pg_ctl");
        c.arg("-D")
            .arg(&self.data)
            .arg("-o")
            .arg(format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1",
                self.port,
                self.data.display()
            ))
            .arg("-l")
            .arg(self.data.join("server.log"))
            .args(["-w", "-t", "60", "start"]);
        self.run(c, "pg_ctl start");
    }

    fn stop(&self, mode: &str) {
        let mut c = self.command("pg_ctl");
        c.arg("-D")
            .arg(&self.data)
            .args(["-m", mode, "-w", "-t", "60", "stop"]);
        self.run(c, "pg_ctl stop");
    }

    /// Sends `sig` to the postmaster and every backend (STOP: the database hangs).
    fn signal(&self, sig: &str) {
        let pidfile = std::fs::read_to_string(self.data.join("postmaster.pid")).unwrap();
        let pid = pidfile.lines().next().unwrap().trim().to_string();
        let _ = Command::new("pkill")
            .args([&format!("-{sig}"), "-P", &pid])
            .status();
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &pid])
            .status()
            .unwrap();
        assert!(ok.success(), "kill -{sig} the postmaster");
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let mut c = self.command("pg_ctl");
        c.arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"]);
        let _ = c.output();
    }
}

/// An S3 server in this process: `s3s` with its file-system backend (a dev-dependency, so
/// `cargo test` needs no outside program), on 127.0.0.1:0 with one bucket and the
/// credentials `test`/`test` (signatures are checked). It runs on a thread and runtime of
/// its own, so nothing the test blocks on can stall it; it stops when dropped.
struct S3 {
    port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _root: tempfile::TempDir,
}

impl S3 {
    async fn start(bucket: &str) -> S3 {
        let root = tempfile::tempdir().unwrap();
        // A bucket of the file-system backend is a directory of its root.
        std::fs::create_dir(root.path().join(bucket)).unwrap();
        let service = {
            let fs = s3s_fs::FileSystem::new(root.path()).unwrap();
            let mut b = s3s::service::S3ServiceBuilder::new(fs);
            b.set_auth(s3s::auth::SimpleAuth::from_single("test", "test"));
            b.build()
        };
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("s3".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                    loop {
                        tokio::select! {
                            r = listener.accept() => {
                                let Ok((socket, _)) = r else { continue };
                                let service = service.clone();
                                tokio::spawn(async move {
                                    let _ = hyper::server::conn::http1::Builder::new()
                                        .serve_connection(hyper_util::rt::TokioIo::new(socket), service)
                                        .await;
                                });
                            }
                            _ = &mut stopped => break,
                        }
                    }
                });
            })
            .unwrap();
        S3 {
            port,
            stop: Some(stop),
            _root: root,
        }
    }

    /// Writes an object of bucket `krr` behind the service's back.
    async fn put_signed(&self, key: &str, body: Vec<u8>) {
        use object_store::ObjectStore;
        let mut b = object_store::aws::AmazonS3Builder::new().with_bucket_name("krr");
        for (k, v) in self.env() {
            b = b.with_config(k.to_ascii_lowercase().parse().unwrap(), v);
        }
        b.build()
            .unwrap()
            .put(&object_store::path::Path::from(key), body.into())
            .await
            .unwrap();
    }

    /// Uploads `body` as snapshot `id` and points `CURRENT` at it, claiming `size` bytes,
    /// past `publish` (which would verify it).
    async fn point_at(&self, id: &str, body: Vec<u8>, size: usize, build_time: i64) {
        self.put_signed(&format!("prod/snapshots/{id}.krr"), body)
            .await;
        let pointer = serde_json::json!({
            "id": id,
            "key": format!("snapshots/{id}.krr"),
            "size": size,
            "build_time": build_time,
        });
        self.put_signed("prod/CURRENT", pointer.to_string().into_bytes())
            .await;
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ENDPOINT", format!("http://127.0.0.1:{}", self.port)),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// `krr snapshot build` of `export` at `build_time` (RFC 3339) into `out`.
fn build(export: &str, out: &str, build_time: &str) {
    let args = ["snapshot", "build", "--input", export, "--out", out];
    krr(
        &[&args[..], &["--build-time", build_time]].concat(),
        &[],
        true,
    );
}

/// `krr snapshot publish` of `file` to the test bucket; returns stderr.
fn publish(file: &Path, env: &[(&str, String)], ok: bool) -> String {
    let file = file.to_str().unwrap();
    krr(
        &["snapshot", "publish", file, "--to", "s3://krr/prod"],
        env,
        ok,
    )
}

/// Runs the `krr` CLI with `env`; returns stderr, asserting success when `ok`.
fn krr(args: &[&str], env: &[(&str, String)], ok: bool) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_krr"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("KRR_LOG", "info")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.success(), ok, "krr {args:?}: {err}");
    err
}

struct Replica {
    bin: Binary,
    dir: PathBuf,
}

fn spawn_replica(dir: &Path, pg: &Postgres, s3: &S3) -> Replica {
    std::fs::create_dir_all(dir).unwrap();
    let url = pg.url();
    let env = s3.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let bin = spawn_serve_env(
        dir,
        &[
            "--journal-url",
            &url,
            "--snapshot-url",
            "s3://krr/prod",
            "--snapshot-poll",
            "0.1",
        ],
        &env,
        "debug",
    );
    Replica {
        bin,
        dir: dir.to_owned(),
    }
}

async fn metrics(r: &Replica) -> String {
    let a = call(r.bin.admin, Method::GET, "/metrics", &[], Vec::<u8>::new()).await;
    String::from_utf8(a.body).unwrap()
}

/// The replica's `krr_snapshot_refusals_total`.
async fn refusals(r: &Replica) -> f64 {
    metric(&metrics(r).await, "krr_snapshot_refusals_total", "").unwrap_or(0.0)
}

/// Waits until the replica has refused more snapshots than `before`.
async fn until_refused(r: &Replica, before: f64) {
    let started = Instant::now();
    while refusals(r).await <= before {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no refusal counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn serves(r: &Replica, id: &str) -> bool {
    metric(
        &metrics(r).await,
        "krr_snapshot_info",
        &format!("id=\"{id}\""),
    ) == Some(1.0)
}

async fn language(addr: SocketAddr, pid: &str) -> Option<String> {
    language_as(addr, &format!("Bearer {}", user(READ, pid))).await
}

/// `language` with the Authorization header made already (minting a token takes longer
/// than the lag being measured).
async fn language_as(addr: SocketAddr, auth: &str) -> Option<String> {
    let a = try_call(
        addr,
        Method::GET,
        "/rest/v1/person",
        &[("Authorization", auth)],
        Vec::<u8>::new(),
    )
    .await?;
    if a.status != StatusCode::OK {
        return None;
    }
    a.json()["spraak"].as_str().map(str::to_string)
}

async fn patch(addr: SocketAddr, pid: &str, lang: &str) -> Option<Answer> {
    let auth = format!("Bearer {}", user(WRITE, pid));
    try_call(
        addr,
        Method::PATCH,
        "/rest/v1/person",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        format!(r#"{{"spraak":"{lang}"}}"#),
    )
    .await
}

/// Waits until `addr` shows `lang` for `pid`; returns how long that took.
async fn until_seen(addr: SocketAddr, pid: &str, lang: &str, limit: Duration) -> Duration {
    let auth = format!("Bearer {}", user(READ, pid));
    seen_since(Instant::now(), addr, &auth, lang, limit).await
}

/// Waits until `addr` shows `lang` to a reader authorised by `auth`; returns the time
/// since `started`.
async fn seen_since(
    started: Instant,
    addr: SocketAddr,
    auth: &str,
    lang: &str,
    limit: Duration,
) -> Duration {
    loop {
        if language_as(addr, auth).await.as_deref() == Some(lang) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "a change was not seen on {addr} within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A language other than `current`.
fn other(current: &str, i: usize) -> &'static str {
    let mut l = LANGS[i % 4];
    if l == current {
        l = LANGS[(i + 1) % 4];
    }
    l
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_share_a_journal_and_a_bucket() {
    crate::common::init_logs();
    let work = tempfile::tempdir().unwrap();
    let root = work.path();
    let pg = Postgres::init(root);
    let s3 = S3::start("krr").await;
    let env = s3.env();
    let export = fixture("register-v1.jsonl");
    let export = export.to_str().unwrap();
    // AKTIV persons of the export: the ones whose language can change.
    let pids: Vec<String> = crate::common::source_values(Path::new(export))
        .iter()
        .filter(|v| v["status"] == "AKTIV")
        .map(|v| v["personidentifikator"].as_str().unwrap().to_string())
        .collect();
    assert!(pids.len() >= 45, "{} AKTIV persons", pids.len());

    // The schema by hand first (the service would create it too), then three replicas with
    // nothing to serve yet.
    krr(&["journal", "init", "--journal-url", &pg.url()], &env, true);
    let mut replicas: Vec<Replica> = (1..=3)
        .map(|i| spawn_replica(&root.join(format!("r{i}")), &pg, &s3))
        .collect();
    for r in &replicas {
        assert_eq!(
            readiness(r.bin.admin).await,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    // A corrupt file is never uploaded.
    let bad = root.join("bad.krr");
    let mut bytes = std::fs::read(fixture("register-v2.krr")).unwrap();
    let n = bytes.len();
    bytes[n - 100] ^= 0xff;
    std::fs::write(&bad, &bytes).unwrap();
    let err = publish(&bad, &env, false);
    assert!(err.contains("checksum"), "{err}");

    // One publish reaches all three.
    let first = root.join("first.krr");
    build(export, first.to_str().unwrap(), "2026-11-01T00:00:00Z");
    let published = Instant::now();
    let err = publish(&first, &env, true);
    let first_id = err.split_whitespace().nth(1).unwrap().to_string();
    let mut reached = Vec::new();
    for r in &replicas {
        while !serves(r, &first_id).await {
            assert!(
                published.elapsed() < Duration::from_secs(30),
                "the published snapshot did not reach {}",
                r.bin.api
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        reached.push(published.elapsed());
    }
    eprintln!("publish → served on all three: {reached:?}");

    // Replication lag: a PATCH through replica 1, seen on 2 and 3.
    let (a1, a2, a3) = (
        replicas[0].bin.api,
        replicas[1].bin.api,
        replicas[2].bin.api,
    );
    let mut lags = Vec::new();
    for i in 0..40 {
        let pid = &pids[i % 10];
        let current = language(a1, pid).await.unwrap_or_default();
        let lang = other(&current, i);
        let auth = format!("Bearer {}", user(READ, pid));
        let a = patch(a1, pid, lang).await.unwrap();
        assert_eq!(a.status, StatusCode::NO_CONTENT);
        let acked = Instant::now();
        let limit = Duration::from_secs(5);
        let (l2, l3) = tokio::join!(
            seen_since(acked, a2, &auth, lang, limit),
            seen_since(acked, a3, &auth, lang, limit)
        );
        // Read-your-writes on the replica that took it.
        assert_eq!(language(a1, pid).await.as_deref(), Some(lang));
        lags.push(l2);
        lags.push(l3);
    }
    lags.sort();
    eprintln!(
        "replication lag (204 on replica 1 → visible on 2 and 3), {} samples: p50 {:?}, p95 {:?}, max {:?}",
        lags.len(),
        percentile(&lags, 0.5),
        percentile(&lags, 0.95),
        lags.last().unwrap()
    );

    // The followers' connections cut (their NOTIFYs lost with them) while replica 1 takes
    // changes: reading by sequence number after the reconnect misses none.
    let (db, conn) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let cut = db
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
              WHERE application_name = 'krr-follower'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(cut.len(), 3, "one listening connection a replica");
    let mut changed = Vec::new();
    for (i, pid) in pids[40..44].iter().enumerate() {
        let current = language(a1, pid).await.unwrap_or_default();
        let lang = other(&current, i);
        assert_eq!(
            patch(a1, pid, lang).await.unwrap().status,
            StatusCode::NO_CONTENT
        );
        changed.push((pid.clone(), lang));
    }
    for (pid, lang) in &changed {
        for addr in [a2, a3] {
            until_seen(addr, pid, lang, Duration::from_secs(10)).await;
        }
    }
    let back = db
        .query(
            "SELECT 1 FROM pg_stat_activity WHERE application_name = 'krr-follower'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(back.len(), 3, "every follower reconnected");

    // Kill replica 2 while it takes PATCHes: everything it acknowledged stays.
    let victim = replicas.remove(1);
    let victim_api = victim.bin.api;
    let todo: Vec<(String, &'static str)> = {
        let mut v = Vec::new();
        for (i, pid) in pids[10..40].iter().enumerate() {
            let current = language(a1, pid).await.unwrap_or_default();
            v.push((pid.clone(), other(&current, i + 2)));
        }
        v
    };
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for chunk in todo.chunks(10) {
        let chunk = chunk.to_vec();
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            for (pid, lang) in chunk {
                match patch(victim_api, &pid, lang).await {
                    Some(a) if a.status == StatusCode::NO_CONTENT => {
                        acked.lock().unwrap().push((pid, lang));
                    }
                    _ => break,
                }
            }
        }));
    }
    let started = Instant::now();
    while acked.lock().unwrap().len() < 12 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "only {} PATCHes acknowledged",
            acked.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let Replica {
        bin: mut victim_bin,
        dir: victim_dir,
    } = victim;
    victim_bin.child.0.kill().unwrap();
    victim_bin.child.0.wait().unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 12, "{}", acked.len());
    for (pid, lang) in &acked {
        for addr in [a1, a3] {
            until_seen(addr, pid, lang, Duration::from_secs(5)).await;
        }
    }
    let restarted = spawn_replica(&victim_dir, &pg, &s3);
    assert_eq!(
        restarted.bin.startup["fields"]["snapshot"],
        first_id.as_str()
    );
    for (pid, lang) in &acked {
        assert_eq!(
            language(restarted.bin.api, pid).await.as_deref(),
            Some(*lang)
        );
    }
    eprintln!(
        "killed a replica after {} acknowledged PATCHes: all seen on the other two and on its restart",
        acked.len()
    );
    replicas.insert(1, restarted);
    let addrs: Vec<SocketAddr> = replicas.iter().map(|r| r.bin.api).collect();

    // PostgreSQL restarts: PATCH answers 503, reads go on, PATCH comes back.
    pg.stop("fast");
    let machine = scoped(ALL_SCOPES);
    let ids: Vec<&str> = pids.iter().take(20).map(String::as_str).collect();
    let pid = &pids[0];
    for &addr in &addrs {
        let started = Instant::now();
        let a = patch(addr, pid, "nb").await.unwrap();
        // Refused at connect: not made. A pooled connection the stop cut while the
        // statement was on its way: the outcome is unknown, and the answer says so.
        let message = a.json()["message"].as_str().unwrap().to_string();
        let expected = if message.contains("may or may not") {
            "the journal database did not confirm the change; it may or may not have been made, setting it again is safe"
        } else {
            "the journal database is unavailable; the change was not made, try again later"
        };
        check_error(&a, 503, expected);
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        let auth = format!("Bearer {machine}");
        let a = call(
            addr,
            Method::POST,
            "/rest/v1/personer",
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            ids_body(&ids),
        )
        .await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.json()["personer"].as_array().unwrap().len(), 20);
        assert!(language(addr, pid).await.is_some(), "a citizen read works");
    }
    let down = Instant::now();
    pg.start();
    let restarted_in = down.elapsed();
    let current = language(addrs[0], pid).await.unwrap();
    let lang = other(&current, 3);
    let mut resumed = Vec::new();
    for &addr in &addrs {
        let started = Instant::now();
        loop {
            let a = patch(addr, pid, lang).await.unwrap();
            if a.status == StatusCode::NO_CONTENT {
                break;
            }
            assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "PATCH did not resume"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        resumed.push(started.elapsed());
    }
    for &addr in &addrs {
        until_seen(addr, pid, lang, Duration::from_secs(10)).await;
    }
    eprintln!(
        "PostgreSQL restart ({restarted_in:?} down): PATCH 204 again after {resumed:?} on the three"
    );

    // A database that hangs (every PostgreSQL process stopped): PATCH answers 503 once
    // --journal-timeout (3 s) has passed, never later, saying the outcome is unknown; reads
    // go on.
    let hung = &pids[44];
    pg.signal("STOP");
    let started = Instant::now();
    let a = patch(addrs[1], hung, "se").await.unwrap();
    let waited = started.elapsed();
    check_error(
        &a,
        503,
        "the journal database did not confirm the change; it may or may not have been made, setting it again is safe",
    );
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(6),
        "{waited:?}"
    );
    assert!(language(addrs[1], pid).await.is_some(), "reads go on");
    pg.signal("CONT");
    let started = Instant::now();
    loop {
        let a = patch(addrs[1], hung, "nn").await.unwrap();
        if a.status == StatusCode::NO_CONTENT {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "PATCH did not resume"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for &addr in &addrs {
        until_seen(addr, hung, "nn", Duration::from_secs(10)).await;
    }
    eprintln!("hung database: PATCH answered 503 after {waited:?}");

    // The nightly fold from the database, published once: all three serve it, the overlay
    // empties, every change is still answered.
    let mut expected: Vec<(String, Option<String>)> = Vec::new();
    for p in &pids[..40] {
        expected.push((p.clone(), language(addrs[0], p).await));
    }
    // Replica 3 is down through the nightly run (publish and compaction).
    let Replica {
        bin: mut down_bin,
        dir: down_dir,
    } = replicas.pop().unwrap();
    down_bin.child.0.kill().unwrap();
    down_bin.child.0.wait().unwrap();

    // tools/nightly in its replicated mode: build with the database's journal, publish
    // once, wait for every running replica to serve it, then compact the table.
    let mut nightly = Command::new("tools/nightly");
    nightly
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["--export", export, "--journal-url", &pg.url()])
        .args(["--publish", "s3://krr/prod", "--wait", "30"])
        .args(["--krr", env!("CARGO_BIN_EXE_krr")])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("KRR_LOG", "info");
    for r in &replicas {
        nightly.args(["--admin", &r.bin.admin.to_string()]);
    }
    let published = Instant::now();
    let out = nightly.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let said = format!("{}{err}", String::from_utf8_lossy(&out.stdout));
    assert!(out.status.success(), "tools/nightly failed: {said}");
    assert!(said.contains("folded up to sequence"), "{said}");
    assert!(said.contains("journal rows removed"), "{said}");
    let folded_id = said
        .lines()
        .find_map(|l| l.strip_prefix("published ")?.split_whitespace().next())
        .expect("the publish line")
        .to_string();
    eprintln!(
        "tools/nightly (build with the journal, publish, both running replicas serve it, compact): {:?}",
        published.elapsed()
    );
    for r in &replicas {
        assert!(serves(r, &folded_id).await);
        assert_eq!(
            metric(&metrics(r).await, "krr_overlay_entries", ""),
            Some(0.0)
        );
    }
    let out = Command::new(env!("CARGO_BIN_EXE_krr"))
        .args(["journal", "inspect", "--journal-url", &pg.url()])
        .output()
        .unwrap();
    let out = String::from_utf8(out.stdout).unwrap();
    assert!(out.starts_with("records 0 "), "{out}");
    // Replica 3 comes back: it fetches the fold before it reads its directory, so it never
    // serves its older snapshot without the compacted rows.
    let back = spawn_replica(&down_dir, &pg, &s3);
    assert_eq!(back.bin.startup["fields"]["snapshot"], folded_id.as_str());
    replicas.push(back);
    let addrs: Vec<SocketAddr> = replicas.iter().map(|r| r.bin.api).collect();
    for (p, lang) in &expected {
        for &addr in &addrs {
            assert_eq!(&language(addr, p).await, lang);
        }
    }
    // The sequence goes on after the compaction, and still replicates.
    let lang = other(expected[0].1.as_deref().unwrap_or_default(), 1);
    assert_eq!(
        patch(addrs[2], &expected[0].0, lang).await.unwrap().status,
        StatusCode::NO_CONTENT
    );
    until_seen(addrs[0], &expected[0].0, lang, Duration::from_secs(5)).await;

    // The change feed: every replica gives the same full copy, page by page, with the same
    // sisteEndringsId (one reservation per snapshot in the shared journal, made by the
    // first replica to swap and read by the others).
    let feed_token = format!(
        "Bearer {}",
        scoped(&format!("krr:global/hentendring.read {ALL_SCOPES}"))
    );
    let copy_of = |addr: SocketAddr| {
        let feed_token = feed_token.clone();
        async move {
            let mut fra = 0u64;
            let mut pages = Vec::new();
            loop {
                let a = call(
                    addr,
                    Method::POST,
                    "/rest/v2/krr/hentEndringer",
                    &[
                        ("Authorization", &feed_token),
                        ("Content-Type", "application/json"),
                    ],
                    format!("{{\"fraEndringsId\":{fra}}}"),
                )
                .await;
                assert_eq!(
                    a.status,
                    StatusCode::OK,
                    "{}",
                    String::from_utf8_lossy(&a.body)
                );
                let v = a.json();
                let til = v["tilEndringsId"].as_u64().unwrap();
                let siste = v["sisteEndringsId"].as_u64().unwrap();
                pages.push(v);
                if til == siste {
                    return pages;
                }
                fra = til;
            }
        }
    };
    let started = Instant::now();
    let reference = loop {
        let first = copy_of(addrs[0]).await;
        let mut same = true;
        for &addr in &addrs[1..] {
            same &= copy_of(addr).await == first;
        }
        if same {
            break first;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the replicas' feeds differ after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let listed: usize = reference
        .iter()
        .map(|p| p["list"].as_array().unwrap().len())
        .sum();
    assert!(
        listed >= pids.len(),
        "{listed} entries for {} AKTIV persons",
        pids.len()
    );
    eprintln!(
        "change feed: the three replicas give the same {} pages ({listed} entries)",
        reference.len()
    );

    let mut refusals_before = Vec::new();
    for r in &replicas {
        refusals_before.push(refusals(r).await);
    }
    // An older snapshot is not published over a newer one.
    let err = publish(&first, &env, false);
    assert!(err.contains("CURRENT names a newer snapshot"), "{err}");

    // A corrupt object behind the pointer (a build dated after the nightly one, damaged
    // after `publish` would have verified it, written straight to the bucket): refused,
    // the fold stays served.
    let newer = root.join("newer.krr");
    let soon = chrono::DateTime::from_timestamp(krr::model::time::Timestamp::now().0 + 60, 0)
        .unwrap()
        .to_rfc3339();
    build(export, newer.to_str().unwrap(), &soon);
    let mut junk = std::fs::read(&newer).unwrap();
    let n = junk.len();
    junk[n / 2] ^= 0x55;
    s3.point_at("00000000deadbeef", junk.clone(), junk.len(), 1_900_000_000)
        .await;
    for (r, before) in replicas.iter().zip(refusals_before) {
        until_refused(r, before).await;
        assert!(serves(r, &folded_id).await);
        assert_eq!(readiness(r.bin.admin).await, StatusCode::OK);
    }

    // A pointer whose size is not its object's (a truncated upload): refused without a
    // swap, counted, not fetched again.
    let mut refused = Vec::new();
    for r in &replicas {
        refused.push(refusals(r).await);
    }
    let short_id = "00000000deadbee2";
    s3.point_at(short_id, junk.clone(), junk.len() + 1, 1_900_000_001)
        .await;
    for (r, before) in replicas.iter().zip(refused.iter().copied()) {
        until_refused(r, before).await;
        assert!(serves(r, &folded_id).await);
        let left: Vec<String> = std::fs::read_dir(r.dir.join("snapshots"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.contains(short_id))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
    // Not fetched again at the next polls.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (r, before) in replicas.iter().zip(&refused) {
        assert_eq!(refusals(r).await, before + 1.0);
    }

    // A pointer that is not one: logged, retried, the fold stays served.
    s3.put_signed("prod/CURRENT", b"{not json".to_vec()).await;
    for r in &replicas {
        let started = Instant::now();
        while !r
            .bin
            .lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("the CURRENT pointer is not valid"))
        {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "no warning logged"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(serves(r, &folded_id).await);
    }

    // No replica logged a personal number.
    for r in &replicas {
        let lines = r.bin.lines.lock().unwrap();
        for l in lines.iter() {
            assert!(
                !has_personal_number(l),
                "a log line holds a personal number"
            );
        }
    }
}
