//! InfluxDB sink: a write-ahead-log consumer writing every dataset to an InfluxDB v2 API
//! store through the `influxdb2` crate.
//!
//! Mapping: measurement = dataset id; tags `sensor_id` and `provider`; one field per schema
//! field present (ints as ints), plus `lat`, `lon` (floats) and `seq` (int) when the reading
//! has them; timestamp = device time in nanoseconds. NaN and infinity are never sent (the
//! crate would write them as invalid line protocol; validation already keeps them out).
//!
//! Writes are batched (`batch_size`, `batch_age`). A failed write is retried with exponential
//! backoff and jitter (timeouts, connection errors, 429, 5xx, and 401/403/404, which an
//! operator can fix), so an outage of the store is a backlog in the log that drains when the
//! store returns. 400, 413 and 422 mean some points are poison: the batch is split in halves
//! until the bad points are found; they are recorded as rejects of their dataset with the
//! store's message, and the rest are written. Points carry device timestamps, so a replay
//! after a crash rewrites the same points rather than adding any.
//!
//! The `influxdb2` crate does not expose response headers, so a `Retry-After` from the store
//! cannot be honoured as such: 429 and 503 back off from 1 s up to `max_retry_delay`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use influxdb2::api::write::TimestampPrecision;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::InfluxConfig;
use crate::model::{Dataset, Micros, Reading, Value, now_micros};
use crate::pipeline::Pipeline;
use crate::pipeline::reject::{Reason, RejectRecord};
use crate::telemetry::InfluxMetrics;
use crate::wal::{Checkpoint, Reader, Wal, record};

pub const CONSUMER: &str = "influx";

/// Escapes a measurement name (commas, spaces).
fn escape_measurement(out: &mut String, s: &str) {
    for c in s.chars() {
        if matches!(c, ',' | ' ' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
}

/// Escapes a tag value or field key (commas, equals signs, spaces).
fn escape_tag(out: &mut String, s: &str) {
    for c in s.chars() {
        if matches!(c, ',' | '=' | ' ' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
}

/// Appends one reading as a line-protocol point; `false` (and nothing appended) if it has no
/// field that can be sent.
pub fn write_point(out: &mut String, ds: &Dataset, r: &Reading) -> bool {
    let start = out.len();
    escape_measurement(out, &ds.id);
    out.push_str(",provider=");
    escape_tag(out, &ds.provider);
    out.push_str(",sensor_id=");
    escape_tag(out, &r.sensor_id);
    let mut first = true;
    let mut field = |out: &mut String, name: &str| {
        out.push(if first { ' ' } else { ',' });
        first = false;
        escape_tag(out, name);
        out.push('=');
    };
    for (spec, value) in ds.fields.iter().zip(&r.values) {
        match value {
            Some(Value::Float(f)) if f.is_finite() => {
                field(out, &spec.name);
                let _ = write!(out, "{f:?}");
            }
            Some(Value::Int(i)) => {
                field(out, &spec.name);
                let _ = write!(out, "{i}i");
            }
            Some(Value::Bool(b)) => {
                field(out, &spec.name);
                out.push_str(if *b { "true" } else { "false" });
            }
            Some(Value::Str(s)) => {
                field(out, &spec.name);
                out.push('"');
                for c in s.chars() {
                    if matches!(c, '"' | '\\') {
                        out.push('\\');
                    }
                    out.push(c);
                }
                out.push('"');
            }
            _ => {}
        }
    }
    if let (Some(lat), Some(lon)) = (r.lat, r.lon)
        && lat.is_finite()
        && lon.is_finite()
    {
        field(out, "lat");
        let _ = write!(out, "{lat:?}");
        field(out, "lon");
        let _ = write!(out, "{lon:?}");
    }
    if let Some(seq) = r.seq {
        field(out, "seq");
        let _ = write!(out, "{seq}i");
    }
    if first {
        out.truncate(start);
        return false;
    }
    let _ = writeln!(out, " {}", i128::from(r.ts) * 1000);
    true
}

/// A point waiting to be written: its dataset and sensor (for a reject) and its line.
struct Point {
    dataset: Arc<Dataset>,
    sensor_id: String,
    line: std::ops::Range<usize>,
}

/// Points gathered for one write, and the last log record they come from.
#[derive(Default)]
struct Batch {
    text: String,
    points: Vec<Point>,
    last_lsn: u64,
    since: Option<Instant>,
    oldest_appended: Option<Micros>,
}

/// How a write went.
enum Written {
    Ok,
    /// The store refused some points as invalid (status, message); the batch must be split.
    Poison(u16, String),
    /// Try again later (status, or 0 when there was no answer).
    Retry(u16, String),
}

/// The InfluxDB sink.
pub struct InfluxSink {
    client: influxdb2::Client,
    cfg: InfluxConfig,
    datasets: HashMap<String, Arc<Dataset>>,
    pipeline: Arc<Pipeline>,
    wal: Wal,
    metrics: InfluxMetrics,
    checkpoint: Checkpoint,
}

impl InfluxSink {
    /// Registers the sink with the log and builds the client.
    pub fn new(
        cfg: InfluxConfig,
        pipeline: Arc<Pipeline>,
        wal: Wal,
        metrics: InfluxMetrics,
    ) -> std::io::Result<InfluxSink> {
        let token = cfg.resolve_token()?;
        let http = reqwest011::ClientBuilder::new()
            .timeout(cfg.request_timeout)
            .connect_timeout(cfg.request_timeout);
        let client = influxdb2::ClientBuilder::with_builder(http, &cfg.url, &cfg.org, token)
            .build()
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let datasets = pipeline
            .datasets()
            .into_iter()
            .map(|p| (p.dataset.id.clone(), p.dataset.clone()))
            .collect();
        let checkpoint = wal.register(CONSUMER)?;
        Ok(InfluxSink {
            client,
            cfg,
            datasets,
            pipeline,
            wal,
            metrics,
            checkpoint,
        })
    }

    async fn post(&self, body: String, points: u64) -> Written {
        let result = self
            .client
            .write_line_protocol_with_precision(
                &self.cfg.org,
                &self.cfg.bucket,
                body,
                TimestampPrecision::Nanoseconds,
            )
            .await;
        match result {
            Ok(()) => {
                self.metrics.write("204");
                self.metrics.written(points);
                Written::Ok
            }
            Err(influxdb2::RequestError::Http { status, text }) => {
                let code = status.as_u16();
                self.metrics.write(status.as_str());
                if matches!(code, 400 | 413 | 422) {
                    Written::Poison(code, text)
                } else {
                    Written::Retry(code, text)
                }
            }
            Err(e) => {
                self.metrics.write("error");
                Written::Retry(0, e.to_string())
            }
        }
    }

    /// Writes `points` of `text`, retrying until done or `stop`; splits on poison. Returns
    /// `false` if stopped before the points were written.
    async fn write(&self, text: &str, points: &[Point], stop: &CancellationToken) -> bool {
        let mut backoff = Duration::from_secs(1);
        // Ranges of `points` still to write; poison splits them.
        let mut todo: Vec<std::ops::Range<usize>> = Vec::new();
        todo.push(0..points.len());
        while let Some(range) = todo.pop() {
            if range.is_empty() {
                continue;
            }
            let body: String = points[range.clone()]
                .iter()
                .map(|p| &text[p.line.clone()])
                .collect();
            match self.post(body, range.len() as u64).await {
                Written::Ok => backoff = Duration::from_secs(1),
                Written::Poison(status, message) if range.len() == 1 => {
                    self.reject(&points[range.start], status, &message);
                }
                Written::Poison(..) => {
                    let mid = range.start + range.len() / 2;
                    todo.push(mid..range.end);
                    todo.push(range.start..mid);
                }
                Written::Retry(status, message) => {
                    self.metrics.retry();
                    let jitter = Duration::from_millis(rand::random::<u64>() % 250);
                    tracing::warn!(status, %message, retry_in = ?backoff, "influx write failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff + jitter) => {}
                        _ = stop.cancelled() => return false,
                    }
                    backoff = (backoff * 2).min(self.cfg.max_retry_delay);
                    todo.push(range);
                }
            }
        }
        true
    }

    /// A point the store refused: on record with its dataset's rejects.
    fn reject(&self, point: &Point, status: u16, message: &str) {
        self.metrics.poison(1);
        tracing::error!(dataset = %point.dataset.id, status, %message, "the store refused a point");
        if let Some(p) = self.pipeline.dataset(&point.dataset.id) {
            p.metrics.rejected(Reason::StoreRejected).inc();
            p.rejects.record([RejectRecord {
                at: now_micros(),
                key_id: "influx-sink".into(),
                sensor_id: Some(point.sensor_id.clone()),
                index: 0,
                reason: Reason::StoreRejected,
                message: format!("the store answered {status}: {message}"),
            }]);
        }
    }

    /// Reads records into `batch` until it is full or the log has no more (blocking I/O, kept
    /// short: at most `batch_size` points per call).
    fn fill(
        &self,
        reader: &mut Reader,
        committed: u64,
        batch: &mut Batch,
        payload: &mut Vec<u8>,
    ) -> std::io::Result<u64> {
        let mut seen = reader.last_lsn();
        let mut readings = Vec::new();
        while batch.points.len() < self.cfg.batch_size && reader.next_into(committed, payload)? {
            let Ok(header) = record::header(payload) else {
                continue;
            };
            seen = header.lsn;
            batch.last_lsn = header.lsn;
            let Some(ds) = self.datasets.get(header.dataset) else {
                continue;
            };
            readings.clear();
            if record::decode_into(payload, ds, &mut readings).is_err() {
                tracing::error!(
                    lsn = header.lsn,
                    "undecodable WAL record skipped by the influx sink"
                );
                continue;
            }
            batch.since.get_or_insert_with(Instant::now);
            batch.oldest_appended.get_or_insert(header.appended_at);
            for r in &readings {
                let start = batch.text.len();
                if write_point(&mut batch.text, ds, r) {
                    batch.points.push(Point {
                        dataset: ds.clone(),
                        sensor_id: r.sensor_id.to_string(),
                        line: start..batch.text.len(),
                    });
                }
            }
        }
        Ok(seen)
    }

    /// Consumes the log until `stop` fires and everything committed is written (or the store
    /// is unreachable at stop: then the backlog waits in the log for the next start).
    pub async fn run(mut self, stop: CancellationToken) {
        let mut reader = Reader::new(self.wal.dir(), self.checkpoint.lsn);
        let mut committed_rx = self.wal.committed();
        let mut batch = Batch::default();
        let mut payload = Vec::new();
        let mut stopping = false;
        loop {
            let committed = *committed_rx.borrow_and_update();
            let seen = match self.fill(&mut reader, committed, &mut batch, &mut payload) {
                Ok(seen) => seen,
                Err(e) => {
                    tracing::error!(error = %e, "influx sink cannot read the WAL; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let caught_up = seen >= committed;
            let full = batch.points.len() >= self.cfg.batch_size;
            let aged = batch
                .since
                .is_some_and(|t| t.elapsed() >= self.cfg.batch_age);
            let lag = batch
                .oldest_appended
                .map_or(0.0, |t| (now_micros() - t).max(0) as f64 / 1e6);
            self.wal
                .metrics()
                .lag(CONSUMER, committed.saturating_sub(self.checkpoint.lsn), lag);
            // Write when the batch is full or old enough, or at the end; a batch of records
            // without points only moves the checkpoint.
            let due = if batch.points.is_empty() {
                batch.last_lsn > self.checkpoint.lsn && caught_up
            } else {
                full || aged || (stopping && caught_up)
            };
            if due {
                let done = std::mem::take(&mut batch);
                if !done.points.is_empty() && !self.write(&done.text, &done.points, &stop).await {
                    break;
                }
                if done.last_lsn > self.checkpoint.lsn {
                    let cp = Checkpoint {
                        lsn: done.last_lsn,
                        intent: None,
                    };
                    match self.wal.checkpoint(CONSUMER, cp) {
                        Ok(()) => self.checkpoint = cp,
                        Err(e) => {
                            tracing::error!(error = %e, "influx sink cannot store its checkpoint")
                        }
                    }
                }
                continue;
            }
            if stopping && caught_up && batch.points.is_empty() {
                break;
            }
            if !caught_up {
                continue;
            }
            let deadline = batch.since.map(|t| t + self.cfg.batch_age);
            tokio::select! {
                _ = stop.cancelled(), if !stopping => stopping = true,
                _ = committed_rx.changed(), if !stopping => {}
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {}
            }
        }
        tracing::debug!(lsn = self.checkpoint.lsn, "influx sink stopped");
    }
}

#[cfg(test)]
mod tests;
