//! The history queries' metrics: the hot store's size, and what queries read and return.
//! (Queries by route and status, and their latency, are the `http_*` metrics.)

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::labels::{OutcomeLabels, RouteLabels, SourceLabels};

/// The history queries' metrics (cheap to clone).
#[derive(Clone, Debug, Default)]
pub struct QueryMetrics {
    hot_bytes: Gauge,
    hot_readings: Gauge,
    rows_returned: Family<RouteLabels, Counter>,
    rows_scanned: Family<SourceLabels, Counter>,
    lake_files_read: Counter,
    lake_row_groups: Family<OutcomeLabels, Counter>,
}

/// What one read of the lake or the hot store went through.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Scanned {
    /// Readings read (decoded from a file, or held in a chunk the range overlaps).
    pub(crate) rows: u64,
    pub(crate) files: u64,
    pub(crate) row_groups_read: u64,
    /// Row groups skipped by their `ts` statistics.
    pub(crate) row_groups_pruned: u64,
}

impl std::ops::AddAssign for Scanned {
    fn add_assign(&mut self, o: Scanned) {
        self.rows += o.rows;
        self.files += o.files;
        self.row_groups_read += o.row_groups_read;
        self.row_groups_pruned += o.row_groups_pruned;
    }
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
            "rows_scanned",
            "Readings history queries read to answer, by source (lake: decoded from Parquet; \
             hot: held in chunks the range overlaps); compare with rows_returned",
            self.rows_scanned.clone(),
        );
        query.register(
            "lake_files_read",
            "Parquet files history queries opened (hour partitions outside the range are \
             never listed)",
            self.lake_files_read.clone(),
        );
        query.register(
            "lake_row_groups",
            "Parquet row groups history queries met, by outcome (read, or pruned by their \
             statistics: time, sensors)",
            self.lake_row_groups.clone(),
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

    /// Counts what one query window read: from the lake (`lake`) and the hot store (`hot`).
    pub(crate) fn scanned(&self, lake: Scanned, hot: Scanned) {
        let source = |source| SourceLabels { source };
        self.rows_scanned
            .get_or_create(&source("lake"))
            .inc_by(lake.rows);
        self.rows_scanned
            .get_or_create(&source("hot"))
            .inc_by(hot.rows);
        self.lake_files_read.inc_by(lake.files);
        let outcome = |outcome| OutcomeLabels { outcome };
        self.lake_row_groups
            .get_or_create(&outcome("read"))
            .inc_by(lake.row_groups_read);
        self.lake_row_groups
            .get_or_create(&outcome("pruned"))
            .inc_by(lake.row_groups_pruned);
    }
}
