//! A gateway per test: shipped config, port 0, a temp data dir; shut down on drop.

use std::path::{Path, PathBuf};
use std::time::Duration;

use arrow_array::RecordBatch;
use citygate::App;
use citygate::config::{Config, DEFAULT_CONFIG};
use citygate::market::KeyKind;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

pub(crate) const TRAFFIC: &str = "traffic-counts";

pub(crate) struct Gateway {
    app: Option<App>,
    pub dir: tempfile::TempDir,
    pub base: String,
    pub client: reqwest::Client,
    /// The administrator's key secret.
    pub admin_key: String,
}

/// The PostgreSQL server the suite runs against as well, when `scripts/test.sh` started one.
pub(crate) fn test_postgres() -> Option<String> {
    std::env::var("CITYGATE_TEST_POSTGRES")
        .ok()
        .filter(|u| !u.is_empty())
}

/// With a test PostgreSQL: the URL of the database of `data_dir` (one per data dir, created
/// on first use), so a gateway restarted on the same dir finds its database again.
pub(crate) fn database_url_for(data_dir: &Path) -> Option<String> {
    use std::sync::Mutex;
    static CREATED: Mutex<Vec<(PathBuf, String)>> = Mutex::new(Vec::new());
    let admin = test_postgres()?;
    let mut created = CREATED.lock().unwrap();
    if let Some((_, url)) = created.iter().find(|(d, _)| d == data_dir) {
        return Some(url.clone());
    }
    // Called from async tests: a runtime of its own on a thread of its own.
    let url = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(crate::testdb::create_database(&admin))
    })
    .join()
    .unwrap();
    created.push((data_dir.to_path_buf(), url.clone()));
    Some(url)
}

/// The shipped config, pointed at `dir`, on a free port.
pub(crate) fn test_config(dir: &Path) -> Config {
    let mut config = Config::from_toml(DEFAULT_CONFIG, "default", &[]).expect("shipped config");
    config.http.listen = "127.0.0.1:0".into();
    config.mqtt.listen = "127.0.0.1:0".into();
    config.storage.data_dir = dir.to_path_buf();
    if let Some(url) = database_url_for(dir) {
        config.database.url.0 = url;
    }
    config
}

impl Gateway {
    pub(crate) async fn start() -> Gateway {
        Gateway::start_with(|_| {}).await
    }

    pub(crate) async fn start_with(adjust: impl FnOnce(&mut Config)) -> Gateway {
        let dir = tempfile::tempdir().expect("temp dir");
        Gateway::start_on(dir, citygate::market::keys::new_secret(), adjust).await
    }

    /// A gateway on an existing data dir (a restart), with the admin key given.
    pub(crate) async fn start_on(
        dir: tempfile::TempDir,
        admin_key: String,
        adjust: impl FnOnce(&mut Config),
    ) -> Gateway {
        let mut config = test_config(dir.path());
        adjust(&mut config);
        let problems = config.validate();
        assert!(problems.is_empty(), "test config invalid: {problems:?}");
        let options = citygate::StartOptions {
            admin_key: Some(admin_key.clone()),
            ..Default::default()
        };
        let app = App::start_with(config, options)
            .await
            .expect("gateway starts");
        let base = format!("http://{}", app.http_addr());
        Gateway {
            app: Some(app),
            dir,
            base,
            admin_key,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap(),
        }
    }

    /// Stops and starts again on the same data dir and database.
    pub(crate) async fn restart(self) -> Gateway {
        self.restart_with(|_| {}).await
    }

    /// [`Gateway::restart`] with `adjust` made to the config again.
    pub(crate) async fn restart_with(self, adjust: impl FnOnce(&mut Config)) -> Gateway {
        let admin_key = self.admin_key.clone();
        let dir = self.stop().await;
        Gateway::start_on(dir, admin_key, adjust).await
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub(crate) fn app(&self) -> &App {
        self.app.as_ref().expect("running")
    }

    /// A device key of provider `copenhagen` for `datasets`.
    pub(crate) async fn device_key(&self, datasets: &[&str]) -> String {
        let datasets: Vec<String> = datasets.iter().map(|s| s.to_string()).collect();
        self.app()
            .store()
            .create_key(KeyKind::Device, "copenhagen", &datasets)
            .await
            .unwrap()
            .secret
    }

    pub(crate) async fn provider_key(&self, provider: &str) -> String {
        self.app()
            .store()
            .create_key(KeyKind::Provider, provider, &[])
            .await
            .unwrap()
            .secret
    }

    /// POSTs `body` to the JSON intake of `dataset`.
    pub(crate) async fn post(
        &self,
        dataset: &str,
        key: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        self.client
            .post(self.url(&format!("/v1/datasets/{dataset}/readings")))
            .bearer_auth(key)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap()
    }

    /// POSTs line protocol to an InfluxDB write route (`/api/v2/write?…`) with `Token` auth.
    pub(crate) async fn write_lp(
        &self,
        path_and_query: &str,
        key: &str,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        self.client
            .post(self.url(path_and_query))
            .header("authorization", format!("Token {key}"))
            .body(body)
            .send()
            .await
            .unwrap()
    }

    pub(crate) async fn post_json(
        &self,
        dataset: &str,
        key: &str,
        body: serde_json::Value,
    ) -> reqwest::Response {
        self.post(dataset, key, "application/json", body.to_string())
            .await
    }

    /// A JSON API call as `key`: the status and the body (`null` when empty or not JSON).
    pub(crate) async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        key: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut req = self.client.request(method, self.url(path));
        if !key.is_empty() {
            req = req.bearer_auth(key);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        )
    }

    pub(crate) async fn get_as(&self, path: &str, key: &str) -> (u16, serde_json::Value) {
        self.call(reqwest::Method::GET, path, key, None).await
    }

    pub(crate) async fn post_as(
        &self,
        path: &str,
        key: &str,
        body: serde_json::Value,
    ) -> (u16, serde_json::Value) {
        self.call(reqwest::Method::POST, path, key, Some(body))
            .await
    }

    pub(crate) async fn delete_as(&self, path: &str, key: &str) -> (u16, serde_json::Value) {
        self.call(reqwest::Method::DELETE, path, key, None).await
    }

    /// Creates an account over the admin API; returns its id and its first key's secret.
    pub(crate) async fn account(&self, role: &str, name: &str, sector: &str) -> (String, String) {
        let (status, body) = self
            .post_as(
                "/v1/accounts",
                &self.admin_key,
                serde_json::json!({"role": role, "name": name, "sector": sector}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        (
            body["account"]["id"].as_str().unwrap().to_string(),
            body["key"]["secret"].as_str().unwrap().to_string(),
        )
    }

    /// A counter of the gateway's metrics, by its full name with labels (0 when absent).
    pub(crate) async fn counter(&self, name: &str) -> u64 {
        self.metrics()
            .await
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    pub(crate) async fn metrics(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Shuts down (flushing every sink) and keeps the data dir for inspection.
    pub(crate) async fn stop(mut self) -> tempfile::TempDir {
        let app = self.app.take().expect("running");
        app.shutdown().await.expect("clean shutdown");
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(app) = self.app.take() {
            // Tests that do not call stop(): shut down in the background; the runtime of the
            // test ends right after, which is fine for what they check.
            tokio::spawn(async move {
                let _ = app.shutdown().await;
            });
        }
    }
}

/// Every Parquet file under `dir/parquet/dataset=<dataset>`.
pub(crate) fn parquet_files(dir: &Path, dataset: &str) -> Vec<PathBuf> {
    citygate::sink::parquet::parquet_files(&dir.join("parquet").join(format!("dataset={dataset}")))
}

/// All rows of `dataset` under `dir`, one batch per file.
pub(crate) fn read_rows(dir: &Path, dataset: &str) -> Vec<RecordBatch> {
    parquet_files(dir, dataset)
        .iter()
        .flat_map(|path| {
            let file = std::fs::File::open(path).unwrap();
            ParquetRecordBatchReaderBuilder::try_new(file)
                .unwrap()
                .build()
                .unwrap()
                .map(|b| b.unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}

pub(crate) fn row_count(dir: &Path, dataset: &str) -> usize {
    read_rows(dir, dataset).iter().map(|b| b.num_rows()).sum()
}

/// The sensor ids of every row of `dataset`, in file order.
pub(crate) fn sensor_ids(dir: &Path, dataset: &str) -> Vec<String> {
    use arrow_array::cast::AsArray;
    let mut out = Vec::new();
    for batch in read_rows(dir, dataset) {
        let ids = batch.column(0).as_string::<i32>();
        out.extend(ids.iter().map(|id| id.unwrap_or_default().to_string()));
    }
    out
}

/// Now as epoch milliseconds.
pub(crate) fn now_ms() -> i64 {
    citygate::model::now_micros() / 1000
}

/// The `citygate` binary, with no `CITYGATE*` or `RUST_LOG` from the test's environment.
pub(crate) fn bin() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_citygate"));
    cmd.env_remove("RUST_LOG");
    for (k, _) in std::env::vars() {
        if k.starts_with("CITYGATE") {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// The binary, on `data_dir` (and its test database, when the suite runs on PostgreSQL).
pub(crate) fn bin_on(data_dir: &Path) -> std::process::Command {
    let mut cmd = bin();
    cmd.env("CITYGATE__STORAGE__DATA_DIR", data_dir);
    if let Some(url) = database_url_for(data_dir) {
        cmd.env("CITYGATE__DATABASE__URL", url);
    }
    cmd
}

pub(crate) fn shipped_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/citygate.toml")
}

/// A `citygate serve` process; killed on drop.
pub(crate) struct Server {
    pub child: std::process::Child,
    pub http: String,
    pub mqtt: String,
}

impl Server {
    /// Stops the gateway as an operator does (SIGTERM) and expects a clean exit: what the
    /// log holds is in Parquet then.
    pub(crate) fn stop_cleanly(&mut self) {
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        assert_eq!(self.child.wait().unwrap().code(), Some(0), "a clean stop");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `citygate serve --config config` on `data_dir` (ports chosen by the OS) and reads
/// its addresses from its JSON log.
pub(crate) fn spawn_gateway(config: &Path, data_dir: &Path, env: &[(&str, &str)]) -> Server {
    use std::io::{BufRead, BufReader};
    let mut cmd = bin_on(data_dir);
    cmd.arg("serve")
        .arg("--config")
        .arg(config)
        .env("CITYGATE__HTTP__LISTEN", "127.0.0.1:0")
        .env("CITYGATE__MQTT__LISTEN", "127.0.0.1:0")
        .env("CITYGATE__LOG__FORMAT", "json")
        .env("CITYGATE__LOG__LEVEL", "info")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("citygate starts");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if event["message"] == "citygate started" {
                let addr = |k: &str| event[k].as_str().unwrap_or_default().to_string();
                let _ = tx.send((addr("http"), addr("mqtt")));
            } else if matches!(event["level"].as_str(), Some("WARN" | "ERROR")) {
                // Shown with the test's output when it fails.
                eprintln!("gateway: {line}");
            }
        }
    });
    let (http, mqtt) = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("logs its addresses");
    Server { child, http, mqtt }
}

/// `CITYGATE_TEST_PYTHON`, else the virtualenv `scripts/test.sh` makes, else `python3`.
pub(crate) fn python() -> std::process::Command {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/peers-venv/bin/python");
    let exe = std::env::var("CITYGATE_TEST_PYTHON").unwrap_or_else(|_| {
        if venv.exists() {
            venv.display().to_string()
        } else {
            "python3".into()
        }
    });
    std::process::Command::new(exe)
}

/// Makes a device key of provider `copenhagen` for `traffic-counts` with the command line
/// (`cmd` names the database: [`bin_on`], or an environment); its secret.
pub(crate) fn cli_device_key(mut cmd: std::process::Command) -> String {
    let made = cmd
        .args([
            "keys",
            "create-device",
            "--provider",
            "copenhagen",
            "--datasets",
            TRAFFIC,
            "--create-database",
        ])
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    String::from_utf8(made.stdout).unwrap().trim().to_string()
}
