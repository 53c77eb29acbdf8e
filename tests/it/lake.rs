//! The lake in object storage: moto's S3 server (PyPI) as the store, pyarrow reading what
//! citygate uploaded, one node and two sharing it.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::*;

/// moto's S3 server on a free port, with one bucket; stopped on drop.
pub(crate) struct S3 {
    child: Child,
    pub port: u16,
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) const BUCKET: &str = "citygate-lake";

impl S3 {
    /// A server; with `bucket`, the bucket made.
    pub(crate) async fn start(bucket: bool) -> S3 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = python()
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto runs (scripts/test.sh installs moto[server] from PyPI)");
        let s3 = S3 { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto did not come up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if bucket {
            s3.make_bucket().await;
        }
        s3
    }

    pub(crate) async fn make_bucket(&self) {
        let made = reqwest::Client::new()
            .put(format!("http://127.0.0.1:{}/{BUCKET}", self.port))
            .send()
            .await
            .unwrap();
        assert!(made.status().is_success(), "{}", made.status());
    }

    /// `[lake]` on this server under `prefix`.
    pub(crate) fn lake(&self, prefix: &str) -> citygate::config::LakeConfig {
        toml::from_str(&format!(
            "url = \"s3://{BUCKET}/{prefix}\"\nendpoint = \"http://127.0.0.1:{}\"\n\
             allow_http = true\naccess_key_id = \"testing\"\nsecret_access_key = \"testing\"\n",
            self.port
        ))
        .unwrap()
    }

    /// What pyarrow reads of `dataset` under `prefix`: rows per `node` partition and every
    /// vehicle count.
    pub(crate) async fn read_with_pyarrow(&self, prefix: &str, dataset: &str) -> Value {
        let script = format!(
            r#"
import json, pyarrow.fs as fs, pyarrow.dataset as ds
s3 = fs.S3FileSystem(endpoint_override="127.0.0.1:{port}", scheme="http",
                     access_key="testing", secret_key="testing", region="us-east-1")
try:
    data = ds.dataset("{BUCKET}/{prefix}/dataset={dataset}", filesystem=s3, format="parquet",
                      partitioning="hive").to_table()
except FileNotFoundError:
    print(json.dumps({{"nodes": {{}}, "counts": []}}))
    raise SystemExit(0)
nodes = {{}}
for n in data.column("node").to_pylist():
    nodes[n] = nodes.get(n, 0) + 1
print(json.dumps({{"nodes": nodes, "counts": sorted(data.column("vehicle_count").to_pylist())}}))
"#,
            port = self.port
        );
        let out = tokio::task::spawn_blocking(move || python().args(["-c", &script]).output())
            .await
            .unwrap()
            .unwrap();
        assert!(
            out.status.success(),
            "pyarrow: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

/// A node on the lake of `s3` under `prefix`, its files written 150 ms after they come.
fn on_lake(s3: &S3, prefix: &str, node: &str) -> impl FnOnce(&mut citygate::config::Config) {
    let lake = s3.lake(prefix);
    let node = node.to_string();
    move |c| {
        c.lake = lake;
        c.cluster.node_id = node;
        c.parquet.max_age = Duration::from_millis(150);
    }
}

/// `n` traffic readings of counts `from..from+n` over five sensors.
fn counts(from: i64, n: i64) -> Value {
    let ts = now_ms();
    (from..from + n)
        .map(|i| json!({"sensor_id": format!("s-{}", i % 5), "ts": ts - 1000 + i % 1000, "vehicle_count": i}))
        .collect()
}

/// Every vehicle count `gw`'s history holds of the last hour, sorted.
async fn history(gw: &Gateway) -> Vec<i64> {
    let from = citygate::calendar::format_rfc3339_micros((now_ms() - 3_600_000) * 1000);
    let (status, body) = gw
        .get_as(
            &format!("/v1/datasets/{TRAFFIC}/history?from={from}&limit=10000"),
            &gw.admin_key,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["next"].is_null());
    let mut counts: Vec<i64> = body["readings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["vehicle_count"].as_i64().unwrap())
        .collect();
    counts.sort();
    counts
}

/// Waits until pyarrow reads `n` rows of traffic counts under `prefix`.
async fn uploaded(s3: &S3, prefix: &str, n: usize) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let read = s3.read_with_pyarrow(prefix, TRAFFIC).await;
        if read["counts"].as_array().unwrap().len() >= n {
            return read;
        }
        assert!(Instant::now() < deadline, "only {read} in the lake");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn readings_land_in_object_storage_once_and_history_reads_them_back() {
    let s3 = S3::start(true).await;
    let gw = Gateway::start_with(on_lake(&s3, "city", "node-1")).await;
    let device = gw.device_key(&[TRAFFIC]).await;
    for part in 0..3 {
        let resp = gw
            .post_json(TRAFFIC, &device, counts(part * 100, 100))
            .await;
        assert_eq!(resp.status(), 204);
    }
    let read = uploaded(&s3, "city", 300).await;
    assert_eq!(read["nodes"], json!({"node-1": 300}), "{read}");
    let landed: Vec<i64> = serde_json::from_value(read["counts"].clone()).unwrap();
    assert_eq!(landed, (0..300).collect::<Vec<_>>(), "each once");
    let staging = gw.dir.path().join("lake-staging");
    assert!(
        citygate::sink::parquet::parquet_files(&staging).is_empty(),
        "uploaded files leave the staging directory"
    );

    // After a restart the hot store is empty: history comes from object storage.
    let gw = gw.restart_with(on_lake(&s3, "city", "node-1")).await;
    assert_eq!(history(&gw).await, (0..300).collect::<Vec<_>>());
    let resp = gw.post_json(TRAFFIC, &device, counts(300, 10)).await;
    assert_eq!(resp.status(), 204);
    assert_eq!(
        history(&gw).await,
        (0..310).collect::<Vec<_>>(),
        "the lake's and the hot store's, once each"
    );

    // A second node under the same name, on a fresh data directory, would overwrite
    // node-1's files: it does not start.
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    on_lake(&s3, "city", "node-1")(&mut config);
    let err = citygate::App::start(config).await.expect_err("refused");
    assert!(err.to_string().contains("node_id of its own"), "{err}");
}

#[tokio::test]
async fn until_the_store_takes_them_readings_wait_in_the_log() {
    // No bucket yet: every upload fails, and the sink keeps its checkpoint.
    let s3 = S3::start(false).await;
    let gw = Gateway::start_with(on_lake(&s3, "city", "node-1")).await;
    let device = gw.device_key(&[TRAFFIC]).await;
    let resp = gw.post_json(TRAFFIC, &device, counts(0, 50)).await;
    assert_eq!(resp.status(), 204, "acknowledged: the log has them");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !gw.metrics().await.lines().any(|l| {
        l.starts_with("citygate_parquet_flush_errors_total{dataset=\"traffic-counts\"}")
            && !l.ends_with(" 0")
    }) {
        assert!(Instant::now() < deadline, "no failed upload seen");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    s3.make_bucket().await;
    let read = uploaded(&s3, "city", 50).await;
    let landed: Vec<i64> = serde_json::from_value(read["counts"].clone()).unwrap();
    assert_eq!(landed, (0..50).collect::<Vec<_>>(), "all of them, once");
}

#[tokio::test]
async fn two_nodes_share_one_lake_and_each_reads_the_whole_city_once() {
    let s3 = S3::start(true).await;
    let broker = crate::broker::Broker::start();
    let in_cluster = |node: &'static str| {
        let lake = on_lake(&s3, "city", node);
        let cluster: citygate::config::ClusterConfig = toml::from_str(&format!(
            "broker = \"mqtt://127.0.0.1:{}\"\nnode_id = \"{node}\"\nsecret = \"the-nodes-shared-secret\"\n",
            broker.port
        ))
        .unwrap();
        move |c: &mut citygate::config::Config| {
            lake(c);
            c.cluster = cluster;
        }
    };
    let a = Gateway::start_with(in_cluster("node-a")).await;
    let b = Gateway::start_with(in_cluster("node-b")).await;
    for gw in [&a, &b] {
        crate::upstream::until(gw, "citygate_cluster_connected{direction=\"in\"}", 1).await;
    }
    let device_a = a.device_key(&[TRAFFIC]).await;
    let device_b = b.device_key(&[TRAFFIC]).await;
    let resp = a.post_json(TRAFFIC, &device_a, counts(0, 200)).await;
    assert_eq!(resp.status(), 204);
    let resp = b.post_json(TRAFFIC, &device_b, counts(1000, 50)).await;
    assert_eq!(resp.status(), 204);
    let expected: Vec<i64> = (0..200).chain(1000..1050).collect();

    // Each node reads the whole city, once: from its own files and the other's up to its
    // mark, the rest from what it follows.
    let read = uploaded(&s3, "city", 250).await;
    assert_eq!(
        read["nodes"],
        json!({"node-a": 200, "node-b": 50}),
        "{read}"
    );
    for gw in [&a, &b] {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let seen = history(gw).await;
            if seen == expected {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {}: {seen:?}",
                seen.len(),
                expected.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Restarted, node B no longer holds node A's readings in memory: the lake has them.
    let b = b.restart_with(in_cluster("node-b")).await;
    assert_eq!(history(&b).await, expected);
    drop(a);
}
