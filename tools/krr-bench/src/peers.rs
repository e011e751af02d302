//! `krr-bench peers`: what an agency would otherwise use, loaded with the same register and
//! driven the way `krr-bench loadtest` drives the service, for a side-by-side comparison.
//!
//! - Redis: one key per person (the 11 digits) holding that person's full JSON exactly as
//!   the service renders it with every group; a request is `MGET` of `batch` keys (`GET`
//!   of one), and every one of them must come back.
//! - PostgreSQL: `persons (id bigint PRIMARY KEY, data jsonb NOT NULL)`; a request is the
//!   prepared `SELECT data FROM persons WHERE id = ANY($1)` with an `int8[]` of `batch`
//!   ids, and one row must come back per distinct id.
//!
//! The ids are drawn exactly as [`crate::loadtest`] draws them ([`draw`], one ChaCha8
//! stream per connection, seeded alike), so with the same seed every target is asked for the same
//! persons. Reports are [`LoadReport`]s, printed the same way.
//!
//! A little over 500 lines: loading and driving both peers share the draws, the report and
//! the connection loop, which would otherwise be split from what uses them.

use std::collections::BTreeMap;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::{BufMut, BytesMut};
use hdrhistogram::Histogram;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{FromSql, IsNull, ToSql, Type, to_sql_checked};

use crate::loadtest::{Api, KindReport, LoadOptions, LoadReport, draw};
use krr::model::Groups;
use krr::model::fnr::PersonId;
use krr::snapshot::Snapshot;

/// Which peer to drive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Peer {
    /// Redis: `MGET` of `batch` keys.
    Redis,
    /// PostgreSQL: `SELECT data FROM persons WHERE id = ANY($1)`.
    Postgres,
}

impl Peer {
    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Peer::Redis => "redis",
            Peer::Postgres => "postgres",
        }
    }
}

/// Persons written per Redis pipeline while loading.
pub const REDIS_PIPELINE: usize = 10_000;

/// Connections used to load either peer.
const LOAD_CONNECTIONS: usize = 2;

fn elapsed(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}

/// Prints progress to stderr every million persons.
fn progress(done: &AtomicU64, n: u64, total: u64, started: Instant, what: &str) {
    let before = done.fetch_add(n, Ordering::Relaxed);
    let after = before + n;
    if before / 1_000_000 != after / 1_000_000 || after == total {
        eprintln!("{what}: {after}/{total} persons, {:.1} s", elapsed(started));
    }
}

fn redis_info(url: &str) -> anyhow::Result<redis::ConnectionInfo> {
    use redis::IntoConnectionInfo;
    Ok(url
        .into_connection_info()
        .context("redis url")?
        .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true)))
}

async fn redis_connect(url: &str) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(redis_info(url)?)?;
    // No response timeout: a 10 000-person pipeline can take longer than the default 0.5 s.
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
    Ok(client
        .get_multiplexed_async_connection_with_config(&config)
        .await?)
}

/// Writes every person of `snapshot` to Redis (`SET digits json`), `pipeline` persons per
/// round trip over two connections. Keys already there are overwritten, others are left.
pub async fn load_redis(snapshot: &Snapshot, url: &str, pipeline: usize) -> anyhow::Result<()> {
    let started = Instant::now();
    let ids: Vec<PersonId> = snapshot.ids().collect();
    let total = ids.len() as u64;
    let done = AtomicU64::new(0);
    let part = |ids| redis_part(snapshot, url, ids, pipeline, (&done, total, started));
    let half = ids.len().div_ceil(LOAD_CONNECTIONS);
    let (a, b) = tokio::join!(part(&ids[..half]), part(&ids[half..]));
    a?;
    b?;
    let mut con = redis_connect(url).await?;
    let keys: u64 = redis::cmd("DBSIZE").query_async(&mut con).await?;
    let memory: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut con)
        .await?;
    let used = memory
        .lines()
        .find_map(|l| l.strip_prefix("used_memory_human:"))
        .unwrap_or("?")
        .trim()
        .to_string();
    eprintln!(
        "redis: loaded {total} persons in {:.1} s ({:.0} persons/s); {keys} keys, {used} used",
        elapsed(started),
        total as f64 / elapsed(started)
    );
    if keys != total {
        eprintln!("redis: warning: {keys} keys in the database, {total} persons in the snapshot");
    }
    Ok(())
}

/// How far a load is: (persons done, persons in all, start).
type Progress<'a> = (&'a AtomicU64, u64, Instant);

async fn redis_part(
    snapshot: &Snapshot,
    url: &str,
    ids: &[PersonId],
    pipeline: usize,
    (done, total, started): Progress<'_>,
) -> anyhow::Result<()> {
    let mut con = redis_connect(url).await?;
    let mut buf = Vec::with_capacity(4096);
    for chunk in ids.chunks(pipeline.max(1)) {
        let mut pipe = redis::pipe();
        for &id in chunk {
            let rec = snapshot
                .get(id)
                .context("an id of the snapshot is not in it")?;
            buf.clear();
            snapshot.write_record(&rec, Groups::ALL, None, &mut buf);
            pipe.cmd("SET").arg(&id.digits()[..]).arg(&buf[..]).ignore();
        }
        pipe.exec_async(&mut con)
            .await
            .context("redis SET pipeline")?;
        progress(done, chunk.len() as u64, total, started, "redis");
    }
    Ok(())
}

/// A person's JSON as a `jsonb` parameter in binary form: version 1, then the JSON text.
#[derive(Debug)]
struct Jsonb<'a>(&'a [u8]);

impl ToSql for Jsonb<'_> {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.put_u8(1);
        out.put_slice(self.0);
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB
    }

    to_sql_checked!();
}

/// A `jsonb` column as the server sends it in binary form, not parsed.
#[derive(Debug)]
struct RawJsonb<'a>(&'a [u8]);

impl<'a> FromSql<'a> for RawJsonb<'a> {
    fn from_sql(
        _ty: &Type,
        raw: &'a [u8],
    ) -> Result<RawJsonb<'a>, Box<dyn std::error::Error + Sync + Send>> {
        Ok(RawJsonb(raw))
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB
    }
}

async fn pg_connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .context("connecting to postgres")?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

async fn postgres_part(
    snapshot: &Snapshot,
    url: &str,
    ids: &[PersonId],
    (done, total, started): Progress<'_>,
) -> anyhow::Result<()> {
    let client = pg_connect(url).await?;
    let sink = client
        .copy_in("COPY persons (id, data) FROM STDIN (FORMAT binary)")
        .await?;
    let mut writer = pin!(BinaryCopyInWriter::new(sink, &[Type::INT8, Type::JSONB]));
    let mut buf = Vec::with_capacity(4096);
    for chunk in ids.chunks(10_000) {
        for &id in chunk {
            let rec = snapshot
                .get(id)
                .context("an id of the snapshot is not in it")?;
            buf.clear();
            snapshot.write_record(&rec, Groups::ALL, None, &mut buf);
            let key = id.key().cast_signed();
            writer.as_mut().write(&[&key, &Jsonb(&buf)]).await?;
        }
        progress(done, chunk.len() as u64, total, started, "postgres COPY");
    }
    writer.as_mut().finish().await?;
    Ok(())
}

/// (Re)creates `persons (id bigint PRIMARY KEY, data jsonb NOT NULL)` and fills it with
/// every person of `snapshot` by binary COPY over two connections; the primary key is
/// built afterwards, then the table is vacuumed and analysed.
pub async fn load_postgres(snapshot: &Snapshot, url: &str) -> anyhow::Result<()> {
    let started = Instant::now();
    let admin = pg_connect(url).await?;
    admin
        .batch_execute(
            "DROP TABLE IF EXISTS persons; \
             CREATE TABLE persons (id bigint NOT NULL, data jsonb NOT NULL)",
        )
        .await?;
    let ids: Vec<PersonId> = snapshot.ids().collect();
    let total = ids.len() as u64;
    let done = AtomicU64::new(0);
    let part = |ids| postgres_part(snapshot, url, ids, (&done, total, started));
    let half = ids.len().div_ceil(LOAD_CONNECTIONS);
    let (a, b) = tokio::join!(part(&ids[..half]), part(&ids[half..]));
    a?;
    b?;
    let copied = elapsed(started);
    let t = Instant::now();
    admin
        .batch_execute("SET maintenance_work_mem = '1GB'; ALTER TABLE persons ADD PRIMARY KEY (id)")
        .await?;
    let key = elapsed(t);
    let t = Instant::now();
    admin.batch_execute("VACUUM (ANALYZE) persons").await?;
    let vacuum = elapsed(t);
    let size: String = admin
        .query_one(
            "SELECT pg_size_pretty(pg_total_relation_size('persons'))",
            &[],
        )
        .await?
        .get(0);
    eprintln!(
        "postgres: loaded {total} persons in {:.1} s (COPY {copied:.1} s, primary key {key:.1} s, \
         VACUUM ANALYZE {vacuum:.1} s); table with index and TOAST {size}",
        elapsed(started)
    );
    Ok(())
}

/// What to send to a peer.
#[derive(Clone, Debug)]
pub struct PeerOptions {
    /// Which peer.
    pub peer: Peer,
    /// Its URL (`redis://…`, `postgres://…` or a libpq key=value string).
    pub url: String,
    /// Concurrent connections (each sends one request at a time).
    pub connections: usize,
    /// Stop after this long (measured from the first request).
    pub duration: Duration,
    /// Ids per request.
    pub batch: usize,
    /// Ids to draw from (every person of the snapshot).
    pub ids: Arc<Vec<PersonId>>,
    /// Seed of the draws (as `krr-bench loadtest --seed`).
    pub seed: u64,
}

impl PeerOptions {
    /// The same run described as `krr-bench loadtest` options, for [`LoadReport::to_json`] and
    /// [`LoadReport::to_text`] (no target address, no tokens).
    pub fn as_load_options(&self) -> LoadOptions {
        LoadOptions {
            target: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
            connections: self.connections,
            duration: self.duration,
            requests: None,
            batch: self.batch,
            api: Api::V1,
            patch_percent: 0,
            ids: self.ids.clone(),
            machine_token: String::new(),
            user_tokens: Arc::new(Vec::new()),
            seed: self.seed,
            timeline: false,
            accept_encoding: None,
            expect_encoding: None,
            verify_every: 1,
            http2: false,
            h2_frame_size: None,
            honour_retry_after: false,
        }
    }

    /// The report as JSON: the keys of `krr-bench loadtest --json`, with `api` and `target`
    /// naming the peer.
    pub fn report_json(&self, report: &LoadReport) -> serde_json::Value {
        let mut v = report.to_json(&self.as_load_options());
        v["api"] = self.peer.name().into();
        v["target"] = self.peer.name().into();
        v
    }
}

enum Conn {
    Redis(redis::aio::MultiplexedConnection),
    Postgres(tokio_postgres::Client, tokio_postgres::Statement),
}

async fn connect(opts: &PeerOptions) -> anyhow::Result<Conn> {
    Ok(match opts.peer {
        Peer::Redis => Conn::Redis(redis_connect(&opts.url).await?),
        Peer::Postgres => {
            let client = pg_connect(&opts.url).await?;
            let stmt = client
                .prepare_typed(
                    "SELECT data FROM persons WHERE id = ANY($1)",
                    &[Type::INT8_ARRAY],
                )
                .await?;
            Conn::Postgres(client, stmt)
        }
    })
}

fn empty_report() -> LoadReport {
    LoadReport {
        elapsed: Duration::ZERO,
        personer: KindReport {
            ok: 0,
            latency: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
        },
        persons: 0,
        wire_bytes: 0,
        verified: 0,
        patches: KindReport {
            ok: 0,
            latency: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
        },
        errors: BTreeMap::new(),
        timeline: Vec::new(),
    }
}

/// Connects every connection, then drives the peer for `opts.duration` and returns what
/// it measured (`personer` holds the lookups; `persons` counts persons returned).
pub async fn run(opts: PeerOptions) -> anyhow::Result<LoadReport> {
    anyhow::ensure!(!opts.ids.is_empty(), "no ids to draw from");
    anyhow::ensure!(opts.batch > 0, "batch must be at least 1");
    let mut conns = Vec::with_capacity(opts.connections);
    for _ in 0..opts.connections {
        conns.push(
            connect(&opts)
                .await
                .with_context(|| format!("connecting to {}", opts.peer.name()))?,
        );
    }
    let opts = Arc::new(opts);
    let started = Instant::now();
    let deadline = started + opts.duration;
    let mut tasks = Vec::new();
    for (c, conn) in conns.into_iter().enumerate() {
        let opts = opts.clone();
        tasks.push(tokio::spawn(async move {
            connection(&opts, c as u64, conn, deadline).await
        }));
    }
    let mut report = empty_report();
    for t in tasks {
        let r = t.await?;
        report.personer.ok += r.personer.ok;
        report.personer.latency.add(&r.personer.latency)?;
        report.persons += r.persons;
        for (k, n) in r.errors {
            *report.errors.entry(k).or_default() += n;
        }
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

async fn connection(opts: &PeerOptions, n: u64, conn: Conn, deadline: Instant) -> LoadReport {
    // The same stream of draws as `krr-bench loadtest` connection `n` with the same seed, drawn
    // by the same function (prefetched, so the client costs the shared cores alike).
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed ^ (n.wrapping_mul(0x9e37_79b9_7f4a_7c15)));
    let mut report = empty_report();
    let fail = |report: &mut LoadReport, kind: String| {
        *report.errors.entry(kind).or_default() += 1;
    };
    let mut conn = Some(conn);
    let mut picks: Vec<PersonId> = Vec::with_capacity(opts.batch);
    let mut keys: Vec<i64> = Vec::with_capacity(opts.batch);
    let mut distinct: Vec<i64> = Vec::with_capacity(opts.batch);
    while Instant::now() < deadline {
        let c = match conn.as_mut() {
            Some(Conn::Postgres(client, _)) if client.is_closed() => {
                fail(&mut report, "postgres connection closed".into());
                conn = None;
                continue;
            }
            Some(c) => c,
            None => match connect(opts).await {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    fail(&mut report, format!("connect: {e:#}"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        match c {
            Conn::Redis(con) => {
                // One id: `GET`, as a cache in front of single lookups is asked.
                let mut cmd = redis::cmd(if opts.batch == 1 { "GET" } else { "MGET" });
                draw(&opts.ids, opts.batch, &mut rng, &mut picks);
                for id in &picks {
                    cmd.arg(&id.digits()[..]);
                }
                let sent = Instant::now();
                let answer = cmd.query_async::<redis::Value>(con).await;
                let micros = sent.elapsed().as_micros() as u64;
                let answer = answer.map(|v| match v {
                    one @ redis::Value::BulkString(_) => redis::Value::Array(vec![one]),
                    other => other,
                });
                match answer {
                    Ok(redis::Value::Array(values)) => {
                        let got = values
                            .iter()
                            .filter(|v| {
                                matches!(v, redis::Value::BulkString(b) if b.first() == Some(&b'{'))
                            })
                            .count();
                        if values.len() == opts.batch && got == opts.batch {
                            report.personer.ok += 1;
                            report.persons += got as u64;
                            let _ = report.personer.latency.record(micros.max(1));
                        } else {
                            fail(
                                &mut report,
                                format!("redis MGET gave {got} persons, not {}", opts.batch),
                            );
                        }
                    }
                    Ok(_) => fail(&mut report, "redis MGET: not an array".into()),
                    Err(e) => {
                        fail(&mut report, format!("redis: {:?}", e.kind()));
                        if e.is_io_error() || e.is_connection_dropped() {
                            conn = None;
                        }
                    }
                }
            }
            Conn::Postgres(client, stmt) => {
                draw(&opts.ids, opts.batch, &mut rng, &mut picks);
                keys.clear();
                keys.extend(picks.iter().map(|id| id.key().cast_signed()));
                let sent = Instant::now();
                let answer = client.query(&*stmt, &[&keys]).await;
                let micros = sent.elapsed().as_micros() as u64;
                match answer {
                    Ok(rows) => {
                        distinct.clear();
                        distinct.extend_from_slice(&keys);
                        distinct.sort_unstable();
                        distinct.dedup();
                        let got = rows
                            .iter()
                            .filter(|r| {
                                r.try_get::<_, RawJsonb<'_>>(0)
                                    .is_ok_and(|j| j.0.starts_with(b"\x01{"))
                            })
                            .count();
                        if rows.len() == distinct.len() && got == rows.len() {
                            report.personer.ok += 1;
                            report.persons += got as u64;
                            let _ = report.personer.latency.record(micros.max(1));
                        } else {
                            fail(
                                &mut report,
                                format!(
                                    "postgres gave {got} persons, not {} (distinct ids)",
                                    distinct.len()
                                ),
                            );
                        }
                    }
                    Err(e) => {
                        let kind = e
                            .code()
                            .map_or_else(|| "connection".to_string(), |c| c.code().to_string());
                        fail(&mut report, format!("postgres: {kind}"));
                        if client.is_closed() {
                            conn = None;
                        }
                    }
                }
            }
        }
    }
    report
}
