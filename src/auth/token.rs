//! Access token verification: JWT, signed by a trusted issuer, checked locally.
//!
//! Order of checks: the header is read first (only RS256, RS384, RS512 and ES256 are
//! accepted; `none` and HMAC never, whatever a key set says), then the key is chosen by
//! `kid` (an unknown `kid` may cause one JWKS refetch a minute), then signature, `iss`
//! (exact), `exp`, `nbf`, `iat` (with a small skew) and `aud` (when one is required).
//! A verified token is cached until it expires, so a client reusing its token pays for the
//! signature check once per worker thread. The cache is thread-local: the request path
//! takes no lock for it.

use std::sync::Arc;

use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::auth::jwks::{Family, KeyStore};
use crate::auth::scopes::Grants;
use crate::model::fnr::PersonId;
use crate::model::json::{MAX_DEPTH, check_depth};

/// Why a request is not authenticated. Descriptions are fixed strings: never a token value,
/// never a personal number.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No `Authorization: Bearer …` header.
    #[error("missing bearer token")]
    Missing,
    /// A token was given but is not acceptable.
    #[error("{0}")]
    Invalid(&'static str),
}

/// Who is calling, as the verified token says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// What the scopes allow.
    pub grants: Grants,
    /// The `pid` claim: the logged-in person (user tokens) or the one person a
    /// pid-restricted machine token may look up.
    pub pid: Option<PersonId>,
    /// True for a user token (it carries `acr`).
    pub user: bool,
    /// The consumer's organisation number (from `consumer.ID`, `0192:<orgnr>`), for audit.
    pub consumer: Option<String>,
    /// The `client_id` claim: the client a user token was issued to (usage per client).
    pub client: Option<String>,
    /// Expiry, Unix seconds.
    pub exp: i64,
}

impl Principal {
    /// A machine token that carries `pid` may only look up that person.
    pub fn restricted_to(&self) -> Option<PersonId> {
        if self.user { None } else { self.pid }
    }
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    kid: Option<String>,
    /// RFC 7515 §4.1.11: extensions the recipient must understand. This service
    /// understands none, so a token that names any is refused.
    crit: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Claims {
    exp: i64,
    /// Checked here too: the library also takes an array holding the issuer, and the
    /// contract says `iss` *equals* a trusted issuer.
    iss: serde_json::Value,
    iat: Option<i64>,
    #[serde(default)]
    scope: String,
    pid: Option<String>,
    acr: Option<String>,
    consumer: Option<Consumer>,
    client_id: Option<String>,
}

#[derive(Deserialize)]
struct Consumer {
    #[serde(rename = "ID")]
    id: String,
}

/// Most tokens kept in one thread's verified-token cache.
const CACHE_CAP: usize = 50_000;
/// Most bytes of tokens kept in one thread's cache (tokens are up to the header limit
/// long; by count alone 50 000 tokens of 22 KB would hold a gigabyte).
const CACHE_BYTES: usize = 16 << 20;
/// Longer tokens are verified every time rather than cached.
const CACHE_MAX_TOKEN: usize = 8 * 1024;

thread_local! {
    /// Verified tokens of this thread, by verifier: several verifiers with different trust
    /// may live in one process (tests do that); a service has one.
    static CACHE: std::cell::RefCell<Vec<(u64, Cache)>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// How many bytes at the end of a token (its signature) choose its place in the cache.
const TAIL: usize = 32;

/// One verifier's verified tokens on one thread, and their bytes.
///
/// An entry's place is a seeded hash of the token's last [`TAIL`] bytes, the end of its
/// signature, and the entry holds the whole token, compared byte for byte on a hit: hashing
/// all of a token (about 800 bytes) was most of a hit's cost. Only verified tokens are
/// entered, so a forged token that hashes alike finds a different token there and is
/// verified like any other.
struct Cache {
    tokens: HashMap<u64, Kept, std::hash::BuildHasherDefault<Placed>>,
    seed: u64,
    bytes: usize,
}

/// A kept token and its principal.
type Kept = (Box<[u8]>, Arc<Principal>);

/// The hasher of [`Cache`]'s keys, which are hashes already.
#[derive(Default)]
struct Placed(u64);

impl std::hash::Hasher for Placed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used (the keys are u64); any other write still mixes.
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

impl Cache {
    fn new() -> Cache {
        Cache {
            tokens: HashMap::default(),
            seed: rand::random(),
            bytes: 0,
        }
    }

    /// Where `token` is kept.
    fn place(&self, token: &[u8]) -> u64 {
        let tail = &token[token.len().saturating_sub(TAIL)..];
        xxhash_rust::xxh3::xxh3_64_with_seed(tail, self.seed)
    }

    /// The principal of `token` when it is here and unexpired (at `skew` seconds of grace);
    /// an expired one is dropped and named so.
    fn get(&mut self, token: &[u8], skew: i64) -> Option<Result<Arc<Principal>, AuthError>> {
        let place = self.place(token);
        let (kept, principal) = self.tokens.get(&place)?;
        if **kept != *token {
            return None;
        }
        if now() <= principal.exp.saturating_add(skew) {
            return Some(Ok(principal.clone()));
        }
        if let Some((kept, _)) = self.tokens.remove(&place) {
            self.bytes = self.bytes.saturating_sub(kept.len());
        }
        Some(Err(AuthError::Invalid("token expired")))
    }

    /// Keeps `token`'s principal, making room first (expired tokens out; all out when that
    /// is not enough).
    fn put(&mut self, token: &[u8], principal: Arc<Principal>, skew: i64) {
        if self.tokens.len() >= CACHE_CAP || self.bytes + token.len() > CACHE_BYTES {
            let t = now();
            self.tokens
                .retain(|_, (_, p)| p.exp.saturating_add(skew) >= t);
            self.bytes = self.tokens.values().map(|(k, _)| k.len()).sum();
            if self.tokens.len() >= CACHE_CAP || self.bytes + token.len() > CACHE_BYTES {
                self.tokens.clear();
                self.bytes = 0;
            }
        }
        let place = self.place(token);
        if let Some((old, _)) = self.tokens.insert(place, (token.into(), principal)) {
            self.bytes = self.bytes.saturating_sub(old.len());
        }
        self.bytes += token.len();
    }
}

/// Runs `f` on this thread's cache of the verifier `id`.
fn with_cache<T>(id: u64, f: impl FnOnce(&mut Cache) -> T) -> T {
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        let at = match c.iter().position(|(v, _)| *v == id) {
            Some(at) => at,
            None => {
                c.push((id, Cache::new()));
                c.len() - 1
            }
        };
        f(&mut c[at].1)
    })
}

static NEXT_VERIFIER: AtomicU64 = AtomicU64::new(1);

/// Verifies tokens against a key store and the configured issuers and audience.
pub struct Verifier {
    keys: Arc<KeyStore>,
    issuers: Vec<String>,
    audience: Option<String>,
    skew_secs: u64,
    id: u64,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("issuers", &self.issuers)
            .field("audience", &self.audience)
            .finish()
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

impl Verifier {
    /// A verifier trusting `keys` for tokens from `issuers` (exact match).
    pub fn new(
        keys: Arc<KeyStore>,
        issuers: Vec<String>,
        audience: Option<String>,
        skew_secs: u64,
    ) -> Verifier {
        Verifier {
            keys,
            issuers,
            audience,
            skew_secs,
            id: NEXT_VERIFIER.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// The key store (for refresh tasks).
    pub fn keys(&self) -> &Arc<KeyStore> {
        &self.keys
    }

    /// Verifies the value of an `Authorization` header.
    pub async fn verify_header(&self, header: Option<&[u8]>) -> Result<Arc<Principal>, AuthError> {
        // A token verified before is found by its bytes, before the header is read as text:
        // they equal a token that was (see `bearer_bytes`).
        if let Some(token) = header.and_then(bearer_bytes) {
            let skew = i64::try_from(self.skew_secs).unwrap_or(i64::MAX);
            if let Some(hit) = with_cache(self.id, |c| c.get(token, skew)) {
                return hit;
            }
        }
        let token = bearer(header)?;
        self.verify(token).await
    }

    /// Verifies a compact JWT.
    pub async fn verify(&self, token: &str) -> Result<Arc<Principal>, AuthError> {
        let skew = i64::try_from(self.skew_secs).unwrap_or(i64::MAX);
        if let Some(hit) = with_cache(self.id, |c| c.get(token.as_bytes(), skew)) {
            return hit;
        }
        let principal = Arc::new(self.verify_uncached(token).await?);
        if token.len() <= CACHE_MAX_TOKEN {
            with_cache(self.id, |c| {
                c.put(token.as_bytes(), principal.clone(), skew)
            });
        }
        Ok(principal)
    }

    async fn verify_uncached(&self, token: &str) -> Result<Principal, AuthError> {
        let header = read_header(token)?;
        let alg = match header.alg.as_str() {
            "RS256" => Algorithm::RS256,
            "RS384" => Algorithm::RS384,
            "RS512" => Algorithm::RS512,
            "ES256" => Algorithm::ES256,
            "none" => {
                return Err(AuthError::Invalid(
                    "unsigned tokens (alg none) are not accepted",
                ));
            }
            a if a.starts_with("HS") => {
                return Err(AuthError::Invalid("HMAC-signed tokens are not accepted"));
            }
            _ => return Err(AuthError::Invalid("token alg is not accepted")),
        };
        if header.crit.is_some() {
            return Err(AuthError::Invalid(
                "token names critical header extensions (crit) this service does not understand",
            ));
        }
        let family = Family::of(alg).expect("accepted algorithms have a family");
        let kid = header.kid.as_deref();
        let mut keys = self.keys.current();
        if keys.candidates(kid).is_empty() && self.keys.refetch_for_unknown_kid().await {
            keys = self.keys.current();
        }
        let candidates = keys.candidates(kid);
        if candidates.is_empty() {
            return Err(AuthError::Invalid("token signed by an unknown key"));
        }
        let mut validation = Validation::new(alg);
        validation.leeway = self.skew_secs;
        validation.validate_nbf = true;
        validation.set_issuer(&self.issuers);
        match &self.audience {
            Some(aud) => {
                // A required audience must be present, not merely right when present.
                validation.set_required_spec_claims(&["exp", "iss", "aud"]);
                validation.set_audience(&[aud]);
            }
            None => {
                validation.set_required_spec_claims(&["exp", "iss"]);
                validation.validate_aud = false;
            }
        }
        let mut last = AuthError::Invalid("alg does not match the signing key");
        for key in candidates {
            if key.family != family || key.alg.is_some_and(|a| a != alg) {
                continue;
            }
            match jsonwebtoken::decode::<Claims>(token, &key.decoding, &validation) {
                Ok(data) => return self.principal(data.claims),
                Err(e) => {
                    last = AuthError::Invalid(describe(e.kind()));
                    if !matches!(e.kind(), ErrorKind::InvalidSignature) {
                        break;
                    }
                }
            }
        }
        Err(last)
    }

    fn principal(&self, c: Claims) -> Result<Principal, AuthError> {
        if !c
            .iss
            .as_str()
            .is_some_and(|iss| self.issuers.iter().any(|i| i == iss))
        {
            return Err(AuthError::Invalid("wrong issuer"));
        }
        if c.exp > crate::model::time::MAX.0 {
            // No issuer mints tokens valid past 2099; such a value is an attack on
            // arithmetic, not a lifetime.
            return Err(AuthError::Invalid("token exp is out of range"));
        }
        if c.iat.is_some_and(|iat| {
            iat > now().saturating_add(i64::try_from(self.skew_secs).unwrap_or(i64::MAX))
        }) {
            return Err(AuthError::Invalid("token issued in the future"));
        }
        let pid = match c.pid {
            None => None,
            Some(p) => Some(
                PersonId::parse(p.as_bytes())
                    .ok_or(AuthError::Invalid("pid claim is not 11 digits"))?,
            ),
        };
        let consumer = c.consumer.map(|cons| {
            cons.id
                .rsplit_once(':')
                .map_or(cons.id.as_str(), |(_, org)| org)
                .to_string()
        });
        Ok(Principal {
            grants: Grants::from_scope(&c.scope),
            pid,
            user: c.acr.is_some(),
            consumer,
            client: c.client_id,
            exp: c.exp,
        })
    }
}

/// The token of an `Authorization: Bearer …` header (scheme case-insensitive, RFC 7235).
pub fn bearer(header: Option<&[u8]>) -> Result<&str, AuthError> {
    let h = header.ok_or(AuthError::Missing)?;
    let h =
        std::str::from_utf8(h).map_err(|_| AuthError::Invalid("malformed Authorization header"))?;
    let (scheme, token) = h
        .trim()
        .split_once(' ')
        .ok_or(AuthError::Invalid("malformed Authorization header"))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Missing);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(AuthError::Missing);
    }
    Ok(token)
}

/// The bytes after an ASCII-case-insensitive `Bearer ` scheme, with ASCII white space
/// trimmed, found without reading the header as UTF-8; `None` when the header has no such
/// scheme. These bytes may be anything (invalid UTF-8, Unicode white space at an edge), but
/// where they equal a token `bearer` once returned (UTF-8, no white space at its edges, no
/// space inside), the header is all UTF-8 and `bearer` returns exactly that token for it.
/// Bytes equal to no kept token find nothing in the cache and go the text way.
fn bearer_bytes(header: &[u8]) -> Option<&[u8]> {
    let h = header.trim_ascii();
    let space = h.iter().position(|&b| b == b' ')?;
    if !h[..space].eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let token = h[space + 1..].trim_ascii();
    (!token.is_empty()).then_some(token)
}

fn read_header(token: &str) -> Result<Header, AuthError> {
    let malformed = AuthError::Invalid("malformed token");
    let mut parts = token.split('.');
    let (Some(h), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed);
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(h)
        .map_err(|_| malformed.clone())?;
    // The header is read before the signature is checked: guard it like any body. (The
    // claims are parsed only after the signature holds, by serde_json, depth-limited.)
    check_depth(&bytes, MAX_DEPTH).map_err(|_| malformed.clone())?;
    serde_json::from_slice(&bytes).map_err(|_| malformed)
}

fn describe(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::InvalidSignature => "bad signature",
        ErrorKind::ExpiredSignature => "token expired",
        ErrorKind::ImmatureSignature => "token not yet valid",
        ErrorKind::InvalidIssuer => "wrong issuer",
        ErrorKind::InvalidAudience => "wrong audience",
        ErrorKind::InvalidAlgorithm => "alg does not match the signing key",
        ErrorKind::MissingRequiredClaim(c) if c == "exp" => "token has no exp",
        ErrorKind::MissingRequiredClaim(c) if c == "iss" => "token has no iss",
        ErrorKind::MissingRequiredClaim(c) if c == "aud" => "token has no aud",
        _ => "malformed token",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_headers() {
        assert_eq!(bearer(None), Err(AuthError::Missing));
        assert_eq!(bearer(Some(b"Bearer abc")), Ok("abc"));
        assert_eq!(bearer(Some(b"bearer abc")), Ok("abc"));
        assert_eq!(bearer(Some(b"BEARER  abc ")), Ok("abc"));
        assert_eq!(bearer(Some(b"Basic dXNlcjpwYXNz")), Err(AuthError::Missing));
        assert_eq!(
            bearer(Some(b"Bearer ")),
            Err(AuthError::Invalid("malformed Authorization header"))
        );
        assert_eq!(
            bearer(Some(b"Bearer")),
            Err(AuthError::Invalid("malformed Authorization header"))
        );
        assert_eq!(
            bearer(Some(b"\xff")),
            Err(AuthError::Invalid("malformed Authorization header"))
        );
    }

    /// Where `bearer_bytes` finds a token, `bearer` finds the same one, or the bytes could
    /// never be a token `bearer` returned (which has no white space at its edges and is
    /// UTF-8), so no cache entry can equal them.
    #[test]
    fn bearer_bytes_finds_what_bearer_finds() {
        for h in [
            &b"Bearer abc"[..],
            b"bearer abc",
            b"BEARER  abc ",
            b" \tBearer abc\t ",
            b"Bearer \tabc",
            b"Bearer\tabc",
            b"Bearer ",
            b"Bearer",
            b"Basic abc",
            b"Bearer a b",
            b"\xc2\xa0Bearer abc",
            b"Bearer abc\xc2\xa0",
            b"Bearer \xc2\xa0abc",
            b"Bearer ab\xffc",
            b"\x0bBearer abc",
            b"Bearer abc\x0b",
        ] {
            let Some(t) = bearer_bytes(h) else {
                continue;
            };
            let could_be_kept = std::str::from_utf8(t).is_ok_and(|s| s.trim() == s);
            if could_be_kept {
                assert_eq!(bearer(Some(h)).map(str::as_bytes), Ok(t), "{h:?}");
            }
        }
        assert_eq!(bearer_bytes(b"\tbearer  abc "), Some(&b"abc"[..]));
        assert_eq!(bearer_bytes(b"Bearer\tabc"), None);
        assert_eq!(bearer_bytes(b"Basic abc"), None);
    }

    /// A verified token is kept: found again by its bytes whatever the header's spelling
    /// of the scheme, and only by the same bytes; expired, it is dropped and named so.
    #[test]
    fn verified_tokens_are_kept_until_they_expire() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keys");
        let jwks = std::fs::read(root.join("jwks.json")).unwrap();
        let pem = std::fs::read(root.join("issuer-rsa.pem")).unwrap();
        let keys = crate::auth::jwks::KeySet::parse(&jwks).unwrap();
        let store = Arc::new(crate::auth::jwks::KeyStore::fixed(keys));
        let verifier = Verifier::new(store, vec![crate::dev::mint::MASKINPORTEN.into()], None, 0);
        let token = |ttl| {
            let opts = crate::dev::mint::MintOptions {
                scope: crate::auth::scopes::GLOBAL_HINT.into(),
                ttl,
                kid: Some("test-rsa".into()),
                ..crate::dev::mint::MintOptions::default()
            };
            crate::dev::mint::mint(&pem, &opts).unwrap()
        };
        let t = token(3600);
        let first = rt
            .block_on(verifier.verify_header(Some(format!("Bearer {t}").as_bytes())))
            .unwrap();
        for h in [format!("bearer {t}"), format!("\tBEARER  {t} "), t.clone()] {
            let again = if h == t {
                rt.block_on(verifier.verify(&t))
            } else {
                rt.block_on(verifier.verify_header(Some(h.as_bytes())))
            };
            assert!(
                Arc::ptr_eq(&first, &again.unwrap()),
                "{h:?} missed the cache"
            );
        }
        // The same signature's end under other claims: not the kept token.
        let (_, sig) = t.rsplit_once('.').unwrap();
        let other = token(3599);
        let forged = format!("{}.{sig}", other.rsplit_once('.').unwrap().0);
        assert_eq!(
            rt.block_on(verifier.verify_header(Some(format!("Bearer {forged}").as_bytes()))),
            Err(AuthError::Invalid("bad signature"))
        );
        // A token of one second: verified and kept, then expired.
        let short = token(1);
        rt.block_on(verifier.verify(&short)).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2100));
        let h = format!("Bearer {short}");
        assert_eq!(
            rt.block_on(verifier.verify_header(Some(h.as_bytes()))),
            Err(AuthError::Invalid("token expired"))
        );
    }
}
