//! The HTTP test harness: the real server on 127.0.0.1:0 in process, a real client, tokens
//! signed by the fixture keys. A server can be stopped and started again on the same
//! directory (snapshots and journal), as a restart would.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{HeaderMap, Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

use krr::app::{Config, Prepared, prepare};
use krr::auth::JwksSource;
use krr::dev::mint::{MintOptions, mint};
use krr::http::{AppState, Limits};

pub const ALL_SCOPES: &str = "krr:global/kontaktinformasjon.read krr:global/digitalpost.read";

pub fn fixture(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(p)
}

pub struct Server {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub register: Vec<Value>,
    pub state: Arc<AppState>,
    pub dir: Arc<tempfile::TempDir>,
    stop: tokio::sync::oneshot::Sender<()>,
    running: tokio::task::JoinHandle<()>,
    admin_stop: tokio::sync::oneshot::Sender<()>,
    admin_running: tokio::task::JoinHandle<()>,
}

pub struct Options {
    pub with_snapshot: bool,
    pub audience: Option<String>,
    pub limits: Limits,
    pub jwks: Option<JwksSource>,
    /// Start on this directory as it is (a restart) instead of a new one.
    pub reuse: Option<Arc<tempfile::TempDir>>,
    /// The journal directory (default: `journal` in the server's directory).
    pub journal_dir: Option<PathBuf>,
    /// The journal writer's settings.
    pub journal: krr::journal::JournalOptions,
    /// Serve the API over TLS with this certificate and key (PEM files).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Per-consumer quotas.
    pub quotas: krr::http::quota::QuotaSettings,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            with_snapshot: true,
            audience: None,
            limits: Limits::default(),
            jwks: None,
            reuse: None,
            journal_dir: None,
            journal: krr::journal::JournalOptions::default(),
            tls: None,
            quotas: krr::http::quota::QuotaSettings::default(),
        }
    }
}

pub async fn start(opts: Options) -> Server {
    super::init_logs();
    let (dir, fresh) = match opts.reuse {
        Some(dir) => (dir, false),
        None => (Arc::new(tempfile::tempdir().unwrap()), true),
    };
    let snapshots = dir.path().join("snapshots");
    let mut register = Vec::new();
    if fresh {
        std::fs::create_dir(&snapshots).unwrap();
        if opts.with_snapshot {
            let (_, krr) = super::register(dir.path(), "reg", 800, 21);
            std::fs::rename(&krr, snapshots.join("reg.krr")).unwrap();
        }
    }
    let jsonl = dir.path().join("reg.jsonl");
    if jsonl.exists() {
        register = super::source_values(&jsonl);
    }
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        snapshot_dir: snapshots,
        jwks: Some(
            opts.jwks
                .unwrap_or_else(|| JwksSource::File(fixture("keys/jwks.json"))),
        ),
        issuers: vec!["https://maskinporten.no/".into()],
        audience: opts.audience,
        signing: Some((
            fixture("keys/signing-rsa.pem"),
            fixture("keys/signing-cert.pem"),
        )),
        print: Some((
            "984661185".into(),
            Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/certs/digipost.pem"),
        )),
        limits: opts.limits,
        journal_dir: opts
            .journal_dir
            .clone()
            .unwrap_or_else(|| dir.path().join("journal")),
        journal: opts.journal,
        admin_listen: Some("127.0.0.1:0".parse().unwrap()),
        watch: false,
        tls: opts.tls,
        quotas: opts.quotas,
        ..Config::default()
    };
    let Prepared {
        listener,
        admin,
        state,
        ..
    } = prepare(&config).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let admin = admin.unwrap();
    let admin_addr = admin.local_addr().unwrap();
    let (admin_stop, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let admin_running = tokio::spawn(krr::http::serve(
        admin,
        state.clone(),
        krr::http::Listener::Admin,
        async {
            let _ = admin_stopped.await;
        },
    ));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(krr::http::run(listener, state.clone(), async {
        let _ = stopped.await;
    }));
    Server {
        addr,
        admin: admin_addr,
        register,
        state,
        dir,
        stop,
        running,
        admin_stop,
        admin_running,
    }
}

impl Server {
    /// Stops the server and waits until its state (journal writer included) is released;
    /// returns the directory, to start again on.
    pub async fn stop(self) -> Arc<tempfile::TempDir> {
        let _ = self.stop.send(());
        self.running.await.unwrap();
        let _ = self.admin_stop.send(());
        self.admin_running.await.unwrap();
        let mut state = self.state;
        // Connection tasks still hold the state until their clients have hung up.
        for _ in 0..500 {
            match Arc::try_unwrap(state) {
                Ok(s) => {
                    drop(s);
                    return self.dir;
                }
                Err(s) => state = s,
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the server's state is still in use 5 s after stopping");
    }
}

pub fn token(opts: MintOptions) -> String {
    let key = std::fs::read(fixture("keys/issuer-rsa.pem")).unwrap();
    mint(
        &key,
        &MintOptions {
            kid: opts.kid.clone().or(Some("test-rsa".into())),
            ..opts
        },
    )
    .unwrap()
}

/// A citizen's (ID-porten) token for `pid` with `scope`.
pub fn user(scope: &str, pid: &str) -> String {
    token(MintOptions {
        scope: scope.into(),
        pid: Some(pid.into()),
        user: true,
        ..Default::default()
    })
}

pub fn scoped(scope: &str) -> String {
    token(MintOptions {
        scope: scope.into(),
        ..MintOptions::default()
    })
}

/// A token with every global scope, signed by the fixture key `key_file` under `kid`.
pub fn signed_by(key_file: &str, kid: &str) -> String {
    let key = std::fs::read(fixture(key_file)).unwrap();
    mint(
        &key,
        &MintOptions {
            scope: ALL_SCOPES.into(),
            kid: Some(kid.into()),
            ..Default::default()
        },
    )
    .unwrap()
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header"))
            .to_str()
            .unwrap()
    }
}

pub async fn call(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Answer {
    try_call(addr, method, path, headers, body)
        .await
        .expect("the server answered")
}

/// Like [`call`], but `None` when the connection fails (a server that was killed).
pub async fn try_call(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Option<Answer> {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client
        .request(req.body(Full::new(body.into())).unwrap())
        .await
        .ok()?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.ok()?.to_bytes().to_vec();
    Some(Answer {
        status,
        headers,
        body,
    })
}

pub async fn post(s: &Server, path: &str, token: &str, body: &str) -> Answer {
    let auth = format!("Bearer {token}");
    call(
        s.addr,
        Method::POST,
        path,
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        body.to_string(),
    )
    .await
}

/// `PATCH /rest/v1/person` with `body` as JSON and `token`.
pub async fn patch_person(addr: SocketAddr, token: &str, body: impl Into<Bytes>) -> Answer {
    let auth = format!("Bearer {token}");
    call(
        addr,
        Method::PATCH,
        "/rest/v1/person",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        body,
    )
    .await
}

pub fn ids_body(ids: &[&str]) -> String {
    json!({ "personidentifikatorer": ids }).to_string()
}

pub fn id(v: &Value) -> &str {
    v["personidentifikator"].as_str().unwrap()
}

/// The error body shape, status and message.
pub fn check_error(a: &Answer, status: u16, message: &str) {
    assert_eq!(
        a.status.as_u16(),
        status,
        "{}",
        String::from_utf8_lossy(&a.body)
    );
    let v = a.json();
    assert_eq!(v["status"], status);
    assert_eq!(v["error"], a.status.canonical_reason().unwrap());
    assert_eq!(v["message"], message);
    assert!(v["path"].is_string());
    assert_eq!(a.header("content-type"), "application/json");
}

/// The readiness status of the admin listener at `addr`.
pub async fn readiness(addr: SocketAddr) -> StatusCode {
    call(
        addr,
        Method::GET,
        "/health/readiness",
        &[],
        Vec::<u8>::new(),
    )
    .await
    .status
}

pub async fn admin(s: &Server, method: Method, path: &str) -> Answer {
    call(s.admin, method, path, &[], Vec::<u8>::new()).await
}

pub async fn reload(s: &Server) -> Value {
    let a = admin(s, Method::POST, "/admin/reload").await;
    assert_eq!(
        a.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&a.body)
    );
    a.json()
}

pub fn served_id(s: &Server) -> Option<String> {
    s.state.store.current().as_ref().map(|x| x.id())
}

/// The value of a metric line `name{labels} value` (labels as written, `""` for none).
pub fn metric(text: &str, name: &str, labels: &str) -> Option<f64> {
    let key = if labels.is_empty() {
        name.to_string()
    } else {
        format!("{name}{{{labels}}}")
    };
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(&key)?.strip_prefix(' ')?.parse().ok())
}

/// True when `text` holds a personal number's shape: a run of exactly 11 digits that is
/// not the fraction of a decimal number (metric values and durations have long fractions)
/// and not inside a 16-hex-digit snapshot id.
pub fn has_personal_number(text: &str) -> bool {
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if !b[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        // A snapshot id is 16 hex digits; a run of 11 decimal digits inside one is not a
        // personal number.
        let hex = |c: &u8| c.is_ascii_hexdigit();
        let token_start = start - b[..start].iter().rev().take_while(|c| hex(c)).count();
        let token_end = i + b[i..].iter().take_while(|c| hex(c)).count();
        let snapshot_id = token_end - token_start == 16;
        if i - start == 11 && (start == 0 || b[start - 1] != b'.') && !snapshot_id {
            return true;
        }
    }
    false
}

/// A child process killed when dropped (a failing test leaves no server behind).
pub struct KillOnDrop(pub std::process::Child);

impl std::ops::Deref for KillOnDrop {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The real `krr serve` binary, logging JSON (kept in [`super::log_file`]).
pub struct Binary {
    pub child: KillOnDrop,
    pub api: SocketAddr,
    pub admin: SocketAddr,
    /// The `krr serving` start-up line.
    pub startup: Value,
    /// Every log line so far.
    pub lines: Arc<std::sync::Mutex<Vec<String>>>,
    /// All of stdout, once the process has ended.
    pub stdout: std::thread::JoinHandle<String>,
}

impl Binary {
    /// Sends the process SIGHUP (reload).
    pub fn sighup(&self) {
        let pid = self.child.id().to_string();
        assert!(
            std::process::Command::new("kill")
                .args(["-HUP", &pid])
                .status()
                .unwrap()
                .success()
        );
    }
}

/// Starts `krr serve` on `dir/snapshots` and `dir/journal` with the fixture keys, both
/// listeners on free ports, JSON logs at `level`, and `extra` flags; waits for it to serve.
pub fn spawn_serve(dir: &Path, extra: &[&str], level: &str) -> Binary {
    spawn_serve_env(dir, extra, &[], level)
}

/// [`spawn_serve`] with extra environment variables.
pub fn spawn_serve_env(dir: &Path, extra: &[&str], env: &[(&str, &str)], level: &str) -> Binary {
    use std::io::{BufRead, Read, Write};
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_krr"))
        .envs(env.iter().copied())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(["--admin-listen", "127.0.0.1:0"])
        .args(["--issuer", "https://maskinporten.no/"])
        .args(["--log-format", "json"])
        .args(extra)
        .arg("--snapshot-dir")
        .arg(dir.join("snapshots"))
        .arg("--journal-dir")
        .arg(dir.join("journal"))
        .arg("--jwks-file")
        .arg(fixture("keys/jwks.json"))
        .env("KRR_LOG", level)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    let kept = lines.clone();
    let mut log = super::log_file("serve-json");
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let _ = writeln!(log, "{line}");
            let v: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("a log line is not JSON ({e})"));
            if v["fields"]["message"] == "krr serving" {
                let _ = tx.send(v.clone());
            }
            kept.lock().unwrap().push(line);
        }
    });
    let mut out = child.stdout.take().unwrap();
    let stdout = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let startup = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the server started");
    let addr = |k: &str| {
        startup["fields"][k]
            .as_str()
            .unwrap()
            .parse::<SocketAddr>()
            .unwrap()
    };
    Binary {
        api: addr("listen"),
        admin: addr("admin"),
        child: KillOnDrop(child),
        startup,
        lines,
        stdout,
    }
}
