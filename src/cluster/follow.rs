//! The other nodes' records from the broker: each one once, in its node's order, into the
//! feed hub (live feeds on every protocol, entitlements checked by each session as for this
//! node's readings) and the hot store (recent history, `latest`, the map).
//!
//! The subscription is kept by the broker while this node is away (clean start off, a
//! session expiry), so a reconnect, or a restart within the expiry, gets what was
//! published meanwhile.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, Publish, SubscribeReasonCode};
use rumqttc::v5::{AsyncClient, Event};
use tokio_util::sync::CancellationToken;

use super::Cluster;
use crate::feed::Hub;
use crate::query::hot::HotStore;
use crate::registry::Registry;
use crate::wal::record;

#[derive(Debug)]
pub struct Follower {
    cluster: Arc<Cluster>,
    registry: Arc<Registry>,
    hub: Arc<Hub>,
    hot: Arc<HotStore>,
    /// Per node: what was taken of it.
    seen: HashMap<String, super::Seen>,
}

impl Follower {
    pub fn new(
        cluster: Arc<Cluster>,
        registry: Arc<Registry>,
        hub: Arc<Hub>,
        hot: Arc<HotStore>,
    ) -> Follower {
        Follower {
            cluster,
            registry,
            hub,
            hot,
            seen: HashMap::new(),
        }
    }

    /// Follows until `closing`, reconnecting with backoff and subscribing on every connect.
    pub async fn run(mut self, closing: CancellationToken) {
        let config = self.cluster.config.clone();
        let metrics = self.cluster.metrics.clone();
        let mut options = self.cluster.options("in");
        options.set_clean_start(false);
        options.set_session_expiry_interval(Some(
            u32::try_from(config.session_expiry.as_secs()).unwrap_or(u32::MAX),
        ));
        options.set_max_packet_size(Some(
            u32::try_from(super::publish::MAX_MESSAGE + 4096).unwrap_or(u32::MAX),
        ));
        let (client, mut events) = AsyncClient::new(options, 16);
        let filter = format!("{}/+", config.topic_prefix);
        let mut backoff = Duration::from_millis(250);
        loop {
            let event = tokio::select! {
                _ = closing.cancelled() => break,
                event = events.poll() => event,
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    // Asked on every connect: a broker that lost the session (restarted
                    // without persistence) has no subscription to send to.
                    if let Err(e) =
                        client.try_subscribe_many([Filter::new(filter.clone(), QoS::AtLeastOnce)])
                    {
                        tracing::error!(error = %e, "cannot subscribe to the other nodes");
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    if ack
                        .return_codes
                        .iter()
                        .all(|c| matches!(c, SubscribeReasonCode::Success(_)))
                    {
                        tracing::info!(filter = %filter, "following the other nodes");
                        metrics.connected("in", true);
                        backoff = Duration::from_millis(250);
                    } else {
                        tracing::error!(filter = %filter, codes = ?ack.return_codes, "the cluster's broker refused the subscription; reconnecting");
                        let _ = client.try_disconnect();
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => self.take(&publish),
                Ok(_) => {}
                Err(e) => {
                    metrics.connected("in", false);
                    metrics.reconnect("in");
                    tracing::warn!(error = %e, retry_in = ?backoff, "lost the other nodes' readings; reconnecting");
                    tokio::select! {
                        _ = closing.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = super::next_backoff(backoff);
                }
            }
        }
        metrics.connected("in", false);
        let _ = client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_millis(200), events.poll()).await;
    }

    /// One record of another node: unless seen already, into the hub and the hot store.
    fn take(&mut self, publish: &Publish) {
        let cluster = self.cluster.clone();
        let (metrics, config) = (&cluster.metrics, &cluster.config);
        let Ok(topic) = std::str::from_utf8(&publish.topic) else {
            metrics.received("malformed", 0);
            return;
        };
        let node = topic
            .strip_prefix(config.topic_prefix.as_str())
            .and_then(|t| t.strip_prefix('/'))
            .filter(|n| crate::config::ClusterConfig::valid_node_id(n));
        let Some(node) = node else {
            metrics.received("malformed", 0);
            return;
        };
        if node == config.node_id {
            return;
        }
        // Only a node of the cluster (which has its secret) speaks for a node.
        let Some((epoch, body)) = super::read_message(&config.secret.0, topic, &publish.payload)
        else {
            tracing::warn!(node = %node, "a message for the cluster without the cluster's MAC; dropped");
            metrics.received("forged", 0);
            return;
        };
        // Whole or not at all: a bundle that stops making sense part-way is dropped.
        let records: Option<Vec<&[u8]>> = super::unbundle(body).collect();
        let Some(records) = records else {
            tracing::warn!(node = %node, "a cut or garbled message of another node; dropped");
            self.cluster.metrics.received("malformed", 0);
            return;
        };
        for payload in records {
            self.take_record(node, epoch, payload);
        }
    }

    /// One record of node `node`: unless seen already, into the hub and the hot store.
    fn take_record(&mut self, node: &str, epoch: u64, payload: &[u8]) {
        let metrics = &self.cluster.metrics;
        let Ok(header) = record::header(payload) else {
            metrics.received("malformed", 0);
            return;
        };
        let lsn = header.lsn;
        // Noted only once taken: a record this node cannot take may come again.
        if self
            .seen
            .get(node)
            .is_some_and(|seen| !seen.is_new(epoch, lsn))
        {
            metrics.received("duplicate", 0);
            return;
        }
        let Some(entry) = self.registry.get(header.dataset) else {
            tracing::warn!(node = %node, dataset = %crate::telemetry::log_text(header.dataset), "a record of another node for a dataset this node does not have");
            metrics.received("unknown_dataset", 0);
            return;
        };
        let mut readings = Vec::new();
        if let Err(e) = record::decode_into(payload, &entry.dataset, &mut readings) {
            tracing::warn!(node = %node, error = %e, "an undecodable record of another node");
            metrics.received("malformed", 0);
            return;
        }
        self.seen
            .entry(node.to_string())
            .or_default()
            .note(epoch, lsn);
        metrics.received("taken", readings.len());
        let readings = Arc::new(readings);
        self.hub.publish(&entry.dataset, readings.clone());
        self.hot
            .take_remote(node, lsn, entry.dataset.clone(), readings);
    }
}
