//! Logs on stderr for `serve` and `demo`: text or JSON, through a background writer, with
//! a filter that keeps personal numbers out.

use std::io::IsTerminal;

// `--log-format`: human-readable lines (ANSI colours on a terminal), or one JSON object a
// line. (Plain comments: clap would show doc comments as value descriptions in `--help`.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Logs to stderr through a background writer (a slow terminal or log shipper never
/// blocks a request); nothing is dropped (the writer applies back-pressure instead). The
/// guard flushes on drop.
pub fn init(format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    let filter = filter(std::env::var("KRR_LOG").ok().as_deref());
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
    guard
}

/// The log filter from `KRR_LOG` (default `info`). tokio-postgres logs statement parameters
/// (personal numbers) at debug: every directive naming it is dropped and it is capped at
/// info, whatever `KRR_LOG` says.
fn filter(spec: Option<&str>) -> tracing_subscriber::EnvFilter {
    let kept: Vec<&str> = spec
        .unwrap_or("info")
        .split(',')
        .filter(|d| !d.contains("tokio_postgres") && !d.trim().is_empty())
        .collect();
    let base = if kept.is_empty() {
        "info".to_string()
    } else {
        kept.join(",")
    };
    tracing_subscriber::EnvFilter::try_new(&base)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
        .add_directive("tokio_postgres=info".parse().expect("a valid directive"))
}

#[cfg(test)]
mod tests {
    use super::filter;

    #[test]
    fn tokio_postgres_never_logs_below_info() {
        for spec in [
            None,
            Some("debug"),
            Some("trace,tokio_postgres::query=trace"),
            Some("tokio_postgres=debug"),
            Some("krr=debug, tokio_postgres::query=debug"),
        ] {
            let f = filter(spec).to_string();
            let directives: Vec<&str> = f
                .split(',')
                .filter(|d| d.contains("tokio_postgres"))
                .collect();
            assert_eq!(directives, ["tokio_postgres=info"], "{spec:?} gave {f}");
        }
        assert!(
            filter(Some("krr=debug,warn"))
                .to_string()
                .contains("krr=debug")
        );
    }
}
