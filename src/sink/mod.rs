//! Sinks: consumers of the write-ahead log, each with its own checkpoint. `parquet` writes
//! the Hive-partitioned lake, `influx` an InfluxDB v2 API store; `lake` is where the Parquet
//! files are kept (the data directory, or an S3-compatible object store).

pub(crate) mod influx;
pub mod lake;
pub mod parquet;
