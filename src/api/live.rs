//! Live readings over Server-Sent Events and WebSocket.
//!
//! ## Server-Sent Events
//!
//! `GET /v1/datasets/{id}/live?sensors=a,b&bbox=minlon,minlat,maxlon,maxlat` with the key
//! as `Authorization: Bearer` or `?key=` (browsers' EventSource sends no headers). Events:
//! `reading` (the `id:` is the reading's position; a client reconnecting with
//! `Last-Event-ID`, or `?last_event_id=`, gets what it missed from the recent history before
//! live data), `aggregate` (aggregate plans, at each window end), and a final `end` with the
//! reason when the gateway closes the stream (entitlement ended, key revoked, slow consumer,
//! shutdown). `: keep-alive` comments every `[feed] heartbeat`. A key that may not have the
//! dataset gets 404, as if it did not exist.
//!
//! ## WebSocket
//!
//! `GET /v1/live/ws` (key as for SSE; 401 without one) opens a socket on which the client
//! follows several datasets, each subscription checked on its own. Client messages (JSON):
//! `{"op":"subscribe","dataset":"…","sensors":["…"],"bbox":[minlon,minlat,maxlon,maxlat],"last_id":"…"}`,
//! `{"op":"unsubscribe","dataset":"…"}`, `{"op":"ping"}`. Server messages:
//! `{"type":"subscribed","dataset":…,"grant":{…}}`, `{"type":"reading","data":{…}}`,
//! `{"type":"aggregate","data":{…}}`, `{"type":"unsubscribed",…}`, `{"type":"pong"}`,
//! `{"type":"end","dataset":…,"reason":…,"message":…}` (that dataset's feed stopped), and
//! `{"type":"error","error":…,"message":…[,"dataset":…]}` for a message that cannot be done
//! (the socket stays open). The server pings every `[feed] heartbeat`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use futures_util::{SinkExt, StreamExt};

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::AppState;
use super::auth::require_key_with_secret;
use super::error::ApiError;
use crate::feed::session::{self, End, Filter, Follow, Out};
use crate::market::ApiKey;
use crate::model::now_micros;
use crate::telemetry::FeedMetrics;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct LiveQuery {
    /// The key, for clients that cannot send a header (browsers' EventSource).
    key: Option<String>,
    /// Comma-separated sensor ids.
    sensors: Option<String>,
    /// `min_lon,min_lat,max_lon,max_lat`.
    bbox: Option<String>,
    /// Resume after this position (as the `Last-Event-ID` header does).
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
#[utoipa::path(get, path = "/v1/datasets/{id}/live", tag = "live", security(("bearer" = [])),
    params(("id" = String, Path, description = "the dataset"), LiveQuery,
           ("Last-Event-ID" = Option<String>, Header, description = "resume after this position")),
    responses((status = 200,
        description = "Server-Sent Events `reading`, `latest`, `aggregate` and `end`, each \
                       `data` one JSON object",
               body = Object, content_type = "text/event-stream"),
              crate::api::error::Refused))]
pub(crate) async fn sse(
    State(state): State<AppState>,
    Path(dataset): Path<String>,
    Query(q): Query<LiveQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (secret, key) = require_key_with_secret(&state, &headers, q.key.as_deref()).await?;
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
    let slot = ctx
        .slots
        .take(&key.account)
        .ok_or_else(|| too_many_sessions(&ctx))?;
    let (tx, rx) = session::channel();
    let metrics = state.metrics.feed().clone();
    metrics.session_started("sse");
    let follow = Follow {
        secret,
        dataset,
        filter,
        after,
        grant,
    };
    let sub = session::start(&ctx, &follow);
    let tasks = ctx.tasks.clone();
    let task = tasks.spawn({
        let metrics = metrics.clone();
        async move {
            let end = session::run(ctx, follow, sub, tx).await;
            metrics.session_ended("sse", end.as_str());
            end
        }
    });
    let heartbeat = state.feed.hub.config().heartbeat;
    let delivered = metrics.delivered_counter("sse");
    // The events are written here rather than with axum's `Sse`: everything the session has
    // ready goes out as one chunk, and an idle stream gets a comment every heartbeat.
    let stream = futures_util::stream::unfold(
        (rx, Some(task), delivered),
        move |(mut rx, task, delivered)| async move {
            let task: JoinHandle<End> = task?;
            let first = match tokio::time::timeout(heartbeat, rx.recv()).await {
                Err(_) => {
                    let chunk = Bytes::from_static(b": keep-alive\n\n");
                    return Some((Ok::<_, Infallible>(chunk), (rx, Some(task), delivered)));
                }
                Ok(first) => first,
            };
            let Some(first) = first else {
                let end = task.await.unwrap_or(End::Shutdown);
                let data = json!({"reason": end.as_str(), "message": end.message()});
                let chunk = Bytes::from(format!("event: end\ndata: {data}\n\n"));
                return Some((Ok(chunk), (rx, None, delivered)));
            };
            let mut chunk = Vec::with_capacity(512);
            let mut n = 0u64;
            let mut next = Some(first);
            while let Some(outs) = next {
                n += outs.len() as u64;
                for out in outs {
                    write_event(&mut chunk, out);
                }
                next = if chunk.len() < 256 * 1024 {
                    rx.try_recv().ok()
                } else {
                    None
                };
            }
            delivered.inc_by(n);
            Some((Ok(Bytes::from(chunk)), (rx, Some(task), delivered)))
        },
    );
    // The key's place is held for as long as the response streams.
    let stream = stream.inspect(move |_| {
        let _held = &slot;
    });
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

fn too_many_sessions(ctx: &session::FeedService) -> ApiError {
    ApiError::TooManyRequests {
        message: format!(
            "this account runs {} live sessions already ([feed] max_sessions_per_account); end one first",
            ctx.slots.max()
        ),
        retry_after: 5,
    }
}

/// One server-sent event (`data` is one line of JSON).
fn write_event(out: &mut Vec<u8>, event: Out) {
    use std::io::Write as _;
    let _ = match event {
        Out::Retained { json, .. } => write!(out, "event: latest\ndata: {json}\n\n"),
        Out::Reading { position, json, .. } => {
            write!(out, "id: {position}\nevent: reading\ndata: {json}\n\n")
        }
        Out::Aggregate { json, .. } => write!(out, "event: aggregate\ndata: {json}\n\n"),
    };
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct KeyQuery {
    /// The key, for clients that cannot send a header (browsers' WebSocket).
    key: Option<String>,
}

/// `GET /v1/live/ws`
#[utoipa::path(get, path = "/v1/live/ws", tag = "live", security(("bearer" = [])), params(KeyQuery),
    responses((status = 101,
        description = "a WebSocket: send `{\"op\": \"subscribe\", \"dataset\": …}`"),
              crate::api::error::Refused,
              (status = 503, description = "every WebSocket place is taken",
                  body = crate::api::error::ErrorSchema)))]
pub(crate) async fn ws(
    State(state): State<AppState>,
    Query(q): Query<KeyQuery>,
    headers: HeaderMap,
    share: Option<axum::Extension<super::server::ConnectionShare>>,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let (secret, key) = require_key_with_secret(&state, &headers, q.key.as_deref()).await?;
    if key.kind == crate::market::KeyKind::Device {
        return Err(ApiError::Forbidden(
            "a device key writes readings; live feeds are for subscriber keys".into(),
        ));
    }
    // An upgraded socket leaves the HTTP server's connection count, so it is counted here
    // against the same cap.
    let Ok(permit) = state.websockets.clone().try_acquire_owned() else {
        return Err(ApiError::Unavailable {
            message: "every WebSocket place is taken (http.max_connections); retry shortly".into(),
            retry_after: 5,
        });
    };
    Ok(upgrade
        .max_message_size(64 * 1024)
        .on_upgrade(move |socket| async move {
            ws_connection(state, secret, socket).await;
            drop(permit);
            drop(share);
        }))
}

#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
enum ClientMessage {
    Subscribe {
        dataset: String,
        #[serde(default)]
        sensors: Option<Vec<String>>,
        #[serde(default)]
        bbox: Option<[f64; 4]>,
        #[serde(default)]
        last_id: Option<String>,
    },
    Unsubscribe {
        dataset: String,
    },
    Ping,
}

/// The close a socket gets when its key stops working (1008: policy violation).
fn key_gone() -> Message {
    Message::Close(Some(CloseFrame {
        code: 1008,
        reason: "the key was revoked or expired".into(),
    }))
}

fn error_message(error: &str, message: &str, dataset: Option<&str>) -> Message {
    let mut v = json!({"type": "error", "error": error, "message": message});
    if let Some(d) = dataset {
        v["dataset"] = json!(d);
    }
    Message::Text(v.to_string().into())
}

/// One WebSocket: reads client messages, runs a session per followed dataset, and writes
/// everything through one bounded queue.
async fn ws_connection(state: AppState, secret: String, socket: WebSocket) {
    let ctx = state.feed.clone();
    // Room for a whole chunk of a session (its frames are queued together).
    let queue = ctx.hub.config().session_queue.max(session::CHUNK);
    let metrics = state.metrics.feed().clone();
    let (mut sink, mut stream) = socket.split();
    let (tx, mut rx) = mpsc::channel::<Message>(queue);
    let writer = tokio::spawn(async move {
        // Everything queued goes out before one flush (one write for many frames).
        'socket: while let Some(message) = rx.recv().await {
            let mut next = Some(message);
            while let Some(message) = next {
                let closing = matches!(message, Message::Close(_));
                if sink.feed(message).await.is_err() || closing {
                    break 'socket;
                }
                next = rx.try_recv().ok();
            }
            if sink.flush().await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });
    // Each followed dataset's forwarder and its place among the key's live sessions.
    let mut followed: HashMap<String, (JoinHandle<()>, session::Slot)> = HashMap::new();
    let mut ping = tokio::time::interval(ctx.hub.config().heartbeat);
    ping.tick().await;
    // The key is checked again as time passes, as every session does: a socket with no
    // feed (or whose feeds ended) is closed when the key is revoked too.
    let mut recheck = tokio::time::interval(ctx.hub.config().recheck);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let message = tokio::select! {
            message = stream.next() => message,
            _ = ping.tick() => {
                // Feeds that ended on their own give their places back.
                followed.retain(|_, (forwarder, _)| !forwarder.is_finished());
                let _ = tx.send(Message::Ping(Vec::new().into())).await;
                continue;
            }
            _ = recheck.tick() => {
                if let Ok(None) = state.keyring.authenticate(&secret).await {
                    let _ = tx.send(key_gone()).await;
                    break;
                }
                continue;
            }
            _ = ctx.closing.cancelled() => {
                let _ = tx
                    .send(Message::Close(Some(CloseFrame {
                        code: 1001,
                        reason: "the gateway is shutting down".into(),
                    })))
                    .await;
                break;
            }
        };
        let text = match message {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Binary(_))) => {
                let _ = tx
                    .send(error_message(
                        "invalid_message",
                        "messages are JSON text",
                        None,
                    ))
                    .await;
                continue;
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
        };
        let parsed: ClientMessage = match serde_json::from_str(&text) {
            Ok(m) => m,
            Err(e) => {
                let _ = tx
                    .send(error_message("invalid_message", &e.to_string(), None))
                    .await;
                continue;
            }
        };
        match parsed {
            ClientMessage::Ping => {
                let _ = tx
                    .send(Message::Text(json!({"type": "pong"}).to_string().into()))
                    .await;
            }
            ClientMessage::Unsubscribe { dataset } => {
                let reply = match followed.remove(&dataset) {
                    Some((forwarder, _slot)) => {
                        forwarder.abort();
                        json!({"type": "unsubscribed", "dataset": dataset})
                    }
                    None => json!({"type": "error", "error": "not_subscribed", "dataset": dataset,
                                   "message": "this socket does not follow that dataset"}),
                };
                let _ = tx.send(Message::Text(reply.to_string().into())).await;
            }
            ClientMessage::Subscribe {
                dataset,
                sensors,
                bbox,
                last_id,
            } => {
                // The key as it is now, not as it was when the socket opened: a key revoked
                // since gets nothing more, not even a replay.
                let key = match state.keyring.authenticate(&secret).await {
                    Ok(Some(key)) => key,
                    Ok(None) => {
                        let _ = tx.send(key_gone()).await;
                        break;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "key check failed during a WebSocket subscribe");
                        let _ = tx
                            .send(error_message(
                                "internal",
                                "the key could not be checked; try again",
                                Some(&dataset),
                            ))
                            .await;
                        continue;
                    }
                };
                match follow_on_socket(&state, &secret, &key, &dataset, sensors, bbox, last_id)
                    .await
                {
                    Ok((follow, grant_json)) => {
                        followed.retain(|_, (forwarder, _)| !forwarder.is_finished());
                        // Following a dataset again replaces its session and its place.
                        if let Some((previous, _slot)) = followed.remove(&dataset) {
                            previous.abort();
                        }
                        let Some(slot) = ctx.slots.take(&key.account) else {
                            let message = format!(
                                "this account runs {} live sessions already; end one first",
                                ctx.slots.max()
                            );
                            let _ = tx
                                .send(error_message("too_many_sessions", &message, Some(&dataset)))
                                .await;
                            continue;
                        };
                        // Following before saying so: whatever is published once the client
                        // reads "subscribed" reaches it.
                        let sub = session::start(&ctx, &follow);
                        let _ = tx
                            .send(Message::Text(
                                json!({"type": "subscribed", "dataset": dataset, "grant": grant_json})
                                    .to_string()
                                    .into(),
                            ))
                            .await;
                        let forwarder =
                            spawn_ws_session(ctx.clone(), follow, sub, tx.clone(), metrics.clone());
                        followed.insert(dataset, (forwarder, slot));
                    }
                    Err((error, message)) => {
                        let _ = tx
                            .send(error_message(error, &message, Some(&dataset)))
                            .await;
                    }
                }
            }
        }
    }
    for (_, (forwarder, _slot)) in followed {
        forwarder.abort();
    }
    drop(tx);
    let _ = writer.await;
}

/// Checks one subscribe request: the key may have the dataset, the filter is sound.
async fn follow_on_socket(
    state: &AppState,
    secret: &str,
    key: &ApiKey,
    dataset: &str,
    sensors: Option<Vec<String>>,
    bbox: Option<[f64; 4]>,
    last_id: Option<String>,
) -> Result<(Follow, serde_json::Value), (&'static str, String)> {
    let grant = match state.market.entitlement(key, dataset, now_micros()).await {
        Ok(Some(grant)) => grant,
        Ok(None) => {
            return Err(("not_found", format!("no dataset `{dataset}` for this key")));
        }
        Err(e) => {
            tracing::error!(error = %e, "entitlement check failed");
            return Err(("internal", "the entitlement could not be checked".into()));
        }
    };
    let sensors = sensors.map(|s| s.join(","));
    let bbox = bbox.map(|b| format!("{},{},{},{}", b[0], b[1], b[2], b[3]));
    let filter =
        Filter::parse(sensors.as_deref(), bbox.as_deref()).map_err(|m| ("invalid_filter", m))?;
    let after = match last_id {
        Some(id) => Some(id.trim().parse::<u64>().map_err(|_| {
            (
                "invalid_last_id",
                format!("last_id: `{id}` is not a position"),
            )
        })?),
        None => None,
    };
    let grant_json = serde_json::to_value(&grant).unwrap_or_default();
    Ok((
        Follow {
            secret: secret.to_string(),
            dataset: dataset.to_string(),
            filter,
            after,
            grant,
        },
        grant_json,
    ))
}

/// Runs a session for one dataset of a socket; its messages go to the socket's queue.
/// Aborting the returned forwarder ends the session (it sees its queue closed).
fn spawn_ws_session(
    ctx: Arc<session::FeedService>,
    follow: Follow,
    sub: crate::feed::Cursor,
    socket: mpsc::Sender<Message>,
    metrics: FeedMetrics,
) -> JoinHandle<()> {
    let dataset = follow.dataset.clone();
    let (out_tx, mut out_rx) = session::channel();
    metrics.session_started("ws");
    let tasks = ctx.tasks.clone();
    let session = tasks.spawn({
        let metrics = metrics.clone();
        async move {
            let end = session::run(ctx, follow, sub, out_tx).await;
            metrics.session_ended("ws", end.as_str());
            end
        }
    });
    let delivered = metrics.delivered_counter("ws");
    tokio::spawn(async move {
        while let Some(outs) = out_rx.recv().await {
            // Room for the whole chunk at once, then one frame per reading.
            let Ok(permits) = socket.reserve_many(outs.len()).await else {
                return;
            };
            let n = outs.len() as u64;
            for (permit, out) in permits.zip(outs) {
                let (kind, json) = match &out {
                    Out::Reading { json, .. } | Out::Retained { json, .. } => ("reading", &**json),
                    Out::Aggregate { json, .. } => ("aggregate", json.as_str()),
                };
                let text = format!("{{\"type\":\"{kind}\",\"data\":{json}}}");
                permit.send(Message::Text(text.into()));
            }
            delivered.inc_by(n);
        }
        let end = session.await.unwrap_or(End::Shutdown);
        if end != End::Gone {
            let message = json!({"type": "end", "dataset": dataset, "reason": end.as_str(),
                                 "message": end.message()});
            let _ = socket.send(Message::Text(message.to_string().into())).await;
        }
    })
}
