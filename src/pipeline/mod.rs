//! The pipeline: bytes in, acknowledged readings out. `decode → validate → limit → submit`.
//!
//! The first three stages are pure functions chained in the caller's task (an HTTP handler or,
//! later, an MQTT session): no channel, no actor. `submit` crosses to the dataset's sink over a
//! bounded queue and waits for its acknowledgement; only then does the caller answer the
//! device. Overload at that edge blocks for at most `pipeline.queue_timeout`, then the request
//! is refused (`QueueFull` → 503): never acknowledged and dropped.

pub mod decode;
pub mod limit;
pub mod quality;
pub mod reject;
pub mod validate;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use compact_str::CompactString;

use tokio_util::sync::CancellationToken;

use crate::config::{Config, DatasetConfig, ParquetConfig};
use crate::model::now_micros;
use crate::model::{Dataset, Micros, Reading};
use crate::sink::parquet::{EncodeError, ParquetSink};
use crate::telemetry::{DatasetMetrics, Metrics};
use crate::wal::{self, Wal, WalError};
use decode::{Collect, DecodeCtx, DecodeError, Format, Precision};
use limit::{LimitError, LimitKey, Limiter};
use quality::QualityTracker;
use reject::{Reject, RejectLog, RejectRecord, Rejected};

/// Why a whole request was refused. Per-reading problems are not errors: see [`Outcome`].
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("the body cannot be read: {0}")]
    Malformed(#[from] DecodeError),
    #[error("the body holds no readings")]
    NoReadings,
    /// More readings (accepted or rejected) than one request or publish may carry: the
    /// dataset's burst, or `pipeline.max_readings`. Decoding stopped there; nothing kept.
    #[error("the body holds more than {max} readings; send smaller batches")]
    TooManyReadings { max: usize },
    #[error(transparent)]
    RateLimited(#[from] LimitError),
    #[error("the dataset's queue stayed full for {0:?}")]
    QueueFull(Duration),
    #[error("citygate is shutting down")]
    ShuttingDown,
    #[error("storage is full: {0}")]
    StorageFull(String),
    #[error("storage failed: {0}")]
    Storage(String),
    #[error("internal error: {0}")]
    Internal(String),
}

/// Bodies at least this big are decoded on a blocking thread, so one large upload does not
/// hold up the async workers serving everyone else (about a millisecond of decoding).
pub const BLOCKING_DECODE_BYTES: usize = 256 * 1024;

/// What became of a request's readings. `accepted` readings are acknowledged (kept);
/// `rejected` ones are not, each with its position and reason. Zero accepted means none
/// were stored.
#[derive(Debug, Default)]
pub struct Outcome {
    pub accepted: usize,
    pub rejected: Vec<Rejected>,
}

/// One request's bytes and how to read them.
#[derive(Clone, Debug)]
pub struct Batch {
    pub format: Format,
    pub body: Bytes,
    /// Unit of numeric timestamps; the format's default when `None`.
    pub precision: Option<Precision>,
    pub received_at: Micros,
    /// The sensor the transport names for every reading (an MQTT topic's last level).
    pub sensor: Option<CompactString>,
}

/// A batch decoded and validated, not yet admitted or stored.
#[derive(Debug)]
pub struct Checked {
    pub accepted: Vec<Reading>,
    pub rejected: Vec<Rejected>,
    pub received_at: Micros,
}

/// Everything the pipeline keeps per dataset.
pub struct DatasetPipeline {
    pub dataset: Arc<Dataset>,
    pub rejects: RejectLog,
    pub metrics: DatasetMetrics,
    pub quality: QualityTracker,
    limiter: Limiter,
}

/// The pipelines of all datasets, and the write-ahead log they append to. Datasets can be
/// added while running (a provider creating one over the API).
pub struct Pipeline {
    datasets: RwLock<HashMap<String, Arc<DatasetPipeline>>>,
    wal: Wal,
    closing: CancellationToken,
    metrics: Arc<Metrics>,
    parquet_dir: PathBuf,
    parquet: ParquetConfig,
    rejects_kept: usize,
    max_readings: usize,
    /// Live feeds: acknowledged readings are published here.
    feed: std::sync::OnceLock<Arc<crate::feed::Hub>>,
}

impl Pipeline {
    /// Builds the pipeline of every dataset in `config`, appending to `wal`, and the Parquet
    /// sinks (log consumers) the caller must run.
    pub fn new(
        config: &Config,
        metrics: &Arc<Metrics>,
        wal: Wal,
        closing: CancellationToken,
    ) -> Result<(Pipeline, Vec<ParquetSink>), EncodeError> {
        Pipeline::with_datasets(config, &config.datasets, metrics, wal, closing)
    }

    /// [`Pipeline::new`] for `datasets` (the config's and those created over the API).
    pub fn with_datasets(
        config: &Config,
        datasets: &[DatasetConfig],
        metrics: &Arc<Metrics>,
        wal: Wal,
        closing: CancellationToken,
    ) -> Result<(Pipeline, Vec<ParquetSink>), EncodeError> {
        let pipeline = Pipeline {
            datasets: RwLock::new(HashMap::new()),
            wal,
            closing,
            metrics: metrics.clone(),
            parquet_dir: config.parquet_dir(),
            parquet: config.parquet.clone(),
            rejects_kept: config.pipeline.rejects_kept,
            max_readings: config.pipeline.max_readings,
            feed: std::sync::OnceLock::new(),
        };
        let mut sinks = Vec::new();
        for ds_config in datasets {
            sinks.push(pipeline.add_dataset(ds_config)?);
        }
        Ok((pipeline, sinks))
    }

    /// Adds a dataset; returns its Parquet sink, which the caller must run. An id already
    /// present is an error.
    pub fn add_dataset(&self, ds_config: &DatasetConfig) -> Result<ParquetSink, EncodeError> {
        let dataset = Arc::new(ds_config.build());
        let ds_metrics = self.metrics.dataset(&dataset.id);
        let sink = ParquetSink::new(
            dataset.clone(),
            self.parquet_dir.clone(),
            self.parquet.clone(),
            ds_metrics.clone(),
            self.wal.clone(),
        )?;
        let mut datasets = self.datasets.write().unwrap_or_else(|e| e.into_inner());
        if datasets.contains_key(&dataset.id) {
            return Err(EncodeError::Duplicate(dataset.id.clone()));
        }
        datasets.insert(
            dataset.id.clone(),
            Arc::new(DatasetPipeline {
                limiter: Limiter::new(dataset.rate_limit),
                rejects: RejectLog::new(self.rejects_kept),
                metrics: ds_metrics,
                quality: QualityTracker::default(),
                dataset,
            }),
        );
        Ok(sink)
    }

    /// The write-ahead log every accepted batch goes to.
    pub fn wal(&self) -> &Wal {
        &self.wal
    }

    /// Publishes every acknowledged reading to `hub` from now on.
    pub fn set_feed(&self, hub: Arc<crate::feed::Hub>) {
        let _ = self.feed.set(hub);
    }

    pub fn dataset(&self, id: &str) -> Option<Arc<DatasetPipeline>> {
        self.datasets
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    /// Datasets sorted by id.
    pub fn datasets(&self) -> Vec<Arc<DatasetPipeline>> {
        let mut all: Vec<_> = self
            .datasets
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        all.sort_by(|a, b| a.dataset.id.cmp(&b.dataset.id));
        all
    }

    pub fn is_closing(&self) -> bool {
        self.closing.is_cancelled()
    }

    /// Forgets idle rate-limit state of every dataset (called periodically).
    pub fn forget_idle_limits(&self) {
        for ds in self.datasets() {
            ds.limiter.forget_idle();
        }
    }

    /// Runs one request through the pipeline for the device key `key`, already
    /// authorised for `ds`: [`prepare`](Self::prepare), [`admit`](Self::admit),
    /// [`deliver`](Self::deliver). Returns once the accepted readings are acknowledged.
    pub async fn ingest(
        &self,
        ds: &DatasetPipeline,
        key: &LimitKey,
        batch: Batch,
    ) -> Result<Outcome, IngestError> {
        let mut checked = self.prepare(ds, batch).await?;
        self.admit(ds, key, &checked)?;
        self.deliver(ds, key, &mut checked).await
    }

    /// Decode and validate. Large bodies are decoded on a blocking thread.
    pub async fn prepare(
        &self,
        ds: &DatasetPipeline,
        batch: Batch,
    ) -> Result<Checked, IngestError> {
        if self.is_closing() {
            return Err(IngestError::ShuttingDown);
        }
        let received_at = batch.received_at;
        // More than the burst can never be admitted, so decoding stops there.
        let max = self.max_readings.min(ds.dataset.rate_limit.burst as usize);
        let (accepted, rejected) = if batch.body.len() >= BLOCKING_DECODE_BYTES {
            let dataset = ds.dataset.clone();
            tokio::task::spawn_blocking(move || check(&dataset, &batch, max))
                .await
                .map_err(|e| IngestError::Internal(format!("decode task failed: {e}")))??
        } else {
            check(&ds.dataset, &batch, max)?
        };
        if accepted.is_empty() && rejected.is_empty() {
            return Err(IngestError::NoReadings);
        }
        Ok(Checked {
            accepted,
            rejected,
            received_at,
        })
    }

    /// Takes the request's readings, accepted and rejected alike, from the key's allowance,
    /// all or nothing: a reject costs its provider's reject log and metrics as much as a
    /// reading costs storage, so a device cannot flood either for free. A refusal costs
    /// nothing; the caller may wait and try again (MQTT 3.1.1 does).
    pub fn admit(
        &self,
        ds: &DatasetPipeline,
        key: &LimitKey,
        checked: &Checked,
    ) -> Result<(), IngestError> {
        let n = checked.accepted.len() + checked.rejected.len();
        ds.limiter.check(key, n).map_err(|e| {
            if matches!(e, LimitError::Exceeded { .. }) {
                ds.metrics.limited.inc();
            }
            IngestError::from(e)
        })
    }

    /// Appends the accepted readings to the write-ahead log (returns once the record is
    /// durable: the acknowledgement) and records the rejects in the dataset's log and
    /// metrics. After a refusal `checked` is intact, so a caller may try again; once
    /// delivered, its accepted readings have gone on to the live feeds.
    pub async fn deliver(
        &self,
        ds: &DatasetPipeline,
        key: &LimitKey,
        checked: &mut Checked,
    ) -> Result<Outcome, IngestError> {
        let count = checked.accepted.len();
        if count > 0 {
            if self.is_closing() {
                return Err(IngestError::ShuttingDown);
            }
            let frame = wal::record::encode(&ds.dataset, &checked.accepted, now_micros());
            // The append runs to its end in a task of its own, so that a caller who goes away
            // (a client closing its connection) cannot leave a record in the log that the
            // accepted counter missed.
            let (wal, accepted) = (self.wal.clone(), ds.metrics.accepted.clone());
            let appended = tokio::spawn(async move {
                let appended = wal.append(frame).await;
                if appended.is_ok() {
                    accepted.inc_by(count as u64);
                }
                appended
            })
            .await
            .map_err(|e| IngestError::Internal(format!("the log append task failed: {e}")))?;
            appended.map_err(|e| match e {
                WalError::Full { .. } => IngestError::StorageFull(e.to_string()),
                WalError::QueueFull(wait) => IngestError::QueueFull(wait),
                WalError::Closed => IngestError::ShuttingDown,
                WalError::Io(_) | WalError::Corrupt { .. } => IngestError::Storage(e.to_string()),
            })?;
            ds.quality.accepted(&checked.accepted, checked.received_at);
            // Acknowledged: the live feeds take the readings (the caller needs them no more).
            if let Some(hub) = self.feed.get() {
                hub.publish(&ds.dataset, std::mem::take(&mut checked.accepted));
            }
        }
        self.record_rejects(ds, key, checked.received_at, &checked.rejected);
        Ok(Outcome {
            accepted: count,
            rejected: std::mem::take(&mut checked.rejected),
        })
    }

    /// Counts rejects and keeps them in the dataset's log for its provider.
    pub fn record_rejects(
        &self,
        ds: &DatasetPipeline,
        key: &LimitKey,
        at: Micros,
        rejected: &[Rejected],
    ) {
        for r in rejected {
            ds.metrics.rejected(r.reason).inc();
        }
        if !rejected.is_empty() {
            ds.quality.rejected(rejected.len(), at);
            // Only the newest `rejects_kept` would survive: copy no more than those.
            let skip = rejected.len().saturating_sub(self.rejects_kept);
            ds.rejects
                .record(rejected[skip..].iter().map(|r| RejectRecord {
                    at,
                    key_id: key.to_string(),
                    sensor_id: r.sensor_id.clone(),
                    index: r.index,
                    reason: r.reason,
                    message: r.message.clone(),
                }));
        }
    }
}

/// Decode and validate: the pure part of the pipeline, in one pass over the body. Returns
/// the accepted readings and the rejects, at most `max` of them together: a body holding
/// more is refused as a whole ([`IngestError::TooManyReadings`]) as soon as that is seen.
pub fn check(
    ds: &Dataset,
    batch: &Batch,
    max: usize,
) -> Result<(Vec<Reading>, Vec<Rejected>), IngestError> {
    let ctx = DecodeCtx {
        received_at: batch.received_at,
        precision: batch
            .precision
            .unwrap_or_else(|| batch.format.default_precision()),
        default_sensor: batch.sensor.clone(),
    };
    let mut checked = Validating {
        ds,
        now: batch.received_at,
        accepted: Vec::new(),
        rejected: Vec::new(),
        max,
    };
    let decoded = decode::decode(batch.format, &batch.body, ds, &ctx, &mut checked);
    // Past the cap the decoder stopped wherever it was; its verdict on the rest is moot.
    if checked.full() {
        return Err(IngestError::TooManyReadings { max });
    }
    decoded?;
    Ok((checked.accepted, checked.rejected))
}

/// Validates each reading as the decoder completes it, while it is still hot in cache.
struct Validating<'d> {
    ds: &'d Dataset,
    now: Micros,
    accepted: Vec<Reading>,
    rejected: Vec<Rejected>,
    /// Readings (accepted or rejected) a body may hold.
    max: usize,
}

impl Collect for Validating<'_> {
    fn full(&self) -> bool {
        // Asked between readings, when `accepted` holds finished ones only.
        self.accepted.len() + self.rejected.len() > self.max
    }

    fn readings(&mut self) -> &mut Vec<Reading> {
        &mut self.accepted
    }

    fn accept_last(&mut self, index: u32) {
        let Some(last) = self.accepted.last() else {
            return;
        };
        if let Err(problem) = validate::validate(last, self.ds, self.now) {
            let partial = self.accepted.pop();
            self.reject(index, problem, partial);
        }
    }

    fn reject(&mut self, index: u32, problem: Reject, partial: Option<Reading>) {
        self.rejected.push(Rejected {
            index,
            reason: problem.reason,
            message: problem.message,
            sensor_id: partial
                .map(|r| r.sensor_id.to_string())
                .filter(|s| !s.is_empty()),
        });
    }
}
