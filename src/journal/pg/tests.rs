//! The PostgreSQL journal without a database: URLs, descriptions, refusal.

use super::*;

#[test]
fn urls_are_checked_and_logged_without_secrets() {
    let c = config(
        "postgres://krr:s3cret@db.internal:5433/krr",
        Duration::from_secs(1),
    )
    .unwrap();
    assert_eq!(describe(&c), "postgres db.internal:5433/krr");
    assert_eq!(c.get_application_name(), Some("krr"));
    let err = config("postgres://db.internal:port/krr", Duration::from_secs(1))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("the journal database refused: the journal URL is not valid: "),
        "{err}"
    );
}

#[tokio::test]
async fn an_unreachable_database_is_unavailable_not_a_hang() {
    // A port nothing listens on: refused at once, reported as unavailable (→ 503).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://krr@127.0.0.1:{port}/krr");
    let started = std::time::Instant::now();
    let err = PgJournal::open(&url, 0, PgOptions::default(), Arc::new(|_: &[Entry]| {}))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, JournalError::Unavailable(m) if m.contains("Connection refused")),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}
