//! Builds every component from [`Config`], wires the channels, and shuts down in order.
//!
//! Start: data directory → database (migrated) → pipelines and their Parquet sinks → MQTT and
//! HTTP listeners. Shutdown, edges first: stop intake (new requests get 503, listeners close,
//! in-flight requests and publishes finish, MQTT 5 clients get DISCONNECT 0x8B), then stop the sinks (they take what is still queued, flush it to
//! Parquet, close their files), all within `shutdown.timeout`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{self, AppState};
use crate::config::{Config, DatasetConfig, ParquetConfig};
use crate::market::catalog::Catalog;
use crate::market::{self, Keyring, Market, Store};
use crate::mqtt;
use crate::pipeline::Pipeline;
use crate::registry::{Registry, RegistryError};
use crate::sink::influx::InfluxSink;
use crate::sink::lake::Lake;
use crate::sink::parquet::{EncodeError, ParquetSink, remove_stale_temp_files};
use crate::telemetry::Metrics;
use crate::wal::{Wal, WalError};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "another citygate is running on the data directory {0} (it holds {LOCK_FILE} there): \
         two gateways on one write-ahead log would lose each other's readings. Stop the other \
         one, or give this one a data_dir of its own (CITYGATE__STORAGE__DATA_DIR)"
    )]
    DataDirInUse(PathBuf),
    #[error("marketplace: {0}")]
    Market(#[from] market::Error),
    #[error("dataset: {0}")]
    Dataset(#[from] DatasetError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error(transparent)]
    Lake(#[from] crate::sink::lake::LakeError),
    #[error("{0}")]
    Upstream(String),
    #[error("cannot set up the cluster's publisher: {0}")]
    Cluster(std::io::Error),
    #[error("cannot set up the InfluxDB sink for {url}: {source}")]
    Influx { url: String, source: std::io::Error },
    #[error(
        "shutdown did not finish within {0:?}; unwritten readings stay in the write-ahead log for the next start"
    )]
    ShutdownTimeout(Duration),
}

/// Why a dataset could not start taking readings.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("cannot set up its Parquet sink: {0}")]
    Sink(#[from] EncodeError),
}

/// How a dataset starts taking readings: every dataset at start, and one a provider creates
/// while running. It is registered, its Parquet sink (a log consumer) runs among the others,
/// and the entitlement cache is cleared (answers cached while it did not exist are stale).
struct DatasetStarter {
    registry: Arc<Registry>,
    wal: Wal,
    lake: Lake,
    parquet: ParquetConfig,
    sinks: TaskTracker,
    sinks_stop: CancellationToken,
    market: Arc<Market>,
    starting: std::sync::Mutex<()>,
}

impl DatasetStarter {
    /// Starts `spec` unless it runs already: the node that created it and the follower of
    /// other nodes' changes may both get to it first (one at a time: a dataset's sink
    /// registers its log consumer once).
    fn start(&self, spec: &DatasetConfig) -> Result<(), DatasetError> {
        let _one_at_a_time = self.starting.lock().unwrap_or_else(|e| e.into_inner());
        if self.registry.get(&spec.id).is_some() {
            return Ok(());
        }
        // The sink first: a dataset that takes readings always has its sink.
        let dataset = Arc::new(spec.build());
        let sink = ParquetSink::new(
            dataset,
            self.lake.clone(),
            self.parquet.clone(),
            self.registry.metrics_of(&spec.id),
            self.wal.clone(),
        )?;
        self.registry.add(spec)?;
        self.sinks.spawn(sink.run(self.sinks_stop.clone()));
        self.market.invalidate();
        Ok(())
    }
}

/// Applies what other nodes sharing the PostgreSQL database announce (see
/// [`crate::market::changes`]): a dataset one published starts taking readings here too; a
/// key one revoked is looked up again; entitlements one changed are forgotten. On each
/// (re)connection everything is looked at again.
async fn follow_other_nodes(
    url: String,
    closing: CancellationToken,
    store: Store,
    starter: Arc<DatasetStarter>,
    keyring: Arc<Keyring>,
    market: Arc<Market>,
) {
    use crate::market::changes::{Change, follow};
    let start_missing = async |only: Option<&str>| {
        let datasets = match only {
            Some(id) => store
                .catalog_dataset(id)
                .await
                .map(|d| d.into_iter().collect()),
            None => store.catalog().await,
        };
        match datasets {
            Ok(datasets) => {
                for d in datasets {
                    if starter.registry.get(&d.spec.id).is_none()
                        && let Err(e) = starter.start(&d.spec)
                    {
                        tracing::error!(dataset = %d.spec.id, error = %e, "cannot start another node's dataset");
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the catalog for other nodes' datasets")
            }
        }
    };
    follow(url, closing, async |change| match change {
        Some(Change::Dataset(id)) => start_missing(Some(&id)).await,
        Some(Change::Key) => keyring.clear(),
        Some(Change::Entitlements) => market.forget_entitlements(),
        None => {
            start_missing(None).await;
            keyring.clear();
            market.forget_entitlements();
        }
    })
    .await;
}

/// How to start, beyond the config: operator decisions for this start only.
#[derive(Clone, Default)]
pub struct StartOptions {
    /// Drop corrupt write-ahead-log records instead of refusing to start.
    pub skip_corrupt_wal: bool,
    /// The administrator's key secret the operator chose (`CITYGATE_ADMIN_KEY`): made a live
    /// admin key if it is not one yet.
    pub admin_key: Option<String>,
}

impl std::fmt::Debug for StartOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StartOptions")
            .field("skip_corrupt_wal", &self.skip_corrupt_wal)
            .field("admin_key", &self.admin_key.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

/// A running gateway.
#[derive(Debug)]
pub struct App {
    /// A new administrator's key secret, when this start created the admin account: shown
    /// once by the caller, never logged.
    pub first_admin_secret: Option<String>,
    http_addr: SocketAddr,
    mqtt_addr: Option<SocketAddr>,
    store: Store,
    market: Arc<Market>,
    feed: Arc<crate::feed::session::FeedService>,
    metrics: Arc<Metrics>,
    /// Fired first: intake stops.
    closing: CancellationToken,
    /// Fired once intake is done: sinks drain and flush.
    sinks_stop: CancellationToken,
    http_task: JoinHandle<()>,
    mqtt_task: Option<JoinHandle<()>>,
    /// One task per `[[upstream]]` broker.
    upstream_tasks: Vec<JoinHandle<()>>,
    /// Following the other nodes (`[cluster]`).
    cluster_task: Option<JoinHandle<()>>,
    wal: Wal,
    sinks: TaskTracker,
    background: JoinHandle<()>,
    shutdown_timeout: Duration,
    /// Held while this gateway runs: no other may use the data directory meanwhile.
    _data_dir_lock: std::fs::File,
}

/// The name of the lock file in the data directory.
pub(crate) const LOCK_FILE: &str = "citygate.lock";

/// Locks the data directory for this process (an advisory lock the kernel drops when the
/// process ends, however it ends). Two gateways appending to one write-ahead log would give
/// different readings the same record numbers, and the Parquet file of one would replace the
/// other's: acknowledged readings lost. So the second one refuses to start.
fn lock_data_dir(data_dir: &std::path::Path) -> Result<std::fs::File, AppError> {
    let path = data_dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| AppError::DataDir {
            path: path.clone(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            Err(AppError::DataDirInUse(data_dir.to_path_buf()))
        }
        Err(std::fs::TryLockError::Error(source)) => Err(AppError::DataDir { path, source }),
    }
}

impl App {
    /// Starts everything `config` describes. Listeners are bound before this returns, so a
    /// config with port 0 has its real port in [`App::http_addr`].
    pub async fn start(config: Config) -> Result<App, AppError> {
        App::start_with(config, StartOptions::default()).await
    }

    /// [`App::start`] with operator options.
    pub async fn start_with(config: Config, options: StartOptions) -> Result<App, AppError> {
        let data_dir = config.storage.data_dir.clone();
        std::fs::create_dir_all(&data_dir).map_err(|source| AppError::DataDir {
            path: data_dir.clone(),
            source,
        })?;
        let data_dir_lock = lock_data_dir(&data_dir)?;
        let lake = Lake::open(&config)?;
        let parquet_dir = lake.write_root().to_path_buf();
        let stale = remove_stale_temp_files(&parquet_dir);
        if stale > 0 {
            tracing::warn!(files = stale, dir = %parquet_dir.display(), "removed temporary Parquet files left by a crash");
        }
        if let Lake::Object(o) = &lake {
            // Staged files are uploaded already, or written again by their sink's redo.
            let _ = std::fs::remove_dir_all(&parquet_dir);
            tracing::info!(lake = %o.url(), "the lake is in object storage");
        }

        warn_if_files_short(&config);
        let store = Store::connect(&config.database(), config.database.max_connections).await?;
        for ds in &config.datasets {
            store.ensure_provider(&ds.provider, &ds.publisher).await?;
        }
        let first_admin_secret = store.bootstrap_admin(options.admin_key.as_deref()).await?;
        let datasets = store.sync_catalog(&config).await?;
        let keyring = Arc::new(Keyring::new(store.clone()));
        let market = Arc::new(Market::new(store.clone(), &config)?);
        let metrics = Arc::new(Metrics::new());
        let closing = CancellationToken::new();
        let sinks_stop = CancellationToken::new();

        let wal = Wal::open(
            &config.wal_dir(),
            &config.wal,
            config.pipeline.queue_timeout,
            metrics.wal().clone(),
            options.skip_corrupt_wal,
        )?;
        let ids: Vec<String> = datasets.iter().map(|d| d.id.clone()).collect();
        // A store out of reach is no reason not to take readings (they wait in the log).
        match lake.check_node(&ids, wal.committed_lsn()).await {
            Err(e @ crate::sink::lake::LakeError::NodeReused { .. }) => return Err(e.into()),
            Err(e) => tracing::warn!(error = %e, "cannot check this node's name in the lake yet"),
            Ok(()) => {}
        }
        let registry = Arc::new(Registry::new(metrics.clone(), config.pipeline.rejects_kept));
        let hub = Arc::new(crate::feed::Hub::new(config.feed.clone()));
        let pipeline = Arc::new(Pipeline::new(
            &config.pipeline,
            registry.clone(),
            wal.clone(),
            hub.clone(),
            closing.clone(),
        ));
        let feed = Arc::new(crate::feed::session::FeedService {
            hub,
            keyring: keyring.clone(),
            market: market.clone(),
            metrics: metrics.feed().clone(),
            tasks: TaskTracker::new(),
            closing: closing.clone(),
            slots: Arc::new(crate::feed::session::Slots::new(
                config.feed.max_sessions_per_account,
            )),
        });
        let sinks = TaskTracker::new();
        let start_dataset = Arc::new(DatasetStarter {
            registry: registry.clone(),
            wal: wal.clone(),
            lake: lake.clone(),
            parquet: config.parquet.clone(),
            sinks: sinks.clone(),
            sinks_stop: sinks_stop.clone(),
            market: market.clone(),
            starting: std::sync::Mutex::new(()),
        });
        for spec in &datasets {
            start_dataset.start(spec)?;
        }
        if config.influx.enabled {
            let influx = InfluxSink::new(
                config.influx.clone(),
                registry.clone(),
                wal.clone(),
                metrics.influx().clone(),
            )
            .map_err(|source| AppError::Influx {
                url: config.influx.url.clone(),
                source,
            })?;
            sinks.spawn(influx.run(sinks_stop.clone()));
        }
        // The hot store starts where the datasets' Parquet sinks stand (registered above).
        let hot = crate::query::hot::HotStore::new(
            wal.clone(),
            crate::query::hot::HotLimits {
                window: config.query.hot_window,
                max_bytes: config.query.hot_max_bytes.as_usize(),
                latest_lookback: config.query.latest_lookback,
            },
            metrics.query().clone(),
            matches!(lake, Lake::Object(_)),
        );
        sinks.spawn(
            hot.clone()
                .run_supervised(registry.clone(), lake.clone(), sinks_stop.clone()),
        );
        let cluster_task = if config.cluster.enabled() {
            let task = crate::cluster::start(
                &config.cluster,
                &wal,
                &registry,
                &feed.hub,
                &hot,
                metrics.cluster(),
                &closing,
                &sinks_stop,
                &sinks,
            )
            .map_err(AppError::Cluster)?;
            Some(task)
        } else {
            None
        };
        let query = Arc::new(crate::query::QueryService::new(
            hot,
            lake.clone(),
            config.query.clone(),
        ));
        // Datasets created later join the tracker all the same.
        sinks.close();

        let listener = TcpListener::bind(&config.http.listen)
            .await
            .map_err(|source| AppError::Bind {
                addr: config.http.listen.clone(),
                source,
            })?;
        let http_addr = listener.local_addr().map_err(|source| AppError::Bind {
            addr: config.http.listen.clone(),
            source,
        })?;
        let (mqtt_addr, mqtt_task) = if config.mqtt.enabled {
            let listener = TcpListener::bind(&config.mqtt.listen)
                .await
                .map_err(|source| AppError::Bind {
                    addr: config.mqtt.listen.clone(),
                    source,
                })?;
            let addr = listener.local_addr().map_err(|source| AppError::Bind {
                addr: config.mqtt.listen.clone(),
                source,
            })?;
            let shared = Arc::new(mqtt::Shared::new(
                pipeline.clone(),
                keyring.clone(),
                metrics.mqtt().clone(),
                config.mqtt.clone(),
                feed.clone(),
                closing.clone(),
            ));
            let task = tokio::spawn(mqtt::serve(listener, shared, config.shutdown.timeout));
            (Some(addr), Some(task))
        } else {
            (None, None)
        };
        if let crate::config::DatabaseLocation::Postgres(url) = config.database() {
            tokio::spawn(follow_other_nodes(
                url,
                closing.clone(),
                store.clone(),
                start_dataset.clone(),
                keyring.clone(),
                market.clone(),
            ));
        }
        let upstream_tasks = crate::upstream::start(
            &config.upstream,
            &pipeline,
            &registry,
            &query,
            metrics.upstream(),
            &closing,
        )
        .map_err(AppError::Upstream)?;
        let state = AppState {
            pipeline: pipeline.clone(),
            registry: registry.clone(),
            catalog: Arc::new(Catalog::new(
                store.clone(),
                Box::new(move |spec| start_dataset.start(spec).map_err(|e| e.to_string())),
            )),
            feed: feed.clone(),
            query: query.clone(),
            keyring,
            market: market.clone(),
            metrics: metrics.clone(),
            http: Arc::new(http_config(&config.http, http_addr)),
            websockets: Arc::new(tokio::sync::Semaphore::new(config.http.max_connections)),
            max_datasets_per_provider: config.market.max_datasets_per_provider,
            sessions: Arc::new(api::session::Sessions::new(store.clone())),
            console: Arc::new(api::console::Console::new(&config.console)),
        };
        let http_task = tokio::spawn(api::server::serve(
            listener,
            api::router(state),
            config.http.clone(),
            metrics.clone(),
            closing.clone(),
            config.shutdown.timeout,
        ));

        let background = tokio::spawn({
            let pipeline = pipeline.clone();
            let query = query.clone();
            let market = market.clone();
            let closing = closing.clone();
            async move {
                let mut minute = tokio::time::interval(Duration::from_secs(60));
                let mut usage = tokio::time::interval(market.usage_flush_interval());
                // The sweep stores what time changed (periods run out); entitlements already
                // check period ends at every call, so this is for listings and statements.
                let mut sweep = tokio::time::interval(Duration::from_secs(10));
                loop {
                    tokio::select! {
                        _ = minute.tick() => {
                            pipeline.forget_idle_limits();
                            query.limiter.forget_idle();
                        }
                        _ = usage.tick() => {
                            if let Err(e) = market.usage().flush().await {
                                tracing::warn!(error = %e, "usage not written yet; kept for the next flush");
                            }
                        }
                        _ = sweep.tick() => {
                            if let Err(e) = market.sweep(crate::model::now_micros()).await {
                                tracing::warn!(error = %e, "subscription sweep failed");
                            }
                        }
                        _ = closing.cancelled() => break,
                    }
                }
            }
        });

        tracing::info!(
            http = %http_addr,
            mqtt = %mqtt_addr.map_or_else(|| "off".to_string(), |a| a.to_string()),
            data_dir = %data_dir.display(),
            datasets = config.datasets.len(),
            "citygate started"
        );
        Ok(App {
            first_admin_secret,
            http_addr,
            mqtt_addr,
            store,
            market,
            feed,
            metrics,
            closing,
            sinks_stop,
            http_task,
            mqtt_task,
            upstream_tasks,
            cluster_task,
            wal,
            sinks,
            background,
            shutdown_timeout: config.shutdown.timeout,
            _data_dir_lock: data_dir_lock,
        })
    }

    /// Where the HTTP API listens.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Where the MQTT endpoint listens, when enabled.
    pub fn mqtt_addr(&self) -> Option<SocketAddr> {
        self.mqtt_addr
    }

    /// The marketplace database (device keys).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The marketplace: entitlements and the usage recorder for delivery paths.
    pub fn market(&self) -> &Arc<Market> {
        &self.market
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The write-ahead log.
    pub fn wal(&self) -> &Wal {
        &self.wal
    }

    /// Stops intake, drains and flushes every sink, and returns when all is written, or
    /// with an error at the shutdown deadline.
    pub async fn shutdown(self) -> Result<(), AppError> {
        let deadline = Instant::now() + self.shutdown_timeout;
        tracing::info!("shutting down: intake stops, buffers flush");
        self.closing.cancel();
        let _ = self.background.await;
        // The servers bound their connection drains by the same timeout.
        let _ = self.http_task.await;
        if let Some(mqtt) = self.mqtt_task {
            let _ = mqtt.await;
        }
        // Upstream messages not yet durable stay unacknowledged, with their broker.
        for upstream in self.upstream_tasks.into_iter().chain(self.cluster_task) {
            let _ = tokio::time::timeout_at(deadline, upstream).await;
        }
        // Live-feed sessions end with the closing signal; what they delivered since the last
        // flush is written once they have.
        self.feed.tasks.close();
        let _ = tokio::time::timeout_at(deadline, self.feed.tasks.wait()).await;
        if let Err(e) = self.market.usage().flush().await {
            tracing::error!(error = %e, "usage counted since the last flush could not be written");
        }
        // Intake is done: the writer finishes what is queued, then sinks catch up and stop.
        let wal = self.wal.clone();
        let _ = tokio::task::spawn_blocking(move || wal.close()).await;
        self.sinks_stop.cancel();
        match tokio::time::timeout_at(deadline, self.sinks.wait()).await {
            Ok(()) => {
                tracing::info!("shutdown complete");
                Ok(())
            }
            Err(_) => {
                tracing::error!(timeout = ?self.shutdown_timeout, "shutdown deadline passed with readings still buffered");
                Err(AppError::ShutdownTimeout(self.shutdown_timeout))
            }
        }
    }
}

/// The HTTP config the API serves with: links in exports (DCAT ids, checkout URLs) come
/// from `public_url`, never from the client's `Host` header (which anyone can set, and a
/// cache would keep); when it is empty, from the address the server listens on.
fn http_config(config: &crate::config::HttpConfig, bound: SocketAddr) -> crate::config::HttpConfig {
    let mut http = config.clone();
    if http.public_url.is_empty() {
        http.public_url = format!("http://{bound}");
        if bound.ip().is_unspecified() {
            tracing::warn!(
                public_url = %http.public_url,
                "http.public_url is empty and the server listens on every address: links in \
                 exports name {bound}; set http.public_url to the URL the public reaches"
            );
        }
    }
    http
}

/// Open files the caps may need at once: each HTTP and MQTT connection a socket, upgraded
/// WebSockets as many again as HTTP connections, with room for the log, Parquet files, the
/// database and the listeners.
fn files_needed(config: &Config) -> u64 {
    let mqtt = if config.mqtt.enabled {
        config.mqtt.max_connections
    } else {
        0
    };
    (2 * config.http.max_connections + mqtt) as u64 + 256
}

/// Warns at start when the connection caps exceed what the process may open: past the
/// open-file limit, `accept` fails (EMFILE) before a cap is reached, and files the log and
/// the sinks need are refused.
fn warn_if_files_short(config: &Config) {
    let Some(limit) = open_file_limit() else {
        return;
    };
    let needed = files_needed(config);
    if needed > limit {
        tracing::warn!(
            open_file_limit = limit,
            needed,
            "http.max_connections (twice: WebSockets count apart) + mqtt.max_connections \
             exceed the open-file limit (ulimit -n / LimitNOFILE): raise the limit or lower \
             the caps"
        );
    }
}

/// The soft limit on open files (Linux: `/proc/self/limits`), if known.
fn open_file_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    parse_open_file_limit(&text)
}

fn parse_open_file_limit(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod limit_tests {
    #[test]
    fn the_open_file_limit_is_read_from_proc() {
        let text = "Limit                     Soft Limit           Hard Limit           Units     \n\
                    Max cpu time              unlimited            unlimited            seconds   \n\
                    Max open files            1024                 1048576              files     \n";
        assert_eq!(super::parse_open_file_limit(text), Some(1024));
        assert_eq!(
            super::parse_open_file_limit("Max open files unlimited"),
            None
        );
        assert!(super::open_file_limit().is_some(), "this is Linux");
    }
}
