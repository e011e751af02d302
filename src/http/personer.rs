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

/// Parses `{"personidentifikatorer":[…],"inkluderIkkeRegistrerte":…}`: the usual shape
/// by [`parse_plain`], anything else by [`parse_dom`]. Messages name the problem and the
/// position, never an id.
pub fn parse_personer(body: &mut [u8], v2: bool) -> Result<PersonerRequest, ApiError> {
    match parse_plain(body, v2) {
        Some(request) => Ok(request),
        None => parse_dom(body, v2),
    }
}

/// The body in its usual shape, read without building a document:
/// `{"personidentifikatorer":["<11 digits>",…]}`, in v2 optionally followed by
/// `,"inkluderIkkeRegistrerte":true|false`, with JSON whitespace anywhere between tokens,
/// 1 to [`MAX_IDS`] ids. `None` for anything else (escapes, other keys, another order, an
/// error), which [`parse_dom`] then reads or refuses with its message. Whatever this
/// accepts, [`parse_dom`] reads the same way (the fuzz target `personer` checks it).
///
/// For a single id, simd-json's document was a tenth of the request's instructions.
pub fn parse_plain(body: &[u8], v2: bool) -> Option<PersonerRequest> {
    let mut p = Plain { b: body, at: 0 };
    p.token(b"{")?;
    p.token(b"\"personidentifikatorer\"")?;
    p.token(b":")?;
    p.token(b"[")?;
    // Each id takes 14 bytes with its quotes and comma: room for all of them at once.
    let mut ids = Vec::with_capacity((body.len() / 14).clamp(1, MAX_IDS + 1));
    loop {
        p.token(b"\"")?;
        let digits = p.b.get(p.at..p.at + 11)?;
        ids.push(PersonId::parse(digits)?);
        p.at += 11;
        if p.b.get(p.at) != Some(&b'"') || ids.len() > MAX_IDS {
            return None;
        }
        p.at += 1;
        if p.token(b",").is_none() {
            break;
        }
    }
    p.token(b"]")?;
    let mut inkluder = None;
    if p.token(b",").is_some() {
        p.token(b"\"inkluderIkkeRegistrerte\"")?;
        p.token(b":")?;
        inkluder = Some(if p.token(b"true").is_some() {
            true
        } else {
            p.token(b"false")?;
            false
        });
    }
    p.token(b"}")?;
    p.skip_whitespace();
    if p.at != body.len() {
        return None;
    }
    Some(PersonerRequest {
        ids,
        inkluder_ikke_registrerte: v2 && inkluder == Some(true),
    })
}

/// A cursor over a body for [`parse_plain`].
struct Plain<'a> {
    b: &'a [u8],
    at: usize,
}

impl Plain<'_> {
    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.at) {
            self.at += 1;
        }
    }

    /// Whitespace, then exactly `t`.
    fn token(&mut self, t: &[u8]) -> Option<()> {
        self.skip_whitespace();
        if self.b[self.at..].starts_with(t) {
            self.at += t.len();
            Some(())
        } else {
            None
        }
    }
}

/// Parses the body as a JSON document (simd-json, in place): every shape, every error.
pub fn parse_dom(body: &mut [u8], v2: bool) -> Result<PersonerRequest, ApiError> {
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

    /// The usual shapes are read without a document, and exactly as the document reads them;
    /// every other shape is left to the document.
    #[test]
    fn plain_bodies_read_as_the_document_reads_them() {
        let plain = [
            (r#"{"personidentifikatorer":["11822648950"]}"#, false),
            (r#"{"personidentifikatorer":["11822648950"]}"#, true),
            (
                " {\t\"personidentifikatorer\" :\n[ \"11822648950\" , \"22898243161\"\r] } \n",
                false,
            ),
            (
                r#"{"personidentifikatorer":["11822648950"],"inkluderIkkeRegistrerte":true}"#,
                true,
            ),
            (
                r#"{"personidentifikatorer":["11822648950"],"inkluderIkkeRegistrerte":true}"#,
                false,
            ),
            (
                r#"{"personidentifikatorer":["11822648950"], "inkluderIkkeRegistrerte" : false}"#,
                true,
            ),
        ];
        for (body, v2) in plain {
            let fast = parse_plain(body.as_bytes(), v2).unwrap_or_else(|| panic!("{body}"));
            let dom = parse_dom(&mut body.as_bytes().to_vec(), v2).unwrap();
            assert_eq!(fast, dom, "{body}");
        }
        let ids = vec![r#""11822648950""#; MAX_IDS].join(",");
        let full = format!(r#"{{"personidentifikatorer":[{ids}]}}"#);
        assert_eq!(
            parse_plain(full.as_bytes(), false).unwrap().ids.len(),
            MAX_IDS
        );
        let over = format!(r#"{{"personidentifikatorer":[{ids},"11822648950"]}}"#);
        let others = [
            over.as_str(),
            r#"{"personidentifikatorer":[]}"#,
            r#"{"personidentifikatorer":["1182264895"]}"#,
            r#"{"personidentifikatorer":["118226489500"]}"#,
            r#"{"personidentifikatorer":["1182264895x"]}"#,
            r#"{"personidentifikatorer":["\u00311822648950"]}"#,
            r#"{"personidentifikatorer":["11822648950",]}"#,
            r#"{"personidentifikatorer":["11822648950"],"x":1}"#,
            r#"{"inkluderIkkeRegistrerte":true,"personidentifikatorer":["11822648950"]}"#,
            r#"{"personidentifikatorer":["11822648950"],"inkluderIkkeRegistrerte":"yes"}"#,
            r#"{"personidentifikatorer":["11822648950"]}x"#,
            r#"{"personidentifikatorer":["11822648950"]"#,
            "\u{feff}{\"personidentifikatorer\":[\"11822648950\"]}",
        ];
        for body in others {
            assert_eq!(parse_plain(body.as_bytes(), true), None, "{body}");
        }
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
