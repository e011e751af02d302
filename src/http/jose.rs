//! `Accept: application/jose`: the JSON answer as the payload of a compact JWS, RS256,
//! whose protected header carries `alg`, `kid` and `x5c`, so a client can verify it with
//! the certificate alone.

use std::path::Path;
use std::sync::Arc;

use tokio::sync::Semaphore;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::DecodePrivateKey;
use rsa::signature::{RandomizedSigner, SignatureEncoding};
use sha2::{Digest, Sha256};

/// Why the signing key or certificate could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JoseError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The key is not an RSA private key in PEM (PKCS#8 or PKCS#1).
    #[error("signing key: not an RSA private key in PEM (PKCS#8 or PKCS#1)")]
    Key,
    /// The certificate file holds no PEM certificate.
    #[error("signing certificate: no PEM certificate found")]
    Cert,
}

/// The signer as the request path uses it: RSA signing (about a millisecond of CPU) runs
/// on the blocking pool, at most `concurrency` at a time, so a client asking for JOSE
/// answers slows itself (it waits for a slot), never the runtime workers that answer
/// everyone else.
#[derive(Debug, Clone)]
pub struct Signing {
    signer: Arc<JoseSigner>,
    slots: Arc<Semaphore>,
}

impl Signing {
    /// Signing with at most `concurrency` (at least 1) signatures at a time.
    pub fn new(signer: JoseSigner, concurrency: usize) -> Signing {
        Signing {
            signer: Arc::new(signer),
            slots: Arc::new(Semaphore::new(concurrency.max(1))),
        }
    }

    /// As many slots as half the cores (at least one).
    pub fn default_concurrency() -> usize {
        std::thread::available_parallelism().map_or(1, |n| n.get() / 2)
    }

    /// The signer itself (for answers signed once, at start).
    pub fn signer(&self) -> &JoseSigner {
        &self.signer
    }

    /// Signs `payload` off the runtime workers; waits for a slot first.
    pub async fn sign(&self, payload: Vec<u8>) -> Result<Vec<u8>, SignError> {
        // The slot goes with the signing itself: a request dropped while it signs (its
        // client gone) does not free the slot before the CPU work is done.
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| SignError)?;
        let signer = self.signer.clone();
        tokio::task::spawn_blocking(move || {
            let signed = signer.sign(&payload);
            drop(slot);
            signed
        })
        .await
        .map_err(|_| SignError)
    }
}

/// Signing could not be done (the blocking pool is gone: the runtime is shutting down).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the answer could not be signed")]
pub struct SignError;

/// Signs answers as compact JWS.
pub struct JoseSigner {
    key: rsa::pkcs1v15::SigningKey<Sha256>,
    header_b64: String,
    kid: String,
}

impl std::fmt::Debug for JoseSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoseSigner")
            .field("kid", &self.kid)
            .finish()
    }
}

impl JoseSigner {
    /// Loads the key and the certificate chain (leaf first) from PEM files.
    pub fn load(key: &Path, certs: &Path) -> Result<JoseSigner, JoseError> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|source| JoseError::Io {
                path: p.to_owned(),
                source,
            })
        };
        JoseSigner::from_pem(&read(key)?, &read(certs)?)
    }

    /// Builds a signer from PEM text.
    pub fn from_pem(key_pem: &str, certs_pem: &str) -> Result<JoseSigner, JoseError> {
        let key = rsa::RsaPrivateKey::from_pkcs8_pem(key_pem)
            .or_else(|_| rsa::RsaPrivateKey::from_pkcs1_pem(key_pem))
            .map_err(|_| JoseError::Key)?;
        let chain: Vec<Vec<u8>> = pem::parse_many(certs_pem)
            .map_err(|_| JoseError::Cert)?
            .into_iter()
            .filter(|p| p.tag() == "CERTIFICATE")
            .map(|p| p.into_contents())
            .collect();
        let leaf = chain.first().ok_or(JoseError::Cert)?;
        let kid = URL_SAFE_NO_PAD.encode(Sha256::digest(leaf));
        let header = serde_json::json!({
            "alg": "RS256",
            "kid": kid,
            "x5c": chain.iter().map(|c| STANDARD.encode(c)).collect::<Vec<_>>(),
        });
        Ok(JoseSigner {
            key: rsa::pkcs1v15::SigningKey::<Sha256>::new(key),
            header_b64: URL_SAFE_NO_PAD.encode(header.to_string()),
            kid,
        })
    }

    /// The key id (base64url SHA-256 of the leaf certificate).
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// `header.payload.signature` for `payload`.
    pub fn sign(&self, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.header_b64.len() + payload.len() * 4 / 3 + 400);
        out.extend_from_slice(self.header_b64.as_bytes());
        out.push(b'.');
        let start = out.len();
        out.resize(
            start + base64::encoded_len(payload.len(), false).expect("fits"),
            0,
        );
        let n = URL_SAFE_NO_PAD
            .encode_slice(payload, &mut out[start..])
            .expect("sized above");
        out.truncate(start + n);
        let signature = self
            .key
            .sign_with_rng(&mut rsa::rand_core::OsRng, &out)
            .to_bytes();
        out.push(b'.');
        out.extend_from_slice(URL_SAFE_NO_PAD.encode(signature).as_bytes());
        out
    }
}
