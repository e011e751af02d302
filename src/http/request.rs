//! What every handler of the public API shares: who is calling (authentication, noted on
//! the request span), which representation the caller accepts, and reading a body within
//! the limits.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode};

use crate::auth::Principal;
use crate::http::error::ApiError;
use crate::http::{AppState, Format};

/// Every answer of the public API.
pub type Resp = Response<Full<Bytes>>;

/// Verifies the bearer token (401 with the reason when it fails) and notes the caller on
/// the request span. Each handler then checks the grant it needs.
pub async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Arc<Principal>, ApiError> {
    let principal = state
        .verifier
        .verify_header(headers.get(AUTHORIZATION).map(|v| v.as_bytes()))
        .await
        .map_err(|e| ApiError::unauthorized(&e))?;
    audit(&principal);
    crate::http::usage::caller(&principal);
    Ok(principal)
}

/// Charges `persons` to the caller's quota (see [`quota`](crate::http::quota)): `Err` 429
/// when it is used up, 400 when the request alone is larger than the burst. With `peek`
/// nothing is charged: a consumer already over its quota is refused before its body is
/// read.
pub fn admit(
    state: &AppState,
    principal: &Principal,
    persons: u64,
    peek: bool,
) -> Result<(), ApiError> {
    use crate::http::quota::Verdict;
    if !state.quotas.enabled() {
        return Ok(());
    }
    let key = crate::http::usage::key(principal);
    match state.quotas.check(&key, persons, peek) {
        Verdict::Unlimited => Ok(()),
        Verdict::Admitted(standing) => {
            crate::http::usage::standing(standing);
            Ok(())
        }
        Verdict::Refused {
            standing,
            retry_after,
        } => {
            crate::http::usage::standing(standing);
            metrics::counter!(
                crate::metrics::QUOTA_REJECTIONS,
                "consumer" => state.usage.label(&key).to_string()
            )
            .increment(1);
            Err(ApiError::over_quota(retry_after))
        }
        Verdict::TooLarge { burst } => Err(ApiError::bad_request(format!(
            "this request asks for {persons} persons, more than this consumer's quota allows at once ({burst}); send smaller batches"
        ))),
    }
}

/// Charges `persons` already served to the caller's quota (a change-feed page).
pub fn charge(state: &AppState, principal: &Principal, persons: u64) {
    if !state.quotas.enabled() {
        return;
    }
    if let Some(standing) = state
        .quotas
        .charge(&crate::http::usage::key(principal), persons)
    {
        crate::http::usage::standing(standing);
    }
}

/// Notes the verified caller on the request span (the consumer's organisation number).
/// Only a 9-digit organisation number is recorded: the claim is the issuer's text, and a
/// malformed one could be anything (a personal number included).
fn audit(principal: &Principal) {
    // The request span is at DEBUG: below that it is never made, and finding the current
    // span only to record nothing cost a tenth of the token check.
    if !tracing::level_enabled!(tracing::Level::DEBUG) {
        return;
    }
    if let Some(c) = &principal.consumer {
        let orgnr = c.len() == 9 && c.bytes().all(|b| b.is_ascii_digit());
        tracing::Span::current()
            .record("consumer", if orgnr { c.as_str() } else { "unrecognised" });
    }
}

/// Chooses JSON or JOSE from `Accept`; `Err` (406) when neither is acceptable.
pub fn negotiate(headers: &HeaderMap, jose_available: bool) -> Result<Format, ApiError> {
    let Some(accept) = headers.get(ACCEPT).and_then(|a| a.to_str().ok()) else {
        return Ok(Format::Json);
    };
    let mut json = false;
    let mut jose = false;
    for item in accept.split(',') {
        let mut parts = item.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let refused = parts.any(|p| {
            let p = p.trim();
            p.strip_prefix("q=")
                .and_then(|q| q.trim().parse::<f32>().ok())
                .is_some_and(|q| q <= 0.0)
        });
        if refused {
            continue;
        }
        match media.as_str() {
            "application/jose" => jose = true,
            "application/json" | "application/*" | "*/*" => json = true,
            _ => {}
        }
    }
    if jose && jose_available {
        Ok(Format::Jose)
    } else if json {
        Ok(Format::Json)
    } else if jose {
        Err(ApiError::new(
            StatusCode::NOT_ACCEPTABLE,
            "application/jose is not available: the service has no signing key",
        ))
    } else {
        Err(ApiError::new(
            StatusCode::NOT_ACCEPTABLE,
            "only application/json and application/jose can be produced",
        ))
    }
}

/// 415 unless `Content-Type` is `application/json` (parameters allowed).
pub fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    // Bytes, not `str::split`/`trim`: their char searchers were most of this check's cost.
    let json = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.as_bytes())
        .is_some_and(|v| {
            let media = v.split(|&b| b == b';').next().unwrap_or(v);
            media.trim_ascii().eq_ignore_ascii_case(b"application/json")
        });
    if json {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/json",
        ))
    }
}

/// The most [`read_body`] reserves before the bytes come: a body of 1000 ids (about
/// 14 KB) fits.
const RESERVE_AT_MOST: u64 = 16 * 1024;

/// The whole body, within `--max-body-bytes` (413) and `--body-timeout` (408).
///
/// Read frame by frame into one buffer (room for the declared `Content-Length`, up to
/// 16 KiB, reserved at once), and done as soon as the body says it has ended (for a declared length: once that many bytes came), without
/// waiting for the end to be signalled on its own.
pub async fn read_body(state: &AppState, req: Request<Incoming>) -> Result<Vec<u8>, ApiError> {
    use hyper::body::Body as _;
    let limit = state.limits.max_body_bytes;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is larger than {limit} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut body = req.into_body();
    // Room for what the client declared, up to a batch's size: a declared length alone
    // (its bytes never sent) does not hold the whole limit in memory until the timeout.
    let mut out = Vec::with_capacity(declared.unwrap_or(0).min(RESERVE_AT_MOST) as usize);
    let read = async {
        while !body.is_end_stream() {
            match body.frame().await {
                None => break,
                Some(Err(_)) => {
                    return Err(ApiError::bad_request("request body could not be read"));
                }
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        if data.len() > limit - out.len() {
                            return Err(too_large());
                        }
                        out.extend_from_slice(data);
                    }
                }
            }
        }
        Ok(())
    };
    tokio::pin!(read);
    // A small body mostly came with its headers: it is taken without arming a timer.
    let read = match futures::poll!(read.as_mut()) {
        std::task::Poll::Ready(r) => r,
        std::task::Poll::Pending => tokio::time::timeout(state.limits.body_timeout, read)
            .await
            .unwrap_or_else(|_| {
                Err(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "request body was not received in time",
                ))
            }),
    };
    read.map(|()| out)
}

/// A 200 answer of `json`, signed when `format` is JOSE (on the bounded signing pool,
/// see [`Signing`](crate::http::Signing)).
pub async fn answer(state: &AppState, format: Format, json: Vec<u8>) -> Result<Resp, ApiError> {
    let (body, content_type) = match (format, &state.signer) {
        (Format::Jose, Some(signer)) => (
            signer
                .sign(json)
                .await
                .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?,
            "application/jose",
        ),
        _ => (json, "application/json"),
    };
    Ok(with_type(Bytes::from(body), content_type))
}

/// A 200 answer of `body` with `content_type`.
pub fn with_type(body: Bytes, content_type: &'static str) -> Resp {
    let mut resp = Response::new(Full::new(body));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_type_must_be_json_parameters_allowed() {
        let ok = |v: Option<&[u8]>| {
            let mut headers = HeaderMap::new();
            if let Some(v) = v {
                headers.insert(CONTENT_TYPE, HeaderValue::from_bytes(v).unwrap());
            }
            require_json(&headers).is_ok()
        };
        for good in [
            &b"application/json"[..],
            b"Application/JSON",
            b"application/json; charset=utf-8",
            b" application/json ;charset=UTF-8",
            b"\tapplication/json\t",
            b"application/json;",
        ] {
            assert!(ok(Some(good)), "{:?}", String::from_utf8_lossy(good));
        }
        for bad in [
            &b"application/jsonx"[..],
            b"application/json-patch+json",
            b"text/json",
            b"application/ json",
            b"",
            b";application/json",
            b"application/json; charset=\xe6",
        ] {
            assert!(!ok(Some(bad)), "{:?}", String::from_utf8_lossy(bad));
        }
        assert!(!ok(None));
    }

    #[test]
    fn accept_negotiation() {
        let n = |a: Option<&str>, jose: bool| {
            let mut headers = HeaderMap::new();
            if let Some(a) = a {
                headers.insert(ACCEPT, HeaderValue::from_str(a).unwrap());
            }
            negotiate(&headers, jose).map_err(|e| e.status)
        };
        assert_eq!(n(None, true), Ok(Format::Json));
        assert_eq!(n(Some("*/*"), true), Ok(Format::Json));
        assert_eq!(n(Some("application/json"), true), Ok(Format::Json));
        assert_eq!(n(Some("application/jose"), true), Ok(Format::Jose));
        assert_eq!(
            n(Some("application/json, application/jose"), true),
            Ok(Format::Jose)
        );
        assert_eq!(
            n(Some("application/jose;q=0, application/json"), true),
            Ok(Format::Json)
        );
        assert_eq!(n(Some("text/html"), true), Err(StatusCode::NOT_ACCEPTABLE));
        assert_eq!(
            n(Some("application/jose"), false),
            Err(StatusCode::NOT_ACCEPTABLE)
        );
        assert_eq!(n(Some("application/jose, */*"), false), Ok(Format::Json));
    }
}
