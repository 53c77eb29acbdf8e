//! Operations endpoints: liveness, readiness, the InfluxDB `/ping` and `/health` that
//! Influx clients probe, and Prometheus `/metrics`.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;
use super::error::ApiError;

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "ops",
    responses((status = 200, description = "alive", body = String, content_type = "text/plain")))]
pub(crate) async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready for traffic; 503 once shutdown has begun, so load balancers drain us.
#[utoipa::path(get, path = "/readyz", tag = "ops", responses(
    (status = 200, description = "ready", body = String, content_type = "text/plain"),
    (status = 503, description = "shutting down", body = String, content_type = "text/plain")))]
pub(crate) async fn readyz(State(state): State<AppState>) -> Response {
    if state.pipeline.is_closing() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response()
    } else {
        "ready\n".into_response()
    }
}

/// InfluxDB's ping: 204 with a version header.
/// (HEAD is answered too, as for every GET route.)
#[utoipa::path(get, path = "/ping", tag = "ops", responses(
    (status = 204, description = "InfluxDB-style ping", headers(("X-Influxdb-Version" = String)))))]
pub(crate) async fn ping() -> Response {
    (
        StatusCode::NO_CONTENT,
        [
            ("X-Influxdb-Version", format!("citygate-{VERSION}")),
            ("X-Influxdb-Build", "citygate".to_string()),
        ],
    )
        .into_response()
}

/// InfluxDB v2's health document.
#[utoipa::path(get, path = "/health", tag = "ops", responses(
    (status = 200, description = "InfluxDB v2 health: pass", body = Object),
    (status = 503, description = "InfluxDB v2 health: fail (shutting down)", body = Object)))]
pub(crate) async fn health(State(state): State<AppState>) -> Response {
    let closing = state.pipeline.is_closing();
    let status = if closing {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let body = json!({
        "name": "citygate",
        "message": if closing { "shutting down" } else { "ready for writes" },
        "status": if closing { "fail" } else { "pass" },
        "checks": [],
        "version": VERSION,
    });
    (status, Json(body)).into_response()
}

/// Prometheus / OpenMetrics exposition.
#[utoipa::path(get, path = "/metrics", tag = "ops", responses(
    (status = 200, description = "every metric", body = String,
     content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8")))]
pub(crate) async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// This document: every route of the API, generated from the handlers that serve them.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "ops",
    responses((status = 200, description = "OpenAPI 3.1", body = Object)))]
pub(crate) async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        super::openapi_json(),
    )
        .into_response()
}

pub(crate) async fn not_found(uri: Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {}", uri.path()))
}
