//! The history queries' metrics: the hot store's size, and what queries read and return.
//! (Queries by route and status, and their latency, are the `http_*` metrics.)

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::labels::RouteLabels;

/// The history queries' metrics (cheap to clone).
#[derive(Clone, Debug, Default)]
pub struct QueryMetrics {
    hot_bytes: Gauge,
    hot_readings: Gauge,
    rows_returned: Family<RouteLabels, Counter>,
    lake_files_read: Counter,
}

impl QueryMetrics {
    /// Registers the `query_*` metrics.
    pub(super) fn register(&self, registry: &mut Registry) {
        let query = registry.sub_registry_with_prefix("query");
        query.register(
            "hot_store_bytes",
            "Bytes of readings the hot store holds in columnar chunks",
            self.hot_bytes.clone(),
        );
        query.register(
            "hot_store_readings",
            "Readings the hot store holds (chunks and not yet sealed)",
            self.hot_readings.clone(),
        );
        query.register(
            "rows_returned",
            "Readings or buckets returned by history queries, by route",
            self.rows_returned.clone(),
        );
        query.register(
            "lake_files_read",
            "Parquet files history queries read (after pruning)",
            self.lake_files_read.clone(),
        );
    }

    pub(crate) fn set_hot(&self, bytes: usize, readings: usize) {
        self.hot_bytes.set(bytes as i64);
        self.hot_readings.set(readings as i64);
    }

    pub(crate) fn returned(&self, route: &str, rows: usize) {
        self.rows_returned
            .get_or_create(&RouteLabels {
                route: route.to_string(),
            })
            .inc_by(rows as u64);
    }

    pub(crate) fn file_read(&self) {
        self.lake_files_read.inc();
    }
}
