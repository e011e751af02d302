//! `krr serve`: the flags (each also from `KRR_` + its upper-case name) → [`Config`] →
//! the running service.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use krr::app::Config;
use krr::auth::JwksSource;
use krr::http::Limits;
use krr::http::quota::QuotaSettings;
use krr::journal::JournalOptions;
use krr::journal::pg::PgOptions;

use super::LogFormat;

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Public API address.
    #[arg(long, env = "KRR_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Health, metrics and reload (never expose it publicly).
    #[arg(long, env = "KRR_ADMIN_LISTEN", default_value = "127.0.0.1:9090")]
    admin_listen: SocketAddr,
    /// Do not watch the snapshot directory (reload with SIGHUP or POST /admin/reload only).
    #[arg(long, env = "KRR_NO_WATCH")]
    no_watch: bool,
    /// Follow snapshots published to object storage (`s3://bucket/prefix`; credentials,
    /// region and endpoint from the AWS_* environment): download what the pointer names
    /// into --snapshot-dir and reload.
    #[arg(long, env = "KRR_SNAPSHOT_URL")]
    snapshot_url: Option<String>,
    /// Seconds between reads of the published pointer (fractions allowed, at least 0.05).
    #[arg(long, env = "KRR_SNAPSHOT_POLL", default_value_t = 10.0)]
    snapshot_poll: f64,
    /// Seconds requests in flight get to finish at shutdown.
    #[arg(long, env = "KRR_SHUTDOWN_GRACE", default_value_t = 10)]
    shutdown_grace: u64,
    /// Serves the newest valid *.krr here (by header build time).
    #[arg(long, env = "KRR_SNAPSHOT_DIR", default_value = "snapshots")]
    snapshot_dir: PathBuf,
    /// Trusted token-signing keys, a JWKS JSON file.
    #[arg(long, env = "KRR_JWKS_FILE", conflicts_with = "jwks_url")]
    jwks_file: Option<PathBuf>,
    /// Trusted token-signing keys, fetched from this URL (cached, refreshed).
    #[arg(long, env = "KRR_JWKS_URL")]
    jwks_url: Option<String>,
    /// Accepted `iss` value (repeatable), e.g. https://maskinporten.no/.
    #[arg(long = "issuer", env = "KRR_ISSUER", value_delimiter = ',')]
    issuers: Vec<String>,
    /// Required `aud` claim, when set.
    #[arg(long, env = "KRR_AUDIENCE")]
    audience: Option<String>,
    /// RSA private key (PEM) signing `application/jose` answers.
    #[arg(long, env = "KRR_SIGNING_KEY", requires = "signing_cert")]
    signing_key: Option<PathBuf>,
    /// Certificate chain (PEM, leaf first) of the signing key; sent as `x5c`.
    #[arg(long, env = "KRR_SIGNING_CERT", requires = "signing_key")]
    signing_cert: Option<PathBuf>,
    /// Organisation number of the print provider (`printSertifikat`).
    #[arg(long, env = "KRR_PRINT_PROVIDER", requires = "print_cert")]
    print_provider: Option<String>,
    /// The print provider's certificate (PEM).
    #[arg(long, env = "KRR_PRINT_CERT", requires = "print_provider")]
    print_cert: Option<PathBuf>,
    /// Most open connections.
    #[arg(long, env = "KRR_MAX_CONNECTIONS", default_value_t = 1024)]
    max_connections: usize,
    /// Most requests in progress at once (HTTP/2 streams included); past it a request is
    /// answered 503 with Retry-After at once instead of queueing.
    #[arg(long, env = "KRR_MAX_IN_FLIGHT", default_value_t = 1024)]
    max_in_flight: usize,
    /// Consumers (organisations, user-token clients) with usage metrics of their own;
    /// later ones count as `other`.
    #[arg(long, env = "KRR_METRICS_MAX_CONSUMERS", default_value_t = 1000)]
    metrics_max_consumers: usize,
    /// Largest request body in bytes.
    #[arg(long, env = "KRR_MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    max_body_bytes: usize,
    /// Seconds a client has to send a request's headers.
    #[arg(long, env = "KRR_HEADER_TIMEOUT", default_value_t = 10)]
    header_timeout: u64,
    /// Seconds a client has to send a request's body.
    #[arg(long, env = "KRR_BODY_TIMEOUT", default_value_t = 10)]
    body_timeout: u64,
    /// Refuse a new snapshot with more than this many percent fewer persons than the
    /// served one (an empty or cut export); `POST /admin/reload?allow-shrink=true` serves
    /// it anyway.
    #[arg(long, env = "KRR_MAX_SHRINK", default_value_t = 1.0)]
    max_shrink: f64,
    /// Seconds a connection may go without taking any of its answer before it is closed
    /// (slow or stalled readers lose their connection slot).
    #[arg(long, env = "KRR_WRITE_TIMEOUT", default_value_t = 30)]
    write_timeout: u64,
    /// Allowed clock skew in seconds for exp, nbf and iat.
    #[arg(long, env = "KRR_CLOCK_SKEW", default_value_t = 60)]
    clock_skew: u64,
    /// Seconds between JWKS refreshes.
    #[arg(long, env = "KRR_JWKS_REFRESH", default_value_t = 300)]
    jwks_refresh: u64,
    /// The PATCH journal (created if missing).
    #[arg(long, env = "KRR_JOURNAL_DIR", default_value = "data/journal")]
    journal_dir: PathBuf,
    /// Start a new journal segment once the open one reaches this many bytes.
    #[arg(long, env = "KRR_JOURNAL_SEGMENT_BYTES", default_value_t = 64 << 20)]
    journal_segment_bytes: u64,
    /// Keep the journal in PostgreSQL (`postgres://user@host/db`), shared by every replica,
    /// instead of --journal-dir. The tables are created if missing.
    #[arg(long, env = "KRR_JOURNAL_URL")]
    journal_url: Option<String>,
    /// Connections to the journal database.
    #[arg(long, env = "KRR_JOURNAL_POOL", default_value_t = 4)]
    journal_pool: usize,
    /// Serve the public API over TLS with this certificate chain (PEM, leaf first); ALPN
    /// h2 and http/1.1. Re-read with the key on SIGHUP and POST /admin/reload.
    #[arg(long, env = "KRR_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "KRR_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Every consumer's quota in persons per second (a batch of 1000 ids costs 1000,
    /// /person 1, a feed page its entries); over it, 429 with Retry-After. No quota when
    /// left out (unless --quota-file gives one).
    #[arg(long, env = "KRR_QUOTA_PERSONS_PER_SECOND", value_parser = clap::value_parser!(u64).range(1..))]
    quota_persons_per_second: Option<u64>,
    /// Persons a consumer may ask for at once (default: one second's worth, at least 1000).
    #[arg(long, env = "KRR_QUOTA_BURST", requires = "quota_persons_per_second", value_parser = clap::value_parser!(u64).range(1..))]
    quota_burst: Option<u64>,
    /// Per-consumer quotas (TOML: [consumers."<orgnr>"] persons_per_second, burst),
    /// re-read on SIGHUP and POST /admin/reload.
    #[arg(long, env = "KRR_QUOTA_FILE")]
    quota_file: Option<PathBuf>,
    /// This replica's share of every quota: 1/N with N replicas behind a load balancer,
    /// so that together they grant each consumer its quota once.
    #[arg(long, env = "KRR_QUOTA_SHARE", default_value_t = 1.0)]
    quota_share: f64,
    /// Seconds a PATCH waits for the journal database before it is answered 503.
    #[arg(long, env = "KRR_JOURNAL_TIMEOUT", default_value_t = 3.0)]
    journal_timeout: f64,
}

pub fn run(a: ServeArgs, log_format: LogFormat) -> anyhow::Result<ExitCode> {
    let _logs = super::logging::init(log_format);
    super::runtime()?.block_on(krr::app::serve(config(a)))?;
    Ok(ExitCode::SUCCESS)
}

fn config(a: ServeArgs) -> Config {
    let jwks = match (a.jwks_file, a.jwks_url) {
        (Some(f), _) => Some(JwksSource::File(f)),
        (None, Some(u)) => Some(JwksSource::Url(u)),
        (None, None) => None,
    };
    Config {
        listen: a.listen,
        snapshot_dir: a.snapshot_dir,
        jwks,
        issuers: a.issuers,
        audience: a.audience,
        signing: a.signing_key.zip(a.signing_cert),
        print: a.print_provider.zip(a.print_cert),
        limits: Limits {
            max_connections: a.max_connections,
            max_in_flight: a.max_in_flight.max(1),
            metrics_max_consumers: a.metrics_max_consumers,
            max_body_bytes: a.max_body_bytes,
            header_timeout: Duration::from_secs(a.header_timeout),
            body_timeout: Duration::from_secs(a.body_timeout),
            write_timeout: Duration::from_secs(a.write_timeout.max(1)),
            shutdown_grace: Duration::from_secs(a.shutdown_grace),
        },
        clock_skew: Duration::from_secs(a.clock_skew),
        jwks_refresh: Duration::from_secs(a.jwks_refresh),
        journal_dir: a.journal_dir,
        journal: JournalOptions {
            segment_bytes: a.journal_segment_bytes,
            ..JournalOptions::default()
        },
        journal_url: a.journal_url,
        pg: PgOptions {
            pool_size: a.journal_pool.max(1),
            timeout: Duration::from_secs_f64(a.journal_timeout.clamp(0.1, 600.0)),
            ..PgOptions::default()
        },
        admin_listen: Some(a.admin_listen),
        watch: !a.no_watch,
        snapshot_url: a.snapshot_url,
        snapshot_poll: Duration::from_secs_f64(a.snapshot_poll.clamp(0.05, 86_400.0)),
        max_shrink_percent: a.max_shrink,
        tls: a.tls_cert.zip(a.tls_key),
        quotas: QuotaSettings {
            persons_per_second: a.quota_persons_per_second,
            burst: a.quota_burst,
            file: a.quota_file,
            share: a.quota_share,
        },
    }
}
