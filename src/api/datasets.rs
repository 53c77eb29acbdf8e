//! Dataset endpoints: the public list and schema (so device makers know what to send), and
//! what a provider reads to see what its devices get wrong: the recent rejects, and the last
//! hour minute by minute.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::AppState;
use super::auth::require_key;
use super::error::ApiError;
use crate::market::ApiKey;
use crate::model::{Reason, now_micros};
use crate::registry::DatasetEntry;
use crate::registry::quality::{QualityMinute, QualitySnapshot, ReasonCount};
use crate::registry::rejects::RejectRecord;

fn describe(p: &DatasetEntry) -> Value {
    let ds = &p.dataset;
    let rejected: u64 = Reason::ALL
        .iter()
        .map(|r| p.metrics.rejected(*r).get())
        .sum();
    json!({
        "id": ds.id,
        "title": ds.title,
        "description": ds.description,
        "publisher": ds.publisher,
        "provider": ds.provider,
        "licence": ds.licence,
        "schema_version": ds.schema_version,
        "fields": ds.fields,
        "reject_unknown_fields": ds.reject_unknown_fields,
        "timestamp_window": {
            "max_future": humantime::format_duration(ds.max_future).to_string(),
            "max_age": humantime::format_duration(ds.max_age).to_string(),
        },
        "rate_limit_per_device": ds.rate_limit,
        "intake": {
            "json": format!("/v1/datasets/{}/readings", ds.id),
            "influx_v2": format!("/api/v2/write?bucket={}", ds.id),
            "influx_v1": format!("/write?db={}", ds.id),
        },
        "since_start": {
            "readings_accepted": p.metrics.accepted.get(),
            "readings_rejected": rejected,
        },
    })
}

/// Every dataset this gateway takes in, with its schema and where to send readings.
#[utoipa::path(get, operation_id = "list_datasets", path = "/v1/datasets", tag = "datasets",
    responses((status = 200, description = "`{\"datasets\": [...]}`", body = Object)))]
pub(crate) async fn list(State(state): State<AppState>) -> Json<Value> {
    let all: Vec<Value> = state
        .registry
        .all()
        .into_iter()
        .map(|p| describe(&p))
        .collect();
    Json(json!({ "datasets": all }))
}

/// One dataset's schema, limits and intake addresses.
#[utoipa::path(get, operation_id = "show_dataset", path = "/v1/datasets/{id}", tag = "datasets",
    params(("id" = String, Path, description = "the dataset")),
    responses((status = 200, description = "the dataset", body = Object),
              crate::api::error::Refused))]
pub(crate) async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let p = state
        .registry
        .get(&id)
        .ok_or_else(|| ApiError::NotFound(format!("no dataset `{id}`")))?;
    Ok(Json(describe(&p)))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct RejectsQuery {
    /// At most this many (default 100).
    limit: Option<usize>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct RejectsPage {
    dataset: String,
    /// Rejects since start, by reason.
    counts: Vec<ReasonCount>,
    /// The most recent rejects, newest first.
    recent: Vec<RejectRecord>,
}

/// `GET /v1/datasets/{id}/rejects`: for the dataset's provider.
#[utoipa::path(get, path = "/v1/datasets/{id}/rejects", tag = "datasets", security(("bearer" = [])),
    params(("id" = String, Path, description = "the dataset"), RejectsQuery),
    responses((status = 200, description = "counts by reason and the newest rejects",
        body = RejectsPage),
              crate::api::error::Refused))]
pub(crate) async fn rejects(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<RejectsQuery>,
    headers: HeaderMap,
) -> Result<Json<RejectsPage>, ApiError> {
    let key = require_key(&state, &headers, None).await?;
    let p = provided(&state, &key, &id, "rejects")?;
    let counts = Reason::ALL
        .iter()
        .map(|&reason| ReasonCount {
            reason,
            count: p.metrics.rejected(reason).get(),
        })
        .filter(|c| c.count > 0)
        .collect();
    Ok(Json(RejectsPage {
        dataset: id,
        counts,
        recent: p.rejects.recent(q.limit.unwrap_or(100)),
    }))
}

/// Dataset `id` for its provider (or an admin). Rejects and intake figures name sensors and
/// keys: another provider's are not there to see, as the market answers for what a key may
/// not see.
fn provided(
    state: &AppState,
    key: &ApiKey,
    id: &str,
    what: &str,
) -> Result<std::sync::Arc<DatasetEntry>, ApiError> {
    state
        .registry
        .get(id)
        .filter(|p| key.may_administer(&p.dataset.provider))
        .ok_or_else(|| ApiError::NotFound(format!("no {what} of `{id}` for this key")))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct QualityPage {
    dataset: String,
    /// The hour's figures, as the catalog shows them.
    last_hour: QualitySnapshot,
    /// The same hour minute by minute, oldest first.
    minutes: Vec<QualityMinute>,
}

/// `GET /v1/datasets/{id}/quality`: for the dataset's provider.
#[utoipa::path(get, path = "/v1/datasets/{id}/quality", tag = "datasets", security(("bearer" = [])),
    params(("id" = String, Path, description = "the dataset")),
    responses((status = 200, description = "the last hour minute by minute: readings \
        accepted, sensors heard from, rejects by reason", body = QualityPage),
              crate::api::error::Refused))]
pub(crate) async fn quality(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<QualityPage>, ApiError> {
    let key = require_key(&state, &headers, None).await?;
    let p = provided(&state, &key, &id, "intake figures")?;
    let now = now_micros();
    Ok(Json(QualityPage {
        dataset: id,
        last_hour: p.quality.snapshot(now),
        minutes: p.quality.minutes(now),
    }))
}
