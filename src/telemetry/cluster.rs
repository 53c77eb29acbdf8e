//! The cluster's metrics (`[cluster]`): log records published to the other nodes and how,
//! records taken from them and how, the publisher's place behind the log, connections.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    direction: &'static str,
}

/// How a record of this node's log ended at the broker.
const PUBLISHED: [&str; 4] = ["published", "refused", "too_old", "too_large"];
/// How a record from another node ended here.
const RECEIVED: [&str; 5] = [
    "taken",
    "duplicate",
    "unknown_dataset",
    "malformed",
    "forged",
];
/// The two connections: this node's records out, the others' in.
const DIRECTIONS: [&str; 2] = ["out", "in"];

/// The cluster's metrics (cheap to clone).
#[derive(Clone, Debug, Default)]
pub struct ClusterMetrics {
    published: Family<OutcomeLabels, Counter>,
    received: Family<OutcomeLabels, Counter>,
    received_readings: Counter,
    lag: Gauge,
    connected: Family<DirectionLabels, Gauge>,
    reconnects: Family<DirectionLabels, Counter>,
}

impl ClusterMetrics {
    /// Registers the `cluster_*` metrics.
    pub(super) fn register(&self, registry: &mut Registry) {
        let c = registry.sub_registry_with_prefix("cluster");
        c.register(
            "records_published",
            "Records of this node's log offered to the other nodes, by outcome: published \
             (the broker acknowledged it), refused (the broker would not take it), too_old (acknowledged longer ago than \
             cluster.max_backlog), too_large (over the largest message)",
            self.published.clone(),
        );
        c.register(
            "records_received",
            "Records of other nodes' logs received, by outcome: taken (into live feeds and \
             recent history), duplicate (sent again), unknown_dataset, malformed, forged (no valid \
             MAC under the cluster's secret)",
            self.received.clone(),
        );
        c.register(
            "readings_received",
            "Readings of other nodes taken into live feeds and recent history",
            self.received_readings.clone(),
        );
        c.register(
            "publish_lag",
            "Records this node's log committed that the broker has not acknowledged",
            self.lag.clone(),
        );
        c.register(
            "connected",
            "1 while connected to the cluster's broker, by direction (out: publishing, in: \
             following)",
            self.connected.clone(),
        );
        c.register(
            "reconnects",
            "Connections to the cluster's broker lost or refused, by direction",
            self.reconnects.clone(),
        );
    }

    /// Every series, at 0.
    pub fn preset(&self) {
        for outcome in PUBLISHED {
            self.published
                .get_or_create_owned(&OutcomeLabels { outcome });
        }
        for outcome in RECEIVED {
            self.received
                .get_or_create_owned(&OutcomeLabels { outcome });
        }
        for direction in DIRECTIONS {
            self.connected
                .get_or_create_owned(&DirectionLabels { direction });
            self.reconnects
                .get_or_create_owned(&DirectionLabels { direction });
        }
    }

    pub fn published(&self, outcome: &'static str, records: u64) {
        self.published
            .get_or_create(&OutcomeLabels { outcome })
            .inc_by(records);
    }

    pub fn received(&self, outcome: &'static str, readings: usize) {
        self.received
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
        if outcome == "taken" {
            self.received_readings.inc_by(readings as u64);
        }
    }

    pub fn set_lag(&self, records: u64) {
        self.lag.set(i64::try_from(records).unwrap_or(i64::MAX));
    }

    pub fn connected(&self, direction: &'static str, up: bool) {
        self.connected
            .get_or_create(&DirectionLabels { direction })
            .set(i64::from(up));
    }

    pub fn reconnect(&self, direction: &'static str) {
        self.reconnects
            .get_or_create(&DirectionLabels { direction })
            .inc();
    }
}
