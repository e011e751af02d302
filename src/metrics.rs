//! Prometheus metrics, rendered on the admin listener's `/metrics`.
//!
//! The `metrics` crate's macros record from anywhere (request path, journal thread, reload
//! task) into one process-wide recorder from `metrics-exporter-prometheus`; the admin route
//! renders it as text ([`crate::ops::scrape`] brings the gauges read at scrape time up to
//! date first). This module names the metrics and holds the recorder; it imports nothing
//! of the crate, so every layer may record. No label ever holds a personal number: routes are the fixed API
//! paths, token rejections are the fixed reason texts, and the snapshot is named by its
//! content checksum.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Requests by `route`, `method` and `status`.
pub const HTTP_REQUESTS: &str = "krr_http_requests_total";
/// Request latency by `route`.
pub const HTTP_DURATION: &str = "krr_http_request_duration_seconds";
/// Persons returned by `/personer` and `/person`.
pub const PERSONS_RETURNED: &str = "krr_persons_returned_total";
/// Token rejections by `reason`.
pub const TOKEN_REJECTIONS: &str = "krr_token_rejections_total";
/// Reloads by `result` (`swapped`, `unchanged`, `failed`).
pub const RELOADS: &str = "krr_reloads_total";
/// Snapshot files refused (checksum, layout, unreadable…).
pub const SNAPSHOT_REFUSALS: &str = "krr_snapshot_refusals_total";
/// 1, labelled with the served snapshot's `id`.
pub const SNAPSHOT_INFO: &str = "krr_snapshot_info";
/// Served snapshot's build time, Unix seconds.
pub const SNAPSHOT_BUILD_TIME: &str = "krr_snapshot_build_time_seconds";
/// Seconds since the served snapshot was built.
pub const SNAPSHOT_AGE: &str = "krr_snapshot_age_seconds";
/// Persons in the served snapshot.
pub const SNAPSHOT_RECORDS: &str = "krr_snapshot_records";
/// Served snapshot's folded journal sequence number.
pub const SNAPSHOT_JOURNAL_SEQ: &str = "krr_snapshot_journal_seq";
/// Last shared-journal sequence number this replica has applied (PostgreSQL journal).
pub const JOURNAL_APPLIED_SEQ: &str = "krr_journal_applied_seq";
/// Times the journal database was found behind what a replica had applied.
pub const JOURNAL_REWOUND: &str = "krr_journal_rewound_total";
/// Changes refused because the journal database was unavailable.
pub const JOURNAL_FAILURES: &str = "krr_journal_failures_total";
/// Last durable journal sequence number.
pub const JOURNAL_SEQ: &str = "krr_journal_seq";
/// `fdatasync` latency of the journal (one per group commit).
pub const JOURNAL_FSYNC_SECONDS: &str = "krr_journal_fsync_seconds";
/// Changes acknowledged per sync, in all.
pub const JOURNAL_RECORDS: &str = "krr_journal_records_total";
/// Changed persons held in the overlay.
pub const OVERLAY_ENTRIES: &str = "krr_overlay_entries";
/// 1 while the service is ready.
pub const READY: &str = "krr_ready";
/// Connections closed because the client took none of its answer in time.
pub const CONNECTIONS_TIMED_OUT: &str = "krr_connections_timed_out_total";
/// 1 while the journal refuses changes (disk full, I/O error, or stopped after a failed
/// fsync), by reason.
pub const JOURNAL_REFUSING: &str = "krr_journal_refusing";

/// Counter: requests by consumer (organisation number, `client:<id>`, `other`), route and
/// status.
pub const CONSUMER_REQUESTS: &str = "krr_consumer_requests_total";
/// Counter: persons returned, by consumer.
pub const CONSUMER_PERSONS: &str = "krr_consumer_persons_total";
/// Counter: requests refused 429 because the consumer's quota was used up, by consumer.
pub const QUOTA_REJECTIONS: &str = "krr_quota_rejections_total";
/// Counter: quota file reloads by result.
pub const QUOTA_RELOADS: &str = "krr_quota_reloads_total";
/// Gauge: consumers with a quota bucket in memory (idle ones are dropped).
pub const QUOTA_BUCKETS: &str = "krr_quota_buckets";
/// Counter: requests answered 503 at once because `--max-in-flight` were in progress.
pub const REQUESTS_SHED: &str = "krr_requests_shed_total";
/// Counter: body bytes of public answers as sent, by content coding.
pub const BODY_BYTES: &str = "krr_http_body_bytes_total";
/// Counter: body bytes of the same answers before coding, by content coding.
pub const BODY_BYTES_IDENTITY: &str = "krr_http_body_identity_bytes_total";
/// Counter: TLS connections accepted, by the protocol ALPN chose (`http/1.1`, `h2`).
pub const TLS_CONNECTIONS: &str = "krr_tls_connections_total";
/// Counter: TLS handshakes that failed or timed out.
pub const TLS_HANDSHAKE_FAILURES: &str = "krr_tls_handshake_failures_total";
/// Counter: certificate reloads by result.
pub const TLS_RELOADS: &str = "krr_tls_reloads_total";
/// Change feed requests answered with a page.
pub const FEED_REQUESTS: &str = "krr_feed_requests_total";
/// Entries the change feed has listed.
pub const FEED_ENTRIES: &str = "krr_feed_entries_total";
/// The newest change id this replica's feed answers (`sisteEndringsId`).
pub const FEED_NEWEST_ID: &str = "krr_feed_newest_id";
/// Change ids handed out (the journal's newest) that this replica's feed does not answer
/// yet: a replica behind its journal or not yet swapped to a reserved snapshot.
pub const FEED_LAG: &str = "krr_feed_lag_ids";

/// The process-wide recorder (installed on first use; later calls share it).
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let latency = [
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            2.5,
        ];
        let fsync = [
            0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 1.0,
        ];
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(HTTP_DURATION.into()), &latency)
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(JOURNAL_FSYNC_SECONDS.into()), &fsync)
            })
            .expect("bucket lists are not empty");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (a test harness); then this one only
        // renders what is recorded through it, which is nothing, and tests see that.
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
        }
        describe();
        handle.clone()
    })
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(HTTP_REQUESTS, "HTTP requests by route, method and status");
    describe_histogram!(
        HTTP_DURATION,
        Unit::Seconds,
        "HTTP request latency by route"
    );
    describe_counter!(PERSONS_RETURNED, "persons returned by lookups");
    describe_counter!(TOKEN_REJECTIONS, "access tokens refused, by reason");
    describe_counter!(RELOADS, "snapshot reloads by result");
    describe_counter!(SNAPSHOT_REFUSALS, "snapshot files refused");
    describe_gauge!(SNAPSHOT_INFO, "the served snapshot (id label)");
    describe_gauge!(
        SNAPSHOT_BUILD_TIME,
        Unit::Seconds,
        "served snapshot build time, Unix seconds"
    );
    describe_gauge!(
        SNAPSHOT_AGE,
        Unit::Seconds,
        "seconds since the served snapshot was built"
    );
    describe_gauge!(SNAPSHOT_RECORDS, "persons in the served snapshot");
    describe_gauge!(
        SNAPSHOT_JOURNAL_SEQ,
        "journal sequence number folded into the served snapshot"
    );
    describe_gauge!(JOURNAL_SEQ, "last durable journal sequence number");
    describe_gauge!(
        JOURNAL_APPLIED_SEQ,
        "last shared-journal sequence number this replica has applied"
    );
    describe_counter!(
        JOURNAL_REWOUND,
        "times the journal database was behind what this replica had applied (restore, failover)"
    );
    describe_counter!(
        JOURNAL_FAILURES,
        "changes refused because the journal (its disk or its database) could not commit them"
    );
    describe_histogram!(
        JOURNAL_FSYNC_SECONDS,
        Unit::Seconds,
        "journal commit latency (fdatasync, or the database's commit)"
    );
    describe_counter!(JOURNAL_RECORDS, "changes made durable by the journal");
    describe_gauge!(OVERLAY_ENTRIES, "changed persons not yet in a snapshot");
    describe_gauge!(READY, "1 while the service is ready to answer");
    describe_counter!(
        CONNECTIONS_TIMED_OUT,
        "connections closed because the client took none of its answer within --write-timeout"
    );
    describe_counter!(FEED_REQUESTS, "change feed pages answered");
    describe_counter!(
        BODY_BYTES,
        "bytes of public answer bodies as sent, by content coding"
    );
    describe_counter!(
        BODY_BYTES_IDENTITY,
        "bytes of the same answer bodies before content coding, by coding"
    );
    describe_counter!(
        TLS_CONNECTIONS,
        "TLS connections accepted, by ALPN protocol"
    );
    describe_counter!(TLS_HANDSHAKE_FAILURES, "TLS handshakes failed or timed out");
    describe_counter!(TLS_RELOADS, "TLS certificate reloads by result");
    describe_counter!(
        QUOTA_REJECTIONS,
        "requests refused 429 over the consumer's quota, by consumer"
    );
    describe_counter!(QUOTA_RELOADS, "quota file reloads by result");
    describe_gauge!(
        QUOTA_BUCKETS,
        "consumers with a quota bucket in memory (idle ones are dropped)"
    );
    describe_counter!(FEED_ENTRIES, "persons listed by the change feed");
    describe_gauge!(
        FEED_NEWEST_ID,
        "the newest change id this replica's change feed answers"
    );
    describe_gauge!(
        FEED_LAG,
        "change ids handed out that this replica's change feed does not answer yet"
    );
    describe_gauge!(
        JOURNAL_REFUSING,
        "1 while the journal refuses changes (reason: no-space, io-error, fsync-failed)"
    );
}
