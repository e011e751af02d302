//! Following the snapshots published to object storage: poll `CURRENT`, download what it
//! names, hand it to the one reload path.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::snapshot::remote::{Remote, RemoteError, chain};
use crate::store::reload::{Outcome, Reloader};

/// Downloaded snapshots kept in the local directory (the served one among them), so a
/// restart without object storage still has something to serve.
const KEEP: usize = 2;

/// Why one poll did nothing; logged, and tried again at the next poll.
#[derive(Debug, thiserror::Error)]
enum StepError {
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error("the reload failed: {0}")]
    Reload(String),
}

/// Polls `remote`'s pointer every `interval`; fetches and reloads what it names when that is
/// not what `reloader` serves. Errors are logged and retried at the next poll.
pub fn follow(
    remote: Remote,
    reloader: Arc<Reloader>,
    interval: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut failed_id: Option<String> = None;
        loop {
            match step(&remote, &reloader, &mut failed_id).await {
                Ok(()) => {}
                Err(e) => tracing::warn!(
                    url = remote.url(),
                    cause = chain(&e),
                    "snapshot storage: will retry"
                ),
            }
            tokio::time::sleep(interval).await;
        }
    })
}

async fn step(
    remote: &Remote,
    reloader: &Arc<Reloader>,
    failed_id: &mut Option<String>,
) -> Result<(), StepError> {
    let Some(p) = remote.pointer().await? else {
        return Ok(());
    };
    if reloader.served_id().as_deref() == Some(p.id.as_str())
        || failed_id.as_deref() == Some(p.id.as_str())
    {
        return Ok(());
    }
    match remote.catch_up(&p, reloader.dir()).await {
        Ok(_) => {}
        Err(e @ RemoteError::WrongSize { .. }) => {
            tracing::warn!(snapshot = %p.id, cause = %e, "the published snapshot is refused");
            metrics::counter!(crate::metrics::SNAPSHOT_REFUSALS).increment(1);
            *failed_id = Some(p.id);
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    }
    let outcome = reloader.reload("object storage").await;
    if reloader.served_id().as_deref() == Some(p.id.as_str()) {
        prune_downloads(reloader.dir(), &p.id, KEEP);
    } else if let Outcome::Failed { reason } = outcome {
        // Not the file's fault (e.g. the journal could not be read): try again next poll.
        return Err(StepError::Reload(reason));
    } else {
        // Refused (corrupt) or older than the served one: do not fetch it again.
        tracing::warn!(snapshot = %p.id, ?outcome, "the published snapshot is not served");
        *failed_id = Some(p.id);
    }
    Ok(())
}

/// Removes downloaded snapshots (`<16 hex digits>.krr`) beyond the newest `keep` by
/// modification time, never `served`. Files with other names are the operator's and stay.
fn prune_downloads(dir: &Path, served: &str, keep: usize) {
    let Ok(read) = std::fs::read_dir(dir) else {
        return;
    };
    let mut downloaded: Vec<(std::time::SystemTime, PathBuf)> = read
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let id = name.strip_suffix(".krr")?;
            let ours = id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit());
            (ours && id != served).then_some(())?;
            Some((e.metadata().ok()?.modified().ok()?, e.path()))
        })
        .collect();
    downloaded.sort_by_key(|d| std::cmp::Reverse(d.0));
    // The served one counts towards `keep`.
    for (_, path) in downloaded.into_iter().skip(keep.saturating_sub(1)) {
        match std::fs::remove_file(&path) {
            Ok(()) => tracing::info!(file = %path.display(), "old downloaded snapshot removed"),
            Err(e) => {
                tracing::warn!(file = %path.display(), cause = %e, "cannot remove an old downloaded snapshot")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_old_downloads_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let names = [
            "0000000000000001.krr",
            "0000000000000002.krr",
            "0000000000000003.krr",
            "served0000000000.krr",
            "operator.krr",
            ".0000000000000004.krr.part",
        ];
        for (i, n) in names.iter().enumerate() {
            let path = dir.path().join(n);
            std::fs::write(&path, b"x").unwrap();
            let t = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000 + i as u64);
            std::fs::File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_modified(t)
                .unwrap();
        }
        // Served: 0000000000000002; keep 2 = the served one and the newest other download.
        prune_downloads(dir.path(), "0000000000000002", 2);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                ".0000000000000004.krr.part",
                "0000000000000002.krr",
                "0000000000000003.krr",
                "operator.krr",
                "served0000000000.krr",
            ]
        );
    }
}
