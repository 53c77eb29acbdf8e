//! `citygate simulate`: realistic readings for the shipped datasets, pushed over HTTP in
//! batches, with a live counter line and a final summary. For demos and load tests.
//!
//! The values follow the city: traffic peaks at 08:00 and 17:00 local time (Copenhagen,
//! UTC+1) and slows down when it is dense; temperature follows the sun, humidity against
//! it; meters count energy up from their power draw; air quality follows the traffic.
//!
//! `city` makes the readings, `send` posts (or publishes) them, `report` counts the answers.

mod city;
mod report;
mod send;

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use report::Counters;
pub use report::Summary;
use send::{parse_mqtt_url, run_mqtt_worker, run_worker};

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

    let progress = opts
        .progress
        .then(|| report::progress(counters.clone(), started));

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

#[cfg(test)]
mod tests;
