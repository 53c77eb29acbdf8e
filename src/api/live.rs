//! Live readings over Server-Sent Events.
//!
//! `GET /v1/datasets/{id}/live?sensors=a,b&bbox=minlon,minlat,maxlon,maxlat` with the key
//! as `Authorization: Bearer` or `?key=` (browsers' EventSource sends no headers). Events:
//! `reading` (the `id:` is the reading's position; a client reconnecting with
//! `Last-Event-ID`, or `?last_event_id=`, gets what it missed from the recent history before
//! live data), `aggregate` (aggregate plans, at each window end), and a final `end` with the
//! reason when the gateway closes the stream (entitlement ended, key revoked, slow consumer,
//! shutdown). `: keep-alive` comments every `[feed] heartbeat`. A key that may not have the
//! dataset gets 404, as if it did not exist.

use std::convert::Infallible;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::AppState;
use super::auth::presented_secret;
use super::error::ApiError;
use crate::feed::session::{self, End, Filter, Follow, Out};
use crate::model::now_micros;

#[derive(Deserialize)]
pub struct LiveQuery {
    key: Option<String>,
    sensors: Option<String>,
    bbox: Option<String>,
    last_event_id: Option<String>,
}

fn parse_position(text: &str) -> Result<u64, ApiError> {
    text.trim().parse().map_err(|_| {
        ApiError::bad_request(
            "invalid_last_event_id",
            format!("Last-Event-ID: `{text}` is not a position this feed gave"),
        )
    })
}

/// `GET /v1/datasets/{id}/live`
pub async fn sse(
    State(state): State<AppState>,
    Path(dataset): Path<String>,
    Query(q): Query<LiveQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let secret = presented_secret(&headers, q.key.as_deref()).ok_or(ApiError::Unauthorized)?;
    let key = state
        .keyring
        .authenticate(&secret)
        .await?
        .ok_or(ApiError::Unauthorized)?;
    let grant = state
        .market
        .entitlement(&key, &dataset, now_micros())
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no dataset `{dataset}` for this key")))?;
    let filter = Filter::parse(q.sensors.as_deref(), q.bbox.as_deref())
        .map_err(|m| ApiError::bad_request("invalid_filter", m))?;
    let after = match headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .or(q.last_event_id.as_deref())
    {
        Some(text) => Some(parse_position(text)?),
        None => None,
    };
    let ctx = state.feed.clone();
    let (tx, rx) = mpsc::channel(ctx.hub.config().session_queue);
    let metrics = state.metrics.feed().clone();
    metrics.session_started("sse");
    let task = tokio::spawn({
        let metrics = metrics.clone();
        async move {
            let end = session::run(
                ctx,
                Follow {
                    secret,
                    dataset,
                    filter,
                    after,
                    grant,
                },
                tx,
            )
            .await;
            metrics.session_ended("sse", end.as_str());
            end
        }
    });
    let heartbeat = state.feed.hub.config().heartbeat;
    let stream = futures_util::stream::unfold(
        (rx, Some(task), metrics),
        |(mut rx, task, metrics)| async move {
            let task: JoinHandle<End> = task?;
            match rx.recv().await {
                Some(out) => {
                    metrics.delivered("sse");
                    let event = match out {
                        Out::Reading { position, json } => Event::default()
                            .id(position.to_string())
                            .event("reading")
                            .data(&*json),
                        Out::Aggregate(json) => Event::default().event("aggregate").data(json),
                    };
                    Some((Ok::<_, Infallible>(event), (rx, Some(task), metrics)))
                }
                None => {
                    let end = task.await.unwrap_or(End::Shutdown);
                    let event = Event::default().event("end").data(
                        json!({"reason": end.as_str(), "message": end.message()}).to_string(),
                    );
                    Some((Ok(event), (rx, None, metrics)))
                }
            }
        },
    );
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(heartbeat).text("keep-alive"))
        .into_response())
}
