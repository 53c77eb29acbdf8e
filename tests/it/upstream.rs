//! Intake from a broker citygate does not run: Debian's mosquitto as the city's broker,
//! devices publishing to it with rumqttc, citygate subscribed as `[[upstream]]`.

use std::process::Command;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::json;

use crate::broker::{Broker, publish};
use crate::harness::*;

impl Broker {
    fn upstream(&self, name: &str) -> citygate::config::UpstreamConfig {
        toml::from_str(&format!(
            "name = \"{name}\"\nurl = \"mqtt://127.0.0.1:{}\"\ntopic = \"city/{{dataset}}/{{sensor_id}}\"\n\
             allow_datasets = [\"traffic-counts\", \"weather\"]\n\
             share_group = \"citygate\"\nclient_id = \"citygate-{name}-node\"\n",
            self.port
        ))
        .unwrap()
    }
}

/// A counter or gauge of the gateway's metrics by its full name with labels (every upstream
/// series exists from the start: a name not there is a mistake of the test).
pub(crate) async fn metric(gw: &Gateway, name: &str) -> u64 {
    gw.metrics()
        .await
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .unwrap_or_else(|| panic!("no metric {name}"))
}

pub(crate) async fn until(gw: &Gateway, name: &str, at_least: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = metric(gw, name).await;
        if now >= at_least {
            return;
        }
        if Instant::now() >= deadline {
            let text = gw.metrics().await;
            let upstream: Vec<&str> = text
                .lines()
                .filter(|l| {
                    l.starts_with("citygate_upstream")
                        || l.starts_with("citygate_cluster")
                        || l.starts_with("citygate_readings_accepted")
                })
                .collect();
            panic!(
                "{name} stayed at {now}, below {at_least}:\n{}",
                upstream.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A gateway taking `up` in (with `traffic-counts` limited to `limit` per second and burst,
/// when given), once it has subscribed.
async fn subscribed(up: citygate::config::UpstreamConfig, limit: Option<(f64, u32)>) -> Gateway {
    let name = up.name.clone();
    let gw = Gateway::start_with(|c| {
        c.upstream = vec![up];
        if let Some((per_second, burst)) = limit {
            let traffic = c
                .datasets
                .iter_mut()
                .find(|d| d.id == "traffic-counts")
                .unwrap();
            traffic.rate_limit = citygate::model::RateLimit { per_second, burst };
        }
    })
    .await;
    until(
        &gw,
        &format!("citygate_upstream_connected{{upstream=\"{name}\"}}"),
        1,
    )
    .await;
    // The broker has the subscription before devices publish (a fresh session holds
    // nothing yet).
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw
}

const CONNECTED: &str = "citygate_upstream_connected{upstream=\"city\"}";
const ACKS: &str = "citygate_upstream_acks_total{upstream=\"city\"}";

#[tokio::test]
async fn readings_from_a_broker_are_kept_once_and_bad_ones_are_on_record() {
    let broker = Broker::start();
    let up = broker.upstream("city");
    let gw = Gateway::start_with(|c| c.upstream = vec![up]).await;
    until(&gw, CONNECTED, 1).await;
    // Give the broker the subscription before devices publish (a fresh session holds
    // nothing yet).
    tokio::time::sleep(Duration::from_millis(300)).await;

    let now = now_ms();
    let mut messages: Vec<(String, Vec<u8>)> = (0..300)
        .map(|i| {
            (
                format!("city/traffic-counts/up-{}", i % 10),
                json!({"ts": now + i, "vehicle_count": i})
                    .to_string()
                    .into_bytes(),
            )
        })
        .collect();
    messages.push((
        "city/traffic-counts/up-x".into(),
        br#"{"vehicle_count": "many"}"#.to_vec(),
    ));
    messages.push((
        "city/traffic-counts/up-y".into(),
        b"not json at all".to_vec(),
    ));
    messages.push((
        "city/nowhere/up-z".into(),
        br#"{"vehicle_count": 1}"#.to_vec(),
    ));
    // A dataset of the gateway this upstream may not write, and a topic level that is no
    // sensor id.
    messages.push((
        "city/energy-meters/em-1".into(),
        br#"{"energy_kwh": 1.0}"#.to_vec(),
    ));
    messages.push((
        "city/traffic-counts/has space".into(),
        br#"{"vehicle_count": 1}"#.to_vec(),
    ));
    broker.publish(messages).await;

    until(&gw, ACKS, 305).await;
    assert_eq!(
        metric(
            &gw,
            "citygate_readings_accepted_total{dataset=\"traffic-counts\"}"
        )
        .await,
        300
    );
    for (outcome, n) in [
        ("stored", 300),
        ("rejected", 1),
        ("malformed", 2),
        ("unroutable", 2),
        ("retained", 0),
    ] {
        let name =
            format!("citygate_upstream_messages_total{{upstream=\"city\",outcome=\"{outcome}\"}}");
        assert_eq!(metric(&gw, &name).await, n, "{outcome}");
    }
    assert_eq!(
        metric(&gw, "citygate_upstream_in_flight{upstream=\"city\"}").await,
        0
    );

    // The provider reads why, and from where.
    let provider = gw.provider_key("copenhagen").await;
    let (status, page) = gw
        .get_as("/v1/datasets/traffic-counts/rejects", &provider)
        .await;
    assert_eq!(status, 200, "{page}");
    let recent = page["recent"].as_array().unwrap();
    assert!(
        recent.iter().any(|r| r["reason"] == "wrong_type"
            && r["sensor_id"] == "up-x"
            && r["key_id"] == "upstream:city/up-x"),
        "{page}"
    );
    assert!(
        recent
            .iter()
            .any(|r| r["reason"] == "malformed" && r["key_id"] == "upstream:city/up-y"),
        "{page}"
    );

    let dir = gw.stop().await;
    let mut ids = sensor_ids(dir.path(), "traffic-counts");
    ids.sort();
    assert_eq!(ids.len(), 300, "each reading once in Parquet");
    assert_eq!(ids.iter().filter(|s| *s == "up-3").count(), 30);
}

#[tokio::test]
async fn what_arrives_while_the_gateway_is_down_waits_at_the_broker() {
    let broker = Broker::start();
    let gw = subscribed(broker.upstream("city"), None).await;
    let admin = gw.admin_key.clone();
    let dir = gw.stop().await;

    // The broker keeps the session (same client id, not clean) and queues for it.
    let now = now_ms();
    broker
        .publish(
            (0..50)
                .map(|i| {
                    (
                        format!("city/weather/ws-{i}"),
                        json!({"ts": now + i, "temperature": 4.5, "humidity": 80.0})
                            .to_string()
                            .into_bytes(),
                    )
                })
                .collect(),
        )
        .await;
    let up = broker.upstream("city");
    let gw = Gateway::start_on(dir, admin, |c| c.upstream = vec![up]).await;
    until(&gw, ACKS, 50).await;
    let dir = gw.stop().await;
    assert_eq!(sensor_ids(dir.path(), "weather").len(), 50);
}

#[tokio::test]
async fn a_things_stack_uplink_lands_as_a_reading_with_its_decoded_fields() {
    let broker = Broker::start();
    let up: citygate::config::UpstreamConfig = toml::from_str(&format!(
        "name = \"ttn\"\nurl = \"mqtt://127.0.0.1:{}\"\ntopic = \"v3/+/devices/{{sensor_id}}/up\"\n\
         dataset = \"air-quality\"\nformat = \"the_things_stack\"\n",
        broker.port
    ))
    .unwrap();
    let gw = subscribed(up, None).await;
    let received = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let uplink = json!({
        "end_device_ids": {"device_id": "aq-lora-1", "application_ids": {"application_id": "air"},
                           "dev_eui": "70B3D57ED0000001"},
        "received_at": received,
        "uplink_message": {"f_port": 1, "frm_payload": "AAE=",
                           "decoded_payload": {"pm2_5": 7.5, "pm10": 12.0, "no2": 21.0},
                           "rx_metadata": [{"gateway_ids": {"gateway_id": "gw-1"}, "rssi": -97}]}
    });
    broker
        .publish(vec![(
            "v3/air@ttn/devices/aq-lora-1/up".into(),
            uplink.to_string().into_bytes(),
        )])
        .await;
    until(&gw, "citygate_upstream_acks_total{upstream=\"ttn\"}", 1).await;
    let provider = gw.provider_key("copenhagen").await;
    let (status, latest) = gw
        .get_as("/v1/datasets/air-quality/latest", &provider)
        .await;
    assert_eq!(status, 200, "{latest}");
    let reading = &latest["readings"][0];
    assert_eq!(reading["sensor_id"], "aq-lora-1", "{latest}");
    assert_eq!(reading["pm2_5"], 7.5, "{latest}");
    assert_eq!(reading["no2"], 21.0, "{latest}");
    assert_eq!(
        reading["ts"].as_str().unwrap()[..19],
        received[..19],
        "the network's receive time is the reading's"
    );
}

#[tokio::test]
async fn over_the_rate_limit_the_broker_waits_for_its_acknowledgements() {
    let broker = Broker::start();
    let up = broker.upstream("city");
    let gw = subscribed(up, Some((10.0, 5))).await;
    let now = now_ms();
    let started = Instant::now();
    broker
        .publish(
            (0..25)
                .map(|i| {
                    (
                        "city/traffic-counts/busy-1".to_string(),
                        json!({"ts": now + i, "vehicle_count": i})
                            .to_string()
                            .into_bytes(),
                    )
                })
                .collect(),
        )
        .await;
    // Five at once, then ten a second: the last acknowledgement cannot come before 2 s.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let early = metric(&gw, ACKS).await;
    assert!((5..25).contains(&early), "{early} acknowledged after 0.6 s");
    assert!(metric(&gw, "citygate_upstream_in_flight{upstream=\"city\"}").await > 0);
    until(&gw, ACKS, 25).await;
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let dir = gw.stop().await;
    assert_eq!(
        sensor_ids(dir.path(), "traffic-counts").len(),
        25,
        "every one kept, once"
    );
}

#[tokio::test]
async fn two_nodes_in_one_share_group_split_the_messages_and_keep_each_once() {
    let broker = Broker::start();
    let node = |id: &str| {
        let mut up = broker.upstream("city");
        up.client_id = format!("citygate-{id}");
        up
    };
    let (a, b) = (node("a"), node("b"));
    let gw_a = Gateway::start_with(|c| c.upstream = vec![a]).await;
    let gw_b = Gateway::start_with(|c| c.upstream = vec![b]).await;
    until(&gw_a, CONNECTED, 1).await;
    until(&gw_b, CONNECTED, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let now = now_ms();
    broker
        .publish(
            (0..400)
                .map(|i| {
                    (
                        format!("city/traffic-counts/split-{}", i % 20),
                        json!({"ts": now + i, "vehicle_count": i})
                            .to_string()
                            .into_bytes(),
                    )
                })
                .collect(),
        )
        .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&gw_a, ACKS).await + metric(&gw_b, ACKS).await < 400 {
        assert!(Instant::now() < deadline, "not every message acknowledged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (took_a, took_b) = (metric(&gw_a, ACKS).await, metric(&gw_b, ACKS).await);
    assert!(
        took_a > 0 && took_b > 0,
        "the group split them: {took_a} and {took_b}"
    );
    let (dir_a, dir_b) = (gw_a.stop().await, gw_b.stop().await);
    let mut ids = sensor_ids(dir_a.path(), "traffic-counts");
    assert_eq!(ids.len() as u64, took_a);
    ids.extend(sensor_ids(dir_b.path(), "traffic-counts"));
    assert_eq!(ids.len(), 400, "each message in one lake, once");
}

/// A counter of a gateway process's metrics.
pub(crate) async fn process_metric(http: &str, name: &str) -> u64 {
    let Ok(r) = reqwest::get(format!("http://{http}/metrics")).await else {
        return 0;
    };
    r.text()
        .await
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

#[tokio::test]
async fn a_node_killed_mid_stream_loses_and_doubles_nothing_the_broker_handed_it() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let loadtest = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/loadtest.toml");
    let config = dir.path().join("citygate.toml");
    std::fs::write(
        &config,
        format!(
            "{}\n[[upstream]]\nname = \"city\"\nurl = \"mqtt://127.0.0.1:{}\"\n\
             topic = \"city/{{dataset}}/{{sensor_id}}\"\nallow_datasets = [\"traffic-counts\"]\n\
             client_id = \"citygate-killed\"\n",
            std::fs::read_to_string(&loadtest).unwrap(),
            broker.port
        ),
    )
    .unwrap();
    // The database, made once (on PostgreSQL, the test's own).
    let mut cli = bin_on(&data);
    cli.arg("--config").arg(&config);
    cli_device_key(cli);
    let env = [("CITYGATE__PARQUET__MAX_AGE", "150ms")];

    let server = spawn_gateway(&config, &data, &env);
    let deadline = Instant::now() + Duration::from_secs(30);
    while process_metric(&server.http, CONNECTED).await < 1 {
        assert!(Instant::now() < deadline, "never connected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // 3 000 devices' readings wait at the broker; the node dies a fifth of the way through.
    const N: usize = 3000;
    let now = now_ms();
    let publisher = {
        let messages: Vec<(String, Vec<u8>)> = (0..N)
            .map(|i| {
                (
                    format!("city/traffic-counts/k-{i:04}"),
                    json!({"ts": now, "vehicle_count": 1})
                        .to_string()
                        .into_bytes(),
                )
            })
            .collect();
        let port = broker.port;
        // About 3 000 a second, so that the kill lands with most still to come.
        tokio::spawn(async move {
            for part in messages.chunks(300) {
                publish(port, part.to_vec()).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while process_metric(&server.http, ACKS).await < (N / 5) as u64 {
        assert!(
            Instant::now() < deadline,
            "the node took too little before the kill"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let killed = Command::new("kill")
        .args(["-KILL", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    drop(server);
    publisher.await.unwrap();

    // The next life takes what was not acknowledged, then stops cleanly.
    let server = spawn_gateway(&config, &data, &env);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = (0, Instant::now());
    loop {
        let acks = process_metric(&server.http, ACKS).await;
        let in_flight = process_metric(
            &server.http,
            "citygate_upstream_in_flight{upstream=\"city\"}",
        )
        .await;
        if acks != last.0 {
            last = (acks, Instant::now());
        } else if in_flight == 0 && last.1.elapsed() > Duration::from_secs(2) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the broker's backlog never drained: {acks} acknowledged, {in_flight} in flight, {}",
            process_metric(
                &server.http,
                "citygate_upstream_connected{upstream=\"city\"}"
            )
            .await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut server = server;
    server.stop_cleanly();

    let mut counts = std::collections::HashMap::<String, usize>::new();
    for id in sensor_ids(&data, "traffic-counts") {
        *counts.entry(id).or_default() += 1;
    }
    let missing: Vec<String> = (0..N)
        .map(|i| format!("k-{i:04}"))
        .filter(|id| !counts.contains_key(id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    // A message stored but not yet acknowledged when the node died comes again (DUP), and
    // is found stored.
    let doubled = counts.values().filter(|&&n| n > 1).count();
    eprintln!("{N} messages through a kill: none lost, {doubled} stored twice");
    assert_eq!(doubled, 0, "stored twice");
}

#[tokio::test]
async fn a_retained_message_is_not_taken_again_on_every_subscribe() {
    let broker = Broker::start();
    let now = now_ms();
    // A device's retained "last value", at the broker before citygate subscribes.
    let mut options = MqttOptions::new("retainer", "127.0.0.1", broker.port);
    options.set_inflight(10);
    let (client, mut events) = AsyncClient::new(options, 10);
    client
        .publish(
            "city/traffic-counts/kept-1",
            QoS::AtLeastOnce,
            true,
            json!({"ts": now, "vehicle_count": 7}).to_string(),
        )
        .await
        .unwrap();
    loop {
        if let Event::Incoming(Packet::PubAck(_)) = events.poll().await.unwrap() {
            break;
        }
    }
    let gw = subscribed(broker.upstream("city"), None).await;
    broker
        .publish(vec![(
            "city/traffic-counts/live-1".into(),
            json!({"ts": now + 1, "vehicle_count": 1})
                .to_string()
                .into_bytes(),
        )])
        .await;
    until(&gw, ACKS, 1).await;
    let admin = gw.admin_key.clone();
    let dir = gw.stop().await;
    // Subscribing again (a restart) does not bring it either.
    let gw = Gateway::start_on(dir, admin, |c| c.upstream = vec![broker.upstream("city")]).await;
    until(&gw, CONNECTED, 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(metric(&gw, ACKS).await, 0);
    let dir = gw.stop().await;
    assert_eq!(sensor_ids(dir.path(), "traffic-counts"), ["live-1"]);
}

/// A TCP relay between citygate and the broker whose connections can be cut, as a network
/// would: the broker keeps the session, the client reconnects.
struct Relay {
    port: u16,
    connections: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Relay {
    async fn start(to: u16) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>> =
            Default::default();
        let held = connections.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", to)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                held.lock().unwrap().push(task);
            }
        });
        Relay { port, connections }
    }

    /// Cuts every open connection.
    fn cut(&self) {
        for task in self.connections.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

#[tokio::test]
async fn what_was_stored_but_not_acknowledged_when_the_connection_broke_is_not_stored_twice() {
    let broker = Broker::start();
    let relay = Relay::start(broker.port).await;
    let mut up = broker.upstream("city");
    up.url = format!("mqtt://127.0.0.1:{}", relay.port);
    let gw = subscribed(up, Some((0.5, 1))).await;
    // A device's second reading waits two seconds for its allowance; the twenty readings
    // behind it are stored at once, their acknowledgements held in order behind it.
    let now = now_ms();
    let reading = |sensor: &str, i: i64| {
        (
            format!("city/traffic-counts/{sensor}"),
            json!({"ts": now + i, "vehicle_count": i})
                .to_string()
                .into_bytes(),
        )
    };
    let mut messages = vec![reading("slow-1", 0), reading("slow-1", 1)];
    messages.extend((0..20).map(|i| reading(&format!("fast-{i}"), 2 + i)));
    broker.publish(messages).await;
    let accepted = "citygate_readings_accepted_total{dataset=\"traffic-counts\"}";
    until(&gw, accepted, 21).await;
    assert!(metric(&gw, ACKS).await <= 1);

    // The connection breaks; the broker sends the unacknowledged again (DUP).
    relay.cut();
    until(&gw, ACKS, 22).await;
    let duplicate = "citygate_upstream_messages_total{upstream=\"city\",outcome=\"duplicate\"}";
    assert!(metric(&gw, duplicate).await >= 20, "{}", gw.metrics().await);
    let dir = gw.stop().await;
    let mut ids = sensor_ids(dir.path(), "traffic-counts");
    ids.sort();
    let mut expected: Vec<String> = (0..20).map(|i| format!("fast-{i}")).collect();
    expected.extend(["slow-1".to_string(), "slow-1".to_string()]);
    expected.sort();
    assert_eq!(ids, expected, "each reading once");
}

#[tokio::test]
async fn a_chirpstack_uplink_lands_as_a_reading_of_its_device() {
    let broker = Broker::start();
    let up: citygate::config::UpstreamConfig = toml::from_str(&format!(
        "name = \"chirp\"\nurl = \"mqtt://127.0.0.1:{}\"\n\
         topic = \"application/+/device/+/event/up\"\ndataset = \"energy-meters\"\n\
         format = \"chirpstack\"\n",
        broker.port
    ))
    .unwrap();
    let gw = subscribed(up, None).await;
    let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let uplink = |name: &str, energy: f64| {
        json!({"deduplicationId": "d-1", "time": time,
               "deviceInfo": {"deviceName": name, "devEui": "0102030405060708",
                              "applicationName": "meters"},
               "object": {"energy": energy, "power": 1.5}})
        .to_string()
        .into_bytes()
    };
    broker
        .publish(vec![
            (
                "application/7/device/0102030405060708/event/up".into(),
                uplink("meter-9", 12.25),
            ),
            // A device name that is no sensor id: a reject with its reason.
            (
                "application/7/device/0102030405060709/event/up".into(),
                uplink("meter 10", 1.0),
            ),
        ])
        .await;
    until(&gw, "citygate_upstream_acks_total{upstream=\"chirp\"}", 2).await;
    let provider = gw.provider_key("copenhagen-energy").await;
    let (status, latest) = gw
        .get_as("/v1/datasets/energy-meters/latest", &provider)
        .await;
    assert_eq!(status, 200, "{latest}");
    let readings = latest["readings"].as_array().unwrap();
    assert_eq!(readings.len(), 1, "{latest}");
    assert_eq!(readings[0]["sensor_id"], "meter-9");
    assert_eq!(readings[0]["energy"], 12.25);
    let (_, rejects) = gw
        .get_as("/v1/datasets/energy-meters/rejects", &provider)
        .await;
    assert_eq!(
        rejects["recent"][0]["reason"], "invalid_sensor_id",
        "{rejects}"
    );
}

#[tokio::test]
async fn over_tls_the_broker_is_checked_and_shown_a_client_certificate() {
    let (broker, tls) = crate::broker::Broker::start_tls();
    let over_tls = |name: &str, ca: &str, with_cert: bool| -> citygate::config::UpstreamConfig {
        let cert = if with_cert {
            format!(
                "client_cert_file = \"{}\"\nclient_key_file = \"{}\"\n",
                tls.client_cert, tls.client_key
            )
        } else {
            String::new()
        };
        toml::from_str(&format!(
            "name = \"{name}\"\nurl = \"mqtts://127.0.0.1:{}\"\ntopic = \"city/{{dataset}}/{{sensor_id}}\"\n\
             allow_datasets = [\"weather\"]\nca_file = \"{ca}\"\n{cert}",
            tls.port
        ))
        .unwrap()
    };
    let gw = Gateway::start_with(|c| {
        c.upstream = vec![
            over_tls("trusted", &tls.ca, true),
            over_tls("wrong-ca", &tls.other_ca, true),
            over_tls("no-cert", &tls.ca, false),
        ]
    })
    .await;
    until(&gw, "citygate_upstream_connected{upstream=\"trusted\"}", 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Devices publish on the plain listener; the gateway takes them over TLS.
    let now = now_ms();
    broker
        .publish(
            (0..20)
                .map(|i| {
                    (
                        format!("city/weather/tls-{i}"),
                        json!({"ts": now + i, "temperature": 3.5, "humidity": 90.0})
                            .to_string()
                            .into_bytes(),
                    )
                })
                .collect(),
        )
        .await;
    until(
        &gw,
        "citygate_upstream_acks_total{upstream=\"trusted\"}",
        20,
    )
    .await;
    // A broker whose certificate the CA file does not vouch for, and a broker that wants a
    // certificate this upstream does not have: never connected, trying again.
    until(
        &gw,
        "citygate_upstream_reconnects_total{upstream=\"wrong-ca\"}",
        2,
    )
    .await;
    until(
        &gw,
        "citygate_upstream_reconnects_total{upstream=\"no-cert\"}",
        2,
    )
    .await;
    for name in ["wrong-ca", "no-cert"] {
        let connected = format!("citygate_upstream_connected{{upstream=\"{name}\"}}");
        assert_eq!(metric(&gw, &connected).await, 0, "{name}");
    }
    let dir = gw.stop().await;
    assert_eq!(sensor_ids(dir.path(), "weather").len(), 20);
}

#[tokio::test]
async fn an_upstreams_unreadable_tls_file_stops_the_start_and_is_named() {
    let up: citygate::config::UpstreamConfig = toml::from_str(
        "name = \"city\"\nurl = \"mqtts://127.0.0.1:8883\"\ntopic = \"city/weather/{sensor_id}\"\n\
         dataset = \"weather\"\nca_file = \"/no/such/ca.pem\"\n",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.upstream = vec![up];
    let err = citygate::App::start(config).await.expect_err("refused");
    let said = err.to_string();
    assert!(
        said.contains("upstream city") && said.contains("/no/such/ca.pem"),
        "{said}"
    );
}
