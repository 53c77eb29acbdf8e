//! Settling a publish: the pipeline's verdict on it, as the acknowledgement will say it for
//! the connection's protocol version and QoS (MQTT 5 reason codes; 3.1.1 waits or closes).

use std::sync::Arc;
use std::time::Duration;

use super::{Refusal, Verdict};
use crate::model::Micros;
use crate::mqtt::Shared;
use crate::mqtt::wire::Version;
use crate::pipeline::limit::{LimitError, LimitKey, retry_after_secs};
use crate::pipeline::reject::{Reason, Rejected};
use crate::pipeline::{Batch, Checked, IngestError, Outcome};
use crate::registry::DatasetEntry;

/// "2 of 5 readings rejected: #1 above_max (field `x` is 999…); #3 …" (the first few).
fn summarize(rejected: &[Rejected], total: usize) -> String {
    let mut text = format!("{} of {total} readings rejected", rejected.len());
    for (i, r) in rejected.iter().take(3).enumerate() {
        text.push_str(if i == 0 { ": " } else { "; " });
        text.push_str(&format!("#{} {} ({})", r.index, r.reason.code(), r.message));
    }
    text
}

/// Runs a publish through the pipeline and decides its acknowledgement.
pub(super) async fn settle(
    shared: Arc<Shared>,
    ds: Arc<DatasetEntry>,
    key: LimitKey,
    batch: Batch,
    version: Version,
    qos: u8,
) -> Verdict {
    let received_at = batch.received_at;
    match shared.pipeline.prepare(&ds, batch).await {
        Ok(checked) => settle_checked(shared, ds, key, checked, None, version, qos).await,
        Err(e) => unprepared(&shared, &ds, &key, received_at, e, version, qos),
    }
}

/// The verdict on a publish the pipeline could not decode (or take at all).
pub(super) fn unprepared(
    shared: &Shared,
    ds: &DatasetEntry,
    key: &LimitKey,
    received_at: Micros,
    e: IngestError,
    version: Version,
    qos: u8,
) -> Verdict {
    match e {
        e @ (IngestError::Malformed(_) | IngestError::NoReadings) => {
            if version == Version::V5 {
                return Verdict::Refused(Refusal::PayloadInvalid, e.to_string());
            }
            // 3.1.1: acknowledged, and on record for the provider.
            let reject = Rejected {
                index: 0,
                reason: Reason::Malformed,
                message: e.to_string(),
                sensor_id: None,
            };
            shared
                .pipeline
                .record_rejects(ds, key, received_at, &[reject]);
            Verdict::Accepted
        }
        IngestError::ShuttingDown => Verdict::Abandon("server_shutdown"),
        // Nothing kept; the device must send less per publish.
        e @ IngestError::TooManyReadings { .. } => match (version, qos) {
            (_, 0) => Verdict::Dropped("dropped_too_many_readings"),
            (Version::V5, _) => Verdict::Refused(Refusal::QuotaExceeded, e.to_string()),
            (Version::V4, _) => Verdict::Abandon("too_many_readings"),
        },
        e => {
            tracing::error!(error = %e, "mqtt publish failed in the pipeline");
            match version {
                Version::V5 => Verdict::Refused(Refusal::Unspecified, "internal error".into()),
                Version::V4 => Verdict::Abandon("error"),
            }
        }
    }
}

/// The verdict on a publish the rate limit did not admit, or `None` when its
/// acknowledgement waits for the limit (MQTT 3.1.1, which cannot say no).
pub(super) fn unadmitted(e: &IngestError, version: Version, qos: u8) -> Option<Verdict> {
    Some(match e {
        IngestError::RateLimited(LimitError::Exceeded { retry_after }) => match (version, qos) {
            (_, 0) => Verdict::Dropped("dropped_rate_limited"),
            (Version::V5, _) => Verdict::Refused(
                Refusal::QuotaExceeded,
                format!(
                    "rate limit exceeded; retry in {} s",
                    retry_after_secs(*retry_after)
                ),
            ),
            (Version::V4, _) => return None,
        },
        e => match version {
            Version::V5 if qos > 0 => Verdict::Refused(Refusal::QuotaExceeded, e.to_string()),
            _ if qos == 0 => Verdict::Dropped("dropped_batch_too_large"),
            _ => Verdict::Abandon("batch_exceeds_burst"),
        },
    })
}

/// Admits a decoded publish (waiting for the limit on MQTT 3.1.1) and delivers it.
/// `refused`: the limit's answer already had, which is not asked for again (each refusal
/// counts in the dataset's metrics).
pub(super) async fn settle_checked(
    shared: Arc<Shared>,
    ds: Arc<DatasetEntry>,
    key: LimitKey,
    checked: Checked,
    mut refused: Option<IngestError>,
    version: Version,
    qos: u8,
) -> Verdict {
    let pipeline = &shared.pipeline;
    loop {
        let e = match refused.take() {
            Some(e) => e,
            None => match pipeline.admit(&ds, &key, &checked) {
                Ok(()) => break,
                Err(e) => e,
            },
        };
        if let Some(verdict) = unadmitted(&e, version, qos) {
            return verdict;
        }
        let wait = match e {
            IngestError::RateLimited(LimitError::Exceeded { retry_after }) => retry_after,
            _ => Duration::ZERO,
        };
        // 3.1.1: the acknowledgement waits until the limit allows.
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shared.closing.cancelled() => return Verdict::Abandon("server_shutdown"),
        }
    }
    let mut parts = vec![checked];
    deliver(&shared, &ds, &key, &mut parts, &[qos], version)
        .await
        .pop()
        .unwrap_or(Verdict::Abandon("error"))
}

/// Delivers admitted publishes of one dataset together (one log record), and returns each
/// one's verdict in order. `qos` holds each publish's QoS.
pub(super) async fn deliver(
    shared: &Shared,
    ds: &DatasetEntry,
    key: &LimitKey,
    parts: &mut [Checked],
    qos: &[u8],
    version: Version,
) -> Vec<Verdict> {
    let totals: Vec<usize> = parts
        .iter()
        .map(|c| c.accepted.len() + c.rejected.len())
        .collect();
    loop {
        let refused = match shared.pipeline.deliver_all(ds, key, parts).await {
            Ok(outcomes) => {
                return outcomes
                    .into_iter()
                    .zip(totals)
                    .map(|(outcome, total)| delivered(outcome, total, version))
                    .collect();
            }
            Err(IngestError::ShuttingDown) => {
                return qos
                    .iter()
                    .map(|_| Verdict::Abandon("server_shutdown"))
                    .collect();
            }
            Err(e) => e,
        };
        // Full storage or queue: the readings were not stored.
        let retryable = matches!(
            refused,
            IngestError::StorageFull(_) | IngestError::QueueFull(_)
        );
        if version == Version::V4 && retryable && qos.iter().any(|&q| q > 0) {
            // 3.1.1: the acknowledgements wait until there is room.
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                _ = shared.closing.cancelled() => {
                    return qos.iter().map(|_| Verdict::Abandon("server_shutdown")).collect();
                }
            }
        }
        return qos
            .iter()
            .map(|&q| undelivered(&refused, retryable, version, q))
            .collect();
    }
}

/// The verdict on a delivered publish: its rejects, if any, said as the version can.
fn delivered(outcome: Outcome, total: usize, version: Version) -> Verdict {
    if outcome.rejected.is_empty() || version == Version::V4 {
        // On 3.1.1 the rejects are on record; it has no way to say more.
        Verdict::Accepted
    } else if outcome.accepted == 0 {
        Verdict::Refused(Refusal::PayloadInvalid, summarize(&outcome.rejected, total))
    } else {
        Verdict::Partial(summarize(&outcome.rejected, total))
    }
}

/// The verdict on a publish the log refused. (On 3.1.1 a retryable refusal of a QoS > 0
/// publish is not one: its acknowledgement waits.)
fn undelivered(refused: &IngestError, retryable: bool, version: Version, qos: u8) -> Verdict {
    match (version, qos) {
        (_, 0) if retryable => Verdict::Dropped("dropped_busy"),
        (_, 0) => Verdict::Dropped("dropped_error"),
        (Version::V5, _) if retryable => {
            Verdict::Refused(Refusal::QuotaExceeded, format!("{refused}; retry shortly"))
        }
        (Version::V5, _) => Verdict::Refused(Refusal::Unspecified, refused.to_string()),
        (Version::V4, _) => Verdict::Abandon("storage_error"),
    }
}
