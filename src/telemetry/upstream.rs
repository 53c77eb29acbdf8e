//! The upstream brokers' metrics: messages taken and how they ended, acknowledgements sent,
//! messages in flight (received, not yet acknowledged: the lag), connections and
//! reconnections. One series per `[[upstream]]` name (from the config).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    upstream: String,
    outcome: &'static str,
}

/// The upstreams' metrics (cheap to clone).
#[derive(Clone, Debug, Default)]
pub struct UpstreamMetrics {
    messages: Family<OutcomeLabels, Counter>,
    acks: Family<UpstreamLabels, Counter>,
    in_flight: Family<UpstreamLabels, Gauge>,
    connected: Family<UpstreamLabels, Gauge>,
    reconnects: Family<UpstreamLabels, Counter>,
}

/// How a message from an upstream ended.
const OUTCOMES: [&str; 6] = [
    "stored",
    "rejected",
    "unroutable",
    "malformed",
    "retained",
    "duplicate",
];

impl UpstreamMetrics {
    /// Registers the `upstream_*` metrics.
    pub(super) fn register(&self, registry: &mut Registry) {
        let up = registry.sub_registry_with_prefix("upstream");
        up.register(
            "messages",
            "Messages taken from an upstream broker, by outcome: stored (some or all of its \
             readings kept), rejected (every reading rejected), unroutable (no dataset), \
             malformed (not readings at all), retained (a broker's stored copy, not taken), \
             duplicate (sent again, stored already)",
            self.messages.clone(),
        );
        up.register(
            "acks",
            "Acknowledgements sent to an upstream broker (each after its readings were durable)",
            self.acks.clone(),
        );
        up.register(
            "in_flight",
            "Messages received from an upstream broker and not yet acknowledged",
            self.in_flight.clone(),
        );
        up.register(
            "connected",
            "1 while connected to the upstream broker",
            self.connected.clone(),
        );
        up.register(
            "reconnects",
            "Connections to an upstream broker lost or refused",
            self.reconnects.clone(),
        );
    }

    fn labels(name: &str) -> UpstreamLabels {
        UpstreamLabels {
            upstream: name.to_string(),
        }
    }

    /// Every series of upstream `name`, at 0.
    pub fn preset(&self, name: &str) {
        for outcome in OUTCOMES {
            self.messages.get_or_create_owned(&OutcomeLabels {
                upstream: name.to_string(),
                outcome,
            });
        }
        self.acks.get_or_create_owned(&Self::labels(name));
        self.in_flight.get_or_create_owned(&Self::labels(name));
        self.connected.get_or_create_owned(&Self::labels(name));
        self.reconnects.get_or_create_owned(&Self::labels(name));
    }

    pub fn message(&self, name: &str, outcome: &'static str) {
        self.messages
            .get_or_create(&OutcomeLabels {
                upstream: name.to_string(),
                outcome,
            })
            .inc();
    }

    pub fn ack(&self, name: &str) {
        self.acks.get_or_create(&Self::labels(name)).inc();
    }

    pub fn in_flight(&self, name: &str) -> Gauge {
        self.in_flight.get_or_create_owned(&Self::labels(name))
    }

    pub fn connected(&self, name: &str, up: bool) {
        self.connected
            .get_or_create(&Self::labels(name))
            .set(i64::from(up));
    }

    pub fn reconnect(&self, name: &str) {
        self.reconnects.get_or_create(&Self::labels(name)).inc();
    }
}
