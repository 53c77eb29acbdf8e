//! `citygate simulate`: realistic readings for the shipped datasets, pushed over HTTP in
//! batches, with a live counter line and a final summary. For demos and load tests.
//!
//! The values follow the city: traffic peaks at 08:00 and 17:00 local time (Copenhagen,
//! UTC+1) and slows down when it is dense; temperature follows the sun, humidity against
//! it; meters count energy up from their power draw; air quality follows the traffic.

use std::f64::consts::PI;
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use crate::model::now_micros;

/// The datasets the simulator knows how to fill.
pub const SIMULATED_DATASETS: [&str; 4] =
    ["traffic-counts", "weather", "energy-meters", "air-quality"];

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SimFormat {
    Json,
    Ndjson,
    Senml,
    Line,
}

#[derive(Clone, Debug)]
pub struct SimulateOptions {
    /// Base URL of the gateway, e.g. `http://127.0.0.1:8080`.
    pub http: String,
    /// Publish over MQTT instead, to this broker URL (`mqtt://127.0.0.1:1883`).
    pub mqtt: Option<String>,
    /// MQTT QoS (0, 1 or 2).
    pub qos: u8,
    pub key: String,
    /// Readings per second in total; 0 for as fast as the gateway answers.
    pub rate: f64,
    /// Sensors per dataset, in all: the workers share them out (each sensor is sent by one
    /// worker, so its `seq` counts up without gaps).
    pub sensors: usize,
    pub duration: Duration,
    /// Readings per request.
    pub batch: usize,
    pub datasets: Vec<String>,
    pub format: SimFormat,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Show the live counter line.
    pub progress: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("simulate knows the datasets {known}; `{0}` is not one of them", known = SIMULATED_DATASETS.join(", "))]
    UnknownDataset(String),
    #[error("invalid option: {0}")]
    Invalid(String),
    #[error("the key may not write to any of the chosen datasets ({0})")]
    AllForbidden(String),
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("`{0}` is not an MQTT URL (mqtt://host:port)")]
    MqttUrl(String),
}

/// Totals of a run. Readings are counted by what the gateway answered.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    pub requests: u64,
    pub sent: u64,
    pub accepted: u64,
    pub rejected: u64,
    /// Readings in requests answered 429 (not stored).
    pub throttled: u64,
    /// Requests that failed otherwise (connection errors, 4xx/5xx other than 422/429).
    pub errors: u64,
    pub elapsed: Duration,
    pub first_error: Option<String>,
}

impl Summary {
    pub fn accepted_per_second(&self) -> f64 {
        self.accepted as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "sent {} readings in {} requests over {:.1}s: accepted {}, rejected {}, throttled {}, \
             errors {}; {:.0} readings/s accepted",
            self.sent,
            self.requests,
            self.elapsed.as_secs_f64(),
            self.accepted,
            self.rejected,
            self.throttled,
            self.errors,
            self.accepted_per_second()
        )
    }
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    sent: AtomicU64,
    accepted: AtomicU64,
    rejected: AtomicU64,
    throttled: AtomicU64,
    errors: AtomicU64,
    first_error: std::sync::Mutex<Option<String>>,
}

impl Counters {
    fn error(&self, message: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_error.lock().unwrap_or_else(|e| e.into_inner());
        if first.is_none() {
            *first = Some(message);
        }
    }
}

/// Runs the simulation to its end and returns the totals.
pub async fn run(opts: SimulateOptions) -> Result<Summary, SimError> {
    for ds in &opts.datasets {
        if !SIMULATED_DATASETS.contains(&ds.as_str()) {
            return Err(SimError::UnknownDataset(ds.clone()));
        }
    }
    if opts.datasets.is_empty() || opts.batch == 0 || opts.sensors == 0 || opts.concurrency == 0 {
        return Err(SimError::Invalid(
            "datasets, batch, sensors and concurrency must all be at least 1".into(),
        ));
    }
    // A worker without a sensor of its own would have nothing to send.
    let mut opts = opts;
    opts.concurrency = opts.concurrency.min(opts.sensors);
    if !(opts.rate.is_finite() && opts.rate >= 0.0) {
        return Err(SimError::Invalid(
            "rate must be 0 (unlimited) or positive".into(),
        ));
    }
    if opts.qos > 2 {
        return Err(SimError::Invalid("qos must be 0, 1 or 2".into()));
    }
    let broker = opts.mqtt.as_deref().map(parse_mqtt_url).transpose()?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(opts.concurrency)
        .timeout(Duration::from_secs(30))
        .build()?;
    let counters = Arc::new(Counters::default());
    let started = Instant::now();
    let until = started + opts.duration;

    let progress = opts.progress.then(|| {
        let counters = counters.clone();
        tokio::spawn(async move {
            let terminal = std::io::stderr().is_terminal();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                let secs = started.elapsed().as_secs_f64();
                let accepted = counters.accepted.load(Ordering::Relaxed);
                let line = format!(
                    "{secs:6.1}s  sent {:>10}  accepted {:>10}  rejected {:>8}  throttled {:>8}  errors {:>6}  {:>9.0}/s",
                    counters.sent.load(Ordering::Relaxed),
                    accepted,
                    counters.rejected.load(Ordering::Relaxed),
                    counters.throttled.load(Ordering::Relaxed),
                    counters.errors.load(Ordering::Relaxed),
                    accepted as f64 / secs.max(1e-9),
                );
                if terminal {
                    eprint!("\r{line}");
                } else {
                    eprintln!("{line}");
                }
            }
        })
    });

    let mut workers = Vec::new();
    for worker in 0..opts.concurrency {
        let opts = opts.clone();
        let client = client.clone();
        let counters = counters.clone();
        let broker = broker.clone();
        workers.push(tokio::spawn(async move {
            match broker {
                Some((host, port)) => {
                    run_mqtt_worker(worker, opts, host, port, counters, until).await
                }
                None => run_worker(worker, opts, client, counters, until).await,
            }
        }));
    }
    let mut forbidden_everywhere = false;
    for w in workers {
        if let Ok(Some(forbidden)) = w.await {
            forbidden_everywhere |= forbidden;
        }
    }
    if let Some(p) = progress {
        p.abort();
        if std::io::stderr().is_terminal() {
            eprintln!();
        }
    }
    if forbidden_everywhere && counters.accepted.load(Ordering::Relaxed) == 0 {
        return Err(SimError::AllForbidden(opts.datasets.join(", ")));
    }
    let first_error = counters
        .first_error
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    Ok(Summary {
        requests: counters.requests.load(Ordering::Relaxed),
        sent: counters.sent.load(Ordering::Relaxed),
        accepted: counters.accepted.load(Ordering::Relaxed),
        rejected: counters.rejected.load(Ordering::Relaxed),
        throttled: counters.throttled.load(Ordering::Relaxed),
        errors: counters.errors.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
        first_error,
    })
}

/// One sender. Returns `Some(true)` if every dataset turned out to be forbidden.
async fn run_worker(
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
fn parse_mqtt_url(url: &str) -> Result<(String, u16), SimError> {
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
fn rejected_in(reason: Option<&str>) -> u64 {
    reason
        .and_then(|r| r.split(" of ").next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// One MQTT 5 connection publishing batches to `citygate/{dataset}`, counting what the
/// acknowledgements say. QoS 0 has none: its readings count as accepted when sent.
async fn run_mqtt_worker(
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

/// Copenhagen local hour (UTC+1) of a µs timestamp, fractional.
fn local_hour(ts: i64) -> f64 {
    let secs = ts.div_euclid(1_000_000) + 3600;
    (secs.rem_euclid(86_400)) as f64 / 3600.0
}

/// Traffic intensity 0..1 over the day: morning and afternoon peaks.
fn traffic_level(hour: f64) -> f64 {
    let peak = |h: f64, width: f64| (-((hour - h).powi(2)) / width).exp();
    (0.12 + 0.8 * peak(8.0, 3.0) + 0.75 * peak(17.0, 5.0)).min(1.0)
}

/// One worker's share of the city: the sensors it sends for (every `workers`-th of all, from
/// its own number), their state that must persist (energy counters, `seq`), and positions.
struct City {
    /// Each sensor's number among all of the dataset's.
    owned: Vec<usize>,
    next: usize,
    energy: Vec<f64>,
    seq: Vec<i64>,
}

impl City {
    fn new(sensors: usize, worker: usize, workers: usize) -> City {
        let owned: Vec<usize> = (worker..sensors).step_by(workers.max(1)).collect();
        City {
            energy: owned.iter().map(|&s| 10_000.0 + 137.0 * s as f64).collect(),
            seq: vec![0; owned.len()],
            owned,
            next: 0,
        }
    }

    /// Appends a body of `n` readings of `ds` in `format` to `out`.
    fn batch(
        &mut self,
        ds: &str,
        n: usize,
        format: SimFormat,
        rng: &mut SmallRng,
        out: &mut String,
    ) {
        let ts = now_micros();
        let hour = local_hour(ts);
        let traffic = traffic_level(hour);
        let sun = (2.0 * PI * (hour - 9.0) / 24.0).sin();
        let prefix = match ds {
            "traffic-counts" => "tc",
            "weather" => "wx",
            "energy-meters" => "em",
            _ => "aq",
        };
        if matches!(format, SimFormat::Json | SimFormat::Senml) {
            out.push('[');
        }
        for k in 0..n {
            let at = self.next;
            self.next = (self.next + 1) % self.owned.len();
            let s = self.owned[at];
            self.seq[at] += 1;
            let sensor = format!("{prefix}-{s:04}");
            let lat = 55.676 + ((s * 7919) % 1000) as f64 / 10_000.0 - 0.05;
            let lon = 12.568 + ((s * 104_729) % 1000) as f64 / 10_000.0 - 0.05;
            let fields: Vec<(&str, &str, FieldValue)> = match ds {
                "traffic-counts" => {
                    let count = (traffic * 60.0 * rng.random_range(0.7..1.3)).round() as i64;
                    let speed = (52.0 - 25.0 * traffic + rng.random_range(-6.0..6.0)).max(3.0);
                    vec![
                        ("vehicle_count", "count", FieldValue::Int(count)),
                        ("mean_speed", "km/h", FieldValue::Float(round1(speed))),
                    ]
                }
                "weather" => {
                    let temp = 7.0 + 4.5 * sun + (s % 5) as f64 * 0.3 + rng.random_range(-0.4..0.4);
                    let humidity =
                        (82.0 - 6.0 * sun + rng.random_range(-3.0..3.0)).clamp(0.0, 100.0);
                    let wind = (5.0f64 + rng.random_range(-3.0..6.0)).max(0.0);
                    let rain = if rng.random_bool(0.1) {
                        rng.random_range(0.1..2.5)
                    } else {
                        0.0
                    };
                    vec![
                        ("temperature", "Cel", FieldValue::Float(round1(temp))),
                        ("humidity", "%RH", FieldValue::Float(round1(humidity))),
                        ("wind_speed", "m/s", FieldValue::Float(round1(wind))),
                        ("precipitation", "mm", FieldValue::Float(round1(rain))),
                    ]
                }
                "energy-meters" => {
                    let power = 1500.0 + 2500.0 * sun.max(0.0) + rng.random_range(0.0..800.0);
                    self.energy[at] += power / 1000.0 / 60.0;
                    vec![
                        (
                            "energy",
                            "kWh",
                            FieldValue::Float((self.energy[at] * 1000.0).round() / 1000.0),
                        ),
                        ("power", "W", FieldValue::Float(power.round())),
                    ]
                }
                _ => {
                    let pm25 = 5.0 + 14.0 * traffic + rng.random_range(0.0..4.0);
                    vec![
                        ("pm2_5", "ug/m3", FieldValue::Float(round1(pm25))),
                        (
                            "pm10",
                            "ug/m3",
                            FieldValue::Float(round1(pm25 * 1.7 + rng.random_range(0.0..3.0))),
                        ),
                        (
                            "no2",
                            "ug/m3",
                            FieldValue::Float(round1(
                                12.0 + 35.0 * traffic + rng.random_range(0.0..6.0),
                            )),
                        ),
                    ]
                }
            };
            let reading = SimReading {
                sensor: &sensor,
                ts,
                lat,
                lon,
                seq: self.seq[at],
                fields: &fields,
            };
            match format {
                SimFormat::Json => {
                    if k > 0 {
                        out.push(',');
                    }
                    reading.json(out);
                }
                SimFormat::Ndjson => {
                    reading.json(out);
                    out.push('\n');
                }
                SimFormat::Senml => {
                    if k > 0 {
                        out.push(',');
                    }
                    reading.senml(out);
                }
                SimFormat::Line => reading.line(prefix, out),
            }
        }
        if matches!(format, SimFormat::Json | SimFormat::Senml) {
            out.push(']');
        }
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

#[derive(Clone, Copy)]
enum FieldValue {
    Int(i64),
    Float(f64),
}

struct SimReading<'a> {
    sensor: &'a str,
    ts: i64,
    lat: f64,
    lon: f64,
    seq: i64,
    fields: &'a [(&'a str, &'a str, FieldValue)],
}

impl SimReading<'_> {
    fn json(&self, out: &mut String) {
        let _ = write!(
            out,
            r#"{{"sensor_id":"{}","ts":{},"lat":{:.5},"lon":{:.5},"seq":{},"fields":{{"#,
            self.sensor,
            self.ts / 1000,
            self.lat,
            self.lon,
            self.seq
        );
        for (i, (name, _, v)) in self.fields.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = match v {
                FieldValue::Int(x) => write!(out, r#""{name}":{x}"#),
                FieldValue::Float(x) => write!(out, r#""{name}":{x}"#),
            };
        }
        out.push_str("}}");
    }

    fn senml(&self, out: &mut String) {
        for (i, (name, unit, v)) in self.fields.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            if i == 0 {
                let _ = write!(
                    out,
                    r#"{{"bn":"{}:","bt":{:.3},"n":"{name}","u":"{unit}","v":"#,
                    self.sensor,
                    self.ts as f64 / 1e6
                );
            } else {
                let _ = write!(out, r#"{{"n":"{name}","u":"{unit}","v":"#);
            }
            let _ = match v {
                FieldValue::Int(x) => write!(out, "{x}}}"),
                FieldValue::Float(x) => write!(out, "{x}}}"),
            };
        }
    }

    fn line(&self, measurement: &str, out: &mut String) {
        let _ = write!(out, "{measurement},sensor={} ", self.sensor);
        for (name, _, v) in self.fields {
            let _ = match v {
                FieldValue::Int(x) => write!(out, "{name}={x}i,"),
                FieldValue::Float(x) => write!(out, "{name}={x},"),
            };
        }
        let _ = writeln!(
            out,
            "lat={:.5},lon={:.5},seq={}i {}",
            self.lat,
            self.lon,
            self.seq,
            self.ts * 1000
        );
    }
}

#[cfg(test)]
mod tests;
