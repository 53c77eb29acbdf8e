//! Intake from MQTT brokers citygate does not run (`[[upstream]]`): a city's broker cluster,
//! a LoRaWAN network server's MQTT integration. Each upstream is one rumqttc client that
//! subscribes (QoS 1, in a shared-subscription group when nodes split the load), maps each
//! message's topic to a dataset and sensor ([`crate::config::TopicTemplate`]), reads its payload as
//! citygate's own MQTT endpoint would (or as an uplink of The Things Stack or ChirpStack,
//! [`lorawan`]), and runs it through the same pipeline: validation, limits, the log.
//!
//! The broker is acknowledged (PUBACK, manual acks) only once the message's readings are
//! durable in the log, in the order the messages came; a message that can never be stored
//! (no such dataset, not readings at all, every reading rejected) is acknowledged too, and
//! on record (rejects in the dataset's log, the metrics). Over a rate limit, or with the log
//! full, the acknowledgement waits, so the broker holds the rest. A node that stops or
//! dies leaves its unacknowledged messages with the broker, which sends them again when
//! the client (same client id, MQTT 5 session kept a week) comes back; a message sent
//! again (DUP) whose readings are in the history already is acknowledged, not stored twice.

pub mod lorawan;
pub mod tls;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use compact_str::CompactString;
use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, Publish, RetainForwardRule, SubscribeReasonCode};
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{TopicTemplate as Template, UpstreamConfig, UpstreamFormat};
use crate::model::{is_valid_sensor_id, now_micros};
use crate::pipeline::decode::Format;
use crate::pipeline::limit::{LimitError, LimitKey};
use crate::pipeline::reject::{Reason, Rejected};
use crate::pipeline::{Batch, IngestError, Pipeline};
use crate::query::{Order, QueryService, Selection};
use crate::registry::Registry;
use crate::telemetry::UpstreamMetrics;
use lorawan::Network;

/// How long the broker keeps this client's session (and the messages not yet acknowledged)
/// while it is away: a week.
const SESSION_EXPIRY_SECS: u32 = 7 * 86_400;

/// The widest span of device times a message sent again is looked up over...
const DEDUP_SPAN: crate::model::Micros = 86_400_000_000;
/// ...and for how long at most.
const DEDUP_TIMEOUT: Duration = Duration::from_secs(10);

/// One upstream broker, as configured, with what it needs to take messages in.
#[derive(Debug)]
pub struct Upstream {
    config: UpstreamConfig,
    template: Template,
    pipeline: Arc<Pipeline>,
    registry: Arc<Registry>,
    /// Where a message the broker sends again is looked for (it may be stored already).
    query: Arc<QueryService>,
    metrics: UpstreamMetrics,
    /// TCP, or TLS as configured (read once, at start).
    transport: tls::BrokerTransport,
}

/// A message and the connection it came on.
struct Delivery {
    publish: Publish,
    connection: u64,
}

/// How a message ended: acknowledge it, or leave it to the broker.
enum Settled {
    Ack(Box<Publish>),
    /// Shutting down: not acknowledged, so the broker sends it again.
    Leave,
}

/// Starts every upstream; each runs until `closing`. `Err`: an upstream's TLS files could
/// not be read (named, with the upstream).
pub fn start(
    configs: &[UpstreamConfig],
    pipeline: &Arc<Pipeline>,
    registry: &Arc<Registry>,
    query: &Arc<QueryService>,
    metrics: &UpstreamMetrics,
    closing: &CancellationToken,
) -> Result<Vec<tokio::task::JoinHandle<()>>, String> {
    let mut ups = Vec::new();
    for config in configs {
        let address = config.address().expect("checked by the config");
        let transport = tls::BrokerTransport::of(&address, config.tls_files())
            .map_err(|e| format!("upstream {}: {e}", config.name))?;
        ups.push(Arc::new(Upstream {
            template: Template::parse(&config.topic).expect("checked by the config"),
            config: config.clone(),
            pipeline: pipeline.clone(),
            registry: registry.clone(),
            query: query.clone(),
            metrics: metrics.clone(),
            transport,
        }));
    }
    Ok(ups
        .into_iter()
        .map(|up| {
            metrics.preset(&up.config.name);
            tokio::spawn(up.run(closing.clone()))
        })
        .collect())
}

impl Upstream {
    fn options(&self) -> MqttOptions {
        let address = self.config.address().expect("checked by the config");
        let mut options = MqttOptions::new(self.config.client_id(), address.host, address.port);
        options.set_transport(self.transport.0.clone());
        // MQTT 5: the broker keeps the session, and what was not acknowledged, across
        // reconnects (for a week), and sends at most `max_in_flight` unacknowledged messages
        // at once (Receive Maximum), which bounds what waits here.
        options.set_clean_start(false);
        options.set_session_expiry_interval(Some(SESSION_EXPIRY_SECS));
        options.set_receive_maximum(Some(
            u16::try_from(self.config.max_in_flight).unwrap_or(u16::MAX),
        ));
        options.set_manual_acks(true);
        options.set_keep_alive(self.config.keep_alive);
        options.set_max_packet_size(Some(
            u32::try_from(self.config.max_packet_size.0).unwrap_or(u32::MAX),
        ));
        options.set_request_channel_capacity(self.config.max_in_flight * 2 + 16);
        if !self.config.username.is_empty() {
            options.set_credentials(&self.config.username, &self.config.password.0);
        }
        options
    }

    /// The subscription: the template's filter, in the share group if there is one.
    fn filter(&self) -> String {
        match self.config.share_group.as_str() {
            "" => self.template.filter(),
            group => format!("$share/{group}/{}", self.template.filter()),
        }
    }

    /// Polls the connection (reconnecting with backoff, subscribing on each connect) and
    /// hands messages to [`Self::work`], which settles and acknowledges them in order. On
    /// `closing` it keeps polling while the worker finishes, so the acknowledgements of what
    /// was stored go out, then disconnects.
    async fn run(self: Arc<Self>, closing: CancellationToken) {
        let name = self.config.name.clone();
        let (client, mut events) =
            AsyncClient::new(self.options(), self.config.max_in_flight * 2 + 16);
        // The poll loop never waits for the worker: the worker's acknowledgements go out
        // through this loop, so a loop blocked on a full queue would stall both. The broker
        // bounds what waits here: Receive Maximum asks it for at most `max_in_flight`
        // unacknowledged messages per connection.
        let (tx, rx) = mpsc::unbounded_channel();
        let mut tx = Some(tx);
        // Which connection a message came on: an acknowledgement only goes out on the same
        // one (a packet id of an earlier connection names another message on this one).
        let connection = Arc::new(AtomicU64::new(0));
        let mut worker = tokio::spawn(self.clone().work(
            client.clone(),
            rx,
            connection.clone(),
            closing.clone(),
        ));
        let mut worker_done = false;
        let mut disconnect_by: Option<tokio::time::Instant> = None;
        let mut backoff = Duration::from_millis(250);
        loop {
            let event = tokio::select! {
                _ = closing.cancelled(), if tx.is_some() => {
                    // No more messages to the worker; it settles what it has.
                    tx = None;
                    continue;
                }
                _ = &mut worker, if tx.is_none() && !worker_done => {
                    worker_done = true;
                    let _ = client.try_disconnect();
                    disconnect_by = Some(tokio::time::Instant::now() + Duration::from_secs(1));
                    continue;
                }
                _ = tokio::time::sleep_until(disconnect_by.unwrap_or_else(tokio::time::Instant::now)), if disconnect_by.is_some() => break,
                event = events.poll() => event,
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    connection.fetch_add(1, Ordering::AcqRel);
                    tracing::info!(upstream = %name, filter = %self.filter(), "connected to the upstream broker");
                    self.metrics.connected(&name, true);
                    // Retained messages are a broker's copy of a reading already sent (and
                    // sent again on every subscribe): not asked for. The request goes out on
                    // the next poll; never await it here.
                    let mut filter = Filter::new(self.filter(), QoS::AtLeastOnce);
                    filter.retain_forward_rule = RetainForwardRule::Never;
                    if let Err(e) = client.try_subscribe_many([filter]) {
                        tracing::error!(upstream = %name, error = %e, "cannot subscribe");
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    if ack
                        .return_codes
                        .iter()
                        .any(|c| !matches!(c, SubscribeReasonCode::Success(_)))
                    {
                        // Connected but taking nothing is not connected: say so, try again.
                        tracing::error!(upstream = %name, filter = %self.filter(), codes = ?ack.return_codes, "the broker refused the subscription; reconnecting");
                        self.metrics.connected(&name, false);
                        let _ = client.try_disconnect();
                    } else {
                        backoff = Duration::from_millis(250);
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    if let Some(tx) = &tx {
                        self.metrics.in_flight(&name).inc();
                        let _ = tx.send(Delivery {
                            publish,
                            connection: connection.load(Ordering::Acquire),
                        });
                    }
                    // Closing: not taken, not acknowledged; the broker sends it again.
                }
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) if worker_done => break,
                Ok(_) => {}
                Err(e) => {
                    connection.fetch_add(1, Ordering::AcqRel);
                    self.metrics.connected(&name, false);
                    if tx.is_none() {
                        if worker_done {
                            break;
                        }
                        // Closing: let the worker finish without reconnecting.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                    self.metrics.reconnect(&name);
                    tracing::warn!(upstream = %name, error = %e, retry_in = ?backoff, "upstream broker connection lost");
                    tokio::select! {
                        _ = closing.cancelled() => {}
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
        self.metrics.connected(&name, false);
        if !worker_done {
            worker.abort();
        }
    }

    /// Settles up to `max_in_flight` messages at once and acknowledges them in the order
    /// they came, each once its readings are durable and only on the connection it came on
    /// (after a reconnect the broker sends the rest again).
    async fn work(
        self: Arc<Self>,
        client: AsyncClient,
        mut rx: mpsc::UnboundedReceiver<Delivery>,
        connection: Arc<AtomicU64>,
        closing: CancellationToken,
    ) {
        let name = self.config.name.clone();
        let in_flight = self.metrics.in_flight(&name);
        let mut pending = FuturesOrdered::new();
        // The connection what is pending came on, and a message of a newer one held back
        // until the older ones are settled: a copy the broker sends again must not race
        // its first copy into the log.
        let mut pending_on: Option<u64> = None;
        let mut held: Option<Delivery> = None;
        let mut open = true;
        let start = |d: Delivery, pending: &mut FuturesOrdered<_>| {
            let came_on = d.connection;
            let settle =
                self.clone()
                    .settle(d.publish, came_on, connection.clone(), closing.clone());
            pending.push_back(async move { (settle.await, came_on) });
        };
        while open || !pending.is_empty() || held.is_some() {
            if pending.is_empty()
                && let Some(d) = held.take()
            {
                pending_on = Some(d.connection);
                start(d, &mut pending);
            }
            tokio::select! {
                biased;
                Some((settled, came_on)) = pending.next(), if !pending.is_empty() => {
                    in_flight.dec();
                    let Settled::Ack(publish) = settled else { continue };
                    if came_on != connection.load(Ordering::Acquire) {
                        continue;
                    }
                    if publish.qos != QoS::AtMostOnce && client.ack(&publish).await.is_ok() {
                        self.metrics.ack(&name);
                    }
                }
                delivery = rx.recv(), if open && held.is_none() && pending.len() < self.config.max_in_flight => {
                    match delivery {
                        Some(d) if !pending.is_empty() && pending_on != Some(d.connection) => held = Some(d),
                        Some(d) => {
                            pending_on = Some(d.connection);
                            start(d, &mut pending);
                        }
                        None => open = false,
                    }
                }
            }
        }
    }

    /// One message: where it goes, what it holds, through the pipeline.
    /// `came_on` is the connection it came on: once `connection` has moved on, a message
    /// not yet in the log is left to the broker, which sends it again.
    async fn settle(
        self: Arc<Self>,
        publish: Publish,
        came_on: u64,
        connection: Arc<AtomicU64>,
        closing: CancellationToken,
    ) -> Settled {
        let name = &self.config.name;
        let received_at = now_micros();
        if publish.retain {
            // A broker that forwards retained messages anyway: the reading it holds came
            // (or will come) live.
            self.metrics.message(name, "retained");
            return Settled::Ack(Box::new(publish));
        }
        let Ok(topic) = std::str::from_utf8(&publish.topic) else {
            self.unroutable(&publish, "the topic is not UTF-8");
            return Settled::Ack(Box::new(publish));
        };
        let Some(named) = self.template.read(topic) else {
            self.unroutable(&publish, "the topic does not fit the template");
            return Settled::Ack(Box::new(publish));
        };
        let dataset = named.dataset.unwrap_or(&self.config.dataset);
        // A topic names only the datasets this upstream may write.
        let allowed =
            named.dataset.is_none() || self.config.allow_datasets.iter().any(|d| d == dataset);
        let Some(ds) = self.registry.get(dataset).filter(|_| allowed) else {
            self.unroutable(&publish, "no dataset this upstream may write");
            return Settled::Ack(Box::new(publish));
        };
        // The sensor: the device an uplink names, else the topic's level.
        let (format, body, sensor) = match self.config.format {
            UpstreamFormat::TheThingsStack | UpstreamFormat::Chirpstack => {
                let network = if self.config.format == UpstreamFormat::Chirpstack {
                    Network::Chirpstack
                } else {
                    Network::TheThingsStack
                };
                match lorawan::reading(network, &publish.payload) {
                    Ok((device, body)) => (Format::Json, Ok(body), Some(device)),
                    Err(why) => (Format::Json, Err(why), None),
                }
            }
            other => {
                let format = match other {
                    UpstreamFormat::Json => Format::Json,
                    UpstreamFormat::Ndjson => Format::Ndjson,
                    UpstreamFormat::Senml => Format::Senml,
                    UpstreamFormat::LineProtocol => Format::LineProtocol,
                    _ => crate::mqtt::format_of(
                        &publish.payload,
                        publish
                            .properties
                            .as_ref()
                            .and_then(|p| p.content_type.as_deref()),
                        named.sensor.is_some(),
                    ),
                };
                let body = match named.sensor {
                    Some(s) if !is_valid_sensor_id(s) => Err(format!(
                        "`{}` in the topic is not a sensor id (1-64 of A-Z a-z 0-9 . _ -)",
                        crate::telemetry::log_text(s)
                    )),
                    _ => Ok(publish.payload.clone()),
                };
                (format, body, named.sensor.map(CompactString::from))
            }
        };
        // Limits count per upstream and device: each its own allowance, as a device key
        // has on citygate's own endpoints.
        let key: LimitKey = format!("upstream:{name}/{}", sensor.as_deref().unwrap_or("-")).into();
        let body = match body {
            Ok(body) => body,
            Err(why) => {
                self.malformed(&ds, &key, received_at, why);
                return Settled::Ack(Box::new(publish));
            }
        };
        let uplink = matches!(
            self.config.format,
            UpstreamFormat::TheThingsStack | UpstreamFormat::Chirpstack
        );
        let batch = Batch {
            format,
            body,
            precision: None,
            received_at,
            // An uplink names its device inside (the topic may name it otherwise).
            sensor: if uplink { None } else { sensor },
        };
        // Decoded and checked once; the limit and the log may each be waited for.
        let mut checked = match self.pipeline.prepare(&ds, batch).await {
            Ok(checked) => checked,
            Err(IngestError::ShuttingDown) => return Settled::Leave,
            Err(e) => {
                self.malformed(&ds, &key, received_at, e.to_string());
                return Settled::Ack(Box::new(publish));
            }
        };
        // Sent again (after a reconnect, or to this node after another died): the readings
        // stored already the first time are not stored twice.
        if publish.dup {
            let before = checked.accepted.len();
            self.drop_stored(&ds.dataset, &mut checked.accepted).await;
            if before > 0 && checked.accepted.is_empty() && checked.rejected.is_empty() {
                self.metrics.message(name, "duplicate");
                return Settled::Ack(Box::new(publish));
            }
        }
        loop {
            match self.pipeline.admit(&ds, &key, &checked) {
                Ok(()) => break,
                Err(IngestError::RateLimited(LimitError::Exceeded { retry_after })) => {
                    tokio::select! {
                        _ = closing.cancelled() => return Settled::Leave,
                        _ = tokio::time::sleep(retry_after) => {}
                    }
                }
                Err(_) => {
                    self.malformed(
                        &ds,
                        &key,
                        received_at,
                        "more readings in one message than the dataset's burst".into(),
                    );
                    return Settled::Ack(Box::new(publish));
                }
            }
        }
        let mut failures = 0;
        loop {
            if connection.load(Ordering::Acquire) != came_on {
                return Settled::Leave;
            }
            match self.pipeline.deliver(&ds, &key, &mut checked).await {
                Ok(outcome) => {
                    let label = if outcome.accepted > 0 {
                        "stored"
                    } else {
                        "rejected"
                    };
                    self.metrics.message(name, label);
                    return Settled::Ack(Box::new(publish));
                }
                Err(IngestError::ShuttingDown) => return Settled::Leave,
                // The log is full or failing: hold the message (the broker holds the rest)
                // and try again; nothing was kept.
                Err(e) => {
                    failures += 1;
                    if failures == 1 {
                        tracing::warn!(upstream = %name, error = %e, "upstream message waits for the log");
                    }
                    if matches!(e, IngestError::Internal(_)) && failures >= 3 {
                        tracing::error!(upstream = %name, error = %e, "upstream message given up");
                        self.malformed(&ds, &key, received_at, format!("not stored: {e}"));
                        return Settled::Ack(Box::new(publish));
                    }
                    tokio::select! {
                        _ = closing.cancelled() => return Settled::Leave,
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                }
            }
        }
    }

    /// Takes out of `readings` those stored already: the same sensor, time and values in
    /// the history (the hot store caught up with the log first, so what a previous life
    /// stored before it died is there). Readings without a time of their own cannot be told
    /// apart and stay.
    async fn drop_stored(
        &self,
        dataset: &Arc<crate::model::Dataset>,
        readings: &mut Vec<crate::model::Reading>,
    ) {
        let timed: Vec<&crate::model::Reading> =
            readings.iter().filter(|r| !r.ts_missing).collect();
        let (Some(from), Some(to)) = (
            timed.iter().map(|r| r.ts).min(),
            timed.iter().map(|r| r.ts).max(),
        ) else {
            return;
        };
        if !self.query.hot.catch_up(Duration::from_secs(5)).await {
            return;
        }
        let sel = Selection {
            dataset: dataset.clone(),
            from,
            to: to + 1,
            filter: crate::feed::session::Filter {
                sensors: Some(timed.iter().map(|r| r.sensor_id.to_string()).collect()),
                bbox: None,
            },
            fields: None,
        };
        // A look bounded in time and span: a message sent again is a recent one; one that
        // spans days, or a lake slow to answer, is stored rather than held up.
        if to - from > DEDUP_SPAN {
            return;
        }
        let limit = (timed.len() * 4).clamp(16, 100_000);
        let looked = tokio::time::timeout(
            DEDUP_TIMEOUT,
            self.query.history(&sel, Order::Asc, limit, None),
        )
        .await;
        let Ok(Ok(page)) = looked else {
            return;
        };
        readings.retain(|r| {
            r.ts_missing
                || !page.rows.iter().any(|row| {
                    row.ts == r.ts && row.sensor_id == r.sensor_id && row.values == r.values
                })
        });
    }

    fn unroutable(&self, publish: &Publish, why: &str) {
        self.metrics.message(&self.config.name, "unroutable");
        if crate::telemetry::refusal_log_allowed() {
            tracing::warn!(
                upstream = %self.config.name,
                topic = crate::telemetry::log_text(&String::from_utf8_lossy(&publish.topic)),
                why,
                "upstream message acknowledged and dropped: it names no dataset of this gateway"
            );
        }
    }

    /// A message that holds no readings: on record in the dataset's rejects.
    fn malformed(&self, ds: &crate::registry::DatasetEntry, key: &LimitKey, at: i64, why: String) {
        self.metrics.message(&self.config.name, "malformed");
        let reject = Rejected {
            index: 0,
            reason: Reason::Malformed,
            message: why,
            sensor_id: None,
        };
        self.pipeline.record_rejects(ds, key, at, &[reject]);
    }
}
