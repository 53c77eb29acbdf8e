//! Logs and metrics: tracing initialisation and every metric citygate exports at `/metrics`.
//!
//! Labels are bounded sets: dataset ids (from config), reject reasons, HTTP routes and status
//! codes. Never a device key, sensor id or client address: those are unbounded.
//! Hot paths hold pre-created per-dataset handles ([`DatasetMetrics`]) instead of looking
//! label sets up per request.

use std::io::IsTerminal;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};
use crate::pipeline::reject::Reason;

/// Starts logging: `RUST_LOG` when set, else the configured level. Safe to call twice (the
/// second call is ignored), which tests rely on.
pub fn init_tracing(log: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match log.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DatasetLabels {
    dataset: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RejectLabels {
    dataset: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PacketLabels {
    r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// Every metric of the process.
pub struct Metrics {
    registry: Registry,
    readings_accepted: Family<DatasetLabels, Counter>,
    readings_rejected: Family<RejectLabels, Counter>,
    requests_limited: Family<DatasetLabels, Counter>,
    parquet_files: Family<DatasetLabels, Counter>,
    parquet_rows: Family<DatasetLabels, Counter>,
    parquet_bytes: Family<DatasetLabels, Counter>,
    parquet_flush_errors: Family<DatasetLabels, Counter>,
    parquet_buffered: Family<DatasetLabels, Gauge>,
    http_requests: Family<HttpLabels, Counter>,
    http_duration: Family<RouteLabels, Histogram>,
    http_connections: Gauge,
    mqtt: MqttMetrics,
}

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
        self.packets_out
            .get_or_create(&PacketLabels { r#type: kind })
            .inc();
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

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("citygate");
        let m = Metrics {
            readings_accepted: Family::default(),
            readings_rejected: Family::default(),
            requests_limited: Family::default(),
            parquet_files: Family::default(),
            parquet_rows: Family::default(),
            parquet_bytes: Family::default(),
            parquet_flush_errors: Family::default(),
            parquet_buffered: Family::default(),
            http_requests: Family::default(),
            http_duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0001, 2.0, 18))
            }),
            http_connections: Gauge::default(),
            mqtt: MqttMetrics::default(),
            registry: Registry::default(),
        };
        registry.register(
            "readings_accepted",
            "Readings accepted and acknowledged, by dataset",
            m.readings_accepted.clone(),
        );
        registry.register(
            "readings_rejected",
            "Readings rejected, by dataset and reason",
            m.readings_rejected.clone(),
        );
        registry.register(
            "requests_rate_limited",
            "Requests refused by a device rate limit, by dataset",
            m.requests_limited.clone(),
        );
        registry.register(
            "parquet_files_written",
            "Parquet files written, by dataset",
            m.parquet_files.clone(),
        );
        registry.register(
            "parquet_rows_written",
            "Rows written to Parquet, by dataset",
            m.parquet_rows.clone(),
        );
        registry.register(
            "parquet_bytes_written",
            "Bytes of Parquet written, by dataset",
            m.parquet_bytes.clone(),
        );
        registry.register(
            "parquet_flush_errors",
            "Parquet flushes that failed and will be retried, by dataset",
            m.parquet_flush_errors.clone(),
        );
        registry.register(
            "parquet_buffered_rows",
            "Acknowledged rows waiting in memory for the next Parquet flush, by dataset",
            m.parquet_buffered.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests answered, by route and status",
            m.http_requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request handling time, by route",
            m.http_duration.clone(),
        );
        registry.register(
            "http_connections_open",
            "Open HTTP connections",
            m.http_connections.clone(),
        );
        let mqtt = registry.sub_registry_with_prefix("mqtt");
        mqtt.register(
            "connections_open",
            "Open MQTT connections",
            m.mqtt.connections_open.clone(),
        );
        mqtt.register(
            "connections",
            "MQTT CONNECTs answered, by outcome",
            m.mqtt.connections.clone(),
        );
        mqtt.register(
            "packets_received",
            "MQTT packets received, by type",
            m.mqtt.packets_in.clone(),
        );
        mqtt.register(
            "packets_sent",
            "MQTT packets sent, by type",
            m.mqtt.packets_out.clone(),
        );
        mqtt.register(
            "publishes",
            "MQTT PUBLISHes settled, by outcome (accepted, partial, or the reject reason)",
            m.mqtt.publishes.clone(),
        );
        mqtt.register(
            "inflight",
            "MQTT publishes received and not yet acknowledged",
            m.mqtt.inflight.clone(),
        );
        mqtt.register(
            "disconnects",
            "MQTT connections closed, by reason",
            m.mqtt.disconnects.clone(),
        );
        Metrics { registry, ..m }
    }

    pub fn mqtt(&self) -> &MqttMetrics {
        &self.mqtt
    }

    /// Handles for one dataset, created now so every series exists from the start.
    pub fn dataset(&self, id: &str) -> DatasetMetrics {
        let labels = DatasetLabels {
            dataset: id.to_string(),
        };
        let rejected = Reason::ALL.map(|reason| {
            self.readings_rejected.get_or_create_owned(&RejectLabels {
                dataset: id.to_string(),
                reason: reason.code(),
            })
        });
        DatasetMetrics {
            accepted: self.readings_accepted.get_or_create_owned(&labels),
            limited: self.requests_limited.get_or_create_owned(&labels),
            parquet_files: self.parquet_files.get_or_create_owned(&labels),
            parquet_rows: self.parquet_rows.get_or_create_owned(&labels),
            parquet_bytes: self.parquet_bytes.get_or_create_owned(&labels),
            parquet_flush_errors: self.parquet_flush_errors.get_or_create_owned(&labels),
            parquet_buffered: self.parquet_buffered.get_or_create_owned(&labels),
            rejected: Arc::new(rejected),
        }
    }

    /// Counts one answered HTTP request.
    pub fn http_request(&self, route: &str, status: u16, seconds: f64) {
        self.http_requests
            .get_or_create(&HttpLabels {
                route: route.to_string(),
                status,
            })
            .inc();
        self.http_duration
            .get_or_create(&RouteLabels {
                route: route.to_string(),
            })
            .observe(seconds);
    }

    pub fn http_connections(&self) -> &Gauge {
        &self.http_connections
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Pre-created metric handles of one dataset (cheap to clone: each is an `Arc`).
#[derive(Clone, Debug)]
pub struct DatasetMetrics {
    pub accepted: Counter,
    pub limited: Counter,
    pub parquet_files: Counter,
    pub parquet_rows: Counter,
    pub parquet_bytes: Counter,
    pub parquet_flush_errors: Counter,
    pub parquet_buffered: Gauge,
    rejected: Arc<[Counter; Reason::ALL.len()]>,
}

impl DatasetMetrics {
    pub fn rejected(&self, reason: Reason) -> &Counter {
        let index = Reason::ALL.iter().position(|r| *r == reason).unwrap_or(0);
        &self.rejected[index]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_dataset_series_without_device_labels() {
        let m = Metrics::new();
        let d = m.dataset("weather");
        d.accepted.inc_by(3);
        d.rejected(Reason::AboveMax).inc();
        m.http_request("/v1/datasets/{id}/readings", 204, 0.001);
        let text = m.render();
        assert!(
            text.contains("citygate_readings_accepted_total{dataset=\"weather\"} 3"),
            "{text}"
        );
        assert!(
            text.contains(
                "citygate_readings_rejected_total{dataset=\"weather\",reason=\"above_max\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "citygate_readings_rejected_total{dataset=\"weather\",reason=\"not_finite\"} 0"
            ),
            "every reason exists from the start: {text}"
        );
        assert!(text.contains(
            "citygate_http_requests_total{route=\"/v1/datasets/{id}/readings\",status=\"204\"} 1"
        ));
    }
}
