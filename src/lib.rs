//! # citygate
//!
//! A gateway for city sensor data. Devices push live readings (traffic counts, weather,
//! energy meters, air quality) over HTTP and MQTT; citygate validates and rate-limits them,
//! keeps them in Parquet files (and, next, an InfluxDB-API store), and serves them as paid
//! live feeds and recent history. One binary, one TOML file.
//!
//! ## Data path
//!
//! ```text
//! devices ─HTTP (JSON, NDJSON, SenML)──┐
//! telegraf ─/api/v2/write, /write──────┼─► decode ─► validate ─► limit ─► submit ─► parquet sink ─► data/parquet/dataset=…/date=…/hour=…/*.parquet
//! devices ─MQTT 3.1.1 / 5──────────────┘      (rejects: reason per reading)   │
//!                                                         ack (2xx, PUBACK) ◄─┘  (the device is answered after this)
//! ```
//!
//! 1. **Intake** ([`ingest`]) authenticates the device key, reads the body (bounded in size
//!    and time, gzip allowed) or the MQTT publish, and calls the pipeline. The MQTT endpoint is
//!    citygate's own, on rumqttd's codec: PUBACKs leave in order once the pipeline has
//!    accepted each publish, with MQTT 5 reason codes for rejects.
//! 2. **Pipeline** ([`pipeline`]): `decode` (four wire formats into typed [`model::Reading`]s)
//!    and `validate` are pure functions; a rejected reading is data (`index`, `reason`), not an
//!    error of the request. `limit` takes the accepted readings from the device key's
//!    allowance (429 + `Retry-After` when over). `submit` hands them to the dataset's sink over
//!    a bounded queue and waits for its acknowledgement: nothing is acknowledged and dropped.
//! 3. **Sinks** ([`sink`]): the Parquet sink batches per dataset and writes Hive-partitioned
//!    zstd files, each crash-safely (temp name, fsync, rename). The WAL issue moves the
//!    acknowledgement to after an fsynced write-ahead log, which every sink then consumes.
//!
//! ## Module map
//!
//! ```text
//! main.rs        CLI: serve, check-config, keys, datasets, simulate
//! app.rs         builds components from Config, wires channels, shutdown order
//! config/        TOML + CITYGATE__SECTION__KEY overrides; validate() reports every problem
//! model.rs       Reading, Dataset, FieldSpec, Value (no I/O)
//! ingest/        http.rs: the intake routes (citygate JSON/NDJSON/SenML, InfluxDB v1/v2);
//!                mqtt/: the MQTT 3.1.1/5 endpoint (session, topics, wire helpers)
//! pipeline/      decode/ (json, ndjson, senml, line protocol), validate, limit, reject
//! sink/          parquet/ (batcher task; encode: layout and crash-safe file write)
//! market/        store (SQLite via sqlx, migrations), keys (device/provider keys, auth cache)
//! api/           router, the one error type, key extraction, accept loop, ops endpoints
//! telemetry.rs   tracing init, every metric
//! simulate.rs    the load and demo generator behind `citygate simulate`
//! ```

pub mod api;
pub mod app;
pub mod config;
pub mod ingest;
pub mod market;
pub mod model;
pub mod pipeline;
pub mod simulate;
pub mod sink;
pub mod telemetry;
pub mod wal;

pub use app::{App, AppError, StartOptions};
pub use config::Config;
