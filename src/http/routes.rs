//! The public API's routes: `/rest/v1|v2/personer`, `/rest/v1|v2/person` (GET),
//! `/rest/v1/person` (PATCH), `/rest/v1|v2/printSertifikat`.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use simd_json::prelude::*;
use tracing::Instrument;

use crate::auth::scopes::{GLOBAL_HINT, SPRAAK_WRITE, USER_HINT};
use crate::fnr::PersonId;
use crate::http::error::ApiError;
use crate::http::{AppState, Format};
use crate::journal::{Change, JournalError};
use crate::lookup::{BatchOptions, write_person, write_personer};
use crate::model::Spraak;

/// Most ids in one request.
pub const MAX_IDS: usize = 1000;

type Resp = Response<Full<Bytes>>;

/// The fixed route label of a path (metrics and logs never carry anything a client chose).
fn route_label(route: &str) -> &'static str {
    match route {
        "/rest/v1/personer" => "/rest/v1/personer",
        "/rest/v2/personer" => "/rest/v2/personer",
        "/rest/v1/person" => "/rest/v1/person",
        "/rest/v2/person" => "/rest/v2/person",
        "/rest/v1/printSertifikat" => "/rest/v1/printSertifikat",
        "/rest/v2/printSertifikat" => "/rest/v2/printSertifikat",
        "/openapi.json" => "/openapi.json",
        _ => "other",
    }
}

fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Answers one request, inside a `request` span that carries the route, the method and,
/// once the token is verified, the consumer's organisation number (audit); counts it and
/// writes one access line (target `krr::access`) with the status and persons returned.
pub async fn handle(state: Arc<AppState>, req: Request<Incoming>) -> Resp {
    let started = std::time::Instant::now();
    let path = req.uri().path().to_owned();
    let route = path
        .strip_suffix('/')
        .filter(|p| !p.is_empty())
        .unwrap_or(&path);
    let label = route_label(route);
    let method = method_label(req.method());
    let span = tracing::info_span!(
        "request",
        method,
        route = label,
        consumer = tracing::field::Empty,
        persons = tracing::field::Empty,
    );
    let result = async {
        match route {
            "/rest/v1/personer" | "/rest/v2/personer" => {
                if req.method() == Method::POST {
                    personer(&state, req, route == "/rest/v2/personer").await
                } else {
                    Err(ApiError::method_not_allowed("POST"))
                }
            }
            "/rest/v1/person" => match *req.method() {
                Method::GET => person(&state, &req).await,
                Method::PATCH => patch_person(&state, req).await,
                _ => Err(ApiError::method_not_allowed("GET, PATCH")),
            },
            "/rest/v2/person" => {
                if req.method() == Method::GET {
                    person(&state, &req).await
                } else {
                    Err(ApiError::method_not_allowed("GET"))
                }
            }
            "/rest/v1/printSertifikat" | "/rest/v2/printSertifikat" => {
                if req.method() == Method::GET {
                    print_sertifikat(&state, &req)
                } else {
                    Err(ApiError::method_not_allowed("GET"))
                }
            }
            "/openapi.json" => {
                if req.method() == Method::GET {
                    Ok(openapi())
                } else {
                    Err(ApiError::method_not_allowed("GET"))
                }
            }
            _ => Err(ApiError::new(StatusCode::NOT_FOUND, "no such endpoint")),
        }
    }
    .instrument(span.clone())
    .await;
    let resp = result.unwrap_or_else(|e| e.into_response(&path));
    let status = resp.status().as_u16();
    let elapsed = started.elapsed();
    metrics::counter!(
        crate::metrics::HTTP_REQUESTS,
        "route" => label,
        "method" => method,
        "status" => status.to_string()
    )
    .increment(1);
    metrics::histogram!(crate::metrics::HTTP_DURATION, "route" => label)
        .record(elapsed.as_secs_f64());
    span.in_scope(|| {
        tracing::info!(
            target: "krr::access",
            status,
            micros = elapsed.as_micros() as u64,
            "request"
        );
    });
    resp
}

/// The OpenAPI 3.1 document of the public API.
pub const OPENAPI: &str = include_str!("../../docs/openapi.json");

fn openapi() -> Resp {
    let mut resp = Response::new(Full::new(Bytes::from_static(OPENAPI.as_bytes())));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// Notes the verified caller on the request span (the consumer's organisation number).
/// Only a 9-digit organisation number is recorded: the claim is the issuer's text, and a
/// malformed one could be anything (a personal number included).
fn audit(principal: &crate::auth::Principal) {
    if let Some(c) = &principal.consumer {
        let orgnr = c.len() == 9 && c.bytes().all(|b| b.is_ascii_digit());
        tracing::Span::current()
            .record("consumer", if orgnr { c.as_str() } else { "unrecognised" });
    }
}

/// Chooses JSON or JOSE from `Accept`; `Err` (406) when neither is acceptable.
pub fn negotiate(accept: Option<&HeaderValue>, jose_available: bool) -> Result<Format, ApiError> {
    let Some(accept) = accept.and_then(|a| a.to_str().ok()) else {
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

fn is_json(content_type: Option<&HeaderValue>) -> bool {
    content_type
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
}

async fn read_body(state: &AppState, req: Request<Incoming>) -> Result<Vec<u8>, ApiError> {
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
    let collect = Limited::new(req.into_body(), limit).collect();
    match tokio::time::timeout(state.limits.body_timeout, collect).await {
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request body was not received in time",
        )),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(_)) => Err(ApiError::bad_request("request body could not be read")),
        Ok(Ok(b)) => Ok(b.to_bytes().to_vec()),
    }
}

/// The parsed body of a `/personer` request.
#[derive(Debug, PartialEq, Eq)]
pub struct PersonerRequest {
    /// The ids, in request order.
    pub ids: Vec<PersonId>,
    /// v2's `inkluderIkkeRegistrerte`.
    pub inkluder_ikke_registrerte: bool,
}

/// Parses `{"personidentifikatorer":[…],"inkluderIkkeRegistrerte":…}` (simd-json, in place).
/// Messages name the problem and the position, never an id.
pub fn parse_personer(body: &mut [u8], v2: bool) -> Result<PersonerRequest, ApiError> {
    let value = simd_json::to_borrowed_value(body)
        .map_err(|_| ApiError::bad_request("request body is not valid JSON"))?;
    let obj = value
        .as_object()
        .ok_or_else(|| ApiError::bad_request("request body must be a JSON object"))?;
    let list = obj
        .get("personidentifikatorer")
        .filter(|v| !v.is_null())
        .ok_or_else(|| ApiError::bad_request("personidentifikatorer is required"))?;
    let list = list.as_array().ok_or_else(|| {
        ApiError::bad_request("personidentifikatorer must be an array of strings")
    })?;
    if list.is_empty() {
        return Err(ApiError::bad_request(
            "personidentifikatorer must not be empty",
        ));
    }
    if list.len() > MAX_IDS {
        return Err(ApiError::bad_request(format!(
            "personidentifikatorer has {} ids; at most {MAX_IDS} are allowed",
            list.len()
        )));
    }
    let mut ids = Vec::with_capacity(list.len());
    for (i, v) in list.iter().enumerate() {
        let id = v
            .as_str()
            .and_then(|s| PersonId::parse(s.as_bytes()))
            .ok_or_else(|| {
                ApiError::bad_request(format!("personidentifikatorer[{i}] must be 11 digits"))
            })?;
        ids.push(id);
    }
    let inkluder = match (v2, obj.get("inkluderIkkeRegistrerte")) {
        (false, _) | (true, None) => false,
        (true, Some(v)) => v.as_bool().ok_or_else(|| {
            ApiError::bad_request("inkluderIkkeRegistrerte must be true or false")
        })?,
    };
    Ok(PersonerRequest {
        ids,
        inkluder_ikke_registrerte: inkluder,
    })
}

fn answer(state: &AppState, format: Format, json: Vec<u8>) -> Resp {
    let (body, content_type) = match (format, &state.signer) {
        (Format::Jose, Some(signer)) => (signer.sign(&json), "application/jose"),
        _ => (json, "application/json"),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

async fn personer(state: &AppState, req: Request<Incoming>, v2: bool) -> Result<Resp, ApiError> {
    let principal = state
        .verifier
        .verify_header(req.headers().get(AUTHORIZATION).map(|v| v.as_bytes()))
        .await
        .map_err(|e| ApiError::unauthorized(&e))?;
    audit(&principal);
    let groups = principal.grants.global.ok_or_else(|| {
        ApiError::insufficient_scope(GLOBAL_HINT, "the token has no scope for looking up persons")
    })?;
    let format = negotiate(req.headers().get(ACCEPT), state.signer.is_some())?;
    if !is_json(req.headers().get(CONTENT_TYPE)) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/json",
        ));
    }
    let mut body = read_body(state, req).await?;
    let request = parse_personer(&mut body, v2)?;
    if let Some(only) = principal.restricted_to()
        && request.ids.iter().any(|&id| id != only)
    {
        return Err(ApiError::insufficient_scope(
            GLOBAL_HINT,
            "this token may only look up the person it was issued for",
        ));
    }
    let snapshot = state.store.current();
    let snapshot = snapshot.as_ref().ok_or_else(ApiError::no_snapshot)?;
    let opts = if v2 {
        BatchOptions::v2(groups, request.inkluder_ikke_registrerte)
    } else {
        BatchOptions::v1(groups)
    };
    // One buffer sized for the batch up front (about 1 KB a person with a certificate).
    let mut out = Vec::with_capacity(request.ids.len() * 1024 + 32);
    let stats = write_personer(
        snapshot,
        state.store.overlay(),
        &request.ids,
        opts,
        &mut out,
    );
    let returned = stats.found
        + if opts.include_not_registered {
            stats.not_registered
        } else {
            0
        };
    metrics::counter!(crate::metrics::PERSONS_RETURNED).increment(returned as u64);
    tracing::Span::current().record("persons", returned);
    Ok(answer(state, format, out))
}

async fn person(state: &AppState, req: &Request<Incoming>) -> Result<Resp, ApiError> {
    let principal = state
        .verifier
        .verify_header(req.headers().get(AUTHORIZATION).map(|v| v.as_bytes()))
        .await
        .map_err(|e| ApiError::unauthorized(&e))?;
    audit(&principal);
    let groups = principal.grants.user.ok_or_else(|| {
        ApiError::insufficient_scope(USER_HINT, "the token has no scope for reading the person")
    })?;
    let pid = principal.pid.ok_or_else(|| {
        ApiError::insufficient_scope(USER_HINT, "the token names no person (no pid claim)")
    })?;
    let format = negotiate(req.headers().get(ACCEPT), state.signer.is_some())?;
    let snapshot = state.store.current();
    let snapshot = snapshot.as_ref().ok_or_else(ApiError::no_snapshot)?;
    let mut out = Vec::with_capacity(2048);
    if !write_person(snapshot, state.store.overlay(), pid, groups, &mut out) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "the person is not registered",
        ));
    }
    metrics::counter!(crate::metrics::PERSONS_RETURNED).increment(1);
    tracing::Span::current().record("persons", 1);
    Ok(answer(state, format, out))
}

/// Parses a PATCH body: exactly `{"spraak":"nb"|"nn"|"en"|"se"}`.
pub fn parse_spraak(body: &mut [u8]) -> Result<Spraak, ApiError> {
    let value = simd_json::to_borrowed_value(body)
        .map_err(|_| ApiError::bad_request("request body is not valid JSON"))?;
    let obj = value
        .as_object()
        .ok_or_else(|| ApiError::bad_request("request body must be a JSON object"))?;
    if obj.keys().any(|k| k != "spraak") {
        // The field's name is not echoed: it could be anything, a personal number included.
        return Err(ApiError::bad_request(
            "only spraak can be changed; the body has another field",
        ));
    }
    let v = obj
        .get("spraak")
        .filter(|v| !v.is_null())
        .ok_or_else(|| ApiError::bad_request("spraak is required"))?;
    v.as_str()
        .and_then(Spraak::parse)
        .ok_or_else(|| ApiError::bad_request("spraak must be one of nb, nn, en, se"))
}

/// `PATCH /rest/v1/person`: answered 204 only once the change is durable and visible.
async fn patch_person(state: &AppState, req: Request<Incoming>) -> Result<Resp, ApiError> {
    let principal = state
        .verifier
        .verify_header(req.headers().get(AUTHORIZATION).map(|v| v.as_bytes()))
        .await
        .map_err(|e| ApiError::unauthorized(&e))?;
    audit(&principal);
    let hint = SPRAAK_WRITE[0];
    if !principal.grants.spraak_write {
        return Err(ApiError::insufficient_scope(
            hint,
            "the token has no scope for changing the language",
        ));
    }
    if !principal.user {
        return Err(ApiError::insufficient_scope(
            hint,
            "only a citizen's own token (ID-porten) may change a language",
        ));
    }
    let pid = principal.pid.ok_or_else(|| {
        ApiError::insufficient_scope(hint, "the token names no person (no pid claim)")
    })?;
    if !is_json(req.headers().get(CONTENT_TYPE)) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/json",
        ));
    }
    let mut body = read_body(state, req).await?;
    let spraak = parse_spraak(&mut body)?;
    {
        let snapshot = state.store.current();
        let snapshot = snapshot.as_ref().ok_or_else(ApiError::no_snapshot)?;
        match snapshot.get(pid) {
            None => {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "the person is not registered",
                ));
            }
            Some(rec) if rec.is_slettet() => {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "the person is deleted from the register (SLETTET); the language cannot be changed",
                ));
            }
            Some(_) => {}
        }
    }
    let journal = state.journal.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "this service takes no changes (it has no journal)",
        )
    })?;
    match journal.append(Change::SetSpraak { id: pid, spraak }).await {
        Ok(_) => {
            let mut resp = Response::new(Full::new(Bytes::new()));
            *resp.status_mut() = StatusCode::NO_CONTENT;
            Ok(resp)
        }
        Err(JournalError::Closed) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the service is shutting down; the change was not made",
        )),
        Err(JournalError::Timeout) => {
            tracing::warn!("journal database did not answer in time");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the journal database did not confirm the change; it may or may not have been made, setting it again is safe",
            ))
        }
        Err(JournalError::Unavailable(cause)) => {
            tracing::warn!(%cause, "journal database unavailable");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the journal database is unavailable; the change was not made, try again later",
            ))
        }
        Err(e) => {
            tracing::error!(cause = %e, "journal append failed");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the change could not be made durable; it was not made",
            ))
        }
    }
}

fn print_sertifikat(state: &AppState, req: &Request<Incoming>) -> Result<Resp, ApiError> {
    let body = state.print_body.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "no print provider is configured for this service",
        )
    })?;
    let format = negotiate(req.headers().get(ACCEPT), state.signer.is_some())?;
    Ok(answer(state, format, body.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(body: &str, v2: bool, want: Result<(usize, bool), &str>) {
        let mut b = body.as_bytes().to_vec();
        let got = parse_personer(&mut b, v2)
            .map(|r| (r.ids.len(), r.inkluder_ikke_registrerte))
            .map_err(|e| e.message.into_owned());
        assert_eq!(got, want.map_err(str::to_string), "body {body}");
    }

    #[test]
    fn request_bodies() {
        check(
            r#"{"personidentifikatorer":["11822648950"]}"#,
            false,
            Ok((1, false)),
        );
        check(
            r#"{"personidentifikatorer":["11822648950","11822648950"],"x":1}"#,
            false,
            Ok((2, false)),
        );
        check(
            r#"{"personidentifikatorer":["11822648950"],"inkluderIkkeRegistrerte":true}"#,
            true,
            Ok((1, true)),
        );
        check(
            r#"{"personidentifikatorer":["11822648950"],"inkluderIkkeRegistrerte":"yes"}"#,
            false,
            Ok((1, false)),
        );
        check(
            r#"{"personidentifikatorer":["11822648950"],"inkluderIkkeRegistrerte":"yes"}"#,
            true,
            Err("inkluderIkkeRegistrerte must be true or false"),
        );
        check(
            r#"{"personidentifikatorer":["11822648950"],"inkluderIkkeRegistrerte":null}"#,
            true,
            Err("inkluderIkkeRegistrerte must be true or false"),
        );
        check("", false, Err("request body is not valid JSON"));
        check("{", false, Err("request body is not valid JSON"));
        check("[]", false, Err("request body must be a JSON object"));
        check("{}", false, Err("personidentifikatorer is required"));
        check(
            r#"{"personidentifikatorer":null}"#,
            false,
            Err("personidentifikatorer is required"),
        );
        check(
            r#"{"personidentifikatorer":"11822648950"}"#,
            false,
            Err("personidentifikatorer must be an array of strings"),
        );
        check(
            r#"{"personidentifikatorer":[]}"#,
            false,
            Err("personidentifikatorer must not be empty"),
        );
        check(
            r#"{"personidentifikatorer":["11822648950","1182264895"]}"#,
            false,
            Err("personidentifikatorer[1] must be 11 digits"),
        );
        check(
            r#"{"personidentifikatorer":[11822648950]}"#,
            false,
            Err("personidentifikatorer[0] must be 11 digits"),
        );
        check(
            r#"{"personidentifikatorer":["1182264895a"]}"#,
            false,
            Err("personidentifikatorer[0] must be 11 digits"),
        );
        let many = format!(
            r#"{{"personidentifikatorer":[{}]}}"#,
            vec![r#""11822648950""#; 1001].join(",")
        );
        check(
            &many,
            false,
            Err("personidentifikatorer has 1001 ids; at most 1000 are allowed"),
        );
        let max = format!(
            r#"{{"personidentifikatorer":[{}]}}"#,
            vec![r#""11822648950""#; 1000].join(",")
        );
        check(&max, false, Ok((1000, false)));
    }

    #[test]
    fn patch_bodies() {
        let p = |body: &str| {
            let mut b = body.as_bytes().to_vec();
            parse_spraak(&mut b).map_err(|e| e.message.into_owned())
        };
        assert_eq!(p(r#"{"spraak":"nb"}"#), Ok(Spraak::Nb));
        assert_eq!(p(r#"{"spraak":"nn"}"#), Ok(Spraak::Nn));
        assert_eq!(p(r#"{"spraak":"en"}"#), Ok(Spraak::En));
        assert_eq!(p(r#" { "spraak" : "se" } "#), Ok(Spraak::Se));
        let lang = Err("spraak must be one of nb, nn, en, se".to_string());
        assert_eq!(p(r#"{"spraak":"NB"}"#), lang);
        assert_eq!(p(r#"{"spraak":"sv"}"#), lang);
        assert_eq!(p(r#"{"spraak":""}"#), lang);
        assert_eq!(p(r#"{"spraak":1}"#), lang);
        assert_eq!(p(r#"{"spraak":["nb"]}"#), lang);
        let required = Err("spraak is required".to_string());
        assert_eq!(p("{}"), required);
        assert_eq!(p(r#"{"spraak":null}"#), required);
        let other = Err("only spraak can be changed; the body has another field".to_string());
        assert_eq!(p(r#"{"spraak":"nb","epostadresse":"a@b.no"}"#), other);
        assert_eq!(p(r#"{"20914695016":"nb"}"#), other);
        assert_eq!(p(""), Err("request body is not valid JSON".to_string()));
        assert_eq!(
            p(r#"{"spraak":"nb""#),
            Err("request body is not valid JSON".to_string())
        );
        assert_eq!(
            p(r#""nb""#),
            Err("request body must be a JSON object".to_string())
        );
        assert_eq!(
            p("[]"),
            Err("request body must be a JSON object".to_string())
        );
    }

    #[test]
    fn accept_negotiation() {
        let n = |a: Option<&str>, jose: bool| {
            negotiate(
                a.map(HeaderValue::from_str).transpose().unwrap().as_ref(),
                jose,
            )
            .map_err(|e| e.status)
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
