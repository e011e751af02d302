//! Snapshots from S3-compatible object storage: publish once, every replica follows.
//!
//! Layout under `s3://bucket/prefix`:
//!
//! - `snapshots/<id>.krr`: the snapshot files, content-addressed by their id;
//! - `CURRENT`: a small JSON pointer `{"id","key","size","build_time"}` naming the one to serve.
//!
//! [`publish`] verifies the file, uploads it (multipart), and only then rewrites `CURRENT`
//! (a single-object PUT, atomic in S3), so a replica never sees a pointer to a half-uploaded
//! snapshot. [`follow`] polls `CURRENT`; when it names a snapshot that is not served, it
//! downloads the object to a dot-file in the local snapshot directory, syncs it, checks its
//! size, renames it to `<id>.krr`, and runs the ordinary reload path ([`Reloader`]), which
//! verifies it and swaps, or refuses it and keeps serving.
//!
//! Credentials, region and endpoint come from the usual `AWS_*` environment variables
//! (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT`,
//! `AWS_ALLOW_HTTP`), read by `object_store`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutPayload, WriteMultipart};
use tokio::io::AsyncWriteExt;

use crate::reload::Reloader;
use crate::snapshot::Snapshot;

/// The pointer object's name under the prefix.
pub const POINTER: &str = "CURRENT";

/// Downloaded snapshots kept in the local directory (the served one among them), so a
/// restart without object storage still has something to serve.
const KEEP: usize = 2;

/// Multipart upload part size.
const PART: usize = 16 << 20;

/// A downloaded object whose size is not the one `CURRENT` gives (truncated or replaced):
/// refused like a corrupt snapshot.
#[derive(Debug, thiserror::Error)]
#[error("{key} is {got} bytes, the pointer says {want}")]
pub struct WrongSize {
    key: String,
    got: u64,
    want: u64,
}

/// What `CURRENT` says.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Pointer {
    /// The snapshot's id (its body checksum).
    pub id: String,
    /// Its object key, relative to the prefix.
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its header build time, Unix seconds.
    pub build_time: i64,
}

impl Pointer {
    /// Reads and checks a `CURRENT` object: an id of 16 hex digits, the key `publish` gives
    /// it, a size a snapshot can have.
    pub fn parse(bytes: &[u8]) -> anyhow::Result<Pointer> {
        let p: Pointer = serde_json::from_slice(bytes)
            .map_err(|e| anyhow::anyhow!("the CURRENT pointer is not valid: {e}"))?;
        anyhow::ensure!(
            p.id.len() == 16 && p.id.bytes().all(|b| b.is_ascii_hexdigit()),
            "the CURRENT pointer names no valid snapshot id (16 hex digits)"
        );
        anyhow::ensure!(
            p.key == format!("snapshots/{}.krr", p.id),
            "the CURRENT pointer's key is not snapshots/<id>.krr"
        );
        anyhow::ensure!(
            p.size >= crate::snapshot::format::HEADER_LEN as u64,
            "the CURRENT pointer's size ({}) is smaller than a snapshot header",
            p.size
        );
        Ok(p)
    }
}

/// A bucket and prefix holding published snapshots.
#[derive(Clone, Debug)]
pub struct Remote {
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    url: String,
}

impl Remote {
    /// `s3://bucket/prefix`, configured from the `AWS_*` environment.
    pub fn new(url: &str) -> anyhow::Result<Remote> {
        let parsed = url::Url::parse(url).with_context(|| format!("snapshot URL {url}"))?;
        anyhow::ensure!(
            parsed.scheme() == "s3",
            "snapshot URL {url}: only s3://bucket/prefix is supported"
        );
        // The default 30 s request timeout covers a whole body: a snapshot of gigabytes
        // needs longer. Connecting must still be quick.
        use object_store::ClientConfigKey;
        use object_store::aws::AmazonS3ConfigKey;
        let store = object_store::aws::AmazonS3Builder::from_env()
            .with_url(url)
            .with_config(AmazonS3ConfigKey::Client(ClientConfigKey::Timeout), "1h")
            .with_config(
                AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout),
                "5s",
            )
            .build()
            .with_context(|| format!("configuring object storage for {url}"))?;
        let prefix = ObjectPath::from(parsed.path().trim_matches('/'));
        Ok(Remote {
            store: Arc::new(store),
            prefix,
            url: url.to_string(),
        })
    }

    fn key(&self, name: &str) -> ObjectPath {
        ObjectPath::from_iter(self.prefix.parts().chain(ObjectPath::from(name).parts()))
    }

    /// The URL this remote was made from.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Verifies `file`, uploads it, then moves `CURRENT` to it. Returns the new pointer.
    pub async fn publish(&self, file: &Path) -> anyhow::Result<Pointer> {
        let path = file.to_path_buf();
        let (id, build_time, size) = tokio::task::spawn_blocking(move || {
            let s = Snapshot::open(&path)?;
            anyhow::Ok((s.id(), s.header().build_time.0, s.file_len()))
        })
        .await??;
        if let Some(current) = self.pointer().await?
            && current.build_time > build_time
            && current.id != id
        {
            anyhow::bail!(
                "CURRENT names a newer snapshot ({}, built {}) than {} (built {}); nothing published",
                current.id,
                crate::time::Timestamp(current.build_time).to_oslo_string(),
                file.display(),
                crate::time::Timestamp(build_time).to_oslo_string()
            );
        }
        let key = format!("snapshots/{id}.krr");
        let object = self.key(&key);
        let upload = self
            .store
            .put_multipart(&object)
            .await
            .with_context(|| format!("starting the upload of {key}"))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART);
        let sent = async {
            let mut f = tokio::fs::File::open(file)
                .await
                .with_context(|| format!("opening {}", file.display()))?;
            let mut buf = vec![0u8; PART];
            let mut sent = 0u64;
            loop {
                use tokio::io::AsyncReadExt;
                let n = f.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                writer.wait_for_capacity(4).await?;
                writer.write(&buf[..n]);
                sent += n as u64;
            }
            anyhow::ensure!(
                sent == size,
                "{} changed while it was uploaded",
                file.display()
            );
            anyhow::Ok(sent)
        }
        .await;
        if let Err(e) = sent {
            // Do not leave the parts behind in the bucket.
            let _ = writer.abort().await;
            return Err(e);
        }
        writer
            .finish()
            .await
            .with_context(|| format!("finishing the upload of {key}"))?;
        let pointer = Pointer {
            id,
            key,
            size,
            build_time,
        };
        self.store
            .put(
                &self.key(POINTER),
                PutPayload::from(serde_json::to_vec(&pointer)?),
            )
            .await
            .context("moving the CURRENT pointer")?;
        Ok(pointer)
    }

    /// Downloads what `p` names into `dir` unless it is there already; returns the file
    /// when it downloaded one.
    pub async fn catch_up(&self, p: &Pointer, dir: &Path) -> anyhow::Result<Option<PathBuf>> {
        if dir.join(format!("{}.krr", p.id)).exists() {
            return Ok(None);
        }
        let started = std::time::Instant::now();
        let file = self.download(p, dir).await?;
        tracing::info!(
            snapshot = %p.id,
            bytes = p.size,
            millis = started.elapsed().as_millis() as u64,
            "snapshot downloaded from object storage"
        );
        Ok(Some(file))
    }

    /// At start, before the directory is read: brings it up to what `CURRENT` names, so a
    /// replica that was down through a publish (and a compaction of the journal) does not
    /// first serve its older snapshot. Storage that does not answer within `wait` is
    /// logged and the directory served as it is.
    pub async fn catch_up_at_start(&self, dir: &Path, wait: Duration) {
        let pointer = match tokio::time::timeout(wait, self.pointer()).await {
            Ok(Ok(Some(p))) => p,
            Ok(Ok(None)) => return,
            Ok(Err(e)) => {
                tracing::warn!(
                    url = self.url(),
                    cause = format!("{e:#}"),
                    "snapshot storage unreadable at start; serving the snapshot directory as it is"
                );
                return;
            }
            Err(_) => {
                tracing::warn!(
                    url = self.url(),
                    "snapshot storage did not answer at start; serving the snapshot directory as it is"
                );
                return;
            }
        };
        if let Err(e) = self.catch_up(&pointer, dir).await {
            tracing::warn!(
                url = self.url(),
                cause = format!("{e:#}"),
                "cannot download the published snapshot at start; serving the snapshot directory as it is"
            );
        }
    }

    /// What `CURRENT` names (`None` while nothing is published).
    pub async fn pointer(&self) -> anyhow::Result<Option<Pointer>> {
        match self.store.get(&self.key(POINTER)).await {
            Ok(got) => Ok(Some(Pointer::parse(&got.bytes().await?)?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e).context("reading the CURRENT pointer"),
        }
    }

    /// Downloads `p`'s object into `dir` as `<id>.krr` (via a dot-file, synced, then
    /// renamed). Returns the file.
    pub async fn download(&self, p: &Pointer, dir: &Path) -> anyhow::Result<PathBuf> {
        let part = dir.join(format!(".{}.krr.part", p.id));
        let got = self.fetch(p, dir, &part).await;
        if got.is_err() {
            let _ = tokio::fs::remove_file(&part).await;
        }
        got
    }

    async fn fetch(&self, p: &Pointer, dir: &Path, part: &Path) -> anyhow::Result<PathBuf> {
        tokio::fs::create_dir_all(dir)
            .await
            .with_context(|| format!("creating {}", dir.display()))?;
        let done = dir.join(format!("{}.krr", p.id));
        let got = self
            .store
            .get(&self.key(&p.key))
            .await
            .with_context(|| format!("fetching {}", p.key))?;
        let mut out = tokio::fs::File::create(&part)
            .await
            .with_context(|| format!("creating {}", part.display()))?;
        let mut stream = got.into_stream();
        let mut written = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.with_context(|| format!("downloading {}", p.key))?;
            out.write_all(&chunk).await?;
            written += chunk.len() as u64;
        }
        out.sync_all().await?;
        drop(out);
        if written != p.size {
            let _ = tokio::fs::remove_file(&part).await;
            return Err(WrongSize {
                key: p.key.clone(),
                got: written,
                want: p.size,
            }
            .into());
        }
        tokio::fs::rename(&part, &done).await?;
        tokio::fs::File::open(dir).await?.sync_all().await?;
        Ok(done)
    }
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
                    cause = format!("{e:#}"),
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
) -> anyhow::Result<()> {
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
        Err(e) if e.downcast_ref::<WrongSize>().is_some() => {
            tracing::warn!(snapshot = %p.id, cause = %e, "the published snapshot is refused");
            metrics::counter!(crate::metrics::SNAPSHOT_REFUSALS).increment(1);
            *failed_id = Some(p.id);
            return Ok(());
        }
        Err(e) => return Err(e),
    }
    let outcome = reloader.reload("object storage").await;
    if reloader.served_id().as_deref() == Some(p.id.as_str()) {
        prune_downloads(reloader.dir(), &p.id, KEEP);
    } else if let crate::reload::Outcome::Failed { reason } = &outcome {
        // Not the file's fault (e.g. the journal could not be read): try again next poll.
        anyhow::bail!("the reload failed: {reason}");
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
    fn pointers_are_checked() {
        let good = r#"{"id":"a7a1e841f16874c0","key":"snapshots/a7a1e841f16874c0.krr","size":96548456,"build_time":1796000000}"#;
        let p = Pointer::parse(good.as_bytes()).unwrap();
        assert_eq!((p.id.as_str(), p.size), ("a7a1e841f16874c0", 96_548_456));
        let err = |text: &str| Pointer::parse(text.as_bytes()).unwrap_err().to_string();
        assert!(
            err("not json").starts_with("the CURRENT pointer is not valid: expected ident"),
            "{}",
            err("not json")
        );
        assert!(err(r#"{"id":"a7a1e841f16874c0"}"#).contains("missing field `key`"));
        assert_eq!(
            err(r#"{"id":"../../etc","key":"snapshots/../../etc.krr","size":9999,"build_time":0}"#),
            "the CURRENT pointer names no valid snapshot id (16 hex digits)"
        );
        assert_eq!(
            err(r#"{"id":"a7a1e841f16874c0","key":"other/x.krr","size":9999,"build_time":0}"#),
            "the CURRENT pointer's key is not snapshots/<id>.krr"
        );
        assert_eq!(
            err(
                r#"{"id":"a7a1e841f16874c0","key":"snapshots/a7a1e841f16874c0.krr","size":3,"build_time":0}"#
            ),
            "the CURRENT pointer's size (3) is smaller than a snapshot header"
        );
    }

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
