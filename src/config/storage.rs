//! Where citygate keeps data: the `[storage]` directory, the marketplace `[database]`, the
//! write-ahead log (`[wal]`) and the sinks it feeds (`[parquet]`, `[influx]`).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{ByteSize, Secret, units};

#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct StorageConfig {
    /// Root of everything citygate writes: the database, Parquet files.
    pub data_dir: PathBuf,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            data_dir: PathBuf::from("data"),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct DatabaseConfig {
    /// The marketplace database: empty for SQLite at `{data_dir}/citygate.db`, or a
    /// `postgres://user:password@host:port/db` URL (also `CITYGATE__DATABASE__URL`).
    pub url: Secret,
    /// Pooled connections at most.
    pub max_connections: u32,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: Secret::default(),
            max_connections: 8,
        }
    }
}

/// Where the marketplace database is.
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseLocation {
    Sqlite(PathBuf),
    Postgres(String),
}

impl std::fmt::Display for DatabaseLocation {
    /// The SQLite file, or the PostgreSQL host and database (never the password).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DatabaseLocation::Sqlite(path) => write!(f, "SQLite {}", path.display()),
            DatabaseLocation::Postgres(url) => match reqwest::Url::parse(url) {
                Ok(u) => write!(
                    f,
                    "PostgreSQL {}:{}{}",
                    u.host_str().unwrap_or("?"),
                    u.port().unwrap_or(5432),
                    u.path()
                ),
                Err(_) => f.write_str("PostgreSQL (unparseable URL)"),
            },
        }
    }
}

impl std::fmt::Debug for DatabaseLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// When the WAL writer fsyncs (see `wal` for the loss window of each).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncMode {
    /// Before every acknowledgement (group commit). Nothing acknowledged is ever lost.
    Always,
    /// Every `fsync_interval`; acknowledgements do not wait for it.
    Interval,
    /// Never explicitly; the kernel writes back when it likes.
    Never,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct WalConfig {
    pub fsync: FsyncMode,
    #[serde(with = "units::duration")]
    pub fsync_interval: Duration,
    /// A segment file is closed and a new one begun at about this size.
    pub segment_bytes: ByteSize,
    /// The log's disk quota: past it, intake stops acknowledging (503 / MQTT 0x97) until
    /// the sinks catch up and segments are released.
    pub max_bytes: ByteSize,
    /// Appends that may wait for the writer; waiting longer than `pipeline.queue_timeout`
    /// for a place answers 503.
    pub queue_depth: usize,
}

impl Default for WalConfig {
    fn default() -> Self {
        WalConfig {
            fsync: FsyncMode::Always,
            fsync_interval: Duration::from_millis(100),
            segment_bytes: ByteSize::mib(64),
            max_bytes: ByteSize(10 << 30),
            queue_depth: 4096,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct ParquetConfig {
    /// Flush a dataset's buffer once it holds this many readings...
    pub max_rows: usize,
    /// ...or about this many bytes in memory...
    pub max_bytes: ByteSize,
    /// ...or once its oldest reading has waited this long.
    #[serde(with = "units::duration")]
    pub max_age: Duration,
    /// zstd level, 1 (fast) to 22 (small).
    pub zstd_level: i32,
}

impl Default for ParquetConfig {
    fn default() -> Self {
        ParquetConfig {
            max_rows: 100_000,
            max_bytes: ByteSize::mib(64),
            max_age: Duration::from_secs(10),
            zstd_level: 1,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct InfluxConfig {
    /// Write every dataset to an InfluxDB v2 API store too.
    pub enabled: bool,
    /// Base URL of the store, e.g. `http://127.0.0.1:8086`.
    pub url: String,
    pub org: String,
    pub bucket: String,
    /// API token; better from `CITYGATE__INFLUX__TOKEN` or `token_file` than in this file.
    pub token: Secret,
    /// A file holding the token (read at start; surrounding whitespace ignored).
    pub token_file: Option<PathBuf>,
    /// Points per write request at most...
    pub batch_size: usize,
    /// ...and the longest a point waits for its batch to fill.
    #[serde(with = "units::duration")]
    pub batch_age: Duration,
    /// Write requests in flight at once (the store parses them on as many cores).
    pub parallel_writes: usize,
    #[serde(with = "units::duration")]
    pub request_timeout: Duration,
    /// Longest pause between retries of a failing write.
    #[serde(with = "units::duration")]
    pub max_retry_delay: Duration,
}

impl Default for InfluxConfig {
    fn default() -> Self {
        InfluxConfig {
            enabled: false,
            url: "http://127.0.0.1:8086".into(),
            org: "city".into(),
            bucket: "citygate".into(),
            token: Secret::default(),
            token_file: None,
            batch_size: 5000,
            batch_age: Duration::from_secs(1),
            parallel_writes: 4,
            request_timeout: Duration::from_secs(10),
            max_retry_delay: Duration::from_secs(30),
        }
    }
}

impl InfluxConfig {
    /// The token: `token` if set, else the contents of `token_file`.
    pub fn resolve_token(&self) -> std::io::Result<String> {
        if !self.token.0.is_empty() {
            return Ok(self.token.0.clone());
        }
        match &self.token_file {
            Some(path) => Ok(std::fs::read_to_string(path)?.trim().to_string()),
            None => Ok(String::new()),
        }
    }
}
