//! `krr`: the command line. Parses arguments and calls the library; nothing else.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::{Parser, Subcommand};

use krr::fnr::PersonId;
use krr::render::Groups;
use krr::snapshot::{self, BuildOptions, Header, Snapshot};
use krr::time::Timestamp;

#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(name = "krr", version, about = "The KRR lookup service and its tools")]
struct Cli {
    /// Log format on stderr: `text` (human-readable) or `json` (one object a line).
    #[arg(
        long,
        global = true,
        env = "KRR_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Write a deterministic synthetic register as JSONL (Tenor-style ids).
    Generate {
        /// Number of persons.
        #[arg(long, env = "KRR_COUNT")]
        count: u64,
        /// Seed: the same seed and count give the same file.
        #[arg(long, env = "KRR_SEED", default_value_t = 1)]
        seed: u64,
        /// Output file.
        #[arg(long, env = "KRR_OUT")]
        out: PathBuf,
        /// Reference time the ages of contact data count back from (RFC 3339).
        #[arg(long, env = "KRR_AS_OF", value_parser = parse_time)]
        as_of: Option<Timestamp>,
    },
    /// Build and inspect snapshot files.
    Snapshot {
        #[command(subcommand)]
        command: SnapshotCommand,
    },
    /// Serve the API.
    Serve(Box<ServeArgs>),
    /// Inspect and compact the PATCH journal.
    Journal {
        #[command(subcommand)]
        command: JournalCommand,
    },
    /// Mint a signed test token (development and load tests); prints the token alone.
    Token {
        /// RSA (RS256) or EC P-256 (ES256) private key, PEM (PKCS#8 or PKCS#1).
        #[arg(long, env = "KRR_KEY")]
        key: PathBuf,
        /// Space-separated scopes.
        #[arg(long, env = "KRR_SCOPE")]
        scope: String,
        /// `pid` claim: the person of a user token, or the one person a machine token may look up.
        #[arg(long, env = "KRR_PID")]
        pid: Option<String>,
        /// `iss` claim.
        #[arg(long, env = "KRR_ISS", default_value = krr::auth::mint::MASKINPORTEN)]
        iss: String,
        /// Lifetime in seconds.
        #[arg(long, env = "KRR_TTL", default_value_t = 3600)]
        ttl: u64,
        /// `kid` header (must match a key of the service's JWKS).
        #[arg(long, env = "KRR_KID")]
        kid: Option<String>,
        /// `aud` claim.
        #[arg(long, env = "KRR_AUD")]
        aud: Option<String>,
        /// The consumer's organisation number (machine tokens).
        #[arg(long, env = "KRR_CONSUMER", default_value = "991825827")]
        consumer: String,
        /// Make a user (ID-porten) token: adds `acr`, drops `consumer`.
        #[arg(long, env = "KRR_USER")]
        user: bool,
    },
    /// Drive a running service with lookups and/or PATCHes; print throughput and latency.
    Loadtest(Box<LoadtestArgs>),
    /// The quick start: a synthetic register, development keys, and the service trusting
    /// only those keys; prints a curl command that works. Reuses what exists.
    Demo {
        /// Public API address.
        #[arg(long, env = "KRR_LISTEN", default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Where the demo keeps its files (git-ignored).
        #[arg(long, env = "KRR_DEMO_DIR", default_value = "data/demo")]
        demo_dir: PathBuf,
        /// Where the demo snapshot goes.
        #[arg(long, env = "KRR_SNAPSHOT_DIR", default_value = "snapshots")]
        snapshot_dir: PathBuf,
        /// Health, metrics and reload.
        #[arg(long, env = "KRR_ADMIN_LISTEN", default_value = "127.0.0.1:9090")]
        admin_listen: SocketAddr,
    },
    /// Load Redis and PostgreSQL with a snapshot's persons and drive them like `loadtest`
    /// (the side-by-side comparison of `tools/bench-peers`).
    Peers {
        #[command(subcommand)]
        command: PeersCommand,
    },
}

#[derive(Subcommand)]
enum PeersCommand {
    /// Write every person of the snapshot to Redis (one key per person) and/or PostgreSQL
    /// (table `persons`, jsonb).
    Load {
        /// The snapshot whose persons to load.
        #[arg(long)]
        snapshot: PathBuf,
        /// Redis URL, e.g. redis://127.0.0.1:6390/.
        #[arg(long)]
        redis: Option<String>,
        /// PostgreSQL URL, e.g. postgres://postgres@127.0.0.1:5490/postgres.
        #[arg(long)]
        postgres: Option<String>,
    },
    /// Drive a loaded peer with batch lookups; print throughput and latency like `loadtest`.
    Bench(PeersBenchArgs),
}

#[derive(clap::Args)]
struct PeersBenchArgs {
    /// The snapshot the peer was loaded from: ids are drawn from it.
    #[arg(long)]
    snapshot: PathBuf,
    /// Which peer.
    #[arg(long, value_enum)]
    target: krr::peers::Peer,
    /// The peer's URL.
    #[arg(long)]
    url: String,
    /// Concurrent connections.
    #[arg(long, short = 'c', default_value_t = 4)]
    connections: usize,
    /// Seconds to run.
    #[arg(long, short = 'd', default_value_t = 10)]
    duration: u64,
    /// Ids per lookup.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Seed of the id draws (the same seed draws the same ids as `loadtest`).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct ServeArgs {
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
    /// Largest request body in bytes.
    #[arg(long, env = "KRR_MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    max_body_bytes: usize,
    /// Seconds a client has to send a request's headers.
    #[arg(long, env = "KRR_HEADER_TIMEOUT", default_value_t = 10)]
    header_timeout: u64,
    /// Seconds a client has to send a request's body.
    #[arg(long, env = "KRR_BODY_TIMEOUT", default_value_t = 10)]
    body_timeout: u64,
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
    /// Seconds a PATCH waits for the journal database before it is answered 503.
    #[arg(long, env = "KRR_JOURNAL_TIMEOUT", default_value_t = 3.0)]
    journal_timeout: f64,
}

#[derive(clap::Args)]
struct LoadtestArgs {
    /// The service's address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    target: SocketAddr,
    /// The snapshot the service serves: ids are drawn from it (and PATCHes go to its
    /// AKTIV persons).
    #[arg(long)]
    snapshot: PathBuf,
    /// Token-signing key the service trusts (PEM), to mint the tokens with.
    #[arg(long)]
    key: PathBuf,
    /// `kid` of that key in the service's JWKS.
    #[arg(long)]
    kid: Option<String>,
    /// `iss` of the tokens.
    #[arg(long, default_value = krr::auth::mint::MASKINPORTEN)]
    iss: String,
    /// Scopes of the lookup token.
    #[arg(
        long,
        default_value = "krr:global/kontaktinformasjon.read krr:global/digitalpost.read"
    )]
    scope: String,
    /// Concurrent connections.
    #[arg(long, short = 'c', default_value_t = 4)]
    connections: usize,
    /// Seconds to run.
    #[arg(long, short = 'd', default_value_t = 10)]
    duration: u64,
    /// Stop after this many requests (across all connections).
    #[arg(long)]
    requests: Option<u64>,
    /// Ids per lookup.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// v1 or v2 (v2 with inkluderIkkeRegistrerte).
    #[arg(long, value_enum, default_value = "v1")]
    api: krr::loadtest::Api,
    /// Percentage of requests that are PATCH /rest/v1/person (0-100).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=100))]
    patch_percent: u8,
    /// Distinct persons (user tokens) the PATCHes are spread over.
    #[arg(long, default_value_t = 1000)]
    patch_persons: usize,
    /// Seed of the id draws.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Write every lookup as a CSV line `sent_unix_us,latency_us,ok` to this file (to see
    /// latency over time, e.g. around a snapshot swap).
    #[arg(long)]
    timeline: Option<PathBuf>,
}

#[derive(Subcommand)]
enum JournalCommand {
    /// Print the segments, sequence range and tail state; read only (safe while serving).
    Inspect {
        /// The journal directory.
        #[arg(long, env = "KRR_JOURNAL_DIR", default_value = "data/journal")]
        journal_dir: PathBuf,
        /// Inspect the journal in PostgreSQL instead.
        #[arg(long, env = "KRR_JOURNAL_URL")]
        journal_url: Option<String>,
    },
    /// Create the PostgreSQL journal's tables (idempotent; the service also does it).
    Init {
        /// The journal database (`postgres://user@host/db`).
        #[arg(long, env = "KRR_JOURNAL_URL")]
        journal_url: String,
    },
    /// Remove the segments (or PostgreSQL rows) wholly folded into a snapshot (never the
    /// newest segment). With PostgreSQL, run it once every replica serves that snapshot.
    Compact {
        /// The journal directory.
        #[arg(long, env = "KRR_JOURNAL_DIR", default_value = "data/journal")]
        journal_dir: PathBuf,
        /// Compact the journal in PostgreSQL instead.
        #[arg(long, env = "KRR_JOURNAL_URL")]
        journal_url: Option<String>,
        /// The snapshot whose folded sequence number decides; default: the newest valid
        /// snapshot of --snapshot-dir.
        #[arg(long)]
        snapshot: Option<PathBuf>,
        /// Where the served snapshots are.
        #[arg(long, env = "KRR_SNAPSHOT_DIR", default_value = "snapshots")]
        snapshot_dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum SnapshotCommand {
    /// Build a snapshot from a JSONL export; bad lines are reported with line numbers.
    Build {
        /// The export (JSON Lines, one person per line).
        #[arg(long, env = "KRR_INPUT")]
        input: PathBuf,
        /// Journal directory to fold in.
        #[arg(long, env = "KRR_JOURNAL", conflicts_with = "journal_url")]
        journal: Option<PathBuf>,
        /// Journal in PostgreSQL to fold in (`postgres://…`), read as one consistent prefix.
        #[arg(long, env = "KRR_JOURNAL_URL")]
        journal_url: Option<String>,
        /// The snapshot file to write (atomically).
        #[arg(long, env = "KRR_OUT")]
        out: PathBuf,
        /// Build time (RFC 3339), the instant the 18-month rule is evaluated at; default now.
        #[arg(long, env = "KRR_BUILD_TIME", value_parser = parse_time)]
        build_time: Option<Timestamp>,
    },
    /// Upload a snapshot to object storage, then point `CURRENT` at it (replicas following
    /// the prefix with --snapshot-url fetch and serve it; never a half-uploaded one).
    Publish {
        /// The snapshot file (verified before it is uploaded).
        path: PathBuf,
        /// `s3://bucket/prefix` (credentials, region and endpoint from AWS_* variables).
        #[arg(long, env = "KRR_SNAPSHOT_URL")]
        to: String,
    },
    /// Print a snapshot's header and verify its checksum.
    Inspect {
        /// The snapshot file.
        path: PathBuf,
        /// Also print this person's full JSON (every group).
        #[arg(long)]
        get: Option<String>,
    },
}

fn parse_time(s: &str) -> Result<Timestamp, String> {
    Timestamp::parse(s).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let tty = std::io::stderr().is_terminal();
    let log_format = cli.log_format;
    match cli.command {
        Command::Generate {
            count,
            seed,
            out,
            as_of,
        } => {
            let started = Instant::now();
            let opts = krr::generate::GenerateOptions {
                count,
                seed,
                as_of: as_of.unwrap_or(krr::generate::DEFAULT_AS_OF),
                progress: tty,
            };
            krr::generate::generate_file(&out, &opts)?;
            eprintln!(
                "wrote {count} persons to {} in {:.2} s",
                out.display(),
                started.elapsed().as_secs_f64()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Snapshot {
            command:
                SnapshotCommand::Build {
                    input,
                    journal,
                    journal_url,
                    out,
                    build_time,
                },
        } => {
            let started = Instant::now();
            let mut opts = BuildOptions::now();
            if let Some(t) = build_time {
                opts.build_time = t;
            }
            opts.journal = match (journal, journal_url) {
                (Some(dir), _) => Some(snapshot::JournalInput::Dir(dir)),
                (None, Some(url)) => {
                    let (entries, last_seq) =
                        runtime()?.block_on(krr::journal::pg::read_all(&url))?;
                    Some(snapshot::JournalInput::Read { entries, last_seq })
                }
                (None, None) => None,
            };
            opts.progress = tty;
            let report = snapshot::build_file(&input, &out, &opts)?;
            if let Some(j) = &report.journal {
                eprintln!(
                    "journal: {} records for {} persons folded up to sequence {}: {} applied, \
                     {} kept the export's newer change, {} not in the export or SLETTET",
                    j.records, j.persons, j.folded_seq, j.applied, j.superseded, j.not_applicable
                );
                if let Some(cut) = &j.torn_tail {
                    eprintln!(
                        "journal: {} ends in an unacknowledged torn record ({}; {} bytes at byte {}), not folded",
                        cut.file.display(),
                        cut.reason,
                        cut.dropped_bytes,
                        cut.offset
                    );
                }
            }
            let h = &report.header;
            eprintln!(
                "built {} ({} persons, {} lines, {} → {} bytes) in {:.2} s, id {}",
                out.display(),
                h.counts.records,
                report.lines,
                report.input_bytes,
                report.output_bytes,
                started.elapsed().as_secs_f64(),
                h.id()
            );
            let t = &report.timings;
            eprintln!(
                "phases: parse {:.2} s, assemble {:.2} s, write+fsync {:.2} s",
                t.parse.as_secs_f64(),
                t.assemble.as_secs_f64(),
                t.write.as_secs_f64()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Snapshot {
            command: SnapshotCommand::Inspect { path, get },
        } => inspect(path, get),
        Command::Snapshot {
            command: SnapshotCommand::Publish { path, to },
        } => {
            let started = Instant::now();
            let remote = krr::remote::Remote::new(&to)?;
            let p = runtime()?.block_on(remote.publish(&path))?;
            eprintln!(
                "published {} ({} bytes) as {} under {to}; CURRENT points to it ({:.1} s)",
                p.id,
                p.size,
                p.key,
                started.elapsed().as_secs_f64()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Journal { command } => journal_command(command),
        Command::Loadtest(args) => loadtest(*args),
        Command::Serve(args) => {
            let _logs = init_tracing(log_format);
            runtime()?.block_on(krr::serve::serve(serve_config(*args)))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Token {
            key,
            scope,
            pid,
            iss,
            ttl,
            kid,
            aud,
            consumer,
            user,
        } => {
            let pem = std::fs::read(&key).with_context(|| format!("reading {}", key.display()))?;
            let opts = krr::auth::mint::MintOptions {
                scope,
                pid,
                iss,
                ttl,
                kid,
                aud,
                consumer,
                user,
            };
            println!("{}", krr::auth::mint::mint(&pem, &opts)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo {
            listen,
            demo_dir,
            snapshot_dir,
            admin_listen,
        } => {
            let _logs = init_tracing(log_format);
            let paths = krr::serve::DemoPaths {
                dir: demo_dir,
                snapshot_dir,
            };
            runtime()?.block_on(krr::serve::demo(paths, listen, admin_listen))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Peers { command } => peers(command),
    }
}

/// Logs to stderr through a background writer (a slow terminal or log shipper never
/// blocks a request); nothing is dropped (the writer applies back-pressure instead). The
/// guard flushes on drop.
fn init_tracing(format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    let filter = log_filter(std::env::var("KRR_LOG").ok().as_deref());
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
    guard
}

/// The log filter from `KRR_LOG` (default `info`). tokio-postgres logs statement parameters
/// (personal numbers) at debug: every directive naming it is dropped and it is capped at
/// info, whatever `KRR_LOG` says.
fn log_filter(spec: Option<&str>) -> tracing_subscriber::EnvFilter {
    let kept: Vec<&str> = spec
        .unwrap_or("info")
        .split(',')
        .filter(|d| !d.contains("tokio_postgres") && !d.trim().is_empty())
        .collect();
    let base = if kept.is_empty() {
        "info".to_string()
    } else {
        kept.join(",")
    };
    tracing_subscriber::EnvFilter::try_new(&base)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
        .add_directive("tokio_postgres=info".parse().expect("a valid directive"))
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

fn loadtest(a: LoadtestArgs) -> anyhow::Result<ExitCode> {
    use krr::auth::mint::{MintOptions, mint};
    let snap = Snapshot::open(&a.snapshot)?;
    let ids: Vec<krr::fnr::PersonId> = snap.ids().collect();
    let key = std::fs::read(&a.key)?;
    let base = MintOptions {
        iss: a.iss.clone(),
        kid: a.kid.clone(),
        ttl: 4 * 3600,
        ..MintOptions::default()
    };
    let machine_token = mint(
        &key,
        &MintOptions {
            scope: a.scope.clone(),
            ..base.clone()
        },
    )?;
    let mut user_tokens = Vec::new();
    if a.patch_percent > 0 {
        let step = (ids.len() / a.patch_persons.max(1)).max(1);
        for &id in ids.iter().step_by(step) {
            if user_tokens.len() == a.patch_persons {
                break;
            }
            if snap.get(id).is_some_and(|r| !r.is_slettet()) {
                let digits = String::from_utf8(id.digits().to_vec()).expect("digits");
                let t = mint(
                    &key,
                    &MintOptions {
                        scope: "krr:user/spraak.write".into(),
                        pid: Some(digits),
                        user: true,
                        ..base.clone()
                    },
                )?;
                user_tokens.push((id, t));
            }
        }
    }
    drop(snap);
    let opts = krr::loadtest::LoadOptions {
        target: a.target,
        connections: a.connections,
        duration: std::time::Duration::from_secs(a.duration),
        requests: a.requests,
        batch: a.batch,
        api: a.api,
        patch_percent: a.patch_percent,
        ids: std::sync::Arc::new(ids),
        machine_token,
        user_tokens: std::sync::Arc::new(user_tokens),
        seed: a.seed,
        timeline: a.timeline.is_some(),
    };
    let report = runtime()?.block_on(krr::loadtest::run(opts.clone()))?;
    if let Some(path) = &a.timeline {
        let mut samples = report.timeline.clone();
        samples.sort_unstable_by_key(|s| s.sent_unix_us);
        let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
        writeln!(out, "sent_unix_us,latency_us,ok")?;
        for s in &samples {
            writeln!(
                out,
                "{},{},{}",
                s.sent_unix_us,
                s.latency_us,
                u8::from(s.ok)
            )?;
        }
        out.flush()?;
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report.to_json(&opts))?);
    } else {
        print!("{}", report.to_text(&opts));
    }
    Ok(if report.error_count() == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(4)
    })
}

fn peers(command: PeersCommand) -> anyhow::Result<ExitCode> {
    match command {
        PeersCommand::Load {
            snapshot,
            redis,
            postgres,
        } => {
            anyhow::ensure!(
                redis.is_some() || postgres.is_some(),
                "nothing to load: give --redis and/or --postgres"
            );
            let snap = Snapshot::open(&snapshot)?;
            let rt = runtime()?;
            if let Some(url) = &redis {
                rt.block_on(krr::peers::load_redis(
                    &snap,
                    url,
                    krr::peers::REDIS_PIPELINE,
                ))?;
            }
            if let Some(url) = &postgres {
                rt.block_on(krr::peers::load_postgres(&snap, url))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        PeersCommand::Bench(a) => {
            let ids: Vec<PersonId> = Snapshot::open(&a.snapshot)?.ids().collect();
            let opts = krr::peers::PeerOptions {
                peer: a.target,
                url: a.url,
                connections: a.connections,
                duration: std::time::Duration::from_secs(a.duration),
                batch: a.batch,
                ids: std::sync::Arc::new(ids),
                seed: a.seed,
            };
            let report = runtime()?.block_on(krr::peers::run(opts.clone()))?;
            if a.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&opts.report_json(&report))?
                );
            } else {
                println!("{} ({} ids a request)", opts.peer.name(), opts.batch);
                print!("{}", report.to_text(&opts.as_load_options()));
            }
            Ok(if report.error_count() == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(4)
            })
        }
    }
}

fn journal_command(command: JournalCommand) -> anyhow::Result<ExitCode> {
    match command {
        JournalCommand::Init { journal_url } => {
            runtime()?.block_on(krr::journal::pg::init(&journal_url))?;
            eprintln!("journal tables ready in the database");
            Ok(ExitCode::SUCCESS)
        }
        JournalCommand::Inspect {
            journal_url: Some(url),
            ..
        } => {
            let (entries, last_seq) = runtime()?.block_on(krr::journal::pg::read_all(&url))?;
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "records {}  first seq {}  last seq {last_seq}",
                entries.len(),
                entries.first().map_or(0, |e| e.seq)
            )?;
            Ok(ExitCode::SUCCESS)
        }
        JournalCommand::Inspect { journal_dir, .. } => {
            let scan = krr::journal::scan(&journal_dir, krr::journal::Mode::ReadOnly)?;
            let mut out = std::io::stdout().lock();
            for seg in &scan.segments {
                writeln!(
                    out,
                    "{}  first {}  records {}  bytes {}",
                    seg.path.display(),
                    seg.first_seq,
                    seg.records,
                    seg.good_len
                )?;
            }
            writeln!(
                out,
                "records {}  last seq {}",
                scan.entries.len(),
                scan.last_seq()
            )?;
            match &scan.cut {
                None => writeln!(out, "tail          clean")?,
                Some(c) => writeln!(
                    out,
                    "tail          torn: {} ({} bytes at byte {} of {}); the service cuts it at start",
                    c.reason,
                    c.dropped_bytes,
                    c.offset,
                    c.file.display()
                )?,
            }
            Ok(ExitCode::SUCCESS)
        }
        JournalCommand::Compact {
            journal_dir,
            journal_url,
            snapshot,
            snapshot_dir,
        } => {
            // Verified like the service verifies it: a refused snapshot must not decide.
            let snap = match snapshot {
                Some(p) => std::sync::Arc::new(Snapshot::open(&p)?),
                None => {
                    let store = krr::store::Store::empty();
                    store.load_newest(&snapshot_dir)?.ok_or_else(|| {
                        anyhow::anyhow!(
                            "no valid snapshot in {}; nothing is compacted",
                            snapshot_dir.display()
                        )
                    })?
                }
            };
            let folded = snap.header().journal_seq;
            if let Some(url) = journal_url {
                let rows = runtime()?.block_on(krr::journal::pg::compact(&url, folded))?;
                eprintln!(
                    "{rows} journal rows removed; snapshot {} holds the journal up to sequence {folded}",
                    snap.id()
                );
                return Ok(ExitCode::SUCCESS);
            }
            let removed = krr::journal::compact(&journal_dir, folded)?;
            for p in &removed {
                eprintln!("removed {}", p.display());
            }
            eprintln!(
                "{} segment{} removed; snapshot {} holds the journal up to sequence {folded}",
                removed.len(),
                if removed.len() == 1 { "" } else { "s" },
                snap.id()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn serve_config(a: ServeArgs) -> krr::serve::ServeConfig {
    let jwks = match (a.jwks_file, a.jwks_url) {
        (Some(f), _) => Some(krr::auth::JwksSource::File(f)),
        (None, Some(u)) => Some(krr::auth::JwksSource::Url(u)),
        (None, None) => None,
    };
    krr::serve::ServeConfig {
        listen: a.listen,
        snapshot_dir: a.snapshot_dir,
        jwks,
        issuers: a.issuers,
        audience: a.audience,
        signing: a.signing_key.zip(a.signing_cert),
        print: a.print_provider.zip(a.print_cert),
        limits: krr::http::Limits {
            max_connections: a.max_connections,
            max_body_bytes: a.max_body_bytes,
            header_timeout: std::time::Duration::from_secs(a.header_timeout),
            body_timeout: std::time::Duration::from_secs(a.body_timeout),
            shutdown_grace: std::time::Duration::from_secs(a.shutdown_grace),
        },
        clock_skew: std::time::Duration::from_secs(a.clock_skew),
        jwks_refresh: std::time::Duration::from_secs(a.jwks_refresh),
        journal_dir: a.journal_dir,
        journal: krr::journal::JournalOptions {
            segment_bytes: a.journal_segment_bytes,
            ..krr::journal::JournalOptions::default()
        },
        journal_url: a.journal_url,
        pg: krr::journal::pg::PgOptions {
            pool_size: a.journal_pool.max(1),
            timeout: std::time::Duration::from_secs_f64(a.journal_timeout.clamp(0.1, 600.0)),
            ..krr::journal::pg::PgOptions::default()
        },
        admin_listen: Some(a.admin_listen),
        watch: !a.no_watch,
        snapshot_url: a.snapshot_url,
        snapshot_poll: std::time::Duration::from_secs_f64(a.snapshot_poll.clamp(0.05, 86_400.0)),
    }
}

fn inspect(path: PathBuf, get: Option<String>) -> anyhow::Result<ExitCode> {
    let id = match get.as_deref() {
        None => None,
        Some(s) => Some(
            PersonId::parse(s.as_bytes())
                .context("--get must be a personal number of 11 digits")?,
        ),
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "snapshot      {}", path.display())?;
    // Show the header even when the body turns out corrupt.
    let mut head = [0u8; snapshot::format::HEADER_LEN];
    let header = std::fs::File::open(&path)
        .and_then(|f| std::os::unix::fs::FileExt::read_exact_at(&f, &mut head, 0))
        .map_err(anyhow::Error::from)
        .and_then(|()| Header::decode(&head).map_err(anyhow::Error::from));
    if let Ok(h) = &header {
        print_header(&mut out, h)?;
    }
    let started = Instant::now();
    match Snapshot::open(&path) {
        Ok(snap) => {
            writeln!(
                out,
                "verdict       OK: checksum and layout verified in {:.3} s",
                started.elapsed().as_secs_f64()
            )?;
            if let Some(id) = id {
                let mut buf = Vec::new();
                let none = krr::overlay::Overlay::new();
                if !krr::lookup::write_person(&snap, &none, id, Groups::ALL, &mut buf) {
                    eprintln!("that personal number is not in this snapshot");
                    return Ok(ExitCode::from(3));
                }
                buf.push(b'\n');
                out.write_all(&buf)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            writeln!(out, "verdict       REFUSED: {e}")?;
            Ok(ExitCode::from(2))
        }
    }
}

fn print_header(out: &mut impl Write, h: &Header) -> std::io::Result<()> {
    let c = &h.counts;
    writeln!(out, "id            {}", h.id())?;
    writeln!(out, "format        version {}", h.version)?;
    writeln!(out, "built         {}", h.build_time.to_oslo_string())?;
    writeln!(out, "journal seq   {}", h.journal_seq)?;
    writeln!(
        out,
        "size          {} bytes (header {}, body {})",
        snapshot::format::HEADER_LEN as u64 + h.body_len,
        snapshot::format::HEADER_LEN,
        h.body_len
    )?;
    writeln!(
        out,
        "persons       {} (AKTIV {}, SLETTET {})",
        c.records, c.aktiv, c.slettet
    )?;
    writeln!(out, "reserved      {}", c.reservert)?;
    writeln!(out, "kan varsles   {}", c.kan_varsles)?;
    writeln!(out, "digital post  {}", c.digital_post)?;
    writeln!(out, "certificates  {}", c.certs)?;
    writeln!(out, "max probe     {}", h.max_probe)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::log_filter;

    #[test]
    fn tokio_postgres_never_logs_below_info() {
        for spec in [
            None,
            Some("debug"),
            Some("trace,tokio_postgres::query=trace"),
            Some("tokio_postgres=debug"),
            Some("krr=debug, tokio_postgres::query=debug"),
        ] {
            let f = log_filter(spec).to_string();
            let directives: Vec<&str> = f
                .split(',')
                .filter(|d| d.contains("tokio_postgres"))
                .collect();
            assert_eq!(directives, ["tokio_postgres=info"], "{spec:?} gave {f}");
        }
        assert!(
            log_filter(Some("krr=debug,warn"))
                .to_string()
                .contains("krr=debug")
        );
    }
}
