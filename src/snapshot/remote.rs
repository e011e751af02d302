//! Snapshots from S3-compatible object storage: publish once, every replica follows.
//!
//! Layout under `s3://bucket/prefix`:
//!
//! - `snapshots/<id>.krr`: the snapshot files, content-addressed by their id;
//! - `CURRENT`: a small JSON pointer `{"id","key","size","build_time"}` naming the one to serve.
//!
//! [`publish`] verifies the file, uploads it (multipart), and only then rewrites `CURRENT`
//! (a single-object PUT, atomic in S3), so a replica never sees a pointer to a half-uploaded
//! snapshot. [`crate::store::follow`] polls `CURRENT`; when it names a snapshot that is not served, it
//! downloads the object to a dot-file in the local snapshot directory, syncs it, checks its
//! size, renames it to `<id>.krr`, and runs the ordinary reload path ([`crate::store::reload::Reloader`]), which
//! verifies it and swaps, or refuses it and keeps serving.
//!
//! [`publish`]: Remote::publish
//!
//! Credentials, region and endpoint come from the usual `AWS_*` environment variables
//! (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT`,
//! `AWS_ALLOW_HTTP`), read by `object_store`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutPayload, WriteMultipart};
use tokio::io::AsyncWriteExt;

use crate::model::time::Timestamp;
use crate::snapshot::{Snapshot, SnapshotError};

/// The pointer object's name under the prefix.
pub const POINTER: &str = "CURRENT";

/// Multipart upload part size.
const PART: usize = 16 << 20;

/// What went wrong with object storage. `Display` names the step; the cause is the
/// `source()`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RemoteError {
    /// The snapshot URL does not parse.
    #[error("snapshot URL {url}")]
    Url {
        /// The URL given.
        url: String,
        /// Why.
        #[source]
        source: url::ParseError,
    },
    /// The snapshot URL is not `s3://…`.
    #[error("snapshot URL {0}: only s3://bucket/prefix is supported")]
    Scheme(String),
    /// Object storage refused or failed a step.
    #[error("{what}")]
    Storage {
        /// The step (`reading the CURRENT pointer`, `fetching <key>`…).
        what: String,
        /// Why.
        #[source]
        source: object_store::Error,
    },
    /// A local file could not be read or written.
    #[error("{what}")]
    Io {
        /// The step and the file.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `CURRENT` is malformed (the text says how).
    #[error("{0}")]
    Pointer(String),
    /// The snapshot to publish does not pass verification.
    #[error(transparent)]
    Refused(#[from] SnapshotError),
    /// `CURRENT` already names a newer build: publishing would move it back.
    #[error(
        "CURRENT names a newer snapshot ({current}, built {current_built}) than {} (built {built}); nothing published",
        .file.display()
    )]
    Newer {
        /// The id `CURRENT` names.
        current: String,
        /// Its build time, Oslo time.
        current_built: String,
        /// The file that was to be published.
        file: PathBuf,
        /// Its build time, Oslo time.
        built: String,
    },
    /// The file changed size while it was uploaded.
    #[error("{} changed while it was uploaded", .0.display())]
    Changed(PathBuf),
    /// A downloaded object whose size is not the one `CURRENT` gives (truncated or
    /// replaced): refused like a corrupt snapshot.
    #[error("{key} is {got} bytes, the pointer says {want}")]
    WrongSize {
        /// The object.
        key: String,
        /// Bytes received.
        got: u64,
        /// Bytes the pointer gives.
        want: u64,
    },
    /// The verification task died.
    #[error("the verification task failed")]
    Task(#[source] tokio::task::JoinError),
}

fn storage(what: impl Into<String>) -> impl FnOnce(object_store::Error) -> RemoteError {
    let what = what.into();
    move |source| RemoteError::Storage { what, source }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RemoteError {
    let what = what.into();
    move |source| RemoteError::Io { what, source }
}

/// An error and its causes on one line (`a: b: c`), for logs.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
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
    pub fn parse(bytes: &[u8]) -> Result<Pointer, RemoteError> {
        let bad = |why: String| Err(RemoteError::Pointer(why));
        if let Err(e) = crate::model::json::check_depth(bytes, crate::model::json::MAX_DEPTH) {
            return bad(format!("the CURRENT pointer is not valid: {e}"));
        }
        let p: Pointer = match serde_json::from_slice(bytes) {
            Ok(p) => p,
            Err(e) => return bad(format!("the CURRENT pointer is not valid: {e}")),
        };
        if !(p.id.len() == 16 && p.id.bytes().all(|b| b.is_ascii_hexdigit())) {
            return bad("the CURRENT pointer names no valid snapshot id (16 hex digits)".into());
        }
        if p.key != format!("snapshots/{}.krr", p.id) {
            return bad("the CURRENT pointer's key is not snapshots/<id>.krr".into());
        }
        if p.size < crate::snapshot::format::HEADER_LEN as u64 {
            return bad(format!(
                "the CURRENT pointer's size ({}) is smaller than a snapshot header",
                p.size
            ));
        }
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
    pub fn new(url: &str) -> Result<Remote, RemoteError> {
        let parsed = url::Url::parse(url).map_err(|source| RemoteError::Url {
            url: url.to_string(),
            source,
        })?;
        if parsed.scheme() != "s3" {
            return Err(RemoteError::Scheme(url.to_string()));
        }
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
            .map_err(storage(format!("configuring object storage for {url}")))?;
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
    pub async fn publish(&self, file: &Path) -> Result<Pointer, RemoteError> {
        let path = file.to_path_buf();
        let (id, build_time, size) = tokio::task::spawn_blocking(move || {
            let s = Snapshot::open(&path)?;
            Ok::<_, SnapshotError>((s.id(), s.header().build_time.0, s.file_len()))
        })
        .await
        .map_err(RemoteError::Task)??;
        if let Some(current) = self.pointer().await?
            && current.build_time > build_time
            && current.id != id
        {
            return Err(RemoteError::Newer {
                current: current.id,
                current_built: Timestamp(current.build_time).to_oslo_string(),
                file: file.to_path_buf(),
                built: Timestamp(build_time).to_oslo_string(),
            });
        }
        let key = format!("snapshots/{id}.krr");
        let object = self.key(&key);
        let upload = self
            .store
            .put_multipart(&object)
            .await
            .map_err(storage(format!("starting the upload of {key}")))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART);
        let sent = async {
            let reading = || format!("reading {}", file.display());
            let mut f = tokio::fs::File::open(file)
                .await
                .map_err(io(format!("opening {}", file.display())))?;
            let mut buf = vec![0u8; PART];
            let mut sent = 0u64;
            loop {
                use tokio::io::AsyncReadExt;
                let n = f.read(&mut buf).await.map_err(io(reading()))?;
                if n == 0 {
                    break;
                }
                writer
                    .wait_for_capacity(4)
                    .await
                    .map_err(storage(format!("uploading {key}")))?;
                writer.write(&buf[..n]);
                sent += n as u64;
            }
            if sent != size {
                return Err(RemoteError::Changed(file.to_path_buf()));
            }
            Ok(sent)
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
            .map_err(storage(format!("finishing the upload of {key}")))?;
        let pointer = Pointer {
            id,
            key,
            size,
            build_time,
        };
        self.store
            .put(
                &self.key(POINTER),
                PutPayload::from(serde_json::to_vec(&pointer).expect("a pointer serialises")),
            )
            .await
            .map_err(storage("moving the CURRENT pointer"))?;
        Ok(pointer)
    }

    /// Downloads what `p` names into `dir` unless it is there already; returns the file
    /// when it downloaded one.
    pub async fn catch_up(&self, p: &Pointer, dir: &Path) -> Result<Option<PathBuf>, RemoteError> {
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
                    cause = chain(&e),
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
                cause = chain(&e),
                "cannot download the published snapshot at start; serving the snapshot directory as it is"
            );
        }
    }

    /// What `CURRENT` names (`None` while nothing is published).
    pub async fn pointer(&self) -> Result<Option<Pointer>, RemoteError> {
        let what = "reading the CURRENT pointer";
        match self.store.get(&self.key(POINTER)).await {
            Ok(got) => Ok(Some(Pointer::parse(
                &got.bytes().await.map_err(storage(what))?,
            )?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(storage(what)(e)),
        }
    }

    /// Downloads `p`'s object into `dir` as `<id>.krr` (via a dot-file, synced, then
    /// renamed). Returns the file.
    pub async fn download(&self, p: &Pointer, dir: &Path) -> Result<PathBuf, RemoteError> {
        let part = dir.join(format!(".{}.krr.part", p.id));
        let got = self.fetch(p, dir, &part).await;
        if got.is_err() {
            let _ = tokio::fs::remove_file(&part).await;
        }
        got
    }

    async fn fetch(&self, p: &Pointer, dir: &Path, part: &Path) -> Result<PathBuf, RemoteError> {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(io(format!("creating {}", dir.display())))?;
        let done = dir.join(format!("{}.krr", p.id));
        let got = self
            .store
            .get(&self.key(&p.key))
            .await
            .map_err(storage(format!("fetching {}", p.key)))?;
        let writing = || format!("writing {}", part.display());
        let mut out = tokio::fs::File::create(&part)
            .await
            .map_err(io(writing()))?;
        let mut stream = got.into_stream();
        let mut written = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(storage(format!("downloading {}", p.key)))?;
            out.write_all(&chunk).await.map_err(io(writing()))?;
            written += chunk.len() as u64;
        }
        out.sync_all().await.map_err(io(writing()))?;
        drop(out);
        if written != p.size {
            let _ = tokio::fs::remove_file(&part).await;
            return Err(RemoteError::WrongSize {
                key: p.key.clone(),
                got: written,
                want: p.size,
            });
        }
        let installing = || format!("renaming {} into place", part.display());
        tokio::fs::rename(&part, &done)
            .await
            .map_err(io(installing()))?;
        tokio::fs::File::open(dir)
            .await
            .map_err(io(installing()))?
            .sync_all()
            .await
            .map_err(io(installing()))?;
        Ok(done)
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
}
