//! The catalog over HTTP: public reading, DCAT-AP export, provider publishing.
//!
//! | route | who | what |
//! |---|---|---|
//! | `GET /v1/catalog?page=&per_page=` | anyone | datasets with licence, schema, live quality, plans |
//! | `GET /v1/catalog/{id}` | anyone | one dataset |
//! | `GET /v1/catalog.jsonld` | anyone | the catalog as DCAT-AP JSON-LD, for open-data portals |
//! | `POST /v1/catalog` | provider (own), admin | publish a dataset (the config's shape, as JSON) |
//! | `PATCH /v1/catalog/{id}` | its provider, admin | edit an API dataset's metadata |

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::AppState;
use super::auth::require_key;
use super::error::{ApiError, ApiJson};
use crate::calendar::format_rfc3339;
use crate::config::{DatasetConfig, UPDATE_FREQUENCIES};
use crate::market::KeyKind;
use crate::market::catalog::{DatasetPatch, Origin, StoredDataset};
use crate::market::plans::Plan;
use crate::model::{FieldSpec, Micros, now_micros};
use crate::registry::quality::QualitySnapshot;

/// A dataset as the catalog shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct CatalogItem {
    id: String,
    title: String,
    description: String,
    publisher: String,
    provider: String,
    licence: String,
    attribution: String,
    update_frequency: String,
    keywords: Vec<String>,
    origin: Origin,
    schema_version: u32,
    fields: Vec<FieldSpec>,
    created_at: Micros,
    updated_at: Micros,
    quality: QualitySnapshot,
    /// The plans on offer.
    plans: Vec<Plan>,
}

fn item(state: &AppState, d: StoredDataset, plans: Vec<Plan>, now: Micros) -> CatalogItem {
    let quality = state
        .registry
        .get(&d.spec.id)
        .map(|p| p.quality.snapshot(now))
        .unwrap_or_default();
    let s = d.spec;
    CatalogItem {
        id: s.id,
        title: s.title,
        description: s.description,
        publisher: s.publisher,
        provider: s.provider,
        licence: s.licence,
        attribution: s.attribution,
        update_frequency: s.update_frequency,
        keywords: s.keywords,
        origin: d.origin,
        schema_version: s.schema_version,
        fields: s.fields,
        created_at: d.created_at,
        updated_at: d.updated_at,
        quality,
        plans,
    }
}

/// The plans on offer, by dataset.
async fn offered_plans(state: &AppState) -> Result<HashMap<String, Vec<Plan>>, ApiError> {
    let mut by_dataset: HashMap<String, Vec<Plan>> = HashMap::new();
    for plan in state.catalog.offered_plans().await? {
        by_dataset
            .entry(plan.dataset.clone())
            .or_default()
            .push(plan);
    }
    Ok(by_dataset)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct PageQuery {
    /// From 1.
    page: Option<usize>,
    /// 1 to 200 (default 50).
    per_page: Option<usize>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct CatalogPage {
    items: Vec<CatalogItem>,
    page: usize,
    per_page: usize,
    total: usize,
}

pub(crate) const MAX_PER_PAGE: usize = 200;

/// `GET /v1/catalog`
#[utoipa::path(get, operation_id = "list_catalog", path = "/v1/catalog", tag = "catalog",
    params(PageQuery),
    responses((status = 200, description = "one page of the catalog", body = CatalogPage),
              crate::api::error::Refused))]
pub(crate) async fn list(
    State(state): State<AppState>,
    Query(q): Query<PageQuery>,
) -> Result<Json<CatalogPage>, ApiError> {
    let page = q.page.unwrap_or(1);
    let per_page = q.per_page.unwrap_or(50);
    if page == 0 || per_page == 0 || per_page > MAX_PER_PAGE {
        return Err(ApiError::bad_request(
            "invalid_page",
            format!("page counts from 1; per_page is 1 to {MAX_PER_PAGE}"),
        ));
    }
    let all = state.catalog.catalog().await?;
    let total = all.len();
    let now = now_micros();
    let mut plans = offered_plans(&state).await?;
    let items = all
        .into_iter()
        .skip((page - 1).saturating_mul(per_page))
        .take(per_page)
        .map(|d| {
            let offered = plans.remove(&d.spec.id).unwrap_or_default();
            item(&state, d, offered, now)
        })
        .collect();
    Ok(Json(CatalogPage {
        items,
        page,
        per_page,
        total,
    }))
}

/// `GET /v1/catalog/{id}`
#[utoipa::path(get, operation_id = "show_catalog_dataset", path = "/v1/catalog/{id}",
    tag = "catalog",
    params(("id" = String, Path, description = "the dataset")),
    responses((status = 200, description = "the dataset", body = CatalogItem),
              crate::api::error::Refused))]
pub(crate) async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<CatalogItem>, ApiError> {
    let d = state
        .catalog
        .catalog_dataset(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no dataset `{id}`")))?;
    let plans = state.catalog.plans_of(&id, false).await?;
    Ok(Json(item(&state, d, plans, now_micros())))
}

/// Sensor positions the public sees at most per dataset.
const POSITIONS_MAX: usize = 10_000;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct SensorPositions {
    dataset: String,
    /// `[longitude, latitude]` of each sensor whose last reading had a position, in no
    /// particular order; no sensor ids, no values.
    positions: Vec<[f64; 2]>,
    /// False when these are not all (at most 10 000 are given, or the gateway has only
    /// just started).
    complete: bool,
}

/// `GET /v1/catalog/{id}/sensors`: where the dataset's sensors are, for anyone (the
/// catalog's map); what they measure is the plans' to give.
#[utoipa::path(get, operation_id = "catalog_sensor_positions", path = "/v1/catalog/{id}/sensors",
    tag = "catalog",
    params(("id" = String, Path, description = "the dataset")),
    responses((status = 200, description = "the sensors' last positions", body = SensorPositions),
              crate::api::error::Refused))]
pub(crate) async fn sensors(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<SensorPositions>, ApiError> {
    state
        .catalog
        .catalog_dataset(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no dataset `{id}`")))?;
    let (positions, complete) = state.query.hot.positions(&id, POSITIONS_MAX);
    Ok(Json(SensorPositions {
        dataset: id,
        positions,
        complete,
    }))
}

/// `POST /v1/catalog`: the body is a dataset declaration as in the config file (JSON);
/// `provider` defaults to the caller's account, `publisher` to its name.
#[utoipa::path(post, operation_id = "create_dataset", path = "/v1/catalog", tag = "catalog",
    security(("bearer" = [])),
    request_body(content = Object, description = "a dataset declaration, as in the config file"),
    responses((status = 201, description = "published", body = CatalogItem),
              crate::api::error::Refused))]
pub(crate) async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(mut body): ApiJson<Value>,
) -> Result<(StatusCode, Json<CatalogItem>), ApiError> {
    let key = require_key(&state, &headers, None).await?;
    let store = &state.catalog;
    let Some(obj) = body.as_object_mut() else {
        return Err(ApiError::bad_request(
            "invalid_dataset",
            "the body is a JSON object declaring the dataset",
        ));
    };
    match key.kind {
        KeyKind::Provider if key.is_live(now_micros()) => {
            let provider = obj
                .entry("provider")
                .or_insert_with(|| json!(key.account.clone()));
            if provider != &json!(key.account) {
                return Err(ApiError::Forbidden(
                    "a provider publishes datasets under its own account".into(),
                ));
            }
        }
        KeyKind::Admin if key.is_admin() => {}
        _ => {
            return Err(ApiError::Forbidden(
                "only a provider (or an admin) publishes datasets".into(),
            ));
        }
    }
    if !obj.contains_key("publisher")
        && let Some(provider) = obj.get("provider").and_then(Value::as_str)
        && let Some(account) = store.account(provider).await?
    {
        obj.insert("publisher".into(), json!(account.name));
    }
    let spec: DatasetConfig = serde_path_to_error::deserialize(body).map_err(|e| {
        let path = e.path().to_string();
        ApiError::bad_request(
            "invalid_dataset",
            format!("dataset.{path}: {}", e.into_inner()),
        )
    })?;
    // Each dataset costs a sink and a share of every log record: providers get a bounded
    // number (an admin is not limited).
    let limit = (!key.is_admin()).then_some(state.max_datasets_per_provider);
    let stored = state
        .catalog
        .create(spec, limit)
        .await
        .map_err(ApiError::invalid_as("invalid_dataset"))?;
    Ok((
        StatusCode::CREATED,
        Json(item(&state, stored, Vec::new(), now_micros())),
    ))
}

/// `PATCH /v1/catalog/{id}`
#[utoipa::path(patch, operation_id = "update_dataset", path = "/v1/catalog/{id}", tag = "catalog",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "the dataset")),
    request_body = DatasetPatch,
    responses((status = 200, description = "updated", body = CatalogItem),
              crate::api::error::Refused))]
pub(crate) async fn update(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiJson(patch): ApiJson<DatasetPatch>,
) -> Result<Json<CatalogItem>, ApiError> {
    let key = require_key(&state, &headers, None).await?;
    let store = &state.catalog;
    let not_found = || ApiError::NotFound(format!("no dataset `{id}`"));
    let current = store.catalog_dataset(&id).await?.ok_or_else(not_found)?;
    if !key.may_administer(&current.spec.provider) {
        return Err(not_found());
    }
    let stored = store
        .update_dataset(&id, patch)
        .await
        .map_err(ApiError::invalid_as("invalid_dataset"))?;
    let plans = store.plans_of(&id, false).await?;
    Ok(Json(item(&state, stored, plans, now_micros())))
}

/// The base URL of links in exports: `[http] public_url`, else the address the server
/// listens on (filled in at start), never the client's `Host`.
pub(crate) fn base_url(state: &AppState) -> String {
    state.http.public_url.trim_end_matches('/').to_string()
}

/// `GET /v1/catalog.jsonld`: DCAT-AP 2 JSON-LD.
#[utoipa::path(get, operation_id = "catalog_jsonld", path = "/v1/catalog.jsonld", tag = "catalog",
    responses((status = 200, description = "DCAT-AP 2", body = Object,
               content_type = "application/ld+json")))]
pub(crate) async fn jsonld(State(state): State<AppState>) -> Result<Response, ApiError> {
    let base = base_url(&state);
    let datasets: Vec<Value> = state
        .catalog
        .catalog()
        .await?
        .into_iter()
        .map(|d| dcat_dataset(&base, &d))
        .collect();
    let doc = json!({
        "@context": {
            "dcat": "http://www.w3.org/ns/dcat#",
            "dct": "http://purl.org/dc/terms/",
            "foaf": "http://xmlns.com/foaf/0.1/",
            "xsd": "http://www.w3.org/2001/XMLSchema#"
        },
        "@id": format!("{base}/v1/catalog"),
        "@type": "dcat:Catalog",
        "dct:title": "citygate city data catalog",
        "dct:description": "Live city sensor datasets: real-time subscriptions and recent history.",
        "dct:publisher": {"@type": "foaf:Agent", "foaf:name": "citygate"},
        "foaf:homepage": {"@id": format!("{base}/v1/catalog")},
        "dcat:dataset": datasets,
    });
    Ok(([(header::CONTENT_TYPE, "application/ld+json")], Json(doc)).into_response())
}

fn dcat_dataset(base: &str, d: &StoredDataset) -> Value {
    let s = &d.spec;
    let frequency = UPDATE_FREQUENCIES
        .iter()
        .find(|(name, _)| *name == s.update_frequency)
        .map_or("UNKNOWN", |(_, code)| code);
    let licence = if s.licence.eq_ignore_ascii_case("commercial") {
        json!({"@type": "dct:LicenseDocument", "dct:title": "commercial: terms on subscription"})
    } else {
        json!({"@id": format!("https://spdx.org/licenses/{}", s.licence)})
    };
    let page = format!("{base}/v1/catalog/{}", s.id);
    let mut dataset = json!({
        "@id": page,
        "@type": "dcat:Dataset",
        "dct:identifier": s.id,
        "dct:title": s.title,
        "dct:description": s.description,
        "dct:publisher": {"@type": "foaf:Agent", "foaf:name": s.publisher},
        "dct:license": licence,
        "dcat:keyword": s.keywords,
        "dct:accrualPeriodicity": {
            "@id": format!("http://publications.europa.eu/resource/authority/frequency/{frequency}")
        },
        "dct:issued": {"@value": format_rfc3339(d.created_at), "@type": "xsd:dateTime"},
        "dct:modified": {"@value": format_rfc3339(d.updated_at), "@type": "xsd:dateTime"},
        "dcat:landingPage": {"@id": page},
        "dcat:distribution": [{
            "@type": "dcat:Distribution",
            "dct:title": format!("{} (JSON API)", s.title),
            "dcat:accessURL": {"@id": page},
            "dcat:mediaType": {"@id": "https://www.iana.org/assignments/media-types/application/json"},
            "dct:license": licence,
        }],
    });
    if !s.attribution.is_empty() {
        dataset["dct:rights"] = json!({"@type": "dct:RightsStatement", "dct:title": s.attribution});
    }
    dataset
}
