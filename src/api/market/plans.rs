//! Plans over HTTP: the plans on offer for a dataset, pricing one, withdrawing one.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;

use crate::api::AppState;
use crate::api::auth::require_key;
use crate::api::error::{ApiError, ApiJson};
use crate::market::plans::{NewPlan, Plan};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct PlansQuery {
    #[serde(default)]
    all: bool,
}

/// `GET /v1/catalog/{id}/plans`
#[utoipa::path(get, path = "/v1/catalog/{id}/plans", tag = "market",
    params(("id" = String, Path, description = "the dataset"), PlansQuery),
    responses((status = 200,
        description = "the plans on offer (`all`: withdrawn ones too, for its provider)",
        body = Vec<Plan>),
              crate::api::error::Refused))]
pub(crate) async fn list_plans(
    State(state): State<AppState>,
    Path(dataset): Path<String>,
    Query(q): Query<PlansQuery>,
    headers: HeaderMap,
) -> Result<Json<Vec<Plan>>, ApiError> {
    let store = &state.market;
    let d = store
        .catalog_dataset(&dataset)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no dataset `{dataset}`")))?;
    let all = if q.all {
        let key = require_key(&state, &headers, None).await?;
        if !key.may_administer(&d.spec.provider) {
            return Err(ApiError::NotFound(format!("no dataset `{dataset}`")));
        }
        true
    } else {
        false
    };
    Ok(Json(store.plans_of(&dataset, all).await?))
}

/// `POST /v1/catalog/{id}/plans`
#[utoipa::path(post, path = "/v1/catalog/{id}/plans", tag = "market", security(("bearer" = [])),
    params(("id" = String, Path, description = "the dataset")), request_body = NewPlan,
    responses((status = 201, description = "the plan", body = Plan),
              crate::api::error::Refused))]
pub(crate) async fn create_plan(
    State(state): State<AppState>,
    Path(dataset): Path<String>,
    headers: HeaderMap,
    ApiJson(new): ApiJson<NewPlan>,
) -> Result<(StatusCode, Json<Plan>), ApiError> {
    let key = require_key(&state, &headers, None).await?;
    let d = state
        .market
        .catalog_dataset(&dataset)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no dataset `{dataset}`")))?;
    if !key.may_administer(&d.spec.provider) {
        return Err(ApiError::NotFound(format!("no dataset `{dataset}`")));
    }
    let plan = state
        .market
        .create_plan(&dataset, new)
        .await
        .map_err(ApiError::invalid_as("invalid_plan"))?;
    Ok((StatusCode::CREATED, Json(plan)))
}

/// `DELETE /v1/plans/{id}`
#[utoipa::path(delete, path = "/v1/plans/{id}", tag = "market", security(("bearer" = [])),
    params(("id" = String, Path, description = "the plan")),
    responses((status = 200, description = "the plan, withdrawn (running subscriptions go on)",
        body = Plan),
              crate::api::error::Refused))]
pub(crate) async fn withdraw_plan(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Plan>, ApiError> {
    let key = require_key(&state, &headers, None).await?;
    let store = &state.market;
    let not_found = || ApiError::NotFound(format!("no plan `{id}`"));
    let plan = store.plan(&id).await?.ok_or_else(not_found)?;
    let owner = store
        .catalog_dataset(&plan.dataset)
        .await?
        .ok_or_else(not_found)?
        .spec
        .provider;
    if !key.may_administer(&owner) {
        return Err(not_found());
    }
    state.market.withdraw_plan(&id).await?;
    Ok(Json(store.plan(&id).await?.ok_or_else(not_found)?))
}
