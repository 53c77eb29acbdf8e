//! Settling a publish: the pipeline's verdict on it, as the acknowledgement will say it for
//! the connection's protocol version and QoS (MQTT 5 reason codes; 3.1.1 waits or closes).

use std::sync::Arc;
use std::time::Duration;

use super::{Refusal, Verdict};
use crate::mqtt::Shared;
use crate::mqtt::wire::Version;
use crate::pipeline::limit::{LimitError, LimitKey, retry_after_secs};
use crate::pipeline::reject::{Reason, Rejected};
use crate::pipeline::{Batch, IngestError};
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
    let pipeline = &shared.pipeline;
    let received_at = batch.received_at;
    let mut checked = match pipeline.prepare(&ds, batch).await {
        Ok(checked) => checked,
        Err(e @ (IngestError::Malformed(_) | IngestError::NoReadings)) => {
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
            pipeline.record_rejects(&ds, &key, received_at, &[reject]);
            return Verdict::Accepted;
        }
        Err(IngestError::ShuttingDown) => return Verdict::Abandon("server_shutdown"),
        // Nothing kept; the device must send less per publish.
        Err(e @ IngestError::TooManyReadings { .. }) => {
            return match (version, qos) {
                (_, 0) => Verdict::Dropped("dropped_too_many_readings"),
                (Version::V5, _) => Verdict::Refused(Refusal::QuotaExceeded, e.to_string()),
                (Version::V4, _) => Verdict::Abandon("too_many_readings"),
            };
        }
        Err(e) => {
            tracing::error!(error = %e, "mqtt publish failed in the pipeline");
            return match version {
                Version::V5 => Verdict::Refused(Refusal::Unspecified, "internal error".into()),
                Version::V4 => Verdict::Abandon("error"),
            };
        }
    };
    loop {
        match pipeline.admit(&ds, &key, &checked) {
            Ok(()) => break,
            Err(IngestError::RateLimited(LimitError::Exceeded { retry_after })) => {
                match (version, qos) {
                    (_, 0) => return Verdict::Dropped("dropped_rate_limited"),
                    (Version::V5, _) => {
                        return Verdict::Refused(
                            Refusal::QuotaExceeded,
                            format!(
                                "rate limit exceeded; retry in {} s",
                                retry_after_secs(retry_after)
                            ),
                        );
                    }
                    // 3.1.1: the acknowledgement waits until the limit allows.
                    (Version::V4, _) => tokio::select! {
                        _ = tokio::time::sleep(retry_after) => {}
                        _ = shared.closing.cancelled() => return Verdict::Abandon("server_shutdown"),
                    },
                }
            }
            Err(e) => {
                return match version {
                    Version::V5 if qos > 0 => {
                        Verdict::Refused(Refusal::QuotaExceeded, e.to_string())
                    }
                    _ if qos == 0 => Verdict::Dropped("dropped_batch_too_large"),
                    _ => Verdict::Abandon("batch_exceeds_burst"),
                };
            }
        }
    }
    let total = checked.accepted.len() + checked.rejected.len();
    loop {
        let refused = match pipeline.deliver(&ds, &key, &mut checked).await {
            Ok(outcome) if outcome.rejected.is_empty() => return Verdict::Accepted,
            // The rejects are on record; 3.1.1 has no way to say more.
            Ok(_) if version == Version::V4 => return Verdict::Accepted,
            Ok(outcome) if outcome.accepted == 0 => {
                return Verdict::Refused(
                    Refusal::PayloadInvalid,
                    summarize(&outcome.rejected, total),
                );
            }
            Ok(outcome) => return Verdict::Partial(summarize(&outcome.rejected, total)),
            Err(IngestError::ShuttingDown) => return Verdict::Abandon("server_shutdown"),
            Err(e) => e,
        };
        // Full storage or queue: the readings were not stored.
        let (retryable, label) = match &refused {
            IngestError::StorageFull(_) => (true, "storage_full"),
            IngestError::QueueFull(_) => (true, "queue_full"),
            _ => (false, "storage_error"),
        };
        match (version, qos) {
            (_, 0) => {
                return Verdict::Dropped(if retryable {
                    "dropped_busy"
                } else {
                    "dropped_error"
                });
            }
            (Version::V5, _) if retryable => {
                return Verdict::Refused(
                    Refusal::QuotaExceeded,
                    format!("{refused}; retry shortly"),
                );
            }
            (Version::V5, _) => return Verdict::Refused(Refusal::Unspecified, refused.to_string()),
            // 3.1.1: the acknowledgement waits until there is room.
            (Version::V4, _) if retryable => tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shared.closing.cancelled() => return Verdict::Abandon("server_shutdown"),
            },
            (Version::V4, _) => return Verdict::Abandon(label),
        }
    }
}
