//! The write-ahead log's metrics: size on disk, appends, fsyncs, refusals, and how far each
//! sink lags behind the log.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::labels::{ReasonLabels, SinkLabels};

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
    /// Registers the `wal_*` metrics.
    pub(super) fn register(&self, registry: &mut Registry) {
        let wal = registry.sub_registry_with_prefix("wal");
        wal.register(
            "bytes",
            "Bytes of write-ahead log on disk",
            self.bytes.clone(),
        );
        wal.register(
            "segments",
            "Write-ahead log segment files",
            self.segments.clone(),
        );
        wal.register("fsyncs", "Write-ahead log fsyncs", self.fsyncs.clone());
        wal.register(
            "fsync_duration_seconds",
            "Time per write-ahead log fsync",
            self.fsync_seconds.clone(),
        );
        wal.register(
            "records_appended",
            "Records (batches) appended",
            self.records.clone(),
        );
        wal.register(
            "bytes_appended",
            "Bytes appended",
            self.appended_bytes.clone(),
        );
        wal.register(
            "appends_refused",
            "Appends refused, by reason (full, io): their requests were not acknowledged",
            self.refused.clone(),
        );
    }

    /// Registers the `sink_lag_*` metrics: each sink's lag behind the log.
    pub(super) fn register_sink_lag(&self, registry: &mut Registry) {
        let sink = registry.sub_registry_with_prefix("sink");
        sink.register(
            "lag_records",
            "Write-ahead log records a sink has not yet made durable",
            self.lag_records.clone(),
        );
        sink.register(
            "lag_seconds",
            "Age of the oldest write-ahead log record a sink has not yet made durable",
            self.lag_seconds.clone(),
        );
    }

    /// The series of every refusal reason, at 0 (see `Metrics::preset`).
    pub(super) fn preset(&self) {
        for reason in ["full", "io"] {
            self.refused.get_or_create_owned(&ReasonLabels { reason });
        }
    }

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
