//! HTTP intake: citygate's own JSON / NDJSON / SenML route and the InfluxDB v1 and v2 write
//! APIs, answering the way the clients that already speak them expect.
//!
//! | status | when |
//! |---|---|
//! | 204 | every reading accepted (kept) |
//! | 200 | some accepted, some rejected: `{"accepted": n, "rejected": [{index, reason, message}]}` |
//! | 422 | every reading rejected (nothing kept) |
//! | 400 | the body cannot be parsed at all, or holds no readings |
//! | 401 / 403 / 404 | no or unknown key / key not allowed on the dataset / no such dataset |
//! | 408 | the body did not arrive within `http.request_timeout` |
//! | 413 | body over `http.max_body` (or over `max_decompressed_body` once gunzipped), or a batch larger than the device's burst |
//! | 415 | unknown `Content-Type` or `Content-Encoding` |
//! | 429 | over the device's rate limit; `Retry-After` says when to retry; nothing kept |
//! | 503 | shutting down, or the dataset's queue stayed full; `Retry-After`; nothing kept |
//!
//! Bodies may be gzip-compressed (`Content-Encoding: gzip`) on every route: Telegraf sends
//! gzip by default.

use std::io::Read;

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use crate::api::AppState;
use crate::api::auth::require_key;
use crate::api::error::{ApiError, MAX_LISTED_REJECTS};
use crate::market::ApiKey;
use crate::model::now_micros;
use crate::pipeline::decode::{Format, Precision, media_essence};
use crate::pipeline::reject::Rejected;
use crate::pipeline::{Batch, Outcome};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ReadingsQuery {
    /// Unit of numeric timestamps: `ns`, `us`, `ms` (the JSON default) or `s`.
    precision: Option<String>,
}

/// `POST /v1/datasets/{id}/readings`, format by `Content-Type`.
#[utoipa::path(post, path = "/v1/datasets/{id}/readings", tag = "intake",
    params(("id" = String, Path, description = "the dataset"), ReadingsQuery),
    request_body(description = "Readings: a JSON object or array (`application/json`), NDJSON \
        (`application/x-ndjson`), SenML (`application/senml+json`) or line protocol \
        (`text/plain`); `Content-Encoding: gzip` allowed",
        content((Object = "application/json"), (String = "application/x-ndjson"),
                (Object = "application/senml+json"), (String = "text/plain"))),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "every reading kept"),
        (status = 200, description = "some kept, some rejected", body = PartialSchema),
        crate::api::error::Refused,
        (status = 503,
            description = "busy or shutting down; nothing kept; retry after `Retry-After`",
         body = crate::api::error::ErrorSchema)))]
pub(crate) async fn post_readings(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<ReadingsQuery>,
    authenticated: Option<Extension<Arc<ApiKey>>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let format = format_of(&headers);
    intake(
        &state,
        caller(&state, authenticated, &headers, None).await?,
        &id,
        format,
        q.precision.as_deref(),
        &headers,
        body,
    )
    .await
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct InfluxV2Query {
    /// The dataset.
    bucket: Option<String>,
    /// `ns` (default), `us`, `ms` or `s`.
    precision: Option<String>,
}

/// `POST /api/v2/write?org=&bucket=&precision=`: the bucket is the dataset; `org` is
/// accepted and not used.
#[utoipa::path(post, path = "/api/v2/write", tag = "intake", params(InfluxV2Query),
    request_body(description = "InfluxDB line protocol", content = String,
        content_type = "text/plain"),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "every point kept"),
        (status = 200, description = "some kept, some rejected", body = PartialSchema),
        crate::api::error::Refused,
        (status = 503, description = "busy; retry after `Retry-After`",
         body = crate::api::error::ErrorSchema)))]
pub(crate) async fn influx_v2_write(
    State(state): State<AppState>,
    Query(q): Query<InfluxV2Query>,
    authenticated: Option<Extension<Arc<ApiKey>>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bucket = q.bucket.filter(|b| !b.is_empty()).ok_or_else(|| {
        ApiError::bad_request("missing_bucket", "`bucket` (the dataset id) is required")
    })?;
    intake(
        &state,
        caller(&state, authenticated, &headers, None).await?,
        &bucket,
        Ok(Format::LineProtocol),
        q.precision.as_deref(),
        &headers,
        body,
    )
    .await
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct InfluxV1Query {
    /// The dataset.
    db: Option<String>,
    /// `ns` (default), `us`, `ms` or `s`.
    precision: Option<String>,
    /// The key, where a client cannot send a header.
    p: Option<String>,
}

/// `POST /write?db=&precision=`: the database is the dataset; the key may come as `p=`.
#[utoipa::path(post, path = "/write", tag = "intake", params(InfluxV1Query),
    request_body(description = "InfluxDB line protocol", content = String,
        content_type = "text/plain"),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "every point kept"),
        (status = 200, description = "some kept, some rejected", body = PartialSchema),
        crate::api::error::Refused,
        (status = 503, description = "busy; retry after `Retry-After`",
         body = crate::api::error::ErrorSchema)))]
pub(crate) async fn influx_v1_write(
    State(state): State<AppState>,
    Query(q): Query<InfluxV1Query>,
    authenticated: Option<Extension<Arc<ApiKey>>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let db = q
        .db
        .filter(|d| !d.is_empty())
        .ok_or_else(|| ApiError::bad_request("missing_db", "`db` (the dataset id) is required"))?;
    intake(
        &state,
        caller(&state, authenticated, &headers, q.p.as_deref()).await?,
        &db,
        Ok(Format::LineProtocol),
        q.precision.as_deref(),
        &headers,
        body,
    )
    .await
}

/// The request's key: the one the body middleware authenticated before reading the body,
/// or (a request without a body) authenticated here.
async fn caller(
    state: &AppState,
    authenticated: Option<Extension<Arc<ApiKey>>>,
    headers: &HeaderMap,
    query_secret: Option<&str>,
) -> Result<Arc<ApiKey>, ApiError> {
    match authenticated {
        Some(Extension(key)) => Ok(key),
        None => require_key(state, headers, query_secret).await,
    }
}

async fn intake(
    state: &AppState,
    key: Arc<ApiKey>,
    dataset: &str,
    format: Result<Format, ApiError>,
    precision: Option<&str>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let received_at = now_micros();
    let ds = state
        .registry
        .get(dataset)
        .ok_or_else(|| ApiError::NotFound(format!("no dataset `{dataset}`")))?;
    if !key.may_write(dataset) {
        return Err(ApiError::Forbidden(format!(
            "key {} may not write to dataset `{dataset}`",
            key.id
        )));
    }
    let format = format?;
    let precision = precision
        .map(|p| {
            Precision::parse(p).ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_precision",
                    format!("precision `{p}` is not ns, us, ms or s"),
                )
            })
        })
        .transpose()?;
    // Already read whole by the router's body middleware; this only takes it.
    let raw = crate::api::body::read(
        body,
        headers,
        state.http.max_body.as_usize(),
        state.http.request_timeout,
    )
    .await?;
    let body = decompress(state, headers, raw)?;
    let outcome = state
        .pipeline
        .ingest(
            &ds,
            &key.id,
            Batch {
                format,
                body,
                precision,
                received_at,
                sensor: None,
            },
        )
        .await?;
    answer(outcome)
}

/// [`Partial`] as the OpenAPI document names it.
#[derive(utoipa::ToSchema)]
#[schema(as = PartialAccept)]
#[allow(dead_code)]
pub(crate) struct PartialSchema {
    /// Readings kept.
    accepted: usize,
    /// The rejected readings (at most 1000), each with its position and reason.
    rejected: Vec<Rejected>,
    /// Readings rejected in all.
    rejected_count: usize,
}

#[derive(Serialize)]
struct Partial<'a> {
    accepted: usize,
    rejected: &'a [Rejected],
    rejected_count: usize,
}

fn answer(outcome: Outcome) -> Result<Response, ApiError> {
    if outcome.rejected.is_empty() {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    if outcome.accepted == 0 {
        return Err(ApiError::AllRejected(outcome.rejected));
    }
    let listed = &outcome.rejected[..outcome.rejected.len().min(MAX_LISTED_REJECTS)];
    Ok((
        StatusCode::OK,
        Json(Partial {
            accepted: outcome.accepted,
            rejected: listed,
            rejected_count: outcome.rejected.len(),
        }),
    )
        .into_response())
}

/// The body format of the citygate route, from `Content-Type` (JSON when absent).
fn format_of(headers: &HeaderMap) -> Result<Format, ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(Format::Json);
    };
    let essence = media_essence(value.to_str().unwrap_or(""));
    match essence.as_str() {
        "application/json" | "" => Ok(Format::Json),
        "application/x-ndjson"
        | "application/ndjson"
        | "application/jsonl"
        | "application/jsonlines"
        | "application/x-jsonlines" => Ok(Format::Ndjson),
        "application/senml+json" => Ok(Format::Senml),
        "text/plain" => Ok(Format::LineProtocol),
        other => Err(ApiError::UnsupportedMediaType(format!(
            "Content-Type `{other}` is not one of application/json, application/x-ndjson, \
             application/senml+json, text/plain (line protocol)"
        ))),
    }
}

/// Undoes `Content-Encoding: gzip`, bounded by `max_decompressed_body` (gzip bombs).
fn decompress(state: &AppState, headers: &HeaderMap, raw: Bytes) -> Result<Bytes, ApiError> {
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity")
        .trim()
        .to_ascii_lowercase();
    match encoding.as_str() {
        "identity" | "" => Ok(raw),
        "gzip" | "x-gzip" => {
            let max = state.http.max_decompressed_body.as_usize();
            let mut out = Vec::with_capacity((raw.len() * 4).min(max));
            flate2::read::MultiGzDecoder::new(&raw[..])
                .take(max as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| {
                    ApiError::bad_request("invalid_gzip", format!("the gzip body is corrupt: {e}"))
                })?;
            if out.len() > max {
                return Err(ApiError::PayloadTooLarge(format!(
                    "the body is larger than {} once decompressed",
                    state.http.max_decompressed_body
                )));
            }
            Ok(Bytes::from(out))
        }
        other => Err(ApiError::UnsupportedMediaType(format!(
            "Content-Encoding `{other}` is not supported (use gzip or none)"
        ))),
    }
}
