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
//! `format=`; a page that has a next one says so in `next` (JSON) and in a
//! `Link: <…>; rel="next"` header (every format). Each query first waits until every
//! reading acknowledged before it began is visible (read your writes).

mod ask;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Uri};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Map, Value as Json};

use super::AppState;
use super::error::ApiError;
use crate::model::{Micros, now_micros};
use crate::query::aggregate::{Func, Spec};
use crate::query::output::Table;
use crate::query::{Cursor, Order};
use ask::*;

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
    /// Bucket length: `15m`, `1h`, `1d` (buckets start at multiples of it since the epoch,
    /// or at local midnight with `tz`).
    every: String,
    /// An IANA time zone (`Europe/Copenhagen`): buckets of whole days (`every=1d`, `7d`)
    /// are local calendar days, from local midnight (23 or 25 hours across a clock change).
    tz: Option<String>,
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
    let sel = selection(ds, range, q.sensors.as_deref(), q.bbox.as_deref(), &fields)?;
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
    let table = move || Table::readings(&page.rows, &fields);
    respond(&state, (&grant, &id, "history"), table, format, extra, link).await
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
    let sel = selection(
        ds,
        (from, to),
        q.sensors.as_deref(),
        q.bbox.as_deref(),
        &fields,
    )?;
    let _permit = ready(&state).await?;
    let rows = timed(&state, state.query.latest(&sel)).await?;
    let mut extra = Map::new();
    extra.insert("dataset".into(), Json::String(id.clone()));
    let table = move || Table::readings(&rows, &fields);
    respond(&state, (&grant, &id, "latest"), table, format, extra, None).await
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
    // (A local calendar day, `tz`, counts as the day it is, whatever its hours.)
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
    let every_us = every.as_micros().min(i64::MAX as u128) as Micros;
    let tz = match q.tz.as_deref() {
        None => None,
        Some(name) => {
            let tz = name.parse::<chrono_tz::Tz>().map_err(|_| {
                bad(
                    "invalid_tz",
                    format!("tz: `{name}` is not an IANA time zone like Europe/Copenhagen"),
                )
            })?;
            if !crate::query::zone::fits(every_us) {
                return Err(bad(
                    "invalid_every",
                    format!(
                        "every: {} with tz: ask whole days (1d, 7d), local calendar days; \
                         shorter buckets are aligned to the epoch, without tz",
                        humantime::format_duration(every)
                    ),
                ));
            }
            Some(tz)
        }
    };
    let mut range = range(&state, &grant, q.from.as_deref(), q.to.as_deref())?;
    if grant.aggregate.is_some() {
        // Whole, finished buckets only: a range cut inside a bucket, or a bucket still
        // filling, would show single readings to a plan that pays for aggregates.
        let buckets = Spec {
            every: every_us,
            tz,
            fns: Vec::new(),
            by_sensor: false,
            fields: Vec::new(),
        };
        let (start, end) = buckets.bucket_of(range.0);
        range.0 = if start < range.0 { end } else { start };
        range.1 = buckets.bucket_of(range.1).0;
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
    let sel = selection(ds, range, q.sensors.as_deref(), q.bbox.as_deref(), &fields)?;
    let spec = Spec {
        every: every_us,
        tz,
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
    let table = move || Table::buckets(&buckets, &spec);
    respond(
        &state,
        (&grant, &id, "aggregate"),
        table,
        format,
        extra,
        None,
    )
    .await
}
