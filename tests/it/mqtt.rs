//! The MQTT endpoint, as devices see it: rumqttc clients (3.1.1 and 5) and raw byte streams.

use std::time::Duration;

use rumqttc::v5 as mqtt5;
use rumqttc::v5::mqttbytes::v5::{
    ConnectReturnCode as Connect5, DisconnectReasonCode, Packet as P5, PubAckReason,
    SubscribeReasonCode as Sub5,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::harness::*;

const WAIT: Duration = Duration::from_secs(10);

pub(crate) fn mqtt_port(gw: &Gateway) -> u16 {
    gw.app().mqtt_addr().expect("mqtt enabled").port()
}

/// An MQTT 5 client whose events arrive on a channel.
struct Client5 {
    client: mqtt5::AsyncClient,
    events: mpsc::UnboundedReceiver<Result<P5, String>>,
}

impl Client5 {
    /// Connects and returns the client with the CONNACK code it got.
    async fn try_connect(gw: &Gateway, id: &str, password: &str) -> (Client5, Connect5) {
        let mut options = mqtt5::MqttOptions::new(id, "127.0.0.1", mqtt_port(gw));
        options.set_credentials("device", password);
        options.set_keep_alive(Duration::from_secs(30));
        let (client, mut eventloop) = mqtt5::AsyncClient::new(options, 100);
        let (tx, events) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(mqtt5::Event::Incoming(packet)) => {
                        if tx.send(Ok(packet)).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                        return;
                    }
                }
            }
        });
        let mut c = Client5 { client, events };
        let code = c
            .wait_for(|p| match p {
                P5::ConnAck(ack) => Some(ack.code),
                _ => None,
            })
            .await
            .unwrap_or_else(|e| {
                // rumqttc reports a refused CONNECT as an error carrying the code.
                if e.contains("NotAuthorized") {
                    Connect5::NotAuthorized
                } else {
                    panic!("no CONNACK: {e}")
                }
            });
        (c, code)
    }

    async fn connect(gw: &Gateway, id: &str, password: &str) -> Client5 {
        let (c, code) = Client5::try_connect(gw, id, password).await;
        assert_eq!(code, Connect5::Success);
        c
    }

    /// Waits for the first incoming packet `pick` accepts; `Err` if the connection ends.
    async fn wait_for<T>(&mut self, pick: impl Fn(&P5) -> Option<T>) -> Result<T, String> {
        let deadline = Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Err(_) => panic!("timed out waiting for a packet"),
                Ok(None) => return Err("event loop ended".into()),
                Ok(Some(Err(e))) => return Err(e),
                Ok(Some(Ok(packet))) => {
                    if let Some(t) = pick(&packet) {
                        return Ok(t);
                    }
                }
            }
        }
    }

    async fn publish(&self, topic: &str, qos: u8, payload: &str) {
        let qos = match qos {
            0 => mqtt5::mqttbytes::QoS::AtMostOnce,
            1 => mqtt5::mqttbytes::QoS::AtLeastOnce,
            _ => mqtt5::mqttbytes::QoS::ExactlyOnce,
        };
        self.client
            .publish(topic, qos, false, payload.as_bytes().to_vec())
            .await
            .unwrap();
    }

    /// The next PUBACK: its reason and reason string.
    async fn puback(&mut self) -> (PubAckReason, Option<String>) {
        self.wait_for(|p| match p {
            P5::PubAck(ack) => Some((
                ack.reason,
                ack.properties
                    .as_ref()
                    .and_then(|p| p.reason_string.clone()),
            )),
            _ => None,
        })
        .await
        .unwrap()
    }

    /// Disconnects cleanly and waits until the connection is gone.
    async fn close(mut self) {
        self.client.disconnect().await.unwrap();
        while let Ok(Some(Ok(_))) = tokio::time::timeout(WAIT, self.events.recv()).await {}
    }
}

/// An MQTT 3.1.1 client (rumqttc) whose incoming packets arrive on a channel.
struct Client4 {
    client: rumqttc::AsyncClient,
    events: mpsc::UnboundedReceiver<Result<rumqttc::Packet, String>>,
}

impl Client4 {
    async fn connect(gw: &Gateway, id: &str, password: &str) -> Client4 {
        let mut options = rumqttc::MqttOptions::new(id, "127.0.0.1", mqtt_port(gw));
        options.set_credentials("device", password);
        options.set_keep_alive(Duration::from_secs(30));
        let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 100);
        let (tx, events) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(rumqttc::Event::Incoming(packet)) => {
                        if tx.send(Ok(packet)).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                        return;
                    }
                }
            }
        });
        let mut c = Client4 { client, events };
        let code = c
            .wait_for(|p| match p {
                rumqttc::Packet::ConnAck(ack) => Some(ack.code),
                _ => None,
            })
            .await
            .unwrap();
        assert_eq!(code, rumqttc::ConnectReturnCode::Success);
        c
    }

    async fn wait_for<T>(
        &mut self,
        pick: impl Fn(&rumqttc::Packet) -> Option<T>,
    ) -> Result<T, String> {
        let deadline = Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Err(_) => panic!("timed out waiting for a packet"),
                Ok(None) => return Err("event loop ended".into()),
                Ok(Some(Err(e))) => return Err(e),
                Ok(Some(Ok(packet))) => {
                    if let Some(t) = pick(&packet) {
                        return Ok(t);
                    }
                }
            }
        }
    }

    async fn publish(&self, topic: &str, qos: rumqttc::QoS, payload: &str) {
        self.client
            .publish(topic, qos, false, payload.as_bytes().to_vec())
            .await
            .unwrap();
    }

    async fn close(mut self) {
        self.client.disconnect().await.unwrap();
        while let Ok(Some(Ok(_))) = tokio::time::timeout(WAIT, self.events.recv()).await {}
    }
}

// ---- raw MQTT 3.1.1 bytes, for what no well-behaved client sends ----------------------------

pub(crate) fn remaining_length(mut len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            return out;
        }
    }
}

pub(crate) fn mqtt_string(s: &[u8]) -> Vec<u8> {
    let mut out = (s.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(s);
    out
}

pub(crate) fn packet(first: u8, body: Vec<u8>) -> Vec<u8> {
    let mut out = vec![first];
    out.extend(remaining_length(body.len()));
    out.extend(body);
    out
}

/// CONNECT with protocol `name`/`level`, user `device`, password `key`.
pub(crate) fn raw_connect(
    name: &[u8],
    level: u8,
    client_id: &str,
    key: &str,
    keep_alive: u16,
) -> Vec<u8> {
    let mut body = mqtt_string(name);
    body.push(level);
    body.push(0xC2); // user name, password, clean session
    body.extend(keep_alive.to_be_bytes());
    if level == 5 {
        body.push(0); // no properties
    }
    body.extend(mqtt_string(client_id.as_bytes()));
    body.extend(mqtt_string(b"device"));
    body.extend(mqtt_string(key.as_bytes()));
    packet(0x10, body)
}

pub(crate) fn raw_publish(topic: &[u8], payload: &[u8], flags: u8, pkid: u16) -> Vec<u8> {
    let mut body = mqtt_string(topic);
    if (flags >> 1) & 0b11 > 0 {
        body.extend(pkid.to_be_bytes());
    }
    body.extend_from_slice(payload);
    packet(0x30 | flags, body)
}

pub(crate) async fn raw_client(gw: &Gateway, key: &str, client_id: &str) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", mqtt_port(gw)))
        .await
        .unwrap();
    s.write_all(&raw_connect(b"MQTT", 4, client_id, key, 0))
        .await
        .unwrap();
    let connack = read_n(&mut s, 4).await;
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00], "CONNACK accepted");
    s
}

pub(crate) async fn read_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    tokio::time::timeout(WAIT, s.read_exact(&mut buf))
        .await
        .expect("answered in time")
        .expect("read");
    buf
}

/// Whether the server closes the connection within `limit` (reading and discarding).
pub(crate) async fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    tokio::time::timeout(limit, async {
        let mut buf = [0u8; 256];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

// ---- tests ----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_and_v5_publishes_at_every_qos_land_in_parquet() {
    let gw = Gateway::start().await;
    let key = gw.device_key(&[TRAFFIC]).await;

    let c4 = Client4::connect(&gw, "dev-v4", &key).await;
    c4.publish(
        "citygate/traffic-counts/v4-q0",
        rumqttc::QoS::AtMostOnce,
        r#"{"vehicle_count":1}"#,
    )
    .await;
    c4.publish(
        "citygate/traffic-counts",
        rumqttc::QoS::AtLeastOnce,
        r#"[{"sensor_id":"v4-q1-a","vehicle_count":2},{"sensor_id":"v4-q1-b","vehicle_count":3}]"#,
    )
    .await;
    c4.publish(
        "citygate/traffic-counts/v4-q2",
        rumqttc::QoS::ExactlyOnce,
        r#"[{"vehicle_count":4}]"#,
    )
    .await;
    let mut c4 = c4;
    c4.wait_for(|p| matches!(p, rumqttc::Packet::PubAck(_)).then_some(()))
        .await
        .unwrap();
    c4.wait_for(|p| matches!(p, rumqttc::Packet::PubComp(_)).then_some(()))
        .await
        .unwrap();
    c4.close().await;

    let mut c5 = Client5::connect(&gw, "dev-v5", &key).await;
    c5.publish("citygate/traffic-counts/v5-q0", 0, r#"{"vehicle_count":5}"#)
        .await;
    c5.publish(
        "citygate/traffic-counts/v5-q1",
        1,
        r#"{"sensor_id":"v5-q1","vehicle_count":6}"#,
    )
    .await;
    assert_eq!(c5.puback().await.0, PubAckReason::Success);
    c5.publish(
        "citygate/traffic-counts",
        2,
        "{\"sensor_id\":\"v5-q2-a\",\"vehicle_count\":7}\n{\"sensor_id\":\"v5-q2-b\",\"vehicle_count\":8}\n",
    )
    .await;
    c5.wait_for(|p| matches!(p, P5::PubComp(_)).then_some(()))
        .await
        .unwrap();
    c5.close().await;

    let dir = gw.stop().await;
    let mut ids = sensor_ids(dir.path(), TRAFFIC);
    ids.sort();
    assert_eq!(
        ids,
        [
            "v4-q0", "v4-q1-a", "v4-q1-b", "v4-q2", "v5-q0", "v5-q1", "v5-q2-a", "v5-q2-b"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_reason_codes_for_each_kind_of_reject() {
    let gw = Gateway::start_with(|c| {
        let ds = c.datasets.iter_mut().find(|d| d.id == TRAFFIC).unwrap();
        ds.rate_limit.per_second = 0.001;
        // One reject, a batch of two, one reading: rejects take the allowance too.
        ds.rate_limit.burst = 4;
    })
    .await;
    let key = gw.device_key(&[TRAFFIC]).await;
    let mut c = Client5::connect(&gw, "rejects", &key).await;

    let cases: [(&str, &str, PubAckReason, &str); 7] = [
        (
            "citygate/weather/wx-1",
            r#"{"temperature":1}"#,
            PubAckReason::NotAuthorized,
            "may not write",
        ),
        (
            "citygate/nope/x",
            r#"{"a":1}"#,
            PubAckReason::TopicNameInvalid,
            "no dataset",
        ),
        (
            "somewhere/else",
            r#"{"a":1}"#,
            PubAckReason::TopicNameInvalid,
            "not under",
        ),
        (
            "citygate/traffic-counts/tc-1",
            r#"{"vehicle_count":-1}"#,
            PubAckReason::PayloadFormatInvalid,
            "below_min",
        ),
        (
            "citygate/traffic-counts/tc-1",
            r#"{"vehicle_count":"#,
            PubAckReason::PayloadFormatInvalid,
            "invalid JSON",
        ),
        (
            "citygate/traffic-counts",
            r#"[{"sensor_id":"ok-1","vehicle_count":1},{"sensor_id":"bad","vehicle_count":-1}]"#,
            PubAckReason::Success,
            "1 of 2 readings rejected",
        ),
        (
            "citygate/traffic-counts/ok-2",
            r#"{"vehicle_count":2}"#,
            PubAckReason::Success,
            "",
        ),
    ];
    for (topic, payload, want, text) in cases {
        c.publish(topic, 1, payload).await;
        let (reason, string) = c.puback().await;
        assert_eq!(reason, want, "{topic} {payload}");
        assert!(
            string.unwrap_or_default().contains(text),
            "{topic} {payload}: wants `{text}`"
        );
    }
    // The burst of 4 is used up: over the rate limit.
    c.publish("citygate/traffic-counts/ok-3", 1, r#"{"vehicle_count":3}"#)
        .await;
    let (reason, string) = c.puback().await;
    assert_eq!(reason, PubAckReason::QuotaExceeded);
    assert!(string.unwrap().contains("rate limit"));
    c.close().await;

    let text = gw.metrics().await;
    for needle in [
        "citygate_mqtt_publishes_total{reason=\"not_authorized\"} 1",
        "citygate_mqtt_publishes_total{reason=\"topic_invalid\"} 2",
        "citygate_mqtt_publishes_total{reason=\"payload_invalid\"} 2",
        "citygate_mqtt_publishes_total{reason=\"quota_exceeded\"} 1",
        "citygate_mqtt_publishes_total{reason=\"partial\"} 1",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    let dir = gw.stop().await;
    let mut ids = sensor_ids(dir.path(), TRAFFIC);
    ids.sort();
    assert_eq!(ids, ["ok-1", "ok-2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_over_the_rate_limit_waits_instead_of_refusing() {
    let gw = Gateway::start_with(|c| {
        let ds = c.datasets.iter_mut().find(|d| d.id == TRAFFIC).unwrap();
        ds.rate_limit.per_second = 4.0;
        ds.rate_limit.burst = 1;
    })
    .await;
    let key = gw.device_key(&[TRAFFIC]).await;
    let mut c = Client4::connect(&gw, "slow", &key).await;
    let started = Instant::now();
    for i in 0..3 {
        c.publish(
            &format!("citygate/traffic-counts/slow-{i}"),
            rumqttc::QoS::AtLeastOnce,
            r#"{"vehicle_count":1}"#,
        )
        .await;
    }
    for _ in 0..3 {
        c.wait_for(|p| matches!(p, rumqttc::Packet::PubAck(_)).then_some(()))
            .await
            .unwrap();
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(400),
        "3 readings at 4/s with a burst of 1 take about 500 ms, took {elapsed:?}"
    );
    // A bad reading on 3.1.1 is acknowledged and recorded, not silently dropped.
    c.publish(
        "citygate/traffic-counts/slow-bad",
        rumqttc::QoS::AtLeastOnce,
        r#"{"vehicle_count":-9}"#,
    )
    .await;
    c.wait_for(|p| matches!(p, rumqttc::Packet::PubAck(_)).then_some(()))
        .await
        .unwrap();
    c.close().await;

    let provider = gw.provider_key("copenhagen").await;
    let page: serde_json::Value = gw
        .client
        .get(gw.url("/v1/datasets/traffic-counts/rejects"))
        .bearer_auth(&provider)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["recent"][0]["reason"], "below_min");
    assert_eq!(page["recent"][0]["sensor_id"], "slow-bad");
    let dir = gw.stop().await;
    assert_eq!(row_count(dir.path(), TRAFFIC), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_refusals_subscribe_refusals_and_takeover() {
    let gw = Gateway::start().await;
    let key = gw.device_key(&[TRAFFIC]).await;

    let (_, code) = Client5::try_connect(&gw, "intruder", "cg_not-a-key").await;
    assert_eq!(code, Connect5::NotAuthorized);
    let mut s = TcpStream::connect(("127.0.0.1", mqtt_port(&gw)))
        .await
        .unwrap();
    s.write_all(&raw_connect(b"MQTT", 4, "intruder", "wrong", 0))
        .await
        .unwrap();
    assert_eq!(
        read_n(&mut s, 4).await,
        [0x20, 0x02, 0x00, 0x05],
        "3.1.1: not authorised"
    );
    let mut s = TcpStream::connect(("127.0.0.1", mqtt_port(&gw)))
        .await
        .unwrap();
    s.write_all(&raw_connect(b"MQIsdp", 3, "old", &key, 0))
        .await
        .unwrap();
    assert_eq!(
        read_n(&mut s, 4).await,
        [0x20, 0x02, 0x00, 0x01],
        "MQTT 3.1: bad protocol version"
    );

    let mut c = Client5::connect(&gw, "subscriber", &key).await;
    c.client
        .subscribe_many([
            mqtt5::mqttbytes::v5::Filter::new(
                "citygate/traffic-counts/#",
                mqtt5::mqttbytes::QoS::AtLeastOnce,
            ),
            mqtt5::mqttbytes::v5::Filter::new("#", mqtt5::mqttbytes::QoS::AtMostOnce),
        ])
        .await
        .unwrap();
    let codes = c
        .wait_for(|p| match p {
            P5::SubAck(ack) => Some(ack.return_codes.clone()),
            _ => None,
        })
        .await
        .unwrap();
    assert_eq!(codes, [Sub5::NotAuthorized, Sub5::NotAuthorized]);

    let mut c4 = Client4::connect(&gw, "subscriber-v4", &key).await;
    c4.client
        .subscribe("citygate/#", rumqttc::QoS::AtMostOnce)
        .await
        .unwrap();
    let codes = c4
        .wait_for(|p| match p {
            rumqttc::Packet::SubAck(ack) => Some(ack.return_codes.clone()),
            _ => None,
        })
        .await
        .unwrap();
    assert_eq!(codes, [rumqttc::SubscribeReasonCode::Failure]);

    // A second connection with the same client id takes over.
    let mut first = Client5::connect(&gw, "same-id", &key).await;
    let _second = Client5::connect(&gw, "same-id", &key).await;
    // rumqttc reports the server's DISCONNECT either as a packet or as the error ending its
    // event loop, depending on timing.
    match first
        .wait_for(|p| match p {
            P5::Disconnect(d) => Some(d.reason_code),
            _ => None,
        })
        .await
    {
        Ok(reason) => assert_eq!(reason, DisconnectReasonCode::SessionTakenOver),
        Err(e) => assert!(e.contains("SessionTakenOver"), "{e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_clients_are_dropped() {
    let gw = Gateway::start_with(|c| c.mqtt.connect_timeout = Duration::from_millis(300)).await;
    let key = gw.device_key(&[TRAFFIC]).await;

    // No CONNECT at all.
    let mut s = TcpStream::connect(("127.0.0.1", mqtt_port(&gw)))
        .await
        .unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(5)).await);

    // Connected with a 1 s keep-alive, then silent: dropped after 1.5 s.
    let mut s = TcpStream::connect(("127.0.0.1", mqtt_port(&gw)))
        .await
        .unwrap();
    s.write_all(&raw_connect(b"MQTT", 4, "quiet", &key, 1))
        .await
        .unwrap();
    assert_eq!(read_n(&mut s, 4).await, [0x20, 0x02, 0x00, 0x00]);
    let started = Instant::now();
    assert!(closed_within(&mut s, Duration::from_secs(10)).await);
    assert!(
        started.elapsed() >= Duration::from_millis(1000),
        "{:?}",
        started.elapsed()
    );
    let text = gw.metrics().await;
    assert!(
        text.contains("citygate_mqtt_disconnects_total{reason=\"keep_alive_timeout\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("citygate_mqtt_connections_total{reason=\"connect_timeout\"} 1"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_violations_disconnect_only_that_client() {
    let gw =
        Gateway::start_with(|c| c.mqtt.max_packet_size = citygate::config::ByteSize::kib(4)).await;
    let key = gw.device_key(&[TRAFFIC]).await;
    let mut healthy = Client5::connect(&gw, "healthy", &key).await;

    let reading = br#"{"vehicle_count":1}"#;
    let violations: Vec<(&str, Vec<u8>)> = vec![
        (
            "remaining length past 4 bytes",
            vec![0x30, 0xff, 0xff, 0xff, 0xff, 0x01],
        ),
        (
            "QoS 3",
            raw_publish(b"citygate/traffic-counts/x", reading, 0b0110, 1),
        ),
        (
            "over max_packet_size",
            raw_publish(b"citygate/traffic-counts/x", &[b' '; 5000], 0, 0),
        ),
        ("second CONNECT", raw_connect(b"MQTT", 4, "again", &key, 0)),
        ("CONNACK from a client", vec![0x20, 0x02, 0x00, 0x00]),
        ("zero-length topic", raw_publish(b"", reading, 0b0010, 1)),
        (
            "wildcard in topic",
            raw_publish(b"citygate/+/x", reading, 0b0010, 1),
        ),
        (
            "retained publish",
            raw_publish(b"citygate/traffic-counts/x", reading, 0b0011, 1),
        ),
        (
            "QoS 1 with packet id 0",
            raw_publish(b"citygate/traffic-counts/x", reading, 0b0010, 0),
        ),
        (
            "garbage",
            b"\x00\x00\x00\x00GET / HTTP/1.1\r\n\r\n".to_vec(),
        ),
    ];
    for (what, bytes) in violations {
        let mut s = raw_client(&gw, &key, &format!("bad-{}", what.len())).await;
        s.write_all(&bytes).await.unwrap();
        assert!(
            closed_within(&mut s, Duration::from_secs(5)).await,
            "{what}: still connected"
        );
    }
    // The well-behaved client never noticed.
    healthy
        .publish(
            "citygate/traffic-counts/healthy",
            1,
            r#"{"vehicle_count":1}"#,
        )
        .await;
    assert_eq!(healthy.puback().await.0, PubAckReason::Success);
    healthy.close().await;
    let dir = gw.stop().await;
    assert_eq!(sensor_ids(dir.path(), TRAFFIC), ["healthy"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_in_flight_publishes_then_disconnects() {
    let gw = Gateway::start().await;
    let key = gw.device_key(&[TRAFFIC]).await;
    let mut c = Client5::connect(&gw, "until-the-end", &key).await;
    c.publish("citygate/traffic-counts/last", 1, r#"{"vehicle_count":1}"#)
        .await;
    assert_eq!(c.puback().await.0, PubAckReason::Success);
    let dir = gw.stop().await;
    match c
        .wait_for(|p| match p {
            P5::Disconnect(d) => Some(d.reason_code),
            _ => None,
        })
        .await
    {
        Ok(reason) => assert_eq!(reason, DisconnectReasonCode::ServerShuttingDown),
        Err(e) => assert!(e.contains("ServerShuttingDown"), "{e}"),
    }
    assert_eq!(sensor_ids(dir.path(), TRAFFIC), ["last"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_qos2_publish_is_stored_once() {
    let gw = Gateway::start().await;
    let key = gw.device_key(&[TRAFFIC]).await;
    let mut s = raw_client(&gw, &key, "exactly-once").await;
    let publish = raw_publish(
        b"citygate/traffic-counts/once",
        br#"{"vehicle_count":1}"#,
        0b0100,
        7,
    );
    s.write_all(&publish).await.unwrap();
    let mut dup = publish.clone();
    dup[0] |= 0b1000; // DUP flag
    s.write_all(&dup).await.unwrap();
    assert_eq!(read_n(&mut s, 4).await, [0x50, 0x02, 0x00, 0x07], "PUBREC");
    assert_eq!(
        read_n(&mut s, 4).await,
        [0x50, 0x02, 0x00, 0x07],
        "PUBREC again"
    );
    s.write_all(&[0x62, 0x02, 0x00, 0x07]).await.unwrap(); // PUBREL
    assert_eq!(read_n(&mut s, 4).await, [0x70, 0x02, 0x00, 0x07], "PUBCOMP");
    s.write_all(&[0xe0, 0x00]).await.unwrap(); // DISCONNECT
    let dir = gw.stop().await;
    assert_eq!(sensor_ids(dir.path(), TRAFFIC), ["once"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubacks_come_in_order_with_many_in_flight() {
    let gw = Gateway::start().await;
    let key = gw.device_key(&[TRAFFIC]).await;
    let mut s = raw_client(&gw, &key, "pipelined").await;
    // 50 publishes written at once, big and small mixed so they finish out of order.
    let mut burst = Vec::new();
    for pkid in 1..=50u16 {
        let n = if pkid % 7 == 0 { 400 } else { 1 };
        let payload = format!(
            "[{}]",
            (0..n)
                .map(|i| format!(r#"{{"sensor_id":"p{pkid}-{i}","vehicle_count":{i}}}"#))
                .collect::<Vec<_>>()
                .join(",")
        );
        burst.extend(raw_publish(
            b"citygate/traffic-counts",
            payload.as_bytes(),
            0b0010,
            pkid,
        ));
    }
    s.write_all(&burst).await.unwrap();
    for pkid in 1..=50u16 {
        let ack = read_n(&mut s, 4).await;
        assert_eq!(
            ack,
            [0x40, 0x02, (pkid >> 8) as u8, pkid as u8],
            "PUBACK {pkid} in order"
        );
    }
    s.write_all(&[0xe0, 0x00]).await.unwrap();
    let dir = gw.stop().await;
    assert_eq!(row_count(dir.path(), TRAFFIC), 7 * 400 + 43);
}

/// An MQTT 5 PUBLISH at QoS 1 with no properties.
fn raw_publish5(topic: &str, payload: &str, pkid: u16) -> Vec<u8> {
    let mut body = mqtt_string(topic.as_bytes());
    body.extend(pkid.to_be_bytes());
    body.push(0); // no properties
    body.extend_from_slice(payload.as_bytes());
    packet(0x32, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_that_arrive_together_go_to_the_log_together_and_keep_their_own_answers() {
    let gw = Gateway::start().await;
    let key = gw.device_key(&[TRAFFIC, "weather"]).await;
    let mut s = TcpStream::connect(("127.0.0.1", mqtt_port(&gw)))
        .await
        .unwrap();
    s.write_all(&raw_connect(b"MQTT", 5, "together", &key, 0))
        .await
        .unwrap();
    let (connack, body) = read_packet(&mut s).await;
    assert_eq!((connack, body[1]), (0x20, 0x00), "CONNACK accepted");
    let records_before = gw.counter("citygate_wal_records_appended_total").await;

    // 40 publishes in one write: mostly good readings, with refusals and a partial one
    // among them, to two datasets.
    let mut burst = Vec::new();
    let mut want = Vec::new();
    let mut traffic_rows = 0;
    for pkid in 1..=40u16 {
        let (topic, payload, reason, text) = match pkid {
            5 => (
                "citygate/traffic-counts/b-5",
                r#"{"vehicle_count":-1}"#.to_string(),
                0x99,
                "below_min",
            ),
            10 | 30 => (
                "citygate/weather/wx-1",
                r#"{"temperature":4.5}"#.to_string(),
                0x00,
                "",
            ),
            15 => (
                "citygate/traffic-counts/b-15",
                r#"{"vehicle_count":"#.to_string(),
                0x99,
                "invalid JSON",
            ),
            20 => (
                "citygate/air-quality/aq-1",
                r#"{"pm25":3}"#.to_string(),
                0x87,
                "may not write",
            ),
            25 => {
                traffic_rows += 1;
                (
                    "citygate/traffic-counts",
                    r#"[{"sensor_id":"p-25","vehicle_count":1},{"sensor_id":"bad","vehicle_count":-1}]"#.to_string(),
                    0x00,
                    "1 of 2 readings rejected",
                )
            }
            _ => {
                traffic_rows += 1;
                (
                    "citygate/traffic-counts/t",
                    format!(r#"{{"vehicle_count":{pkid}}}"#),
                    0x00,
                    "",
                )
            }
        };
        burst.extend(raw_publish5(topic, &payload, pkid));
        want.push((pkid, reason, text));
    }
    s.write_all(&burst).await.unwrap();
    for (pkid, reason, text) in want {
        let (first, body) = read_packet(&mut s).await;
        assert_eq!(first, 0x40, "a PUBACK for {pkid}");
        assert_eq!(
            u16::from_be_bytes([body[0], body[1]]),
            pkid,
            "PUBACKs in order"
        );
        assert_eq!(
            body.get(2).copied().unwrap_or(0),
            reason,
            "reason code of {pkid}"
        );
        assert!(
            String::from_utf8_lossy(&body).contains(text),
            "publish {pkid}: wants `{text}` in its reason string"
        );
    }
    // The 36 readings stored went to the log in a few records (one per dataset per read
    // turn), not one each.
    let records = gw.counter("citygate_wal_records_appended_total").await - records_before;
    assert!(
        (2..=6).contains(&records),
        "{records} log records for 36 stored publishes"
    );
    s.write_all(&[0xe0, 0x00]).await.unwrap();
    let dir = gw.stop().await;
    assert_eq!(row_count(dir.path(), TRAFFIC), traffic_rows);
    assert_eq!(row_count(dir.path(), "weather"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_connections_publish_at_once() {
    let gw = Gateway::start().await;
    let key = gw.device_key(&[TRAFFIC]).await;
    let port = mqtt_port(&gw);
    let mut tasks = Vec::new();
    for i in 0..1000u32 {
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            s.write_all(&raw_connect(b"MQTT", 4, &format!("crowd-{i}"), &key, 0))
                .await
                .unwrap();
            assert_eq!(read_n(&mut s, 4).await, [0x20, 0x02, 0x00, 0x00]);
            let topic = format!("citygate/traffic-counts/crowd-{i}");
            s.write_all(&raw_publish(
                topic.as_bytes(),
                br#"{"vehicle_count":1}"#,
                0b0010,
                1,
            ))
            .await
            .unwrap();
            assert_eq!(read_n(&mut s, 4).await, [0x40, 0x02, 0x00, 0x01]);
            s
        }));
    }
    let mut open = Vec::new();
    for t in tasks {
        open.push(t.await.unwrap());
    }
    let text = gw.metrics().await;
    assert!(
        text.contains("citygate_mqtt_connections_open 1000"),
        "all 1000 open at once"
    );
    drop(open);
    let dir = gw.stop().await;
    let mut ids = sensor_ids(dir.path(), TRAFFIC);
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 1000);
}

/// Publishes received by a subscriber until `quiet` passes without one: (topic, payload
/// JSON, retain).
async fn collect5(c: &mut Client5, quiet: Duration) -> Vec<(String, serde_json::Value, bool)> {
    let mut got = Vec::new();
    while let Ok(Some(Ok(packet))) = tokio::time::timeout(quiet, c.events.recv()).await {
        if let P5::Publish(p) = packet {
            got.push((
                String::from_utf8_lossy(&p.topic).to_string(),
                serde_json::from_slice(&p.payload).unwrap(),
                p.retain,
            ));
        }
    }
    got
}

/// Prices traffic-counts with a free plan and subscribes a new subscriber; returns its key.
async fn entitled_subscriber(gw: &Gateway) -> String {
    let provider = gw.provider_key("copenhagen").await;
    let (status, _) = gw
        .post_as(
            "/v1/catalog/traffic-counts/plans",
            &provider,
            serde_json::json!({"id": "open", "name": "Open data", "kind": "free"}),
        )
        .await;
    assert_eq!(status, 201);
    let (_, key) = gw.account("subscriber", "Mobility Lab", "research").await;
    let (status, _) = gw
        .post_as(
            "/v1/subscriptions",
            &key,
            serde_json::json!({"plan": "open"}),
        )
        .await;
    assert_eq!(status, 201);
    key
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_gets_only_what_it_is_entitled_to_filter_by_filter() {
    let gw = Gateway::start().await;
    let alice = entitled_subscriber(&gw).await;
    let device = gw.device_key(&[TRAFFIC, "weather"]).await;
    let mut sub = Client5::connect(&gw, "alice", &alice).await;
    use mqtt5::mqttbytes::QoS;
    use mqtt5::mqttbytes::v5::Filter;
    let filters = [
        (
            "citygate/traffic-counts/#",
            Sub5::Success(mqtt5::mqttbytes::QoS::AtLeastOnce),
        ),
        ("#", Sub5::NotAuthorized),
        ("+/#", Sub5::NotAuthorized),
        ("citygate/#", Sub5::NotAuthorized),
        ("citygate/+/x", Sub5::NotAuthorized),
        ("citygate/weather/#", Sub5::NotAuthorized),
        ("$share/g/citygate/weather/#", Sub5::NotAuthorized),
        ("$SYS/#", Sub5::NotAuthorized),
        ("citygate/Traffic-Counts/#", Sub5::NotAuthorized),
        ("citygate/traffic_counts/#", Sub5::NotAuthorized),
        (
            "citygate/traffic-counts/tc-1",
            Sub5::Success(mqtt5::mqttbytes::QoS::AtLeastOnce),
        ),
    ];
    sub.client
        .subscribe_many(
            filters
                .iter()
                .map(|(f, _)| Filter::new(*f, QoS::AtLeastOnce)),
        )
        .await
        .unwrap();
    let codes = sub
        .wait_for(|p| match p {
            P5::SubAck(ack) => Some(ack.return_codes.clone()),
            _ => None,
        })
        .await
        .unwrap();
    let expected: Vec<Sub5> = filters.iter().map(|(_, c)| *c).collect();
    assert_eq!(codes, expected);

    // The device publishes to both datasets; only traffic-counts reaches the subscriber,
    // tc-1 twice (it matches two of its filters).
    let mut dev = Client5::connect(&gw, "device", &device).await;
    for (topic, payload) in [
        ("citygate/traffic-counts/tc-1", r#"{"vehicle_count": 11}"#),
        ("citygate/weather/w-1", r#"{"temperature": 4.5}"#),
        ("citygate/traffic-counts/tc-2", r#"{"vehicle_count": 22}"#),
    ] {
        dev.publish(topic, 1, payload).await;
        assert_eq!(dev.puback().await.0, PubAckReason::Success);
    }
    let got = collect5(&mut sub, Duration::from_millis(700)).await;
    let mut seen: Vec<(String, i64)> = got
        .iter()
        .map(|(t, p, _)| {
            (
                t.clone(),
                p["fields"]["vehicle_count"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("citygate/traffic-counts/tc-1".to_string(), 11),
            ("citygate/traffic-counts/tc-1".to_string(), 11),
            ("citygate/traffic-counts/tc-2".to_string(), 22),
        ]
    );
    assert!(
        got.iter()
            .all(|(_, p, retain)| p["dataset"] == TRAFFIC && !retain)
    );

    // A later subscriber gets each sensor's last reading first, retained.
    let mut late = Client5::connect(&gw, "alice-late", &alice).await;
    late.client
        .subscribe("citygate/traffic-counts/+", QoS::AtMostOnce)
        .await
        .unwrap();
    let mut retained: Vec<(String, bool)> = collect5(&mut late, Duration::from_millis(500))
        .await
        .into_iter()
        .map(|(t, _, r)| (t, r))
        .collect();
    retained.sort();
    assert_eq!(
        retained,
        [
            ("citygate/traffic-counts/tc-1".to_string(), true),
            ("citygate/traffic-counts/tc-2".to_string(), true),
        ]
    );

    // A subscriber cannot publish, and cannot leave a will.
    sub.publish("citygate/traffic-counts/tc-9", 1, r#"{"vehicle_count": 1}"#)
        .await;
    assert_eq!(sub.puback().await.0, PubAckReason::NotAuthorized);
    let mut options = mqtt5::MqttOptions::new("alice-will", "127.0.0.1", mqtt_port(&gw));
    options.set_credentials("subscriber", &alice);
    options.set_last_will(mqtt5::mqttbytes::v5::LastWill::new(
        "citygate/traffic-counts/x",
        "gone",
        QoS::AtMostOnce,
        false,
        None,
    ));
    let (_client, mut eventloop) = mqtt5::AsyncClient::new(options, 10);
    let err = eventloop.poll().await.expect_err("a will is refused");
    assert!(err.to_string().contains("NotAuthorized"), "{err}");

    // Revoking the key ends the subscription within a second: DISCONNECT 0x87.
    let (_, me) = gw.get_as("/v1/me", &alice).await;
    let key_id = me["key"]["id"].as_str().unwrap().to_string();
    assert_eq!(
        gw.delete_as(&format!("/v1/keys/{key_id}"), &alice).await.0,
        204
    );
    let revoked = Instant::now();
    match sub
        .wait_for(|p| match p {
            P5::Disconnect(d) => Some(d.reason_code),
            _ => None,
        })
        .await
    {
        Ok(reason) => assert_eq!(reason, DisconnectReasonCode::NotAuthorized),
        Err(e) => assert!(e.contains("NotAuthorized"), "{e}"),
    }
    assert!(
        revoked.elapsed() < Duration::from_secs(1),
        "{:?}",
        revoked.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_311_subscriber_gets_per_filter_codes_and_qos1_deliveries() {
    let gw = Gateway::start().await;
    let alice = entitled_subscriber(&gw).await;
    let device = gw.device_key(&[TRAFFIC]).await;
    let mut sub = Client4::connect(&gw, "alice-311", &alice).await;
    sub.client
        .subscribe_many([
            rumqttc::SubscribeFilter::new(
                "citygate/traffic-counts/#".into(),
                rumqttc::QoS::AtLeastOnce,
            ),
            rumqttc::SubscribeFilter::new("citygate/weather/#".into(), rumqttc::QoS::AtLeastOnce),
            rumqttc::SubscribeFilter::new(
                "citygate/traffic-counts/+".into(),
                rumqttc::QoS::ExactlyOnce,
            ),
        ])
        .await
        .unwrap();
    let codes = sub
        .wait_for(|p| match p {
            rumqttc::Packet::SubAck(ack) => Some(ack.return_codes.clone()),
            _ => None,
        })
        .await
        .unwrap();
    use rumqttc::SubscribeReasonCode as Sub4;
    assert_eq!(
        codes,
        [
            Sub4::Success(rumqttc::QoS::AtLeastOnce),
            Sub4::Failure,
            Sub4::Success(rumqttc::QoS::AtLeastOnce),
        ],
        "QoS 2 is granted as 1"
    );
    sub.client
        .unsubscribe("citygate/traffic-counts/+")
        .await
        .unwrap();
    let mut dev = Client5::connect(&gw, "device", &device).await;
    for i in 0..20 {
        dev.publish(
            &format!("citygate/traffic-counts/tc-{i}"),
            1,
            &format!(r#"{{"vehicle_count": {i}}}"#),
        )
        .await;
        dev.puback().await;
    }
    let mut counts = Vec::new();
    while counts.len() < 20 {
        let (qos, count) = sub
            .wait_for(|p| match p {
                rumqttc::Packet::Publish(p) => {
                    Some((
                        p.qos,
                        serde_json::from_slice::<serde_json::Value>(&p.payload).unwrap()["fields"]
                            ["vehicle_count"]
                            .as_i64()
                            .unwrap(),
                    ))
                }
                _ => None,
            })
            .await
            .unwrap();
        assert_eq!(qos, rumqttc::QoS::AtLeastOnce);
        counts.push(count);
    }
    assert_eq!(counts, (0..20).collect::<Vec<_>>(), "in order, once each");
}

/// Reads one whole MQTT packet: (first byte, body).
pub(crate) async fn read_packet(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let first = read_n(s, 1).await[0];
    let mut len = 0usize;
    let mut shift = 0;
    loop {
        let b = read_n(s, 1).await[0];
        len |= ((b & 0x7F) as usize) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            break;
        }
    }
    (first, read_n(s, len).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unacknowledged_qos1_delivery_is_sent_again_to_a_311_subscriber() {
    let gw = Gateway::start().await;
    let alice = entitled_subscriber(&gw).await;
    let device = gw.device_key(&[TRAFFIC]).await;
    let mut s = raw_client(&gw, &alice, "raw-subscriber").await;
    // SUBSCRIBE pkid 1: citygate/traffic-counts/# at QoS 1.
    let mut body = 1u16.to_be_bytes().to_vec();
    body.extend(mqtt_string(b"citygate/traffic-counts/#"));
    body.push(1);
    s.write_all(&packet(0x82, body)).await.unwrap();
    assert_eq!(
        read_n(&mut s, 5).await,
        [0x90, 0x03, 0x00, 0x01, 0x01],
        "SUBACK QoS 1"
    );

    let mut dev = Client5::connect(&gw, "device", &device).await;
    dev.publish("citygate/traffic-counts/tc-1", 1, r#"{"vehicle_count": 5}"#)
        .await;
    assert_eq!(dev.puback().await.0, PubAckReason::Success);
    let (first, body) = read_packet(&mut s).await;
    assert_eq!(first, 0x32, "PUBLISH, QoS 1, no DUP: {first:#x}");
    let topic_len = u16::from_be_bytes([body[0], body[1]]) as usize;
    assert_eq!(&body[2..2 + topic_len], b"citygate/traffic-counts/tc-1");
    let pkid = [body[2 + topic_len], body[3 + topic_len]];
    let sent = Instant::now();
    // Not acknowledged: the same delivery again, flagged DUP, after the retry interval.
    let (again, body_again) = read_packet(&mut s).await;
    assert_eq!(again, 0x3A, "PUBLISH, QoS 1, DUP: {again:#x}");
    assert_eq!(body_again, body);
    assert!(
        sent.elapsed() >= Duration::from_secs(4),
        "{:?}",
        sent.elapsed()
    );
    // Acknowledged: nothing more.
    s.write_all(&[0x40, 0x02, pkid[0], pkid[1]]).await.unwrap();
    let mut buf = [0u8; 16];
    assert!(
        tokio::time::timeout(Duration::from_secs(6), s.read(&mut buf))
            .await
            .is_err(),
        "no third delivery"
    );
}
