//! Sinks: consumers of acknowledged readings. Parquet today; InfluxDB with the WAL issue,
//! when every sink becomes a WAL consumer with its own checkpoint.

pub mod parquet;
