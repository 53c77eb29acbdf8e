//! Request bodies, bounded in size and in time on every route.
//!
//! hyper times out only the headers; a client that sends headers and then trickles (or
//! never sends) its body would hold a connection slot for as long as it likes. So every
//! body is read here, before any handler or extractor sees it, within `http.request_timeout`
//! (else 408, and the connection is closed) and within a size cap that depends on the route:
//!
//! | route | cap |
//! |---|---|
//! | intake (`/v1/datasets/{id}/readings`, `/api/v2/write`, `/write`) | `http.max_body` |
//! | payment webhook | [`WEBHOOK_MAX_BODY`] |
//! | every other route (JSON documents) | [`API_MAX_BODY`] |

use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::ApiError;
use crate::config::ByteSize;

/// The largest JSON document (an account, a dataset with its schema, a plan) any API route
/// takes.
pub(crate) const API_MAX_BODY: usize = 1 << 20;

/// The largest payment webhook accepted: Stripe's events are a few KiB, and every byte of
/// an unauthenticated body costs an HMAC per signing secret before it is refused.
pub(crate) const WEBHOOK_MAX_BODY: usize = 256 << 10;

/// Routes whose bodies are readings, up to `http.max_body`.
const INTAKE_ROUTES: [&str; 3] = ["/v1/datasets/{id}/readings", "/api/v2/write", "/write"];

/// Middleware: reads the body of every request that has one, bounded by the route's cap
/// and `http.request_timeout`, and hands it on whole. An intake body (the largest) is read
/// only for a valid key: without one the answer is 401 before a byte of it is taken.
pub(super) async fn bounded(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    if request.body().is_end_stream() {
        return next.run(request).await;
    }
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str());
    let max = match route {
        Some(r) if INTAKE_ROUTES.contains(&r) => {
            // `/write` may carry its key as `p=` (InfluxDB v1).
            let p = request.uri().query().and_then(|q| {
                q.split('&')
                    .find_map(|pair| pair.strip_prefix("p="))
                    .map(str::to_string)
            });
            match super::auth::require_key(&state, request.headers(), p.as_deref()).await {
                // The handler takes the key from here rather than authenticate twice.
                Ok(key) => {
                    request.extensions_mut().insert(key);
                }
                Err(e) => return e.into_response(),
            }
            state.http.max_body.as_usize()
        }
        Some("/v1/payments/webhook") => WEBHOOK_MAX_BODY,
        _ => API_MAX_BODY,
    };
    let (parts, body) = request.into_parts();
    match read(body, &parts.headers, max, state.http.request_timeout).await {
        Ok(bytes) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Err(e) => e.into_response(),
    }
}

/// Reads a whole body, at most `max` bytes (413, refused at once when `Content-Length`
/// says more) within `timeout` (408).
pub(crate) async fn read(
    body: Body,
    headers: &HeaderMap,
    max: usize,
    timeout: Duration,
) -> Result<Bytes, ApiError> {
    let too_large =
        || ApiError::PayloadTooLarge(format!("the body is larger than {}", ByteSize(max as u64)));
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max as u64) {
        return Err(too_large());
    }
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, max)).await {
        Err(_) => Err(ApiError::RequestTimeout(timeout)),
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) => {
            let over_limit = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            if over_limit {
                Err(too_large())
            } else {
                Err(ApiError::bad_request(
                    "body_read",
                    format!("the body could not be read: {e}"),
                ))
            }
        }
    }
}
