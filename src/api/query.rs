//! History queries over HTTP: raw readings, the latest per sensor, time buckets.
//!
//! | route | what |
//! |---|---|
//! | `GET /v1/datasets/{id}/history?from=&to=&sensors=&bbox=&fields=&limit=&cursor=&order=` | raw readings in time order, a page at a time |
//! | `GET /v1/datasets/{id}/latest?sensors=&bbox=&fields=` | the last reading of every sensor |
//! | `GET /v1/datasets/{id}/aggregate?from=&to=&every=&fn=&group_by=&fields=&sensors=&bbox=` | time buckets |
//!
//! The key goes in `Authorization` (never in the URL). The marketplace decides as for live
//! feeds: a dataset the key may not have answers 404; a delayed plan sees nothing younger
//! than its delay, on every route; an aggregate plan gets buckets of at least its window and
//! no raw readings; a plan's history term bounds how far back `from` may reach (403 past
//! it). Rows returned are metered to the subscription, apart from live deliveries. Answers
//! are JSON (default), NDJSON, CSV, an Arrow IPC stream or a Parquet file, by `Accept` or
//! `format=`;
//! a page that has a next one says so in `next` (JSON) and in a `Link: <…>; rel="next"`
//! header (every format). Each query first waits until every reading acknowledged before
//! it is visible (read your writes).

use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value as Json};

use super::AppState;
use super::auth::require_key;
use super::error::ApiError;
use crate::feed::session::Filter;
use crate::market::Grant;
use crate::model::{Dataset, FieldType, Micros, now_micros};
use crate::pipeline::decode::time::parse_rfc3339;
use crate::pipeline::limit::{LimitError, LimitKey};
use crate::query::aggregate::{Func, Spec};
use crate::query::output::{Format, Table};
use crate::query::{Cursor, Order, QueryError, Selection};

/// The range `history` and `aggregate` read when `from` is not given.
const DEFAULT_SPAN: Micros = 3_600_000_000;
/// Readings per page when `limit` is not given.
const DEFAULT_LIMIT: usize = 1000;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct HistoryQuery {
    /// Start, inclusive (RFC 3339; default an hour before `to`).
    from: Option<String>,
    /// End, exclusive (RFC 3339; default now).
    to: Option<String>,
    /// Only these sensors: `a,b`.
    sensors: Option<String>,
    /// Only readings within `min_lon,min_lat,max_lon,max_lat`.
    bbox: Option<String>,
    /// Only these fields: `a,b` (default every field).
    fields: Option<String>,
    /// Readings per page (default 1000, at most `[query] max_rows`).
    limit: Option<usize>,
    /// Where the previous page ended (its `next`).
    cursor: Option<String>,
    /// `asc` (default) or `desc`.
    order: Option<String>,
    /// `json`, `ndjson`, `csv`, `arrow` or `parquet` (instead of `Accept`).
    format: Option<String>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct LatestQuery {
    sensors: Option<String>,
    bbox: Option<String>,
    fields: Option<String>,
    format: Option<String>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct AggregateQuery {
    from: Option<String>,
    to: Option<String>,
    /// Bucket length: `15m`, `1h`, `1d` (buckets start at multiples of it since the epoch).
    every: String,
    /// Functions: `count,mean,min,max,sum,first,last` (default `count,mean,min,max`).
    #[serde(rename = "fn")]
    fns: Option<String>,
    /// `sensor` (default: a bucket per sensor) or `none` (one for all).
    group_by: Option<String>,
    /// Numeric fields (default every numeric field).
    fields: Option<String>,
    sensors: Option<String>,
    bbox: Option<String>,
    format: Option<String>,
}

fn bad(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::bad_request(code, message)
}

fn format_of(headers: &HeaderMap, format: Option<&str>) -> Result<Format, ApiError> {
    if let Some(name) = format {
        return Format::parse(name).ok_or_else(|| {
            bad(
                "invalid_format",
                format!("format: `{name}` is not one of {}", Format::NAMES),
            )
        });
    }
    match headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) {
        None => Ok(Format::Json),
        Some(accept) => Format::from_accept(accept).ok_or_else(|| {
            ApiError::NotAcceptable(format!(
                "Accept: `{accept}` names none of application/json, application/x-ndjson, text/csv, \
                 application/vnd.apache.arrow.stream, application/vnd.apache.parquet"
            ))
        }),
    }
}

fn time(name: &str, text: Option<&str>) -> Result<Option<Micros>, ApiError> {
    text.map(|t| {
        parse_rfc3339(t).ok_or_else(|| {
            bad(
                "invalid_time",
                format!("{name}: `{t}` is not an RFC 3339 time like 2026-11-30T12:00:00Z"),
            )
        })
    })
    .transpose()
}

/// The fields asked for (schema position, name, type): all, or those named.
fn fields_of(
    ds: &Dataset,
    names: Option<&str>,
    numeric: bool,
) -> Result<Vec<(usize, String, FieldType)>, ApiError> {
    let Some(names) = names else {
        return Ok(ds
            .fields
            .iter()
            .enumerate()
            .filter(|(_, f)| !numeric || f.ty.is_numeric())
            .map(|(i, f)| (i, f.name.clone(), f.ty))
            .collect());
    };
    let mut out = Vec::new();
    for name in names.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let Some(i) = ds.field_index(name) else {
            return Err(bad(
                "unknown_field",
                format!("fields: `{name}` is not a field of `{}`", ds.id),
            ));
        };
        if numeric && !ds.fields[i].ty.is_numeric() {
            return Err(bad(
                "invalid_field",
                format!("fields: `{name}` is not numeric and has no aggregates"),
            ));
        }
        if !out.iter().any(|(j, _, _)| *j == i) {
            out.push((i, name.to_string(), ds.fields[i].ty));
        }
    }
    if out.is_empty() {
        return Err(bad("invalid_field", "fields: name at least one field"));
    }
    Ok(out)
}

/// What the key may have of the dataset (404 if nothing), and the dataset; a key past its
/// query allowance is answered 429 first.
async fn entitled(
    state: &AppState,
    headers: &HeaderMap,
    id: &str,
) -> Result<(Grant, std::sync::Arc<Dataset>), ApiError> {
    let key = require_key(state, headers, None).await?;
    let limit_key: LimitKey = key.id.clone();
    if let Err(LimitError::Exceeded { retry_after }) = state.query.limiter.check(&limit_key, 1) {
        return Err(ApiError::RateLimited(retry_after));
    }
    let not_found = || ApiError::NotFound(format!("no dataset `{id}` for this key"));
    let grant = state
        .market
        .entitlement(&key, id, now_micros())
        .await?
        .ok_or_else(not_found)?;
    let entry = state.registry.get(id).ok_or_else(not_found)?;
    Ok((grant, entry.dataset.clone()))
}

/// The plan's aggregation window, if it gives only aggregates.
fn aggregate_window(grant: &Grant) -> Option<Duration> {
    grant
        .aggregate
        .as_deref()
        .and_then(|a| humantime::parse_duration(a).ok())
}

fn raw_allowed(grant: &Grant) -> Result<(), ApiError> {
    match &grant.aggregate {
        Some(window) => Err(ApiError::Forbidden(format!(
            "this plan gives aggregates over {window} or more, not single readings: ask \
             /aggregate with every={window} or longer"
        ))),
        None => Ok(()),
    }
}

/// `[from, to)` from the parameters, checked, with the plan's delay applied to `to`.
fn range(
    state: &AppState,
    grant: &Grant,
    from: Option<&str>,
    to: Option<&str>,
) -> Result<(Micros, Micros), ApiError> {
    let now = now_micros();
    let earliest = grant
        .history
        .map(|reach| now.saturating_sub(reach.as_micros().min(i64::MAX as u128) as Micros));
    let to = time("to", to)?.unwrap_or(now);
    let asked_from = time("from", from)?;
    // Unasked, `from` is an hour back, or as far as the plan reaches if that is less.
    let from =
        asked_from.unwrap_or_else(|| (to - DEFAULT_SPAN).max(earliest.unwrap_or(Micros::MIN)));
    if from >= to {
        return Err(bad("invalid_range", "from: must be before `to`"));
    }
    let max = state.query.config.max_range;
    if (to - from) as u128 > max.as_micros() {
        return Err(bad(
            "range_too_long",
            format!(
                "from..to spans more than {} ([query] max_range): ask in parts",
                humantime::format_duration(max)
            ),
        ));
    }
    if let (Some(reach), Some(earliest)) = (grant.history, earliest)
        && from < earliest
    {
        return Err(ApiError::Forbidden(format!(
            "this plan's history reaches back {} (to {}): ask from= at or after that",
            humantime::format_duration(reach),
            crate::calendar::format_rfc3339(earliest)
        )));
    }
    let visible = now - grant.delay.as_micros() as Micros;
    Ok((from, to.min(visible)))
}

fn selection(
    ds: std::sync::Arc<Dataset>,
    (from, to): (Micros, Micros),
    sensors: Option<&str>,
    bbox: Option<&str>,
) -> Result<Selection, ApiError> {
    let filter = Filter::parse(sensors, bbox).map_err(|m| bad("invalid_filter", m))?;
    Ok(Selection {
        dataset: ds,
        from,
        to,
        filter,
    })
}

/// Waits for the hot store to hold every acknowledged reading, and for a query slot.
async fn ready(state: &AppState) -> Result<tokio::sync::SemaphorePermit<'_>, ApiError> {
    let busy = |what: &str| ApiError::Unavailable {
        message: format!("{what}; try again shortly"),
        retry_after: 1,
    };
    if !state.query.hot.catch_up(Duration::from_secs(5)).await {
        return Err(busy("the history is catching up with the log"));
    }
    tokio::time::timeout(Duration::from_secs(5), state.query.permits.acquire())
        .await
        .map_err(|_| busy("every query slot is taken"))?
        .map_err(|_| busy("shutting down"))
}

fn failed(e: QueryError) -> ApiError {
    tracing::error!(error = %e, "history query failed");
    ApiError::Internal(e.to_string())
}

async fn timed<T>(
    state: &AppState,
    work: impl std::future::Future<Output = Result<T, QueryError>>,
) -> Result<T, ApiError> {
    let limit = state.query.config.timeout;
    match tokio::time::timeout(limit, work).await {
        Ok(r) => r.map_err(failed),
        Err(_) => Err(ApiError::Unavailable {
            message: format!(
                "the query took longer than {} ([query] timeout): ask a shorter range",
                humantime::format_duration(limit)
            ),
            retry_after: 1,
        }),
    }
}

/// The answer, metered to the subscription behind it (rows and bytes, apart from live
/// deliveries).
fn respond(
    state: &AppState,
    (grant, dataset, route): (&Grant, &str, &str),
    table: &Table,
    format: Format,
    extra: Map<String, Json>,
    next: Option<String>,
) -> Result<Response, ApiError> {
    let key = if route == "aggregate" {
        "buckets"
    } else {
        "readings"
    };
    let body = table.write(format, key, extra).map_err(|e| {
        tracing::error!(error = %e, "a history answer could not be written");
        ApiError::Internal(e)
    })?;
    state.metrics.query().returned(route, table.rows.len());
    if let Some(subscription) = &grant.subscription {
        state
            .market
            .usage()
            .record_query(subscription, table.rows.len() as u64, body.len() as u64);
    }
    let mut response = ([(header::CONTENT_TYPE, format.content_type())], body).into_response();
    if let Some(ext) = format.attachment() {
        let disposition = format!("attachment; filename=\"{dataset}-{route}.{ext}\"");
        if let Ok(value) = HeaderValue::from_str(&disposition) {
            response
                .headers_mut()
                .insert(header::CONTENT_DISPOSITION, value);
        }
    }
    if let Some(link) = next.and_then(|l| HeaderValue::from_str(&l).ok()) {
        response.headers_mut().insert(header::LINK, link);
    }
    Ok(response)
}

/// The request's own URL with `cursor` set to the next page's.
fn next_link(uri: &Uri, cursor: &str) -> String {
    let mut query: Vec<String> = uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty() && !p.starts_with("cursor="))
        .map(str::to_string)
        .collect();
    query.push(format!("cursor={cursor}"));
    format!("<{}?{}>; rel=\"next\"", uri.path(), query.join("&"))
}

/// `GET /v1/datasets/{id}/history`
#[utoipa::path(get, path = "/v1/datasets/{id}/history", tag = "query", security(("bearer" = [])),
    params(("id" = String, Path, description = "the dataset"), HistoryQuery),
    responses((status = 200,
        description = "raw readings in time order: `{readings, next}` (JSON), one per line \
                       (NDJSON) or a table (CSV); `Link: <…>; rel=\"next\"` when more follow",
        content((Object = "application/json"), (String = "application/x-ndjson"),
                (String = "text/csv"), (Vec<u8> = "application/vnd.apache.arrow.stream"),
                (Vec<u8> = "application/vnd.apache.parquet"))),
              crate::api::error::Refused,
              (status = 503, description = "busy; retry after `Retry-After`",
               body = crate::api::error::ErrorSchema)))]
pub(crate) async fn history(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<HistoryQuery>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let format = format_of(&headers, q.format.as_deref())?;
    let (grant, ds) = entitled(&state, &headers, &id).await?;
    raw_allowed(&grant)?;
    let fields = fields_of(&ds, q.fields.as_deref(), false)?;
    let order = match q.order.as_deref() {
        None | Some("asc") => Order::Asc,
        Some("desc") => Order::Desc,
        Some(o) => {
            return Err(bad(
                "invalid_order",
                format!("order: `{o}` is not asc or desc"),
            ));
        }
    };
    let max = state.query.config.max_rows;
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT.min(max));
    if limit == 0 || limit > max {
        return Err(bad(
            "invalid_limit",
            format!("limit: {limit} is not between 1 and {max} ([query] max_rows)"),
        ));
    }
    let range = range(&state, &grant, q.from.as_deref(), q.to.as_deref())?;
    let sel = selection(ds, range, q.sensors.as_deref(), q.bbox.as_deref())?;
    let cursor = match q.cursor.as_deref() {
        None => None,
        Some(text) => Some(
            Cursor::decode(text)
                .filter(|c| c.order == order && c.query == Cursor::query_of(&sel, order))
                .ok_or_else(|| {
                    bad(
                        "invalid_cursor",
                        "cursor: not one this route gave for this dataset, order and filter",
                    )
                })?,
        ),
    };
    let _permit = ready(&state).await?;
    let page = if sel.from < sel.to {
        timed(
            &state,
            state.query.history(&sel, order, limit, cursor.as_ref()),
        )
        .await?
    } else {
        crate::query::Page {
            rows: Vec::new(),
            next: None,
        }
    };
    let next = page.next.as_ref().map(Cursor::encode);
    let mut extra = Map::new();
    extra.insert("dataset".into(), Json::String(id.clone()));
    extra.insert("next".into(), next.clone().map_or(Json::Null, Json::String));
    let link = next.map(|c| next_link(&uri, &c));
    let table = Table::readings(&page.rows, &fields);
    respond(
        &state,
        (&grant, &id, "history"),
        &table,
        format,
        extra,
        link,
    )
}

/// `GET /v1/datasets/{id}/latest`
#[utoipa::path(get, path = "/v1/datasets/{id}/latest", tag = "query", security(("bearer" = [])),
    params(("id" = String, Path, description = "the dataset"), LatestQuery),
    responses((status = 200,
        description = "the last reading of every sensor (within `[query] latest_lookback`), by \
                       sensor id",
        content((Object = "application/json"), (String = "application/x-ndjson"),
                (String = "text/csv"), (Vec<u8> = "application/vnd.apache.arrow.stream"),
                (Vec<u8> = "application/vnd.apache.parquet"))),
              crate::api::error::Refused,
              (status = 503, description = "busy; retry after `Retry-After`",
               body = crate::api::error::ErrorSchema)))]
pub(crate) async fn latest(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<LatestQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let format = format_of(&headers, q.format.as_deref())?;
    let (grant, ds) = entitled(&state, &headers, &id).await?;
    raw_allowed(&grant)?;
    let fields = fields_of(&ds, q.fields.as_deref(), false)?;
    let now = now_micros();
    let to = now - grant.delay.as_micros() as Micros;
    let lookback = state.query.config.latest_lookback.as_micros() as Micros;
    // Back from what the plan shows now, no further than its history term reaches.
    let earliest = grant.history.map_or(Micros::MIN, |reach| {
        now - reach.as_micros().min(i64::MAX as u128) as Micros
    });
    let from = (to - lookback).max(earliest);
    let sel = selection(ds, (from, to), q.sensors.as_deref(), q.bbox.as_deref())?;
    let _permit = ready(&state).await?;
    let rows = timed(&state, state.query.latest(&sel)).await?;
    let mut extra = Map::new();
    extra.insert("dataset".into(), Json::String(id.clone()));
    let table = Table::readings(&rows, &fields);
    respond(&state, (&grant, &id, "latest"), &table, format, extra, None)
}

/// `GET /v1/datasets/{id}/aggregate`
#[utoipa::path(get, path = "/v1/datasets/{id}/aggregate", tag = "query", security(("bearer" = [])),
    params(("id" = String, Path, description = "the dataset"), AggregateQuery),
    responses((status = 200,
        description = "time buckets: `bucket` (start), `sensor_id` (grouped by sensor), then \
                       `{field}_{fn}` per field and function",
        content((Object = "application/json"), (String = "application/x-ndjson"),
                (String = "text/csv"), (Vec<u8> = "application/vnd.apache.arrow.stream"),
                (Vec<u8> = "application/vnd.apache.parquet"))),
              crate::api::error::Refused,
              (status = 503, description = "busy; retry after `Retry-After`",
               body = crate::api::error::ErrorSchema)))]
pub(crate) async fn aggregate(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<AggregateQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let format = format_of(&headers, q.format.as_deref())?;
    let (grant, ds) = entitled(&state, &headers, &id).await?;
    let every = humantime::parse_duration(&q.every)
        .ok()
        .filter(|d| d.as_micros() >= 1)
        .ok_or_else(|| {
            bad(
                "invalid_every",
                format!("every: `{}` is not a duration like 15m, 1h or 1d", q.every),
            )
        })?;
    if let Some(window) = aggregate_window(&grant)
        && every < window
    {
        return Err(ApiError::Forbidden(format!(
            "this plan gives aggregates over {} or more: ask every={} or longer",
            humantime::format_duration(window),
            humantime::format_duration(window)
        )));
    }
    let fns = match q.fns.as_deref() {
        None => vec![Func::Count, Func::Mean, Func::Min, Func::Max],
        Some(list) => {
            let mut fns = Vec::new();
            for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                let f = Func::parse(name).ok_or_else(|| {
                    bad(
                        "invalid_fn",
                        format!(
                            "fn: `{name}` is not one of count, mean, min, max, sum, first, last"
                        ),
                    )
                })?;
                if !fns.contains(&f) {
                    fns.push(f);
                }
            }
            if fns.is_empty() {
                return Err(bad("invalid_fn", "fn: name at least one function"));
            }
            fns
        }
    };
    let by_sensor = match q.group_by.as_deref() {
        None | Some("sensor") => true,
        Some("none") => false,
        Some(g) => {
            return Err(bad(
                "invalid_group_by",
                format!("group_by: `{g}` is not sensor or none"),
            ));
        }
    };
    let fields = fields_of(&ds, q.fields.as_deref(), true)?;
    if fields.is_empty() {
        return Err(bad(
            "invalid_field",
            format!("`{}` has no numeric field to aggregate", ds.id),
        ));
    }
    let mut range = range(&state, &grant, q.from.as_deref(), q.to.as_deref())?;
    let every_us = every.as_micros().min(i64::MAX as u128) as Micros;
    if grant.aggregate.is_some() {
        // Whole, finished buckets only: a range cut inside a bucket, or a bucket still
        // filling, would show single readings to a plan that pays for aggregates.
        range.0 = range.0.saturating_add(every_us - 1).div_euclid(every_us) * every_us;
        range.1 = range.1.div_euclid(every_us) * every_us;
    }
    let max = state.query.config.max_rows;
    let buckets = (range.1 - range.0).max(0) / every_us + 1;
    if buckets > max as Micros {
        return Err(bad(
            "too_many_buckets",
            format!(
                "every: {} over this range makes {buckets} buckets, more than {max} ([query] \
                 max_rows): ask longer buckets or a shorter range",
                humantime::format_duration(every)
            ),
        ));
    }
    let sel = selection(ds, range, q.sensors.as_deref(), q.bbox.as_deref())?;
    let spec = Spec {
        every: every_us,
        fns,
        by_sensor,
        fields: fields.into_iter().map(|(i, name, _)| (i, name)).collect(),
    };
    let _permit = ready(&state).await?;
    let buckets = if sel.from < sel.to {
        timed(&state, state.query.aggregate(&sel, &spec))
            .await?
            .map_err(|too_many| {
                bad(
                    "too_many_buckets",
                    format!(
                        "more than {} buckets ([query] max_rows): ask longer buckets, fewer \
                         sensors or group_by=none",
                        too_many.0
                    ),
                )
            })?
    } else {
        Vec::new()
    };
    let mut extra = Map::new();
    extra.insert("dataset".into(), Json::String(id.clone()));
    let table = Table::buckets(&buckets, &spec);
    respond(
        &state,
        (&grant, &id, "aggregate"),
        &table,
        format,
        extra,
        None,
    )
}
