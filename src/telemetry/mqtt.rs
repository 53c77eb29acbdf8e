//! The MQTT endpoint's metrics: connections, packets in and out, publishes settled, in-flight
//! publishes and disconnects.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::labels::{PacketLabels, ReasonLabels};

/// The MQTT endpoint's metrics (cheap to clone).
#[derive(Clone, Debug, Default)]
pub struct MqttMetrics {
    connections_open: Gauge,
    connections: Family<ReasonLabels, Counter>,
    packets_in: Family<PacketLabels, Counter>,
    packets_out: Family<PacketLabels, Counter>,
    publishes: Family<ReasonLabels, Counter>,
    inflight: Gauge,
    disconnects: Family<ReasonLabels, Counter>,
}

impl MqttMetrics {
    /// Registers the `mqtt_*` metrics.
    pub(super) fn register(&self, registry: &mut Registry) {
        let mqtt = registry.sub_registry_with_prefix("mqtt");
        mqtt.register(
            "connections_open",
            "Open MQTT connections",
            self.connections_open.clone(),
        );
        mqtt.register(
            "connections",
            "MQTT CONNECTs answered, by outcome",
            self.connections.clone(),
        );
        mqtt.register(
            "packets_received",
            "MQTT packets received, by type",
            self.packets_in.clone(),
        );
        mqtt.register(
            "packets_sent",
            "MQTT packets sent, by type",
            self.packets_out.clone(),
        );
        mqtt.register(
            "publishes",
            "MQTT PUBLISHes settled, by outcome (accepted, partial, or the reject reason)",
            self.publishes.clone(),
        );
        mqtt.register(
            "inflight",
            "MQTT publishes received and not yet acknowledged",
            self.inflight.clone(),
        );
        mqtt.register(
            "disconnects",
            "MQTT connections closed, by reason",
            self.disconnects.clone(),
        );
    }

    /// The series of the successful outcomes, at 0 (see `Metrics::preset`).
    pub(super) fn preset(&self) {
        self.connections
            .get_or_create_owned(&ReasonLabels { reason: "accepted" });
        for reason in ["accepted", "partial"] {
            self.publishes.get_or_create_owned(&ReasonLabels { reason });
        }
    }

    pub fn connections_open(&self) -> &Gauge {
        &self.connections_open
    }

    pub fn inflight(&self) -> &Gauge {
        &self.inflight
    }

    /// A CONNECT answered: `accepted`, or why not.
    pub fn connection(&self, outcome: &'static str) {
        self.connections
            .get_or_create(&ReasonLabels { reason: outcome })
            .inc();
    }

    pub fn packet_in(&self, kind: &'static str) {
        self.packets_in
            .get_or_create(&PacketLabels { r#type: kind })
            .inc();
    }

    pub fn packet_out(&self, kind: &'static str) {
        self.packets_out_n(kind, 1);
    }

    /// `n` packets of one kind written.
    pub fn packets_out_n(&self, kind: &'static str, n: u64) {
        self.packets_out
            .get_or_create(&PacketLabels { r#type: kind })
            .inc_by(n);
    }

    /// A PUBLISH settled: `accepted`, `partial`, or the reject reason.
    pub fn publish(&self, outcome: &'static str) {
        self.publishes
            .get_or_create(&ReasonLabels { reason: outcome })
            .inc();
    }

    pub fn disconnect(&self, reason: &'static str) {
        self.disconnects
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }
}
