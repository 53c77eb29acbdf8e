//! The InfluxDB sink's metrics: write requests by status, retries, poison points and points
//! written.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::labels::StatusLabels;

/// The InfluxDB sink's metrics (cheap to clone).
#[derive(Clone, Debug, Default)]
pub struct InfluxMetrics {
    writes: Family<StatusLabels, Counter>,
    retries: Counter,
    poison: Counter,
    points: Counter,
}

impl InfluxMetrics {
    /// Registers the `influx_*` metrics.
    pub(super) fn register(&self, registry: &mut Registry) {
        let influx = registry.sub_registry_with_prefix("influx");
        influx.register(
            "writes",
            "Write requests to the InfluxDB-API store, by HTTP status (or error)",
            self.writes.clone(),
        );
        influx.register("retries", "Write requests retried", self.retries.clone());
        influx.register(
            "poison_points",
            "Points the store refused as invalid (recorded as rejects)",
            self.poison.clone(),
        );
        influx.register(
            "points_written",
            "Points written to the store",
            self.points.clone(),
        );
    }

    /// The series of the statuses every running sink sees, at 0 (see `Metrics::preset`).
    pub(super) fn preset(&self) {
        for status in ["204", "error"] {
            self.writes.get_or_create_owned(&StatusLabels {
                status: status.into(),
            });
        }
    }

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
