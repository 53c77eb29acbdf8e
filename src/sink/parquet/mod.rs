//! Parquet sink: one write-ahead-log consumer per dataset, writing Hive-partitioned,
//! zstd-compressed Parquet files:
//!
//! ```text
//! {data_dir}/parquet/dataset={id}/date=YYYY-MM-DD/hour=HH/part-{first_lsn}-{last_lsn}-{n}.parquet
//! ```
//!
//! partitioned by device timestamp. The sink reads the log from its checkpoint, gathers its
//! dataset's readings and writes them when it holds `max_rows`, about `max_bytes`, or when the
//! oldest has waited `max_age`. File names come from the range of log records they hold, and
//! before writing a range the sink records that intent in its checkpoint: after a crash it
//! writes exactly that range again, under the same names, so replay replaces files instead of
//! adding copies. Encoding runs on a blocking thread while the task reads on.
//!
//! A failed write (disk full, permissions) is logged at ERROR, counted, and retried with
//! backoff; the readings stay safe in the log meanwhile, which grows until its quota stops
//! intake (no reading is acknowledged that the log does not hold).

pub(crate) mod encode;
mod files;
mod read;

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::ParquetConfig;
use crate::model::{Dataset, Reading, now_micros};
use crate::sink::lake::Lake;
use crate::telemetry::DatasetMetrics;
use crate::wal::{Checkpoint, Consumer, Wal};
pub use encode::{EncodeError, ParquetLayout};
pub use files::{
    FlushStats, log_range, parquet_files, partition_dir, remove_stale_temp_files, write_chunks,
    write_partitions,
};
use read::{Chunk, Pending, read_chunk};

/// Readings in the shared chunks they came in.
type Chunks = Vec<Arc<Vec<Reading>>>;

type Flush = JoinHandle<(Result<FlushStats, EncodeError>, Chunks)>;

/// The Parquet sink of one dataset: a consumer of the write-ahead log.
#[derive(Debug)]
pub struct ParquetSink {
    ds: Arc<Dataset>,
    layout: Arc<ParquetLayout>,
    /// Where the files go: the lake, or (object storage) the staging directory they are
    /// uploaded from.
    lake: Lake,
    cfg: ParquetConfig,
    metrics: DatasetMetrics,
    wal: Wal,
    name: String,
    checkpoint: Checkpoint,
    retry: Option<(Instant, Duration)>,
}

impl ParquetSink {
    /// The log consumer name of `dataset`'s sink.
    pub fn consumer_name(dataset: &str) -> String {
        format!("parquet-{dataset}")
    }

    /// Registers the sink with the log (from its stored checkpoint).
    pub fn new(
        ds: Arc<Dataset>,
        lake: Lake,
        cfg: ParquetConfig,
        metrics: DatasetMetrics,
        wal: Wal,
    ) -> Result<ParquetSink, EncodeError> {
        let layout = Arc::new(ParquetLayout::new(&ds, cfg.zstd_level)?);
        let name = Self::consumer_name(&ds.id);
        let checkpoint = wal.register(&name).map_err(|source| EncodeError::Io {
            path: wal.dir().to_path_buf(),
            source,
        })?;
        Ok(ParquetSink {
            ds,
            layout,
            lake,
            cfg,
            metrics,
            wal,
            name,
            checkpoint,
            retry: None,
        })
    }

    fn due_by_size(&self, pending: &Pending) -> bool {
        pending.rows >= self.cfg.max_rows || pending.bytes >= self.cfg.max_bytes.as_usize()
    }

    fn store_checkpoint(&mut self, cp: Checkpoint) -> bool {
        match self.wal.checkpoint(&self.name, cp) {
            Ok(()) => {
                self.checkpoint = cp;
                true
            }
            Err(e) => {
                tracing::error!(sink = %self.name, error = %e, "cannot store the checkpoint; will retry");
                false
            }
        }
    }

    /// Records the intent to write `range`, then writes it on a blocking thread.
    fn start_flush(
        &mut self,
        range: (u64, u64),
        readings: Vec<Arc<Vec<Reading>>>,
    ) -> Option<Flush> {
        let intent = Checkpoint {
            lsn: range.0 - 1,
            intent: Some(range),
        };
        if !self.store_checkpoint(intent) {
            return None;
        }
        let (layout, lake, id) = (self.layout.clone(), self.lake.clone(), self.ds.id.clone());
        Some(tokio::task::spawn_blocking(move || {
            // In object storage: uploaded before the checkpoint moves.
            let result =
                write_chunks(&layout, lake.write_root(), &id, range, &readings).and_then(|stats| {
                    lake.publish(&id, &stats.written, range.1)?;
                    Ok(stats)
                });
            (result, readings)
        }))
    }

    /// Books a finished write. On success the checkpoint moves to `durable_upto`; on failure
    /// the readings come back to be written again (same range, same names) after a pause.
    fn finish_flush(
        &mut self,
        joined: Result<(Result<FlushStats, EncodeError>, Chunks), tokio::task::JoinError>,
        range: (u64, u64),
        durable_upto: u64,
    ) -> Option<Chunks> {
        let (result, readings) = match joined {
            Ok(done) => done,
            Err(e) => {
                // A panic in the encoder: the readings are still in the log; start over.
                tracing::error!(dataset = %self.ds.id, error = %e, "parquet write task failed");
                self.metrics.parquet_flush_errors.inc();
                self.retry = Some((
                    Instant::now() + Duration::from_secs(1),
                    Duration::from_secs(1),
                ));
                return Some(Vec::new());
            }
        };
        match result {
            Ok(s) => {
                self.metrics.parquet_files.inc_by(s.files);
                self.metrics.parquet_rows.inc_by(s.rows);
                self.metrics.parquet_bytes.inc_by(s.bytes);
                tracing::debug!(dataset = %self.ds.id, files = s.files, rows = s.rows, lsn = ?range, "parquet flush");
                self.retry = None;
                self.store_checkpoint(Checkpoint {
                    lsn: durable_upto.max(range.1),
                    intent: None,
                });
                None
            }
            Err(error) => {
                self.metrics.parquet_flush_errors.inc();
                let backoff = self.retry.map_or(Duration::from_millis(500), |(_, b)| {
                    (b * 2).min(Duration::from_secs(30))
                });
                tracing::error!(
                    dataset = %self.ds.id, rows = readings.iter().map(|c| c.len()).sum::<usize>(), %error, retry_in = ?backoff,
                    "parquet write failed; the readings stay in the log and are written again"
                );
                self.retry = Some((Instant::now() + backoff, backoff));
                Some(readings)
            }
        }
    }

    /// Reads the log from `reader` (blocking, off the async workers). `None` only when the
    /// runtime is going away under us.
    async fn read(&self, consumer: Consumer, committed: u64, max: usize) -> Option<Chunk> {
        // From memory on this task while that goes (no thread hop); else from disk, off it.
        let start = consumer.position();
        let chunk = read_chunk(consumer, committed, &self.ds, max, false);
        if !chunk.needs_disk || chunk.seen > start {
            return Some(chunk);
        }
        let (ds, consumer) = (self.ds.clone(), chunk.consumer);
        tokio::task::spawn_blocking(move || read_chunk(consumer, committed, &ds, max, true))
            .await
            .ok()
    }

    /// Writes again exactly the range a crash interrupted, under the same names.
    async fn redo(&mut self, range: (u64, u64), stop: &CancellationToken) -> bool {
        let (a, b) = range;
        tracing::info!(dataset = %self.ds.id, first = a, last = b, "redoing an interrupted parquet write");
        let mut consumer = self.wal.consumer(a - 1);
        let mut readings = Vec::new();
        while consumer.position() < b {
            let Some(chunk) = self.read(consumer, b, usize::MAX).await else {
                return false;
            };
            consumer = chunk.consumer;
            readings.extend(chunk.chunks);
            if let Err(e) = chunk.result {
                tracing::error!(error = %e, "cannot read the WAL to redo a write; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            } else if chunk.first_lsn.is_none() && chunk.seen < b {
                break;
            }
        }
        loop {
            let Some(flush) = self.start_flush(range, readings) else {
                return false;
            };
            match self.finish_flush(flush.await, range, b) {
                None => return true,
                Some(back) => readings = back,
            }
            let pause = self.retry.map_or(Duration::from_secs(1), |(_, b)| b);
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.cancelled() => return false,
            }
        }
    }

    /// Consumes the log until `stop` fires and everything committed by then is written.
    pub async fn run(mut self, stop: CancellationToken) {
        if let Some(range) = self.checkpoint.intent
            && !self.redo(range, &stop).await
        {
            return;
        }
        let mut reader = Some(self.wal.consumer(self.checkpoint.lsn));
        let mut committed_rx = self.wal.committed();
        let mut pending = Pending::default();
        let mut seen = self.checkpoint.lsn;
        let mut flushing: Option<(Flush, (u64, u64))> = None;
        let mut retry_buffer: Option<(Chunks, (u64, u64))> = None;
        let mut stopping = false;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut last_advance = Instant::now();
        let cap = self.cfg.max_rows.saturating_mul(4);
        loop {
            let committed = *committed_rx.borrow_and_update();
            // Read what the log has, as far as the buffer may grow.
            if seen < committed
                && pending.rows < cap
                && let Some(r) = reader.take()
            {
                let Some(chunk) = self.read(r, committed, cap - pending.rows).await else {
                    return;
                };
                reader = Some(chunk.consumer);
                seen = chunk.seen;
                if chunk.dropped > 0 {
                    tracing::warn!(dataset = %self.ds.id, values = chunk.dropped, "values of fields the schema no longer has were dropped");
                }
                if let Some(first) = chunk.first_lsn {
                    pending.first_lsn.get_or_insert(first);
                    pending.last_lsn = chunk.last_lsn;
                    pending.since.get_or_insert_with(Instant::now);
                    pending.oldest_appended = pending.oldest_appended.or(chunk.oldest_appended);
                    pending.bytes += chunk
                        .chunks
                        .iter()
                        .flat_map(|c| c.iter())
                        .map(Reading::approx_size)
                        .sum::<usize>();
                    pending.rows += chunk.rows;
                    pending.chunks.extend(chunk.chunks);
                }
                if let Err(e) = chunk.result {
                    tracing::error!(dataset = %self.ds.id, error = %e, "cannot read the WAL; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            self.metrics.parquet_buffered.set(pending.rows as i64);
            let retry_due = self.retry.is_none_or(|(at, _)| Instant::now() >= at);
            // Start a write: a failed one again first, else the buffer when it is due.
            if flushing.is_none() && retry_due {
                if let Some((readings, range)) = retry_buffer.take() {
                    match self.start_flush(range, readings) {
                        Some(f) => flushing = Some((f, range)),
                        None => {
                            self.retry = Some((
                                Instant::now() + Duration::from_secs(1),
                                Duration::from_secs(1),
                            ))
                        }
                    }
                } else if let Some(first) = pending.first_lsn {
                    let caught_up = seen >= committed;
                    let by_age = pending
                        .since
                        .is_some_and(|t| t.elapsed() >= self.cfg.max_age);
                    if self.due_by_size(&pending) || by_age || (stopping && caught_up) {
                        let range = (first, pending.last_lsn);
                        let readings = std::mem::take(&mut pending).chunks;
                        match self.start_flush(range, readings) {
                            Some(f) => flushing = Some((f, range)),
                            None => {
                                // Could not record the intent: keep the readings in the log
                                // and read them again.
                                reader = Some(self.wal.consumer(self.checkpoint.lsn));
                                seen = self.checkpoint.lsn;
                                self.retry = Some((
                                    Instant::now() + Duration::from_secs(1),
                                    Duration::from_secs(1),
                                ));
                            }
                        }
                    }
                } else if seen > self.checkpoint.lsn
                    && (stopping || last_advance.elapsed() >= Duration::from_secs(1))
                {
                    // Nothing of ours since the checkpoint: let the log release what others
                    // wrote (at most once a second: each store is two fsyncs).
                    last_advance = Instant::now();
                    self.store_checkpoint(Checkpoint {
                        lsn: seen,
                        intent: None,
                    });
                }
            }
            let lag_seconds = pending
                .oldest_appended
                .map_or(0.0, |t| (now_micros() - t).max(0) as f64 / 1e6);
            self.wal.metrics().lag(
                &self.name,
                committed.saturating_sub(self.checkpoint.lsn),
                lag_seconds,
            );

            if stopping
                && seen >= committed
                && flushing.is_none()
                && retry_buffer.is_none()
                && pending.is_empty()
                && self.checkpoint.lsn >= seen
            {
                break;
            }
            if seen < committed && pending.rows < cap && flushing.is_none() {
                continue;
            }
            let deadline = match (&retry_buffer, pending.since) {
                (Some(_), _) => self.retry.map(|(at, _)| at),
                (None, Some(since)) => {
                    Some(self.retry.map_or(since + self.cfg.max_age, |(at, _)| at))
                }
                _ => None,
            };
            tokio::select! {
                biased;
                joined = async { (&mut flushing.as_mut().expect("guarded").0).await }, if flushing.is_some() => {
                    let (_, range) = flushing.take().expect("guarded");
                    let durable_upto = pending.first_lsn.map_or(seen, |f| f - 1);
                    if let Some(back) = self.finish_flush(joined, range, durable_upto) {
                        if back.is_empty() {
                            // The write task died with the readings: read them again.
                            reader = Some(self.wal.consumer(self.checkpoint.lsn));
                            seen = self.checkpoint.lsn;
                            pending = Pending::default();
                        } else {
                            retry_buffer = Some((back, range));
                        }
                    }
                }
                _ = stop.cancelled(), if !stopping => stopping = true,
                _ = committed_rx.changed(), if seen >= committed && !stopping => {}
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() && flushing.is_none() => {}
                _ = tick.tick() => {}
            }
        }
        tracing::debug!(dataset = %self.ds.id, lsn = self.checkpoint.lsn, "parquet sink stopped");
    }
}

#[cfg(test)]
mod tests;
