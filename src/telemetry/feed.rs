//! The live feed's metrics: sessions open and ended, deliveries, and how long a batch waits
//! for a session to take it.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::labels::{ProtocolLabels, SessionEndLabels};

/// Live feed metrics (cheap to clone).
#[derive(Clone, Debug)]
pub struct FeedMetrics {
    sessions: Family<ProtocolLabels, Gauge>,
    ended: Family<SessionEndLabels, Counter>,
    deliveries: Family<ProtocolLabels, Counter>,
    lag: Histogram,
}

impl Default for FeedMetrics {
    fn default() -> Self {
        FeedMetrics {
            sessions: Family::default(),
            ended: Family::default(),
            deliveries: Family::default(),
            lag: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
        }
    }
}

impl FeedMetrics {
    /// Registers the `feed_*` metrics.
    pub(super) fn register(&self, registry: &mut Registry) {
        let feed = registry.sub_registry_with_prefix("feed");
        feed.register(
            "sessions",
            "Live feed sessions open, by protocol",
            self.sessions.clone(),
        );
        feed.register(
            "sessions_ended",
            "Live feed sessions ended, by protocol and reason (slow_consumer, key_revoked, not_entitled, gone, shutdown)",
            self.ended.clone(),
        );
        feed.register(
            "lag_seconds",
            "Time from a batch's acknowledgement to a subscriber session taking it",
            self.lag.clone(),
        );
        feed.register(
            "deliveries",
            "Readings and aggregates delivered to subscribers, by protocol",
            self.deliveries.clone(),
        );
    }

    /// The series of every known protocol, at 0 (see `Metrics::preset`).
    pub(super) fn preset(&self) {
        for protocol in ["sse", "ws", "mqtt"] {
            let labels = ProtocolLabels {
                protocol: protocol.into(),
            };
            self.sessions.get_or_create_owned(&labels);
            self.deliveries.get_or_create_owned(&labels);
        }
    }

    /// How long a batch waited between its acknowledgement and a session taking it (µs).
    pub fn lag(&self, micros: i64) {
        self.lag.observe(micros.max(0) as f64 / 1e6);
    }

    pub fn session_started(&self, protocol: &str) {
        self.sessions
            .get_or_create(&ProtocolLabels {
                protocol: protocol.into(),
            })
            .inc();
    }

    /// A session ended, and why (`slow_consumer`, `key_revoked`, `not_entitled`, …).
    pub fn session_ended(&self, protocol: &str, reason: &str) {
        self.sessions
            .get_or_create(&ProtocolLabels {
                protocol: protocol.into(),
            })
            .dec();
        self.ended
            .get_or_create(&SessionEndLabels {
                protocol: protocol.into(),
                reason: reason.into(),
            })
            .inc();
    }

    /// The deliveries counter of `protocol` (readings and aggregates sent to subscribers),
    /// to keep and count into without a lookup.
    pub fn delivered_counter(&self, protocol: &str) -> Counter {
        self.deliveries
            .get_or_create(&ProtocolLabels {
                protocol: protocol.into(),
            })
            .clone()
    }
}
