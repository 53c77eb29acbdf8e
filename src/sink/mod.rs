//! Sinks: consumers of the write-ahead log, each with its own checkpoint. `parquet` writes
//! the Hive-partitioned lake, `influx` an InfluxDB v2 API store.

pub(crate) mod influx;
pub mod parquet;
