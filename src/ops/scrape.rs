//! The scrape step of `/metrics`: the gauges that are read rather than recorded (snapshot
//! age, overlay size, readiness, the journal's sequence number and refusal state) are brought up to date, then
//! the recorder renders everything.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::journal::{Backend, REFUSAL_REASONS};
use crate::metrics::{
    FEED_LAG, FEED_NEWEST_ID, JOURNAL_REFUSING, JOURNAL_SEQ, OVERLAY_ENTRIES, READY, SNAPSHOT_AGE,
    handle,
};
use crate::model::time::Timestamp;
use crate::store::Store;

/// The text of `/metrics`, with the gauges that are read at scrape time brought up to date.
pub fn render(store: &Store, journal: Option<&Arc<dyn Backend>>, ready: bool) -> String {
    let handle = handle();
    if let Some(s) = store.current().as_ref() {
        let age = Timestamp::now().0 - s.header().build_time.0;
        metrics::gauge!(SNAPSHOT_AGE).set(age as f64);
    }
    metrics::gauge!(OVERLAY_ENTRIES).set(store.overlay().len() as f64);
    metrics::gauge!(READY).set(if ready { 1.0 } else { 0.0 });
    if let Some(j) = journal {
        let s = j.stats();
        let newest = s.last_seq.load(Ordering::Relaxed);
        metrics::gauge!(JOURNAL_SEQ).set(newest as f64);
        if let Some(snapshot) = store.current().as_ref()
            && let Ok(upto) = crate::store::feed::horizon(
                snapshot,
                store.overlay(),
                s.visible_seq.load(Ordering::Acquire),
            )
        {
            let siste = crate::store::feed::page(snapshot, store.overlay(), upto, upto, 0)
                .map_or(0, |p| p.siste);
            metrics::gauge!(FEED_NEWEST_ID).set(siste as f64);
            metrics::gauge!(FEED_LAG).set(newest.saturating_sub(upto) as f64);
        }
        let refusing = usize::from(s.refusing.load(Ordering::Relaxed));
        for (i, reason) in REFUSAL_REASONS.iter().enumerate() {
            let on = if refusing == i + 1 { 1.0 } else { 0.0 };
            metrics::gauge!(JOURNAL_REFUSING, "reason" => *reason).set(on);
        }
    }
    handle.render()
}
