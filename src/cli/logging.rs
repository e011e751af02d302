//! Logs on stderr for `serve` and `demo`: text or JSON, through a batching writer, with a
//! filter that keeps personal numbers out.

use std::io::IsTerminal;

// `--log-format`: human-readable lines (ANSI colours on a terminal), or one JSON object a
// line. (Plain comments: clap would show doc comments as value descriptions in `--help`.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Logs to stderr through a batching writer: a log line is appended to a shared buffer
/// (a short lock and a copy), and one thread writes what has gathered every
/// [`FLUSH_EVERY`], in whole lines of at most 4 KiB a write (a pipe takes those whole, so
/// lines never interleave). Nothing is dropped: past [`MAX_PENDING`] bytes a logging thread
/// writes the buffer itself (back-pressure). A channel to a writer thread, as before, woke
/// that thread for every line: on two cores that cost a quarter of the single-person
/// throughput, the access line being one per request. The guard flushes on drop.
pub fn init(format: LogFormat) -> Flusher {
    let filter = filter(std::env::var("KRR_LOG").ok().as_deref());
    let flusher = Flusher::start();
    // Access lines are formatted by `krr::http::access` and join the same buffer.
    let pending = flusher.pending.clone();
    krr::http::access::install(format == LogFormat::Json, move |line| pending.append(line));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(flusher.writer());
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
    flusher
}

/// How long a line may wait in the buffer.
pub const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_millis(20);
/// Bytes gathered past which the logging thread writes them itself.
pub const MAX_PENDING: usize = 1 << 20;

/// The shared buffer of lines not yet written.
#[derive(Clone, Default)]
pub struct Pending(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Pending {
    /// Appends whole lines; past [`MAX_PENDING`] writes everything gathered itself.
    fn append(&self, lines: &[u8]) {
        let full = {
            let mut p = self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            p.extend_from_slice(lines);
            (p.len() > MAX_PENDING).then(|| std::mem::take(&mut *p))
        };
        if let Some(bytes) = full {
            write_lines(&bytes);
        }
    }

    fn take(&self) -> Vec<u8> {
        std::mem::take(
            &mut *self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

/// Writes `bytes` (whole lines) to stderr in writes of whole lines of at most 4 KiB.
fn write_lines(bytes: &[u8]) {
    use std::io::Write;
    let mut err = std::io::stderr().lock();
    let mut rest = bytes;
    while !rest.is_empty() {
        let mut end = rest.len().min(4096);
        if end < rest.len() {
            // Back to the last line end within 4 KiB (a longer line goes alone).
            end = rest[..end].iter().rposition(|&b| b == b'\n').map_or_else(
                || {
                    rest.iter()
                        .position(|&b| b == b'\n')
                        .map_or(rest.len(), |p| p + 1)
                },
                |p| p + 1,
            );
        }
        let _ = err.write_all(&rest[..end]);
        rest = &rest[end..];
    }
}

/// One event's line, appended to the buffer whole when the event is formatted.
pub struct LineWriter {
    pending: Pending,
    line: Vec<u8>,
}

impl std::io::Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.line.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if !self.line.is_empty() {
            self.pending.append(&self.line);
        }
    }
}

/// Makes a [`LineWriter`] per event.
#[derive(Clone)]
pub struct MakeLineWriter(Pending);

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for MakeLineWriter {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        LineWriter {
            pending: self.0.clone(),
            line: Vec::with_capacity(256),
        }
    }
}

/// The thread that writes the buffer every [`FLUSH_EVERY`]; flushes and stops on drop.
pub struct Flusher {
    pending: Pending,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Flusher {
    fn start() -> Flusher {
        let pending = Pending::default();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = {
            let pending = pending.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("krr-log-writer".into())
                .spawn(move || {
                    while !stop.load(std::sync::atomic::Ordering::Acquire) {
                        std::thread::sleep(FLUSH_EVERY);
                        let bytes = pending.take();
                        if !bytes.is_empty() {
                            write_lines(&bytes);
                        }
                    }
                })
                .ok()
        };
        Flusher {
            pending,
            stop,
            thread,
        }
    }

    fn writer(&self) -> MakeLineWriter {
        MakeLineWriter(self.pending.clone())
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let bytes = self.pending.take();
        if !bytes.is_empty() {
            write_lines(&bytes);
        }
    }
}

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
