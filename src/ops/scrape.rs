//! The scrape step of `/metrics`: the gauges that are read rather than recorded (snapshot
//! age, overlay size, readiness, the journal's sequence number and refusal state) are brought up to date, then
//! the recorder renders everything.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::journal::{Backend, REFUSAL_REASONS};
use crate::metrics::{JOURNAL_REFUSING, JOURNAL_SEQ, OVERLAY_ENTRIES, READY, SNAPSHOT_AGE, handle};
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
        metrics::gauge!(JOURNAL_SEQ).set(s.last_seq.load(Ordering::Relaxed) as f64);
        let refusing = usize::from(s.refusing.load(Ordering::Relaxed));
        for (i, reason) in REFUSAL_REASONS.iter().enumerate() {
            let on = if refusing == i + 1 { 1.0 } else { 0.0 };
            metrics::gauge!(JOURNAL_REFUSING, "reason" => *reason).set(on);
        }
    }
    handle.render()
}
