//! The public routes, in one table: each path with the methods it answers and the handler
//! of each. Dispatch, the `Allow` header of a 405 and the metric label all come from the
//! table, so a route is spelled once. The admin listener has a table of the same shape
//! ([`crate::http::admin`]).
//!
//! [`handle`] wraps every request: a `request` span at DEBUG (route, method, the request id,
//! and once the token is verified the consumer's organisation number), the `X-Request-Id`
//! of the answer ([`request_id`]), the `RateLimit` headers of a consumer under a quota, the
//! request counter and latency histogram, and one access line (target `krr::access`: method,
//! route, status, persons, micros, consumer, request id).

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use tracing::Instrument;

use crate::http::AppState;
use crate::http::coding::{self, Coding};
use crate::http::error::ApiError;
use crate::http::gate::Admission;
use crate::http::request::Resp;
use crate::http::{feed, person, personer, print, request_id, usage};

/// A method a route answers. `GetOrHead` answers `HEAD` like `GET` (RFC 9110 §9.3.2: the
/// same status and headers, no body; hyper leaves the body out).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    /// `GET`.
    Get,
    /// `GET` or `HEAD`.
    GetOrHead,
    /// `POST`.
    Post,
    /// `PATCH`.
    Patch,
}

impl Verb {
    fn matches(self, m: &Method) -> bool {
        match self {
            Verb::Get => m == Method::GET,
            Verb::GetOrHead => m == Method::GET || m == Method::HEAD,
            Verb::Post => m == Method::POST,
            Verb::Patch => m == Method::PATCH,
        }
    }

    /// The method's name in an `Allow` header.
    pub fn name(self) -> &'static str {
        match self {
            Verb::Get => "GET",
            Verb::GetOrHead => "GET, HEAD",
            Verb::Post => "POST",
            Verb::Patch => "PATCH",
        }
    }
}

/// One path: the methods it answers, each with its handler `H`.
#[derive(Debug)]
pub struct Route<H: 'static> {
    /// The path (a trailing `/` is ignored); also the route's metric label.
    pub path: &'static str,
    /// The methods and their handlers.
    pub methods: &'static [(Verb, H)],
    /// The `Allow` header of a 405: the methods, comma-separated (checked against
    /// `methods` by a test).
    pub allow: &'static str,
}

/// The route of `path` in `table` (a trailing `/` ignored).
pub fn find<H>(table: &'static [Route<H>], path: &str) -> Option<&'static Route<H>> {
    let path = path
        .strip_suffix('/')
        .filter(|p| !p.is_empty())
        .unwrap_or(path);
    table.iter().find(|r| r.path == path)
}

/// The handler of `method` on `route`, or the 405 naming the methods it has.
pub fn dispatch<H: Copy>(route: &Route<H>, method: &Method) -> Result<H, ApiError> {
    route
        .methods
        .iter()
        .find(|(v, _)| v.matches(method))
        .map(|&(_, h)| h)
        .ok_or_else(|| ApiError::method_not_allowed(route.allow))
}

/// The handlers of the public API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handler {
    /// `POST /rest/v1|v2/personer`.
    Personer {
        /// v2 (`inkluderIkkeRegistrerte`).
        v2: bool,
    },
    /// `GET /rest/v1|v2/person`.
    Person,
    /// `PATCH /rest/v1/person`.
    PatchPerson,
    /// `GET /rest/v1|v2/printSertifikat`.
    PrintSertifikat,
    /// `GET /openapi.json`.
    OpenApi,
    /// `POST /rest/v2/krr/hentEndringer`.
    HentEndringer,
}

/// Every public route.
pub const ROUTES: &[Route<Handler>] = &[
    Route {
        path: "/rest/v1/personer",
        methods: &[(Verb::Post, Handler::Personer { v2: false })],
        allow: "POST",
    },
    Route {
        path: "/rest/v2/personer",
        methods: &[(Verb::Post, Handler::Personer { v2: true })],
        allow: "POST",
    },
    Route {
        path: "/rest/v1/person",
        methods: &[
            (Verb::GetOrHead, Handler::Person),
            (Verb::Patch, Handler::PatchPerson),
        ],
        allow: "GET, HEAD, PATCH",
    },
    Route {
        path: "/rest/v2/person",
        methods: &[(Verb::GetOrHead, Handler::Person)],
        allow: "GET, HEAD",
    },
    Route {
        path: "/rest/v1/printSertifikat",
        methods: &[(Verb::GetOrHead, Handler::PrintSertifikat)],
        allow: "GET, HEAD",
    },
    Route {
        path: "/rest/v2/printSertifikat",
        methods: &[(Verb::GetOrHead, Handler::PrintSertifikat)],
        allow: "GET, HEAD",
    },
    Route {
        path: "/rest/v2/krr/hentEndringer",
        methods: &[(Verb::Post, Handler::HentEndringer)],
        allow: "POST",
    },
    Route {
        path: "/openapi.json",
        methods: &[(Verb::GetOrHead, Handler::OpenApi)],
        allow: "GET, HEAD",
    },
];

/// The fixed label of a method (metrics never carry anything a client chose).
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

/// Answers one request of the public API (see the module doc).
pub async fn handle(state: Arc<AppState>, req: Request<Incoming>, admission: Admission) -> Resp {
    let started = std::time::Instant::now();
    let path = req.uri().path().to_owned();
    let route = find(ROUTES, &path);
    let label = route.map_or("other", |r| r.path);
    let method = method_label(req.method());
    let coding = coding::negotiate(req.headers());
    let request_id = request_id::of(req.headers());
    // At DEBUG: an INFO span for every request cost a tenth of the single-id throughput
    // (made, formatted, entered at every poll). The access line below carries its fields;
    // a handler's own warning names the request id itself.
    let span = tracing::debug_span!(
        "request",
        method,
        route = label,
        request_id = request_id.to_str().unwrap_or(""),
        consumer = tracing::field::Empty,
        persons = tracing::field::Empty,
    );
    // Past --max-in-flight the request is answered at once, before anything is read: an
    // HTTP/1.1 request was judged when it arrived ([`crate::http::gate`]), an HTTP/2 one
    // is counted now.
    // `None`: shed; `Some(None)`: counted by the gate already.
    let in_flight = match admission {
        Admission::Count => InFlight::enter(&state).map(Some),
        Admission::Counted => Some(None),
        Admission::Refused => None,
    };
    // Boxed: the handlers' futures are large, and the wrappers below (span, task-local,
    // hyper's dispatcher) would otherwise copy them whole at every move (memcpy was a
    // tenth of a single-id request's instructions).
    let work = Box::pin(async {
        if in_flight.is_none() {
            metrics::counter!(crate::metrics::REQUESTS_SHED, "route" => label).increment(1);
            return Err(ApiError::at_capacity());
        }
        if req.version() == hyper::Version::HTTP_11
            && !req.headers().contains_key(hyper::header::HOST)
        {
            return Err(ApiError::bad_request(
                "the request has no Host header (HTTP/1.1 requires one)",
            ));
        }
        let route =
            route.ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no such endpoint"))?;
        match dispatch(route, req.method())? {
            Handler::Personer { v2 } => personer::personer(&state, req, v2).await,
            Handler::Person => person::person(&state, &req).await,
            Handler::PatchPerson => person::patch_person(&state, req).await,
            Handler::PrintSertifikat => print::print_sertifikat(&state, &req),
            Handler::OpenApi => Ok(print::openapi()),
            Handler::HentEndringer => feed::hent_endringer(&state, req).await,
        }
    })
    .instrument(span.clone());
    let (result, outcome) = usage::scope(request_id, work).await;
    let mut resp = result.unwrap_or_else(|e| e.into_response(&path));
    let (coding, len) = choose_coding(coding, &mut resp);
    match coding.header() {
        None => state.meters.body(coding.label(), "identity", len, len),
        Some(name) => resp = encode(&state.meters, coding, name, resp, len).await,
    }
    drop(in_flight);
    let status = resp.status().as_u16();
    let elapsed = started.elapsed();
    state
        .meters
        .request(label, method, status, elapsed.as_secs_f64());
    let consumer = outcome.caller.as_deref().map(usage::key);
    state.usage.record(
        &state.meters,
        consumer.as_deref(),
        outcome.persons,
        label,
        status,
    );
    crate::http::access::log(&crate::http::access::Record {
        method,
        route: label,
        status,
        persons: outcome.persons,
        micros: elapsed.as_micros() as u64,
        consumer: consumer.as_deref().unwrap_or("-"),
        request_id: outcome.request_id.to_str().unwrap_or(""),
    });
    let headers = resp.headers_mut();
    headers.insert(request_id::HEADER, outcome.request_id);
    if let Some(s) = outcome.standing {
        // Digits and quotes only: always a valid header value.
        for (name, value) in [
            (RATELIMIT_POLICY, s.policy_header()),
            (RATELIMIT, s.header()),
        ] {
            if let Ok(v) = hyper::header::HeaderValue::try_from(value) {
                headers.insert(name, v);
            }
        }
    }
    resp
}

/// `RateLimit-Policy` (IETF httpapi-ratelimit-headers draft).
const RATELIMIT_POLICY: hyper::header::HeaderName =
    hyper::header::HeaderName::from_static("ratelimit-policy");
/// `RateLimit`.
const RATELIMIT: hyper::header::HeaderName = hyper::header::HeaderName::from_static("ratelimit");

/// A request counted in progress until dropped (also when its connection goes away).
struct InFlight<'a>(&'a AppState);

impl<'a> InFlight<'a> {
    /// Counts the request in, or `None` when `--max-in-flight` are in progress already.
    fn enter(state: &'a AppState) -> Option<InFlight<'a>> {
        use std::sync::atomic::Ordering::AcqRel;
        let before = state.in_flight.fetch_add(1, AcqRel);
        if before >= state.limits.max_in_flight {
            state.in_flight.fetch_sub(1, AcqRel);
            return None;
        }
        Some(InFlight(state))
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Gives `resp` its `Vary: Accept-Encoding` (every answer has it), and says which coding it
/// will be sent in, `coding` when it is a success worth coding (see [`coding`]), and the
/// length of its body.
fn choose_coding(coding: Coding, resp: &mut Resp) -> (Coding, u64) {
    use hyper::body::Body;
    resp.headers_mut()
        .insert(hyper::header::VARY, coding::vary());
    let len = resp.body().size_hint().exact().unwrap_or(0);
    let coding = match coding.header() {
        Some(_) if coding::worth(resp.status(), len as usize) => coding,
        _ => Coding::Identity,
    };
    (coding, len)
}

/// `resp` (with a body of `len` bytes) in `coding`, whose `Content-Encoding` is `name`.
async fn encode(
    meters: &crate::http::meters::Meters,
    coding: Coding,
    name: &'static str,
    resp: Resp,
    len: u64,
) -> Resp {
    use http_body_util::BodyExt;
    let (mut parts, body) = resp.into_parts();
    let bytes = match body.collect().await {
        Ok(c) => c.to_bytes(),
        Err(never) => match never {},
    };
    // Boxed: the encoders' state (gzip's symbol counts) would otherwise be part of every
    // request's future, copied whole each time the future is moved.
    let coded = Box::pin(coding::encode(coding, bytes)).await;
    meters.body(coding.label(), coding.label(), len, coded.len() as u64);
    parts.headers.insert(
        hyper::header::CONTENT_ENCODING,
        hyper::header::HeaderValue::from_static(name),
    );
    parts.headers.remove(hyper::header::CONTENT_LENGTH);
    Resp::from_parts(parts, http_body_util::Full::new(coded))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every table's `allow` names exactly its methods, in order.
    pub(crate) fn check_allow<H>(table: &[Route<H>]) {
        for r in table {
            let names: Vec<&str> = r.methods.iter().map(|(v, _)| v.name()).collect();
            assert_eq!(r.allow, names.join(", "), "{}", r.path);
        }
    }

    #[test]
    fn allow_headers_match_the_methods() {
        check_allow(ROUTES);
        check_allow(crate::http::admin::ROUTES);
    }

    #[test]
    fn paths_are_found_with_or_without_a_trailing_slash() {
        let got = |p: &str| find(ROUTES, p).map(|r| r.path);
        assert_eq!(got("/rest/v1/personer"), Some("/rest/v1/personer"));
        assert_eq!(got("/rest/v1/personer/"), Some("/rest/v1/personer"));
        assert_eq!(got("/rest/v3/personer"), None);
        assert_eq!(got("/"), None);
        let person = find(ROUTES, "/rest/v1/person").unwrap();
        assert_eq!(
            dispatch(person, &Method::PATCH).ok(),
            Some(Handler::PatchPerson)
        );
        assert_eq!(
            dispatch(person, &Method::DELETE).unwrap_err().allow,
            Some("GET, HEAD, PATCH")
        );
        let v2 = find(ROUTES, "/rest/v2/person").unwrap();
        assert_eq!(dispatch(v2, &Method::HEAD).ok(), Some(Handler::Person));
        assert_eq!(
            dispatch(v2, &Method::PUT).unwrap_err().allow,
            Some("GET, HEAD")
        );
    }
}
