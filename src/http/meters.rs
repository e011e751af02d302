//! Handles of the request path's metrics, each made once. `metrics::counter!` with labels
//! builds the metric's key (its labels, a hash, a registry lookup and compare) at every
//! call: for a single-id request that was a sixth of the service's own instructions. Here a
//! handle is looked up by a small key of static strings and numbers instead, hashed with
//! foldhash under a random seed (SipHash of the keys was a third of the lookups' cost, and
//! a streaming XXH3 no better for keys this short).

use std::hash::Hash;
use std::sync::Arc;

use metrics::{Counter, Histogram};

use crate::metrics::{
    BODY_BYTES, BODY_BYTES_IDENTITY, CONSUMER_PERSONS, CONSUMER_REQUESTS, HTTP_DURATION,
    HTTP_REQUESTS, PERSONS_RETURNED,
};

/// A map of handles, hashed with foldhash under a random seed.
pub(crate) type DashMap<K, V> = dashmap::DashMap<K, V, foldhash::fast::RandomState>;

/// An empty [`DashMap`] with a random seed.
pub(crate) fn map<K: Eq + Hash, V>() -> DashMap<K, V> {
    DashMap::with_hasher(foldhash::fast::RandomState::default())
}

/// The request path's metric handles (made after the recorder is installed).
pub struct Meters {
    requests: DashMap<(&'static str, &'static str, u16), Counter>,
    durations: DashMap<&'static str, Histogram>,
    bytes: DashMap<(&'static str, &'static str), Counter>,
    consumer_requests: DashMap<(Arc<str>, &'static str, u16), Counter>,
    consumer_persons: DashMap<Arc<str>, Counter>,
    /// `krr_persons_returned_total`.
    pub persons_returned: Counter,
}

impl std::fmt::Debug for Meters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Meters")
            .field("requests", &self.requests.len())
            .field("consumers", &self.consumer_persons.len())
            .finish_non_exhaustive()
    }
}

impl Default for Meters {
    fn default() -> Meters {
        Meters::new()
    }
}

/// The handle under `key`, made by `make` the first time.
fn handle<K: Eq + Hash, V: Clone>(map: &DashMap<K, V>, key: K, make: impl FnOnce() -> V) -> V {
    if let Some(v) = map.get(&key) {
        return v.clone();
    }
    map.entry(key).or_insert_with(make).clone()
}

impl Meters {
    /// Handles of the installed recorder.
    pub fn new() -> Meters {
        Meters {
            requests: map(),
            durations: map(),
            bytes: map(),
            consumer_requests: map(),
            consumer_persons: map(),
            persons_returned: metrics::counter!(PERSONS_RETURNED),
        }
    }

    /// `krr_http_requests_total{route,method,status}` + 1 and the request's duration.
    pub fn request(&self, route: &'static str, method: &'static str, status: u16, seconds: f64) {
        handle(&self.requests, (route, method, status), || {
            metrics::counter!(HTTP_REQUESTS, "route" => route, "method" => method, "status" => status.to_string())
        })
        .increment(1);
        handle(
            &self.durations,
            route,
            || metrics::histogram!(HTTP_DURATION, "route" => route),
        )
        .record(seconds);
    }

    /// Body bytes of an answer as sent (`coded`) and before coding (`identity`).
    pub fn body(&self, coding: &'static str, sent_as: &'static str, identity: u64, coded: u64) {
        handle(
            &self.bytes,
            (BODY_BYTES_IDENTITY, coding),
            || metrics::counter!(BODY_BYTES_IDENTITY, "coding" => coding),
        )
        .increment(identity);
        handle(
            &self.bytes,
            (BODY_BYTES, sent_as),
            || metrics::counter!(BODY_BYTES, "coding" => sent_as),
        )
        .increment(coded);
    }

    /// A consumer's request and the persons it got.
    pub fn consumer(&self, label: &Arc<str>, route: &'static str, status: u16, persons: u64) {
        handle(
            &self.consumer_requests,
            (label.clone(), route, status),
            || {
                metrics::counter!(CONSUMER_REQUESTS, "consumer" => label.to_string(), "route" => route, "status" => status.to_string())
            },
        )
        .increment(1);
        if persons > 0 {
            handle(
                &self.consumer_persons,
                label.clone(),
                || metrics::counter!(CONSUMER_PERSONS, "consumer" => label.to_string()),
            )
            .increment(persons);
        }
    }
}
