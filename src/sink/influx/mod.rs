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

mod former;
mod line;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use influxdb2::api::write::TimestampPrecision;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::InfluxConfig;
use crate::model::Reason;
use crate::model::{Micros, now_micros};
use crate::registry::Registry;
use crate::registry::rejects::RejectRecord;
use crate::telemetry::InfluxMetrics;
use crate::wal::{Checkpoint, Wal};
use former::{Batch, Former, Point, Shapes};

pub(crate) const CONSUMER: &str = "influx";

/// How a write went.
enum Written {
    Ok,
    /// The store refused some points as invalid (status, message); the batch must be split.
    Poison(u16, String),
    /// Try again later (status, or 0 when there was no answer).
    Retry(u16, String),
}

/// A batch handed to the writer: the last record it covers, whether it has an entry in the
/// queue of append times, and whether its write has finished.
struct Slot {
    last_lsn: u64,
    counted: bool,
    finished: bool,
}

/// Stores the sink's checkpoint off the async threads (a store is two fsyncs), one store at
/// a time; writes that finish meanwhile are covered by the next store.
struct Checkpointer {
    wal: Wal,
    stored: u64,
    wanted: u64,
    task: Option<tokio::task::JoinHandle<std::io::Result<u64>>>,
}

impl Checkpointer {
    /// Everything up to `lsn` is in the store.
    fn advance(&mut self, lsn: u64) {
        self.wanted = self.wanted.max(lsn);
        self.start();
    }

    fn start(&mut self) {
        if self.task.is_none() && self.wanted > self.stored {
            let (wal, lsn) = (self.wal.clone(), self.wanted);
            self.task = Some(tokio::task::spawn_blocking(move || {
                let cp = Checkpoint { lsn, intent: None };
                wal.checkpoint(CONSUMER, cp).map(|()| lsn)
            }));
        }
    }

    fn busy(&self) -> bool {
        self.task.is_some()
    }

    /// Waits for the store under way; starts the next if more was written meanwhile (after a
    /// failure, only when more is written).
    async fn settle(&mut self) {
        let Some(task) = self.task.as_mut() else {
            return;
        };
        let result = task.await;
        self.task = None;
        match result {
            Ok(Ok(lsn)) => {
                self.stored = lsn;
                self.start();
            }
            Ok(Err(e)) => tracing::error!(error = %e, "influx sink cannot store its checkpoint"),
            Err(e) => tracing::error!(error = %e, "influx sink checkpoint task failed"),
        }
    }

    /// Stores the last checkpoint wanted before the sink stops.
    async fn finish(mut self) {
        self.start();
        self.settle().await;
        self.settle().await;
    }
}

/// The InfluxDB sink.
#[derive(Debug)]
pub(crate) struct InfluxSink {
    client: influxdb2::Client,
    cfg: InfluxConfig,
    shapes: Arc<RwLock<Shapes>>,
    registry: Arc<Registry>,
    wal: Wal,
    metrics: InfluxMetrics,
    checkpoint: Checkpoint,
}

impl InfluxSink {
    /// Registers the sink with the log and builds the client.
    pub(crate) fn new(
        cfg: InfluxConfig,
        registry: Arc<Registry>,
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
        let mut shapes = Shapes::default();
        for p in registry.all() {
            shapes.add(p.dataset.clone());
        }
        let checkpoint = wal.register(CONSUMER)?;
        Ok(InfluxSink {
            client,
            cfg,
            shapes: Arc::new(RwLock::new(shapes)),
            registry,
            wal,
            metrics,
            checkpoint,
        })
    }

    async fn post(&self, body: Bytes, points: u64) -> Written {
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
    async fn write(&self, text: Bytes, points: &[Point], stop: &CancellationToken) -> bool {
        let mut backoff = Duration::from_secs(1);
        // Runs of `points` still to write; poison splits them.
        let mut todo: Vec<std::ops::Range<usize>> = Vec::new();
        todo.push(0..points.len());
        while let Some(range) = todo.pop() {
            if range.is_empty() {
                continue;
            }
            let body = text.slice(points[range.start].line.start..points[range.end - 1].line.end);
            match self.post(body, range.len() as u64).await {
                Written::Ok => backoff = Duration::from_secs(1),
                Written::Poison(status, message) if range.len() == 1 => {
                    self.reject(&text, &points[range.start], status, &message);
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
    fn reject(&self, text: &[u8], point: &Point, status: u16, message: &str) {
        let shape = Shapes::get(&self.shapes, point.shape);
        let line = String::from_utf8_lossy(&text[point.line.clone()]);
        let sensor_id = shape.sensor_of(&line);
        self.metrics.poison(1);
        tracing::error!(dataset = %shape.dataset.id, %sensor_id, status, %message, "the store refused a point");
        if let Some(p) = self.registry.get(&shape.dataset.id) {
            p.metrics.rejected(Reason::StoreRejected).inc();
            p.rejects.record([RejectRecord {
                at: now_micros(),
                key_id: "influx-sink".into(),
                sensor_id: Some(sensor_id),
                index: 0,
                reason: Reason::StoreRejected,
                message: format!("the store answered {status}: {message}"),
            }]);
        }
    }

    /// Consumes the log until `stop` fires and everything committed is written (or the store
    /// is unreachable at stop: then the backlog waits in the log for the next start). Batches
    /// are formed while those before them are being written.
    pub(crate) async fn run(self, stop: CancellationToken) {
        let (tx, rx) = mpsc::channel(1);
        let sink = Arc::new(self);
        // Append times of the oldest reading of each batch sent but not yet written.
        let pending = Arc::new(Mutex::new(VecDeque::new()));
        let writer = tokio::spawn(
            sink.clone()
                .write_batches(rx, pending.clone(), stop.clone()),
        );
        sink.form_batches(tx, pending, stop).await;
        if let Err(e) = writer.await {
            tracing::error!(error = %e, "influx sink writer failed");
        }
    }

    /// Reads the log into batches and hands each to the writer when it is full, old enough,
    /// or the last one at stop.
    async fn form_batches(
        &self,
        tx: mpsc::Sender<Batch>,
        pending: Arc<Mutex<VecDeque<Micros>>>,
        stop: CancellationToken,
    ) {
        let mut former = Some(Former {
            consumer: self.wal.consumer(self.checkpoint.lsn),
            shapes: self.shapes.clone(),
            registry: self.registry.clone(),
            batch_size: self.cfg.batch_size,
            batch: Batch::default(),
            readings: Vec::new(),
        });
        let mut committed_rx = self.wal.committed();
        let mut sent_lsn = self.checkpoint.lsn;
        let mut stopping = false;
        loop {
            let committed = *committed_rx.borrow_and_update();
            let mut f = former.take().expect("the former is back after every fill");
            // Formatting points is CPU work: off the async threads, from memory or disk alike.
            let (f, filled) = tokio::task::spawn_blocking(move || {
                let filled = f.fill(committed);
                (f, filled)
            })
            .await
            .expect("the influx sink's former does not panic");
            let batch = &former.insert(f).batch;
            let seen = match filled {
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
            // Write when the batch is full or old enough, or at the end; a batch of records
            // without points only moves the checkpoint.
            let due = if batch.points.is_empty() {
                batch.last_lsn > sent_lsn && caught_up
            } else {
                full || aged || (stopping && caught_up)
            };
            if due {
                let done = std::mem::take(&mut former.as_mut().expect("just put back").batch);
                sent_lsn = done.last_lsn.max(sent_lsn);
                if let Some(t) = done.oldest_appended {
                    pending.lock().expect("not poisoned").push_back(t);
                }
                if tx.send(done).await.is_err() {
                    break; // the writer stopped with the store unreachable
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
    }

    /// Writes batches, up to `parallel_writes` at once, moving the checkpoint past every batch
    /// whose write and all before it have finished; reports the lag.
    async fn write_batches(
        self: Arc<Self>,
        mut rx: mpsc::Receiver<Batch>,
        pending: Arc<Mutex<VecDeque<Micros>>>,
        stop: CancellationToken,
    ) {
        let mut written = self.checkpoint.lsn;
        let mut checkpointer = Checkpointer {
            wal: self.wal.clone(),
            stored: written,
            wanted: written,
            task: None,
        };
        let report_lag = |written: u64| {
            let oldest = pending.lock().expect("not poisoned").front().copied();
            let seconds = oldest.map_or(0.0, |t| (now_micros() - t).max(0) as f64 / 1e6);
            let records = self.wal.committed_lsn().saturating_sub(written);
            self.wal.metrics().lag(CONSUMER, records, seconds);
        };
        // Writes under way, each answering with its number and whether it was done; and every
        // batch not yet behind the checkpoint, in log order from number `first`.
        let mut in_flight = FuturesUnordered::<BoxFuture<'static, (u64, bool)>>::new();
        let mut order: VecDeque<Slot> = VecDeque::new();
        let mut first = 0u64;
        // A slow write holds the checkpoint back, not the writes after it; this many batches
        // may finish past it.
        let max_unsettled = self.cfg.parallel_writes * 8;
        let mut open = true;
        loop {
            report_lag(written);
            tokio::select! {
                biased;
                Some((n, done)) = in_flight.next(), if !in_flight.is_empty() => {
                    if !done {
                        break; // stopped with the store unreachable
                    }
                    order[(n - first) as usize].finished = true;
                    while order.front().is_some_and(|s| s.finished) {
                        let slot = order.pop_front().expect("front exists");
                        first += 1;
                        if slot.counted {
                            pending.lock().expect("not poisoned").pop_front();
                        }
                        written = written.max(slot.last_lsn);
                    }
                    checkpointer.advance(written);
                }
                () = checkpointer.settle(), if checkpointer.busy() => {}
                batch = rx.recv(), if open
                    && in_flight.len() < self.cfg.parallel_writes
                    && order.len() < max_unsettled =>
                {
                    let Some(batch) = batch else {
                        open = false;
                        continue;
                    };
                    let n = first + order.len() as u64;
                    order.push_back(Slot {
                        last_lsn: batch.last_lsn,
                        counted: batch.oldest_appended.is_some(),
                        finished: false,
                    });
                    let sink = self.clone();
                    let stop = stop.clone();
                    in_flight.push(
                        async move {
                            let done = batch.points.is_empty()
                                || sink.write(Bytes::from(batch.text), &batch.points, &stop).await;
                            (n, done)
                        }
                        .boxed(),
                    );
                }
                else => break,
            }
        }
        checkpointer.finish().await;
        tracing::debug!(lsn = written, "influx sink stopped");
    }
}

#[cfg(test)]
mod tests;
