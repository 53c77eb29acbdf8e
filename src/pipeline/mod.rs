//! The pipeline: bytes in, acknowledged readings out. `decode → validate → limit → deliver`.
//!
//! The first three stages are pure functions chained in the caller's task (an HTTP handler or
//! an MQTT session): no channel, no actor. `deliver` appends the accepted readings to the
//! write-ahead log and returns once the fsync covering them is done; only then does the
//! caller answer the device, and the readings go on to the live feeds' hub. Overload at the
//! log blocks for at most `pipeline.queue_timeout`, then the request is refused
//! (`QueueFull` → 503): never acknowledged and dropped. The datasets are the
//! [`Registry`]'s; the pipeline keeps only their rate limiters.

pub mod decode;
pub(crate) mod limit;
pub mod reject;
pub mod validate;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use compact_str::CompactString;

use tokio_util::sync::CancellationToken;

use crate::config::PipelineConfig;
use crate::feed::Hub;
use crate::model::now_micros;
use crate::model::{Dataset, Micros, Reading};
use crate::registry::rejects::RejectRecord;
use crate::registry::{DatasetEntry, Registry};
use crate::wal::{self, Wal, WalError};
use decode::{Collect, DecodeCtx, DecodeError, Format, Precision};
use limit::{LimitError, LimitKey, Limiter};
use reject::{Reject, Rejected};

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

/// The pipeline of every dataset in the [`Registry`], appending to the write-ahead log and
/// handing acknowledged readings to the live feeds' [`Hub`].
#[derive(Debug)]
pub struct Pipeline {
    registry: Arc<Registry>,
    wal: Wal,
    hub: Arc<Hub>,
    closing: CancellationToken,
    max_readings: usize,
    /// Each dataset's rate limiter, made at its first request.
    limiters: RwLock<HashMap<String, Arc<Limiter>>>,
}

impl Pipeline {
    pub fn new(
        config: &PipelineConfig,
        registry: Arc<Registry>,
        wal: Wal,
        hub: Arc<Hub>,
        closing: CancellationToken,
    ) -> Pipeline {
        Pipeline {
            registry,
            wal,
            hub,
            closing,
            max_readings: config.max_readings,
            limiters: RwLock::new(HashMap::new()),
        }
    }

    /// The datasets this pipeline takes readings for.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The write-ahead log every accepted batch goes to.
    pub fn wal(&self) -> &Wal {
        &self.wal
    }

    pub fn is_closing(&self) -> bool {
        self.closing.is_cancelled()
    }

    fn limiter(&self, ds: &Dataset) -> Arc<Limiter> {
        if let Some(limiter) = self
            .limiters
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&ds.id)
        {
            return limiter.clone();
        }
        self.limiters
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(ds.id.clone())
            .or_insert_with(|| Arc::new(Limiter::new(ds.rate_limit)))
            .clone()
    }

    /// Forgets idle rate-limit state of every dataset (called periodically).
    pub fn forget_idle_limits(&self) {
        let limiters: Vec<Arc<Limiter>> = self
            .limiters
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for limiter in limiters {
            limiter.forget_idle();
        }
    }

    /// Runs one request through the pipeline for the device key `key`, already
    /// authorised for `ds`: [`prepare`](Self::prepare), [`admit`](Self::admit),
    /// [`deliver`](Self::deliver). Returns once the accepted readings are acknowledged.
    pub async fn ingest(
        &self,
        ds: &DatasetEntry,
        key: &LimitKey,
        batch: Batch,
    ) -> Result<Outcome, IngestError> {
        let mut checked = self.prepare(ds, batch).await?;
        self.admit(ds, key, &checked)?;
        self.deliver(ds, key, &mut checked).await
    }

    /// Decode and validate. Large bodies are decoded on a blocking thread.
    pub async fn prepare(&self, ds: &DatasetEntry, batch: Batch) -> Result<Checked, IngestError> {
        if batch.body.len() < BLOCKING_DECODE_BYTES {
            return self.prepare_now(ds, batch);
        }
        if self.is_closing() {
            return Err(IngestError::ShuttingDown);
        }
        let received_at = batch.received_at;
        let max = self.max_readings(ds);
        let dataset = ds.dataset.clone();
        let (accepted, rejected) =
            tokio::task::spawn_blocking(move || check(&dataset, &batch, max))
                .await
                .map_err(|e| IngestError::Internal(format!("decode task failed: {e}")))??;
        checked(accepted, rejected, received_at)
    }

    /// [`prepare`](Self::prepare) in the caller's task, whatever the body's size: for
    /// bodies below [`BLOCKING_DECODE_BYTES`] (an MQTT publish, mostly).
    pub fn prepare_now(&self, ds: &DatasetEntry, batch: Batch) -> Result<Checked, IngestError> {
        if self.is_closing() {
            return Err(IngestError::ShuttingDown);
        }
        let (accepted, rejected) = check(&ds.dataset, &batch, self.max_readings(ds))?;
        checked(accepted, rejected, batch.received_at)
    }

    /// More than the burst can never be admitted, so decoding stops there.
    fn max_readings(&self, ds: &DatasetEntry) -> usize {
        self.max_readings.min(ds.dataset.rate_limit.burst as usize)
    }

    /// Takes the request's readings, accepted and rejected alike, from the key's allowance,
    /// all or nothing: a reject costs its provider's reject log and metrics as much as a
    /// reading costs storage, so a device cannot flood either for free. A refusal costs
    /// nothing; the caller may wait and try again (MQTT 3.1.1 does).
    pub fn admit(
        &self,
        ds: &DatasetEntry,
        key: &LimitKey,
        checked: &Checked,
    ) -> Result<(), IngestError> {
        let n = checked.accepted.len() + checked.rejected.len();
        self.limiter(&ds.dataset).check(key, n).map_err(|e| {
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
        ds: &DatasetEntry,
        key: &LimitKey,
        checked: &mut Checked,
    ) -> Result<Outcome, IngestError> {
        let mut outcomes = self
            .deliver_all(ds, key, std::slice::from_mut(checked))
            .await?;
        Ok(outcomes.pop().unwrap_or_default())
    }

    /// [`deliver`](Self::deliver) for batches that arrived together (an MQTT connection's
    /// publishes read in one turn): their accepted readings go to the log as one record and
    /// to the live feeds as one batch, so the cost of a record is paid once for all of them.
    /// Each batch gets its own outcome, in order. After a refusal every batch is intact.
    pub async fn deliver_all(
        &self,
        ds: &DatasetEntry,
        key: &LimitKey,
        parts: &mut [Checked],
    ) -> Result<Vec<Outcome>, IngestError> {
        let counts: Vec<usize> = parts.iter().map(|c| c.accepted.len()).collect();
        let total: usize = counts.iter().sum();
        if total > 0 {
            if self.is_closing() {
                return Err(IngestError::ShuttingDown);
            }
            let readings = if let [only] = parts {
                std::mem::take(&mut only.accepted)
            } else {
                let mut all = Vec::with_capacity(total);
                for part in parts.iter_mut() {
                    all.append(&mut part.accepted);
                }
                all
            };
            let received_at = parts.first().map_or(0, |c| c.received_at);
            if let Err((e, mut readings)) = self.append(ds, readings, received_at).await {
                // Nothing kept: each batch takes its readings back, for another try.
                for (part, n) in parts.iter_mut().zip(&counts).rev() {
                    part.accepted = readings.split_off(readings.len() - n);
                }
                return Err(e);
            }
        }
        Ok(parts
            .iter_mut()
            .zip(counts)
            .map(|(part, accepted)| {
                self.record_rejects(ds, key, part.received_at, &part.rejected);
                Outcome {
                    accepted,
                    rejected: std::mem::take(&mut part.rejected),
                }
            })
            .collect())
    }

    /// Appends readings to the log as one record and, once it is durable, hands them to the
    /// live feeds. A refusal gives the readings back.
    async fn append(
        &self,
        ds: &DatasetEntry,
        readings: Vec<Reading>,
        received_at: Micros,
    ) -> Result<(), (IngestError, Vec<Reading>)> {
        let appended_at = now_micros();
        let frame = wal::record::encode(&ds.dataset, &readings, appended_at);
        // Shared from here on: the log's consumers that keep up and the live feeds take
        // these readings as they are.
        let readings = Arc::new(readings);
        let decoded = wal::Decoded {
            appended_at,
            accepted: ds.metrics.accepted.clone(),
            dataset: ds.dataset.clone(),
            bytes: readings.iter().map(Reading::approx_size).sum(),
            readings: readings.clone(),
        };
        // The log's writer counts the readings accepted when it commits the record, so a
        // caller who goes away meanwhile (a client closing its connection) cannot leave a
        // record in the log that the counter missed.
        if let Err(e) = self.wal.append_decoded(frame, decoded).await {
            let e = match e {
                WalError::Full { .. } => IngestError::StorageFull(e.to_string()),
                WalError::QueueFull(wait) => IngestError::QueueFull(wait),
                WalError::Closed => IngestError::ShuttingDown,
                WalError::Io(_) | WalError::Corrupt { .. } => IngestError::Storage(e.to_string()),
            };
            return Err((e, Arc::unwrap_or_clone(readings)));
        }
        ds.quality.accepted(&readings, received_at);
        // Acknowledged: the live feeds take the readings.
        self.hub.publish(&ds.dataset, readings);
        Ok(())
    }

    /// Counts rejects and keeps them in the dataset's log for its provider.
    pub fn record_rejects(
        &self,
        ds: &DatasetEntry,
        key: &LimitKey,
        at: Micros,
        rejected: &[Rejected],
    ) {
        for r in rejected {
            ds.metrics.rejected(r.reason).inc();
        }
        if !rejected.is_empty() {
            ds.quality.rejected(rejected.iter().map(|r| r.reason), at);
            // Only the newest `rejects_kept` would survive: copy no more than those.
            let skip = rejected.len().saturating_sub(ds.rejects.capacity());
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

/// A decoded body as the pipeline's later stages take it; one without readings is refused.
fn checked(
    accepted: Vec<Reading>,
    rejected: Vec<Rejected>,
    received_at: Micros,
) -> Result<Checked, IngestError> {
    if accepted.is_empty() && rejected.is_empty() {
        return Err(IngestError::NoReadings);
    }
    Ok(Checked {
        accepted,
        rejected,
        received_at,
    })
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
