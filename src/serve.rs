//! `krr serve` and `krr demo`: from configuration to a running service.
//!
//! Start-up refuses to run without trust (a JWKS and at least one issuer). With no valid
//! snapshot in the directory the service starts anyway and answers 503 until one is loaded.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::net::TcpListener;

use crate::auth::mint::{MintOptions, mint};
use crate::auth::{JwksSource, KeyStore, Verifier};
use crate::http::{AppState, JoseSigner, Limits, print_body};
use crate::journal::pg::{PgJournal, PgOptions};
use crate::journal::{Backend, Journal, JournalOptions};
use crate::store::Store;

/// Everything `krr serve` is configured with.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// Public API address.
    pub listen: SocketAddr,
    /// Where snapshots are.
    pub snapshot_dir: PathBuf,
    /// Trusted keys.
    pub jwks: Option<JwksSource>,
    /// Accepted `iss` values.
    pub issuers: Vec<String>,
    /// Required `aud`, if any.
    pub audience: Option<String>,
    /// Key and certificate chain for `application/jose`.
    pub signing: Option<(PathBuf, PathBuf)>,
    /// Print provider's organisation number and certificate.
    pub print: Option<(String, PathBuf)>,
    /// Connection and request limits.
    pub limits: Limits,
    /// Allowed clock skew for `exp`, `nbf`, `iat`.
    pub clock_skew: Duration,
    /// How often the JWKS is refreshed.
    pub jwks_refresh: Duration,
    /// The PATCH journal's directory (created if missing).
    pub journal_dir: PathBuf,
    /// Journal writer settings.
    pub journal: JournalOptions,
    /// The journal on PostgreSQL (`postgres://…`), shared by every replica, instead of
    /// `journal_dir`.
    pub journal_url: Option<String>,
    /// Settings of the PostgreSQL journal.
    pub pg: PgOptions,
    /// Health, metrics and reload (`None`: no admin listener).
    pub admin_listen: Option<SocketAddr>,
    /// Reload when `*.krr` names in the snapshot directory change.
    pub watch: bool,
    /// Follow the snapshots published to this `s3://bucket/prefix` (see `remote`).
    pub snapshot_url: Option<String>,
    /// How often the published pointer is read.
    pub snapshot_poll: Duration,
}

/// A bound, ready service.
#[derive(Debug)]
pub struct Prepared {
    /// The public listener.
    pub listener: TcpListener,
    /// The admin listener.
    pub admin: Option<TcpListener>,
    /// Shared state.
    pub state: Arc<AppState>,
    /// The object storage followed for snapshots (`--snapshot-url`).
    pub remote: Option<crate::remote::Remote>,
}

/// Checks the configuration, loads keys and the newest snapshot, binds the listener.
pub async fn prepare(config: &ServeConfig) -> anyhow::Result<Prepared> {
    let Some(jwks) = config.jwks.clone() else {
        bail!(
            "trust is not configured: give --jwks-file or --jwks-url (the keys of the token issuer)"
        );
    };
    if config.issuers.is_empty() {
        bail!("trust is not configured: give --issuer (e.g. https://maskinporten.no/)");
    }
    let keys = KeyStore::load(jwks, Duration::from_secs(5))
        .await
        .context("loading the trusted keys")?;
    let keys = Arc::new(keys);
    keys.clone().spawn_refresh(config.jwks_refresh);
    let verifier = Verifier::new(
        keys,
        config.issuers.clone(),
        config.audience.clone(),
        config.clock_skew.as_secs(),
    );
    let signer = match &config.signing {
        Some((key, cert)) => Some(JoseSigner::load(key, cert)?),
        None => None,
    };
    let print = match &config.print {
        Some((org, cert)) => {
            if org.len() != 9 || !org.bytes().all(|c| c.is_ascii_digit()) {
                bail!("--print-provider must be a 9-digit organisation number");
            }
            let pem = std::fs::read_to_string(cert)
                .with_context(|| format!("reading {}", cert.display()))?;
            Some(print_body(org, &pem).map_err(anyhow::Error::msg)?)
        }
        None => None,
    };
    // Install the metrics recorder before anything records (the first snapshot's gauges).
    let _ = crate::metrics::handle();
    let remote = match &config.snapshot_url {
        // A malformed URL stops the start here, before anything is bound or opened.
        Some(url) => Some(crate::remote::Remote::new(url)?),
        None => None,
    };
    if let Some(remote) = &remote {
        // Downloads land here; the watcher needs it to exist.
        std::fs::create_dir_all(&config.snapshot_dir).with_context(|| {
            format!(
                "creating the snapshot directory {}",
                config.snapshot_dir.display()
            )
        })?;
        remote
            .catch_up_at_start(&config.snapshot_dir, Duration::from_secs(15))
            .await;
    }
    let store = Arc::new(Store::empty());
    match store.load_newest(&config.snapshot_dir) {
        Ok(Some(s)) => {
            crate::metrics::snapshot_published(None, &s);
            tracing::info!(
                snapshot = %s.id(),
                file = %s.path().display(),
                persons = s.len(),
                "snapshot loaded"
            );
        }
        Ok(None) => tracing::warn!(
            dir = %config.snapshot_dir.display(),
            "no valid snapshot yet; answering 503 until one is loaded"
        ),
        Err(e) => tracing::warn!(
            dir = %config.snapshot_dir.display(),
            cause = %e,
            "cannot read the snapshot directory; answering 503 until a snapshot is loaded"
        ),
    }
    let journal: Arc<dyn Backend> = match &config.journal_url {
        Some(url) => Arc::new(open_pg_journal(&store, url, config.pg).await?),
        None => Arc::new(open_journal(&store, &config.journal_dir, config.journal)?),
    };
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let admin = match config.admin_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the admin listener {addr}"))?,
        ),
        None => None,
    };
    let reloader = Arc::new(crate::reload::Reloader::new(
        store.clone(),
        config.snapshot_dir.clone(),
        Some(journal.clone()),
    ));
    let state = Arc::new(AppState {
        store,
        verifier,
        signer,
        print_body: print,
        limits: config.limits,
        journal: Some(journal),
        reloader: Some(reloader),
        shutting_down: std::sync::atomic::AtomicBool::new(false),
    });
    Ok(Prepared {
        listener,
        admin,
        state,
        remote,
    })
}

/// Recovers the journal, replays into the overlay what the served snapshot does not hold,
/// and starts the writer (which applies each durable group to the overlay).
pub fn open_journal(
    store: &Arc<Store>,
    dir: &Path,
    opts: JournalOptions,
) -> anyhow::Result<Journal> {
    let snapshot = store.current();
    let folded = snapshot.as_ref().map_or(0, |s| s.header().journal_seq);
    let applier = store.clone();
    let (journal, scan) = Journal::open(
        dir,
        folded,
        opts,
        Box::new(move |entries| {
            for e in entries {
                applier.overlay().apply(e);
            }
        }),
    )
    .with_context(|| format!("recovering the journal in {}", dir.display()))?;
    let replayed = store.overlay().replay(&scan.entries, snapshot.as_deref());
    tracing::info!(
        dir = %dir.display(),
        segments = scan.segments.len(),
        records = scan.entries.len(),
        last_seq = scan.last_seq(),
        snapshot_seq = folded,
        replayed,
        overlay = store.overlay().len(),
        torn_tail_cut = scan.cut.is_some(),
        "journal recovered"
    );
    Ok(journal)
}

/// Connects to the shared journal, replays into the overlay what the served snapshot does
/// not hold, and starts the writer and the follower (which apply what they commit and read).
pub async fn open_pg_journal(
    store: &Arc<Store>,
    url: &str,
    opts: PgOptions,
) -> anyhow::Result<PgJournal> {
    let snapshot = store.current();
    let folded = snapshot.as_ref().map_or(0, |s| s.header().journal_seq);
    let applier = store.clone();
    let (journal, entries) = PgJournal::open(
        url,
        folded,
        opts,
        Arc::new(move |entries| {
            // Another replica's change may be for a person this snapshot holds newer data
            // of (or has deleted): the merge rule of the overlay decides, as at recovery.
            let served = applier.current();
            applier.overlay().replay(entries, served.as_deref());
        }),
    )
    .await
    .context("opening the journal database")?;
    let replayed = store.overlay().replay(&entries, snapshot.as_deref());
    tracing::info!(
        database = %journal.describe(),
        records = entries.len(),
        last_seq = journal.stats().last_seq.load(std::sync::atomic::Ordering::Relaxed),
        snapshot_seq = folded,
        replayed,
        overlay = store.overlay().len(),
        "journal recovered from the database"
    );
    Ok(journal)
}

/// Runs until SIGINT or SIGTERM.
pub async fn serve(config: ServeConfig) -> anyhow::Result<()> {
    let prepared = prepare(&config).await?;
    run_prepared(&config, prepared).await
}

/// Runs a prepared service until SIGINT or SIGTERM: the API, the admin listener, SIGHUP
/// and the directory watcher as reload triggers; then shuts down gracefully (readiness
/// down, stop accepting, requests in flight finish within the grace period, the journal
/// writer drains and stops).
pub async fn run_prepared(config: &ServeConfig, prepared: Prepared) -> anyhow::Result<()> {
    let Prepared {
        listener,
        admin,
        state,
        remote,
    } = prepared;
    let snapshot = state.store.current();
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        listen = %listener.local_addr()?,
        admin = %admin
            .as_ref()
            .and_then(|a| a.local_addr().ok())
            .map_or_else(|| "none".to_string(), |a| a.to_string()),
        snapshot = snapshot.as_ref().map(|s| s.id()).unwrap_or_else(|| "none".into()),
        persons = snapshot.as_ref().map_or(0, |s| s.len()),
        overlay = state.store.overlay().len(),
        "krr serving"
    );
    drop(snapshot);

    let (admin_stop, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let admin_task = admin.map(|admin| {
        tokio::spawn(crate::http::serve(
            admin,
            state.clone(),
            crate::http::Listener::Admin,
            async {
                let _ = admin_stopped.await;
            },
        ))
    });
    let reloader = state.reloader.clone().expect("prepare makes a reloader");
    #[cfg(unix)]
    {
        let reloader = reloader.clone();
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("installing the SIGHUP handler")?;
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                reloader.reload("SIGHUP").await;
            }
        });
    }
    let _watcher = if config.watch {
        match crate::reload::watch(reloader.clone(), Duration::from_millis(200)) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(dir = %config.snapshot_dir.display(), cause = %e, "cannot watch the snapshot directory; reload with SIGHUP or POST /admin/reload");
                None
            }
        }
    } else {
        None
    };
    let follower =
        remote.map(|remote| crate::remote::follow(remote, reloader.clone(), config.snapshot_poll));
    sd_notify("READY=1");

    let draining = state.clone();
    crate::http::run(listener, state.clone(), async move {
        shutdown_signal().await;
        draining.begin_shutdown();
        sd_notify("STOPPING=1");
        tracing::info!(
            grace_secs = draining.limits.shutdown_grace.as_secs_f64(),
            "shutting down: readiness is down, no new connections, finishing requests in flight"
        );
    })
    .await;
    if let Some(f) = follower {
        f.abort();
    }
    if let Some(j) = &state.journal {
        // Every acknowledged change is durable already; this waits for the writer to answer
        // what was queued and to stop.
        j.close();
    }
    log_journal_stats(&state);
    let _ = admin_stop.send(());
    if let Some(t) = admin_task {
        let _ = t.await;
    }
    tracing::info!("krr stopped");
    Ok(())
}

/// Tells systemd (`Type=notify`) about the service's state, when started by it.
fn sd_notify(message: &str) {
    #[cfg(target_os = "linux")]
    {
        use std::os::linux::net::SocketAddrExt;
        use std::os::unix::net::{SocketAddr, UnixDatagram};
        let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
            return;
        };
        let path = path.to_string_lossy().into_owned();
        let addr = match path.strip_prefix('@') {
            Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
            None => SocketAddr::from_pathname(&path),
        };
        let sent = addr.and_then(|addr| {
            let sock = UnixDatagram::unbound()?;
            sock.send_to_addr(message.as_bytes(), &addr)
        });
        if let Err(e) = sent {
            tracing::warn!(cause = %e, "cannot notify systemd");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = message;
}

/// Every acknowledged change is already durable; this only reports how group commit went.
fn log_journal_stats(state: &AppState) {
    use std::sync::atomic::Ordering::Relaxed;
    if let Some(j) = &state.journal {
        let s = j.stats();
        let syncs = s.syncs.load(Relaxed);
        let records = s.records.load(Relaxed);
        tracing::info!(
            last_seq = s.last_seq.load(Relaxed),
            records,
            syncs,
            records_per_sync = if syncs == 0 {
                0.0
            } else {
                records as f64 / syncs as f64
            },
            mean_sync_us = s.sync_nanos.load(Relaxed).checked_div(syncs).unwrap_or(0) / 1000,
            "journal: changes written by this process"
        );
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// The quick start's files, under `data/demo/` (git-ignored) and `snapshots/`.
#[derive(Clone, Debug)]
pub struct DemoPaths {
    /// `data/demo`.
    pub dir: PathBuf,
    /// Where the snapshot goes.
    pub snapshot_dir: PathBuf,
}

impl DemoPaths {
    fn register(&self) -> PathBuf {
        self.dir.join("register.jsonl")
    }
    fn snapshot(&self) -> PathBuf {
        self.snapshot_dir.join("demo.krr")
    }
    fn issuer_key(&self) -> PathBuf {
        self.dir.join("issuer-key.pem")
    }
    fn jwks(&self) -> PathBuf {
        self.dir.join("jwks.json")
    }
    fn signing_key(&self) -> PathBuf {
        self.dir.join("signing-key.pem")
    }
    fn signing_cert(&self) -> PathBuf {
        self.dir.join("signing-cert.pem")
    }
    fn print_cert(&self) -> PathBuf {
        self.dir.join("print-cert.pem")
    }
}

/// Persons in the demo register.
pub const DEMO_PERSONS: u64 = 200_000;
/// The demo issuer (what its tokens carry as `iss`).
pub const DEMO_ISSUER: &str = "https://maskinporten.no/";
/// The demo issuer key's `kid`.
pub const DEMO_KID: &str = "krr-demo";

/// Creates (or reuses) the demo's register, snapshot, keys and certificates, then serves
/// with the demo key trusted, printing a `curl` that works.
pub async fn demo(paths: DemoPaths, listen: SocketAddr, admin: SocketAddr) -> anyhow::Result<()> {
    std::fs::create_dir_all(&paths.dir)?;
    std::fs::create_dir_all(&paths.snapshot_dir)?;
    if !paths.register().exists() {
        eprintln!("demo: generating {DEMO_PERSONS} synthetic persons…");
        let tmp = paths.dir.join("register.jsonl.tmp");
        crate::generate::generate_file(
            &tmp,
            &crate::generate::GenerateOptions {
                count: DEMO_PERSONS,
                seed: 1,
                as_of: crate::generate::DEFAULT_AS_OF,
                progress: false,
            },
        )?;
        std::fs::rename(&tmp, paths.register())?;
    }
    if !paths.snapshot().exists() {
        eprintln!("demo: building the snapshot…");
        crate::snapshot::build_file(
            &paths.register(),
            &paths.snapshot(),
            &crate::snapshot::BuildOptions::now(),
        )?;
    }
    if !paths.issuer_key().exists() || !paths.jwks().exists() {
        eprintln!("demo: creating a development token-issuer key…");
        let (key_pem, jwks) = rsa_key_and_jwks(DEMO_KID)?;
        write_private(&paths.issuer_key(), &key_pem)?;
        std::fs::write(paths.jwks(), jwks)?;
    }
    if !paths.signing_key().exists() || !paths.signing_cert().exists() {
        eprintln!("demo: creating a development response-signing key and certificate…");
        let (key_pem, _) = rsa_key_and_jwks("signing")?;
        let cert = self_signed(&key_pem, "krr demo response signing (development only)")?;
        write_private(&paths.signing_key(), &key_pem)?;
        std::fs::write(paths.signing_cert(), cert)?;
    }
    if !paths.print_cert().exists() {
        std::fs::write(paths.print_cert(), crate::generate::PROVIDERS[0].pem)?;
    }

    let config = ServeConfig {
        listen,
        snapshot_dir: paths.snapshot_dir.clone(),
        jwks: Some(JwksSource::File(paths.jwks())),
        issuers: vec![DEMO_ISSUER.to_string()],
        audience: None,
        signing: Some((paths.signing_key(), paths.signing_cert())),
        print: Some((
            crate::generate::PROVIDERS[0].orgnr.to_string(),
            paths.print_cert(),
        )),
        limits: Limits::default(),
        clock_skew: Duration::from_secs(60),
        jwks_refresh: Duration::from_secs(300),
        journal_dir: paths.dir.join("journal"),
        journal: JournalOptions::default(),
        journal_url: None,
        pg: PgOptions::default(),
        admin_listen: Some(admin),
        watch: true,
        snapshot_url: None,
        snapshot_poll: Duration::from_secs(10),
    };
    let prepared = prepare(&config).await?;
    let addr = prepared.listener.local_addr()?;
    let state = prepared.state.clone();
    let token = mint(
        &std::fs::read(paths.issuer_key())?,
        &MintOptions {
            scope: "krr:global/kontaktinformasjon.read krr:global/digitalpost.read".into(),
            kid: Some(DEMO_KID.into()),
            ttl: 3600,
            ..MintOptions::default()
        },
    )?;
    let ids: Vec<String> = state
        .store
        .current()
        .as_ref()
        .map(|s| {
            s.ids()
                .take(2)
                .map(|i| String::from_utf8(i.digits().to_vec()).expect("digits"))
                .collect()
        })
        .unwrap_or_default();
    tracing::warn!(
        "DEMO MODE: trusting only a development key made on this machine ({}); never use this in production",
        paths.jwks().display()
    );
    println!();
    println!("krr demo is serving {DEMO_PERSONS} synthetic persons on http://{addr}");
    println!("Try (the token is valid for an hour; rerun `krr demo` for a new one):");
    println!();
    println!(
        "curl -s http://{addr}/rest/v1/personer -H 'Authorization: Bearer {token}' -H 'Content-Type: application/json' -d '{{\"personidentifikatorer\":[\"{}\",\"{}\",\"20914695016\"]}}'",
        ids.first().map_or("", String::as_str),
        ids.get(1).map_or("", String::as_str),
    );
    if let Some(me) = ids.first() {
        let citizen = mint(
            &std::fs::read(paths.issuer_key())?,
            &MintOptions {
                scope: "krr:user/kontaktinformasjon.read krr:user/spraak.write".into(),
                kid: Some(DEMO_KID.into()),
                ttl: 3600,
                pid: Some(me.clone()),
                user: true,
                ..MintOptions::default()
            },
        )?;
        println!();
        println!(
            "As that first person (a citizen's token): change the language, then read it back:"
        );
        println!();
        println!(
            "curl -si -X PATCH http://{addr}/rest/v1/person -H 'Authorization: Bearer {citizen}' -H 'Content-Type: application/json' -d '{{\"spraak\":\"en\"}}'"
        );
        println!("curl -s http://{addr}/rest/v1/person -H 'Authorization: Bearer {citizen}'");
    }
    println!();
    println!(
        "Health, metrics and reload: http://{admin}/health/readiness, /metrics, POST /admin/reload"
    );
    println!();
    drop(state);
    run_prepared(&config, prepared).await
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents.as_bytes())
}

/// A new RSA-2048 key (PKCS#8 PEM) and a JWKS holding its public half under `kid`.
pub fn rsa_key_and_jwks(kid: &str) -> anyhow::Result<(String, String)> {
    use base64::Engine;
    use rsa::pkcs8::EncodePrivateKey;
    use rsa::traits::PublicKeyParts;
    let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048)?;
    let pem = key.to_pkcs8_pem(rsa::pkcs8::LineEnding::LF)?.to_string();
    let b64 = |b: Vec<u8>| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let jwks = serde_json::json!({"keys": [{
        "kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid,
        "n": b64(key.n().to_bytes_be()), "e": b64(key.e().to_bytes_be()),
    }]});
    Ok((pem, serde_json::to_string_pretty(&jwks)?))
}

/// A self-signed certificate (PEM) for an RSA key (PKCS#8 PEM).
pub fn self_signed(key_pem: &str, common_name: &str) -> anyhow::Result<String> {
    let key = rcgen::KeyPair::from_pem_and_sign_algo(key_pem, &rcgen::PKCS_RSA_SHA256)?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    Ok(params.self_signed(&key)?.pem())
}
