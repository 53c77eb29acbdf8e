//! What the history routes share: reading the parameters (formats, times, fields, the
//! range a plan allows), the entitlement and the key's allowance, waiting for the hot store
//! and a query slot, and writing the answer (metered, with its `Link`).

use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value as Json};

use super::super::AppState;
use super::super::auth::require_key;
use super::super::error::ApiError;
use crate::feed::session::Filter;
use crate::market::Grant;
use crate::model::{Dataset, FieldType, Micros, now_micros};
use crate::pipeline::decode::time::parse_rfc3339;
use crate::pipeline::limit::{LimitError, LimitKey};
use crate::query::output::{Format, Table};
use crate::query::{QueryError, Selection};

/// The range `history` and `aggregate` read when `from` is not given.
const DEFAULT_SPAN: Micros = 3_600_000_000;

pub(super) fn bad(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::bad_request(code, message)
}

pub(super) fn format_of(headers: &HeaderMap, format: Option<&str>) -> Result<Format, ApiError> {
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

pub(super) fn time(name: &str, text: Option<&str>) -> Result<Option<Micros>, ApiError> {
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
pub(super) fn fields_of(
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
pub(super) async fn entitled(
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
pub(super) fn aggregate_window(grant: &Grant) -> Option<Duration> {
    grant
        .aggregate
        .as_deref()
        .and_then(|a| humantime::parse_duration(a).ok())
}

pub(super) fn raw_allowed(grant: &Grant) -> Result<(), ApiError> {
    match &grant.aggregate {
        Some(window) => Err(ApiError::Forbidden(format!(
            "this plan gives aggregates over {window} or more, not single readings: ask \
             /aggregate with every={window} or longer"
        ))),
        None => Ok(()),
    }
}

/// `[from, to)` from the parameters, checked, with the plan's delay applied to `to`.
pub(super) fn range(
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

pub(super) fn selection(
    ds: std::sync::Arc<Dataset>,
    (from, to): (Micros, Micros),
    sensors: Option<&str>,
    bbox: Option<&str>,
    fields: &[(usize, String, FieldType)],
) -> Result<Selection, ApiError> {
    let filter = Filter::parse(sensors, bbox).map_err(|m| bad("invalid_filter", m))?;
    Ok(Selection {
        dataset: ds,
        from,
        to,
        filter,
        fields: Some(fields.iter().map(|(i, _, _)| *i).collect()),
    })
}

/// Waits for the hot store to hold every acknowledged reading, and for a query slot.
pub(super) async fn ready(state: &AppState) -> Result<tokio::sync::SemaphorePermit<'_>, ApiError> {
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

pub(super) fn failed(e: QueryError) -> ApiError {
    tracing::error!(error = %e, "history query failed");
    ApiError::Internal(e.to_string())
}

pub(super) async fn timed<T>(
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

/// The answer (its table made and written on a query thread, off the threads that serve
/// intake), metered to the subscription behind it (rows and bytes, apart from live
/// deliveries).
pub(super) async fn respond(
    state: &AppState,
    (grant, dataset, route): (&Grant, &str, &str),
    table: impl FnOnce() -> Table + Send + 'static,
    format: Format,
    extra: Map<String, Json>,
    next: Option<String>,
) -> Result<Response, ApiError> {
    let key = if route == "aggregate" {
        "buckets"
    } else {
        "readings"
    };
    let render = state.query.render(move || {
        let table = table();
        Ok::<_, String>((table.rows.len(), table.write(format, key, extra)?))
    });
    let (rows, body) = timed(state, render).await?.map_err(|e| {
        tracing::error!(error = %e, "a history answer could not be written");
        ApiError::Internal(e)
    })?;
    state.metrics.query().returned(route, rows);
    if let Some(subscription) = &grant.subscription {
        state
            .market
            .usage()
            .record_query(subscription, rows as u64, body.len() as u64);
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
pub(super) fn next_link(uri: &Uri, cursor: &str) -> String {
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
