//! The senders: a worker posting batches over HTTP, or publishing them over MQTT 5, and
//! counting what the gateway answered.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio::time::Instant;

use super::city::City;
use super::report::Counters;
use super::{SimError, SimFormat, SimulateOptions};

/// One sender. Returns `Some(true)` if every dataset turned out to be forbidden.
pub(super) async fn run_worker(
    worker: usize,
    opts: SimulateOptions,
    client: reqwest::Client,
    counters: Arc<Counters>,
    until: Instant,
) -> Option<bool> {
    let mut rng = SmallRng::seed_from_u64(0x5eed_0000 + worker as u64);
    let mut city = City::new(opts.sensors, worker, opts.concurrency);
    let mut datasets: Vec<String> = opts.datasets.clone();
    let base = opts.http.trim_end_matches('/').to_string();
    let per_worker_rate = opts.rate / opts.concurrency as f64;
    let mut next_send = Instant::now();
    let mut turn = worker;
    let mut body = String::with_capacity(opts.batch * 200);
    while Instant::now() < until {
        if datasets.is_empty() {
            return Some(true);
        }
        if per_worker_rate > 0.0 {
            tokio::time::sleep_until(next_send.min(until)).await;
            if Instant::now() >= until {
                break;
            }
            next_send += Duration::from_secs_f64(opts.batch as f64 / per_worker_rate);
        }
        let ds = datasets[turn % datasets.len()].clone();
        turn = turn.wrapping_add(1);
        body.clear();
        city.batch(&ds, opts.batch, opts.format, &mut rng, &mut body);

        let request = match opts.format {
            SimFormat::Line => client
                .post(format!("{base}/api/v2/write?bucket={ds}&precision=ns"))
                .header("Authorization", format!("Token {}", opts.key))
                .header("Content-Type", "text/plain; charset=utf-8"),
            format => client
                .post(format!("{base}/v1/datasets/{ds}/readings"))
                .bearer_auth(&opts.key)
                .header(
                    "Content-Type",
                    match format {
                        SimFormat::Ndjson => "application/x-ndjson",
                        SimFormat::Senml => "application/senml+json",
                        _ => "application/json",
                    },
                ),
        };
        let n = opts.batch as u64;
        counters.requests.fetch_add(1, Ordering::Relaxed);
        counters.sent.fetch_add(n, Ordering::Relaxed);
        let response = match request.body(body.clone()).send().await {
            Ok(r) => r,
            Err(e) => {
                counters.error(format!("request failed: {e}"));
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let status = response.status().as_u16();
        match status {
            204 => {
                counters.accepted.fetch_add(n, Ordering::Relaxed);
            }
            200 => {
                let json: serde_json::Value = response.json().await.unwrap_or_default();
                let accepted = json["accepted"].as_u64().unwrap_or(0);
                counters.accepted.fetch_add(accepted, Ordering::Relaxed);
                counters
                    .rejected
                    .fetch_add(n - accepted.min(n), Ordering::Relaxed);
            }
            422 => {
                counters.rejected.fetch_add(n, Ordering::Relaxed);
            }
            429 => {
                counters.throttled.fetch_add(n, Ordering::Relaxed);
                let wait = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(1)
                    .min(5);
                tokio::time::sleep(Duration::from_secs(wait)).await;
            }
            403 | 404 => {
                let text = response.text().await.unwrap_or_default();
                counters.error(format!("{ds}: HTTP {status}: {text}"));
                datasets.retain(|d| *d != ds);
            }
            _ => {
                let text = response.text().await.unwrap_or_default();
                counters.error(format!("{ds}: HTTP {status}: {text}"));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    Some(false)
}

/// `mqtt://host:port` (port 1883 when absent).
pub(super) fn parse_mqtt_url(url: &str) -> Result<(String, u16), SimError> {
    let rest = url
        .strip_prefix("mqtt://")
        .or_else(|| url.strip_prefix("tcp://"))
        .ok_or_else(|| SimError::MqttUrl(url.into()))?;
    let rest = rest.trim_end_matches('/');
    match rest.rsplit_once(':') {
        Some((host, port)) => {
            let port = port.parse().map_err(|_| SimError::MqttUrl(url.into()))?;
            Ok((host.to_string(), port))
        }
        None if !rest.is_empty() => Ok((rest.to_string(), 1883)),
        None => Err(SimError::MqttUrl(url.into())),
    }
}

/// "2 of 5 readings rejected…" in an acknowledgement's reason string: the rejected count.
pub(super) fn rejected_in(reason: Option<&str>) -> u64 {
    reason
        .and_then(|r| r.split(" of ").next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// One MQTT 5 connection publishing batches to `citygate/{dataset}`, counting what the
/// acknowledgements say. QoS 0 has none: its readings count as accepted when sent.
pub(super) async fn run_mqtt_worker(
    worker: usize,
    opts: SimulateOptions,
    host: String,
    port: u16,
    counters: Arc<Counters>,
    until: Instant,
) -> Option<bool> {
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason, PubRecReason, PublishProperties};
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};

    let mut options = MqttOptions::new(format!("citygate-sim-{worker}"), host, port);
    options.set_credentials("device", opts.key.clone());
    options.set_keep_alive(Duration::from_secs(30));
    options.set_max_packet_size(Some(16 << 20));
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    let batch = opts.batch as u64;
    // Publishes answered so far, and whether we are leaving (a closed connection is then
    // expected, not an error).
    let settled = Arc::new(AtomicU64::new(0));
    let leaving = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acks = {
        let counters = counters.clone();
        let settled = settled.clone();
        let leaving = leaving.clone();
        tokio::spawn(async move {
            loop {
                let (ok, quota, reason) = match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(ack))) => (
                        ack.reason == PubAckReason::Success,
                        ack.reason == PubAckReason::QuotaExceeded,
                        ack.properties.and_then(|p| p.reason_string),
                    ),
                    Ok(Event::Incoming(Packet::PubRec(rec))) => (
                        rec.reason == PubRecReason::Success,
                        rec.reason == PubRecReason::QuotaExceeded,
                        rec.properties.and_then(|p| p.reason_string),
                    ),
                    Ok(Event::Incoming(Packet::Disconnect(_))) => return,
                    Ok(_) => continue,
                    Err(_) if leaving.load(Ordering::Relaxed) => return,
                    Err(e) => {
                        counters.error(format!("mqtt: {e}"));
                        return;
                    }
                };
                settled.fetch_add(1, Ordering::Relaxed);
                if ok {
                    let rejected = rejected_in(reason.as_deref()).min(batch);
                    counters
                        .accepted
                        .fetch_add(batch - rejected, Ordering::Relaxed);
                    counters.rejected.fetch_add(rejected, Ordering::Relaxed);
                } else if quota {
                    counters.throttled.fetch_add(batch, Ordering::Relaxed);
                } else {
                    counters.rejected.fetch_add(batch, Ordering::Relaxed);
                    counters.error(format!("publish refused: {}", reason.unwrap_or_default()));
                }
            }
        })
    };

    let qos = match opts.qos {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    };
    let content_type = match opts.format {
        SimFormat::Json => "application/json",
        SimFormat::Ndjson => "application/x-ndjson",
        SimFormat::Senml => "application/senml+json",
        SimFormat::Line => "text/plain",
    };
    let mut rng = SmallRng::seed_from_u64(0x5eed_0000 + worker as u64);
    let mut city = City::new(opts.sensors, worker, opts.concurrency);
    let per_worker_rate = opts.rate / opts.concurrency as f64;
    let mut next_send = Instant::now();
    let mut turn = worker;
    let mut body = String::with_capacity(opts.batch * 200);
    let mut published = 0u64;
    while Instant::now() < until {
        if per_worker_rate > 0.0 {
            tokio::time::sleep_until(next_send.min(until)).await;
            if Instant::now() >= until {
                break;
            }
            next_send += Duration::from_secs_f64(opts.batch as f64 / per_worker_rate);
        }
        let ds = &opts.datasets[turn % opts.datasets.len()];
        turn = turn.wrapping_add(1);
        body.clear();
        city.batch(ds, opts.batch, opts.format, &mut rng, &mut body);
        let properties = PublishProperties {
            content_type: Some(content_type.into()),
            ..Default::default()
        };
        let sent = client
            .publish_with_properties(
                format!("citygate/{ds}"),
                qos,
                false,
                body.clone(),
                properties,
            )
            .await;
        if sent.is_err() {
            break;
        }
        published += 1;
        counters.requests.fetch_add(1, Ordering::Relaxed);
        counters.sent.fetch_add(batch, Ordering::Relaxed);
        if opts.qos == 0 {
            counters.accepted.fetch_add(batch, Ordering::Relaxed);
        }
    }
    // A well-behaved device waits for its acknowledgements before it disconnects.
    if opts.qos > 0 {
        let deadline = Instant::now() + Duration::from_secs(10);
        while settled.load(Ordering::Relaxed) < published && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    leaving.store(true, Ordering::Relaxed);
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(10), acks).await;
    Some(false)
}
