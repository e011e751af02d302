//! The PostgreSQL journal's follower: `LISTEN`, then read the rows after the last one
//! applied, on every notification and every poll (see [`super`]).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;

use super::*;

/// Longest a follower query may take (a half-open connection must not stall it).
const FOLLOW_QUERY_TIMEOUT: Duration = Duration::from_secs(15);

async fn bounded<T>(f: impl std::future::Future<Output = T>) -> Result<T, JournalError> {
    tokio::time::timeout(FOLLOW_QUERY_TIMEOUT, f)
        .await
        .map_err(|_| JournalError::Unavailable("the database did not answer in time".into()))
}

/// The follower (see the module doc): runs until aborted, reconnecting with a back-off.
pub(super) async fn follow(
    cfg: tokio_postgres::Config,
    apply: SharedApply,
    mut applied: u64,
    stats: Arc<JournalStats>,
    poll: Duration,
) {
    let mut link = Link {
        backoff: Duration::from_millis(100),
        down_since: None,
    };
    loop {
        if let Err(e) = follow_once(&cfg, &apply, &mut applied, &stats, poll, &mut link).await
            && link.down_since.is_none()
        {
            tracing::warn!(cause = %e, "journal follower lost the database; reconnecting");
            link.down_since = Some(Instant::now());
        }
        tokio::time::sleep(link.backoff).await;
        link.backoff = (link.backoff * 2).min(Duration::from_secs(2));
    }
}

/// The follower's connection state across reconnects.
struct Link {
    backoff: Duration,
    down_since: Option<Instant>,
}

async fn follow_once(
    cfg: &tokio_postgres::Config,
    apply: &SharedApply,
    applied: &mut u64,
    stats: &JournalStats,
    poll: Duration,
    link: &mut Link,
) -> Result<(), JournalError> {
    let db = |e: tokio_postgres::Error| JournalError::Unavailable(reason(&e));
    let (client, mut conn) = cfg.connect(NoTls).await.map_err(db)?;
    let (wake, mut woken) = mpsc::unbounded_channel::<()>();
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(m) = messages.next().await {
            match m {
                Ok(AsyncMessage::Notification(_)) => {
                    let _ = wake.send(());
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        // Dropping `wake` tells the loop below the connection is gone.
    });
    let result = async {
        client
            .batch_execute(&format!("LISTEN {CHANNEL}"))
            .await
            .map_err(db)?;
        let stmt = client.prepare(SINCE).await.map_err(db)?;
        let head: i64 = bounded(client.query_one("SELECT last_seq FROM krr_journal_head", &[]))
            .await?
            .map_err(db)?
            .get(0);
        let head = head.max(0).cast_unsigned();
        let after = *applied;
        if head < after {
            // Only a restore or a failover to a standby that lacked acknowledged commits
            // does this; sequence numbers will be handed out again.
            tracing::error!(
                head,
                applied = after,
                "the journal database is behind what this replica has applied (restored, or \
                 failed over without a synchronous standby): acknowledged changes may be lost; \
                 following from its head"
            );
            metrics::counter!(crate::metrics::JOURNAL_REWOUND).increment(1);
            *applied = head;
            // The feed answers no further than what is here again.
            stats.visible_seq.store(head, Ordering::Release);
            metrics::gauge!(crate::metrics::JOURNAL_APPLIED_SEQ).set(head as f64);
        }
        let mut caught_up = false;
        loop {
            let after = *applied;
            let rows = bounded(client.query(&stmt, &[&after.cast_signed(), &PAGE]))
                .await?
                .map_err(db)?;
            if !caught_up {
                caught_up = true;
                link.backoff = Duration::from_millis(100);
                if let Some(t) = link.down_since.take() {
                    tracing::info!(
                        down_ms = t.elapsed().as_millis() as u64,
                        missed = rows.len(),
                        "journal follower reconnected and read what it missed"
                    );
                }
            }
            if !rows.is_empty() {
                let entries = rows.iter().map(row_entry).collect::<Result<Vec<_>, _>>()?;
                let first = entries[0].seq;
                if first != after + 1 {
                    tracing::warn!(
                        after,
                        first,
                        "journal rows were compacted away before this replica read them; \
                         the served snapshot may lack them until the next one"
                    );
                }
                apply(&entries);
                let last = entries.last().expect("not empty").last_seq();
                *applied = last;
                stats.visible_seq.fetch_max(last, Ordering::AcqRel);
                stats.last_seq.fetch_max(last, Ordering::AcqRel);
                metrics::gauge!(crate::metrics::JOURNAL_APPLIED_SEQ).set(last as f64);
                if i64::try_from(rows.len()) == Ok(PAGE) {
                    continue;
                }
            }
            tokio::select! {
                w = woken.recv() => if w.is_none() {
                    return Err(JournalError::Unavailable("the listening connection closed".into()));
                },
                () = tokio::time::sleep(poll) => {}
            }
            while woken.try_recv().is_ok() {}
        }
    }
    .await;
    driver.abort();
    result
}
