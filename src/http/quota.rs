//! Per-consumer quotas, counted in persons: a batch of 1000 ids costs 1000, `/person` one,
//! a change-feed page its entries.
//!
//! Each consumer (the key of [`usage::key`](crate::http::usage::key): the organisation
//! number of a machine token, `client:<client_id>` of a user token) has a GCRA bucket: one
//! atomic "theoretical arrival time" (TAT), moved forward by `cost × interval` for each
//! admitted request. A request is admitted while the TAT stays within `burst × interval` of
//! now; otherwise it is refused with the time until it would be admitted (`Retry-After`).
//! Nothing is locked for all requests: the buckets live in a sharded map (a shard's read
//! lock while the bucket's compare-and-swap runs), the limits in an [`ArcSwap`].
//!
//! **Limits** come from `--quota-persons-per-second`/`--quota-burst` (every consumer) and
//! the `--quota-file` (TOML, per-consumer overrides, re-read on reload):
//!
//! ```toml
//! [consumers."991825827"]
//! persons_per_second = 200000
//! burst = 400000
//! ```
//!
//! A burst left out is one second's worth, and at least one full batch (1000).
//!
//! **Replicas.** With `--quota-share S` each replica enforces `S` of every rate and burst
//! (`S = 1/N` for N replicas behind a balancer), so N replicas together grant the quota
//! once. A request larger than the local burst but within the configured one is admitted
//! when the local bucket is full and puts it in debt: a consumer's batch is never refused
//! for ever because the burst was divided, and the long-run rate stays the configured one.
//!
//! **Memory.** A bucket exists for a consumer that asked recently; one whose TAT has passed
//! holds nothing a fresh bucket would not, and [`Quotas::sweep`] drops it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;
use dashmap::DashMap;

/// One full batch: a burst left out is never smaller (`personer::MAX_IDS`, which this
/// module does not import: the handlers import it).
const ONE_BATCH: u64 = 1000;

/// Quotas as configured (`krr serve`'s flags).
#[derive(Clone, Debug, PartialEq)]
pub struct QuotaSettings {
    /// Every consumer's rate, persons per second (`None`: no quota unless the file has one).
    pub persons_per_second: Option<u64>,
    /// Every consumer's burst (`None`: one second's worth, at least one batch).
    pub burst: Option<u64>,
    /// Per-consumer overrides (TOML), re-read on reload.
    pub file: Option<PathBuf>,
    /// This replica's share of every quota, in (0, 1].
    pub share: f64,
}

impl Default for QuotaSettings {
    fn default() -> QuotaSettings {
        QuotaSettings {
            persons_per_second: None,
            burst: None,
            file: None,
            share: 1.0,
        }
    }
}

/// Why quotas cannot be used. Messages never quote an 11-digit run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QuotaError {
    /// The quota file cannot be read.
    #[error("cannot read the quota file {}: {cause}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        cause: std::io::Error,
    },
    /// The quota file is not valid TOML of the expected shape.
    #[error("the quota file {} line {line}: {message}", .path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// Line (1-based) of the problem.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A value is out of range.
    #[error("{0}")]
    Invalid(String),
}

/// A consumer's limit as this replica enforces it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Limit {
    /// The configured burst: a request above it is never admitted.
    burst: u64,
    /// This replica's burst (`burst × share`, at least 1): the `q` of `RateLimit-Policy`.
    local_burst: u64,
    /// Nanoseconds per person at this replica's rate.
    interval: u64,
    /// How far ahead of now the TAT may be: `local_burst × interval`.
    tolerance: u64,
    /// Seconds to refill the local burst: the `w` of `RateLimit-Policy`.
    window: u64,
}

impl Limit {
    // The floats are positive (a rate and burst of at least 1, a share in (0, 1]) and
    // saturate at u64::MAX when cast.
    #[allow(clippy::cast_sign_loss, clippy::cast_possible_truncation)]
    fn new(persons_per_second: u64, burst: Option<u64>, share: f64) -> Limit {
        let burst = burst.unwrap_or(persons_per_second.max(ONE_BATCH)).max(1);
        let rate = (persons_per_second as f64 * share).max(1e-9);
        let interval = ((1e9 / rate).ceil() as u64).max(1);
        let local_burst = ((burst as f64 * share).floor() as u64).max(1);
        let tolerance = local_burst.saturating_mul(interval);
        Limit {
            burst,
            local_burst,
            interval,
            tolerance,
            window: tolerance.div_ceil(1_000_000_000).max(1),
        }
    }
}

/// The limits in force: the default and the overrides.
#[derive(Debug, Default)]
struct Table {
    default: Option<Limit>,
    consumers: HashMap<String, Limit>,
}

/// One override in the quota file.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Override {
    persons_per_second: u64,
    burst: Option<u64>,
}

/// The quota file.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    consumers: HashMap<String, Override>,
}

/// A consumer's standing after a check: what `RateLimit-Policy` and `RateLimit` say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Standing {
    /// Persons this replica allows at once (`q`).
    pub quota: u64,
    /// Seconds in which the quota refills (`w`).
    pub window: u64,
    /// Persons that could be asked for now (`r`).
    pub remaining: u64,
    /// Seconds until the whole quota is available again (`t`).
    pub reset: u64,
}

impl Standing {
    /// The `RateLimit-Policy` value (IETF httpapi-ratelimit-headers draft).
    pub fn policy_header(&self) -> String {
        format!(
            "\"persons\";q={};qu=\"persons\";w={}",
            self.quota, self.window
        )
    }

    /// The `RateLimit` value.
    pub fn header(&self) -> String {
        format!("\"persons\";r={};t={}", self.remaining, self.reset)
    }
}

/// What a check decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The consumer has no quota.
    Unlimited,
    /// Within the quota (charged, unless it was a peek).
    Admitted(Standing),
    /// Over the quota: nothing charged; admitted again after `retry_after` seconds.
    Refused {
        /// The standing (nothing charged).
        standing: Standing,
        /// Whole seconds, at least 1.
        retry_after: u64,
    },
    /// The request alone is larger than the consumer's burst: it will never be admitted.
    TooLarge {
        /// The configured burst.
        burst: u64,
    },
}

/// Every consumer's quota and bucket.
#[derive(Debug)]
pub struct Quotas {
    settings: QuotaSettings,
    table: ArcSwap<Table>,
    buckets: DashMap<Box<str>, AtomicU64>,
    start: Instant,
    reloading: Mutex<()>,
}

impl Quotas {
    /// Quotas from `settings` (the file read now).
    pub fn new(settings: QuotaSettings) -> Result<Quotas, QuotaError> {
        if !(settings.share > 0.0 && settings.share <= 1.0) {
            return Err(QuotaError::Invalid(format!(
                "--quota-share must be above 0 and at most 1 (1/N for N replicas), not {}",
                scrub(&settings.share.to_string())
            )));
        }
        if settings.persons_per_second == Some(0) {
            return Err(QuotaError::Invalid(
                "--quota-persons-per-second must be at least 1".into(),
            ));
        }
        if settings.burst == Some(0) {
            return Err(QuotaError::Invalid(
                "--quota-burst must be at least 1".into(),
            ));
        }
        let table = table(&settings)?;
        Ok(Quotas {
            settings,
            table: ArcSwap::from_pointee(table),
            buckets: DashMap::new(),
            start: Instant::now(),
            reloading: Mutex::new(()),
        })
    }

    /// No quota for anyone.
    pub fn none() -> Quotas {
        Quotas::new(QuotaSettings::default()).expect("the default settings are valid")
    }

    /// Whether any consumer has a quota.
    pub fn enabled(&self) -> bool {
        let t = self.table.load();
        t.default.is_some() || !t.consumers.is_empty()
    }

    /// Re-reads the quota file: the new limits apply to the next request; the buckets
    /// (what each consumer has used) are kept. A refused file changes nothing. Returns the
    /// consumers with overrides, or `None` without a file.
    pub fn reload(&self) -> Result<Option<usize>, QuotaError> {
        let _one = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let Some(path) = &self.settings.file else {
            return Ok(None);
        };
        match table(&self.settings) {
            Ok(t) => {
                let n = t.consumers.len();
                self.table.store(Arc::new(t));
                metrics::counter!(crate::metrics::QUOTA_RELOADS, "result" => "reloaded")
                    .increment(1);
                tracing::info!(file = %path.display(), consumers = n, "quota file reloaded");
                Ok(Some(n))
            }
            Err(e) => {
                metrics::counter!(crate::metrics::QUOTA_RELOADS, "result" => "failed").increment(1);
                tracing::error!(cause = %e, "quota file refused; the previous quotas stay");
                Err(e)
            }
        }
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Checks a request of `cost` persons by `consumer` and, unless `peek`, charges it.
    pub fn check(&self, consumer: &str, cost: u64, peek: bool) -> Verdict {
        self.check_at(consumer, cost, peek, self.now())
    }

    fn check_at(&self, consumer: &str, cost: u64, peek: bool, now: u64) -> Verdict {
        let table = self.table.load();
        let Some(limit) = table.consumers.get(consumer).or(table.default.as_ref()) else {
            return Verdict::Unlimited;
        };
        if cost > limit.burst {
            return Verdict::TooLarge { burst: limit.burst };
        }
        let add = cost.saturating_mul(limit.interval);
        let admitted = |tat: u64| {
            let ahead = tat.max(now).saturating_add(add) - now;
            // A request larger than this replica's share of the burst fits a full bucket.
            ahead <= limit.tolerance || tat <= now
        };
        let bucket = self.bucket(consumer);
        let mut tat = bucket.load(Ordering::Acquire);
        loop {
            if !admitted(tat) {
                let wait = if add <= limit.tolerance {
                    tat.saturating_add(add) - limit.tolerance - now
                } else {
                    tat - now
                };
                return Verdict::Refused {
                    standing: standing(limit, tat, now),
                    retry_after: wait.div_ceil(1_000_000_000).max(1),
                };
            }
            let new = tat.max(now).saturating_add(add);
            if peek {
                return Verdict::Admitted(standing(limit, new, now));
            }
            match bucket.compare_exchange_weak(tat, new, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Verdict::Admitted(standing(limit, new, now)),
                Err(seen) => tat = seen,
            }
        }
    }

    /// Charges `cost` persons already served (a feed page's entries), whatever the
    /// standing: the consumer may go into debt, which later requests wait out.
    pub fn charge(&self, consumer: &str, cost: u64) -> Option<Standing> {
        let now = self.now();
        let table = self.table.load();
        let limit = table.consumers.get(consumer).or(table.default.as_ref())?;
        let add = cost.saturating_mul(limit.interval);
        let bucket = self.bucket(consumer);
        let before = bucket
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |tat| {
                Some(tat.max(now).saturating_add(add))
            })
            .unwrap_or_else(|t| t);
        Some(standing(limit, before.max(now).saturating_add(add), now))
    }

    /// The consumer's bucket (made on first use).
    fn bucket(&self, consumer: &str) -> dashmap::mapref::one::Ref<'_, Box<str>, AtomicU64> {
        if let Some(b) = self.buckets.get(consumer) {
            return b;
        }
        self.buckets
            .entry(consumer.into())
            .or_insert_with(|| AtomicU64::new(0))
            .downgrade()
    }

    /// Drops the buckets of consumers that have used nothing lately (their TAT has passed:
    /// a fresh bucket is the same). Returns how many are left.
    pub fn sweep(&self) -> usize {
        let now = self.now();
        self.buckets
            .retain(|_, tat| tat.load(Ordering::Acquire) > now);
        self.buckets.len()
    }
}

/// The standing of a bucket whose TAT is `tat`.
fn standing(limit: &Limit, tat: u64, now: u64) -> Standing {
    let ahead = tat.saturating_sub(now);
    Standing {
        quota: limit.local_burst,
        window: limit.window,
        remaining: limit.tolerance.saturating_sub(ahead) / limit.interval,
        reset: ahead.div_ceil(1_000_000_000),
    }
}

/// The limits `settings` and its file (read now) give.
fn table(settings: &QuotaSettings) -> Result<Table, QuotaError> {
    let default = settings
        .persons_per_second
        .map(|rate| Limit::new(rate, settings.burst, settings.share));
    let consumers = match &settings.file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|cause| QuotaError::Read {
                path: path.clone(),
                cause,
            })?;
            overrides(&text, path, settings.share)?
        }
        None => HashMap::new(),
    };
    Ok(Table { default, consumers })
}

/// Checks the text of a quota file (named `path` in errors); returns how many consumers
/// it gives a quota.
pub fn parse_file(text: &str, path: &std::path::Path) -> Result<usize, QuotaError> {
    overrides(text, path, 1.0).map(|c| c.len())
}

/// The per-consumer limits of a quota file's `text`.
fn overrides(
    text: &str,
    path: &std::path::Path,
    share: f64,
) -> Result<HashMap<String, Limit>, QuotaError> {
    let file: File = toml::from_str(text).map_err(|e| QuotaError::Parse {
        path: path.to_path_buf(),
        line: e
            .span()
            .and_then(|s| text.get(..s.start))
            .map_or(1, |before| before.matches('\n').count() + 1),
        message: scrub(e.message()),
    })?;
    let mut consumers = HashMap::new();
    for (key, o) in file.consumers {
        let invalid = |what: &str| QuotaError::Parse {
            path: path.to_path_buf(),
            line: line_of(text, &key),
            message: format!("[consumers.\"{}\"]: {what}", scrub(&key)),
        };
        if !valid_key(&key) {
            return Err(invalid(
                "a consumer is a 9-digit organisation number or client:<client_id>",
            ));
        }
        if o.persons_per_second == 0 {
            return Err(invalid("persons_per_second must be at least 1"));
        }
        if o.burst == Some(0) {
            return Err(invalid("burst must be at least 1"));
        }
        consumers.insert(key, Limit::new(o.persons_per_second, o.burst, share));
    }
    Ok(consumers)
}

/// A consumer key the service can meet (see [`crate::http::usage::key`]).
fn valid_key(key: &str) -> bool {
    if key.len() == 9 && key.bytes().all(|b| b.is_ascii_digit()) {
        return true;
    }
    key.strip_prefix("client:")
        .is_some_and(crate::http::request_id::label_safe)
}

/// The line of the table header naming `key` (1 when not found).
fn line_of(text: &str, key: &str) -> usize {
    let quoted = format!("\"{key}\"");
    text.lines()
        .position(|l| l.trim_start().starts_with('[') && l.contains(&quoted))
        .or_else(|| text.lines().position(|l| l.contains(&quoted)))
        .map_or(1, |i| i + 1)
}

/// `msg` with every run of 11 or more digits replaced by `…` (the file may be wrong in any
/// way, a personal number where an organisation number belongs included).
fn scrub(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut run = 0;
    let mut start = 0;
    for (i, c) in msg.char_indices() {
        if c.is_ascii_digit() {
            if run == 0 {
                start = i;
            }
            run += 1;
            continue;
        }
        if run > 0 {
            out.push_str(if run >= 11 { "…" } else { &msg[start..i] });
            run = 0;
        }
        out.push(c);
    }
    if run > 0 {
        out.push_str(if run >= 11 { "…" } else { &msg[start..] });
    }
    out
}

/// Sweeps idle buckets every `every` while the service is alive.
pub fn spawn_sweeper(state: std::sync::Weak<crate::http::AppState>, every: std::time::Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(state) = state.upgrade() else { return };
            let left = state.quotas.sweep();
            metrics::gauge!(crate::metrics::QUOTA_BUCKETS).set(left as f64);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn quotas(rate: u64, burst: u64, share: f64) -> Quotas {
        Quotas::new(QuotaSettings {
            persons_per_second: Some(rate),
            burst: Some(burst),
            file: None,
            share,
        })
        .unwrap()
    }

    fn admitted(v: Verdict) -> Standing {
        match v {
            Verdict::Admitted(s) => s,
            other => panic!("not admitted: {other:?}"),
        }
    }

    #[test]
    fn a_burst_is_admitted_then_refused_until_it_refills() {
        let q = quotas(100, 1000, 1.0);
        let now = 5 * S;
        let s = admitted(q.check_at("991825827", 600, false, now));
        assert_eq!(
            s,
            Standing {
                quota: 1000,
                window: 10,
                remaining: 400,
                reset: 6
            }
        );
        admitted(q.check_at("991825827", 400, false, now));
        let Verdict::Refused {
            standing,
            retry_after,
        } = q.check_at("991825827", 1, false, now)
        else {
            panic!("admitted over the burst")
        };
        assert_eq!(standing.remaining, 0);
        assert_eq!(standing.reset, 10);
        // One person refills in 10 ms: Retry-After rounds up to a whole second.
        assert_eq!(retry_after, 1);
        // 250 persons take 2.5 s to refill.
        let Verdict::Refused { retry_after, .. } = q.check_at("991825827", 250, false, now) else {
            panic!()
        };
        assert_eq!(retry_after, 3);
        // Another consumer is not touched.
        admitted(q.check_at("974760673", 1000, false, now));
        // After 2.5 s, 250 fit again, not 251.
        let later = now + 5 * S / 2;
        assert!(matches!(
            q.check_at("991825827", 251, false, later),
            Verdict::Refused { .. }
        ));
        admitted(q.check_at("991825827", 250, false, later));
    }

    #[test]
    fn a_peek_charges_nothing_and_a_request_above_the_burst_is_too_large() {
        let q = quotas(10, 20, 1.0);
        for _ in 0..100 {
            admitted(q.check_at("991825827", 20, true, S));
        }
        admitted(q.check_at("991825827", 20, false, S));
        assert_eq!(
            q.check_at("991825827", 21, false, 100 * S),
            Verdict::TooLarge { burst: 20 }
        );
    }

    #[test]
    fn a_share_divides_rate_and_burst_and_a_full_bucket_takes_a_larger_request() {
        let q = quotas(100, 1000, 0.5);
        let s = admitted(q.check_at("991825827", 500, false, S));
        assert_eq!((s.quota, s.window, s.remaining), (500, 10, 0));
        assert!(matches!(
            q.check_at("991825827", 1, false, S),
            Verdict::Refused { .. }
        ));
        // 1000 persons exceed the local 500, but a full bucket takes them into debt...
        let q = quotas(100, 1000, 0.5);
        admitted(q.check_at("991825827", 1000, false, S));
        // ...which lasts 20 s at the local 50/s: then the bucket is full again.
        let Verdict::Refused { retry_after, .. } = q.check_at("991825827", 1000, false, S) else {
            panic!()
        };
        assert_eq!(retry_after, 20);
        admitted(q.check_at("991825827", 1000, false, 21 * S));
    }

    #[test]
    fn a_charge_may_go_into_debt_and_idle_buckets_are_swept() {
        // 1 000 persons a second: a charge of 5 000 is 5 s of debt, whatever the machine's
        // pauses between these lines.
        let q = quotas(1000, 1000, 1.0);
        let now = q.now();
        admitted(q.check_at("991825827", 1000, false, now));
        let s = q.charge("991825827", 5000).unwrap();
        assert_eq!(s.remaining, 0);
        assert!(matches!(
            q.check_at("991825827", 1, true, q.now()),
            Verdict::Refused { .. }
        ));
        let q = quotas(1_000_000, 1000, 1.0);
        admitted(q.check_at("991825827", 1000, false, q.now()));
        admitted(q.check_at("974760673", 1, false, q.now()));
        assert_eq!(q.buckets.len(), 2);
        // Both have refilled after 1 ms (a millisecond and a microsecond of persons).
        std::thread::sleep(std::time::Duration::from_millis(10));
        assert_eq!(q.sweep(), 0);
        assert_eq!(q.charge("not-limited?", 1).map(|s| s.quota), Some(1000));
        assert_eq!(Quotas::none().charge("991825827", 1), None);
    }

    #[test]
    fn the_default_burst_is_a_second_and_at_least_a_batch() {
        assert_eq!(ONE_BATCH, crate::http::personer::MAX_IDS as u64);
        assert_eq!(Limit::new(200_000, None, 1.0).burst, 200_000);
        assert_eq!(Limit::new(10, None, 1.0).burst, 1000);
        let l = Limit::new(200_000, Some(400_000), 1.0);
        assert_eq!((l.interval, l.window), (5000, 2));
    }

    #[test]
    fn headers_follow_the_draft_syntax() {
        let s = Standing {
            quota: 400_000,
            window: 2,
            remaining: 399_000,
            reset: 1,
        };
        assert_eq!(s.policy_header(), "\"persons\";q=400000;qu=\"persons\";w=2");
        assert_eq!(s.header(), "\"persons\";r=399000;t=1");
    }

    #[test]
    fn settings_out_of_range_are_refused() {
        let bad = |s: QuotaSettings| Quotas::new(s).unwrap_err().to_string();
        assert!(
            bad(QuotaSettings {
                share: 0.0,
                ..QuotaSettings::default()
            })
            .contains("--quota-share")
        );
        assert!(
            bad(QuotaSettings {
                persons_per_second: Some(0),
                ..QuotaSettings::default()
            })
            .contains("at least 1")
        );
    }

    #[test]
    fn scrub_removes_long_digit_runs_only() {
        assert_eq!(
            scrub("org 991825827 id 20914695016x"),
            "org 991825827 id …x"
        );
        assert_eq!(scrub("12345678901"), "…");
        assert_eq!(scrub("line 3"), "line 3");
    }
}
