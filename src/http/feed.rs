//! `POST /rest/v2/krr/hentEndringer`: the change feed, for agencies that keep a copy of the
//! register (see [`crate::store::feed`] for what a replica may answer).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use hyper::Request;
use hyper::StatusCode;
use hyper::body::Incoming;
use simd_json::prelude::*;

use crate::auth::scopes::FEED_READ;
use crate::http::AppState;
use crate::http::error::ApiError;
use crate::http::personer::{parse_body, refuse_duplicates};
use crate::http::request::{
    Resp, admit, answer, authenticate, charge, negotiate, read_body, require_json,
};
use crate::model::Groups;
use crate::store::feed::{FeedUnavailable, MAX_PAGE, page};
use crate::store::lookup::{BatchOptions, write_entries};

fn unavailable(message: &'static str) -> ApiError {
    let mut err = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message);
    err.retry_after = Some(1);
    err
}

/// Parses `{"fraEndringsId": N}`: a non-negative JSON integer; other keys are ignored.
pub fn parse_feed_request(body: &mut [u8]) -> Result<u64, ApiError> {
    let value = parse_body(body)?;
    let obj = value
        .as_object()
        .ok_or_else(|| ApiError::bad_request("request body must be a JSON object"))?;
    refuse_duplicates(obj, &["fraEndringsId"])?;
    let fra = obj
        .get("fraEndringsId")
        .filter(|v| !v.is_null())
        .ok_or_else(|| ApiError::bad_request("fraEndringsId is required"))?;
    fra.as_u64()
        .filter(|_| fra.is_u64() || fra.is_i64())
        .ok_or_else(|| ApiError::bad_request("fraEndringsId must be a non-negative integer"))
}

/// `POST /rest/v2/krr/hentEndringer`.
pub async fn hent_endringer(state: &AppState, req: Request<Incoming>) -> Result<Resp, ApiError> {
    let principal = authenticate(state, req.headers()).await?;
    if !principal.grants.feed {
        return Err(ApiError::insufficient_scope(
            FEED_READ,
            "the token has no scope for the change feed",
        ));
    }
    if principal.restricted_to().is_some() {
        return Err(ApiError::insufficient_scope(
            FEED_READ,
            "a token issued for one person cannot read the change feed",
        ));
    }
    // Entries show the groups of the token's other read scopes, as `/personer` does.
    let groups = principal.grants.global.unwrap_or(Groups::NONE);
    // A page costs its entries, charged once it is made; a consumer over its quota is
    // refused before.
    admit(state, &principal, 1, true)?;
    let format = negotiate(req.headers(), state.signer.is_some())?;
    require_json(req.headers())?;
    let mut body = read_body(state, req).await?;
    let fra = parse_feed_request(&mut body)?;
    let mut tries = 0;
    let (page, snapshot, mut out) = loop {
        let guard = state.store.current();
        let snapshot = guard.as_ref().ok_or_else(ApiError::no_snapshot)?.clone();
        drop(guard);
        let visible = state
            .journal
            .as_ref()
            .map_or(0, |j| j.stats().visible_seq.load(Ordering::Acquire));
        let page = page(&snapshot, state.store.overlay(), visible, fra, MAX_PAGE).map_err(|e| {
            let mut err = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
            err.retry_after = Some(5);
            match e {
                FeedUnavailable::NotNumbered => err,
            }
        })?;
        let mut out = Vec::with_capacity(page.ids.len() * 1024 + 128);
        out.extend_from_slice(b"{\"list\":[");
        write_entries(
            &snapshot,
            state.store.overlay(),
            &page.ids,
            BatchOptions::v1(groups),
            &mut out,
        );
        // A swap during the page drops from the overlay what the new snapshot holds: a
        // page that read the old snapshot and an overlay without those changes could
        // pass a change's id without showing it. Such a page is made again.
        let still = state
            .store
            .current()
            .as_ref()
            .is_some_and(|now| Arc::ptr_eq(now, &snapshot));
        tries += 1;
        if still || tries == 5 {
            if !still {
                return Err(unavailable("the register is being swapped; try again"));
            }
            break (page, snapshot, out);
        }
    };
    drop(snapshot);
    out.extend_from_slice(b"],\"fraEndringsId\":");
    out.extend_from_slice(page.fra.to_string().as_bytes());
    out.extend_from_slice(b",\"tilEndringsId\":");
    out.extend_from_slice(page.til.to_string().as_bytes());
    out.extend_from_slice(b",\"sisteEndringsId\":");
    out.extend_from_slice(page.siste.to_string().as_bytes());
    out.push(b'}');
    metrics::counter!(crate::metrics::FEED_REQUESTS).increment(1);
    metrics::counter!(crate::metrics::FEED_ENTRIES).increment(page.ids.len() as u64);
    state
        .meters
        .persons_returned
        .increment(page.ids.len() as u64);
    crate::http::usage::persons(page.ids.len() as u64);
    charge(state, &principal, page.ids.len() as u64);
    answer(state, format, out).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(body: &str, want: Result<u64, &str>) {
        let mut b = body.as_bytes().to_vec();
        let got = parse_feed_request(&mut b).map_err(|e| e.message.into_owned());
        assert_eq!(got, want.map_err(str::to_string), "body {body}");
    }

    #[test]
    fn feed_request_bodies() {
        check(r#"{"fraEndringsId":0}"#, Ok(0));
        check(r#"{"fraEndringsId":5512345,"x":[1]}"#, Ok(5_512_345));
        check(
            r#"{"fraEndringsId":-1}"#,
            Err("fraEndringsId must be a non-negative integer"),
        );
        check(
            r#"{"fraEndringsId":1.5}"#,
            Err("fraEndringsId must be a non-negative integer"),
        );
        check(
            r#"{"fraEndringsId":"7"}"#,
            Err("fraEndringsId must be a non-negative integer"),
        );
        check(
            r#"{"fraEndringsId":null}"#,
            Err("fraEndringsId is required"),
        );
        check("{}", Err("fraEndringsId is required"));
        check("[]", Err("request body must be a JSON object"));
        check("", Err("request body is not valid JSON"));
        check(
            r#"{"fraEndringsId":1,"fraEndringsId":2}"#,
            Err("request body has fraEndringsId more than once"),
        );
    }
}
