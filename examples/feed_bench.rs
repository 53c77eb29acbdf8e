//! Live-feed benchmark: one device publishes traffic readings over MQTT (QoS 1, paced or as
//! fast as acknowledgements allow); N subscribers follow the dataset over one protocol
//! (SSE, WebSocket or MQTT) and measure, per reading, device publish → subscriber receive.
//! Each reading carries its publish time (µs) as its device timestamp, so the latency is
//! measured on one clock. Reports deliveries/s, loss, and latency percentiles.
//!
//! Setup is done through the HTTP API with the admin key: a subscriber account, a free plan
//! on `traffic-counts` and a subscription, a device key.
//!
//! With `--protocol broker` the same device and the same MQTT subscribers run against a
//! plain MQTT broker (mosquitto) on `--mqtt-port` instead, with no setup: the peer a city
//! would otherwise relay its readings through. The readings' publish time is then read from
//! the device's own payload.
//!
//! ```text
//! CITYGATE_ADMIN_KEY=cg_... citygate --config config/loadtest.toml serve &
//! cargo run --release --example feed_bench -- --admin-key cg_... --protocol sse \
//!     --subscribers 100 --rate 10000 --duration 20
//! ```

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use serde_json::{Value, json};

struct Args {
    http: String,
    mqtt_port: u16,
    admin_key: String,
    protocol: String,
    subscribers: usize,
    rate: f64,
    duration: Duration,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        http: "http://127.0.0.1:8080".into(),
        mqtt_port: 1883,
        admin_key: std::env::var("CITYGATE_ADMIN_KEY").unwrap_or_default(),
        protocol: "sse".into(),
        subscribers: 100,
        rate: 10_000.0,
        duration: Duration::from_secs(20),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--http" => args.http = value()?,
            "--mqtt-port" => args.mqtt_port = value()?.parse().map_err(|e| format!("{e}"))?,
            "--admin-key" => args.admin_key = value()?,
            "--protocol" => args.protocol = value()?,
            "--subscribers" => args.subscribers = value()?.parse().map_err(|e| format!("{e}"))?,
            "--rate" => args.rate = value()?.parse().map_err(|e| format!("{e}"))?,
            "--duration" => {
                args.duration = Duration::from_secs(value()?.parse().map_err(|e| format!("{e}"))?)
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if args.admin_key.is_empty() && args.protocol != "broker" {
        return Err("--admin-key (or CITYGATE_ADMIN_KEY) is required".into());
    }
    if !["sse", "ws", "mqtt", "broker"].contains(&args.protocol.as_str()) {
        return Err("--protocol is sse, ws, mqtt or broker".into());
    }
    Ok(args)
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

/// What every subscriber records.
#[derive(Default)]
struct Tally {
    latencies: Mutex<Vec<u32>>,
    received: AtomicU64,
}

impl Tally {
    /// Records one received reading (its JSON).
    /// (The generator shares the machine with the gateway: it finds the `"time":` field
    /// instead of parsing the whole reading.)
    fn reading(&self, json: &[u8], local: &mut Vec<u32>) {
        let now = now_us();
        if let Some(sent) = time_field(json) {
            local.push((now - sent).clamp(0, u32::MAX as i64) as u32);
            self.received.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn merge(&self, local: Vec<u32>) {
        self.latencies.lock().unwrap().extend(local);
    }
}

/// The publish time in µs: the integer after `"time":` in a reading's JSON as citygate
/// delivers it, or the device's `"ts":` (ms with a fraction) as a plain broker relays it.
fn time_field(json: &[u8]) -> Option<i64> {
    let number = |after: &[u8]| -> Option<&str> {
        let at = json.windows(after.len()).position(|w| w == after)? + after.len();
        let len = json[at..]
            .iter()
            .take_while(|b| b.is_ascii_digit() || **b == b'.')
            .count();
        std::str::from_utf8(&json[at..at + len]).ok()
    };
    match number(b"\"time\":") {
        Some(us) => us.parse().ok(),
        None => number(b"\"ts\":")?
            .parse::<f64>()
            .ok()
            .map(|ms| (ms * 1000.0).round() as i64),
    }
}

/// This process's CPU time so far (user + system), from `/proc/self/stat` (Linux).
fn own_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime (fields 14 and 15 of the line) in USER_HZ, 100 on Linux.
    (ticks(11) + ticks(12)) / 100.0
}

async fn call(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    key: &str,
    body: Value,
) -> Value {
    let resp = client
        .request(method, url.clone())
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    let status = resp.status();
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    assert!(
        status.is_success() || status.as_u16() == 409,
        "{url}: {status} {v}"
    );
    v
}

/// Makes a subscriber entitled to traffic-counts and a device key; returns their secrets.
async fn setup(args: &Args) -> (String, String) {
    let client = reqwest::Client::new();
    let base = &args.http;
    let admin = &args.admin_key;
    call(
        &client,
        reqwest::Method::POST,
        format!("{base}/v1/catalog/traffic-counts/plans"),
        admin,
        json!({"id": "bench-open", "name": "Benchmark", "kind": "free"}),
    )
    .await;
    let created = call(
        &client,
        reqwest::Method::POST,
        format!("{base}/v1/accounts"),
        admin,
        json!({"role": "subscriber", "name": "Feed bench", "sector": "research"}),
    )
    .await;
    let subscriber = created["key"]["secret"].as_str().unwrap().to_string();
    call(
        &client,
        reqwest::Method::POST,
        format!("{base}/v1/subscriptions"),
        &subscriber,
        json!({"plan": "bench-open"}),
    )
    .await;
    let device = call(
        &client,
        reqwest::Method::POST,
        format!("{base}/v1/keys"),
        admin,
        json!({"kind": "device", "account": "copenhagen", "datasets": ["traffic-counts"]}),
    )
    .await;
    (
        subscriber,
        device["secret"].as_str().expect("device key").to_string(),
    )
}

async fn sse_subscriber(
    base: String,
    key: String,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
    ready: Arc<AtomicU64>,
) {
    let client = reqwest::Client::new();
    let mut resp = client
        .get(format!("{base}/v1/datasets/traffic-counts/live"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    ready.fetch_add(1, Ordering::Relaxed);
    let mut buf = Vec::new();
    let mut local = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let Ok(Ok(Some(chunk))) =
            tokio::time::timeout(Duration::from_millis(500), resp.chunk()).await
        else {
            continue;
        };
        buf.extend_from_slice(&chunk);
        // Every complete line is handled in one pass; the incomplete tail is kept.
        let mut start = 0;
        while let Some(nl) = buf[start..].iter().position(|b| *b == b'\n') {
            let line = &buf[start..start + nl];
            if let Some(data) = line.strip_prefix(b"data: ") {
                tally.reading(data, &mut local);
            }
            start += nl + 1;
        }
        buf.drain(..start);
    }
    tally.merge(local);
}

async fn ws_subscriber(
    base: String,
    key: String,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
    ready: Arc<AtomicU64>,
) {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let url = format!("{}/v1/live/ws?key={key}", base.replace("http://", "ws://"));
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    ws.send(Message::Text(
        json!({"op": "subscribe", "dataset": "traffic-counts"})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    let mut local = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let Ok(Some(Ok(msg))) = tokio::time::timeout(Duration::from_millis(500), ws.next()).await
        else {
            continue;
        };
        if let Message::Text(t) = msg {
            if t.as_str().starts_with(r#"{"type":"reading""#) {
                tally.reading(t.as_bytes(), &mut local);
            } else if t.as_str().contains(r#""type":"subscribed""#) {
                ready.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    tally.merge(local);
}

async fn mqtt_subscriber(
    port: u16,
    id: usize,
    key: String,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
    ready: Arc<AtomicU64>,
) {
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions, mqttbytes::v5::Packet};
    let mut options = MqttOptions::new(format!("feed-bench-{id}"), "127.0.0.1", port);
    options.set_credentials("subscriber", key);
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(options, 1000);
    client
        .subscribe("citygate/traffic-counts/#", QoS::AtMostOnce)
        .await
        .unwrap();
    let mut local = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match tokio::time::timeout(Duration::from_millis(500), eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => {
                ready.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => tally.reading(&p.payload, &mut local),
            Ok(Ok(_)) | Err(_) => {}
            Ok(Err(e)) => panic!("subscriber {id}: {e}"),
        }
    }
    tally.merge(local);
}

/// Publishes readings at `rate`/s (0: as fast as acknowledgements allow) until `stop`;
/// returns how many were acknowledged.
async fn publish(port: u16, key: String, rate: f64, stop: Arc<AtomicBool>) -> u64 {
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    let mut options = MqttOptions::new("feed-bench-device", "127.0.0.1", port);
    options.set_credentials("device", key);
    options.set_outgoing_inflight_upper_limit(100);
    let (client, mut eventloop) = AsyncClient::new(options, 1000);
    let acked = Arc::new(AtomicU64::new(0));
    let poller = tokio::spawn({
        let acked = acked.clone();
        let stop = stop.clone();
        async move {
            loop {
                match tokio::time::timeout(Duration::from_millis(500), eventloop.poll()).await {
                    Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => {
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => panic!("device: {e}"),
                    Err(_) if stop.load(Ordering::Relaxed) => return,
                    Err(_) => {}
                }
            }
        }
    });
    let started = Instant::now();
    let mut sent = 0u64;
    while !stop.load(Ordering::Relaxed) {
        if rate > 0.0 {
            let due = started + Duration::from_secs_f64(sent as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        let ts = now_us() as f64 / 1000.0;
        let payload = format!(r#"{{"ts":{ts:.3},"vehicle_count":{}}}"#, sent % 1000);
        let topic = format!("citygate/traffic-counts/bench-{}", sent % 100);
        client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
        sent += 1;
    }
    // Let the last acknowledgements arrive.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _ = poller.await;
    acked.load(Ordering::Relaxed)
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

#[tokio::main]
async fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("feed_bench: {e}");
            std::process::exit(2);
        }
    };
    let (subscriber, device) = if args.protocol == "broker" {
        (String::new(), String::new())
    } else {
        setup(&args).await
    };
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..args.subscribers {
        let (tally, stop, ready, key) = (
            tally.clone(),
            stop.clone(),
            ready.clone(),
            subscriber.clone(),
        );
        tasks.push(match args.protocol.as_str() {
            "sse" => tokio::spawn(sse_subscriber(args.http.clone(), key, tally, stop, ready)),
            "ws" => tokio::spawn(ws_subscriber(args.http.clone(), key, tally, stop, ready)),
            _ => tokio::spawn(mqtt_subscriber(args.mqtt_port, i, key, tally, stop, ready)),
        });
    }
    while ready.load(Ordering::Relaxed) < args.subscribers as u64 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let publish_stop = Arc::new(AtomicBool::new(false));
    let publisher = tokio::spawn(publish(
        args.mqtt_port,
        device,
        args.rate,
        publish_stop.clone(),
    ));
    let started = Instant::now();
    tokio::time::sleep(args.duration).await;
    publish_stop.store(true, Ordering::Relaxed);
    let acked = publisher.await.unwrap();
    let elapsed = args
        .duration
        .as_secs_f64()
        .max(started.elapsed().as_secs_f64() - 1.0);
    // Let deliveries in flight arrive.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let received = tally.received.load(Ordering::Relaxed);
    let generator_cpu = own_cpu_seconds();
    let expected = acked * args.subscribers as u64;
    let mut lat = std::mem::take(&mut *tally.latencies.lock().unwrap());
    lat.sort_unstable();
    println!(
        "{} x{}: published {acked} ({:.0}/s), delivered {received} of {expected} ({:.0}/s), lost {}, \
         latency ms p50 {:.2} p99 {:.2} p99.9 {:.2} max {:.2}, generator cpu {generator_cpu:.2} s",
        args.protocol,
        args.subscribers,
        acked as f64 / elapsed,
        received as f64 / elapsed,
        expected.saturating_sub(received),
        percentile(&lat, 0.50),
        percentile(&lat, 0.99),
        percentile(&lat, 0.999),
        percentile(&lat, 1.0),
    );
}
