//! The admin listener: health, metrics, reload. Never exposed publicly.
//!
//! | route | answer |
//! |---|---|
//! | `GET /health/liveness`, `/actuator/health/liveness` | 200 `{"status":"UP"}` while the process serves |
//! | `GET /health/readiness`, `/actuator/health/readiness`, `/actuator/health` | 200 `UP` with a snapshot loaded; 503 `DOWN` before that and from the first moment of shutdown |
//! | `GET /metrics` | Prometheus text format |
//! | `POST /admin/reload` | reloads now; 200 with what happened as JSON |

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Request, Response, StatusCode};

use crate::http::AppState;
use crate::http::error::ApiError;
use crate::http::request::Resp;
use crate::http::route::{Route, Verb, dispatch, find};
use crate::ops::scrape;
use crate::store::reload::Outcome;

fn json(status: StatusCode, body: Vec<u8>) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn health(up: bool) -> Resp {
    if up {
        json(StatusCode::OK, br#"{"status":"UP"}"#.to_vec())
    } else {
        json(
            StatusCode::SERVICE_UNAVAILABLE,
            br#"{"status":"DOWN"}"#.to_vec(),
        )
    }
}

/// The admin listener's handlers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handler {
    /// Liveness: 200 while the process serves.
    Liveness,
    /// Readiness: 200 with a snapshot served, 503 before and from shutdown on.
    Readiness,
    /// Prometheus text.
    Metrics,
    /// Reload now.
    Reload,
}

const LIVENESS: &[(Verb, Handler)] = &[(Verb::GetOrHead, Handler::Liveness)];
const READINESS: &[(Verb, Handler)] = &[(Verb::GetOrHead, Handler::Readiness)];

/// Every admin route.
pub const ROUTES: &[Route<Handler>] = &[
    Route {
        path: "/health/liveness",
        methods: LIVENESS,
        allow: "GET, HEAD",
    },
    Route {
        path: "/actuator/health/liveness",
        methods: LIVENESS,
        allow: "GET, HEAD",
    },
    Route {
        path: "/health/readiness",
        methods: READINESS,
        allow: "GET, HEAD",
    },
    Route {
        path: "/actuator/health/readiness",
        methods: READINESS,
        allow: "GET, HEAD",
    },
    Route {
        path: "/actuator/health",
        methods: READINESS,
        allow: "GET, HEAD",
    },
    Route {
        path: "/metrics",
        methods: &[(Verb::GetOrHead, Handler::Metrics)],
        allow: "GET, HEAD",
    },
    Route {
        path: "/admin/reload",
        methods: &[(Verb::Post, Handler::Reload)],
        allow: "POST",
    },
];

/// Answers one admin request.
pub async fn handle(state: Arc<AppState>, req: Request<Incoming>) -> Resp {
    let path = req.uri().path().to_owned();
    let Some(route) = find(ROUTES, &path) else {
        return ApiError::new(StatusCode::NOT_FOUND, "no such admin endpoint").into_response(&path);
    };
    let handler = match dispatch(route, req.method()) {
        Ok(h) => h,
        Err(e) => return e.into_response(&path),
    };
    match handler {
        Handler::Liveness => health(true),
        Handler::Readiness => health(state.is_ready()),
        Handler::Metrics => {
            let text = scrape::render(&state.store, state.journal.as_ref(), state.is_ready());
            let mut r = Response::new(Full::new(Bytes::from(text)));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        Handler::Reload => match &state.reloader {
            Some(reloader) => {
                // `?allow-shrink=true`: the operator serves a snapshot that lost more
                // persons than --max-shrink allows, on purpose.
                let allow_shrink = req
                    .uri()
                    .query()
                    .is_some_and(|q| q.split('&').any(|kv| kv == "allow-shrink=true"));
                let outcome = reloader.reload_with("admin", allow_shrink).await;
                let mut status = match outcome {
                    Outcome::Failed { .. } => StatusCode::INTERNAL_SERVER_ERROR,
                    _ => StatusCode::OK,
                };
                let mut body = serde_json::to_value(&outcome).expect("outcome serialises");
                // With TLS the certificate and key are read again too; a refusal keeps the
                // old pair serving and makes the answer a 500 that says why.
                if let Some(tls) = &state.tls {
                    body["tls"] = match tls.reload() {
                        Ok(()) => serde_json::json!({ "result": "reloaded" }),
                        Err(e) => {
                            status = StatusCode::INTERNAL_SERVER_ERROR;
                            serde_json::json!({ "result": "failed", "reason": e.to_string() })
                        }
                    };
                }
                // And the quota file, when there is one (same rule).
                match state.quotas.reload() {
                    Ok(None) => {}
                    Ok(Some(consumers)) => {
                        body["quotas"] =
                            serde_json::json!({ "result": "reloaded", "consumers": consumers });
                    }
                    Err(e) => {
                        status = StatusCode::INTERNAL_SERVER_ERROR;
                        body["quotas"] =
                            serde_json::json!({ "result": "failed", "reason": e.to_string() });
                    }
                }
                json(
                    status,
                    serde_json::to_vec(&body).expect("a JSON value serialises"),
                )
            }
            None => ApiError::new(StatusCode::NOT_FOUND, "this service has no reloader")
                .into_response(&path),
        },
    }
}
