//! Development keys: an RSA token-issuer key with its JWKS, and self-signed certificates.

use std::path::Path;

/// Why a key or certificate could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// RSA key generation failed.
    #[error(transparent)]
    Rsa(#[from] rsa::Error),
    /// The key could not be encoded as PKCS#8.
    #[error(transparent)]
    Pkcs8(#[from] rsa::pkcs8::Error),
    /// The certificate could not be made.
    #[error(transparent)]
    Certificate(#[from] rcgen::Error),
}

/// Writes a private key readable by its owner only (mode 0600).
pub fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents.as_bytes())
}

/// A new RSA-2048 key (PKCS#8 PEM) and a JWKS holding its public half under `kid`.
pub fn rsa_key_and_jwks(kid: &str) -> Result<(String, String), KeyError> {
    use base64::Engine;
    use rsa::pkcs8::EncodePrivateKey;
    use rsa::traits::PublicKeyParts;
    let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048)?;
    let pem = key.to_pkcs8_pem(rsa::pkcs8::LineEnding::LF)?.to_string();
    let b64 = |b: Vec<u8>| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let jwks = serde_json::json!({"keys": [{
        "kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid,
        "n": b64(key.n().to_bytes_be()), "e": b64(key.e().to_bytes_be()),
    }]});
    Ok((
        pem,
        serde_json::to_string_pretty(&jwks).expect("a JWKS serialises"),
    ))
}

/// A self-signed certificate (PEM) for an RSA key (PKCS#8 PEM).
pub fn self_signed(key_pem: &str, common_name: &str) -> Result<String, KeyError> {
    let key = rcgen::KeyPair::from_pem_and_sign_algo(key_pem, &rcgen::PKCS_RSA_SHA256)?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    Ok(params.self_signed(&key)?.pem())
}
