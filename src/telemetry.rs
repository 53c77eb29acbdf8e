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
use crate::model::Reason;

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
    http_connections_refused: Counter,
    mqtt: MqttMetrics,
    wal: WalMetrics,
    influx: InfluxMetrics,
    feed: FeedMetrics,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProtocolLabels {
    protocol: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SessionEndLabels {
    protocol: String,
    reason: String,
}

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkLabels {
    sink: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: String,
}

/// The write-ahead log's metrics (cheap to clone).
#[derive(Clone, Debug)]
pub struct WalMetrics {
    bytes: Gauge,
    segments: Gauge,
    fsyncs: Counter,
    fsync_seconds: Histogram,
    records: Counter,
    appended_bytes: Counter,
    refused: Family<ReasonLabels, Counter>,
    lag_records: Family<SinkLabels, Gauge>,
    lag_seconds: Family<SinkLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
}

impl Default for WalMetrics {
    fn default() -> Self {
        WalMetrics {
            bytes: Gauge::default(),
            segments: Gauge::default(),
            fsyncs: Counter::default(),
            fsync_seconds: Histogram::new(exponential_buckets(0.00005, 2.0, 16)),
            records: Counter::default(),
            appended_bytes: Counter::default(),
            refused: Family::default(),
            lag_records: Family::default(),
            lag_seconds: Family::default(),
        }
    }
}

impl WalMetrics {
    pub fn set_size(&self, bytes: u64, segments: usize) {
        self.bytes.set(bytes as i64);
        self.segments.set(segments as i64);
    }

    /// Fsyncs so far.
    pub fn fsyncs(&self) -> u64 {
        self.fsyncs.get()
    }

    pub fn fsync(&self, took: std::time::Duration) {
        self.fsyncs.inc();
        self.fsync_seconds.observe(took.as_secs_f64());
    }

    pub fn appended(&self, records: u64, bytes: u64) {
        self.records.inc_by(records);
        self.appended_bytes.inc_by(bytes);
    }

    /// An append refused: `full` or `io`.
    pub fn refused(&self, reason: &'static str) {
        self.refused.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// How far a sink is behind the log: records, and seconds since the oldest record it has
    /// not yet made durable was appended (0 when caught up).
    pub fn lag(&self, sink: &str, records: u64, seconds: f64) {
        let labels = SinkLabels {
            sink: sink.to_string(),
        };
        self.lag_records.get_or_create(&labels).set(records as i64);
        self.lag_seconds.get_or_create(&labels).set(seconds);
    }
}

/// The InfluxDB sink's metrics (cheap to clone).
#[derive(Clone, Debug, Default)]
pub struct InfluxMetrics {
    writes: Family<StatusLabels, Counter>,
    retries: Counter,
    poison: Counter,
    points: Counter,
}

impl InfluxMetrics {
    /// A write request answered: the HTTP status, or `error` when there was no answer.
    pub fn write(&self, status: &str) {
        self.writes
            .get_or_create(&StatusLabels {
                status: status.to_string(),
            })
            .inc();
    }

    pub fn retry(&self) {
        self.retries.inc();
    }

    pub fn poison(&self, points: u64) {
        self.poison.inc_by(points);
    }

    pub fn written(&self, points: u64) {
        self.points.inc_by(points);
    }

    /// Totals so far: (points written, retries, poison points).
    pub fn totals(&self) -> (u64, u64, u64) {
        (self.points.get(), self.retries.get(), self.poison.get())
    }
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
            http_connections_refused: Counter::default(),
            mqtt: MqttMetrics::default(),
            wal: WalMetrics::default(),
            influx: InfluxMetrics::default(),
            feed: FeedMetrics::default(),
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
        registry.register(
            "http_connections_refused",
            "HTTP connections answered 429 and closed: their address held its share already",
            m.http_connections_refused.clone(),
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
        let wal = registry.sub_registry_with_prefix("wal");
        wal.register(
            "bytes",
            "Bytes of write-ahead log on disk",
            m.wal.bytes.clone(),
        );
        wal.register(
            "segments",
            "Write-ahead log segment files",
            m.wal.segments.clone(),
        );
        wal.register("fsyncs", "Write-ahead log fsyncs", m.wal.fsyncs.clone());
        wal.register(
            "fsync_duration_seconds",
            "Time per write-ahead log fsync",
            m.wal.fsync_seconds.clone(),
        );
        wal.register(
            "records_appended",
            "Records (batches) appended",
            m.wal.records.clone(),
        );
        wal.register(
            "bytes_appended",
            "Bytes appended",
            m.wal.appended_bytes.clone(),
        );
        wal.register(
            "appends_refused",
            "Appends refused, by reason (full, io): their requests were not acknowledged",
            m.wal.refused.clone(),
        );
        let sink = registry.sub_registry_with_prefix("sink");
        sink.register(
            "lag_records",
            "Write-ahead log records a sink has not yet made durable",
            m.wal.lag_records.clone(),
        );
        sink.register(
            "lag_seconds",
            "Age of the oldest write-ahead log record a sink has not yet made durable",
            m.wal.lag_seconds.clone(),
        );
        let influx = registry.sub_registry_with_prefix("influx");
        influx.register(
            "writes",
            "Write requests to the InfluxDB-API store, by HTTP status (or error)",
            m.influx.writes.clone(),
        );
        influx.register(
            "retries",
            "Write requests retried",
            m.influx.retries.clone(),
        );
        influx.register(
            "poison_points",
            "Points the store refused as invalid (recorded as rejects)",
            m.influx.poison.clone(),
        );
        influx.register(
            "points_written",
            "Points written to the store",
            m.influx.points.clone(),
        );
        let feed = registry.sub_registry_with_prefix("feed");
        feed.register(
            "sessions",
            "Live feed sessions open, by protocol",
            m.feed.sessions.clone(),
        );
        feed.register(
            "sessions_ended",
            "Live feed sessions ended, by protocol and reason (slow_consumer, key_revoked, not_entitled, gone, shutdown)",
            m.feed.ended.clone(),
        );
        feed.register(
            "lag_seconds",
            "Time from a batch's acknowledgement to a subscriber session taking it",
            m.feed.lag.clone(),
        );
        feed.register(
            "deliveries",
            "Readings and aggregates delivered to subscribers, by protocol",
            m.feed.deliveries.clone(),
        );
        let m = Metrics { registry, ..m };
        m.preset();
        m
    }

    /// Series whose labels are known before anything happens exist from the start, at 0
    /// (the Prometheus convention: a rate over a series that appears late is wrong, and
    /// whoever looks at a fresh gateway finds what the README names). Per-dataset series
    /// are made in [`Metrics::dataset`].
    fn preset(&self) {
        for reason in ["full", "io"] {
            self.wal
                .refused
                .get_or_create_owned(&ReasonLabels { reason });
        }
        for status in ["204", "error"] {
            self.influx.writes.get_or_create_owned(&StatusLabels {
                status: status.into(),
            });
        }
        self.mqtt
            .connections
            .get_or_create_owned(&ReasonLabels { reason: "accepted" });
        for reason in ["accepted", "partial"] {
            self.mqtt
                .publishes
                .get_or_create_owned(&ReasonLabels { reason });
        }
        for protocol in ["sse", "ws", "mqtt"] {
            let labels = ProtocolLabels {
                protocol: protocol.into(),
            };
            self.feed.sessions.get_or_create_owned(&labels);
            self.feed.deliveries.get_or_create_owned(&labels);
        }
    }

    pub fn feed(&self) -> &FeedMetrics {
        &self.feed
    }

    pub fn mqtt(&self) -> &MqttMetrics {
        &self.mqtt
    }

    pub fn wal(&self) -> &WalMetrics {
        &self.wal
    }

    pub fn influx(&self) -> &InfluxMetrics {
        &self.influx
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

    pub fn http_connections_refused(&self) -> &Counter {
        &self.http_connections_refused
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

    #[test]
    fn known_label_sets_are_exposed_at_zero_before_any_event() {
        let text = Metrics::new().render();
        for series in [
            "citygate_wal_appends_refused_total{reason=\"full\"} 0",
            "citygate_wal_appends_refused_total{reason=\"io\"} 0",
            "citygate_influx_writes_total{status=\"204\"} 0",
            "citygate_mqtt_publishes_total{reason=\"accepted\"} 0",
            "citygate_feed_deliveries_total{protocol=\"sse\"} 0",
            "citygate_feed_sessions{protocol=\"mqtt\"} 0",
        ] {
            assert!(text.contains(series), "{series} missing:\n{text}");
        }
    }
}

/// Whether a log line about refused client input may be written now: at most
/// [`REFUSAL_LOGS_PER_SECOND`] a second across the process, so a client sending refusable
/// input in a loop cannot fill the disk or drown the operator's logs (the metrics count
/// every refusal; the log shows examples).
pub(crate) fn refusal_log_allowed() -> bool {
    use std::sync::atomic::{AtomicU64, Ordering};
    static WINDOW: AtomicU64 = AtomicU64::new(0);
    let second = crate::model::now_micros().max(0) as u64 / 1_000_000;
    // The high 40 bits hold the second, the low 24 the lines written in it.
    let current = WINDOW.load(Ordering::Relaxed);
    if current >> 24 != second {
        let fresh = (second << 24) | 1;
        return WINDOW
            .compare_exchange(current, fresh, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok();
    }
    (WINDOW.fetch_add(1, Ordering::Relaxed) & 0xFF_FFFF) < REFUSAL_LOGS_PER_SECOND
}

/// See [`refusal_log_allowed`].
pub(crate) const REFUSAL_LOGS_PER_SECOND: u64 = 20;

/// Client-given text as a log field: at most 128 bytes (a topic may be 64 KiB).
pub(crate) fn log_text(text: &str) -> &str {
    crate::model::truncate(text, 128)
}

#[cfg(test)]
mod refusal_log_tests {
    #[test]
    fn refusal_logs_are_bounded_per_second() {
        let allowed = (0..1000).filter(|_| super::refusal_log_allowed()).count() as u64;
        // A second may turn over during the loop: at most two windows' worth.
        assert!(allowed >= 1, "{allowed}");
        assert!(allowed <= 2 * super::REFUSAL_LOGS_PER_SECOND, "{allowed}");
        assert_eq!(super::log_text(&"x".repeat(70_000)).len(), 128);
    }
}
