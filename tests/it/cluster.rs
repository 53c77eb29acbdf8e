//! Nodes serving one city together (`[cluster]`): each publishes what it acknowledged to
//! Debian's mosquitto and follows the others', so that a subscriber or a planner on any
//! node sees every node's readings, once each, in order, through a broker's absence and a
//! node's kill -9.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::broker::Broker;
use crate::harness::*;
use crate::live::{LIVE, Sse};
use crate::upstream::{metric, process_metric, until};

const HISTORY: &str = "/v1/datasets/traffic-counts/history";
const LATEST: &str = "/v1/datasets/traffic-counts/latest";
const IN: &str = "citygate_cluster_connected{direction=\"in\"}";
const OUT: &str = "citygate_cluster_connected{direction=\"out\"}";
const RECEIVED: &str = "citygate_cluster_readings_received_total";
/// The cluster's shared secret in these tests.
const SECRET: &str = "the-nodes-shared-secret";

fn cluster(broker: &Broker, node: &str) -> citygate::config::ClusterConfig {
    toml::from_str(&format!(
        "broker = \"mqtt://127.0.0.1:{}\"\nnode_id = \"{node}\"\nsecret = \"{SECRET}\"\n",
        broker.port
    ))
    .unwrap()
}

/// Node `id` of the cluster on `broker`, once it publishes and follows.
async fn node(broker: &Broker, id: &str) -> Gateway {
    let gw = Gateway::start_with(|c| c.cluster = cluster(broker, id)).await;
    until(&gw, IN, 1).await;
    until(&gw, OUT, 1).await;
    gw
}

/// `n` traffic readings of counts `from..from+n`, spread over five sensors.
fn counts(from: i64, n: i64) -> Value {
    let ts = now_ms();
    (from..from + n)
        .map(|i| json!({"sensor_id": format!("x-{}", i % 5), "ts": ts, "vehicle_count": i}))
        .collect()
}

fn counts_of(events: &[crate::live::SseEvent]) -> Vec<i64> {
    events
        .iter()
        .map(|e| e.json()["fields"]["vehicle_count"].as_i64().unwrap())
        .collect()
}

/// The vehicle counts `gw`'s history holds since `from_ms`, as `key` reads them.
async fn history_counts(gw: &Gateway, key: &str, from_ms: i64) -> Vec<i64> {
    let from = citygate::calendar::format_rfc3339_micros(from_ms * 1000);
    let (status, body) = gw
        .get_as(&format!("{HISTORY}?from={from}&limit=10000"), key)
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["next"].is_null(), "one page holds them all");
    body["readings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["vehicle_count"].as_i64().unwrap())
        .collect()
}

/// The cluster's metrics of `gw`, for a failing test's message.
async fn cluster_metrics(gw: &Gateway) -> String {
    let text = gw.metrics().await;
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("citygate_cluster"))
        .collect();
    lines.join("\n")
}

#[tokio::test]
async fn a_subscriber_and_a_planner_on_one_node_see_what_another_node_acknowledged() {
    let broker = Broker::start();
    let a = node(&broker, "a").await;
    let b = node(&broker, "b").await;
    let since = now_ms() - 1000;
    let (_, on_b) = Sse::open(&b, LIVE, &b.admin_key, None).await;
    let mut on_b = on_b.unwrap();
    let (_, on_a) = Sse::open(&a, LIVE, &a.admin_key, None).await;
    let mut on_a = on_a.unwrap();

    // Devices post to node A; a subscriber on node B gets each reading once, in order.
    let device_a = a.device_key(&[TRAFFIC]).await;
    for part in 0..4 {
        let resp = a.post_json(TRAFFIC, &device_a, counts(part * 50, 50)).await;
        assert_eq!(resp.status(), 204);
    }
    let got = on_b.readings(200, Duration::from_secs(10)).await;
    assert_eq!(counts_of(&got), (0..200).collect::<Vec<_>>());
    assert!(
        on_b.next(Duration::from_millis(300)).await.is_none(),
        "nothing more, nothing twice"
    );
    // Node A's own subscriber got them from node A, and node B's readings reach node A.
    assert_eq!(
        counts_of(&on_a.readings(200, Duration::from_secs(5)).await),
        (0..200).collect::<Vec<_>>()
    );
    let device_b = b.device_key(&[TRAFFIC]).await;
    let resp = b.post_json(TRAFFIC, &device_b, counts(1000, 10)).await;
    assert_eq!(resp.status(), 204);
    assert_eq!(
        counts_of(&on_a.readings(10, Duration::from_secs(10)).await),
        (1000..1010).collect::<Vec<_>>()
    );
    assert_eq!(
        counts_of(&on_b.readings(10, Duration::from_secs(5)).await),
        (1000..1010).collect::<Vec<_>>()
    );

    // A planner on node B reads node A's readings in history and latest, with node B's own.
    let mut seen = history_counts(&b, &b.admin_key, since).await;
    seen.sort();
    let mut expected: Vec<i64> = (0..200).chain(1000..1010).collect();
    expected.sort();
    assert_eq!(seen, expected, "every reading of both nodes once");
    let (status, body) = b.get_as(LATEST, &b.admin_key).await;
    assert_eq!(status, 200, "{body}");
    let latest: Vec<i64> = body["readings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["vehicle_count"].as_i64().unwrap())
        .collect();
    assert_eq!(latest, [1005, 1006, 1007, 1008, 1009], "x-0..x-4's last");
    assert_eq!(metric(&b, RECEIVED).await, 200);
    assert_eq!(metric(&a, RECEIVED).await, 10);

    // Whoever else may publish on the broker cannot speak for a node: a record copied from
    // the wire onto another node's topic, or made up, is dropped.
    let forged = |bytes: &[u8]| ("citygate/readings/c".to_string(), bytes.to_vec());
    crate::broker::publish(
        broker.port,
        vec![forged(&[0u8; 100]), forged(b"{\"vehicle_count\": 1}")],
    )
    .await;
    until(
        &b,
        "citygate_cluster_records_received_total{outcome=\"forged\"}",
        2,
    )
    .await;
    assert!(on_b.next(Duration::from_millis(300)).await.is_none());

    // Each node's lake holds what it acknowledged itself, and nothing of the other's.
    let dir_b = b.stop().await;
    let dir_a = a.stop().await;
    assert_eq!(row_count(dir_a.path(), TRAFFIC), 200);
    assert_eq!(row_count(dir_b.path(), TRAFFIC), 10);
}

#[tokio::test]
async fn while_the_broker_is_away_nodes_serve_their_own_and_catch_up_after() {
    let mut broker = Broker::persistent();
    let a = node(&broker, "a").await;
    let b = node(&broker, "b").await;
    let device = a.device_key(&[TRAFFIC]).await;
    let (_, on_b) = Sse::open(&b, LIVE, &b.admin_key, None).await;
    let mut on_b = on_b.unwrap();
    let (_, on_a) = Sse::open(&a, LIVE, &a.admin_key, None).await;
    let mut on_a = on_a.unwrap();
    let resp = a.post_json(TRAFFIC, &device, counts(0, 20)).await;
    assert_eq!(resp.status(), 204);
    assert_eq!(on_b.readings(20, Duration::from_secs(10)).await.len(), 20);

    broker.stop();
    // Node A takes readings and serves its own subscribers all the same.
    let resp = a.post_json(TRAFFIC, &device, counts(20, 20)).await;
    assert_eq!(resp.status(), 204);
    assert_eq!(
        counts_of(&on_a.readings(40, Duration::from_secs(5)).await),
        (0..40).collect::<Vec<_>>()
    );
    assert!(
        on_b.next(Duration::from_millis(500)).await.is_none(),
        "node B cannot have them yet"
    );
    until(
        &a,
        "citygate_cluster_reconnects_total{direction=\"out\"}",
        1,
    )
    .await;

    // Back: node B's subscriber gets what it missed, in order, once.
    broker.resume();
    let got = on_b.readings(20, Duration::from_secs(30)).await;
    assert_eq!(
        counts_of(&got),
        (20..40).collect::<Vec<_>>(),
        "node A: {}\nnode B: {}",
        cluster_metrics(&a).await,
        cluster_metrics(&b).await
    );
    assert!(on_b.next(Duration::from_millis(500)).await.is_none());
}

#[tokio::test]
async fn a_node_killed_under_load_is_followed_once_each_after_its_restart() {
    let broker = Broker::start();
    let b = node(&broker, "b").await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut cli = bin_on(&data);
    cli.arg("--config").arg(shipped_config());
    let device = cli_device_key(cli);
    let url = format!("mqtt://127.0.0.1:{}", broker.port);
    let env = [
        ("CITYGATE__CLUSTER__BROKER", url.as_str()),
        ("CITYGATE__CLUSTER__NODE_ID", "a"),
        ("CITYGATE__CLUSTER__SECRET", SECRET),
    ];
    let connected = async |http: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while process_metric(http, OUT).await < 1 {
            assert!(Instant::now() < deadline, "node A never reached the broker");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let server = spawn_gateway(&shipped_config(), &data, &env);
    connected(&server.http).await;
    let since = now_ms() - 1000;

    // A device posts ten readings a request as fast as node A answers; the node dies
    // under it.
    let client = reqwest::Client::new();
    let post = {
        let (client, http, device) = (client.clone(), server.http.clone(), device.clone());
        tokio::spawn(async move {
            let mut acked = Vec::new();
            for part in 0.. {
                let body = counts(part * 10, 10);
                let sent = client
                    .post(format!("http://{http}/v1/datasets/{TRAFFIC}/readings"))
                    .bearer_auth(&device)
                    .json(&body)
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status() == 204 => acked.extend(part * 10..part * 10 + 10),
                    _ => return acked,
                }
            }
            acked
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&b, RECEIVED).await < 500 {
        assert!(Instant::now() < deadline, "node B received too little");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let killed = Command::new("kill")
        .args(["-KILL", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    drop(server);
    let acked = post.await.unwrap();
    assert!(acked.len() >= 500, "{} acknowledged", acked.len());

    // Restarted, node A publishes again from the last record the broker acknowledged;
    // node B keeps each reading once.
    let mut server = spawn_gateway(&shipped_config(), &data, &env);
    connected(&server.http).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let seen = loop {
        let seen = history_counts(&b, &b.admin_key, since).await;
        let mut unique = seen.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), seen.len(), "a reading twice on node B");
        if acked.iter().all(|n| unique.binary_search(n).is_ok()) {
            break seen;
        }
        assert!(
            Instant::now() < deadline,
            "node B lacks {} of node A's {} acknowledged readings",
            acked
                .iter()
                .filter(|n| unique.binary_search(n).is_err())
                .count(),
            acked.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let duplicates = metric(
        &b,
        "citygate_cluster_records_received_total{outcome=\"duplicate\"}",
    )
    .await;
    eprintln!(
        "{} readings acknowledged by node A before its kill, {} on node B once each \
         ({duplicates} records sent again and dropped)",
        acked.len(),
        seen.len()
    );
    server.stop_cleanly();
}

#[tokio::test]
async fn a_record_larger_than_the_broker_takes_is_left_out_and_the_rest_flows() {
    let broker = Broker::start_with("persistence false\nmax_packet_size 8192\n");
    let a = node(&broker, "a").await;
    let b = node(&broker, "b").await;
    let (_, on_b) = Sse::open(&b, LIVE, &b.admin_key, None).await;
    let mut on_b = on_b.unwrap();
    let device = a.device_key(&[TRAFFIC]).await;
    // 500 readings in one request make one record of some 30 KB.
    let resp = a.post_json(TRAFFIC, &device, counts(0, 500)).await;
    assert_eq!(resp.status(), 204);
    let resp = a.post_json(TRAFFIC, &device, counts(500, 5)).await;
    assert_eq!(resp.status(), 204);
    assert_eq!(
        counts_of(&on_b.readings(5, Duration::from_secs(10)).await),
        (500..505).collect::<Vec<_>>(),
        "{}",
        cluster_metrics(&a).await
    );
    assert_eq!(
        metric(
            &a,
            "citygate_cluster_records_published_total{outcome=\"too_large\"}"
        )
        .await,
        1
    );
}

#[tokio::test]
async fn nodes_reach_their_broker_over_tls_with_client_certificates() {
    let (broker, tls) = Broker::start_tls();
    let node_over_tls = |id: &str| -> citygate::config::ClusterConfig {
        toml::from_str(&format!(
            "broker = \"mqtts://127.0.0.1:{}\"\nnode_id = \"{id}\"\nsecret = \"{SECRET}\"\n\
             ca_file = \"{}\"\nclient_cert_file = \"{}\"\nclient_key_file = \"{}\"\n",
            tls.port, tls.ca, tls.client_cert, tls.client_key
        ))
        .unwrap()
    };
    let (ca, cb) = (node_over_tls("a"), node_over_tls("b"));
    let a = Gateway::start_with(|c| c.cluster = ca).await;
    let b = Gateway::start_with(|c| c.cluster = cb).await;
    for gw in [&a, &b] {
        until(gw, IN, 1).await;
        until(gw, OUT, 1).await;
    }
    let (_, on_b) = Sse::open(&b, LIVE, &b.admin_key, None).await;
    let mut on_b = on_b.unwrap();
    let device = a.device_key(&[TRAFFIC]).await;
    let resp = a.post_json(TRAFFIC, &device, counts(0, 10)).await;
    assert_eq!(resp.status(), 204);
    assert_eq!(
        counts_of(&on_b.readings(10, Duration::from_secs(10)).await),
        (0..10).collect::<Vec<_>>()
    );
    drop(broker);
}

/// `scripts/cluster.sh` with this build's binary in `dir`, ports from `base`.
fn cluster_sh(action: &str, dir: &std::path::Path, base: u16) -> std::process::Output {
    Command::new("bash")
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/cluster.sh"))
        .arg(action)
        .env("CITYGATE_BIN", env!("CARGO_BIN_EXE_citygate"))
        .env("CLUSTER_DIR", dir)
        .env("CLUSTER_PORT_BASE", base.to_string())
        .env_remove("CITYGATE_ADMIN_KEY")
        .output()
        .unwrap()
}

/// Stops the script's cluster however the test ends.
struct ScriptCluster(std::path::PathBuf, u16);

impl Drop for ScriptCluster {
    fn drop(&mut self) {
        let _ = cluster_sh("down", &self.0, self.1);
    }
}

#[tokio::test]
async fn three_nodes_started_by_one_script_behave_as_one_citygate() {
    let dir = tempfile::tempdir().unwrap();
    // Ports base+32 … base+1886, clear of the ones the OS hands out.
    let base = 20_000 + 10 * (rand::random::<u16>() % 1000);
    let up = cluster_sh("up", dir.path(), base);
    let _down = ScriptCluster(dir.path().to_path_buf(), base);
    let said = String::from_utf8_lossy(&up.stdout).to_string();
    assert!(
        up.status.success(),
        "{said}\n{}",
        String::from_utf8_lossy(&up.stderr)
    );
    for node in ["node-1", "node-2", "node-3"] {
        assert!(said.contains(node), "it says where {node} listens:\n{said}");
    }
    let secrets = std::fs::read_to_string(dir.path().join("secrets.env")).unwrap();
    let admin = secrets
        .lines()
        .find_map(|l| l.strip_prefix("ADMIN_KEY="))
        .unwrap()
        .to_string();
    let http = |n: u16| format!("http://127.0.0.1:{}", base + 80 + n * 100);
    let db = format!("postgres://citygate@127.0.0.1:{}/postgres", base + 32);
    let mut cli = bin();
    cli.env("CITYGATE__DATABASE__URL", &db);
    let device = cli_device_key(cli);
    let client = reqwest::Client::new();

    // A subscriber on node 2 gets what a device posts to node 1; a planner on node 3 finds
    // it in history.
    let live = client
        .get(format!("{}{LIVE}", http(2)))
        .bearer_auth(&admin)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
    let posted = client
        .post(format!("{}/v1/datasets/{TRAFFIC}/readings", http(1)))
        .bearer_auth(&device)
        .json(&counts(0, 50))
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 204);
    let mut live = live;
    let mut seen = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen < 50 {
        let chunk = tokio::time::timeout_at(deadline.into(), live.chunk())
            .await
            .expect("node 2 delivers node 1's readings")
            .unwrap()
            .unwrap();
        seen += String::from_utf8_lossy(&chunk)
            .matches("event: reading")
            .count();
    }
    assert_eq!(seen, 50);
    let since = citygate::calendar::format_rfc3339_micros((now_ms() - 60_000) * 1000);
    let history: Value = client
        .get(format!(
            "{}/v1/datasets/{TRAFFIC}/history?from={since}&limit=1000",
            http(3)
        ))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        history["readings"].as_array().unwrap().len(),
        50,
        "{history}"
    );

    let down = cluster_sh("down", dir.path(), base);
    assert!(down.status.success());
}
