//! The one HTTP error type. Every status mapping lives in [`ApiError::into_response`]; the
//! body is always `{"error": code, "message": …}`, plus `rejected` when readings were
//! rejected. Internal details are logged, never sent.

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::market;
use crate::pipeline::IngestError;
use crate::pipeline::decode::media_essence;
use crate::pipeline::limit::{LimitError, retry_after_secs};
use crate::pipeline::reject::Rejected;

/// Rejects listed in one response at most; `rejected_count` has the total.
pub(crate) const MAX_LISTED_REJECTS: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    #[error("a valid API key is required (Authorization: Bearer <key> or Token <key>)")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PaymentRequired(String),
    #[error("{0}")]
    BadGateway(String),
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error("the request did not arrive within {0:?}")]
    RequestTimeout(Duration),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// `Accept` names no format the route writes.
    #[error("{0}")]
    NotAcceptable(String),
    #[error("every reading was rejected")]
    AllRejected(Vec<Rejected>),
    #[error("rate limit exceeded; retry after {0:?}")]
    RateLimited(Duration),
    /// A cap on what one key may hold open at once (live sessions).
    #[error("{message}")]
    TooManyRequests { message: String, retry_after: u64 },
    #[error("{message}")]
    Unavailable { message: String, retry_after: u64 },
    #[error("internal error")]
    Internal(String),
}

/// The error body as the OpenAPI document describes it (named `Error` there); what
/// [`ErrorBody`] writes.
#[derive(utoipa::ToSchema)]
#[schema(as = Error)]
#[allow(dead_code)]
pub(crate) struct ErrorSchema {
    /// A stable, machine-readable code: `unauthorized`, `not_found`, `rate_limited`, …
    error: String,
    /// What went wrong, for people.
    message: String,
    /// Intake only: the rejected readings (at most 1000), each with its reason.
    rejected: Option<Vec<Rejected>>,
    /// Intake only: how many readings were rejected in all.
    rejected_count: Option<usize>,
}

/// The refusals every operation may answer, all in the house format: 400 invalid, 401 no
/// or unknown key, 403 not allowed, 404 not found (or not this key's to see), 408 too slow,
/// 406 no format the client accepts, 409 conflict, 413 too large, 415 not JSON, 422 every reading rejected, 429 over a limit
/// (with `Retry-After`).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub(crate) enum Refused {
    /// Refused; `error` says why.
    #[response(status = "4XX")]
    Refused(ErrorSchema),
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'static str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    rejected: Option<&'a [Rejected]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rejected_count: Option<usize>,
}

impl ApiError {
    pub(crate) fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::BadRequest {
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let message = self.to_string();
        let (status, code, retry_after) = match &self {
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized", None),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", None),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found", None),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict", None),
            ApiError::PaymentRequired(_) => {
                (StatusCode::PAYMENT_REQUIRED, "payment_required", None)
            }
            ApiError::BadGateway(detail) => {
                tracing::warn!(detail = %detail, "payment provider failed");
                (StatusCode::BAD_GATEWAY, "payment_provider", None)
            }
            ApiError::BadRequest { code, .. } => (StatusCode::BAD_REQUEST, *code, None),
            ApiError::RequestTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "request_timeout", None),
            ApiError::PayloadTooLarge(_) => {
                (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", None)
            }
            ApiError::NotAcceptable(_) => (StatusCode::NOT_ACCEPTABLE, "not_acceptable", None),
            ApiError::UnsupportedMediaType(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                None,
            ),
            ApiError::AllRejected(_) => (StatusCode::UNPROCESSABLE_ENTITY, "all_rejected", None),
            ApiError::RateLimited(wait) => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                Some(retry_after_secs(*wait)),
            ),
            ApiError::TooManyRequests { retry_after, .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_sessions",
                Some(*retry_after),
            ),
            ApiError::Unavailable { retry_after, .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                Some(*retry_after),
            ),
            ApiError::Internal(detail) => {
                tracing::error!(detail = %detail, "internal error");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal", None)
            }
        };
        let (rejected, rejected_count) = match &self {
            ApiError::AllRejected(r) => {
                (Some(&r[..r.len().min(MAX_LISTED_REJECTS)]), Some(r.len()))
            }
            _ => (None, None),
        };
        let body = ErrorBody {
            error: code,
            message,
            rejected,
            rejected_count,
        };
        let mut response = (status, Json(body)).into_response();
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if matches!(
            status,
            StatusCode::REQUEST_TIMEOUT | StatusCode::PAYLOAD_TOO_LARGE
        ) {
            // The rest of a late or oversized body may still come: the connection ends here
            // rather than read it as the next request, and the client is told so.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"citygate\""),
            );
        }
        response
    }
}

impl From<IngestError> for ApiError {
    fn from(e: IngestError) -> Self {
        match e {
            IngestError::Malformed(e) => ApiError::bad_request("malformed", e.0),
            IngestError::NoReadings => ApiError::bad_request("no_readings", e.to_string()),
            e @ IngestError::TooManyReadings { .. } => ApiError::PayloadTooLarge(e.to_string()),
            IngestError::RateLimited(LimitError::Exceeded { retry_after }) => {
                ApiError::RateLimited(retry_after)
            }
            // Telegraf answers 413 by splitting the batch, which is what this needs.
            e @ IngestError::RateLimited(LimitError::BatchExceedsBurst { .. }) => {
                ApiError::PayloadTooLarge(e.to_string())
            }
            e @ IngestError::QueueFull(_) => ApiError::Unavailable {
                message: format!("{e}; retry shortly"),
                retry_after: 1,
            },
            IngestError::ShuttingDown => ApiError::Unavailable {
                message: "citygate is shutting down; retry shortly".into(),
                retry_after: 5,
            },
            IngestError::Internal(detail) => ApiError::Internal(detail),
            e @ IngestError::StorageFull(_) => ApiError::Unavailable {
                message: format!("{e}; nothing was kept, retry shortly"),
                retry_after: 5,
            },
            IngestError::Storage(detail) => {
                tracing::error!(detail = %detail, "request refused: the write-ahead log failed");
                ApiError::Unavailable {
                    message: "storage failed; nothing was kept, retry shortly".into(),
                    retry_after: 5,
                }
            }
        }
    }
}

impl From<market::Error> for ApiError {
    fn from(e: market::Error) -> Self {
        use market::Error as E;
        match e {
            E::Invalid(message) => ApiError::bad_request("invalid", message),
            E::NotFound(message) => ApiError::NotFound(message),
            E::Conflict(message) => ApiError::Conflict(message),
            E::PaymentRequired(message) => ApiError::PaymentRequired(message),
            E::PaymentProvider(message) => ApiError::BadGateway(message),
            e @ E::Webhook(_) => ApiError::bad_request("invalid_webhook", e.to_string()),
            e @ (E::DatasetStart(_) | E::Corrupt(_) | E::Database(_) | E::Directory { .. }) => {
                ApiError::Internal(e.to_string())
            }
        }
    }
}

impl ApiError {
    /// A market error whose [`market::Error::Invalid`] answers with `code` (`invalid_plan`,
    /// `invalid_period`, …) rather than the general `invalid`.
    pub(crate) fn invalid_as(code: &'static str) -> impl Fn(market::Error) -> ApiError {
        move |e| match e {
            market::Error::Invalid(message) => ApiError::bad_request(code, message),
            e => e.into(),
        }
    }
}

/// A JSON request body whose problems answer in the API's error shape (400 with the field
/// at fault) rather than axum's plain-text rejection.
///
/// `Content-Type: application/json` (or any `+json`) is the contract; a body sent with no
/// type or with `curl -d`'s default (`application/x-www-form-urlencoded`) is read as JSON
/// too when it is JSON, so the commands people type first work. Any other type is 415.
#[derive(Debug)]
pub(crate) struct ApiJson<T>(pub T);

impl<T, S> axum::extract::FromRequest<S> for ApiJson<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let essence = req
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| media_essence(v.to_str().unwrap_or("?")));
        let declared_json = match essence.as_deref() {
            Some("application/json") => true,
            Some(t) if t.starts_with("application/") && t.ends_with("+json") => true,
            None | Some("") | Some("application/x-www-form-urlencoded") => false,
            Some(other) => {
                return Err(ApiError::UnsupportedMediaType(format!(
                    "Content-Type `{other}`: send the body as JSON with Content-Type: \
                     application/json"
                )));
            }
        };
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::bad_request("body_read", e.body_text()))?;
        if holds_nul_escape(&bytes) {
            return Err(ApiError::bad_request(
                "invalid_json",
                "a string in the body holds the NUL character (\\u0000), which no text field \
                 may contain",
            ));
        }
        match axum::Json::<T>::from_bytes(&bytes) {
            Ok(axum::Json(value)) => Ok(ApiJson(value)),
            Err(axum::extract::rejection::JsonRejection::JsonSyntaxError(_)) if !declared_json => {
                Err(ApiError::UnsupportedMediaType(
                    "the body is not JSON: send it as JSON with Content-Type: application/json"
                        .into(),
                ))
            }
            Err(rejection) => Err(ApiError::bad_request("invalid_json", rejection.body_text())),
        }
    }
}

/// Whether a JSON text holds the escape `\u0000` (a backslash that is not itself escaped,
/// then `u0000`). No text field may hold NUL: PostgreSQL cannot store it, and an id or a name
/// with one would differ between the backends.
fn holds_nul_escape(json: &[u8]) -> bool {
    let mut backslashes = 0usize;
    for (i, &b) in json.iter().enumerate() {
        if b == b'\\' {
            backslashes += 1;
            continue;
        }
        if backslashes % 2 == 1 && b == b'u' && json[i + 1..].starts_with(b"0000") {
            return true;
        }
        backslashes = 0;
    }
    false
}

/// Middleware: a URL holding `%00` is refused (400) before routing reaches a handler: no id,
/// name or parameter may contain NUL (see [`holds_nul_escape`]).
pub(super) async fn refuse_nul(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let uri = request.uri();
    let path = uri.path().as_bytes();
    let query = uri.query().unwrap_or("").as_bytes();
    let nul = |s: &[u8]| s.windows(3).any(|w| w == b"%00");
    if nul(path) || nul(query) {
        return ApiError::bad_request(
            "bad_request",
            "the URL holds %00 (the NUL character), which no id or parameter may contain",
        )
        .into_response();
    }
    next.run(request).await
}

/// Middleware: a 4xx answer that did not come from [`ApiError`] (axum's own rejections of a
/// bad path, query or upgrade, which are plain text) is rewritten in the house format, so
/// every error a client sees has the same shape.
pub(super) async fn house_errors(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let plain = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|t| t.starts_with("text/plain"));
    if !status.is_client_error() || !plain {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let message = String::from_utf8_lossy(&text).trim().to_string();
    let code = match status {
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNPROCESSABLE_ENTITY => "invalid",
        _ => "bad_request",
    };
    let message = if message.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("the request was refused")
            .to_string()
    } else {
        message
    };
    let mut rewritten = (
        status,
        Json(ErrorBody {
            error: code,
            message,
            rejected: None,
            rejected_count: None,
        }),
    )
        .into_response();
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            rewritten.headers_mut().insert(name.clone(), value.clone());
        }
    }
    rewritten
}

#[cfg(test)]
mod tests {
    use super::holds_nul_escape;

    #[test]
    fn a_nul_escape_is_found_and_an_escaped_backslash_is_not_one() {
        assert!(holds_nul_escape(br#"{"name":"a\u0000b"}"#));
        assert!(holds_nul_escape(br#"{"name":"\\\u0000"}"#));
        assert!(!holds_nul_escape(br#"{"name":"\\u0000"}"#));
        assert!(holds_nul_escape(br#"{"name":"\u00001"}"#));
        assert!(!holds_nul_escape(br#"{"name":"\u0001 u0000"}"#));
        assert!(!holds_nul_escape(br#"{"name":"\u"}"#));
    }
}
