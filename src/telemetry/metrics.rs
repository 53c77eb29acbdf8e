//! The process's metric registry, [`Metrics`]: the intake, Parquet and HTTP metrics it holds
//! itself, the groups it holds (MQTT, WAL, InfluxDB, feed), their registration in exposition
//! order, and the per-dataset handles of [`DatasetMetrics`].

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::labels::{DatasetLabels, HttpLabels, RejectLabels, RouteLabels};
use super::{
    ClusterMetrics, FeedMetrics, InfluxMetrics, MqttMetrics, QueryMetrics, UpstreamMetrics,
    WalMetrics,
};
use crate::model::Reason;

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
    query: QueryMetrics,
    upstream: UpstreamMetrics,
    cluster: ClusterMetrics,
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
            query: QueryMetrics::default(),
            upstream: UpstreamMetrics::default(),
            cluster: ClusterMetrics::default(),
            registry: Registry::default(),
        };
        // The exposition lists metrics in registration order: keep this order.
        m.register_intake(&mut registry);
        m.register_parquet(&mut registry);
        m.register_http(&mut registry);
        m.mqtt.register(&mut registry);
        m.wal.register(&mut registry);
        m.wal.register_sink_lag(&mut registry);
        m.influx.register(&mut registry);
        m.feed.register(&mut registry);
        m.query.register(&mut registry);
        m.upstream.register(&mut registry);
        m.cluster.register(&mut registry);
        let m = Metrics { registry, ..m };
        m.preset();
        m
    }

    /// Registers the per-dataset intake metrics: readings accepted and rejected, requests
    /// rate-limited.
    fn register_intake(&self, registry: &mut Registry) {
        registry.register(
            "readings_accepted",
            "Readings accepted and acknowledged, by dataset",
            self.readings_accepted.clone(),
        );
        registry.register(
            "readings_rejected",
            "Readings rejected, by dataset and reason",
            self.readings_rejected.clone(),
        );
        registry.register(
            "requests_rate_limited",
            "Requests refused by a device rate limit, by dataset",
            self.requests_limited.clone(),
        );
    }

    /// Registers the per-dataset `parquet_*` metrics.
    fn register_parquet(&self, registry: &mut Registry) {
        registry.register(
            "parquet_files_written",
            "Parquet files written, by dataset",
            self.parquet_files.clone(),
        );
        registry.register(
            "parquet_rows_written",
            "Rows written to Parquet, by dataset",
            self.parquet_rows.clone(),
        );
        registry.register(
            "parquet_bytes_written",
            "Bytes of Parquet written, by dataset",
            self.parquet_bytes.clone(),
        );
        registry.register(
            "parquet_flush_errors",
            "Parquet flushes that failed and will be retried, by dataset",
            self.parquet_flush_errors.clone(),
        );
        registry.register(
            "parquet_buffered_rows",
            "Acknowledged rows waiting in memory for the next Parquet flush, by dataset",
            self.parquet_buffered.clone(),
        );
    }

    /// Registers the `http_*` metrics: requests, their duration, connections.
    fn register_http(&self, registry: &mut Registry) {
        registry.register(
            "http_requests",
            "HTTP requests answered, by route and status",
            self.http_requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request handling time, by route",
            self.http_duration.clone(),
        );
        registry.register(
            "http_connections_open",
            "Open HTTP connections",
            self.http_connections.clone(),
        );
        registry.register(
            "http_connections_refused",
            "HTTP connections answered 429 and closed: their address held its share already",
            self.http_connections_refused.clone(),
        );
    }

    /// Series whose labels are known before anything happens exist from the start, at 0
    /// (the Prometheus convention: a rate over a series that appears late is wrong, and
    /// whoever looks at a fresh gateway finds what the README names). Per-dataset series
    /// are made in [`Metrics::dataset`].
    fn preset(&self) {
        self.wal.preset();
        self.influx.preset();
        self.mqtt.preset();
        self.feed.preset();
    }

    pub fn feed(&self) -> &FeedMetrics {
        &self.feed
    }

    pub fn query(&self) -> &QueryMetrics {
        &self.query
    }

    pub fn upstream(&self) -> &UpstreamMetrics {
        &self.upstream
    }

    pub fn cluster(&self) -> &ClusterMetrics {
        &self.cluster
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
        &self.rejected[reason.index()]
    }
}
