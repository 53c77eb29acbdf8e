//! Entitlement over HTTP: what a key may have of a dataset.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;

use crate::api::AppState;
use crate::api::auth::require_key;
use crate::api::error::ApiError;
use crate::market::Grant;
use crate::model::now_micros;

/// `GET /v1/access/{dataset}`: what this key may have of a dataset, or 404.
#[utoipa::path(get, path = "/v1/access/{dataset}", tag = "market", security(("bearer" = [])),
    params(("dataset" = String, Path, description = "the dataset")),
    responses((status = 200, description = "what this key may have of the dataset", body = Grant),
              crate::api::error::Refused))]
pub(crate) async fn access(
    State(state): State<AppState>,
    Path(dataset): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Grant>, ApiError> {
    let key = require_key(&state, &headers, None).await?;
    state
        .market
        .entitlement(&key, &dataset, now_micros())
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no dataset `{dataset}` for this key")))
}
