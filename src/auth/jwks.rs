//! The trusted signing keys: a JWKS from a file or a URL, cached and refreshed.
//!
//! - The first load must succeed (the service refuses to start without trust).
//! - A refresh that fails keeps the last good keys and is logged.
//! - A token whose `kid` is unknown triggers at most one refetch per minute, so a stream of
//!   forged tokens cannot turn into a stream of requests to the issuer.
//! - Only RSA and EC (P-256) keys are taken; symmetric (`oct`) keys are never trusted.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

/// Where the keys come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JwksSource {
    /// A JWKS JSON file, re-read on refresh.
    File(PathBuf),
    /// A JWKS URL (`https://` or `http://`), fetched with a timeout.
    Url(String),
}

/// Why keys could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JwksError {
    /// Reading the file failed.
    #[error("cannot read JWKS file {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Fetching the URL failed.
    #[error("cannot fetch JWKS from {url}: {reason}")]
    Fetch {
        /// The URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The document is not a usable JWKS.
    #[error("not a usable JWKS: {0}")]
    Parse(String),
}

/// Key families (a token's `alg` must match its key's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// RS256, RS384, RS512.
    Rsa,
    /// ES256.
    Ec,
}

impl Family {
    /// The family an accepted algorithm needs.
    pub fn of(alg: Algorithm) -> Option<Family> {
        match alg {
            Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 => Some(Family::Rsa),
            Algorithm::ES256 => Some(Family::Ec),
            _ => None,
        }
    }
}

/// One trusted key.
#[derive(Clone)]
pub struct Key {
    /// For verification.
    pub decoding: DecodingKey,
    /// RSA or EC.
    pub family: Family,
    /// The `alg` the JWK pins, if it does.
    pub alg: Option<Algorithm>,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("family", &self.family)
            .field("alg", &self.alg)
            .finish()
    }
}

/// A parsed key set.
#[derive(Clone, Debug, Default)]
pub struct KeySet {
    by_kid: HashMap<String, Key>,
    without_kid: Vec<Key>,
}

impl KeySet {
    /// Parses a JWKS document, keeping the RSA and P-256 signature keys.
    pub fn parse(json: &[u8]) -> Result<KeySet, JwksError> {
        crate::model::json::check_depth(json, crate::model::json::MAX_DEPTH)
            .map_err(|e| JwksError::Parse(e.to_string()))?;
        let set: JwkSet =
            serde_json::from_slice(json).map_err(|e| JwksError::Parse(e.to_string()))?;
        let mut out = KeySet::default();
        for jwk in &set.keys {
            if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
                continue;
            }
            let family = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => Family::Rsa,
                AlgorithmParameters::EllipticCurve(p)
                    if p.curve == jsonwebtoken::jwk::EllipticCurve::P256 =>
                {
                    Family::Ec
                }
                _ => continue,
            };
            let alg = match jwk.common.key_algorithm {
                Some(KeyAlgorithm::RS256) => Some(Algorithm::RS256),
                Some(KeyAlgorithm::RS384) => Some(Algorithm::RS384),
                Some(KeyAlgorithm::RS512) => Some(Algorithm::RS512),
                Some(KeyAlgorithm::ES256) => Some(Algorithm::ES256),
                None => None,
                Some(_) => continue,
            };
            let decoding = DecodingKey::from_jwk(jwk)
                .map_err(|e| JwksError::Parse(format!("bad key: {e}")))?;
            let key = Key {
                decoding,
                family,
                alg,
            };
            match &jwk.common.key_id {
                Some(kid) => {
                    out.by_kid.insert(kid.clone(), key);
                }
                None => out.without_kid.push(key),
            }
        }
        if out.is_empty() {
            return Err(JwksError::Parse(
                "no RSA or P-256 signature key in the set".into(),
            ));
        }
        Ok(out)
    }

    /// Number of usable keys.
    pub fn len(&self) -> usize {
        self.by_kid.len() + self.without_kid.len()
    }

    /// True when the set has no usable key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The keys a token with `kid` may be verified with: the one named, or for a token
    /// without `kid`, every key without one.
    pub fn candidates(&self, kid: Option<&str>) -> Vec<&Key> {
        match kid {
            Some(k) => self.by_kid.get(k).into_iter().collect(),
            None => self.without_kid.iter().collect(),
        }
    }
}

type HttpClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Empty<Bytes>,
>;

/// Largest JWKS document accepted.
const MAX_JWKS_BYTES: usize = 1 << 20;
/// Least time between two refetches caused by unknown `kid`s.
pub const UNKNOWN_KID_REFETCH_INTERVAL: Duration = Duration::from_secs(60);

/// The live key set with its source.
pub struct KeyStore {
    source: JwksSource,
    keys: ArcSwap<KeySet>,
    last_unknown_kid_refetch: Mutex<Option<Instant>>,
    client: Option<HttpClient>,
    timeout: Duration,
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyStore")
            .field("source", &self.source)
            .field("keys", &self.keys.load().len())
            .finish()
    }
}

impl KeyStore {
    /// Loads the keys once; fails if they cannot be had.
    pub async fn load(source: JwksSource, timeout: Duration) -> Result<KeyStore, JwksError> {
        let client = match &source {
            JwksSource::Url(_) => Some(http_client()),
            JwksSource::File(_) => None,
        };
        let store = KeyStore {
            source,
            keys: ArcSwap::from_pointee(KeySet::default()),
            last_unknown_kid_refetch: Mutex::new(None),
            client,
            timeout,
        };
        store.refresh().await?;
        Ok(store)
    }

    /// A store over fixed keys (for tests and tools).
    pub fn fixed(keys: KeySet) -> KeyStore {
        KeyStore {
            source: JwksSource::File(PathBuf::new()),
            keys: ArcSwap::from_pointee(keys),
            last_unknown_kid_refetch: Mutex::new(Some(Instant::now())),
            client: None,
            timeout: Duration::from_secs(1),
        }
    }

    /// The current keys.
    pub fn current(&self) -> arc_swap::Guard<std::sync::Arc<KeySet>> {
        self.keys.load()
    }

    /// Fetches the keys again; on failure the last good keys stay.
    pub async fn refresh(&self) -> Result<usize, JwksError> {
        let bytes = self.fetch().await?;
        let set = KeySet::parse(&bytes)?;
        let n = set.len();
        self.keys.store(std::sync::Arc::new(set));
        Ok(n)
    }

    /// Called for a token with an unknown `kid`: refetches unless that was done less than
    /// [`UNKNOWN_KID_REFETCH_INTERVAL`] ago. Returns whether it refetched successfully.
    pub async fn refetch_for_unknown_kid(&self) -> bool {
        {
            let mut last = self
                .last_unknown_kid_refetch
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|t| t.elapsed() < UNKNOWN_KID_REFETCH_INTERVAL) {
                return false;
            }
            *last = Some(Instant::now());
        }
        match self.refresh().await {
            Ok(n) => {
                tracing::info!(keys = n, "JWKS refetched for an unknown kid");
                true
            }
            Err(e) => {
                tracing::warn!(cause = %e, "JWKS refetch failed; keeping the last good keys");
                false
            }
        }
    }

    /// Refreshes every `every` until the runtime stops; failures keep the last good keys.
    pub fn spawn_refresh(self: std::sync::Arc<Self>, every: Duration) {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                match self.refresh().await {
                    Ok(n) => tracing::debug!(keys = n, "JWKS refreshed"),
                    Err(e) => {
                        tracing::warn!(cause = %e, "JWKS refresh failed; keeping the last good keys")
                    }
                }
            }
        });
    }

    async fn fetch(&self) -> Result<Vec<u8>, JwksError> {
        match &self.source {
            JwksSource::File(path) => {
                tokio::fs::read(path)
                    .await
                    .map_err(|source| JwksError::File {
                        path: path.clone(),
                        source,
                    })
            }
            JwksSource::Url(url) => {
                let fail = |reason: String| JwksError::Fetch {
                    url: url.clone(),
                    reason,
                };
                let client = self.client.as_ref().expect("URL sources have a client");
                let uri: hyper::Uri = url.parse().map_err(|e| fail(format!("bad URL: {e}")))?;
                let get = async {
                    let resp = client
                        .get(uri)
                        .await
                        .map_err(|e| fail(format!("request failed: {e}")))?;
                    if resp.status() != hyper::StatusCode::OK {
                        return Err(fail(format!("status {}", resp.status())));
                    }
                    let body = Limited::new(resp.into_body(), MAX_JWKS_BYTES)
                        .collect()
                        .await
                        .map_err(|e| fail(format!("reading the body: {e}")))?;
                    Ok(body.to_bytes().to_vec())
                };
                tokio::time::timeout(self.timeout, get)
                    .await
                    .map_err(|_| fail(format!("no answer within {:?}", self.timeout)))?
            }
        }
    }
}

fn http_client() -> HttpClient {
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .build();
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(https)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_signature_keys_of_accepted_types_are_kept() {
        let jwks = br#"{"keys":[
            {"kty":"oct","kid":"hmac","k":"c2VjcmV0"},
            {"kty":"RSA","kid":"r","n":"sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw","e":"AQAB","alg":"RS256","use":"sig"},
            {"kty":"RSA","kid":"enc","n":"sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw","e":"AQAB","use":"enc"}
        ]}"#;
        let set = KeySet::parse(jwks).unwrap();
        assert_eq!(set.len(), 1);
        assert_eq!(set.candidates(Some("r")).len(), 1);
        assert!(set.candidates(Some("hmac")).is_empty());
        assert!(set.candidates(Some("enc")).is_empty());
        assert!(set.candidates(None).is_empty());
    }

    #[test]
    fn unusable_documents_are_refused() {
        for (doc, want) in [
            (&b"not json"[..], "not a usable JWKS"),
            (br#"{"keys":[]}"#, "no RSA or P-256 signature key"),
            (
                br#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#,
                "no RSA or P-256",
            ),
        ] {
            let e = KeySet::parse(doc).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
    }
}
