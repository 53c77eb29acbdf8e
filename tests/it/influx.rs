//! The InfluxDB sink against a real InfluxDB-API store: Debian's VictoriaMetrics, started per
//! test on a free port (scripts/test.sh installs it).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use crate::harness::*;

struct VictoriaMetrics {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
    client: reqwest::Client,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl VictoriaMetrics {
    async fn start() -> VictoriaMetrics {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = Command::new("victoria-metrics")
            .arg(format!("-httpListenAddr=127.0.0.1:{port}"))
            .arg(format!("-storageDataPath={}", dir.path().display()))
            .arg("-retentionPeriod=100y")
            .arg("-search.latencyOffset=0s")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("victoria-metrics runs (scripts/test.sh installs Debian's victoria-metrics)");
        let vm = VictoriaMetrics {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap(),
        };
        for _ in 0..200 {
            if let Ok(r) = vm.client.get(format!("{}/health", vm.url)).send().await
                && r.status().is_success()
            {
                return vm;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("victoria-metrics did not come up");
    }

    /// Every series of `metric`, as exported (after a flush, so fresh points are visible).
    async fn export(&self, metric: &str) -> Vec<Value> {
        let _ = self
            .client
            .get(format!("{}/internal/force_flush", self.url))
            .send()
            .await;
        let text = self
            .client
            .get(format!("{}/api/v1/export", self.url))
            .query(&[("match[]", format!("{{__name__=\"{metric}\"}}"))])
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Waits until `metric` has `n` points in all (or panics after `limit`).
    async fn wait_for_points(&self, metric: &str, n: usize, limit: Duration) -> Vec<Value> {
        self.wait_for(metric, n, limit, |series| {
            series
                .iter()
                .map(|s| s["values"].as_array().unwrap().len())
                .sum()
        })
        .await
    }

    /// Waits until `metric` has `n` series (or panics after `limit`). A write retried after a
    /// timeout may store a point twice (the store had taken it after all); a series per
    /// reading counts each reading once.
    async fn wait_for_series(&self, metric: &str, n: usize, limit: Duration) -> Vec<Value> {
        self.wait_for(metric, n, limit, |series| series.len()).await
    }

    async fn wait_for(
        &self,
        metric: &str,
        n: usize,
        limit: Duration,
        count: impl Fn(&[Value]) -> usize,
    ) -> Vec<Value> {
        let deadline = Instant::now() + limit;
        loop {
            let series = self.export(metric).await;
            let count = count(&series);
            if count >= n {
                return series;
            }
            assert!(
                Instant::now() < deadline,
                "{metric}: {count} of {n} arrived"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for VictoriaMetrics {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn gateway_into(vm_url: &str) -> Gateway {
    let url = vm_url.to_string();
    Gateway::start_with(move |c| {
        c.influx.enabled = true;
        c.influx.url = url;
        c.influx.batch_age = Duration::from_millis(100);
        c.influx.request_timeout = Duration::from_secs(1);
        c.influx.max_retry_delay = Duration::from_millis(500);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_land_in_victoria_metrics_with_their_values_and_times() {
    let vm = VictoriaMetrics::start().await;
    let gw = gateway_into(&vm.url).await;
    let key = gw.device_key(&[TRAFFIC, "weather"]).await;
    let now = now_ms();
    let readings: Vec<Value> = (0..50)
        .map(|i| {
            json!({"sensor_id": format!("vm-{i:02}"), "ts": now - i * 1000, "vehicle_count": i,
                   "mean_speed": i as f64 + 0.5, "lat": 55.6, "lon": 12.5})
        })
        .collect();
    assert_eq!(
        gw.post_json(TRAFFIC, &key, Value::Array(readings))
            .await
            .status(),
        204
    );
    let resp = gw
        .write_lp(
            "/api/v2/write?bucket=weather&precision=ms",
            &key,
            format!("w,sensor=wx-9 temperature=-3.5 {now}"),
        )
        .await;
    assert_eq!(resp.status(), 204);

    let series = vm
        .wait_for_points("traffic-counts_vehicle_count", 50, Duration::from_secs(15))
        .await;
    assert_eq!(series.len(), 50, "one series per sensor");
    let s = series
        .iter()
        .find(|s| s["metric"]["sensor_id"] == "vm-07")
        .unwrap();
    assert_eq!(s["metric"]["provider"], "copenhagen");
    assert_eq!(s["values"], json!([7]));
    assert_eq!(s["timestamps"], json!([now - 7000]));
    let speed = vm
        .wait_for_points("traffic-counts_mean_speed", 50, Duration::from_secs(5))
        .await;
    let s = speed
        .iter()
        .find(|s| s["metric"]["sensor_id"] == "vm-07")
        .unwrap();
    assert_eq!(s["values"], json!([7.5]));
    assert_eq!(
        vm.wait_for_points("traffic-counts_lat", 50, Duration::from_secs(5))
            .await
            .len(),
        50
    );
    let temp = vm
        .wait_for_points("weather_temperature", 1, Duration::from_secs(5))
        .await;
    assert_eq!(temp[0]["values"], json!([-3.5]));
    assert_eq!(temp[0]["timestamps"], json!([now]));
    drop(gw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_store_is_a_backlog_not_a_loss() {
    let vm = VictoriaMetrics::start().await;
    let gw = gateway_into(&vm.url).await;
    let key = gw.device_key(&[TRAFFIC]).await;
    vm.signal("-STOP");
    let started = Instant::now();
    let mut sent = 0;
    for batch in 0..20 {
        let body: Vec<Value> = (0..25)
            .map(|i| json!({"sensor_id": format!("frozen-{batch}-{i}"), "vehicle_count": i}))
            .collect();
        let resp = gw.post_json(TRAFFIC, &key, Value::Array(body)).await;
        assert_eq!(
            resp.status(),
            204,
            "ingest keeps acknowledging while the store is frozen"
        );
        sent += 25;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(started.elapsed() >= Duration::from_secs(2));
    let metrics = gw.metrics().await;
    let lag: f64 = metrics
        .lines()
        .find(|l| l.starts_with("citygate_sink_lag_records{sink=\"influx\"}"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(lag > 0.0, "the backlog is visible: {lag}");
    vm.signal("-CONT");
    let series = vm
        .wait_for_series(
            "traffic-counts_vehicle_count",
            sent,
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(
        series.len(),
        sent,
        "every reading arrived once the store came back"
    );
    let dir = gw.stop().await;
    assert_eq!(row_count(dir.path(), TRAFFIC), sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_wal_stops_acknowledging_instead_of_dropping() {
    // The store is gone for good: the influx sink holds every segment, the log fills up.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let gw = Gateway::start_with(move |c| {
        c.influx.enabled = true;
        c.influx.url = dead;
        c.influx.request_timeout = Duration::from_millis(200);
        c.wal.segment_bytes = citygate::config::ByteSize::kib(64);
        c.wal.max_bytes = citygate::config::ByteSize::kib(256);
        for ds in &mut c.datasets {
            ds.rate_limit.per_second = 1e6;
            ds.rate_limit.burst = 1_000_000;
        }
    })
    .await;
    let key = gw.device_key(&[TRAFFIC]).await;
    let mut acked = Vec::new();
    let mut refused = 0;
    for batch in 0..2000 {
        let ids: Vec<String> = (0..20).map(|i| format!("full-{batch:04}-{i:02}")).collect();
        let body: Vec<Value> = ids
            .iter()
            .map(|id| json!({"sensor_id": id, "vehicle_count": 1, "mean_speed": 33.3}))
            .collect();
        let resp = gw.post_json(TRAFFIC, &key, Value::Array(body)).await;
        match resp.status().as_u16() {
            204 => acked.extend(ids),
            503 => {
                assert!(resp.headers().contains_key("retry-after"));
                let text = resp.text().await.unwrap();
                assert!(text.contains("full"), "{text}");
                refused += 1;
                if refused >= 5 {
                    break;
                }
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(refused >= 5, "the log filled up");
    assert!(!acked.is_empty());
    let text = gw.metrics().await;
    assert!(
        text.contains("citygate_wal_appends_refused_total{reason=\"full\"}"),
        "{text}"
    );
    let dir = gw.stop().await;
    let mut stored = sensor_ids(dir.path(), TRAFFIC);
    stored.sort();
    acked.sort();
    assert_eq!(
        stored, acked,
        "exactly what was acknowledged is stored; nothing refused is"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dataset_published_while_running_reaches_the_store() {
    let vm = VictoriaMetrics::start().await;
    let gw = gateway_into(&vm.url).await;
    let provider = gw.provider_key("copenhagen").await;
    let (status, created) = gw
        .post_as(
            "/v1/catalog",
            &provider,
            json!({"id": "bike-counts", "title": "Bicycle counts", "licence": "CC0-1.0",
                   "fields": [{"name": "bikes", "type": "int"}]}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let (_, device) = gw
        .post_as(
            "/v1/keys",
            &provider,
            json!({"kind": "device", "datasets": ["bike-counts"]}),
        )
        .await;
    let device = device["secret"].as_str().unwrap();
    let resp = gw
        .post_json(
            "bike-counts",
            device,
            json!({"sensor_id": "st-1", "bikes": 12}),
        )
        .await;
    assert_eq!(resp.status(), 204);
    let series = vm
        .wait_for_series("bike-counts_bikes", 1, Duration::from_secs(10))
        .await;
    assert_eq!(series[0]["values"], json!([12]));
    assert_eq!(series[0]["metric"]["provider"], "copenhagen");
}
