//! Real peers nobody here wrote: pyarrow and DuckDB read our Parquet; the official InfluxDB
//! Python client writes to our `/api/v2/write`. `scripts/test.sh` installs them into a
//! virtualenv and points `CITYGATE_TEST_PYTHON` at it.

use std::path::Path;

use serde_json::{Value, json};

use crate::harness::*;

fn peer_script(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/peers")
        .join(name)
        .display()
        .to_string()
}

/// Runs a peer script (off the runtime: the gateway under test shares it); a missing
/// Python module is a failure that says how to install it.
async fn run_peer(args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let out = tokio::task::spawn_blocking({
        let args = args.clone();
        move || python().args(&args).output().expect("python runs")
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{args:?} failed:\n{stderr}\n(peers come from scripts/test.sh: pyarrow, duckdb, influxdb-client)"
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn pyarrow_and_duckdb_read_our_files() {
    let gw = Gateway::start().await;
    let key = gw.device_key(&[TRAFFIC]).await;
    let ts = now_ms();
    let resp = gw
        .post_json(
            TRAFFIC,
            &key,
            json!([
                {"sensor_id": "tc-b", "ts": ts, "vehicle_count": 17, "mean_speed": 33.25, "lat": 55.7, "lon": 12.6, "seq": 4},
                {"sensor_id": "tc-a", "ts": ts - 3_600_000, "vehicle_count": 5},
                {"sensor_id": "tc-c", "vehicle_count": 0, "mean_speed": 0.5}
            ]),
        )
        .await;
    assert_eq!(resp.status(), 204);
    let dir = gw.stop().await;
    let root = dir.path().join("parquet");
    let out = run_peer(&[
        &peer_script("read_parquet.py"),
        root.to_str().unwrap(),
        TRAFFIC,
    ])
    .await;
    let seen: Value = serde_json::from_str(&out).unwrap();

    let pa = &seen["pyarrow"];
    assert_eq!(pa["rows"], 3);
    assert_eq!(pa["sensor_id"], json!(["tc-a", "tc-b", "tc-c"]));
    assert_eq!(pa["vehicle_count"], json!([5, 17, 0]));
    assert_eq!(pa["mean_speed"], json!([null, 33.25, 0.5]));
    assert_eq!(pa["types"]["ts"], "timestamp[us, tz=UTC]");
    assert_eq!(pa["types"]["vehicle_count"], "int64");
    assert_eq!(pa["types"]["mean_speed"], "double");
    assert_eq!(pa["types"]["sensor_id"], "string");
    assert!(
        pa["sensor_id_encodings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e == "RLE_DICTIONARY"),
        "sensor_id is dictionary-encoded in the file: {}",
        pa["sensor_id_encodings"]
    );
    assert!(
        pa["ts_encodings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e == "DELTA_BINARY_PACKED"),
        "{}",
        pa["ts_encodings"]
    );
    assert_eq!(pa["metadata"]["citygate.dataset"], TRAFFIC);
    assert_eq!(pa["metadata"]["citygate.licence"], "CC-BY-4.0");

    let db = &seen["duckdb"];
    assert_eq!(
        db["types"],
        json!(["VARCHAR", "TIMESTAMP WITH TIME ZONE", "BIGINT", "DOUBLE"])
    );
    let rows = db["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[1]["sensor_id"], "tc-b");
    assert_eq!(rows[1]["vehicle_count"], 17);
    assert_eq!(rows[1]["ts_us"], ts * 1000);
    assert_eq!(rows[1]["lat"], 55.7);
    assert_eq!(rows[1]["seq"], 4);
    assert_eq!(rows[2]["ts_missing"], true);
    // Hive partition columns come from the directory names, by device time.
    let hour_of = |ms: i64| (ms / 3_600_000) % 24;
    assert_eq!(rows[0]["hour"], hour_of(ts - 3_600_000));
    assert_eq!(rows[1]["hour"], hour_of(ts));
}

#[tokio::test]
async fn influxdb_python_client_writes_through_api_v2() {
    let gw = Gateway::start().await;
    let key = gw.device_key(&[TRAFFIC]).await;
    let out = run_peer(&[&peer_script("influx_write.py"), &gw.base, &key, TRAFFIC]).await;
    assert_eq!(out.trim(), "25");
    let dir = gw.stop().await;
    let mut ids = sensor_ids(dir.path(), TRAFFIC);
    ids.sort();
    assert_eq!(ids.len(), 25);
    assert_eq!(ids[0], "py-000");
    assert_eq!(ids[24], "py-024");
}

/// Runs a Debian mosquitto client; a missing one is a failure that says how to install it.
async fn mosquitto_pub(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        std::process::Command::new("mosquitto_pub")
            .args(&args)
            .output()
            .expect("mosquitto_pub runs (scripts/test.sh installs mosquitto-clients)")
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_pub_publishes_over_311_and_5() {
    let gw = Gateway::start().await;
    let key = gw.device_key(&[TRAFFIC]).await;
    let port = gw.app().mqtt_addr().unwrap().port().to_string();
    let base = |version: &str, topic: &str, message: &str| -> Vec<String> {
        [
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-V",
            version,
            "-u",
            "device",
            "-P",
            &key,
            "-q",
            "1",
            "-t",
            topic,
            "-m",
            message,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    for (version, sensor) in [("mqttv311", "mosq-311"), ("mqttv5", "mosq-5")] {
        let topic = format!("citygate/traffic-counts/{sensor}");
        let out = mosquitto_pub(base(version, &topic, r#"{"vehicle_count": 3}"#)).await;
        assert!(
            out.status.success(),
            "{version}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // An MQTT 5 publish of a bad reading is refused with its reason.
    let out = mosquitto_pub(base(
        "mqttv5",
        "citygate/traffic-counts/mosq-bad",
        r#"{"vehicle_count": -3}"#,
    ))
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Payload format invalid"), "{stderr}");
    // A wrong key is refused at CONNECT.
    let mut args = base("mqttv5", "citygate/traffic-counts/x", "{}");
    let p = args.iter().position(|a| a == &key).unwrap();
    args[p] = "cg_wrong".into();
    let out = mosquitto_pub(args).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Not authorized"));

    let dir = gw.stop().await;
    let mut ids = sensor_ids(dir.path(), TRAFFIC);
    ids.sort();
    assert_eq!(ids, ["mosq-311", "mosq-5"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_mqtt_v5_sees_puback_reason_codes() {
    let gw = Gateway::start().await;
    let key = gw.device_key(&[TRAFFIC]).await;
    let port = gw.app().mqtt_addr().unwrap().port().to_string();
    let out = run_peer(&[&peer_script("paho_publish.py"), "127.0.0.1", &port, &key]).await;
    let seen: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(seen["connack"], 0);
    assert_eq!(seen["acks"]["good"][0], 0);
    assert_eq!(seen["acks"]["batch"][0], 0);
    assert_eq!(seen["acks"]["bad"][0], 0x99, "payload format invalid");
    assert!(
        seen["acks"]["bad"][1]
            .as_str()
            .unwrap()
            .contains("wrong_type"),
        "{seen}"
    );
    let dir = gw.stop().await;
    let mut ids = sensor_ids(dir.path(), TRAFFIC);
    ids.sort();
    assert_eq!(ids, ["paho-1", "paho-3"]);
}

#[tokio::test]
async fn an_open_data_portal_harvests_the_dcat_catalog() {
    let gw = Gateway::start_with(|c| c.http.public_url = "https://data.city.example".into()).await;
    let provider = gw.provider_key("copenhagen").await;
    let (status, _) = gw
        .post_as(
            "/v1/catalog",
            &provider,
            json!({
                "id": "bike-counts", "title": "Bicycle counts", "licence": "commercial",
                "update_frequency": "hourly", "keywords": ["bicycles"],
                "fields": [{"name": "bikes", "type": "int"}]
            }),
        )
        .await;
    assert_eq!(status, 201);
    let out = run_peer(&[
        &peer_script("dcat_catalog.py"),
        &gw.url("/v1/catalog.jsonld"),
    ])
    .await;
    let seen: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(seen["content_type"], "application/ld+json");
    let datasets = seen["datasets"].as_array().unwrap();
    let ids: Vec<&str> = datasets.iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        [
            "air-quality",
            "bike-counts",
            "energy-meters",
            "traffic-counts",
            "weather"
        ]
    );
    let traffic = &datasets[3];
    assert_eq!(traffic["title"], "Traffic counts");
    assert_eq!(traffic["license"], "https://spdx.org/licenses/CC-BY-4.0");
    assert_eq!(
        traffic["frequency"],
        "http://publications.europa.eu/resource/authority/frequency/CONT"
    );
    assert_eq!(
        traffic["access"],
        "https://data.city.example/v1/catalog/traffic-counts"
    );
    assert_eq!(
        traffic["modified_type"],
        "http://www.w3.org/2001/XMLSchema#dateTime"
    );
    assert_eq!(
        datasets[1]["frequency"],
        "http://publications.europa.eu/resource/authority/frequency/HOURLY"
    );
    assert_eq!(seen["keywords"], json!(["bicycles"]));
}

#[tokio::test]
async fn a_browser_style_eventsource_client_follows_and_resumes() {
    let gw = Gateway::start().await;
    let provider = gw.provider_key("copenhagen").await;
    let (status, _) = gw
        .post_as(
            "/v1/catalog/traffic-counts/plans",
            &provider,
            json!({"id": "open", "name": "Open data", "kind": "free"}),
        )
        .await;
    assert_eq!(status, 201);
    let (_, alice) = gw.account("subscriber", "Mobility Lab", "research").await;
    let (status, _) = gw
        .post_as("/v1/subscriptions", &alice, json!({"plan": "open"}))
        .await;
    assert_eq!(status, 201);
    let device = gw.device_key(&[TRAFFIC]).await;
    let url = gw.url("/v1/datasets/traffic-counts/live");
    let script = peer_script("sse_follow.py");

    let follower = tokio::spawn({
        let (script, url, alice) = (script.clone(), url.clone(), alice.clone());
        async move { run_peer(&[&script, &url, &alice, "10"]).await }
    });
    // Publish once the client's session is open.
    let started = std::time::Instant::now();
    while !gw
        .metrics()
        .await
        .contains("citygate_feed_sessions{protocol=\"sse\"} 1")
    {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "no session"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let batch = |from: i64, n: i64| -> Value {
        json!(
            (from..from + n)
                .map(|i| json!({"sensor_id": "tc-1", "ts": now_ms(), "vehicle_count": i}))
                .collect::<Vec<_>>()
        )
    };
    assert_eq!(
        gw.post_json(TRAFFIC, &device, batch(0, 10)).await.status(),
        204
    );
    let lines: Vec<Value> = follower
        .await
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let counts: Vec<i64> = lines
        .iter()
        .map(|l| l["vehicle_count"].as_i64().unwrap())
        .collect();
    assert_eq!(counts, (0..10).collect::<Vec<_>>());

    // Published while it was away; it resumes from its last event id.
    assert_eq!(
        gw.post_json(TRAFFIC, &device, batch(10, 5)).await.status(),
        204
    );
    let last = lines.last().unwrap()["id"].as_str().unwrap().to_string();
    let resumed: Vec<i64> = run_peer(&[&script, &url, &alice, "5", &last])
        .await
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["vehicle_count"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(resumed, [10, 11, 12, 13, 14]);
}

/// A peer process whose stdout is read after it exits.
fn spawn_peer(cmd: &mut std::process::Command) -> std::process::Child {
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the peer starts (scripts/test.sh installs mosquitto-clients and paho-mqtt)")
}

async fn finish(child: std::process::Child) -> (String, String) {
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_sub_and_paho_follow_only_entitled_feeds() {
    let gw = Gateway::start().await;
    let provider = gw.provider_key("copenhagen").await;
    gw.post_as(
        "/v1/catalog/traffic-counts/plans",
        &provider,
        json!({"id": "open", "name": "Open data", "kind": "free"}),
    )
    .await;
    let (_, alice) = gw.account("subscriber", "Mobility Lab", "research").await;
    let (status, _) = gw
        .post_as("/v1/subscriptions", &alice, json!({"plan": "open"}))
        .await;
    assert_eq!(status, 201);
    let device = gw.device_key(&[TRAFFIC, "weather"]).await;
    let port = gw.app().mqtt_addr().unwrap().port().to_string();

    let mut children = Vec::new();
    for version in ["mqttv311", "mqttv5"] {
        children.push(spawn_peer(
            std::process::Command::new("mosquitto_sub").args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-V",
                version,
                "-u",
                "subscriber",
                "-P",
                &alice,
                "-q",
                "1",
                "-v",
                "-C",
                "3",
                "-W",
                "20",
                "-t",
                "citygate/traffic-counts/#",
                "-t",
                "citygate/weather/#",
            ]),
        ));
    }
    let paho = spawn_peer(python().args([
        &peer_script("paho_subscribe.py"),
        "127.0.0.1",
        &port,
        &alice,
        "3",
        "citygate/traffic-counts/#",
        "citygate/weather/#",
        "#",
    ]));
    // Publish once all three follow traffic-counts.
    let started = std::time::Instant::now();
    while !gw
        .metrics()
        .await
        .contains("citygate_feed_sessions{protocol=\"mqtt\"} 3")
    {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "{}",
            gw.metrics().await
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let readings: Vec<Value> = (1..=3)
        .map(|i| json!({"sensor_id": format!("tc-{i}"), "ts": now_ms(), "vehicle_count": i}))
        .collect();
    assert_eq!(
        gw.post_json(TRAFFIC, &device, json!(readings))
            .await
            .status(),
        204
    );
    let weather = json!([{"sensor_id": "w-1", "ts": now_ms(), "temperature": 3.5}]);
    assert_eq!(
        gw.post_json("weather", &device, weather).await.status(),
        204
    );

    for child in children {
        let (stdout, stderr) = finish(child).await;
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.len(), 3, "{stdout}\n{stderr}");
        for (i, line) in lines.iter().enumerate() {
            let (topic, payload) = line.split_once(' ').unwrap();
            assert_eq!(topic, format!("citygate/traffic-counts/tc-{}", i + 1));
            let reading: Value = serde_json::from_str(payload).unwrap();
            assert_eq!(reading["fields"]["vehicle_count"], i as i64 + 1);
        }
    }
    let (stdout, stderr) = finish(paho).await;
    let result: Value = serde_json::from_str(stdout.lines().last().unwrap_or("null"))
        .unwrap_or_else(|_| panic!("{stdout}\n{stderr}"));
    assert_eq!(result["suback"], json!([1, 135, 135]));
    assert_eq!(
        result["messages"],
        json!([
            ["citygate/traffic-counts/tc-1", 1, false],
            ["citygate/traffic-counts/tc-2", 2, false],
            ["citygate/traffic-counts/tc-3", 3, false]
        ])
    );
}
