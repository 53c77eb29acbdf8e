//! The subscriber side of an MQTT connection: SUBSCRIBE checked filter by filter against
//! the entitlements, one live-feed session per granted filter, and the PUBLISHes they
//! deliver (QoS 0, or QoS 1 within the client's receive maximum; MQTT 3.1.1 clients get an
//! unacknowledged QoS 1 delivery again, flagged DUP, after [`RETRY`]).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use compact_str::CompactString;
use rumqttd::protocol::{DisconnectReasonCode, Packet, SubAck, Subscribe, SubscribeReasonCode};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::super::topic;
use super::super::wire::{self, Version};
use super::{Session, Violation, violation};
use crate::feed::Cursor;
use crate::feed::session::{self as feed, End, Filter, Follow, Out, Slot};
use crate::market::KeyKind;
use crate::model::now_micros;

/// Topic filters one connection may follow at once, and one SUBSCRIBE may carry.
pub(super) const MAX_FILTERS: usize = 100;
/// Filters one connection may ask for over its life, repeats included: each costs a
/// scan of the dataset's recent history.
pub(super) const MAX_SUBSCRIBES: usize = 1000;
/// When a 3.1.1 subscriber has not acknowledged a QoS 1 delivery, it is sent again.
pub(super) const RETRY: Duration = Duration::from_secs(5);

/// One reading (or aggregate) for the subscriber, on `{prefix}{sensor}`.
pub(super) struct Delivery {
    /// `citygate/{dataset}/`
    prefix: Arc<str>,
    sensor: CompactString,
    payload: Arc<str>,
    qos: u8,
    retain: bool,
}

/// What a feed hands the connection.
pub(super) enum Message {
    /// What the feed had ready, in order.
    Deliver(Vec<Delivery>),
    /// A feed stopped (its entitlement ended, the client fell behind, shutdown).
    End(End),
}

struct Unacked {
    /// The frame, kept for a 3.1.1 client only (MQTT 5 never sends one again).
    frame: Vec<u8>,
    sent: Instant,
}

/// The feeds of one connection.
pub(super) struct Feeds {
    /// The key's secret: authenticated again at every SUBSCRIBE and every recheck.
    pub(super) secret: String,
    /// Filters asked for so far (see [`MAX_SUBSCRIBES`]).
    asked: usize,
    /// Each followed filter's forwarder and its place among the key's live sessions.
    by_filter: HashMap<String, (JoinHandle<()>, Slot)>,
    /// Where the forwarders send, made at the first SUBSCRIBE: a device that only
    /// publishes does not hold a channel (most connections are such devices).
    channel: Option<(mpsc::Sender<Message>, mpsc::Receiver<Message>)>,
    /// The channel's bound, in messages.
    queue: usize,
    unacked: BTreeMap<u16, Unacked>,
    next_pkid: u16,
    receive_max: usize,
    /// Deliveries taken from a feed that did not fit the client's receive maximum yet.
    pending: VecDeque<Delivery>,
}

impl Feeds {
    pub(super) fn new(secret: String, receive_max: u16, queue: usize) -> Feeds {
        Feeds {
            secret,
            asked: 0,
            by_filter: HashMap::new(),
            channel: None,
            queue: queue.max(1),
            unacked: BTreeMap::new(),
            next_pkid: 1,
            receive_max: usize::from(receive_max.max(1)),
            pending: VecDeque::new(),
        }
    }

    /// Whether another QoS 1 delivery fits the client's receive maximum.
    pub(super) fn may_deliver(&self) -> bool {
        self.unacked.len() < self.receive_max
    }

    /// The next message of any feed; deliveries that had to wait come first.
    pub(super) async fn next(&mut self) -> Option<Message> {
        if !self.pending.is_empty() {
            return Some(Message::Deliver(self.pending.drain(..).collect()));
        }
        match &mut self.channel {
            Some((_, rx)) => rx.recv().await,
            None => std::future::pending().await,
        }
    }

    /// Where a new forwarder sends.
    fn sender(&mut self) -> mpsc::Sender<Message> {
        let queue = self.queue;
        self.channel
            .get_or_insert_with(|| mpsc::channel(queue))
            .0
            .clone()
    }

    pub(super) fn try_next(&mut self) -> Option<Message> {
        if !self.pending.is_empty() {
            return Some(Message::Deliver(self.pending.drain(..).collect()));
        }
        self.channel.as_mut()?.1.try_recv().ok()
    }

    /// When the oldest unacknowledged delivery is due again (3.1.1 only: MQTT 5 forbids
    /// resending on the same connection).
    pub(super) fn retransmit_due(&self, version: Version) -> Option<Instant> {
        if version != Version::V4 {
            return None;
        }
        self.unacked.values().map(|u| u.sent + RETRY).min()
    }

    pub(super) fn acked(&mut self, pkid: u16) {
        self.unacked.remove(&pkid);
    }

    /// Stops following `filter`. `false`: it was not followed.
    pub(super) fn stop(&mut self, filter: &str) -> bool {
        match self.by_filter.remove(filter) {
            Some((forwarder, _slot)) => {
                forwarder.abort();
                true
            }
            None => false,
        }
    }

    pub(super) fn stop_all(&mut self) {
        for (_, (forwarder, _slot)) in self.by_filter.drain() {
            forwarder.abort();
        }
    }

    fn pkid(&mut self) -> u16 {
        loop {
            let id = self.next_pkid;
            self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
            if !self.unacked.contains_key(&id) {
                return id;
            }
        }
    }
}

impl Session {
    /// Answers a SUBSCRIBE: each filter granted (and followed) or refused on its own.
    ///
    /// The key is authenticated afresh first (a key revoked since CONNECT gets nothing),
    /// and a packet or a connection asking for more filters than the caps has the excess
    /// refused (MQTT 5 `0x97`).
    pub(super) async fn on_subscribe(&mut self, subscribe: Subscribe) {
        let mut return_codes = Vec::with_capacity(subscribe.filters.len());
        let live = match self.shared.keyring.authenticate(&self.feeds.secret).await {
            Ok(Some(key)) => {
                self.key = key;
                true
            }
            Ok(None) => false,
            Err(e) => {
                tracing::error!(error = %e, "key check failed during SUBSCRIBE");
                false
            }
        };
        let quota = match self.version {
            Version::V4 => SubscribeReasonCode::Failure,
            Version::V5 => SubscribeReasonCode::QuotaExceeded,
        };
        for (i, filter) in subscribe.filters.iter().enumerate() {
            let code = if !live {
                match self.version {
                    Version::V4 => SubscribeReasonCode::Failure,
                    Version::V5 => SubscribeReasonCode::NotAuthorized,
                }
            } else if i >= MAX_FILTERS || self.feeds.asked >= MAX_SUBSCRIBES {
                quota
            } else {
                self.feeds.asked += 1;
                self.follow_filter(&filter.path, filter.qos as u8).await
            };
            return_codes.push(code);
        }
        self.send(Packet::SubAck(
            SubAck {
                pkid: subscribe.pkid,
                return_codes,
            },
            None,
        ));
    }

    async fn follow_filter(&mut self, path: &str, qos: u8) -> SubscribeReasonCode {
        let refused = match self.version {
            Version::V4 => SubscribeReasonCode::Failure,
            Version::V5 => SubscribeReasonCode::NotAuthorized,
        };
        if self.key.kind == KeyKind::Device {
            return refused;
        }
        let Some(target) = topic::follow(path) else {
            if crate::telemetry::refusal_log_allowed() {
                tracing::info!(key = %self.key.id, filter = crate::telemetry::log_text(path), "mqtt subscribe refused: not one dataset");
            }
            return refused;
        };
        if !self.feeds.by_filter.contains_key(path) && self.feeds.by_filter.len() >= MAX_FILTERS {
            return match self.version {
                Version::V4 => SubscribeReasonCode::Failure,
                Version::V5 => SubscribeReasonCode::QuotaExceeded,
            };
        }
        let ctx = self.shared.feed.clone();
        let grant = match ctx
            .market
            .entitlement(&self.key, target.dataset, now_micros())
            .await
        {
            Ok(Some(grant)) => grant,
            Ok(None) => {
                if crate::telemetry::refusal_log_allowed() {
                    tracing::info!(key = %self.key.id, filter = crate::telemetry::log_text(path), "mqtt subscribe refused: not entitled");
                }
                return refused;
            }
            Err(e) => {
                tracing::error!(error = %e, "entitlement check failed during SUBSCRIBE");
                return match self.version {
                    Version::V4 => SubscribeReasonCode::Failure,
                    Version::V5 => SubscribeReasonCode::Unspecified,
                };
            }
        };
        // The same filter again replaces the subscription (MQTT §3.8.4), giving its place
        // back first.
        if let Some((previous, _slot)) = self.feeds.by_filter.remove(path) {
            previous.abort();
        }
        let Some(slot) = ctx.slots.take(&self.key.account) else {
            if crate::telemetry::refusal_log_allowed() {
                tracing::info!(key = %self.key.id, filter = crate::telemetry::log_text(path), "mqtt subscribe refused: the key's sessions are at their cap");
            }
            return match self.version {
                Version::V4 => SubscribeReasonCode::Failure,
                Version::V5 => SubscribeReasonCode::QuotaExceeded,
            };
        };
        let qos = qos.min(1);
        let follow = Follow {
            secret: self.feeds.secret.clone(),
            dataset: target.dataset.to_string(),
            filter: Filter {
                sensors: target.sensor.map(|s| HashSet::from([s.to_string()])),
                bbox: None,
            },
            after: None,
            grant,
        };
        let sub = feed::start_retained(&ctx, &follow);
        let forwarder = spawn_feed(ctx, follow, sub, qos, self.feeds.sender());
        self.feeds
            .by_filter
            .insert(path.to_string(), (forwarder, slot));
        if qos == 1 {
            SubscribeReasonCode::QoS1
        } else {
            SubscribeReasonCode::QoS0
        }
    }

    /// Writes what a feed delivers, as far as the client's receive maximum allows (the
    /// rest waits in order); a feed that stopped ends the connection.
    pub(super) fn deliver(&mut self, message: Message) -> Result<(), Violation> {
        match message {
            Message::Deliver(deliveries) => {
                let mut written = 0;
                let mut deliveries = deliveries.into_iter();
                for d in deliveries.by_ref() {
                    let pkid = if d.qos > 0 { self.feeds.pkid() } else { 0 };
                    let start = self.out.len();
                    wire::encode_publish(
                        &mut self.out,
                        self.version,
                        &[&d.prefix, &d.sensor],
                        d.payload.as_bytes(),
                        d.qos,
                        pkid,
                        d.retain,
                        false,
                    );
                    if d.qos > 0 {
                        self.feeds.unacked.insert(
                            pkid,
                            Unacked {
                                frame: if self.version == Version::V4 {
                                    self.out[start..].to_vec()
                                } else {
                                    Vec::new()
                                },
                                sent: Instant::now(),
                            },
                        );
                    }
                    written += 1;
                    if !self.feeds.may_deliver() {
                        break;
                    }
                }
                self.feeds.pending.extend(deliveries);
                self.shared.metrics.packets_out_n("publish", written);
                Ok(())
            }
            Message::End(end) => Err(match end {
                End::Gone => return Ok(()),
                End::KeyRevoked | End::NotEntitled => {
                    violation(DisconnectReasonCode::NotAuthorized, end.as_str())
                }
                End::SlowConsumer | End::DelayBufferFull => {
                    violation(DisconnectReasonCode::QuotaExceeded, end.as_str())
                }
                End::Shutdown => {
                    violation(DisconnectReasonCode::ServerShuttingDown, "server_shutdown")
                }
            }),
        }
    }

    /// Sends again, flagged DUP, the 3.1.1 deliveries unacknowledged for [`RETRY`].
    pub(super) fn retransmit(&mut self) {
        let now = Instant::now();
        for unacked in self.feeds.unacked.values_mut() {
            if unacked.sent + RETRY <= now {
                unacked.frame[0] |= 0b1000;
                self.out.extend_from_slice(&unacked.frame);
                unacked.sent = now;
                self.shared.metrics.packet_out("publish");
            }
        }
    }
}

/// Runs the live-feed session of one granted filter; its readings become PUBLISHes on
/// `citygate/{dataset}/{sensor_id}`. Aborting the returned task ends the session.
fn spawn_feed(
    ctx: Arc<feed::FeedService>,
    follow: Follow,
    sub: Cursor,
    qos: u8,
    connection: mpsc::Sender<Message>,
) -> JoinHandle<()> {
    let prefix: Arc<str> = format!("{}{}/", topic::PREFIX, follow.dataset).into();
    let (out_tx, mut out_rx) = feed::channel();
    ctx.metrics.session_started("mqtt");
    let session = ctx.tasks.spawn({
        let ctx = ctx.clone();
        async move {
            let end = feed::run(ctx.clone(), follow, sub, out_tx).await;
            ctx.metrics.session_ended("mqtt", end.as_str());
            end
        }
    });
    let delivered = ctx.metrics.delivered_counter("mqtt");
    tokio::spawn(async move {
        while let Some(outs) = out_rx.recv().await {
            // What the session handed over goes to the connection as one message.
            let batch: Vec<Delivery> = outs
                .into_iter()
                .map(|out| {
                    let (sensor, payload, retain) = match out {
                        Out::Retained { sensor, json } => (sensor, json, true),
                        Out::Reading { sensor, json, .. } => (sensor, json, false),
                        Out::Aggregate { sensor, json } => (sensor, Arc::from(json), false),
                    };
                    Delivery {
                        prefix: prefix.clone(),
                        sensor,
                        payload,
                        qos,
                        retain,
                    }
                })
                .collect();
            let n = batch.len() as u64;
            if connection.send(Message::Deliver(batch)).await.is_err() {
                return;
            }
            delivered.inc_by(n);
        }
        let end = session.await.unwrap_or(End::Shutdown);
        let _ = connection.send(Message::End(end)).await;
    })
}
