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
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready for traffic; 503 once shutdown has begun, so load balancers drain us.
pub async fn readyz(State(state): State<AppState>) -> Response {
    if state.pipeline.is_closing() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response()
    } else {
        "ready\n".into_response()
    }
}

/// InfluxDB's ping: 204 with a version header.
pub async fn ping() -> Response {
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
pub async fn health(State(state): State<AppState>) -> Response {
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

pub async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

pub async fn not_found(uri: Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {}", uri.path()))
}
