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

use super::settle::{deliver, settle, settle_checked, unadmitted, unprepared};
use super::{Session, Violation, violation};
use crate::model::now_micros;
use crate::mqtt::Shared;
use crate::mqtt::topic;
use crate::mqtt::wire::{PublishHeader, Version};
use crate::pipeline::limit::LimitKey;
use crate::pipeline::{BLOCKING_DECODE_BYTES, Batch, Checked};
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

/// The acknowledgements of one publish, or of publishes that travel together, in order.
pub(super) type Pending = Pin<Box<dyn Future<Output = Vec<Ack>> + Send>>;

/// A publish decoded, validated and admitted in the read turn it arrived in, waiting for
/// the others of its turn: they go to the log together.
pub(super) struct Staged {
    pkid: u16,
    qos: u8,
    ds: Arc<DatasetEntry>,
    checked: Checked,
}

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
            self.push_now(Ack::Repeat { pkid });
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
                match self.stage(ds, batch, pkid, qos) {
                    Some(verdict) => verdict,
                    None => return Ok(()),
                }
            }
            Err(verdict) => verdict,
        };
        self.push_now(Ack::Settled { pkid, qos, verdict });
        Ok(())
    }

    /// Takes a publish as far as the pipeline goes without waiting: a small body is decoded,
    /// validated and admitted here and joins the turn's run ([`Session::send_run`]); a large
    /// one, or one whose acknowledgement must wait for the rate limit, settles on its own.
    /// Returns the verdict when it is already decided.
    fn stage(
        &mut self,
        ds: Arc<DatasetEntry>,
        batch: Batch,
        pkid: u16,
        qos: u8,
    ) -> Option<Verdict> {
        let (shared, key, version) = (&self.shared, &self.key.id, self.version);
        if batch.body.len() >= BLOCKING_DECODE_BYTES {
            let settle = settle(shared.clone(), ds, key.clone(), batch, version, qos);
            self.push_one(pkid, qos, settle);
            return None;
        }
        let received_at = batch.received_at;
        let checked = match shared.pipeline.prepare_now(&ds, batch) {
            Ok(checked) => checked,
            Err(e) => return Some(unprepared(shared, &ds, key, received_at, e, version, qos)),
        };
        match shared.pipeline.admit(&ds, key, &checked) {
            Ok(()) => {
                self.run.push(Staged {
                    pkid,
                    qos,
                    ds,
                    checked,
                });
                self.awaiting += 1;
                self.shared.metrics.inflight().inc();
                None
            }
            Err(e) => match unadmitted(&e, version, qos) {
                Some(verdict) => Some(verdict),
                None => {
                    let settle = settle_checked(
                        shared.clone(),
                        ds,
                        key.clone(),
                        checked,
                        Some(e),
                        version,
                        qos,
                    );
                    self.push_one(pkid, qos, settle);
                    None
                }
            },
        }
    }

    /// Sends the turn's run to the log, one record per dataset, as one pending group.
    pub(super) fn send_run(&mut self) {
        if self.run.is_empty() {
            return;
        }
        let run = std::mem::take(&mut self.run);
        let shared = self.shared.clone();
        let key = self.key.id.clone();
        let version = self.version;
        self.inflight.push_back(Box::pin(async move {
            settle_run(shared, key, version, run).await
        }));
    }

    /// Queues one publish's settling, after the run before it.
    fn push_one(
        &mut self,
        pkid: u16,
        qos: u8,
        settle: impl Future<Output = Verdict> + Send + 'static,
    ) {
        self.send_run();
        self.awaiting += 1;
        self.shared.metrics.inflight().inc();
        self.inflight.push_back(Box::pin(async move {
            vec![Ack::Settled {
                pkid,
                qos,
                verdict: settle.await,
            }]
        }));
    }

    /// Queues an acknowledgement already decided, after everything before it.
    fn push_now(&mut self, ack: Ack) {
        self.send_run();
        self.awaiting += 1;
        self.shared.metrics.inflight().inc();
        self.inflight
            .push_back(Box::pin(std::future::ready(vec![ack])));
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

    /// Writes the acknowledgements of settled publishes, in order; `Err` closes the
    /// connection.
    pub(super) fn write_acks(&mut self, acks: Vec<Ack>) -> Result<(), &'static str> {
        for ack in acks {
            self.awaiting -= 1;
            self.shared.metrics.inflight().dec();
            self.write_ack(ack)?;
        }
        Ok(())
    }

    /// Writes the acknowledgement of a settled publish; `Err` closes the connection.
    fn write_ack(&mut self, ack: Ack) -> Result<(), &'static str> {
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

/// One dataset's publishes of a run, and where each stands in the run.
struct Group {
    ds: Arc<DatasetEntry>,
    parts: Vec<Checked>,
    qos: Vec<u8>,
    at: Vec<usize>,
}

/// Settles a run: each dataset's publishes go to the log as one record (the datasets'
/// records concurrently), then every publish's acknowledgement, in the order they came.
async fn settle_run(
    shared: Arc<Shared>,
    key: LimitKey,
    version: Version,
    run: Vec<Staged>,
) -> Vec<Ack> {
    let acks: Vec<(u16, u8)> = run.iter().map(|s| (s.pkid, s.qos)).collect();
    let mut groups: Vec<Group> = Vec::new();
    for (i, staged) in run.into_iter().enumerate() {
        let group = match groups.iter().position(|g| Arc::ptr_eq(&g.ds, &staged.ds)) {
            Some(at) => &mut groups[at],
            None => {
                groups.push(Group {
                    ds: staged.ds.clone(),
                    parts: Vec::new(),
                    qos: Vec::new(),
                    at: Vec::new(),
                });
                groups.last_mut().expect("just pushed")
            }
        };
        group.parts.push(staged.checked);
        group.qos.push(staged.qos);
        group.at.push(i);
    }
    let verdicts = futures_util::future::join_all(
        groups
            .iter_mut()
            .map(|g| deliver(&shared, &g.ds, &key, &mut g.parts, &g.qos, version)),
    )
    .await;
    let mut ordered: Vec<Option<Verdict>> = acks.iter().map(|_| None).collect();
    for (group, verdicts) in groups.iter().zip(verdicts) {
        for (&i, verdict) in group.at.iter().zip(verdicts) {
            ordered[i] = Some(verdict);
        }
    }
    acks.into_iter()
        .zip(ordered)
        .map(|((pkid, qos), verdict)| Ack::Settled {
            pkid,
            qos,
            verdict: verdict.unwrap_or(Verdict::Abandon("error")),
        })
        .collect()
}

/// Reason strings stay short: they travel in every acknowledgement.
fn truncate_reason(message: &str) -> String {
    crate::pipeline::decode::truncate(message, 512).to_string()
}
