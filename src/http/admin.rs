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
use hyper::{Method, Request, Response, StatusCode};

use crate::http::AppState;
use crate::http::error::ApiError;

type Resp = Response<Full<Bytes>>;

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

/// Answers one admin request.
pub async fn handle(state: Arc<AppState>, req: Request<Incoming>) -> Resp {
    let path = req.uri().path().to_owned();
    let route = path
        .strip_suffix('/')
        .filter(|p| !p.is_empty())
        .unwrap_or(&path);
    let get = req.method() == Method::GET || req.method() == Method::HEAD;
    match route {
        "/health/liveness" | "/actuator/health/liveness" if get => health(true),
        "/health/readiness" | "/actuator/health/readiness" | "/actuator/health" if get => {
            health(state.is_ready())
        }
        "/metrics" if get => {
            let text =
                crate::metrics::render(&state.store, state.journal.as_ref(), state.is_ready());
            let mut r = Response::new(Full::new(Bytes::from(text)));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        "/admin/reload" if req.method() == Method::POST => match &state.reloader {
            Some(reloader) => {
                let outcome = reloader.reload("admin").await;
                let status = match outcome {
                    crate::reload::Outcome::Failed { .. } => StatusCode::INTERNAL_SERVER_ERROR,
                    _ => StatusCode::OK,
                };
                json(
                    status,
                    serde_json::to_vec(&outcome).expect("outcome serialises"),
                )
            }
            None => ApiError::new(StatusCode::NOT_FOUND, "this service has no reloader")
                .into_response(&path),
        },
        "/health/liveness"
        | "/actuator/health/liveness"
        | "/health/readiness"
        | "/actuator/health/readiness"
        | "/actuator/health"
        | "/metrics" => ApiError::method_not_allowed("GET").into_response(&path),
        "/admin/reload" => ApiError::method_not_allowed("POST").into_response(&path),
        _ => ApiError::new(StatusCode::NOT_FOUND, "no such admin endpoint").into_response(&path),
    }
}
