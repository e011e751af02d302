//! Usage per agency: who asked, how many persons they got. Each request of the public API
//! runs inside [`scope`], where authentication notes the caller ([`caller`]) and the
//! handler the persons it returned ([`persons`]); [`Usage::record`] then counts them in
//! `krr_consumer_requests_total{consumer,route,status}` and
//! `krr_consumer_persons_total{consumer}`.
//!
//! The consumer label is the organisation number of a machine token (`consumer.ID`), or
//! `client:<client_id>` for a user token (ID-porten's client). Labels are bounded: the first
//! `--metrics-max-consumers` (default 1000) consumers get their own, later ones count as
//! `other`, so a flood of issuers' clients cannot grow `/metrics` without bound. A label
//! that could hold a personal number (an 11-digit run, or not plain ASCII) is never made:
//! such a caller counts as `unrecognised`.

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::auth::Principal;
use crate::http::quota::Standing;

tokio::task_local! {
    static FACTS: Facts;
}

/// What one request learnt about its caller and answer.
#[derive(Debug)]
struct Facts {
    request_id: hyper::header::HeaderValue,
    caller: RefCell<Option<Arc<Principal>>>,
    persons: Cell<u64>,
    standing: Cell<Option<Standing>>,
}

/// What [`scope`] found out about a request.
#[derive(Debug)]
pub struct Outcome {
    /// The request's id, as given to [`scope`] (handed back rather than cloned: a clone of
    /// a made id's bytes is an allocation).
    pub request_id: hyper::header::HeaderValue,
    /// The verified caller (none: no valid token).
    pub caller: Option<Arc<Principal>>,
    /// Persons returned.
    pub persons: u64,
    /// The caller's quota standing, when it has a quota and was checked.
    pub standing: Option<Standing>,
}

/// Runs `f` (one request, known as `request_id`) with a place for its facts.
pub async fn scope<F: Future>(
    request_id: hyper::header::HeaderValue,
    f: F,
) -> (F::Output, Outcome) {
    let facts = Facts {
        request_id,
        caller: RefCell::default(),
        persons: Cell::default(),
        standing: Cell::default(),
    };
    let scoped = FACTS.scope(facts, f);
    tokio::pin!(scoped);
    let out = scoped.as_mut().await;
    let facts = scoped
        .take_value()
        .expect("a scope's facts are taken once, after it ran");
    let outcome = Outcome {
        request_id: facts.request_id,
        caller: facts.caller.into_inner(),
        persons: facts.persons.get(),
        standing: facts.standing.get(),
    };
    (out, outcome)
}

/// The current request's id (for a log line a handler writes; empty outside a request).
pub fn request_id() -> String {
    FACTS
        .try_with(|facts| facts.request_id.to_str().unwrap_or("").to_string())
        .unwrap_or_default()
}

/// Notes the caller's quota standing (for the `RateLimit` headers of the answer).
pub fn standing(s: Standing) {
    let _ = FACTS.try_with(|facts| facts.standing.set(Some(s)));
}

/// Notes the verified caller of the current request.
pub fn caller(principal: &Arc<Principal>) {
    let _ = FACTS.try_with(|facts| *facts.caller.borrow_mut() = Some(principal.clone()));
}

/// Notes the persons the current request returned (also on its span).
pub fn persons(n: u64) {
    // The request span is at DEBUG (see `request::audit`).
    if tracing::level_enabled!(tracing::Level::DEBUG) {
        tracing::Span::current().record("persons", n);
    }
    let _ = FACTS.try_with(|facts| facts.persons.set(facts.persons.get() + n));
}

/// The consumers with labels of their own.
#[derive(Debug)]
pub struct Usage {
    labelled: crate::http::meters::DashMap<Arc<str>, ()>,
    count: AtomicUsize,
    max: usize,
}

/// The label of callers beyond `--metrics-max-consumers`.
pub const OTHER: &str = "other";
/// The label of a caller whose identity cannot be a label.
pub const UNRECOGNISED: &str = "unrecognised";

/// The consumer key of a caller (see the module doc); also the key of its quota.
pub fn key(p: &Principal) -> Cow<'_, str> {
    match (&p.consumer, &p.client) {
        (Some(org), _) if org.len() == 9 && org.bytes().all(|b| b.is_ascii_digit()) => {
            Cow::Borrowed(org)
        }
        (None, Some(client)) if crate::http::request_id::label_safe(client) => {
            Cow::Owned(format!("client:{client}"))
        }
        _ => Cow::Borrowed(UNRECOGNISED),
    }
}

impl Usage {
    /// At most `max` consumers labelled.
    pub fn new(max: usize) -> Usage {
        Usage {
            labelled: crate::http::meters::map(),
            count: AtomicUsize::new(0),
            max,
        }
    }

    /// The label for `key`: its own while there is room, else [`OTHER`].
    pub fn label(&self, key: &str) -> Arc<str> {
        if let Some(e) = self.labelled.get(key) {
            return e.key().clone();
        }
        if key == UNRECOGNISED {
            return Arc::from(UNRECOGNISED);
        }
        // Room is claimed before the insert, so concurrent newcomers never overshoot.
        if self
            .count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_err()
        {
            return Arc::from(OTHER);
        }
        let label: Arc<str> = Arc::from(key);
        if self.labelled.insert(label.clone(), ()).is_some() {
            // Another request labelled it first: give the room back.
            self.count.fetch_sub(1, Ordering::AcqRel);
        }
        label
    }

    /// Counts one request of the consumer with `key` (none: the token was refused or
    /// missing).
    pub fn record(
        &self,
        meters: &crate::http::meters::Meters,
        key: Option<&str>,
        persons: u64,
        route: &'static str,
        status: u16,
    ) {
        let Some(key) = key else { return };
        meters.consumer(key, || self.label(key), route, status, persons);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_bounded_and_never_hold_a_personal_number() {
        let u = Usage::new(2);
        assert_eq!(&*u.label("991825827"), "991825827");
        assert_eq!(&*u.label("974760673"), "974760673");
        assert_eq!(&*u.label("991825827"), "991825827");
        assert_eq!(&*u.label("889640782"), OTHER);
        assert_eq!(&*u.label(UNRECOGNISED), UNRECOGNISED);
        let p = |consumer: Option<&str>, client: Option<&str>| Principal {
            grants: crate::auth::Grants::from_scope(""),
            pid: None,
            user: client.is_some(),
            consumer: consumer.map(str::to_string),
            client: client.map(str::to_string),
            exp: 0,
        };
        assert_eq!(key(&p(Some("991825827"), None)), "991825827");
        assert_eq!(key(&p(Some("0192:99182"), None)), UNRECOGNISED);
        assert_eq!(key(&p(Some("20914695016"), None)), UNRECOGNISED);
        assert_eq!(key(&p(None, Some("nav-proxy"))), "client:nav-proxy");
        assert_eq!(key(&p(None, Some("c-20914695016"))), UNRECOGNISED);
        assert_eq!(key(&p(None, None)), UNRECOGNISED);
    }
}
