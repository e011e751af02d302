//! `krr token`: mints signed test tokens shaped like Maskinporten's (machine) or
//! ID-porten's (user, with `acr`). For development and load tests only.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Map, Value, json};

/// Maskinporten's issuer (machine tokens).
pub const MASKINPORTEN: &str = "https://maskinporten.no/";
/// ID-porten's issuer (citizens' tokens).
pub const IDPORTEN: &str = "https://idporten.no";

/// What to put in the token.
#[derive(Clone, Debug)]
pub struct MintOptions {
    /// Space-separated scopes.
    pub scope: String,
    /// `pid` claim (a user, or the one person a machine token may look up).
    pub pid: Option<String>,
    /// `iss` claim.
    pub iss: String,
    /// Lifetime in seconds.
    pub ttl: u64,
    /// `kid` header; `None`: the key's RFC 7638 thumbprint (what `krr keys new` and
    /// `krr demo` name the key by in their JWKS).
    pub kid: Option<String>,
    /// `aud` claim.
    pub aud: Option<String>,
    /// The consumer's organisation number (`consumer.ID` = `0192:<orgnr>`).
    pub consumer: String,
    /// Make a user token (adds `acr`).
    pub user: bool,
}

impl Default for MintOptions {
    fn default() -> MintOptions {
        MintOptions {
            scope: String::new(),
            pid: None,
            iss: MASKINPORTEN.to_string(),
            ttl: 3600,
            kid: None,
            aud: None,
            consumer: "991825827".to_string(),
            user: false,
        }
    }
}

/// Why a token could not be minted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MintError {
    /// The key is neither an RSA nor an EC P-256 private key in PEM.
    #[error("the key is not an RSA or EC (P-256) private key in PEM (PKCS#8 or PKCS#1)")]
    Key,
    /// Signing failed.
    #[error("signing failed: {0}")]
    Sign(String),
}

/// Signs a token with `key_pem` (RSA → RS256, EC P-256 → ES256).
pub fn mint(key_pem: &[u8], opts: &MintOptions) -> Result<String, MintError> {
    let (key, alg) = match EncodingKey::from_rsa_pem(key_pem) {
        Ok(k) => (k, Algorithm::RS256),
        Err(_) => (
            EncodingKey::from_ec_pem(key_pem).map_err(|_| MintError::Key)?,
            Algorithm::ES256,
        ),
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let mut claims = Map::new();
    claims.insert("iss".into(), json!(opts.iss));
    claims.insert("iat".into(), json!(now));
    claims.insert("nbf".into(), json!(now));
    claims.insert("exp".into(), json!(now + opts.ttl));
    claims.insert(
        "jti".into(),
        json!(format!("{:032x}", rand::random::<u128>())),
    );
    claims.insert("scope".into(), json!(opts.scope));
    claims.insert("client_id".into(), json!("krr-token"));
    if opts.user {
        claims.insert("acr".into(), json!("idporten-loa-high"));
    } else {
        claims.insert(
            "consumer".into(),
            json!({"authority": "iso6523-actorid-upis", "ID": format!("0192:{}", opts.consumer)}),
        );
    }
    if let Some(pid) = &opts.pid {
        claims.insert("pid".into(), json!(pid));
    }
    if let Some(aud) = &opts.aud {
        claims.insert("aud".into(), json!(aud));
    }
    let mut header = Header::new(alg);
    header.kid = opts.kid.clone().or_else(|| {
        std::str::from_utf8(key_pem)
            .ok()
            .and_then(crate::dev::keys::kid_of)
    });
    jsonwebtoken::encode(&header, &Value::Object(claims), &key)
        .map_err(|e| MintError::Sign(e.to_string()))
}
