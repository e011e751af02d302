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

/// A new RSA-2048 key (PKCS#8 PEM).
pub fn new_rsa_key() -> Result<String, KeyError> {
    use rsa::pkcs8::EncodePrivateKey;
    let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048)?;
    Ok(key.to_pkcs8_pem(rsa::pkcs8::LineEnding::LF)?.to_string())
}

/// The public half of a private key in PEM (RSA as PKCS#8 or PKCS#1, EC P-256 as PKCS#8
/// or SEC1) as a JWK's members, without `kid`, `use` and `alg`.
fn public_jwk(key_pem: &str) -> Option<serde_json::Value> {
    use base64::Engine;
    use rsa::pkcs1::DecodeRsaPrivateKey;
    use rsa::pkcs8::DecodePrivateKey;
    use rsa::traits::PublicKeyParts;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    if let Ok(k) = rsa::RsaPrivateKey::from_pkcs8_pem(key_pem)
        .or_else(|_| rsa::RsaPrivateKey::from_pkcs1_pem(key_pem))
    {
        return Some(serde_json::json!({
            "kty": "RSA",
            "n": b64(&k.n().to_bytes_be()),
            "e": b64(&k.e().to_bytes_be()),
        }));
    }
    let k = p256::SecretKey::from_pkcs8_pem(key_pem)
        .or_else(|_| p256::SecretKey::from_sec1_pem(key_pem))
        .ok()?;
    let point =
        p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(&k.public_key(), false);
    Some(serde_json::json!({
        "kty": "EC",
        "crv": "P-256",
        "x": b64(point.x()?),
        "y": b64(point.y()?),
    }))
}

/// The RFC 7638 thumbprint (SHA-256, base64url) of the public half of `key_pem`: the
/// `kid` `krr keys new` and `krr demo` write into their JWKS and `krr token` puts into
/// every token it signs, so the two always match. `None` if the PEM is not such a key.
pub fn kid_of(key_pem: &str) -> Option<String> {
    thumbprint(&public_jwk(key_pem)?)
}

/// RFC 7638 thumbprint of a public JWK (RSA or EC P-256 members).
fn thumbprint(jwk: &serde_json::Value) -> Option<String> {
    use base64::Engine;
    use sha2::Digest;
    let s = |k: &str| jwk[k].as_str().unwrap_or_default().to_string();
    // The required members only, in lexicographic order, no whitespace (RFC 7638 §3.2).
    let canonical = match jwk["kty"].as_str()? {
        "RSA" => format!(r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#, s("e"), s("n")),
        "EC" => format!(
            r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
            s("crv"),
            s("x"),
            s("y")
        ),
        _ => return None,
    };
    Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(canonical)))
}

/// A JWKS holding the public half of `key_pem` under its thumbprint [`kid_of`], for
/// signatures (`use: sig`, `alg` RS256 or ES256).
pub fn jwks_of(key_pem: &str) -> Option<String> {
    let mut jwk = public_jwk(key_pem)?;
    let alg = if jwk["kty"] == "RSA" {
        "RS256"
    } else {
        "ES256"
    };
    jwk["kid"] = kid_of(key_pem)?.into();
    jwk["use"] = "sig".into();
    jwk["alg"] = alg.into();
    Some(
        serde_json::to_string_pretty(&serde_json::json!({ "keys": [jwk] }))
            .expect("a JWKS serialises"),
    )
}

/// A new RSA-2048 key (PKCS#8 PEM) and a JWKS holding its public half under its
/// thumbprint.
pub fn rsa_key_and_jwks() -> Result<(String, String), KeyError> {
    let pem = new_rsa_key()?;
    let jwks = jwks_of(&pem).expect("a key made here is an RSA key");
    Ok((pem, jwks))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbprints_follow_rfc_7638() {
        // RFC 7638 §3.1's example key: its thumbprint is given there.
        let n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
        let jwk = serde_json::json!({"kty": "RSA", "n": n, "e": "AQAB", "alg": "RS256", "kid": "2011-04-29"});
        assert_eq!(
            thumbprint(&jwk).as_deref(),
            Some("NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs")
        );
        // A key made here: its JWKS names it by the thumbprint, and the key verifies.
        let (pem, jwks) = rsa_key_and_jwks().unwrap();
        let kid = kid_of(&pem).unwrap();
        let v: serde_json::Value = serde_json::from_str(&jwks).unwrap();
        assert_eq!(v["keys"][0]["kid"], kid.as_str());
        assert_eq!(kid.len(), 43);
        assert_eq!(kid_of("not a key"), None);
    }
}
