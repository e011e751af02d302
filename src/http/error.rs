//! Error answers: `{"status":…,"error":…,"message":…,"path":…}` with the headers each status
//! needs. Messages are fixed or name positions and counts, never a personal number; the
//! path is scrubbed of digit runs before it is echoed.

use std::borrow::Cow;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use hyper::{Response, StatusCode};

use crate::auth::AuthError;

/// An error answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// What is wrong.
    pub message: Cow<'static, str>,
    /// `WWW-Authenticate` value, for 401 and 403.
    pub www_authenticate: Option<String>,
    /// `Allow` value, for 405.
    pub allow: Option<&'static str>,
    /// Send `Retry-After` (429, 503).
    pub retry_after: Option<u32>,
}

impl ApiError {
    /// An error with just a status and a message.
    pub fn new(status: StatusCode, message: impl Into<Cow<'static, str>>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            www_authenticate: None,
            allow: None,
            retry_after: None,
        }
    }

    /// 400.
    pub fn bad_request(message: impl Into<Cow<'static, str>>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    /// 401 or (for a missing token) 401 with the bare challenge.
    pub fn unauthorized(e: &AuthError) -> ApiError {
        let reason: &'static str = match e {
            AuthError::Missing => "missing bearer token",
            AuthError::Invalid(why) => why,
        };
        metrics::counter!(crate::metrics::TOKEN_REJECTIONS, "reason" => reason).increment(1);
        let mut err = ApiError::new(StatusCode::UNAUTHORIZED, e.to_string());
        err.www_authenticate = Some(match e {
            AuthError::Missing => r#"Bearer realm="krr""#.to_string(),
            AuthError::Invalid(why) => {
                format!(r#"Bearer error="invalid_token", error_description="{why}""#)
            }
        });
        err
    }

    /// 403 for a valid token without the needed scope.
    pub fn insufficient_scope(scope: &str, message: impl Into<Cow<'static, str>>) -> ApiError {
        let mut err = ApiError::new(StatusCode::FORBIDDEN, message);
        err.www_authenticate = Some(format!(
            r#"Bearer error="insufficient_scope", scope="{scope}""#
        ));
        err
    }

    /// 405.
    pub fn method_not_allowed(allow: &'static str) -> ApiError {
        let mut err = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("method not allowed here; use {allow}"),
        );
        err.allow = Some(allow);
        err
    }

    /// 503: more requests in progress than `--max-in-flight`; nothing was done.
    pub fn at_capacity() -> ApiError {
        let mut err = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the service is at capacity; nothing was done, try again shortly",
        );
        err.retry_after = Some(1);
        err
    }

    /// 429: the consumer's quota is used up; nothing was done.
    pub fn over_quota(retry_after: u64) -> ApiError {
        let mut err = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "this consumer's quota of persons is used up; nothing was done, try again after Retry-After seconds",
        );
        err.retry_after = Some(u32::try_from(retry_after).unwrap_or(u32::MAX));
        err
    }

    /// 503 while no snapshot is loaded.
    pub fn no_snapshot() -> ApiError {
        let mut err = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no register snapshot is loaded yet",
        );
        err.retry_after = Some(5);
        err
    }

    /// The response for a request to `path` (decoded and redacted in the body: `%30%35…`
    /// spells digits as well).
    pub fn into_response(self, path: &str) -> Response<Full<Bytes>> {
        let mut body = Vec::with_capacity(128);
        crate::render::write_error(
            self.status.as_u16(),
            self.status.canonical_reason().unwrap_or(""),
            &self.message,
            &crate::model::redact::redact_digits(&percent_decoded(path)),
            &mut body,
        );
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        *resp.status_mut() = self.status;
        let h = resp.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(v) = self
            .www_authenticate
            .and_then(|v| HeaderValue::from_str(&v).ok())
        {
            h.insert(WWW_AUTHENTICATE, v);
        }
        if let Some(a) = self.allow {
            h.insert(ALLOW, HeaderValue::from_static(a));
        }
        if let Some(s) = self.retry_after {
            h.insert(RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}

/// `path` with `%XX` escapes decoded, three rounds deep (so `%2530` is caught too); an
/// escape still left after that (deeper nesting, only an attacker writes it) becomes `…`,
/// so nothing spelled with escapes gets past the digit redaction. Linear in the length:
/// each round is one pass. Invalid escapes stay as they are; bytes that are not UTF-8
/// become U+FFFD.
fn percent_decoded(path: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16);
    let escape_at = |b: &[u8], i: usize| -> Option<u8> {
        if b[i] != b'%' {
            return None;
        }
        let (h, l) = (hex(*b.get(i + 1)?)?, hex(*b.get(i + 2)?)?);
        u8::try_from(h * 16 + l).ok()
    };
    let mut text = path.to_owned();
    for round in 0..4 {
        if !text.contains('%') {
            break;
        }
        let b = text.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            match escape_at(b, i) {
                Some(_) if round == 3 => {
                    out.extend_from_slice("…".as_bytes());
                    i += 3;
                }
                Some(byte) => {
                    out.push(byte);
                    i += 3;
                }
                None => {
                    out.push(b[i]);
                    i += 1;
                }
            }
        }
        text = String::from_utf8_lossy(&out).into_owned();
    }
    text
}

#[cfg(test)]
mod percent_tests {
    use super::percent_decoded;

    #[test]
    fn escapes_are_decoded_before_redaction() {
        let spelled = "/rest/v1/x/%30%35%38%33%38%30%39%39%38%36%35";
        assert_eq!(percent_decoded(spelled), "/rest/v1/x/05838099865");
        assert_eq!(
            crate::model::redact::redact_digits(&percent_decoded("/a/%2530%2535838099865")),
            "/a/…"
        );
        assert_eq!(percent_decoded("/a%zz%4"), "/a%zz%4");
        // Nested deeper than three rounds: what is left is cut, not decoded on and on.
        let deep = format!("/%25{}30", "25".repeat(30_000));
        let started = std::time::Instant::now();
        let out = percent_decoded(&deep);
        assert!(!out.contains('%') || !out.contains("30"), "{}", &out[..40]);
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }
}
