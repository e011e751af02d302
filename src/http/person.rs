//! `GET /rest/v1|v2/person` (a citizen reads their own entry) and `PATCH /rest/v1/person`
//! (a citizen changes their language: 204 only once the change is durable and visible).

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use simd_json::prelude::*;

use crate::auth::scopes::{SPRAAK_WRITE, USER_HINT};
use crate::http::AppState;
use crate::http::error::ApiError;
use crate::http::request::{
    Resp, admit, answer, authenticate, charge, negotiate, read_body, require_json,
};
use crate::http::usage;
use crate::journal::{Change, JournalError};
use crate::model::Spraak;
use crate::store::lookup::write_person;

/// `GET /rest/v1|v2/person`: the citizen reads their own entry.
pub async fn person<B>(state: &AppState, req: &Request<B>) -> Result<Resp, ApiError> {
    let principal = authenticate(state, req.headers()).await?;
    let groups = principal.grants.user.ok_or_else(|| {
        ApiError::insufficient_scope(USER_HINT, "the token has no scope for reading the person")
    })?;
    let pid = principal.pid.ok_or_else(|| {
        ApiError::insufficient_scope(USER_HINT, "the token names no person (no pid claim)")
    })?;
    let format = negotiate(req.headers(), state.signer.is_some())?;
    let snapshot = state.store.current();
    let snapshot = snapshot.as_ref().ok_or_else(ApiError::no_snapshot)?;
    admit(state, &principal, 1, false)?;
    let mut out = Vec::with_capacity(2048);
    if !write_person(snapshot, state.store.overlay(), pid, groups, &mut out) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "the person is not registered",
        ));
    }
    state.meters.persons_returned.increment(1);
    crate::http::usage::persons(1);
    answer(state, format, out).await
}

/// Parses a PATCH body: exactly `{"spraak":"nb"|"nn"|"en"|"se"}`.
pub fn parse_spraak(body: &mut [u8]) -> Result<Spraak, ApiError> {
    let value = crate::http::personer::parse_body(body)?;
    let obj = value
        .as_object()
        .ok_or_else(|| ApiError::bad_request("request body must be a JSON object"))?;
    crate::http::personer::refuse_duplicates(obj, &["spraak"])?;
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
pub async fn patch_person(state: &AppState, req: Request<Incoming>) -> Result<Resp, ApiError> {
    let principal = authenticate(state, req.headers()).await?;
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
    require_json(req.headers())?;
    let mut body = read_body(state, req).await?;
    let spraak = parse_spraak(&mut body)?;
    // Over the quota: refused with nothing written. Within it the change is charged once it
    // is made, so a change that fails (the journal down) costs nothing.
    admit(state, &principal, 1, true)?;
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
            charge(state, &principal, 1);
            let mut resp = Response::new(Full::new(Bytes::new()));
            *resp.status_mut() = StatusCode::NO_CONTENT;
            Ok(resp)
        }
        Err(JournalError::Closed) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the service is shutting down; the change was not made",
        )),
        Err(JournalError::Timeout) => {
            tracing::warn!(
                request_id = %usage::request_id(),
                "journal database did not answer in time"
            );
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the journal database did not confirm the change; it may or may not have been made, setting it again is safe",
            ))
        }
        Err(JournalError::Unavailable(cause)) => {
            tracing::warn!(
                request_id = %usage::request_id(),
                %cause,
                "journal database unavailable"
            );
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the journal database is unavailable; the change was not made, try again later",
            ))
        }
        Err(JournalError::Refused(_)) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the journal cannot take changes now (its disk is full or failing); the change was not made, try again later",
        )),
        Err(JournalError::Uncertain(_)) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the journal could not confirm the change; it may or may not have been made, setting it again is safe",
        )),
        Err(JournalError::Stopped) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the journal takes no changes until the service is restarted; the change was not made",
        )),
        Err(e) => {
            tracing::error!(
                request_id = %usage::request_id(),
                cause = %e,
                "journal append failed"
            );
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the change could not be made durable; it was not made",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(
            p(r#"{"spraak":"nb","spraak":"en"}"#),
            Err("request body has spraak more than once".to_string())
        );
        let deep = r#"{"spraak":"#.repeat(5_000) + r#""nb""# + &"}".repeat(5_000);
        assert_eq!(
            p(&deep),
            Err("request body: JSON is nested deeper than 64 levels".to_string())
        );
    }
}
