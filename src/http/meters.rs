//! Handles of the request path's metrics, each made once per worker thread.
//! `metrics::counter!` with labels builds the metric's key (its labels, a hash, a registry
//! lookup and compare) at every call: for a single-id request that was a sixth of the
//! service's own instructions. Here a handle is looked up by a small key of static strings
//! and numbers, hashed with foldhash under a random seed, in a map of the thread's own: no
//! lock or reference count shared with the other workers is touched, only the metric's own
//! atomic. (The process-wide maps this replaced cost 1.9 k instructions a single-id request
//! in shard locks, hashing and handle clones.) The recorder keeps one metric per key, so
//! each thread's handle for a key is the same metric.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

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

/// The request path's metric handles.
pub struct Meters {
    /// Which thread-local handles are this one's (a process may hold several services:
    /// tests).
    id: u64,
    /// `krr_persons_returned_total`.
    pub persons_returned: Counter,
}

impl std::fmt::Debug for Meters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Meters")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Default for Meters {
    fn default() -> Meters {
        Meters::new()
    }
}

/// Consumers whose handles one thread keeps; past this the thread starts afresh (a consumer
/// key comes from a verified token, so this is never reached by a real issuer's clients).
const LOCAL_CONSUMERS: usize = 4096;

/// A hash map under foldhash with a random seed.
type FoldMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// A label of the program's own (a route, a method, a coding), compared and hashed by
/// where it is rather than by its bytes: hashing the route's bytes was half the cost of
/// counting a request. The same text at two places gets two entries of a thread's map,
/// both handles of the one metric of that text.
#[derive(Clone, Copy, Debug)]
struct Label(&'static str);

impl PartialEq for Label {
    fn eq(&self, other: &Label) -> bool {
        std::ptr::eq(self.0, other.0)
    }
}

impl Eq for Label {}

impl Hash for Label {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.as_ptr().hash(state);
        self.0.len().hash(state);
    }
}

/// One thread's handles for one [`Meters`].
struct Local {
    owner: u64,
    requests: FoldMap<(Label, Label, u16), (Counter, Histogram)>,
    bytes: FoldMap<(Label, Label), (Counter, Counter)>,
    consumers: FoldMap<Box<str>, Consumer>,
}

/// The handles of one consumer key, under the label it was given.
struct Consumer {
    label: Arc<str>,
    persons: Counter,
    requests: Vec<(&'static str, u16, Counter)>,
}

impl Local {
    fn new(owner: u64) -> Local {
        Local {
            owner,
            requests: FoldMap::default(),
            bytes: FoldMap::default(),
            consumers: FoldMap::default(),
        }
    }
}

thread_local! {
    static LOCAL: RefCell<Option<Local>> = const { RefCell::new(None) };
}

static NEXT_METERS: AtomicU64 = AtomicU64::new(0);

/// The handle under `key`, made by `make` the first time.
fn handle<K: Eq + Hash, V>(map: &mut FoldMap<K, V>, key: K, make: impl FnOnce() -> V) -> &V {
    map.entry(key).or_insert_with(make)
}

fn request_handles(route: &'static str, method: &'static str, status: u16) -> (Counter, Histogram) {
    (
        metrics::counter!(HTTP_REQUESTS, "route" => route, "method" => method, "status" => status.to_string()),
        metrics::histogram!(HTTP_DURATION, "route" => route),
    )
}

fn body_handles(coding: &'static str, sent_as: &'static str) -> (Counter, Counter) {
    (
        metrics::counter!(BODY_BYTES_IDENTITY, "coding" => coding),
        metrics::counter!(BODY_BYTES, "coding" => sent_as),
    )
}

fn consumer_request(label: &Arc<str>, route: &'static str, status: u16) -> Counter {
    metrics::counter!(CONSUMER_REQUESTS, "consumer" => label.to_string(), "route" => route, "status" => status.to_string())
}

fn consumer_persons(label: &Arc<str>) -> Counter {
    metrics::counter!(CONSUMER_PERSONS, "consumer" => label.to_string())
}

impl Meters {
    /// Handles of the installed recorder (made after it is installed).
    pub fn new() -> Meters {
        Meters {
            id: NEXT_METERS.fetch_add(1, Ordering::Relaxed),
            persons_returned: metrics::counter!(PERSONS_RETURNED),
        }
    }

    /// Runs `f` on this thread's handles; when the thread's storage is gone (a thread being
    /// torn down), on handles made for this call alone.
    fn local(&self, f: impl FnOnce(&mut Local)) {
        let mut f = Some(f);
        let _gone = LOCAL.try_with(|cell| {
            if let Ok(mut slot) = cell.try_borrow_mut()
                && let Some(f) = f.take()
            {
                let local = match &mut *slot {
                    Some(l) if l.owner == self.id => l,
                    other => other.insert(Local::new(self.id)),
                };
                f(local);
            }
        });
        if let Some(f) = f {
            f(&mut Local::new(self.id));
        }
    }

    /// `krr_http_requests_total{route,method,status}` + 1 and the request's duration.
    pub fn request(&self, route: &'static str, method: &'static str, status: u16, seconds: f64) {
        self.local(|l| {
            let key = (Label(route), Label(method), status);
            let (count, duration) = handle(&mut l.requests, key, || {
                request_handles(route, method, status)
            });
            count.increment(1);
            duration.record(seconds);
        });
    }

    /// Body bytes of an answer as sent (`coded`) and before coding (`identity`).
    pub fn body(&self, coding: &'static str, sent_as: &'static str, identity: u64, coded: u64) {
        self.local(|l| {
            let (before, sent) = handle(&mut l.bytes, (Label(coding), Label(sent_as)), || {
                body_handles(coding, sent_as)
            });
            before.increment(identity);
            sent.increment(coded);
        });
    }

    /// A request of the consumer with `key` and the persons it got, counted under the
    /// label `label` gives the key (asked once per thread).
    pub fn consumer(
        &self,
        key: &str,
        label: impl FnOnce() -> Arc<str>,
        route: &'static str,
        status: u16,
        persons: u64,
    ) {
        self.local(|l| {
            if !l.consumers.contains_key(key) {
                if l.consumers.len() >= LOCAL_CONSUMERS {
                    l.consumers.clear();
                }
                let label = label();
                let persons = consumer_persons(&label);
                l.consumers.insert(
                    key.into(),
                    Consumer {
                        label,
                        persons,
                        requests: Vec::new(),
                    },
                );
            }
            let Some(c) = l.consumers.get_mut(key) else {
                return;
            };
            let count = match c
                .requests
                .iter()
                .position(|(r, s, _)| *r == route && *s == status)
            {
                Some(i) => &c.requests[i].2,
                None => {
                    let counter = consumer_request(&c.label, route, status);
                    c.requests.push((route, status, counter));
                    &c.requests[c.requests.len() - 1].2
                }
            };
            count.increment(1);
            if persons > 0 {
                c.persons.increment(persons);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample line of `name` whose labels are exactly `labels`.
    fn sample(name: &str, labels: &str) -> Option<u64> {
        let text = crate::metrics::handle().render();
        let head = format!("{name}{{{labels}}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&head))
            .and_then(|v| v.parse().ok())
    }

    /// Handles kept by each thread, for two services in turn on one thread, and for more
    /// consumers than a thread keeps: every count lands in the one metric of its labels.
    #[test]
    fn counts_from_every_thread_meet_in_one_metric() {
        crate::metrics::handle();
        let a = Arc::new(Meters::new());
        let b = Arc::new(Meters::new());
        let work = |m: &Meters| {
            m.request("meters-test", "POST", 200, 0.001);
            m.body("meters-test", "meters-test", 10, 4);
            m.consumer("k1", || Arc::from("meters-test-1"), "meters-test", 200, 3);
            m.consumer(
                "k1",
                || unreachable!("labelled once a thread"),
                "meters-test",
                429,
                0,
            );
        };
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    for _ in 0..5 {
                        work(&a);
                        work(&b);
                    }
                });
            }
        });
        work(&a);
        let requests = r#"route="meters-test",method="POST",status="200""#;
        assert_eq!(sample(HTTP_REQUESTS, requests), Some(21));
        assert_eq!(
            sample(BODY_BYTES_IDENTITY, r#"coding="meters-test""#),
            Some(210)
        );
        assert_eq!(sample(BODY_BYTES, r#"coding="meters-test""#), Some(84));
        let consumer =
            |status| format!(r#"consumer="meters-test-1",route="meters-test",status="{status}""#);
        assert_eq!(sample(CONSUMER_REQUESTS, &consumer(200)), Some(21));
        assert_eq!(sample(CONSUMER_REQUESTS, &consumer(429)), Some(21));
        assert_eq!(
            sample(CONSUMER_PERSONS, r#"consumer="meters-test-1""#),
            Some(63)
        );
        // More keys than a thread keeps, all under one label (as past the label limit).
        let n = LOCAL_CONSUMERS + 10;
        for i in 0..n {
            a.consumer(
                &format!("key-{i}"),
                || Arc::from("meters-test-other"),
                "meters-test",
                200,
                1,
            );
        }
        a.consumer(
            "key-0",
            || Arc::from("meters-test-other"),
            "meters-test",
            200,
            1,
        );
        let other = r#"consumer="meters-test-other",route="meters-test",status="200""#;
        assert_eq!(sample(CONSUMER_REQUESTS, other), Some(n as u64 + 1));
        assert_eq!(
            sample(CONSUMER_PERSONS, r#"consumer="meters-test-other""#),
            Some(n as u64 + 1)
        );
    }
}
