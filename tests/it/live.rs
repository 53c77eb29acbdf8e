//! Live feeds over Server-Sent Events: entitled subscribers receive exactly the readings
//! they may have, in order, resume without loss or duplicates, get delayed and aggregated
//! tiers, and are cut off within a second of losing their entitlement.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::*;

/// One server-sent event.
#[derive(Debug, Clone)]
pub(crate) struct SseEvent {
    pub id: Option<String>,
    pub event: String,
    pub data: String,
}

impl SseEvent {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap()
    }
}

/// A minimal EventSource: parses the stream as browsers do.
pub(crate) struct Sse {
    resp: reqwest::Response,
    buf: String,
}

impl Sse {
    pub(crate) async fn open(
        gw: &Gateway,
        path: &str,
        key: &str,
        last_id: Option<&str>,
    ) -> (u16, Option<Sse>) {
        let mut req = gw
            .client
            .get(gw.url(path))
            .header("accept", "text/event-stream")
            .bearer_auth(key)
            .timeout(Duration::from_secs(600));
        if let Some(id) = last_id {
            req = req.header("last-event-id", id);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        if status != 200 {
            return (status, None);
        }
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        (
            status,
            Some(Sse {
                resp,
                buf: String::new(),
            }),
        )
    }

    /// The next event (comments skipped), or `None` when the stream ends or `wait` passes.
    pub(crate) async fn next(&mut self, wait: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut ev = SseEvent {
                    id: None,
                    event: "message".into(),
                    data: String::new(),
                };
                let mut any = false;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        ev.id = Some(v.trim_start().to_string());
                        any = true;
                    } else if let Some(v) = line.strip_prefix("event:") {
                        ev.event = v.trim_start().to_string();
                        any = true;
                    } else if let Some(v) = line.strip_prefix("data:") {
                        if !ev.data.is_empty() {
                            ev.data.push('\n');
                        }
                        ev.data.push_str(v.strip_prefix(' ').unwrap_or(v));
                        any = true;
                    }
                }
                if any {
                    return Some(ev);
                }
                continue;
            }
            match tokio::time::timeout_at(deadline, self.resp.chunk()).await {
                Ok(Ok(Some(chunk))) => self.buf.push_str(&String::from_utf8_lossy(&chunk)),
                _ => return None,
            }
        }
    }

    /// The next `n` reading events.
    pub(crate) async fn readings(&mut self, n: usize, wait: Duration) -> Vec<SseEvent> {
        let mut got = Vec::new();
        while got.len() < n {
            match self.next(wait).await {
                Some(ev) if ev.event == "reading" => got.push(ev),
                Some(ev) => panic!("expected a reading, got {ev:?}"),
                None => break,
            }
        }
        got
    }
}

/// A device posting `n` traffic readings of `sensor` with counts `from..from+n`.
pub(crate) async fn post_counts(gw: &Gateway, device: &str, sensor: &str, from: i64, n: i64) {
    let ts = now_ms();
    let body: Vec<Value> = (from..from + n)
        .map(|i| json!({"sensor_id": sensor, "ts": ts, "vehicle_count": i, "lat": 55.68, "lon": 12.57}))
        .collect();
    let resp = gw.post_json(TRAFFIC, device, json!(body)).await;
    assert_eq!(resp.status(), 204);
}

pub(crate) async fn plan(gw: &Gateway, provider: &str, body: Value) {
    let (status, answer) = gw
        .post_as("/v1/catalog/traffic-counts/plans", provider, body)
        .await;
    assert_eq!(status, 201, "{answer}");
}

pub(crate) async fn subscribe(gw: &Gateway, key: &str, plan: &str) -> String {
    let (status, body) = gw
        .post_as("/v1/subscriptions", key, json!({"plan": plan}))
        .await;
    assert_eq!(status, 201, "{body}");
    body["subscription"]["id"].as_str().unwrap().to_string()
}

/// The copenhagen provider prices traffic-counts with `plan_body`; a new subscriber takes
/// it. Returns the subscriber's key, its subscription and a device key for traffic-counts.
pub(crate) async fn subscribed(gw: &Gateway, plan_body: Value) -> (String, String, String) {
    let provider = gw.provider_key("copenhagen").await;
    let id = plan_body["id"].as_str().unwrap().to_string();
    plan(gw, &provider, plan_body).await;
    let (_, key) = gw.account("subscriber", "Mobility Lab", "research").await;
    let sub = subscribe(gw, &key, &id).await;
    let device = gw.device_key(&[TRAFFIC]).await;
    (key, sub, device)
}

pub(crate) fn open_plan() -> Value {
    json!({"id": "open", "name": "Open data", "kind": "free"})
}

pub(crate) const LIVE: &str = "/v1/datasets/traffic-counts/live";
const WAIT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn entitled_subscribers_receive_exactly_their_readings_in_order() {
    let gw = Gateway::start().await;
    let provider = gw.provider_key("copenhagen").await;
    plan(
        &gw,
        &provider,
        json!({"id": "open", "name": "Open data", "kind": "free"}),
    )
    .await;
    let (_, alice) = gw.account("subscriber", "Mobility Lab", "research").await;
    let (_, bob) = gw.account("subscriber", "Taxi Co", "mobility").await;
    let sub = subscribe(&gw, &alice, "open").await;
    let device = gw.device_key(&[TRAFFIC]).await;

    // Not entitled: as if the dataset did not exist. No key: 401.
    assert_eq!(Sse::open(&gw, LIVE, &bob, None).await.0, 404);
    assert_eq!(
        Sse::open(&gw, "/v1/datasets/weather/live", &alice, None)
            .await
            .0,
        404
    );
    assert_eq!(Sse::open(&gw, LIVE, "", None).await.0, 401);
    for lookalike in [
        "/v1/datasets/Traffic-Counts/live",
        "/v1/datasets/traffic-counts%2F..%2Fweather/live",
        "/v1/datasets/traffic%2Dcounts%20/live",
        "/v1/datasets/weather%2F..%2Ftraffic-counts/live",
    ] {
        assert_eq!(
            Sse::open(&gw, lookalike, &alice, None).await.0,
            404,
            "{lookalike}"
        );
    }
    assert_eq!(
        Sse::open(&gw, &format!("{LIVE}?bbox=1,2,3"), &alice, None)
            .await
            .0,
        400
    );
    // The key in the query string, as browsers' EventSource must send it.
    let resp = gw
        .client
        .get(gw.url(&format!("{LIVE}?key={alice}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    drop(resp);

    let (_, all) = Sse::open(&gw, LIVE, &alice, None).await;
    let mut all = all.unwrap();
    let (_, only_b) = Sse::open(&gw, &format!("{LIVE}?sensors=tc-b"), &alice, None).await;
    let mut only_b = only_b.unwrap();
    let (_, outside) = Sse::open(&gw, &format!("{LIVE}?bbox=10,50,11,51"), &alice, None).await;
    let mut outside = outside.unwrap();
    let (_, provider_view) = Sse::open(&gw, LIVE, &provider, None).await;
    let mut provider_view = provider_view.unwrap();

    post_counts(&gw, &device, "tc-a", 0, 10).await;
    post_counts(&gw, &device, "tc-b", 100, 5).await;
    post_counts(&gw, &device, "tc-a", 10, 10).await;

    let got = all.readings(25, WAIT).await;
    assert_eq!(got.len(), 25);
    let counts: Vec<i64> = got
        .iter()
        .map(|e| e.json()["fields"]["vehicle_count"].as_i64().unwrap())
        .collect();
    let expected: Vec<i64> = (0..10).chain(100..105).chain(10..20).collect();
    assert_eq!(counts, expected, "in order, with their values");
    let ids: Vec<u64> = got
        .iter()
        .map(|e| e.id.clone().unwrap().parse().unwrap())
        .collect();
    assert!(
        ids.windows(2).all(|w| w[1] == w[0] + 1),
        "positions: {ids:?}"
    );
    assert_eq!(got[0].json()["id"], got[0].id.clone().unwrap());
    assert_eq!(got[0].json()["sensor_id"], "tc-a");
    assert_eq!(got[0].json()["lat"], 55.68);

    let b = only_b.readings(5, WAIT).await;
    let b_counts: Vec<i64> = b
        .iter()
        .map(|e| e.json()["fields"]["vehicle_count"].as_i64().unwrap())
        .collect();
    assert_eq!(b_counts, [100, 101, 102, 103, 104]);
    assert_eq!(provider_view.readings(25, WAIT).await.len(), 25);
    // Nothing more arrives, to anyone; the bounding box elsewhere got nothing at all.
    assert!(all.next(Duration::from_millis(300)).await.is_none());
    assert!(only_b.next(Duration::from_millis(100)).await.is_none());
    assert!(outside.next(Duration::from_millis(100)).await.is_none());

    // Deliveries are metered to the subscription: 25 + 5 (the provider's 25 are not).
    drop((all, only_b, outside, provider_view));
    let started = Instant::now();
    loop {
        let (_, usage) = gw.get_as("/v1/usage", &alice).await;
        if usage["total_readings"] == 30 {
            assert_eq!(usage["rows"][0]["subscription"], sub.as_str());
            assert!(usage["total_bytes"].as_i64().unwrap() > 30 * 50);
            break;
        }
        assert!(started.elapsed() < WAIT, "{usage}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("citygate_feed_deliveries_total{protocol=\"sse\"} 55"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_reconnecting_client_gets_what_it_missed_once() {
    let gw = Gateway::start().await;
    let (alice, _, device) = subscribed(&gw, open_plan()).await;

    let (_, first) = Sse::open(&gw, LIVE, &alice, None).await;
    let mut first = first.unwrap();
    post_counts(&gw, &device, "tc-a", 0, 10).await;
    let seen = first.readings(4, WAIT).await;
    let last_id = seen.last().unwrap().id.clone().unwrap();
    drop(first);
    // Published while the client was away.
    post_counts(&gw, &device, "tc-a", 10, 10).await;

    let (status, again) = Sse::open(&gw, LIVE, &alice, Some(&last_id)).await;
    assert_eq!(status, 200);
    let mut again = again.unwrap();
    let resumed = again.readings(16, WAIT).await;
    let counts: Vec<i64> = resumed
        .iter()
        .map(|e| e.json()["fields"]["vehicle_count"].as_i64().unwrap())
        .collect();
    assert_eq!(counts, (4..20).collect::<Vec<_>>(), "no loss, no duplicate");
    // Then live.
    post_counts(&gw, &device, "tc-a", 20, 1).await;
    let live = again.readings(1, WAIT).await;
    assert_eq!(live[0].json()["fields"]["vehicle_count"], 20);
    assert!(again.next(Duration::from_millis(200)).await.is_none());
    // A position this feed never gave is refused.
    assert_eq!(Sse::open(&gw, LIVE, &alice, Some("soon")).await.0, 400);
}

#[tokio::test]
async fn revocation_and_cancellation_stop_delivery_within_a_second() {
    let gw = Gateway::start().await;
    let provider = gw.provider_key("copenhagen").await;
    plan(
        &gw,
        &provider,
        json!({"id": "open", "name": "Open data", "kind": "free"}),
    )
    .await;
    let (_, alice) = gw.account("subscriber", "Mobility Lab", "research").await;
    let sub = subscribe(&gw, &alice, "open").await;
    let (_, second_key) = gw
        .post_as("/v1/keys", &alice, json!({"kind": "subscriber"}))
        .await;
    let second = second_key["secret"].as_str().unwrap().to_string();
    let second_id = second_key["key"]["id"].as_str().unwrap().to_string();

    let (_, by_key) = Sse::open(&gw, LIVE, &second, None).await;
    let mut by_key = by_key.unwrap();
    let (_, by_sub) = Sse::open(&gw, LIVE, &alice, None).await;
    let mut by_sub = by_sub.unwrap();

    let (status, _) = gw.delete_as(&format!("/v1/keys/{second_id}"), &alice).await;
    assert_eq!(status, 204);
    let revoked = Instant::now();
    let end = by_key
        .next(Duration::from_secs(3))
        .await
        .expect("an end event");
    assert!(
        revoked.elapsed() < Duration::from_secs(1),
        "{:?}",
        revoked.elapsed()
    );
    assert_eq!(end.event, "end");
    assert_eq!(end.json()["reason"], "key_revoked");
    assert!(
        by_key.next(Duration::from_millis(200)).await.is_none(),
        "closed"
    );

    let (status, _) = gw
        .delete_as(&format!("/v1/subscriptions/{sub}"), &alice)
        .await;
    assert_eq!(status, 200);
    let cancelled = Instant::now();
    let end = by_sub
        .next(Duration::from_secs(3))
        .await
        .expect("an end event");
    assert!(
        cancelled.elapsed() < Duration::from_secs(1),
        "{:?}",
        cancelled.elapsed()
    );
    assert_eq!(end.json()["reason"], "not_entitled");
    assert_eq!(Sse::open(&gw, LIVE, &alice, None).await.0, 404);
    let metrics = gw.metrics().await;
    for reason in ["key_revoked", "not_entitled"] {
        assert!(
            metrics.contains(&format!(
                "citygate_feed_sessions_ended_total{{protocol=\"sse\",reason=\"{reason}\"}} 1"
            )),
            "{metrics}"
        );
    }
}

#[tokio::test]
async fn a_delayed_plan_gets_readings_late_even_when_it_reconnects() {
    let gw = Gateway::start().await;
    let (alice, _, device) = subscribed(
        &gw,
        json!({"id": "late", "name": "Free, 15 minutes late", "kind": "free", "delay": "15m"}),
    )
    .await;
    let (_, sse) = Sse::open(&gw, LIVE, &alice, None).await;
    let mut sse = sse.unwrap();

    // Device times: one 20 minutes old (due at once), one 15 minutes minus 2 s old (due in
    // about 2 s), one fresh (due in 15 minutes).
    let now = now_ms();
    let readings = json!([
        {"sensor_id": "old", "ts": now - 20 * 60_000, "vehicle_count": 1},
        {"sensor_id": "soon", "ts": now - 15 * 60_000 + 2_000, "vehicle_count": 2},
        {"sensor_id": "fresh", "ts": now, "vehicle_count": 3},
    ]);
    assert_eq!(gw.post_json(TRAFFIC, &device, readings).await.status(), 204);
    let posted = Instant::now();
    let old = sse.readings(1, WAIT).await;
    assert_eq!(old[0].json()["sensor_id"], "old");
    assert!(posted.elapsed() < Duration::from_secs(1));
    let soon = sse.readings(1, WAIT).await;
    assert_eq!(soon[0].json()["sensor_id"], "soon");
    assert!(
        posted.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        posted.elapsed()
    );
    assert!(
        sse.next(Duration::from_millis(500)).await.is_none(),
        "fresh is 15 minutes away"
    );
    drop(sse);

    // Reconnecting from the very start reads nothing early.
    let first = old[0].id.clone().unwrap().parse::<u64>().unwrap() - 1;
    let (_, again) = Sse::open(&gw, LIVE, &alice, Some(&first.to_string())).await;
    let mut again = again.unwrap();
    let replay = again.readings(2, WAIT).await;
    let sensors: Vec<String> = replay
        .iter()
        .map(|e| e.json()["sensor_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(sensors, ["old", "soon"]);
    assert!(again.next(Duration::from_millis(500)).await.is_none());
}

#[tokio::test]
async fn an_aggregate_plan_gets_per_sensor_statistics_at_each_window_end() {
    let gw = Gateway::start().await;
    let (alice, _, device) = subscribed(
        &gw,
        json!({"id": "summary", "name": "Free, 2 s summaries", "kind": "free", "aggregate": "2s"}),
    )
    .await;
    let (_, sse) = Sse::open(&gw, LIVE, &alice, None).await;
    let mut sse = sse.unwrap();
    // Just after a window starts, so all readings fall in one window.
    let ms = now_ms();
    tokio::time::sleep(Duration::from_millis(
        (2_000 - ms.rem_euclid(2_000) + 50) as u64,
    ))
    .await;
    let ts = now_ms();
    let readings = json!([
        {"sensor_id": "a", "ts": ts, "vehicle_count": 10, "mean_speed": 40.0},
        {"sensor_id": "a", "ts": ts, "vehicle_count": 20},
        {"sensor_id": "a", "ts": ts, "vehicle_count": 60, "mean_speed": 50.0},
        {"sensor_id": "b", "ts": ts, "vehicle_count": 5},
    ]);
    assert_eq!(gw.post_json(TRAFFIC, &device, readings).await.status(), 204);
    let mut got = Vec::new();
    while got.len() < 2 {
        let ev = sse.next(Duration::from_secs(5)).await.expect("aggregates");
        assert_eq!(ev.event, "aggregate", "no raw readings: {ev:?}");
        got.push(ev.json());
    }
    got.sort_by_key(|a| a["sensor_id"].as_str().unwrap().to_string());
    let a = &got[0];
    assert_eq!(a["count"], 3);
    assert_eq!(
        a["fields"]["vehicle_count"],
        json!({"count": 3, "mean": 30.0, "min": 10.0, "max": 60.0})
    );
    assert_eq!(
        a["fields"]["mean_speed"],
        json!({"count": 2, "mean": 45.0, "min": 40.0, "max": 50.0})
    );
    assert_eq!(
        a["window_end"].as_i64().unwrap() - a["window_start"].as_i64().unwrap(),
        2_000_000
    );
    assert_eq!(got[1]["sensor_id"], "b");
    assert_eq!(got[1]["count"], 1);
}

pub(crate) mod websocket {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    use super::*;

    pub(crate) type Socket = tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >;

    pub(crate) async fn connect(gw: &Gateway, key: &str) -> Result<Socket, u16> {
        let url = format!(
            "{}/v1/live/ws?key={key}",
            gw.base.replace("http://", "ws://")
        );
        match tokio_tungstenite::connect_async(url).await {
            Ok((socket, _)) => Ok(socket),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
            Err(e) => panic!("{e}"),
        }
    }

    pub(crate) async fn send(socket: &mut Socket, v: Value) {
        socket
            .send(Message::Text(v.to_string().into()))
            .await
            .unwrap();
    }

    /// The next JSON message (pings skipped), or `None` after `wait`.
    pub(crate) async fn recv(socket: &mut Socket, wait: Duration) -> Option<Value> {
        loop {
            match tokio::time::timeout(wait, socket.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => return Some(serde_json::from_str(&t).unwrap()),
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                Ok(Some(Ok(other))) => panic!("unexpected {other:?}"),
                _ => return None,
            }
        }
    }

    #[tokio::test]
    async fn a_socket_follows_several_datasets_each_checked_on_its_own() {
        let gw = Gateway::start().await;
        let (alice, sub, device) = subscribed(&gw, open_plan()).await;

        assert_eq!(connect(&gw, "cg_nobody").await.err(), Some(401));
        let mut ws = connect(&gw, &alice).await.unwrap();

        // One entitled dataset, one not, one that does not exist: each answered on its own.
        send(
            &mut ws,
            json!({"op": "subscribe", "dataset": "traffic-counts"}),
        )
        .await;
        let ok = recv(&mut ws, WAIT).await.unwrap();
        assert_eq!(ok["type"], "subscribed", "{ok}");
        assert_eq!(ok["grant"]["subscription"], sub.as_str());
        for dataset in ["weather", "Traffic-Counts", "nowhere"] {
            send(&mut ws, json!({"op": "subscribe", "dataset": dataset})).await;
            let refused = recv(&mut ws, WAIT).await.unwrap();
            assert_eq!(
                (
                    refused["type"].clone(),
                    refused["error"].clone(),
                    refused["dataset"].clone()
                ),
                (json!("error"), json!("not_found"), json!(dataset))
            );
        }
        send(
            &mut ws,
            json!({"op": "subscribe", "dataset": "traffic-counts", "bbox": [1, 2, 0, 1]}),
        )
        .await;
        assert_eq!(
            recv(&mut ws, WAIT).await.unwrap()["error"],
            "invalid_filter"
        );
        send(&mut ws, json!({"op": "dance"})).await;
        assert_eq!(
            recv(&mut ws, WAIT).await.unwrap()["error"],
            "invalid_message"
        );
        send(&mut ws, json!({"op": "ping"})).await;
        assert_eq!(recv(&mut ws, WAIT).await.unwrap()["type"], "pong");

        // Readings arrive in order with their values; the invalid filter replaced nothing.
        post_counts(&gw, &device, "tc-a", 0, 5).await;
        let mut counts = Vec::new();
        for _ in 0..5 {
            let m = recv(&mut ws, WAIT).await.unwrap();
            assert_eq!(m["type"], "reading", "{m}");
            assert_eq!(m["data"]["dataset"], "traffic-counts");
            counts.push(m["data"]["fields"]["vehicle_count"].as_i64().unwrap());
        }
        assert_eq!(counts, [0, 1, 2, 3, 4]);

        // Unsubscribed: nothing more.
        send(
            &mut ws,
            json!({"op": "unsubscribe", "dataset": "traffic-counts"}),
        )
        .await;
        assert_eq!(recv(&mut ws, WAIT).await.unwrap()["type"], "unsubscribed");
        post_counts(&gw, &device, "tc-a", 5, 5).await;
        assert!(recv(&mut ws, Duration::from_millis(300)).await.is_none());

        // Following again, then the subscription is cancelled: an end message within 1 s.
        send(
            &mut ws,
            json!({"op": "subscribe", "dataset": "traffic-counts", "sensors": ["tc-z"]}),
        )
        .await;
        assert_eq!(recv(&mut ws, WAIT).await.unwrap()["type"], "subscribed");
        post_counts(&gw, &device, "tc-a", 10, 5).await;
        post_counts(&gw, &device, "tc-z", 99, 1).await;
        let z = recv(&mut ws, WAIT).await.unwrap();
        assert_eq!(z["data"]["sensor_id"], "tc-z", "the filter applies");
        let (status, _) = gw
            .delete_as(&format!("/v1/subscriptions/{sub}"), &alice)
            .await;
        assert_eq!(status, 200);
        let cancelled = Instant::now();
        let end = recv(&mut ws, Duration::from_secs(3)).await.unwrap();
        assert!(
            cancelled.elapsed() < Duration::from_secs(1),
            "{:?}",
            cancelled.elapsed()
        );
        assert_eq!(
            (end["type"].clone(), end["reason"].clone()),
            (json!("end"), json!("not_entitled"))
        );
        // The socket itself stays open.
        send(&mut ws, json!({"op": "ping"})).await;
        assert_eq!(recv(&mut ws, WAIT).await.unwrap()["type"], "pong");
        let metrics = gw.metrics().await;
        assert!(
            metrics.contains("citygate_feed_deliveries_total{protocol=\"ws\"} 6"),
            "{metrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_does_not_read_is_dropped_without_slowing_anyone() {
    let gw = Gateway::start_with(|c| {
        c.feed.session_queue = 16;
        for ds in &mut c.datasets {
            ds.rate_limit = citygate::model::RateLimit {
                per_second: 1e9,
                burst: 1_000_000,
            };
        }
    })
    .await;
    let (alice, _, device) = subscribed(&gw, open_plan()).await;

    // One client never reads; another reads everything as it comes.
    let (_, stuck) = Sse::open(&gw, LIVE, &alice, None).await;
    let stuck = stuck.unwrap();
    let (_, reader) = Sse::open(&gw, LIVE, &alice, None).await;
    let mut reader = reader.unwrap();
    const BATCHES: i64 = 80;
    const PER_BATCH: i64 = 500;
    let reading = tokio::spawn(async move {
        let got = reader
            .readings((BATCHES * PER_BATCH) as usize, Duration::from_secs(30))
            .await;
        got.len()
    });
    // Every post is acknowledged (204) while the stuck client holds its session up.
    for b in 0..BATCHES {
        post_counts(&gw, &device, "tc-a", b * PER_BATCH, PER_BATCH).await;
    }
    assert_eq!(
        reading.await.unwrap(),
        (BATCHES * PER_BATCH) as usize,
        "the reader got everything"
    );
    let started = Instant::now();
    loop {
        let metrics = gw.metrics().await;
        if metrics.contains(
            "citygate_feed_sessions_ended_total{protocol=\"sse\",reason=\"slow_consumer\"} 1",
        ) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{metrics}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(stuck);
}

#[tokio::test]
async fn a_paid_period_running_out_ends_the_stream_within_a_second() {
    let gw = Gateway::start().await;
    let (alice, sub, device) = subscribed(
        &gw,
        json!({"id": "live", "name": "Live", "kind": "monthly", "currency": "DKK", "price_minor": 100}),
    )
    .await;
    // A payment of a period that ends 1.5 s from now (as a payment provider's webhook would
    // record it).
    let now = citygate::model::now_micros();
    let end = now + 1_500_000;
    let store = gw.app().store();
    let mut tx = store.pool().begin().await.unwrap();
    let payment = citygate::market::subscriptions::Payment {
        subscription: sub.clone(),
        provider: "manual".into(),
        reference: "short-period".into(),
        amount_minor: 100,
        currency: "DKK".into(),
        period_start: now,
        period_end: end,
        paid_at: now,
    };
    citygate::market::Store::apply_payment(&mut tx, &payment, now)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    gw.app().market().invalidate();

    let (status, sse) = Sse::open(&gw, LIVE, &alice, None).await;
    assert_eq!(status, 200);
    let mut sse = sse.unwrap();
    post_counts(&gw, &device, "tc-a", 0, 3).await;
    assert_eq!(sse.readings(3, WAIT).await.len(), 3, "paid: live");
    let ended = sse
        .next(Duration::from_secs(5))
        .await
        .expect("an end event");
    let late = citygate::model::now_micros() - end;
    assert_eq!(ended.event, "end");
    assert_eq!(ended.json()["reason"], "not_entitled");
    assert!(
        (0..1_000_000).contains(&late),
        "ended {late} µs after the period end"
    );
    assert_eq!(Sse::open(&gw, LIVE, &alice, None).await.0, 404);
}
