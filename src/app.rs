//! The service as a whole: from [`Config`] to a running service ([`prepare`], then [`run`]).
//!
//! `krr serve`, `krr demo`, the HTTP tests and the HTTP bench all start it through here.
//! Start-up refuses to run without trust (a JWKS and at least one issuer). With no valid
//! snapshot in the directory the service starts anyway and answers 503 until one is loaded.

use bytes::Bytes;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::auth::jwks::JwksError;
use crate::auth::{JwksSource, KeyStore, Verifier};
use crate::http::jose::JoseError;
use crate::http::{AppState, JoseSigner, Limits, PrintCertError, Signing, print_body};
use crate::journal::pg::{PgJournal, PgOptions};
use crate::journal::{Backend, Journal, JournalError, JournalOptions};
use crate::ops::signals::{sd_notify, shutdown_signal};
use crate::snapshot::remote::{Remote, RemoteError};
use crate::store::Store;
use crate::store::reload::{Outcome, Reloader};

/// Everything `krr serve` is configured with.
#[derive(Clone, Debug)]
pub struct Config {
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
    /// A new snapshot with more than this share (percent) fewer persons than the served
    /// one is refused (unless a reload allows it).
    pub max_shrink_percent: f64,
    /// Serve the public API over TLS with this certificate chain and key (PEM files).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Per-consumer quotas.
    pub quotas: crate::http::quota::QuotaSettings,
}

impl Default for Config {
    /// The defaults of `krr serve`'s flags; no trust (`jwks`, `issuers`) and an admin
    /// listener on 127.0.0.1:9090.
    fn default() -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            snapshot_dir: PathBuf::from("snapshots"),
            jwks: None,
            issuers: Vec::new(),
            audience: None,
            signing: None,
            print: None,
            limits: Limits::default(),
            clock_skew: Duration::from_secs(60),
            jwks_refresh: Duration::from_secs(300),
            journal_dir: PathBuf::from("data/journal"),
            journal: JournalOptions::default(),
            journal_url: None,
            pg: PgOptions::default(),
            admin_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9090))),
            watch: true,
            snapshot_url: None,
            snapshot_poll: Duration::from_secs(10),
            max_shrink_percent: crate::store::reload::DEFAULT_MAX_SHRINK_PERCENT,
            tls: None,
            quotas: crate::http::quota::QuotaSettings::default(),
        }
    }
}

/// Why the service did not start. `Display` is the step that failed; the cause is the
/// error's `source()` (the command line prints the whole chain).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// No JWKS or no issuer: the service never runs without trust.
    #[error("trust is not configured: {0}")]
    NoTrust(&'static str),
    /// The JWKS could not be loaded.
    #[error("loading the trusted keys")]
    Keys(#[source] JwksError),
    /// The response-signing key or certificate is unusable.
    #[error(transparent)]
    Signing(JoseError),
    /// `--tls-cert`/`--tls-key` cannot be served.
    #[error("loading the TLS certificate and key")]
    Tls(#[source] crate::http::tls::TlsError),
    /// `--quota-*` settings or the quota file are unusable.
    #[error("loading the quotas")]
    Quota(#[source] crate::http::quota::QuotaError),
    /// `--print-provider` is not an organisation number.
    #[error("--print-provider must be a 9-digit organisation number")]
    PrintProvider,
    /// The print provider's certificate cannot be read.
    #[error("reading {}", .path.display())]
    PrintCertFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The print provider's certificate is not one.
    #[error(transparent)]
    PrintCert(PrintCertError),
    /// `--snapshot-url` is malformed.
    #[error(transparent)]
    SnapshotUrl(RemoteError),
    /// The snapshot directory could not be created.
    #[error("creating the snapshot directory {}", .path.display())]
    SnapshotDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The journal directory could not be recovered.
    #[error("recovering the journal in {}", .dir.display())]
    Journal {
        /// The directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: JournalError,
    },
    /// The journal database could not be opened.
    #[error("opening the journal database")]
    JournalDatabase(#[source] JournalError),
    /// The address is taken (another krr, or another program).
    #[error(
        "{what}{addr} is already in use: is krr already running? Stop it, or choose another address with --listen / --admin-listen"
    )]
    BindInUse {
        /// `""` or `"the admin listener "`.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
    },
    /// A listener could not be bound.
    #[error("binding {what}{addr}")]
    Bind {
        /// `""` or `"the admin listener "`.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why (in use, not allowed…).
        #[source]
        source: std::io::Error,
    },
    /// Installing a signal handler failed.
    #[error("installing the {0} handler")]
    Signal(&'static str, #[source] std::io::Error),
    /// A bound listener has no local address.
    #[error("the listener's address")]
    Listener(#[source] std::io::Error),
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
    pub remote: Option<crate::snapshot::remote::Remote>,
}

/// Checks the configuration, loads keys and the newest snapshot (through the reload path,
/// as every later snapshot), recovers the journal, binds the listeners.
pub async fn prepare(config: &Config) -> Result<Prepared, StartError> {
    let Some(jwks) = config.jwks.clone() else {
        return Err(StartError::NoTrust(
            "give --jwks-file or --jwks-url (the keys of the token issuer)",
        ));
    };
    if config.issuers.is_empty() {
        return Err(StartError::NoTrust(
            "give --issuer (e.g. https://maskinporten.no/)",
        ));
    }
    let keys = KeyStore::load(jwks, Duration::from_secs(5))
        .await
        .map_err(StartError::Keys)?;
    let keys = Arc::new(keys);
    keys.clone().spawn_refresh(config.jwks_refresh);
    let verifier = Verifier::new(
        keys,
        config.issuers.clone(),
        config.audience.clone(),
        config.clock_skew.as_secs(),
    );
    let signer = match &config.signing {
        Some((key, cert)) => Some(Signing::new(
            JoseSigner::load(key, cert).map_err(StartError::Signing)?,
            Signing::default_concurrency(),
        )),
        None => None,
    };
    let print = match &config.print {
        Some((org, cert)) => {
            if org.len() != 9 || !org.bytes().all(|c| c.is_ascii_digit()) {
                return Err(StartError::PrintProvider);
            }
            let pem =
                std::fs::read_to_string(cert).map_err(|source| StartError::PrintCertFile {
                    path: cert.clone(),
                    source,
                })?;
            Some(print_body(org, &pem).map_err(StartError::PrintCert)?)
        }
        None => None,
    };
    let print_jose = match (&print, &signer) {
        (Some(body), Some(signing)) => Some(Bytes::from(signing.signer().sign(body))),
        _ => None,
    };
    // A bad certificate stops the start before anything is opened or bound.
    let tls = match &config.tls {
        Some((cert, key)) => Some(crate::http::tls::Tls::load(cert, key).map_err(StartError::Tls)?),
        None => None,
    };
    // A bad quota file stops the start too.
    let quotas =
        crate::http::quota::Quotas::new(config.quotas.clone()).map_err(StartError::Quota)?;
    // Install the metrics recorder before anything records (the first snapshot's gauges).
    let _ = crate::metrics::handle();
    let remote = match &config.snapshot_url {
        // A malformed URL stops the start here, before anything is bound or opened.
        Some(url) => Some(Remote::new(url).map_err(StartError::SnapshotUrl)?),
        None => None,
    };
    if let Some(remote) = &remote {
        // Downloads land here; the watcher needs it to exist.
        std::fs::create_dir_all(&config.snapshot_dir).map_err(|source| {
            StartError::SnapshotDir {
                path: config.snapshot_dir.clone(),
                source,
            }
        })?;
        remote
            .catch_up_at_start(&config.snapshot_dir, Duration::from_secs(15))
            .await;
    }
    let store = Arc::new(Store::empty());
    // The first snapshot comes through the one reload path, like every later one. The
    // journal is attached after it is recovered against that snapshot (below); no other
    // trigger exists before then.
    let reloader = Arc::new(
        Reloader::new(store.clone(), config.snapshot_dir.clone())
            .with_max_shrink(config.max_shrink_percent),
    );
    match reloader.reload("start-up").await {
        Outcome::Swapped { .. } => {}
        Outcome::Unchanged { .. } => tracing::warn!(
            dir = %config.snapshot_dir.display(),
            "no valid snapshot yet; answering 503 until one is loaded"
        ),
        Outcome::Failed { reason } => tracing::warn!(
            dir = %config.snapshot_dir.display(),
            cause = %reason,
            "cannot read the snapshot directory; answering 503 until a snapshot is loaded"
        ),
    }
    let journal: Arc<dyn Backend> = match &config.journal_url {
        Some(url) => Arc::new(
            open_pg_journal(&store, url, config.pg)
                .await
                .map_err(StartError::JournalDatabase)?,
        ),
        None => Arc::new(
            open_journal(&store, &config.journal_dir, config.journal).map_err(|source| {
                StartError::Journal {
                    dir: config.journal_dir.clone(),
                    source,
                }
            })?,
        ),
    };
    reloader.attach_journal(journal.clone());
    {
        // The served snapshot's changes get their ids before the API opens.
        let reloader = reloader.clone();
        let _ = tokio::task::spawn_blocking(move || reloader.number_served()).await;
    }
    let listener = bind("", config.listen).await?;
    let admin = match config.admin_listen {
        Some(addr) => Some(bind("the admin listener ", addr).await?),
        None => None,
    };
    let state = Arc::new(AppState {
        store,
        verifier,
        signer,
        print_body: print,
        print_jose,
        limits: config.limits,
        journal: Some(journal),
        reloader: Some(reloader),
        tls,
        usage: crate::http::usage::Usage::new(config.limits.metrics_max_consumers),
        quotas,
        meters: crate::http::meters::Meters::new(),
        in_flight: std::sync::atomic::AtomicUsize::new(0),
        shutting_down: std::sync::atomic::AtomicBool::new(false),
    });
    Ok(Prepared {
        listener,
        admin,
        state,
        remote,
    })
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).await.map_err(|source| {
        if source.kind() == std::io::ErrorKind::AddrInUse {
            StartError::BindInUse { what, addr }
        } else {
            StartError::Bind { what, addr, source }
        }
    })
}

/// Recovers the journal, replays into the overlay what the served snapshot does not hold,
/// and starts the writer (which applies each durable group to the overlay).
pub fn open_journal(
    store: &Arc<Store>,
    dir: &Path,
    opts: JournalOptions,
) -> Result<Journal, JournalError> {
    let snapshot = store.current();
    let folded = snapshot.as_ref().map_or(0, |s| s.header().journal_seq);
    let applier = store.clone();
    // Without a snapshot nothing says what was folded: the check waits for the first one
    // (the reload that brings it asks the journal, which checks then).
    let opts = JournalOptions {
        require_complete: snapshot.is_some(),
        ..opts
    };
    let (journal, scan) = Journal::open(
        dir,
        folded,
        opts,
        Box::new(move |entries| {
            for e in entries {
                applier.overlay().apply(e);
            }
        }),
    )?;
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
) -> Result<PgJournal, JournalError> {
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
    .await?;
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

/// Prepares and runs the service until SIGINT or SIGTERM (`krr serve`).
pub async fn serve(config: Config) -> Result<(), StartError> {
    let prepared = prepare(&config).await?;
    run(&config, prepared).await
}

/// Runs a prepared service until SIGINT or SIGTERM: the API, the admin listener, SIGHUP
/// and the directory watcher as reload triggers; then shuts down gracefully (readiness
/// down, stop accepting, requests in flight finish within the grace period, the journal
/// writer drains and stops).
pub async fn run(config: &Config, prepared: Prepared) -> Result<(), StartError> {
    let Prepared {
        listener,
        admin,
        state,
        remote,
    } = prepared;
    let snapshot = state.store.current();
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        listen = %listener.local_addr().map_err(StartError::Listener)?,
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
        let state = state.clone();
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(|e| StartError::Signal("SIGHUP", e))?;
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                if let Some(tls) = &state.tls {
                    // Refused with the reason in the log; the old certificate stays.
                    let _ = tls.reload();
                }
                // Likewise the quota file: a refused one leaves the quotas in force.
                let _ = state.quotas.reload();
                reloader.reload("SIGHUP").await;
            }
        });
    }
    let _watcher = if config.watch {
        match crate::store::reload::watch(reloader.clone(), Duration::from_millis(200)) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(dir = %config.snapshot_dir.display(), cause = %e, "cannot watch the snapshot directory; reload with SIGHUP or POST /admin/reload");
                None
            }
        }
    } else {
        None
    };
    let follower = remote
        .map(|remote| crate::store::follow::follow(remote, reloader.clone(), config.snapshot_poll));
    crate::http::quota::spawn_sweeper(Arc::downgrade(&state), Duration::from_secs(10));
    sd_notify("READY=1");

    let draining = state.clone();
    crate::http::run(listener, state.clone(), async move {
        shutdown_signal().await;
        // Readiness goes down as the accept loop closes the listener, right after this.
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
