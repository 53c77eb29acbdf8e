//! A device's PUBLISH, from the packet to its acknowledgement: the dataset its topic names,
//! the key's right to write there, the pipeline's verdict (`settle`), then PUBACK / PUBREC
//! in the order the publishes came.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use compact_str::CompactString;
use rumqttd::protocol::{
    DisconnectReasonCode, Packet, PubAck, PubAckProperties, PubAckReason, PubRec, PubRecProperties,
    PubRecReason, Publish, PublishProperties,
};

use super::{Session, Violation, settle, violation};
use crate::model::now_micros;
use crate::mqtt::topic;
use crate::mqtt::wire::{PublishHeader, Version};
use crate::pipeline::Batch;
use crate::registry::DatasetEntry;

/// Why a publish is refused (MQTT 5 reason codes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Refusal {
    NotAuthorized,
    TopicInvalid,
    QuotaExceeded,
    PayloadInvalid,
    Unspecified,
}

impl Refusal {
    fn puback(self) -> PubAckReason {
        match self {
            Refusal::NotAuthorized => PubAckReason::NotAuthorized,
            Refusal::TopicInvalid => PubAckReason::TopicNameInvalid,
            Refusal::QuotaExceeded => PubAckReason::QuotaExceeded,
            Refusal::PayloadInvalid => PubAckReason::PayloadFormatInvalid,
            Refusal::Unspecified => PubAckReason::UnspecifiedError,
        }
    }

    fn pubrec(self) -> PubRecReason {
        match self {
            Refusal::NotAuthorized => PubRecReason::NotAuthorized,
            Refusal::TopicInvalid => PubRecReason::TopicNameInvalid,
            Refusal::QuotaExceeded => PubRecReason::QuotaExceeded,
            Refusal::PayloadInvalid => PubRecReason::PayloadFormatInvalid,
            Refusal::Unspecified => PubRecReason::UnspecifiedError,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Refusal::NotAuthorized => "not_authorized",
            Refusal::TopicInvalid => "topic_invalid",
            Refusal::QuotaExceeded => "quota_exceeded",
            Refusal::PayloadInvalid => "payload_invalid",
            Refusal::Unspecified => "error",
        }
    }
}

/// What became of a publish, as the acknowledgement will say.
#[derive(Debug)]
pub(super) enum Verdict {
    /// Every reading kept (or, on MQTT 3.1.1, the invalid ones recorded as rejects).
    Accepted,
    /// Some readings kept, some rejected: acknowledged with a reason string naming them.
    Partial(String),
    /// Nothing kept: refused with a reason code (MQTT 5 only).
    Refused(Refusal, String),
    /// A QoS 0 publish not kept (no acknowledgement exists to refuse it with).
    Dropped(&'static str),
    /// Cannot be acknowledged and must not be dropped silently: close the connection.
    Abandon(&'static str),
}

/// An acknowledgement waiting for its turn.
pub(super) enum Ack {
    Settled {
        pkid: u16,
        qos: u8,
        verdict: Verdict,
    },
    /// A QoS 2 publish already received: PUBREC again with the first one's answer.
    Repeat { pkid: u16 },
}

pub(super) type Pending = Pin<Box<dyn Future<Output = Ack> + Send>>;

impl Session {
    pub(super) fn on_publish(
        &mut self,
        publish: Publish,
        props: Option<PublishProperties>,
        header: PublishHeader,
    ) -> Result<(), Violation> {
        if header.retain {
            return Err(violation(
                DisconnectReasonCode::RetainNotSupported,
                "retain_not_supported",
            ));
        }
        if topic::malformed(&publish.topic).is_some() {
            return Err(violation(
                DisconnectReasonCode::TopicNameInvalid,
                "malformed_topic",
            ));
        }
        if props.as_ref().is_some_and(|p| p.topic_alias.is_some()) {
            return Err(violation(
                DisconnectReasonCode::TopicAliasInvalid,
                "topic_alias",
            ));
        }
        let PublishHeader { qos, pkid, .. } = header;
        if qos == 2 && self.qos2.contains_key(&pkid) {
            self.push(Box::pin(std::future::ready(Ack::Repeat { pkid })));
            return Ok(());
        }
        let verdict = match self.target(&publish) {
            Ok((ds, sensor)) => {
                let body = publish.payload;
                let content_type = props.as_ref().and_then(|p| p.content_type.as_deref());
                let batch = Batch {
                    format: topic::format_of(&body, content_type, sensor.is_some()),
                    body,
                    precision: None,
                    received_at: now_micros(),
                    sensor,
                };
                if qos == 2 {
                    self.qos2.insert(pkid, None);
                }
                let settle = settle(
                    self.shared.clone(),
                    ds,
                    self.key.id.clone(),
                    batch,
                    self.version,
                    qos,
                );
                self.push(Box::pin(async move {
                    Ack::Settled {
                        pkid,
                        qos,
                        verdict: settle.await,
                    }
                }));
                return Ok(());
            }
            Err(verdict) => verdict,
        };
        self.push(Box::pin(std::future::ready(Ack::Settled {
            pkid,
            qos,
            verdict,
        })));
        Ok(())
    }

    /// The dataset a publish may go to (and the sensor its topic names), or the verdict
    /// refusing it.
    fn target(
        &self,
        publish: &Publish,
    ) -> Result<(Arc<DatasetEntry>, Option<CompactString>), Verdict> {
        let refuse = |refusal: Refusal, message: String| match self.version {
            Version::V5 => Verdict::Refused(refusal, message),
            // 3.1.1 cannot say no: close rather than acknowledge what will not be kept.
            Version::V4 => Verdict::Abandon(refusal.label()),
        };
        let text = std::str::from_utf8(&publish.topic).unwrap_or_default();
        let route = topic::route(text).map_err(|m| refuse(Refusal::TopicInvalid, m))?;
        let ds = self
            .shared
            .pipeline
            .registry()
            .get(route.dataset)
            .ok_or_else(|| {
                refuse(
                    Refusal::TopicInvalid,
                    format!("no dataset `{}`", route.dataset),
                )
            })?;
        if !self.key.may_write(route.dataset) {
            if crate::telemetry::refusal_log_allowed() {
                tracing::warn!(key = %self.key.id, topic = crate::telemetry::log_text(text), "mqtt publish to a dataset the key may not write");
            }
            return Err(refuse(
                Refusal::NotAuthorized,
                format!(
                    "key {} may not write to dataset `{}`",
                    self.key.id, route.dataset
                ),
            ));
        }
        Ok((ds.clone(), route.sensor.map(CompactString::new)))
    }

    fn push(&mut self, pending: Pending) {
        self.shared.metrics.inflight().inc();
        self.inflight.push_back(pending);
    }

    /// Writes the acknowledgement of a settled publish; `Err` closes the connection.
    pub(super) fn write_ack(&mut self, ack: Ack) -> Result<(), &'static str> {
        let (pkid, qos, verdict) = match ack {
            Ack::Repeat { pkid } => {
                let reason = self
                    .qos2
                    .get(&pkid)
                    .copied()
                    .flatten()
                    .unwrap_or(PubRecReason::Success);
                self.send(Packet::PubRec(PubRec { pkid, reason }, None));
                return Ok(());
            }
            Ack::Settled { pkid, qos, verdict } => (pkid, qos, verdict),
        };
        let metrics = &self.shared.metrics;
        let (refusal, message) = match verdict {
            Verdict::Accepted => {
                metrics.publish("accepted");
                (None, None)
            }
            Verdict::Partial(summary) => {
                metrics.publish("partial");
                (None, Some(summary))
            }
            Verdict::Refused(refusal, message) => {
                metrics.publish(refusal.label());
                (Some(refusal), Some(message))
            }
            Verdict::Dropped(why) => {
                metrics.publish(why);
                return Ok(());
            }
            Verdict::Abandon(why) => {
                metrics.publish(why);
                if qos == 2 {
                    self.qos2.remove(&pkid);
                }
                return Err(why);
            }
        };
        let v5 = self.version == Version::V5;
        let reason_string = message.filter(|_| v5).map(|m| truncate_reason(&m));
        match qos {
            0 => {}
            1 => {
                let reason = refusal.map_or(PubAckReason::Success, Refusal::puback);
                let props = reason_string.map(|reason_string| PubAckProperties {
                    reason_string: Some(reason_string),
                    user_properties: Vec::new(),
                });
                self.send(Packet::PubAck(PubAck { pkid, reason }, props));
            }
            _ => {
                let reason = refusal.map_or(PubRecReason::Success, Refusal::pubrec);
                if refusal.is_none() {
                    self.qos2.insert(pkid, Some(reason));
                } else {
                    // A refused QoS 2 publish ends here (no PUBREL follows).
                    self.qos2.remove(&pkid);
                }
                let props = reason_string.map(|reason_string| PubRecProperties {
                    reason_string: Some(reason_string),
                    user_properties: Vec::new(),
                });
                self.send(Packet::PubRec(PubRec { pkid, reason }, props));
            }
        }
        Ok(())
    }
}

/// Reason strings stay short: they travel in every acknowledgement.
fn truncate_reason(message: &str) -> String {
    crate::pipeline::decode::truncate(message, 512).to_string()
}
