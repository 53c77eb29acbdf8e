//! Configuration: one TOML file plus `CITYGATE__SECTION__KEY` environment overrides.
//!
//! The `*Config` structs here are plain serde data with defaults; the running components
//! are built from them in `app.rs`. [`Config::load`] (in `load.rs`) reports every problem at
//! once (values of the wrong type, unknown keys, then semantic problems from
//! [`Config::validate`]) rather than stopping at the first, so an operator fixes a file in
//! one pass.
//!
//! The sections where data is kept (`storage`, `database`, `wal`, `parquet`, `influx`) are in
//! `storage.rs`, the paid side's (`market`, `payments`, `feed`) in `market.rs`.
//!
//! Unknown keys are errors. We detect them with `serde_ignored` instead of
//! `#[serde(deny_unknown_fields)]`, because the latter stops at the first unknown key.

mod cluster;
mod lake;
mod load;
mod market;
mod query;
mod storage;
mod topic;
mod units;
mod upstream;
pub(crate) mod validate;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use cluster::ClusterConfig;
pub use lake::LakeConfig;
pub use market::{FeedConfig, MarketConfig, PaymentProviderKind, PaymentsConfig, StripeConfig};
pub use query::QueryConfig;
pub use storage::{
    DatabaseConfig, DatabaseLocation, FsyncMode, InfluxConfig, ParquetConfig, StorageConfig,
    WalConfig,
};
pub use topic::Template as TopicTemplate;
pub use units::ByteSize;
pub use upstream::{BrokerAddress, TlsFiles, UpstreamConfig, UpstreamFormat};

use crate::model::{Dataset, FieldSpec, RateLimit};

/// The shipped configuration; also the embedded default when no file is given.
pub const DEFAULT_CONFIG: &str = include_str!("../../config/citygate.toml");
/// Where `serve` looks for a config file when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "config/citygate.toml";
/// Prefix of environment overrides: `CITYGATE__HTTP__LISTEN=0.0.0.0:8080`.
pub const ENV_PREFIX: &str = "CITYGATE__";

/// Everything a config load found wrong, each with the key it concerns.
#[derive(Debug, thiserror::Error)]
#[error("{} problem(s) in {}:\n  {}", .problems.len(), .source_name, .problems.join("\n  "))]
pub struct ConfigError {
    pub source_name: String,
    pub problems: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Config {
    pub http: HttpConfig,
    pub mqtt: MqttConfig,
    pub storage: StorageConfig,
    pub database: DatabaseConfig,
    pub pipeline: PipelineConfig,
    pub wal: WalConfig,
    pub parquet: ParquetConfig,
    pub influx: InfluxConfig,
    pub shutdown: ShutdownConfig,
    pub log: LogConfig,
    pub market: MarketConfig,
    pub payments: PaymentsConfig,
    pub feed: FeedConfig,
    pub query: QueryConfig,
    pub console: ConsoleConfig,
    /// `[[upstream]]`: MQTT brokers to take readings from.
    pub upstream: Vec<UpstreamConfig>,
    /// `[cluster]`: the nodes this one shares its readings with.
    pub cluster: ClusterConfig,
    /// `[lake]`: where the Parquet files are kept.
    pub lake: LakeConfig,
    pub datasets: Vec<DatasetConfig>,
}

/// `[console]`: the web console's optional map background.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct ConsoleConfig {
    /// Map tiles drawn under a dataset's sensors: an `https://` URL template with `{z}`,
    /// `{x}` and `{y}` (e.g. `https://tile.openstreetmap.org/{z}/{x}/{y}.png`). Empty: the
    /// sensors are drawn on a plain background and the page loads nothing from elsewhere.
    pub map_tiles: String,
    /// The credit the tile server asks for, shown on the map (e.g. `© OpenStreetMap
    /// contributors`).
    pub map_attribution: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct HttpConfig {
    /// Address to listen on, `host:port`; port 0 picks a free port.
    pub listen: String,
    /// Largest request body as sent (compressed or not). Bigger answers 413.
    pub max_body: ByteSize,
    /// Largest body after gzip decompression: the guard against gzip bombs.
    pub max_decompressed_body: ByteSize,
    /// Time a client has to send its request headers (slowloris guard).
    #[serde(with = "units::duration")]
    pub header_read_timeout: Duration,
    /// Time a client has to send its request body. Slower answers 408.
    #[serde(with = "units::duration")]
    pub request_timeout: Duration,
    /// Open connections at most; further clients wait in the listen backlog.
    pub max_connections: usize,
    /// Open connections at most from one IP address: past it, a new connection from there
    /// is answered 429 and closed, so one client cannot hold every slot.
    pub max_connections_per_ip: usize,
    /// The URL the public reaches this gateway at, for links in exports (the DCAT-AP
    /// catalog, checkout URLs), e.g. `https://data.city.example`. Empty: the address the
    /// server listens on (never a request's `Host`, which the client chooses).
    pub public_url: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:8080".into(),
            max_body: ByteSize::mib(10),
            max_decompressed_body: ByteSize::mib(64),
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_connections: 10_000,
            max_connections_per_ip: 1_000,
            public_url: String::new(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct MqttConfig {
    /// Run the MQTT endpoint at all.
    pub enabled: bool,
    /// Address of the MQTT endpoint (3.1.1 and 5 on one port), `host:port`.
    pub listen: String,
    /// Open connections at most; further clients wait in the listen backlog.
    pub max_connections: usize,
    /// Largest packet a client may send (bigger: disconnected) and that we announce.
    pub max_packet_size: ByteSize,
    /// A connection that sends no CONNECT within this time is closed.
    #[serde(with = "units::duration")]
    pub connect_timeout: Duration,
    /// Publishes in flight per connection (MQTT 5 "receive maximum"): past it, the
    /// connection is not read until acknowledgements catch up.
    pub max_inflight: u16,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            enabled: true,
            listen: "127.0.0.1:1883".into(),
            max_connections: 10_000,
            max_packet_size: ByteSize::mib(1),
            connect_timeout: Duration::from_secs(10),
            max_inflight: 64,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct PipelineConfig {
    /// Batches that may wait in front of each dataset's sink.
    pub queue_depth: usize,
    /// How long intake waits for room in a full queue before answering 503.
    #[serde(with = "units::duration")]
    pub queue_timeout: Duration,
    /// Rejected readings kept per dataset for `GET /v1/datasets/{id}/rejects`.
    pub rejects_kept: usize,
    /// Readings (accepted and rejected together) one request or MQTT publish may carry; a
    /// dataset's `rate_limit.burst` lowers it for that dataset. Past it: HTTP 413, MQTT 5
    /// PUBACK 0x97, and decoding stops there.
    pub max_readings: usize,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            queue_depth: 64,
            queue_timeout: Duration::from_secs(5),
            rejects_kept: 1000,
            max_readings: 100_000,
        }
    }
}

/// A secret from config or env, never printed. An environment value that reads as a number
/// or a boolean (a password of digits) is still the secret's text.
#[derive(Clone, Default)]
pub struct Secret(pub String);

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Integer(i64),
            Float(f64),
            Bool(bool),
        }
        Ok(Secret(match Raw::deserialize(d)? {
            Raw::Text(text) => text,
            Raw::Integer(n) => n.to_string(),
            Raw::Float(x) => x.to_string(),
            Raw::Bool(b) => b.to_string(),
        }))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() {
            "\"\""
        } else {
            "\"[redacted]\""
        })
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct ShutdownConfig {
    /// Time allowed, after SIGTERM / Ctrl-C, to finish requests and flush every sink.
    #[serde(with = "units::duration")]
    pub timeout: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct LogConfig {
    /// `text` for people, `json` for log shippers.
    pub format: LogFormat,
    /// A tracing filter; `RUST_LOG` wins when set.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_update_frequency() -> String {
    "continuous".into()
}

fn default_schema_version() -> u32 {
    1
}

fn default_max_future() -> Duration {
    Duration::from_secs(5 * 60)
}

fn default_max_age() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}

fn default_rate_limit() -> RateLimit {
    RateLimit {
        per_second: 500.0,
        burst: 5000,
    }
}

/// How often a dataset gets new data, as the catalog says it (and DCAT-AP's
/// `dct:accrualPeriodicity`, from the EU frequency vocabulary).
pub const UPDATE_FREQUENCIES: &[(&str, &str)] = &[
    ("continuous", "CONT"),
    ("hourly", "HOURLY"),
    ("daily", "DAILY"),
    ("weekly", "WEEKLY"),
    ("monthly", "MONTHLY"),
    ("irregular", "IRREG"),
];

/// One dataset: catalog facts and the schema its readings must follow.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct DatasetConfig {
    pub id: String,
    pub title: String,
    #[serde(default)]
    pub description: String,
    /// Who publishes the data, as shown in the catalog.
    #[serde(default)]
    pub publisher: String,
    /// The account that owns the dataset (mints its device keys, reads its rejects).
    pub provider: String,
    /// An SPDX licence id such as `CC-BY-4.0`, or `commercial`.
    pub licence: String,
    /// The credit line users of the data must show.
    #[serde(default)]
    pub attribution: String,
    /// One of [`UPDATE_FREQUENCIES`].
    #[serde(default = "default_update_frequency")]
    pub update_frequency: String,
    #[serde(default)]
    pub keywords: Vec<String>,
    #[serde(default = "default_schema_version")]
    pub schema_version: u32,
    #[serde(default = "default_true")]
    pub reject_unknown_fields: bool,
    #[serde(default = "default_max_future", with = "units::duration")]
    pub max_future: Duration,
    #[serde(default = "default_max_age", with = "units::duration")]
    pub max_age: Duration,
    #[serde(default = "default_rate_limit")]
    pub rate_limit: RateLimit,
    pub fields: Vec<FieldSpec>,
}

impl DatasetConfig {
    pub fn build(&self) -> Dataset {
        Dataset {
            id: self.id.clone(),
            title: self.title.clone(),
            description: self.description.clone(),
            publisher: self.publisher.clone(),
            provider: self.provider.clone(),
            licence: self.licence.clone(),
            attribution: self.attribution.clone(),
            schema_version: self.schema_version,
            fields: self.fields.clone(),
            reject_unknown_fields: self.reject_unknown_fields,
            max_future: self.max_future,
            max_age: self.max_age,
            rate_limit: self.rate_limit,
        }
    }
}

impl Config {
    /// Every semantic problem of this config, each naming its key. Empty when valid.
    pub fn validate(&self) -> Vec<String> {
        let positions: Vec<usize> = (0..self.datasets.len()).collect();
        validate::validate(self, &positions)
    }

    /// Where the marketplace database is: `[database] url`, else SQLite under `data_dir`.
    pub fn database(&self) -> DatabaseLocation {
        if self.database.url.0.is_empty() {
            DatabaseLocation::Sqlite(self.storage.data_dir.join("citygate.db"))
        } else {
            DatabaseLocation::Postgres(self.database.url.0.clone())
        }
    }

    /// Root of the Parquet lake.
    pub fn parquet_dir(&self) -> PathBuf {
        self.storage.data_dir.join("parquet")
    }

    /// The write-ahead log.
    pub fn wal_dir(&self) -> PathBuf {
        self.storage.data_dir.join("wal")
    }

    /// The configured datasets by id.
    pub fn datasets_by_id(&self) -> BTreeMap<&str, &DatasetConfig> {
        self.datasets.iter().map(|d| (d.id.as_str(), d)).collect()
    }
}

#[cfg(test)]
mod tests;
