//! The journal on PostgreSQL, shared by every replica (`--journal-url postgres://…`).
//!
//! Schema ([`SCHEMA`], created by [`init`], which `krr journal init` and the service's
//! start both run; it is idempotent):
//!
//! - `krr_journal(seq bigint primary key, at bigint, person bigint, spraak text)`: one row a
//!   change; `at` is Unix seconds (`spraak_oppdatert`), `person` the 11-digit number.
//! - `krr_journal_head`: one row holding the last sequence number handed out and the last
//!   time stamped.
//!
//! **Appending** (a group of queued changes, one statement, one round trip): the statement
//! moves the head row on by the group's size, which row-locks it until the commit, inserts
//! the rows numbered from the old head, and `pg_notify`s `krr_journal`. The lock makes
//! commits happen in sequence order, so a reader that has seen sequence number *n* has
//! seen everything before it: reading `WHERE seq > n` never misses a row committed later.
//! The time comes from the database's clock, never earlier than the head's last time, so
//! times do not go back between replicas with different clocks. A change is acknowledged
//! once its statement has committed (PostgreSQL's own durability: WAL flushed at commit).
//!
//! **Following**: every replica keeps one connection `LISTEN`ing on `krr_journal`; after
//! each notification (and every `poll` without one, in case a notification was lost with
//! a connection) it reads the rows after the last one it applied, in order, and applies
//! them to its overlay. After a reconnect it listens first and then reads, so nothing
//! committed in between is missed.
//!
//! **Failure**: when the database cannot be reached or does not answer within the
//! timeout, the append fails with [`JournalError::Unavailable`] (the HTTP layer answers
//! 503) and nothing is acknowledged. A commit whose answer was lost can still have
//! happened; the follower then applies it like any other change, and a client that retries
//! sets the same language again.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::NoTls;

mod follower;
mod writer;

use crate::journal::{Backend, BoxFuture, Change, Entry, JournalError, JournalStats};
use crate::model::Spraak;
use crate::model::fnr::PersonId;
use crate::model::time::Timestamp;

/// The tables. Safe to run again (and by several replicas at once: an advisory lock
/// serialises them).
pub const SCHEMA: &str = "
BEGIN;
SELECT pg_advisory_xact_lock(7277001);
CREATE TABLE IF NOT EXISTS krr_journal_head (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    last_seq bigint NOT NULL CHECK (last_seq >= 0),
    last_at bigint NOT NULL
);
INSERT INTO krr_journal_head (one, last_seq, last_at) VALUES (true, 0, 0)
    ON CONFLICT (one) DO NOTHING;
CREATE TABLE IF NOT EXISTS krr_journal (
    seq bigint PRIMARY KEY,
    at bigint NOT NULL,
    person bigint NOT NULL CHECK (person >= 0 AND person < 100000000000),
    spraak text NOT NULL CHECK (spraak IN ('nb', 'nn', 'en', 'se'))
);
ALTER TABLE krr_journal ADD COLUMN IF NOT EXISTS reserved_for bigint;
ALTER TABLE krr_journal ADD COLUMN IF NOT EXISTS reserved_count bigint;
ALTER TABLE krr_journal ALTER COLUMN person DROP NOT NULL;
ALTER TABLE krr_journal ALTER COLUMN spraak DROP NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS krr_journal_reserved_for ON krr_journal (reserved_for)
    WHERE reserved_for IS NOT NULL;
COMMIT;
";

/// The notification channel.
pub const CHANNEL: &str = "krr_journal";

const APPEND: &str = "
WITH h AS (
    UPDATE krr_journal_head
       SET last_seq = last_seq + cardinality($1::bigint[]),
           last_at = greatest(last_at, floor(extract(epoch FROM clock_timestamp()))::bigint)
    RETURNING last_seq, last_at
), ins AS (
    INSERT INTO krr_journal (seq, at, person, spraak)
    SELECT h.last_seq - cardinality($1::bigint[]) + c.n, h.last_at, c.person, c.spraak
      FROM h, unnest($1::bigint[], $2::text[]) WITH ORDINALITY AS c(person, spraak, n)
)
SELECT last_seq, last_at, pg_notify('krr_journal', last_seq::text)::text FROM h";

const SINCE: &str = "SELECT seq, at, person, spraak, reserved_for, reserved_count \
     FROM krr_journal WHERE seq > $1 ORDER BY seq LIMIT $2";

/// A reservation of change ids for a snapshot: the head moves on by its width (which
/// row-locks it, as an append does, so ids keep commit order) and one row records it.
/// Run after `RESERVED` found none, in the same transaction, under the advisory lock.
const RESERVE: &str = "
WITH h AS (
    UPDATE krr_journal_head
       SET last_seq = last_seq + $2,
           last_at = greatest(last_at, floor(extract(epoch FROM clock_timestamp()))::bigint)
    RETURNING last_seq, last_at
)
INSERT INTO krr_journal (seq, at, person, spraak, reserved_for, reserved_count)
SELECT h.last_seq - $2 + 1, h.last_at, NULL, NULL, $1, $3 FROM h
RETURNING seq, pg_notify('krr_journal', seq::text)::text";

const RESERVED: &str = "SELECT seq FROM krr_journal WHERE reserved_for = $1";

/// A reservation made after `$1` (a snapshot's folded sequence number), if any.
const NEWEST_RESERVATION: &str = "SELECT seq, reserved_for FROM krr_journal \
     WHERE reserved_for IS NOT NULL AND seq > $1 ORDER BY seq DESC LIMIT 1";

/// PATCHes waiting for the database at most; more are answered 503 at once (a database
/// that hangs must not make the queue, and the waits, grow without bound).
const QUEUE: usize = 8192;

/// Rows read by one query of the follower or of recovery.
const PAGE: i64 = 50_000;

/// Settings of the PostgreSQL journal.
#[derive(Clone, Copy, Debug)]
pub struct PgOptions {
    /// Connections in the pool (appends, reads at reload).
    pub pool_size: usize,
    /// Longest an append (connect, commit) may take before it fails with 503.
    pub timeout: Duration,
    /// The follower reads even without a notification this often.
    pub poll: Duration,
    /// Most changes committed by one statement.
    pub max_batch: usize,
}

impl Default for PgOptions {
    fn default() -> PgOptions {
        PgOptions {
            pool_size: 4,
            timeout: Duration::from_secs(3),
            poll: Duration::from_secs(1),
            max_batch: 4096,
        }
    }
}

/// Called with entries to apply to the overlay: the writer's own (before they are
/// acknowledged) and those the follower reads (other replicas').
pub type SharedApply = Arc<dyn Fn(&[Entry]) + Send + Sync>;

struct Request {
    change: Change,
    reply: oneshot::Sender<Result<Entry, JournalError>>,
}

/// The PostgreSQL journal (see the module doc).
pub struct PgJournal {
    tx: Mutex<Option<mpsc::Sender<Request>>>,
    pool: Pool,
    stats: Arc<JournalStats>,
    follower: Mutex<Option<tokio::task::JoinHandle<()>>>,
    runtime: tokio::runtime::Handle,
    timeout: Duration,
    describe: String,
}

impl std::fmt::Debug for PgJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgJournal")
            .field("database", &self.describe)
            .finish_non_exhaustive()
    }
}

/// A database error as text: PostgreSQL's message and SQLSTATE, never its DETAIL (which can
/// quote a row's values).
fn reason(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => match std::error::Error::source(e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    }
}

fn pool_reason(e: deadpool_postgres::PoolError) -> JournalError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => JournalError::Unavailable(reason(&e)),
        deadpool_postgres::PoolError::Timeout(_) => {
            JournalError::Unavailable("no connection to the database in time".into())
        }
        other => JournalError::Unavailable(other.to_string()),
    }
}

/// Parses a `postgres://` URL (or key=value string) and sets a connect timeout.
pub fn config(url: &str, timeout: Duration) -> Result<tokio_postgres::Config, JournalError> {
    let mut c: tokio_postgres::Config = url.parse().map_err(|e: tokio_postgres::Error| {
        JournalError::Database(format!("the journal URL is not valid: {e}"))
    })?;
    c.connect_timeout(timeout);
    // A half-open connection (database host gone without a FIN) is noticed in ~25 s, not
    // after the kernel's two hours.
    c.keepalives(true)
        .keepalives_idle(Duration::from_secs(10))
        .keepalives_interval(Duration::from_secs(5))
        .keepalives_retries(3);
    if c.get_application_name().is_none() {
        c.application_name("krr");
    }
    Ok(c)
}

/// `host:port/dbname`, for logs (no user, no password).
pub fn describe(c: &tokio_postgres::Config) -> String {
    let host = match c.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = c.get_ports().first().copied().unwrap_or(5432);
    format!(
        "postgres {host}:{port}/{}",
        c.get_dbname().unwrap_or("(default)")
    )
}

async fn connect(c: &tokio_postgres::Config) -> Result<tokio_postgres::Client, JournalError> {
    let (client, conn) = c
        .connect(NoTls)
        .await
        .map_err(|e| JournalError::Unavailable(reason(&e)))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// One connection to `url`, for the commands (init, fold, inspect, compact).
async fn connect_url(url: &str) -> Result<tokio_postgres::Client, JournalError> {
    connect(&config(url, PgOptions::default().timeout)?).await
}

/// Creates the tables if they are missing (idempotent).
pub async fn init(url: &str) -> Result<(), JournalError> {
    let client = connect_url(url).await?;
    client
        .batch_execute(SCHEMA)
        .await
        .map_err(|e| JournalError::Database(reason(&e)))
}

fn row_entry(row: &tokio_postgres::Row) -> Result<Entry, JournalError> {
    let seq: i64 = row.get(0);
    let at: i64 = row.get(1);
    let bad = |what: &str| JournalError::Database(format!("journal row {seq} has {what}"));
    if let Some(snapshot) = row.get::<_, Option<i64>>(4) {
        let count: i64 = row.get::<_, Option<i64>>(5).unwrap_or(0);
        let seq = u64::try_from(seq).map_err(|_| bad("a negative sequence number"))?;
        let count = u64::try_from(count).map_err(|_| bad("a negative reservation"))?;
        return Ok(Entry {
            seq,
            at: Timestamp(at),
            change: Change::Reserve {
                snapshot: snapshot.cast_unsigned(),
                count,
            },
        });
    }
    let person: i64 = row
        .get::<_, Option<i64>>(2)
        .ok_or_else(|| bad("no personal number"))?;
    let spraak: &str = row
        .get::<_, Option<&str>>(3)
        .ok_or_else(|| bad("no language"))?;
    let id = u64::try_from(person)
        .ok()
        .and_then(PersonId::from_key)
        .ok_or_else(|| bad("an invalid personal number"))?;
    let spraak = Spraak::parse(spraak).ok_or_else(|| bad("an unknown language"))?;
    let seq = u64::try_from(seq).map_err(|_| bad("a negative sequence number"))?;
    Ok(Entry {
        seq,
        at: Timestamp(at),
        change: Change::SetSpraak { id, spraak },
    })
}

/// Every entry after `seq`, in order, read page by page inside one repeatable-read
/// transaction (a consistent prefix of the journal), with the head's last sequence number.
async fn read_since(
    client: &mut tokio_postgres::Client,
    seq: u64,
) -> Result<(Vec<Entry>, u64), JournalError> {
    let db = |e: tokio_postgres::Error| JournalError::Unavailable(reason(&e));
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(db)?;
    let head: i64 = tx
        .query_one("SELECT last_seq FROM krr_journal_head", &[])
        .await
        .map_err(db)?
        .get(0);
    let mut out = Vec::new();
    let mut after = seq;
    loop {
        let rows = tx
            .query(SINCE, &[&after.cast_signed(), &PAGE])
            .await
            .map_err(db)?;
        for row in &rows {
            let e = row_entry(row)?;
            after = e.seq;
            out.push(e);
        }
        if i64::try_from(rows.len()).is_ok_and(|n| n < PAGE) {
            break;
        }
    }
    tx.commit().await.map_err(db)?;
    Ok((out, head.max(0).cast_unsigned()))
}

/// Reads the whole journal at `url` (for `krr snapshot build --journal-url`): every entry
/// in order and the last sequence number handed out.
pub async fn read_all(url: &str) -> Result<(Vec<Entry>, u64), JournalError> {
    let mut client = connect_url(url).await?;
    read_since(&mut client, 0).await
}

/// Deletes the rows a snapshot holds (`seq <= folded_seq`); returns how many. The head
/// keeps the sequence going.
pub async fn compact(url: &str, folded_seq: u64) -> Result<u64, JournalError> {
    let client = connect_url(url).await?;
    client
        .execute(
            "DELETE FROM krr_journal WHERE seq <= $1",
            &[&folded_seq.cast_signed()],
        )
        .await
        .map_err(|e| JournalError::Database(reason(&e)))
}

impl PgJournal {
    /// Connects, creates the schema if missing, moves the head past `after_seq` (the served
    /// snapshot's folded sequence number), reads the entries after it for the caller to
    /// replay, and starts the writer and the follower. Fails when the database cannot be
    /// reached: without the journal, changes other replicas made could not be shown.
    pub async fn open(
        url: &str,
        after_seq: u64,
        opts: PgOptions,
        apply: SharedApply,
    ) -> Result<(PgJournal, Vec<Entry>), JournalError> {
        let cfg = config(url, opts.timeout)?;
        let describe = describe(&cfg);
        // The pool's sessions: a 204 waits for the WAL flush (and a synchronous standby, if
        // the server has one), whatever the server's default; a statement that outlives
        // the timeout is cancelled by the server rather than left running.
        let mut pooled = cfg.clone();
        let ms = opts.timeout.as_millis().max(1);
        let given = pooled.get_options().unwrap_or_default().to_string();
        pooled.options(format!(
            "{given} -c synchronous_commit=on -c statement_timeout={ms} -c lock_timeout={ms}"
        ));
        let mgr = Manager::from_config(
            pooled,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(mgr)
            .max_size(opts.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(opts.timeout))
            .create_timeout(Some(opts.timeout))
            .recycle_timeout(Some(opts.timeout))
            .build()
            .map_err(|e| JournalError::Database(e.to_string()))?;
        let mut client = pool.get().await.map_err(pool_reason)?;
        // Created here only when missing, so a role without CREATE can serve a database
        // prepared by `krr journal init`.
        let ready: bool = client
            .query_one(
                "SELECT to_regclass('krr_journal') IS NOT NULL \
                    AND to_regclass('krr_journal_head') IS NOT NULL \
                    AND EXISTS (SELECT 1 FROM information_schema.columns \
                                 WHERE table_name = 'krr_journal' AND column_name = 'reserved_count')",
                &[],
            )
            .await
            .map_err(|e| JournalError::Database(reason(&e)))?
            .get(0);
        if !ready {
            client
                .batch_execute(SCHEMA)
                .await
                .map_err(|e| JournalError::Database(reason(&e)))?;
        }
        client
            .execute(
                "UPDATE krr_journal_head SET last_seq = $1 WHERE last_seq < $1",
                &[&after_seq.cast_signed()],
            )
            .await
            .map_err(|e| JournalError::Database(reason(&e)))?;
        let (entries, head) = read_since(&mut client, after_seq).await?;
        drop(client);
        let applied = entries
            .last()
            .map_or(after_seq, |e| e.last_seq().max(after_seq));
        let stats = Arc::new(JournalStats::default());
        stats.last_seq.store(head, Ordering::Relaxed);
        // The caller replays `entries` before it serves anything.
        stats.visible_seq.store(applied, Ordering::Release);
        metrics::gauge!(crate::metrics::JOURNAL_APPLIED_SEQ).set(applied as f64);
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(writer::write_loop(
            rx,
            pool.clone(),
            apply.clone(),
            stats.clone(),
            opts,
        ));
        let mut listening = cfg;
        // Told apart from the pool's sessions in pg_stat_activity.
        listening.application_name("krr-follower");
        let follower = tokio::spawn(follower::follow(
            listening,
            apply,
            applied,
            stats.clone(),
            opts.poll,
        ));
        Ok((
            PgJournal {
                tx: Mutex::new(Some(tx)),
                pool,
                stats,
                follower: Mutex::new(Some(follower)),
                runtime: tokio::runtime::Handle::current(),
                timeout: opts.timeout,
                describe,
            },
            entries,
        ))
    }
}

impl Backend for PgJournal {
    fn append(&self, change: Change) -> BoxFuture<'_, Result<Entry, JournalError>> {
        Box::pin(async move {
            if matches!(change, Change::Reserve { .. }) {
                return Err(JournalError::Database(
                    "change ids are reserved with `reserve`, not appended".into(),
                ));
            }
            let (reply, rx) = oneshot::channel();
            let sent = self
                .tx
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .ok_or(JournalError::Closed)?
                .try_send(Request { change, reply });
            match sent {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    metrics::counter!(crate::metrics::JOURNAL_FAILURES).increment(1);
                    return Err(JournalError::Unavailable(
                        "too many changes are waiting for the database".into(),
                    ));
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return Err(JournalError::Closed),
            }
            rx.await.map_err(|_| JournalError::Closed)?
        })
    }

    fn reserve(&self, snapshot: u64, count: u64, folded: u64) -> Result<u64, JournalError> {
        let pool = self.pool.clone();
        let width = Change::Reserve { snapshot, count }.width();
        let made = async move {
            let db = |e: tokio_postgres::Error| JournalError::Unavailable(reason(&e));
            let mut client = pool.get().await.map_err(pool_reason)?;
            let tx = client.transaction().await.map_err(db)?;
            // One reservation per snapshot, whichever replica swaps first.
            tx.execute("SELECT pg_advisory_xact_lock(7277002)", &[])
                .await
                .map_err(db)?;
            let id = snapshot.cast_signed();
            let first: i64 = match tx.query_opt(RESERVED, &[&id]).await.map_err(db)? {
                Some(row) => row.get(0),
                None => {
                    if let Some(row) = tx
                        .query_opt(NEWEST_RESERVATION, &[&folded.cast_signed()])
                        .await
                        .map_err(db)?
                    {
                        let (first, newer): (i64, i64) = (row.get(0), row.get(1));
                        return Err(JournalError::OutOfOrder {
                            snapshot,
                            folded,
                            newer: newer.cast_unsigned(),
                            first: first.cast_unsigned(),
                        });
                    }
                    tx.query_one(RESERVE, &[&id, &width.cast_signed(), &count.cast_signed()])
                        .await
                        .map_err(db)?
                        .get(0)
                }
            };
            tx.commit().await.map_err(db)?;
            u64::try_from(first)
                .map_err(|_| JournalError::Database("a negative reservation".into()))
        };
        let timeout = self.timeout * 4;
        self.runtime
            .block_on(async move { tokio::time::timeout(timeout, made).await })
            .map_err(|_| JournalError::Unavailable("the database did not answer in time".into()))?
    }

    fn since(&self, seq: u64) -> Result<Vec<Entry>, JournalError> {
        let pool = self.pool.clone();
        let read = async move {
            let mut client = pool.get().await.map_err(pool_reason)?;
            read_since(&mut client, seq).await
        };
        let timeout = self.timeout * 4;
        self.runtime
            .block_on(async move { tokio::time::timeout(timeout, read).await })
            .map_err(|_| JournalError::Unavailable("the database did not answer in time".into()))?
            .map(|(entries, _)| entries)
    }

    fn stats(&self) -> &JournalStats {
        &self.stats
    }

    fn close(&self) {
        // The writer ends once it has answered what is queued.
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(f) = self
            .follower
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            f.abort();
        }
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }
}

impl Drop for PgJournal {
    fn drop(&mut self) {
        Backend::close(self);
    }
}

#[cfg(test)]
mod tests;
