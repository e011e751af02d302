//! `krr-bench`: the tools that measure krr from outside: `loadtest` drives a running
//! service over HTTP; `peers` loads Redis and PostgreSQL with the same persons and drives
//! them with the same draws, for the side-by-side figures of `tools/bench-peers`.
//!
//! They live apart from the service so that the service binary links no Redis client and
//! no histogram library it never uses.

mod feed;
mod floor;
mod loadtest;
mod peers;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};

use krr::dev::mint::{MASKINPORTEN, MintOptions, mint};
use krr::model::fnr::PersonId;
use krr::snapshot::Snapshot;

#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "krr-bench",
    version,
    about = "Measure krr: the HTTP load generator and the Redis/PostgreSQL peers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Drive a running service with lookups and/or PATCHes; print throughput and latency.
    Loadtest(Box<LoadtestArgs>),
    /// Page the whole change feed from 0 as a copy-keeping client does, then follow it
    /// while PATCHes run; print the time, pages/s, persons/s and the PATCH → feed delay.
    Feed(FeedArgs),
    /// Load Redis and PostgreSQL with a snapshot's persons and drive them like `loadtest`
    /// (the side-by-side comparison of `tools/bench-peers`).
    Peers {
        #[command(subcommand)]
        command: PeersCommand,
    },
    /// Answer every HTTP/1.1 request with one fixed answer and do nothing else: the floor
    /// under any service on this runtime, to drive with `loadtest --batch 1`
    /// (`tools/bench-floor`).
    Floor {
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:18081")]
        listen: SocketAddr,
        /// The snapshot a typical person's `/rest/v1/personer` answer is taken from (the
        /// length nearest the mean of its first 1001).
        #[arg(long)]
        snapshot: PathBuf,
        /// Read and write HTTP/1.1 with hyper, set up as `krr serve` sets it up (the
        /// request's body read whole), instead of the floor's own few lines: the floor
        /// under any service built on hyper.
        #[arg(long)]
        hyper: bool,
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
    target: peers::Peer,
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
struct FeedArgs {
    /// The service's address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    target: SocketAddr,
    /// The snapshot the service serves (the PATCHes of --follow go to its AKTIV persons).
    #[arg(long)]
    snapshot: Option<PathBuf>,
    /// Token-signing key the service trusts (PEM).
    #[arg(long)]
    key: PathBuf,
    /// `kid` of that key in the service's JWKS.
    #[arg(long)]
    kid: Option<String>,
    /// `iss` of the machine token.
    #[arg(long, default_value = MASKINPORTEN)]
    iss: String,
    /// Scopes of the feed token (the feed scope and the read scopes whose groups to fetch).
    #[arg(
        long,
        default_value = "krr:global/hentendring.read krr:global/kontaktinformasjon.read krr:global/digitalpost.read"
    )]
    scope: String,
    /// After the copy, follow the feed this many seconds while PATCHes run (needs --snapshot).
    #[arg(long, default_value_t = 0)]
    follow: u64,
    /// PATCHes per second while following.
    #[arg(long, default_value_t = 50)]
    patch_rate: u32,
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
    #[arg(long, default_value = MASKINPORTEN)]
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
    api: loadtest::Api,
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
    /// `Accept-Encoding` of the lookups (e.g. `gzip`, `zstd`); answers are checked to come
    /// in the coding the service should choose for it.
    #[arg(long)]
    accept_encoding: Option<String>,
    /// Decompress and count every n-th coded answer of each connection.
    #[arg(long, default_value_t = 16)]
    verify_every: u64,
    /// HTTP/2 by prior knowledge (h2c) instead of HTTP/1.1.
    #[arg(long)]
    http2: bool,
    /// With --http2: the largest frame the client accepts (16384 to 16777215; default
    /// HTTP/2's 16384).
    #[arg(long, value_parser = clap::value_parser!(u32).range(16_384..=16_777_215))]
    h2_frame_size: Option<u32>,
    /// After a 429 or 503 with Retry-After, a connection waits that long (at most 5 s)
    /// before its next request, as a well-behaved client does.
    #[arg(long)]
    honour_retry_after: bool,
    /// Write every lookup as a CSV line `sent_unix_us,latency_us,ok` to this file (to see
    /// latency over time, e.g. around a snapshot swap).
    #[arg(long)]
    timeline: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Loadtest(args) => run_loadtest(*args),
        Command::Feed(args) => run_feed(args),
        Command::Peers { command } => run_peers(command),
        Command::Floor {
            listen,
            snapshot,
            hyper,
        } => floor::run(listen, &snapshot, hyper).map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

/// Exit 4 when any request failed, so scripts notice.
fn exit_code(errors: u64) -> ExitCode {
    if errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(4)
    }
}

/// The machine token for the lookups, and for PATCHes a user token for each of up to
/// `--patch-persons` AKTIV persons spread over the snapshot.
fn tokens(a: &LoadtestArgs, snap: &Snapshot, ids: &[PersonId]) -> anyhow::Result<Tokens> {
    let minter = Minter::new(&a.key, &a.iss, a.kid.as_ref())?;
    let machine = minter.machine(&a.scope)?;
    let users = if a.patch_percent > 0 {
        minter.users(snap, ids, a.patch_persons)?
    } else {
        Vec::new()
    };
    Ok(Tokens { machine, users })
}

/// Mints the load tools' tokens with one key, issuer and `kid`, valid four hours.
struct Minter {
    key: Vec<u8>,
    base: MintOptions,
}

impl Minter {
    fn new(key: &std::path::Path, iss: &str, kid: Option<&String>) -> anyhow::Result<Minter> {
        Ok(Minter {
            key: std::fs::read(key)?,
            base: MintOptions {
                iss: iss.to_string(),
                kid: kid.cloned(),
                ttl: 4 * 3600,
                ..MintOptions::default()
            },
        })
    }

    /// A machine token with `scope`.
    fn machine(&self, scope: &str) -> anyhow::Result<String> {
        Ok(mint(
            &self.key,
            &MintOptions {
                scope: scope.to_string(),
                ..self.base.clone()
            },
        )?)
    }

    /// A user token with `krr:user/spraak.write` for each of up to `n` AKTIV persons spread
    /// over the snapshot.
    fn users(
        &self,
        snap: &Snapshot,
        ids: &[PersonId],
        n: usize,
    ) -> anyhow::Result<Vec<(PersonId, String)>> {
        let mut users = Vec::new();
        let step = (ids.len() / n.max(1)).max(1);
        for &id in ids.iter().step_by(step) {
            if users.len() == n {
                break;
            }
            if snap.get(id).is_some_and(|r| !r.is_slettet()) {
                let digits = String::from_utf8(id.digits().to_vec())?;
                let t = mint(
                    &self.key,
                    &MintOptions {
                        scope: "krr:user/spraak.write".into(),
                        pid: Some(digits),
                        user: true,
                        ..self.base.clone()
                    },
                )?;
                users.push((id, t));
            }
        }
        Ok(users)
    }
}

struct Tokens {
    machine: String,
    users: Vec<(PersonId, String)>,
}

fn run_loadtest(a: LoadtestArgs) -> anyhow::Result<ExitCode> {
    let snap = Snapshot::open(&a.snapshot)?;
    let ids: Vec<PersonId> = snap.ids().collect();
    let tokens = tokens(&a, &snap, &ids)?;
    drop(snap);
    let opts = loadtest::LoadOptions {
        target: a.target,
        connections: a.connections,
        duration: Duration::from_secs(a.duration),
        requests: a.requests,
        batch: a.batch,
        api: a.api,
        patch_percent: a.patch_percent,
        ids: Arc::new(ids),
        machine_token: tokens.machine,
        user_tokens: Arc::new(tokens.users),
        seed: a.seed,
        timeline: a.timeline.is_some(),
        expect_encoding: a.accept_encoding.as_deref().and_then(|v| {
            let mut h = hyper::HeaderMap::new();
            h.insert(
                "accept-encoding",
                hyper::header::HeaderValue::from_str(v).ok()?,
            );
            krr::http::coding::negotiate(&h).header()
        }),
        accept_encoding: a.accept_encoding,
        verify_every: a.verify_every,
        http2: a.http2,
        h2_frame_size: a.h2_frame_size,
        honour_retry_after: a.honour_retry_after,
    };
    let report = runtime()?.block_on(loadtest::run(opts.clone()))?;
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
    Ok(exit_code(report.error_count()))
}

fn run_feed(a: FeedArgs) -> anyhow::Result<ExitCode> {
    let minter = Minter::new(&a.key, &a.iss, a.kid.as_ref())?;
    let token = minter.machine(&a.scope)?;
    let mut users = Vec::new();
    if a.follow > 0 {
        let path = a
            .snapshot
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("--follow needs --snapshot (whose persons to PATCH)"))?;
        let snap = Snapshot::open(path)?;
        let ids: Vec<PersonId> = snap.ids().collect();
        users = minter.users(&snap, &ids, 1000)?;
    }
    // One client, one request at a time: one thread, no hand-overs between workers.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(feed::run(feed::FeedOptions {
            target: a.target,
            token,
            follow: Duration::from_secs(a.follow),
            patch_rate: a.patch_rate,
            users,
        }))?;
    Ok(ExitCode::SUCCESS)
}

fn run_peers(command: PeersCommand) -> anyhow::Result<ExitCode> {
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
                rt.block_on(peers::load_redis(&snap, url, peers::REDIS_PIPELINE))?;
            }
            if let Some(url) = &postgres {
                rt.block_on(peers::load_postgres(&snap, url))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        PeersCommand::Bench(a) => {
            let ids: Vec<PersonId> = Snapshot::open(&a.snapshot)?.ids().collect();
            let opts = peers::PeerOptions {
                peer: a.target,
                url: a.url,
                connections: a.connections,
                duration: Duration::from_secs(a.duration),
                batch: a.batch,
                ids: Arc::new(ids),
                seed: a.seed,
            };
            let report = runtime()?.block_on(peers::run(opts.clone()))?;
            if a.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&opts.report_json(&report))?
                );
            } else {
                println!("{} ({} ids a request)", opts.peer.name(), opts.batch);
                print!("{}", report.to_text(&opts.as_load_options()));
            }
            Ok(exit_code(report.error_count()))
        }
    }
}
