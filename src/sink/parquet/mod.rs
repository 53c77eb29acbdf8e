//! Parquet sink: one task per dataset buffers acknowledged readings and writes them as
//! Hive-partitioned, zstd-compressed Parquet files:
//!
//! ```text
//! {data_dir}/parquet/dataset={id}/date=YYYY-MM-DD/hour=HH/part-{stamp}-{n}.parquet
//! ```
//!
//! partitioned by device timestamp. A buffer is flushed when it reaches `max_rows`, about
//! `max_bytes`, or when its oldest reading has waited `max_age`. Encoding runs on a blocking
//! thread while the task keeps taking readings into a fresh buffer; at most one flush per
//! dataset is in flight, so a slow disk backs up into the queue and, from there, into intake.
//!
//! A failed flush (disk full, permissions) is logged at ERROR, counted, and retried with
//! backoff; the readings stay in memory, and once the buffer holds `4 × max_rows` the task
//! stops taking more, so intake answers 503 instead of acknowledging what it cannot keep.

pub mod encode;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::ParquetConfig;
use crate::model::{Dataset, Micros, Reading, now_micros};
use crate::pipeline::decode::time::civil_from_days;
use crate::telemetry::DatasetMetrics;
pub use encode::{EncodeError, ParquetLayout};

/// Readings for the sink, and the acknowledgement the intake is waiting for.
pub struct SinkMsg {
    pub readings: Vec<Reading>,
    pub ack: oneshot::Sender<()>,
}

const HOUR: Micros = 3_600_000_000;

/// The Hive partition directory of an hour (`hour_index` = µs / 1 h) below `root`.
pub fn partition_dir(root: &Path, dataset: &str, hour_index: i64) -> PathBuf {
    let (y, m, d) = civil_from_days(hour_index.div_euclid(24));
    let hour = hour_index.rem_euclid(24);
    root.join(format!("dataset={dataset}"))
        .join(format!("date={y:04}-{m:02}-{d:02}"))
        .join(format!("hour={hour:02}"))
}

/// What one flush wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FlushStats {
    pub files: u64,
    pub rows: u64,
    pub bytes: u64,
}

/// Result of writing a buffer: what was written, and what was not (with the error).
pub struct FlushOutcome {
    pub stats: FlushStats,
    pub failed: Option<(EncodeError, Vec<Reading>)>,
}

/// Writes `readings` as one file per hour partition. Blocking: call from a blocking thread.
/// On error, the readings of partitions not yet written come back for a retry; partitions
/// already written are not written again.
pub fn write_partitions(
    layout: &ParquetLayout,
    root: &Path,
    dataset: &str,
    readings: Vec<Reading>,
) -> FlushOutcome {
    let mut stats = FlushStats::default();
    if readings.is_empty() {
        return FlushOutcome {
            stats,
            failed: None,
        };
    }
    let hour_of = |r: &Reading| r.ts.div_euclid(HOUR);
    let first = hour_of(&readings[0]);
    let mut order: Vec<u32> = (0..readings.len() as u32).collect();
    if readings.iter().any(|r| hour_of(r) != first) {
        order.sort_by_key(|&i| hour_of(&readings[i as usize]));
    }
    let stamp = format!("{}-{:08x}", now_micros(), rand::random::<u32>());

    let mut start = 0;
    let mut part = 0;
    while start < order.len() {
        let hour = hour_of(&readings[order[start] as usize]);
        let end = start
            + order[start..]
                .iter()
                .position(|&i| hour_of(&readings[i as usize]) != hour)
                .unwrap_or(order.len() - start);
        let run = &order[start..end];
        let path = partition_dir(root, dataset, hour).join(format!("part-{stamp}-{part}.parquet"));
        let written = layout
            .record_batch(run.iter().map(|&i| &readings[i as usize]))
            .and_then(|batch| layout.write_file(&batch, &path));
        match written {
            Ok(bytes) => {
                stats.files += 1;
                stats.rows += run.len() as u64;
                stats.bytes += bytes;
            }
            Err(e) => {
                let mut keep = vec![false; readings.len()];
                for &i in &order[start..] {
                    keep[i as usize] = true;
                }
                let rest = readings
                    .into_iter()
                    .zip(keep)
                    .filter_map(|(r, k)| k.then_some(r))
                    .collect();
                return FlushOutcome {
                    stats,
                    failed: Some((e, rest)),
                };
            }
        }
        start = end;
        part += 1;
    }
    FlushOutcome {
        stats,
        failed: None,
    }
}

/// Calls `visit` for every file below `dir` (depth first; unreadable directories skipped).
fn walk_files(dir: &Path, visit: &mut impl FnMut(&Path)) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            walk_files(&path, visit);
        } else {
            visit(&path);
        }
    }
}

/// Every finished Parquet file below `root`, sorted by path (so by partition, then name).
pub fn parquet_files(root: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    walk_files(root, &mut |path| {
        if path.extension().is_some_and(|e| e == "parquet") {
            files.push(path.to_path_buf());
        }
    });
    files.sort();
    files
}

/// Removes temporary files a crash left behind (`.part-….parquet.tmp`): they never became
/// visible, and the readings in them were not acknowledged as written by this sink.
pub fn remove_stale_temp_files(root: &Path) -> usize {
    let mut removed = 0;
    walk_files(root, &mut |path| {
        let stale = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.') && n.ends_with(".parquet.tmp"));
        if stale && std::fs::remove_file(path).is_ok() {
            removed += 1;
        }
    });
    removed
}

/// The Parquet sink of one dataset.
pub struct ParquetSink {
    ds: Arc<Dataset>,
    layout: Arc<ParquetLayout>,
    root: PathBuf,
    cfg: ParquetConfig,
    metrics: DatasetMetrics,
    buffer: Vec<Reading>,
    buffer_bytes: usize,
    oldest: Option<Instant>,
    retry: Option<(Instant, Duration)>,
}

type InFlight = JoinHandle<FlushOutcome>;

impl ParquetSink {
    pub fn new(
        ds: Arc<Dataset>,
        root: PathBuf,
        cfg: ParquetConfig,
        metrics: DatasetMetrics,
    ) -> Result<ParquetSink, EncodeError> {
        let layout = Arc::new(ParquetLayout::new(&ds, cfg.zstd_level)?);
        Ok(ParquetSink {
            ds,
            layout,
            root,
            cfg,
            metrics,
            buffer: Vec::new(),
            buffer_bytes: 0,
            oldest: None,
            retry: None,
        })
    }

    fn hard_cap(&self) -> usize {
        self.cfg.max_rows.saturating_mul(4)
    }

    fn due_by_size(&self) -> bool {
        self.buffer.len() >= self.cfg.max_rows || self.buffer_bytes >= self.cfg.max_bytes.as_usize()
    }

    /// When the next flush is due by age or retry, if the buffer holds anything.
    fn deadline(&self) -> Option<Instant> {
        let by_age = self.oldest? + self.cfg.max_age;
        Some(self.retry.map_or(by_age, |(at, _)| at))
    }

    fn accept(&mut self, msg: SinkMsg) {
        if self.oldest.is_none() {
            self.oldest = Some(Instant::now());
        }
        self.buffer_bytes += msg.readings.iter().map(Reading::approx_size).sum::<usize>();
        if self.buffer.is_empty() {
            self.buffer = msg.readings;
        } else {
            self.buffer.extend(msg.readings);
        }
        self.metrics.parquet_buffered.set(self.buffer.len() as i64);
        // The readings are in the batcher: that is this stage's acknowledgement. A dropped
        // receiver means the client went away; the readings are kept regardless.
        let _ = msg.ack.send(());
    }

    /// Starts writing the buffer on a blocking thread.
    fn start_flush(&mut self) -> InFlight {
        let readings = std::mem::take(&mut self.buffer);
        self.buffer_bytes = 0;
        self.oldest = None;
        let layout = self.layout.clone();
        let root = self.root.clone();
        let id = self.ds.id.clone();
        tokio::task::spawn_blocking(move || write_partitions(&layout, &root, &id, readings))
    }

    /// Books a finished flush; failed readings go back to the front of the buffer.
    fn finish_flush(&mut self, joined: Result<FlushOutcome, tokio::task::JoinError>) {
        let outcome = match joined {
            Ok(outcome) => outcome,
            Err(e) => {
                // Only a panic in the encoder gets here; its readings are gone with it.
                tracing::error!(dataset = %self.ds.id, error = %e, "parquet flush task failed; its readings are lost");
                self.metrics.parquet_flush_errors.inc();
                return;
            }
        };
        let s = outcome.stats;
        self.metrics.parquet_files.inc_by(s.files);
        self.metrics.parquet_rows.inc_by(s.rows);
        self.metrics.parquet_bytes.inc_by(s.bytes);
        if s.files > 0 {
            tracing::debug!(dataset = %self.ds.id, files = s.files, rows = s.rows, bytes = s.bytes, "parquet flush");
        }
        match outcome.failed {
            None => self.retry = None,
            Some((error, mut rest)) => {
                self.metrics.parquet_flush_errors.inc();
                let backoff = self.retry.map_or(Duration::from_millis(500), |(_, b)| {
                    (b * 2).min(Duration::from_secs(30))
                });
                tracing::error!(
                    dataset = %self.ds.id, rows = rest.len(), %error, retry_in = ?backoff,
                    "parquet flush failed; readings kept in memory and retried"
                );
                self.retry = Some((Instant::now() + backoff, backoff));
                self.buffer_bytes += rest.iter().map(Reading::approx_size).sum::<usize>();
                rest.append(&mut self.buffer);
                self.buffer = rest;
                self.oldest = Some(self.oldest.unwrap_or_else(Instant::now));
            }
        }
        self.metrics.parquet_buffered.set(self.buffer.len() as i64);
    }

    fn retry_pending(&self) -> bool {
        self.retry.is_some_and(|(at, _)| Instant::now() < at)
    }

    /// Runs until `stop` fires and the queue is drained and flushed, or the queue closes.
    pub async fn run(mut self, mut rx: mpsc::Receiver<SinkMsg>, stop: CancellationToken) {
        let mut in_flight: Option<InFlight> = None;
        let mut stopping = false;
        loop {
            let deadline = self.deadline();
            let can_take = self.buffer.len() < self.hard_cap();
            tokio::select! {
                biased;
                joined = async { in_flight.as_mut().expect("guarded").await }, if in_flight.is_some() => {
                    in_flight = None;
                    self.finish_flush(joined);
                }
                _ = stop.cancelled(), if !stopping => {
                    // No new batches; the ones already queued are still taken and acked.
                    stopping = true;
                    rx.close();
                }
                msg = rx.recv(), if can_take => match msg {
                    Some(msg) => self.accept(msg),
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)),
                    if deadline.is_some() && in_flight.is_none() => {
                    in_flight = Some(self.start_flush());
                }
            }
            if in_flight.is_none() && self.due_by_size() && !self.retry_pending() {
                in_flight = Some(self.start_flush());
            }
        }

        // Drained: write what is left, retrying until the shutdown deadline cuts us off.
        loop {
            if let Some(flush) = in_flight.take() {
                let joined = flush.await;
                self.finish_flush(joined);
            }
            if self.buffer.is_empty() {
                break;
            }
            if let Some((at, _)) = self.retry {
                tokio::time::sleep_until(at).await;
            }
            in_flight = Some(self.start_flush());
        }
        tracing::debug!(dataset = %self.ds.id, "parquet sink stopped");
    }
}

#[cfg(test)]
mod tests;
