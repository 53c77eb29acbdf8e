//! `[query]`: the history planners read (the hot store's size, and what one query may cost).

use std::time::Duration;

use serde::Deserialize;

use super::units::{self, ByteSize};
use crate::model::RateLimit;

#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct QueryConfig {
    /// Readings of this recent past stay in memory (the hot store); older ones are read
    /// from the Parquet files.
    #[serde(with = "units::duration")]
    pub hot_window: Duration,
    /// The hot store's size at most (plus what the Parquet sinks have not written yet,
    /// which it cannot let go of): past it the oldest readings leave memory first.
    pub hot_max_bytes: ByteSize,
    /// Rows (readings or buckets) one answer holds at most.
    pub max_rows: usize,
    /// The longest `from..to` one query may ask.
    #[serde(with = "units::duration")]
    pub max_range: Duration,
    /// How far back `latest` looks for a sensor's last reading.
    #[serde(with = "units::duration")]
    pub latest_lookback: Duration,
    /// A query still running after this is stopped (503).
    #[serde(with = "units::duration")]
    pub timeout: Duration,
    /// Queries running at once; more wait (up to 5 s, then 503).
    pub max_concurrent: usize,
    /// Queries one key may make: per second, and in a burst (past it: 429 + Retry-After).
    pub rate_limit: RateLimit,
}

impl Default for QueryConfig {
    fn default() -> Self {
        QueryConfig {
            hot_window: Duration::from_secs(6 * 3600),
            hot_max_bytes: ByteSize::mib(512),
            max_rows: 10_000,
            max_range: Duration::from_secs(31 * 24 * 3600),
            latest_lookback: Duration::from_secs(24 * 3600),
            timeout: Duration::from_secs(30),
            max_concurrent: 4,
            rate_limit: RateLimit {
                per_second: 20.0,
                burst: 100,
            },
        }
    }
}
