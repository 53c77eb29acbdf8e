//! Logs and metrics: tracing initialisation and every metric citygate exports at `/metrics`.
//!
//! Labels are bounded sets: dataset ids (from config), reject reasons, HTTP routes and status
//! codes. Never a device key, sensor id or client address: those are unbounded.
//! Hot paths hold pre-created per-dataset handles ([`DatasetMetrics`]) instead of looking
//! label sets up per request.
//!
//! This file holds tracing initialisation and the rate limit on logging refused input. The
//! registry is [`Metrics`] (`metrics.rs`); each group it holds has its own file (`mqtt`,
//! `wal`, `influx`, `feed`), and the label sets they share are in `labels.rs`.

mod cluster;
mod feed;
mod influx;
mod labels;
mod metrics;
mod mqtt;
mod query;
#[cfg(test)]
mod tests;
mod upstream;
mod wal;

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

pub use cluster::ClusterMetrics;
pub use feed::FeedMetrics;
pub use influx::InfluxMetrics;
pub use metrics::{DatasetMetrics, Metrics};
pub use mqtt::MqttMetrics;
pub use query::QueryMetrics;
pub(crate) use query::Scanned;
pub use upstream::UpstreamMetrics;
pub use wal::WalMetrics;

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
