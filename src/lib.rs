//! # citygate
//!
//! A gateway for city sensor data. Devices push live readings (traffic counts, weather,
//! energy meters, air quality) over HTTP and MQTT; citygate validates and rate-limits them,
//! writes them to a write-ahead log, and from there into Parquet files and an InfluxDB-API
//! store. It is the data plane of a city data marketplace ([`market`]): a catalog,
//! accounts and keys, plans, subscriptions paid through Stripe or recorded by an admin, one
//! entitlement check for every delivery path, metering, invoices and provider statements.
//! Subscribers receive what they may have live ([`feed`]) over SSE, WebSocket and MQTT.
//! One binary, one TOML file.
//!
//! ## Data path
//!
//! ```text
//! devices ─HTTP (JSON, NDJSON, SenML)──┐
//! telegraf ─/api/v2/write, /write──────┼─► decode ─► validate ─► limit ─► WAL append + fsync ─┬─► parquet sink ─► data/parquet/dataset=…/date=…/hour=…/*.parquet
//! devices ─MQTT 3.1.1 / 5──────────────┤      (rejects: reason per reading)        │           ├─► influx sink ──► InfluxDB / VictoriaMetrics
//! brokers ─[[upstream]] (MQTT)─────────┘                                           │           │
//!                                                          ack (2xx, PUBACK) ◄─────┤           │  (the device is answered after the fsync)
//!                                                                     feed hub ◄───┤  (acknowledged readings) ─► sessions: entitlement, filters,
//!                                                                                  │   tier, metering ─► SSE / WebSocket / MQTT subscribers
//!                                                                    hot store ◄───┘  (the last hours, Arrow chunks) ─┬─► query: history, latest,
//!                                                        parquet files below the hot store's boundary ────────────────┘   aggregate ─► planners
//! ```
//!
//! 1. **Intake**: the HTTP routes ([`api::intake`]) and the MQTT endpoint ([`mqtt`])
//!    authenticate the device key, read the body (bounded in size and time, gzip allowed) or
//!    the MQTT publish, and call the pipeline. The MQTT endpoint is citygate's own, on
//!    rumqttd's codec: PUBACKs leave in order once the pipeline has accepted each publish,
//!    with MQTT 5 reason codes for rejects; the same endpoint serves subscribers' feeds.
//!    Readings also come from brokers citygate does not run ([`upstream`]: a city's broker
//!    cluster, a LoRaWAN network server), acknowledged to the broker once durable.
//! 2. **Pipeline** ([`pipeline`]): `decode` (four wire formats into typed [`model::Reading`]s)
//!    and `validate` are pure functions; a rejected reading is data (`index`, `reason`), not an
//!    error of the request. `limit` takes the accepted readings from the device key's
//!    allowance (429 + `Retry-After` when over). `deliver` appends them to the log and returns
//!    once the fsync covering them is done: nothing is acknowledged that the log does not hold
//!    (a full log or an I/O error fails the request instead).
//! 3. **Write-ahead log** ([`wal`]): segments of CRC-checked records, group commit on one
//!    writer thread, a checkpoint per consumer, recovery that cuts a torn tail and refuses
//!    silent skipping of corruption. It is the source of truth for every sink. Every sink
//!    reads it through one contract, [`wal::Consumer`]: while it keeps up, from an in-memory
//!    tail of the committed records as intake decoded them (shared, not copied); while it is
//!    behind or replaying after a restart, from the segments on disk.
//! 4. **Sinks** ([`sink`]) are log consumers: the Parquet sink writes Hive-partitioned zstd
//!    files per dataset, named by the log range they hold so a replay rewrites rather than
//!    duplicates, on disk or uploaded to object storage before its checkpoint moves; the
//!    influx sink batches line protocol to an InfluxDB v2 API with retries,
//!    and splits out poison points. Each moves its checkpoint once its store has the data.
//! 5. **Live feeds** ([`feed`]): acknowledged readings go to a hub that numbers them per
//!    dataset, keeps recent history for resume, and fans out to subscriber sessions; each
//!    session asks [`market::Market::entitlement`] at start and every `[feed] recheck`,
//!    applies filters and its plan's tier, meters what it delivers, and is closed when its
//!    client falls behind.
//! 6. **History** ([`query`]): the hot store, one more log consumer, holds each dataset's
//!    last hours in memory as Arrow chunks, visible once acknowledged; older readings are
//!    read from the Parquet files below its boundary (a checkpoint the Parquet sink once
//!    stored), so each reading is read once. Raw pages by cursor, latest per sensor and time
//!    buckets, in JSON, NDJSON or CSV, under the same entitlement as the feeds.
//! 7. **Other nodes** ([`cluster`]): with `[cluster]`, one more log consumer publishes each
//!    record to the broker the nodes share, and the other nodes' records come back into the
//!    hub and the hot store (beside this node's, never in its log or lake), so every node's
//!    feeds and recent history see the whole city.
//!
//! ## Module map
//!
//! ```text
//! main.rs, cli/  the binary: serve, check-config, datasets, simulate, query (history from a
//!                gateway); cli/admin: accounts, keys, plans, invoices on the database or
//!                through a gateway's API (--api)
//! app.rs         builds components from Config, wires channels, shutdown order
//! config/        TOML + CITYGATE__SECTION__KEY overrides; every problem reported at once
//! model.rs       Reading, Dataset, FieldSpec, Value, reject Reason (no I/O)
//! calendar.rs    UTC dates and months: partitions, subscription periods, invoice months
//! mqtt/          the MQTT 3.1.1/5 endpoint for devices and subscribers (session:
//!                handshake, publish settling, follow: subscriber feeds; topics, wire helpers)
//! registry/      every dataset and what is kept about it while running: recent rejects,
//!                quality figures, metrics (App::start adds each, at start and over the API)
//! pipeline/      decode/ (json, ndjson, senml, line protocol), validate, limit, reject
//! wal/           the write-ahead log: record format, segments and recovery, group-commit
//!                writer thread, tail (committed records in memory), consumer (the one way
//!                sinks read: memory while caught up, disk while behind), checkpoints
//! sink/          parquet/ (log consumer per dataset; encode: layout, crash-safe file write),
//!                influx/ (log consumer: line protocol, parallel writes, retries, poison),
//!                lake (where the files are: the data directory, or S3-compatible object
//!                storage shared by the nodes: upload, marks, listing, ranged reads)
//! market/        store + schema (SQLite or PostgreSQL via sqlx, migrations), accounts, keys
//!                (every role, auth cache), catalog, plans, subscriptions, payments/ (manual,
//!                stripe), entitlement (the one access check, cached), usage (metering),
//!                invoices (and provider statements), service (Market: ties them together),
//!                error (the one market error; the API maps it to statuses in one place)
//! feed/          hub (positions, recent history, fan-out), session (one subscriber: resume,
//!                filters, delay/aggregate tiers, rechecks, metering, backpressure)
//! api/           router (every route registered with its OpenAPI operation), the one error
//!                type, key extraction, bounded bodies, accept loop (per-address shares),
//!                ops endpoints; intake (citygate JSON/NDJSON/SenML, InfluxDB v1/v2 writes),
//!                accounts, catalog, market (plans … statements), live (SSE, WebSocket),
//!                query (history, latest, aggregate) routes
//! query/         hot/ (the hot store: chunks, the store and its log consumer, the latest
//!                index), lake (Parquet scan with pruning), aggregate (time buckets, from
//!                rows or hot chunks' columns), output (JSON, NDJSON, CSV, Arrow, Parquet)
//! upstream/      intake from brokers citygate does not run (rumqttc; lorawan: uplinks; tls:
//!                mqtts:// for upstreams and the cluster)
//! cluster/       nodes serving one city: publish (this node's log records to the broker, a
//!                log consumer), follow (the other nodes' records into the hub and hot store)
//! telemetry/     tracing init, every metric (one file per group)
//! simulate/      the load and demo generator behind `citygate simulate`
//! ```

pub mod api;
pub(crate) mod app;
pub mod calendar;
pub mod cluster;
pub mod config;
pub mod feed;
pub mod market;
pub mod model;
pub(crate) mod mqtt;
pub mod pipeline;
pub mod query;
pub mod registry;
pub mod simulate;
pub mod sink;
pub mod telemetry;
pub mod upstream;
pub mod wal;

pub use app::{App, AppError, StartOptions};
pub use config::Config;
