//! TLS on the public listener (rustls, ring): `--tls-cert` (PEM chain, leaf first) and
//! `--tls-key` (PEM: PKCS#8, PKCS#1 or SEC1), ALPN `h2` and `http/1.1`.
//!
//! The files are read at start (a bad pair stops the start with the reason) and again on
//! every reload (SIGHUP, `POST /admin/reload`): a good pair serves every new connection from
//! then on, connections already open keep their session; a bad pair is refused with the
//! reason and the old certificate keeps serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why a certificate and key cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The certificate file holds no `CERTIFICATE` block, or a broken one.
    #[error("{}: {what}", path.display())]
    Certificate {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The key file holds no private key rustls reads, or a broken one.
    #[error("{}: {what}", path.display())]
    Key {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// rustls refuses the pair (the key does not match the certificate, an unsupported key).
    #[error("the certificate and key cannot be served together: {0}")]
    Pair(rustls::Error),
}

/// The public listener's TLS settings: the files and the configuration made from them.
#[derive(Debug)]
pub struct Tls {
    cert: PathBuf,
    key: PathBuf,
    current: ArcSwap<ServerConfig>,
    /// Reloads one at a time (SIGHUP and the admin route may coincide): the pair read last
    /// is the one stored last.
    reloading: std::sync::Mutex<()>,
}

impl Tls {
    /// Reads `cert` and `key`.
    pub fn load(cert: &Path, key: &Path) -> Result<Tls, TlsError> {
        let config = server_config(cert, key)?;
        Ok(Tls {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: ArcSwap::from_pointee(config),
            reloading: std::sync::Mutex::new(()),
        })
    }

    /// Reads the files again; on success new connections use them.
    pub fn reload(&self) -> Result<(), TlsError> {
        let _one_at_a_time = self
            .reloading
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match server_config(&self.cert, &self.key) {
            Ok(config) => {
                self.current.store(Arc::new(config));
                metrics::counter!(crate::metrics::TLS_RELOADS, "result" => "reloaded").increment(1);
                tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
                Ok(())
            }
            Err(e) => {
                metrics::counter!(crate::metrics::TLS_RELOADS, "result" => "failed").increment(1);
                tracing::error!(cause = %e, "TLS certificate reload refused; the old one keeps serving");
                Err(e)
            }
        }
    }

    /// The acceptor for a new connection.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.load_full())
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The rustls configuration for `cert` and `key`, ALPN `h2` then `http/1.1`.
pub fn server_config(cert: &Path, key: &Path) -> Result<ServerConfig, TlsError> {
    let cert_pem = read(cert)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Certificate {
            path: cert.to_owned(),
            what: format!("not a PEM certificate chain ({e})"),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Certificate {
            path: cert.to_owned(),
            what: "no CERTIFICATE block".into(),
        });
    }
    let key_pem = read(key)?;
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Key {
        path: key.to_owned(),
        what: match e {
            rustls_pki_types::pem::Error::NoItemsFound => {
                "no PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY block".into()
            }
            e => format!("not a PEM private key ({e})"),
        },
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // A PEM block that is no key ring reads is the key file's fault: say so by its name.
    if let Err(e) = provider.key_provider.load_private_key(key_der.clone_key()) {
        return Err(TlsError::Key {
            path: key.to_owned(),
            what: format!("not an RSA, ECDSA or Ed25519 private key ({e})"),
        });
    }
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Pair)?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(TlsError::Pair)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/tls")
            .join(name)
    }

    fn error(cert: &Path, key: &Path) -> String {
        server_config(cert, key).unwrap_err().to_string()
    }

    #[test]
    fn pkcs8_pkcs1_and_sec1_keys_are_served_with_alpn() {
        for (cert, key) in [
            ("rsa.crt", "rsa-pkcs1.key"),
            ("ec.crt", "ec-sec1.key"),
            ("ec.crt", "ec-pkcs8.key"),
        ] {
            let c = server_config(&fixture(cert), &fixture(key))
                .unwrap_or_else(|e| panic!("{cert} {key}: {e}"));
            assert_eq!(c.alpn_protocols, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
        }
    }

    #[test]
    fn bad_files_are_refused_with_the_file_and_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a pem file\n").unwrap();
        let broken = dir.path().join("broken.pem");
        std::fs::write(
            &broken,
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let (cert, key) = (fixture("ec.crt"), fixture("ec-sec1.key"));
        let e = error(&missing, &key);
        assert!(
            e.starts_with("cannot read ") && e.contains("missing.pem"),
            "{e}"
        );
        assert_eq!(
            error(&garbage, &key),
            format!("{}: no CERTIFICATE block", garbage.display())
        );
        let e = error(&broken, &key);
        assert!(
            e.starts_with(&format!(
                "{}: not a PEM certificate chain",
                broken.display()
            )),
            "{e}"
        );
        assert_eq!(
            error(&cert, &garbage),
            format!(
                "{}: no PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY block",
                garbage.display()
            )
        );
        let bad_key = dir.path().join("bad-key.pem");
        std::fs::write(
            &bad_key,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let e = error(&cert, &bad_key);
        assert!(
            e.starts_with(&format!(
                "{}: not an RSA, ECDSA or Ed25519 private key",
                bad_key.display()
            )),
            "{e}"
        );
        // A certificate given as the key holds no key either.
        assert!(error(&cert, &cert).contains("no PRIVATE KEY"));
        // The RSA certificate with the EC key.
        let e = error(&fixture("rsa.crt"), &key);
        assert!(
            e.starts_with("the certificate and key cannot be served together"),
            "{e}"
        );
    }
}
