//! `POST /rest/v1|v2/personer`: the batch lookup agencies send before a mass mailing.

use hyper::Request;
use hyper::body::Incoming;
use simd_json::prelude::*;

use crate::auth::scopes::GLOBAL_HINT;
use crate::http::AppState;
use crate::http::error::ApiError;
use crate::http::request::{Resp, admit, answer, authenticate, negotiate, read_body, require_json};
use crate::model::fnr::PersonId;
use crate::model::json::{MAX_DEPTH, check_depth};
use crate::store::lookup::{BatchOptions, write_personer};

/// Most ids in one request.
pub const MAX_IDS: usize = 1000;

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
    let value = parse_body(body)?;
    let obj = value
        .as_object()
        .ok_or_else(|| ApiError::bad_request("request body must be a JSON object"))?;
    refuse_duplicates(obj, &["personidentifikatorer", "inkluderIkkeRegistrerte"])?;
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

/// Parses a request body into a DOM after the nesting guard ([`check_depth`]): a body of
/// `[[[[…]]]]` is a 400, never a stack overflow of the parser.
pub(crate) fn parse_body(body: &mut [u8]) -> Result<simd_json::BorrowedValue<'_>, ApiError> {
    check_depth(body, MAX_DEPTH)
        .map_err(|e| ApiError::bad_request(format!("request body: {e}")))?;
    simd_json::to_borrowed_value(body)
        .map_err(|_| ApiError::bad_request("request body is not valid JSON"))
}

/// A key the service reads that occurs twice is refused (parsers disagree on which one
/// wins, so a body that means two things is not guessed at). Other keys are ignored,
/// duplicated or not, and never echoed.
pub(crate) fn refuse_duplicates(
    obj: &simd_json::borrowed::Object<'_>,
    read: &[&str],
) -> Result<(), ApiError> {
    for key in read {
        if obj.iter().filter(|(k, _)| k == key).nth(1).is_some() {
            return Err(ApiError::bad_request(format!(
                "request body has {key} more than once"
            )));
        }
    }
    Ok(())
}

/// `POST /rest/v1|v2/personer`: a batch of up to [`MAX_IDS`] persons.
pub async fn personer(
    state: &AppState,
    req: Request<Incoming>,
    v2: bool,
) -> Result<Resp, ApiError> {
    let principal = authenticate(state, req.headers()).await?;
    let groups = principal.grants.global.ok_or_else(|| {
        ApiError::insufficient_scope(GLOBAL_HINT, "the token has no scope for looking up persons")
    })?;
    // A consumer over its quota is refused before its body is read.
    admit(state, &principal, 1, true)?;
    let format = negotiate(req.headers(), state.signer.is_some())?;
    require_json(req.headers())?;
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
    // Every id asked for costs one person, found or not; charged before the lookup, so
    // concurrent batches cannot overdraw the quota.
    admit(state, &principal, request.ids.len() as u64, false)?;
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
    state.meters.persons_returned.increment(returned as u64);
    crate::http::usage::persons(returned as u64);
    answer(state, format, out).await
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
    fn deep_nesting_and_repeated_keys_are_refused() {
        let deep = "[".repeat(10_000) + &"]".repeat(10_000);
        let too_deep = Err("request body: JSON is nested deeper than 64 levels");
        check(&deep, false, too_deep);
        let hidden = format!(r#"{{"personidentifikatorer":["11822648950"],"x":{deep}}}"#);
        check(&hidden, true, too_deep);
        let objects = r#"{"a":"#.repeat(10_000) + "1" + &"}".repeat(10_000);
        check(&objects, false, too_deep);
        check(
            r#"{"personidentifikatorer":["11822648950"],"personidentifikatorer":[]}"#,
            false,
            Err("request body has personidentifikatorer more than once"),
        );
        check(
            r#"{"personidentifikatorer":["11822648950"],"inkluderIkkeRegistrerte":false,"inkluderIkkeRegistrerte":true}"#,
            true,
            Err("request body has inkluderIkkeRegistrerte more than once"),
        );
        // Keys the service does not read may repeat.
        check(
            r#"{"personidentifikatorer":["11822648950"],"x":1,"x":2}"#,
            false,
            Ok((1, false)),
        );
    }
}
