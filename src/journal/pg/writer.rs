//! The PostgreSQL journal's writer: queued changes committed as one statement each group,
//! in sequence order (see [`super`]).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use tokio::sync::mpsc;

use super::*;

async fn commit(
    pool: &Pool,
    persons: &[i64],
    spraak: &[&str],
    timeout: Duration,
) -> Result<(u64, Timestamp), JournalError> {
    let client = tokio::time::timeout(timeout, pool.get())
        .await
        .map_err(|_| JournalError::Unavailable("no connection to the database in time".into()))?
        .map_err(pool_reason)?;
    match tokio::time::timeout(timeout, commit_on(&client, persons, spraak)).await {
        Ok(r) => r,
        Err(_) => {
            // Its statement may still be running: never hand this connection to the next
            // group. Closing it makes the server abort what has not committed.
            drop(deadpool_postgres::Object::take(client));
            Err(JournalError::Timeout)
        }
    }
}

async fn commit_on(
    client: &deadpool_postgres::Client,
    persons: &[i64],
    spraak: &[&str],
) -> Result<(u64, Timestamp), JournalError> {
    let before = |e: tokio_postgres::Error| match e.as_db_error() {
        Some(_) => JournalError::Database(reason(&e)),
        None => JournalError::Unavailable(reason(&e)),
    };
    let stmt = client.prepare_cached(APPEND).await.map_err(before)?;
    // Once the statement may have been sent, a lost connection leaves its outcome unknown.
    let during = |e: tokio_postgres::Error| match e.as_db_error() {
        Some(_) => JournalError::Database(reason(&e)),
        None => {
            tracing::warn!(cause = %reason(&e), "the journal database connection failed during a commit");
            JournalError::Timeout
        }
    };
    let row = client
        .query_one(&stmt, &[&persons, &spraak])
        .await
        .map_err(during)?;
    let last: i64 = row.get(0);
    let at: i64 = row.get(1);
    Ok((last.max(0).cast_unsigned(), Timestamp(at)))
}

pub(super) async fn write_loop(
    mut rx: mpsc::Receiver<Request>,
    pool: Pool,
    apply: SharedApply,
    stats: Arc<JournalStats>,
    opts: PgOptions,
) {
    let mut batch: Vec<Request> = Vec::with_capacity(opts.max_batch);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < opts.max_batch {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let persons: Vec<i64> = batch
            .iter()
            .map(|r| r.change.person().map_or(0, |p| p.key().cast_signed()))
            .collect();
        let spraak: Vec<&str> = batch
            .iter()
            .map(|r| match r.change {
                Change::SetSpraak { spraak, .. } => spraak.as_str(),
                // Refused by `PgJournal::append`: reservations are made by `reserve`.
                Change::Reserve { .. } => "",
            })
            .collect();
        let started = Instant::now();
        let result = commit(&pool, &persons, &spraak, opts.timeout).await;
        let took = started.elapsed();
        match result {
            Ok((last, at)) => {
                let n = batch.len() as u64;
                let entries: Vec<Entry> = batch
                    .iter()
                    .enumerate()
                    .map(|(i, r)| Entry {
                        seq: last + 1 - n + i as u64,
                        at,
                        change: r.change,
                    })
                    .collect();
                metrics::histogram!(crate::metrics::JOURNAL_FSYNC_SECONDS)
                    .record(took.as_secs_f64());
                metrics::counter!(crate::metrics::JOURNAL_RECORDS).increment(n);
                stats.last_seq.fetch_max(last, Ordering::AcqRel);
                stats.syncs.fetch_add(1, Ordering::Relaxed);
                stats.records.fetch_add(n, Ordering::Relaxed);
                stats
                    .sync_nanos
                    .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
                apply(&entries);
                for (r, e) in batch.drain(..).zip(&entries) {
                    let _ = r.reply.send(Ok(*e));
                }
            }
            Err(e) => {
                tracing::warn!(cause = %e, changes = batch.len(), "journal commit failed; the changes are refused with 503");
                metrics::counter!(crate::metrics::JOURNAL_FAILURES).increment(batch.len() as u64);
                for r in batch.drain(..) {
                    let _ = r.reply.send(Err(match &e {
                        JournalError::Unavailable(m) => JournalError::Unavailable(m.clone()),
                        JournalError::Timeout => JournalError::Timeout,
                        other => JournalError::Database(other.to_string()),
                    }));
                }
            }
        }
    }
}
