//! Attacks that once worked, replayed against the real gateway: each test failed before its
//! fix. (Issue "Hardening": reject amplification, slow bodies, revoked keys over MQTT,
//! webhook CPU burn, client-id takeover across tenants, key scope escalation, line-protocol
//! injection.)

use std::io::Write;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::harness::*;
use crate::mqtt::{
    closed_within, mqtt_port, packet, raw_client, raw_connect, raw_publish, read_n, read_packet,
};

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// The attack seen: a 22 KiB gzip body that inflates to `[1,1,1,…]`, 12 million readings,
/// each a reject. Now decoding stops at the dataset's burst and the answer is 413; nothing
/// is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_gzip_body_of_millions_of_rejects_is_refused_at_the_cap() {
    let gw = Gateway::start().await;
    let key = gw.device_key(&[TRAFFIC]).await;
    let mut body = Vec::with_capacity(24_000_002);
    body.push(b'[');
    for i in 0..12_000_000 {
        if i > 0 {
            body.push(b',');
        }
        body.push(b'1');
    }
    body.push(b']');
    let bomb = gzip(&body);
    drop(body);
    assert!(bomb.len() < 64 * 1024, "{} bytes", bomb.len());
    let resp = gw
        .client
        .post(gw.url(&format!("/v1/datasets/{TRAFFIC}/readings")))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(bomb)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(answer["error"], "payload_too_large");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("more than 5000 readings"),
        "{answer}"
    );
    // Nothing was recorded for the provider.
    let provider = gw.provider_key("copenhagen").await;
    let (status, page) = gw
        .get_as(&format!("/v1/datasets/{TRAFFIC}/rejects"), &provider)
        .await;
    assert_eq!(status, 200);
    assert_eq!(page["recent"].as_array().unwrap().len(), 0, "{page}");

    // Every format stops at the cap: NDJSON, line protocol and SenML too.
    let ndjson = "{}\n".repeat(5001);
    let resp = gw.post(TRAFFIC, &key, "application/x-ndjson", ndjson).await;
    assert_eq!(resp.status(), 413);
    let lines = "garbage\n".repeat(5001);
    let resp = gw
        .write_lp(&format!("/api/v2/write?bucket={TRAFFIC}"), &key, lines)
        .await;
    assert_eq!(resp.status(), 413);
    let senml = format!(
        "[{}]",
        (0..5001)
            .map(|i| format!(r#"{{"bn":"s{i}","n":"vehicle_count","v":1}}"#))
            .collect::<Vec<_>>()
            .join(",")
    );
    let resp = gw
        .post(TRAFFIC, &key, "application/senml+json", senml)
        .await;
    assert_eq!(resp.status(), 413);
    // Exactly the burst is fine.
    let ok: Vec<Value> = (0..5000)
        .map(|i| json!({"sensor_id": format!("s-{i}"), "vehicle_count": 1}))
        .collect();
    let other = gw.device_key(&[TRAFFIC]).await;
    assert_eq!(gw.post_json(TRAFFIC, &other, json!(ok)).await.status(), 204);
}

/// Rejects take the device's allowance like readings do, and the reject log copies no more
/// than it keeps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejects_cost_the_allowance_and_the_log_keeps_its_size() {
    let gw = Gateway::start_with(|c| {
        c.pipeline.rejects_kept = 5;
        let ds = c.datasets.iter_mut().find(|d| d.id == TRAFFIC).unwrap();
        ds.rate_limit.per_second = 0.1;
        ds.rate_limit.burst = 100;
    })
    .await;
    let key = gw.device_key(&[TRAFFIC]).await;
    let bad: Vec<Value> = (0..100)
        .map(|i| json!({"sensor_id": format!("s-{i}"), "vehicle_count": -1}))
        .collect();
    assert_eq!(gw.post_json(TRAFFIC, &key, json!(bad)).await.status(), 422);
    // The allowance is spent on rejects: a good reading now waits.
    let resp = gw
        .post_json(TRAFFIC, &key, json!({"sensor_id": "s", "vehicle_count": 1}))
        .await;
    assert_eq!(resp.status(), 429);
    let provider = gw.provider_key("copenhagen").await;
    let (_, page) = gw
        .get_as(
            &format!("/v1/datasets/{TRAFFIC}/rejects?limit=1000"),
            &provider,
        )
        .await;
    let recent = page["recent"].as_array().unwrap();
    assert_eq!(recent.len(), 5);
    assert_eq!(recent[0]["sensor_id"], "s-99", "the newest are kept");
}

/// A TCP connection to the gateway's HTTP port from `source` (another loopback address is
/// another client).
async fn connect_from(gw: &Gateway, source: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    socket.connect(gw.app().http_addr()).await.unwrap()
}

/// Everything the server sends until it closes the connection (or `limit` passes).
async fn read_to_close(s: &mut TcpStream, limit: Duration) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(limit, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The attack seen: 16 sockets sending only the headers of `POST /v1/accounts` took every
/// connection slot, and `/healthz` stopped answering. Now a body gets `request_timeout`
/// (408, then the connection closes) and one address holds at most its share of slots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_time_out_and_one_address_cannot_take_every_slot() {
    let gw = Gateway::start_with(|c| {
        c.http.max_connections = 16;
        c.http.max_connections_per_ip = 8;
        c.http.request_timeout = Duration::from_secs(2);
    })
    .await;
    let head = "POST /v1/accounts HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
                content-length: 100\r\n\r\n{";
    let mut slow = Vec::new();
    for _ in 0..8 {
        let mut s = connect_from(&gw, "127.0.0.2").await;
        s.write_all(head.as_bytes()).await.unwrap();
        slow.push(s);
    }
    // Past its share the same address is told so at once.
    let mut extra = connect_from(&gw, "127.0.0.2").await;
    let answer = read_to_close(&mut extra, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(answer.contains("too_many_connections"), "{answer}");
    // Everyone else is served meanwhile.
    let health = tokio::time::timeout(
        Duration::from_secs(1),
        gw.client.get(gw.url("/healthz")).send(),
    )
    .await
    .expect("healthz answers while the slow clients wait")
    .unwrap();
    assert_eq!(health.status(), 200);
    // The slow bodies run out of time: 408 and closed.
    for mut s in slow {
        let answer = read_to_close(&mut s, Duration::from_secs(6)).await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("request_timeout"), "{answer}");
    }
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("citygate_http_connections_refused_total 1"),
        "{metrics}"
    );
}

/// The attack seen: a webhook with 50 000 `v1=00` entries on a 2 MiB body and no key was
/// still being processed after 60 s. Now the body is capped and the header is refused at
/// its first malformed entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooded_webhook_signature_is_refused_at_once() {
    let gw = Gateway::start_with(|c| {
        c.payments.provider = citygate::config::PaymentProviderKind::Stripe;
        c.payments.stripe.api_base = "http://127.0.0.1:9".into();
        c.payments.stripe.secret_key.0 = "sk_test_x".into();
        c.payments.stripe.webhook_secrets = vec![citygate::config::Secret("whsec_x".into())];
    })
    .await;
    let t = chrono::Utc::now().timestamp();
    let flood = format!("t={t},{}", vec!["v1=00"; 50_000].join(","));
    let post = |body: Vec<u8>| {
        gw.client
            .post(gw.url("/v1/payments/webhook"))
            .header("content-type", "application/json")
            .header("stripe-signature", &flood)
            .body(body)
            .send()
    };
    let started = std::time::Instant::now();
    // Refused on its Content-Length: 413, or (when the server closes first) the upload cut.
    match post(vec![b' '; 2 << 20]).await {
        Ok(resp) => assert_eq!(resp.status(), 413),
        Err(e) => assert!(e.is_request() || e.is_body(), "{e}"),
    }
    let resp = post(br#"{"id":"evt_1","type":"invoice.paid"}"#.to_vec())
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(answer["error"], "invalid_webhook", "{answer}");
    // Generous for a loaded CI box; the attack took over a minute.
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// The id of the key `secret` authenticates as.
async fn key_id(gw: &Gateway, secret: &str) -> String {
    let (status, me) = gw.get_as("/v1/me", secret).await;
    assert_eq!(status, 200, "{me}");
    me["key"]["id"].as_str().unwrap().to_string()
}

/// MQTT 5 CONNECT for `client_id` with `key`; returns the socket and the CONNACK reason.
async fn connect5(gw: &Gateway, client_id: &str, key: &str) -> (TcpStream, u8) {
    let mut s = TcpStream::connect(("127.0.0.1", mqtt_port(gw)))
        .await
        .unwrap();
    s.write_all(&raw_connect(b"MQTT", 5, client_id, key, 0))
        .await
        .unwrap();
    let (first, body) = read_packet(&mut s).await;
    assert_eq!(first, 0x20, "CONNACK");
    (s, body[1])
}

/// An MQTT 5 QoS 1 PUBLISH (no properties).
fn publish5(topic: &str, payload: &str, pkid: u16) -> Vec<u8> {
    let mut body = crate::mqtt::mqtt_string(topic.as_bytes());
    body.extend(pkid.to_be_bytes());
    body.push(0); // no properties
    body.extend_from_slice(payload.as_bytes());
    packet(0x32, body)
}

/// The attack seen: a device over MQTT 5 kept getting PUBACK 0x00 2.5 s after its key was
/// revoked. Now the connection is told 0x87 and closed within the key cache's second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_is_disconnected_from_mqtt() {
    let gw = Gateway::start().await;
    let key = gw.device_key(&[TRAFFIC]).await;
    let id = key_id(&gw, &key).await;
    let (mut s, code) = connect5(&gw, "revoked-soon", &key).await;
    assert_eq!(code, 0x00);
    let reading = r#"{"sensor_id":"r-1","vehicle_count":1}"#;
    let topic = format!("citygate/{TRAFFIC}");
    s.write_all(&publish5(&topic, reading, 1)).await.unwrap();
    let (first, body) = read_packet(&mut s).await;
    assert_eq!(first, 0x40, "PUBACK");
    assert!(body.len() == 2 || body[2] == 0x00, "accepted: {body:?}");

    // Revoked in the database, as `citygate keys revoke` does from another process: this
    // process's key cache does not know yet.
    assert!(gw.app().store().revoke_key(&id).await.unwrap());
    let (first, body) = tokio::time::timeout(Duration::from_secs(3), read_packet(&mut s))
        .await
        .expect("the server ends the connection within the key cache's second");
    assert_eq!(first, 0xE0, "DISCONNECT");
    assert_eq!(body[0], 0x87, "not authorised");
    assert!(closed_within(&mut s, Duration::from_secs(2)).await);

    // And the key connects no more; 3.1.1 alike.
    let (_, code) = connect5(&gw, "revoked-soon", &key).await;
    assert_eq!(code, 0x87);
}

/// A 3.1.1 device whose key is revoked is closed too (3.1.1 has no DISCONNECT to send).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_is_closed_on_mqtt_311() {
    let gw = Gateway::start().await;
    let key = gw.device_key(&[TRAFFIC]).await;
    let id = key_id(&gw, &key).await;
    let mut s = raw_client(&gw, &key, "revoked-311").await;
    let (status, _) = gw.delete_as(&format!("/v1/keys/{id}"), &gw.admin_key).await;
    assert_eq!(status, 204);
    assert!(closed_within(&mut s, Duration::from_secs(3)).await);
}

/// The attack seen: a subscriber of another account connecting with a device's client id
/// disconnected that device. Client ids are now per account: the stranger gets a session of
/// its own (it can neither disconnect nor lock out the device), and only the device's own
/// account takes its session over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_id_is_not_taken_over_across_accounts() {
    let gw = Gateway::start().await;
    let device = gw.device_key(&[TRAFFIC]).await;
    let (_, stranger) = gw.account("subscriber", "Stranger", "research").await;
    let mut s = raw_client(&gw, &device, "meter-7").await;

    // Over 3.1.1 and 5, the stranger's connections with the same id are its own.
    let _intruder = raw_client(&gw, &stranger, "meter-7").await;
    let (_intruder5, code) = connect5(&gw, "meter-7", &stranger).await;
    assert_eq!(code, 0x00);

    // The device is still connected and acknowledged.
    let reading = r#"{"sensor_id":"m-7","vehicle_count":3}"#;
    s.write_all(&raw_publish(
        format!("citygate/{TRAFFIC}").as_bytes(),
        reading.as_bytes(),
        0b010,
        9,
    ))
    .await
    .unwrap();
    assert_eq!(read_n(&mut s, 4).await, [0x40, 0x02, 0x00, 0x09]);

    // A key of the same account still takes its own session over.
    let sibling = gw.device_key(&[TRAFFIC]).await;
    let _again = raw_client(&gw, &sibling, "meter-7").await;
    assert!(closed_within(&mut s, Duration::from_secs(3)).await);
}

/// The attack seen: a subscriber key limited to one dataset and one hour minted a key with
/// no limit and no expiry. Now a key never makes or manages one that reaches further.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_never_makes_or_manages_a_wider_one() {
    let gw = Gateway::start().await;
    let (_, main) = gw.account("subscriber", "Limited Co", "research").await;
    let main_id = key_id(&gw, &main).await;
    let (status, limited) = gw
        .post_as(
            "/v1/keys",
            &main,
            json!({"datasets": [TRAFFIC], "expires_in": "1h"}),
        )
        .await;
    assert_eq!(status, 201, "{limited}");
    let limited_secret = limited["secret"].as_str().unwrap().to_string();
    let limited_expiry = limited["key"]["expires_at"].as_i64().unwrap();

    // Asking for more than it has: refused.
    for wider in [
        json!({"datasets": ["weather"]}),
        json!({"datasets": [TRAFFIC, "weather"]}),
        json!({"expires_in": "2h"}),
    ] {
        let (status, body) = gw.post_as("/v1/keys", &limited_secret, wider.clone()).await;
        assert_eq!(status, 403, "{wider}: {body}");
    }
    // Asking for nothing: it gets what its maker has, no more.
    let (status, child) = gw.post_as("/v1/keys", &limited_secret, json!({})).await;
    assert_eq!(status, 201, "{child}");
    assert_eq!(child["key"]["datasets"], json!([TRAFFIC]));
    assert!(child["key"]["expires_at"].as_i64().unwrap() <= limited_expiry);
    let (status, _) = gw
        .post_as("/v1/keys", &limited_secret, json!({"expires_in": "10m"}))
        .await;
    assert_eq!(status, 201);

    // The limited key cannot touch the account's main key...
    let (status, _) = gw
        .delete_as(&format!("/v1/keys/{main_id}"), &limited_secret)
        .await;
    assert_eq!(status, 404);
    let (status, _) = gw
        .post_as(
            &format!("/v1/keys/{main_id}/rotate"),
            &limited_secret,
            json!({}),
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = gw.get_as("/v1/me", &main).await;
    assert_eq!(status, 200, "the main key still works");
    // ... but manages what it made, and the main key manages it.
    let child_id = child["key"]["id"].as_str().unwrap();
    let (status, _) = gw
        .delete_as(&format!("/v1/keys/{child_id}"), &limited_secret)
        .await;
    assert_eq!(status, 204);
    let limited_id = limited["key"]["id"].as_str().unwrap();
    let (status, _) = gw.delete_as(&format!("/v1/keys/{limited_id}"), &main).await;
    assert_eq!(status, 204);
}

/// The attack seen: a newline in a string field became a second point in the InfluxDB
/// store. Now such a value is a reject with a reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_in_strings_are_rejected() {
    let gw = Gateway::start_with(|c| {
        let ds = c.datasets.iter_mut().find(|d| d.id == TRAFFIC).unwrap();
        ds.fields
            .push(toml::from_str("name = \"note\"\ntype = \"string\"").expect("a string field"));
    })
    .await;
    let key = gw.device_key(&[TRAFFIC]).await;
    let resp = gw
        .post_json(
            TRAFFIC,
            &key,
            json!([
                {"sensor_id": "a", "vehicle_count": 1, "note": "fine"},
                {"sensor_id": "b", "vehicle_count": 1,
                 "note": "x\"\ntraffic,sensor_id=evil vehicle_count=999i"},
            ]),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(answer["accepted"], 1);
    assert_eq!(
        answer["rejected"][0]["reason"], "control_character",
        "{answer}"
    );
}

/// `curl -d` sends `application/x-www-form-urlencoded`: the README's marketplace examples
/// answered 415 as copied. A JSON body with no type or curl's default type is read as JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_bodies_sent_the_way_curl_sends_them_are_read() {
    let gw = Gateway::start().await;
    let body = r#"{"role": "subscriber", "name": "Curl User", "sector": "research"}"#;
    for content_type in [Some("application/x-www-form-urlencoded"), None] {
        let mut req = gw
            .client
            .post(gw.url("/v1/accounts"))
            .bearer_auth(&gw.admin_key)
            .body(body);
        if let Some(t) = content_type {
            req = req.header("content-type", t);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 201, "{content_type:?}");
    }
    // Not JSON with no JSON type: 415 with a hint; another type: 415.
    let resp = gw
        .client
        .post(gw.url("/v1/accounts"))
        .bearer_auth(&gw.admin_key)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("role=subscriber&name=x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 415);
    let resp = gw
        .client
        .post(gw.url("/v1/accounts"))
        .bearer_auth(&gw.admin_key)
        .header("content-type", "text/xml")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 415);
}

mod feeds {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;

    use super::*;
    use crate::live::websocket::{connect, recv, send};
    use crate::live::{LIVE, Sse, open_plan, plan, post_counts, subscribe, subscribed};

    const WAIT: Duration = Duration::from_secs(5);

    /// The attack seen: a key revoked while its WebSocket stayed open could still subscribe
    /// (and be sent the replay) with the key as it was at the upgrade. Now every subscribe
    /// authenticates the secret afresh.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_revoked_key_subscribes_to_nothing_over_an_open_websocket() {
        let gw = Gateway::start().await;
        let (alice, _, device) = subscribed(&gw, open_plan()).await;
        post_counts(&gw, &device, "tc-1", 0, 3).await;
        let mut ws = connect(&gw, &alice).await.unwrap();
        let id = key_id(&gw, &alice).await;
        let (status, _) = gw.delete_as(&format!("/v1/keys/{id}"), &gw.admin_key).await;
        assert_eq!(status, 204);
        send(
            &mut ws,
            json!({"op": "subscribe", "dataset": TRAFFIC, "last_id": "0"}),
        )
        .await;
        let closed = loop {
            match tokio::time::timeout(WAIT, ws.next()).await {
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                Ok(Some(Ok(Message::Close(frame)))) => break frame,
                other => panic!("expected the socket closed, got {other:?}"),
            }
        };
        assert_eq!(u16::from(closed.unwrap().code), 1008);
    }

    /// The attack seen: WebSockets left `http.max_connections` once upgraded, and device keys
    /// could open them. Now they count against it and device keys get none.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn websockets_count_against_the_connection_cap_and_devices_get_none() {
        let gw = Gateway::start_with(|c| c.http.max_connections = 3).await;
        let (alice, _, device) = subscribed(&gw, open_plan()).await;
        assert_eq!(connect(&gw, &device).await.err(), Some(403));
        let mut open = Vec::new();
        for _ in 0..3 {
            open.push(connect(&gw, &alice).await.unwrap());
        }
        assert_eq!(connect(&gw, &alice).await.err(), Some(503));
        // Plain requests are still served: upgraded sockets left the HTTP server's count.
        let (status, _) = gw.get_as("/v1/me", &alice).await;
        assert_eq!(status, 200);
        drop(open.pop());
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match connect(&gw, &alice).await {
                Ok(_) => break,
                Err(503) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(status) => panic!("a place freed up, got {status}"),
            }
        }
    }

    /// Sessions per account are capped on every protocol, whatever key opens them; a session
    /// ended gives its place back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_account_runs_at_most_its_share_of_live_sessions() {
        let gw = Gateway::start_with(|c| c.feed.max_sessions_per_account = 2).await;
        let (alice, _, _) = subscribed(&gw, open_plan()).await;
        let (status, first) = Sse::open(&gw, LIVE, &alice, None).await;
        assert_eq!(status, 200);
        let mut ws = connect(&gw, &alice).await.unwrap();
        send(&mut ws, json!({"op": "subscribe", "dataset": TRAFFIC})).await;
        assert_eq!(recv(&mut ws, WAIT).await.unwrap()["type"], "subscribed");
        // Following the same dataset again replaces the session: no new place needed.
        send(&mut ws, json!({"op": "subscribe", "dataset": TRAFFIC})).await;
        assert_eq!(recv(&mut ws, WAIT).await.unwrap()["type"], "subscribed");
        // Another key of the same account shares the account's places.
        let (status, other) = gw.post_as("/v1/keys", &alice, json!({})).await;
        assert_eq!(status, 201, "{other}");
        let resp = gw
            .client
            .get(gw.url(LIVE))
            .bearer_auth(other["secret"].as_str().unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 429);
        assert!(resp.headers().contains_key("retry-after"));
        let answer: Value = resp.json().await.unwrap();
        assert_eq!(answer["error"], "too_many_sessions");
        // A stream closed by its client frees its place.
        drop(first);
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let (status, sse) = Sse::open(&gw, LIVE, &alice, None).await;
            if status == 200 {
                assert!(sse.is_some());
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the place came back"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The attack seen: a free delayed session held every reading for the whole delay. Now
    /// it holds at most `[feed] max_delayed` and is ended with a reason past that.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_delayed_session_holds_a_bounded_number_of_readings() {
        let gw = Gateway::start_with(|c| c.feed.max_delayed = 5).await;
        let provider = gw.provider_key("copenhagen").await;
        plan(
            &gw,
            &provider,
            json!({"id": "slow", "name": "A day late", "kind": "free", "delay": "1d"}),
        )
        .await;
        let (_, alice) = gw.account("subscriber", "Patient", "research").await;
        subscribe(&gw, &alice, "slow").await;
        let device = gw.device_key(&[TRAFFIC]).await;
        let (_, sse) = Sse::open(&gw, LIVE, &alice, None).await;
        let mut sse = sse.unwrap();
        post_counts(&gw, &device, "tc-1", 0, 6).await;
        let end = sse.next(WAIT).await.expect("the session ends");
        assert_eq!(end.event, "end", "{end:?}");
        assert_eq!(end.json()["reason"], "delay_buffer_full");
    }

    /// SUBSCRIBE packet (MQTT 5) with `filters`, each QoS 0.
    fn subscribe5(pkid: u16, filters: &[&str]) -> Vec<u8> {
        let mut body = pkid.to_be_bytes().to_vec();
        body.push(0); // no properties
        for f in filters {
            body.extend(crate::mqtt::mqtt_string(f.as_bytes()));
            body.push(0);
        }
        packet(0x82, body)
    }

    /// The attack seen: one SUBSCRIBE repeating a filter got past the filter cap, each copy
    /// rescanning the replay history under intake's lock. Now a packet's filters past the
    /// cap, repeats included, are refused (0x97).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_subscribe_cannot_repeat_a_filter_past_the_cap() {
        let gw = Gateway::start().await;
        let (alice, _, _) = subscribed(&gw, open_plan()).await;
        let (mut s, code) = connect5(&gw, "repeater", &alice).await;
        assert_eq!(code, 0x00);
        let filter = format!("citygate/{TRAFFIC}/#");
        let filters = vec![filter.as_str(); 150];
        s.write_all(&subscribe5(1, &filters)).await.unwrap();
        let (first, body) = read_packet(&mut s).await;
        assert_eq!(first, 0x90, "SUBACK");
        // pkid, properties length 0, then one code per filter.
        let codes = &body[3..];
        assert_eq!(codes.len(), 150);
        assert!(codes[..100].iter().all(|&c| c == 0x00), "{codes:?}");
        assert!(codes[100..].iter().all(|&c| c == 0x97), "{codes:?}");
    }
}

/// The attack seen: providers could publish datasets without end, each with a sink reading
/// the whole log. Now `[market] max_datasets_per_provider` bounds them (config ones count).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_publishes_a_bounded_number_of_datasets() {
    let gw = Gateway::start_with(|c| {
        let own = c
            .datasets
            .iter()
            .filter(|d| d.provider == "copenhagen")
            .count();
        c.market.max_datasets_per_provider = own + 1;
    })
    .await;
    let provider = gw.provider_key("copenhagen").await;
    let dataset = |id: &str| {
        json!({
            "id": id, "title": "Counts", "description": "Counted.", "licence": "CC0-1.0",
            "fields": [{"name": "n", "type": "int"}]
        })
    };
    let (status, body) = gw
        .post_as("/v1/catalog", &provider, dataset("extra-1"))
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = gw
        .post_as("/v1/catalog", &provider, dataset("extra-2"))
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("max_datasets_per_provider"),
        "{body}"
    );
    // The same id again is still told it exists.
    let (status, body) = gw
        .post_as("/v1/catalog", &provider, dataset("extra-1"))
        .await;
    assert_eq!(status, 409);
    assert!(
        body["message"].as_str().unwrap().contains("exists"),
        "{body}"
    );
    // An admin is not bound by it.
    let mut by_admin = dataset("extra-3");
    by_admin["provider"] = json!("copenhagen");
    let (status, body) = gw.post_as("/v1/catalog", &gw.admin_key, by_admin).await;
    assert_eq!(status, 201, "{body}");
}

/// Links in exports never come from the client's Host header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_links_ignore_the_host_header() {
    let gw = Gateway::start().await;
    let text = gw
        .client
        .get(gw.url("/v1/catalog.jsonld"))
        .header("host", "evil.example")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!text.contains("evil.example"), "{text}");
    assert!(text.contains(&gw.base), "{text}");
}

/// A device key learns its account, never the e-mail of the people behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_key_does_not_read_its_accounts_email() {
    let gw = Gateway::start().await;
    let (status, created) = gw
        .post_as(
            "/v1/accounts",
            &gw.admin_key,
            json!({"role": "provider", "name": "Acme Energy", "sector": "energy",
                   "email": "ops@acme.example"}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let provider = created["key"]["secret"].as_str().unwrap();
    let (status, body) = gw
        .post_as(
            "/v1/catalog",
            provider,
            json!({"id": "acme-meters", "title": "Meters", "description": "Meters.",
                   "licence": "CC0-1.0", "fields": [{"name": "kwh", "type": "float"}]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, device) = gw
        .post_as(
            "/v1/keys",
            provider,
            json!({"kind": "device", "datasets": ["acme-meters"]}),
        )
        .await;
    assert_eq!(status, 201, "{device}");
    let (_, me) = gw.get_as("/v1/me", provider).await;
    assert_eq!(me["account"]["email"], "ops@acme.example");
    let (status, me) = gw
        .get_as("/v1/me", device["secret"].as_str().unwrap())
        .await;
    assert_eq!(status, 200);
    assert!(me["account"]["email"].is_null(), "{me}");
    assert_eq!(me["account"]["name"], "Acme Energy");
    let id = me["account"]["id"].as_str().unwrap();
    let (status, account) = gw
        .get_as(
            &format!("/v1/accounts/{id}"),
            device["secret"].as_str().unwrap(),
        )
        .await;
    assert_eq!(status, 200);
    assert!(account["email"].is_null(), "{account}");
}

/// Connection caps the open-file limit cannot hold are named at start, not found out when
/// `accept` starts failing.
#[test]
fn caps_above_the_open_file_limit_are_warned_of_at_start() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c")
        .arg("ulimit -n 512 && exec \"$0\" serve")
        .arg(env!("CARGO_BIN_EXE_citygate"))
        .env_remove("RUST_LOG")
        .env("CITYGATE__STORAGE__DATA_DIR", dir.path())
        .env("CITYGATE__HTTP__LISTEN", "127.0.0.1:0")
        .env("CITYGATE__MQTT__LISTEN", "127.0.0.1:0")
        .env("CITYGATE__LOG__FORMAT", "json")
        .env("CITYGATE__LOG__LEVEL", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    if let Some(url) = database_url_for(dir.path()) {
        cmd.env("CITYGATE__DATABASE__URL", url);
    }
    let mut child = cmd.spawn().unwrap();
    let mut warned = None;
    for line in BufReader::new(child.stderr.take().unwrap())
        .lines()
        .map_while(Result::ok)
    {
        let Ok(event) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if event["message"]
            .as_str()
            .is_some_and(|m| m.contains("open-file limit"))
        {
            warned = Some(event.clone());
        }
        if event["message"] == "citygate started" {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let warned = warned.expect("a warning about the open-file limit");
    assert_eq!(warned["level"], "WARN", "{warned}");
    assert_eq!(warned["open_file_limit"], 512, "{warned}");
}

/// Found by fuzzing (`fuzz/corpus/mqtt_session/crash-v5-connack-from-client`): a packet only
/// a server sends (CONNACK, SUBACK, UNSUBACK, PINGRESP, AUTH) from an MQTT 5 client made
/// rumqttd's codec panic, killing the session without a word. It is refused with DISCONNECT
/// 0x82 before it is decoded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_only_packet_from_a_client_is_a_protocol_error() {
    let gw = Gateway::start().await;
    let key = gw.device_key(&[TRAFFIC]).await;
    for first in [0x20u8, 0x90, 0xB0, 0xD0, 0xF0] {
        let (mut s, code) = connect5(&gw, "confused", &key).await;
        assert_eq!(code, 0x00);
        s.write_all(&packet(first, vec![0x00, 0x00, 0x00]))
            .await
            .unwrap();
        let (kind, body) = tokio::time::timeout(Duration::from_secs(5), read_packet(&mut s))
            .await
            .expect("answered");
        assert_eq!(kind, 0xE0, "DISCONNECT for {first:#x}");
        assert_eq!(body[0], 0x82, "protocol error for {first:#x}");
    }
}

/// Many attacks at once, none of which needs a key (plus a 64 KiB topic from a device),
/// while a well-behaved device publishes QoS 1 readings: its acknowledgements keep coming
/// promptly and `/healthz` keeps answering. The attacks: 1 000 MQTT sockets that never send
/// a CONNECT, half-open CONNECTs, a slowloris on every route of the OpenAPI document, deeply
/// nested and oversized JSON on the API, and publishes to a 64 KiB topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_well_behaved_device_is_served_through_an_attack() {
    let gw = Gateway::start_with(|c| {
        c.http.header_read_timeout = Duration::from_secs(1);
        c.mqtt.connect_timeout = Duration::from_secs(1);
    })
    .await;
    let key = gw.device_key(&[TRAFFIC]).await;
    let doc: Value = gw
        .client
        .get(gw.url("/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let paths: Vec<String> = doc["paths"].as_object().unwrap().keys().cloned().collect();

    // The attackers.
    let mqtt = ("127.0.0.1", mqtt_port(&gw));
    let mut idle = Vec::new();
    for _ in 0..1000 {
        idle.push(TcpStream::connect(mqtt).await.unwrap());
    }
    let mut half_open = Vec::new();
    for _ in 0..50 {
        let mut s = TcpStream::connect(mqtt).await.unwrap();
        let connect = raw_connect(b"MQTT", 4, "half", &key, 0);
        s.write_all(&connect[..connect.len() / 2]).await.unwrap();
        half_open.push(s);
    }
    let mut slowloris = Vec::new();
    for path in &paths {
        let path = path.replace("{id}", "x").replace("{dataset}", "x");
        let mut s = TcpStream::connect(gw.app().http_addr()).await.unwrap();
        s.write_all(format!("POST {path} HTTP/1.1\r\nhost: x\r\n").as_bytes())
            .await
            .unwrap();
        slowloris.push(s);
    }
    let nested = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let resp = gw
        .client
        .post(gw.url("/v1/accounts"))
        .bearer_auth(&gw.admin_key)
        .header("content-type", "application/json")
        .body(nested.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400, "deep JSON on the API");
    let resp = gw.post(TRAFFIC, &key, "application/json", nested).await;
    // Refused as unreadable (400) or as a reading that is not an object (422).
    assert!(
        [400, 422].contains(&resp.status().as_u16()),
        "deep JSON on intake: {}",
        resp.status()
    );
    let resp = gw
        .client
        .post(gw.url("/v1/accounts"))
        .bearer_auth(&gw.admin_key)
        .header("content-type", "application/json")
        .body(vec![b' '; 2 << 20])
        .send()
        .await;
    assert!(
        resp.map_or(true, |r| r.status() == 413),
        "oversized JSON on the API"
    );
    let (mut long_topic, _) = connect5(&gw, "long-topic", &key).await;
    let topic = format!("citygate/{TRAFFIC}/{}", "x".repeat(64 * 1024));
    long_topic
        .write_all(&publish5(&topic, r#"{"vehicle_count":1}"#, 1))
        .await
        .unwrap();

    // Meanwhile, a device publishes 500 readings, one at a time, and times each PUBACK.
    let (mut device, code) = connect5(&gw, "well-behaved", &key).await;
    assert_eq!(code, 0x00);
    let mut waits = Vec::new();
    for i in 0..500u16 {
        let reading = format!(r#"{{"sensor_id":"wb-{i}","vehicle_count":{i}}}"#);
        let started = std::time::Instant::now();
        device
            .write_all(&publish5(&format!("citygate/{TRAFFIC}"), &reading, i + 1))
            .await
            .unwrap();
        let (kind, _) = read_packet(&mut device).await;
        assert_eq!(kind, 0x40, "PUBACK");
        waits.push(started.elapsed());
    }
    waits.sort();
    let p99 = waits[waits.len() * 99 / 100];
    let health = std::time::Instant::now();
    let ok = gw.client.get(gw.url("/healthz")).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    eprintln!(
        "under attack: PUBACK p50 {:?}, p99 {p99:?}; /healthz in {:?}",
        waits[waits.len() / 2],
        health.elapsed()
    );
    // Generous (a loaded CI box, a debug build); what matters is that it is not seconds.
    assert!(p99 < Duration::from_secs(1), "PUBACK p99 {p99:?}");
    assert!(health.elapsed() < Duration::from_secs(1));

    // The slowloris sockets were cut off; the half-open CONNECTs and idle sockets too.
    for mut s in slowloris {
        assert!(closed_within(&mut s, Duration::from_secs(5)).await);
    }
    for mut s in half_open.into_iter().chain(idle.into_iter().take(20)) {
        assert!(closed_within(&mut s, Duration::from_secs(5)).await);
    }
}
