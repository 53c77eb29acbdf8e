//! SIGKILL at a random moment, again and again, while clients ingest over HTTP and MQTT, each
//! keeping a ledger of what it got an acknowledgement for. After the last restart and a clean
//! stop, every acknowledged reading is in Parquet exactly once, no reading is there twice,
//! and every file a crash left behind is readable; and history queries in the last life,
//! after the log's replay, return every acknowledged reading exactly once.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::*;
use crate::mqtt::{raw_connect, raw_publish};

type Ledger = Arc<Mutex<Vec<String>>>;

fn loadtest_config() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/loadtest.toml")
}

/// Posts batches of 20 readings until the server goes away; records what was acknowledged.
async fn http_client(url: String, key: String, tag: String, acked: Ledger, stop: Arc<AtomicBool>) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let ids: Vec<String> = (0..20).map(|i| format!("{tag}-{n:05}-{i:02}")).collect();
        let body: Vec<Value> = ids
            .iter()
            .map(|id| json!({"sensor_id": id, "vehicle_count": 1}))
            .collect();
        match client.post(&url).bearer_auth(&key).json(&body).send().await {
            Ok(r) if r.status() == 204 => acked.lock().unwrap().extend(ids),
            Ok(r) => panic!("unexpected {}", r.status()),
            Err(_) => return, // the server is gone: unacknowledged, maybe stored, never retried
        }
        n += 1;
    }
}

/// Publishes single readings at QoS 1, one at a time, until the server goes away.
async fn mqtt_client(addr: String, key: String, tag: String, acked: Ledger, stop: Arc<AtomicBool>) {
    let Ok(mut s) = TcpStream::connect(&addr).await else {
        return;
    };
    if s.write_all(&raw_connect(b"MQTT", 4, &tag, &key, 0))
        .await
        .is_err()
    {
        return;
    }
    let mut connack = [0u8; 4];
    if s.read_exact(&mut connack).await.is_err() || connack != [0x20, 0x02, 0x00, 0x00] {
        return;
    }
    let mut pkid: u16 = 0;
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        pkid = pkid.wrapping_add(1).max(1);
        let id = format!("{tag}-{n:05}");
        let topic = format!("citygate/traffic-counts/{id}");
        if s.write_all(&raw_publish(
            topic.as_bytes(),
            br#"{"vehicle_count":2}"#,
            0b0010,
            pkid,
        ))
        .await
        .is_err()
        {
            return;
        }
        let mut ack = [0u8; 4];
        match s.read_exact(&mut ack).await {
            Ok(_) if ack == [0x40, 0x02, (pkid >> 8) as u8, pkid as u8] => {
                acked.lock().unwrap().push(id)
            }
            Ok(_) => panic!("unexpected answer {ack:?}"),
            Err(_) => return,
        }
        n += 1;
    }
}

/// Every finished Parquet file under `data` can be read to the end.
fn all_files_readable(data: &Path) -> usize {
    let files = citygate::sink::parquet::parquet_files(&data.join("parquet"));
    for f in &files {
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            std::fs::File::open(f).unwrap(),
        )
        .unwrap_or_else(|e| panic!("{} unreadable: {e}", f.display()))
        .build()
        .unwrap();
        for batch in reader {
            batch.unwrap_or_else(|e| panic!("{} unreadable: {e}", f.display()));
        }
    }
    files.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_any_moment_loses_and_duplicates_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let created = bin_on(&data)
        .args([
            "keys",
            "create-device",
            "--provider",
            "copenhagen",
            "--datasets",
            "traffic-counts",
            "--create-database",
        ])
        .arg("--config")
        .arg(loadtest_config())
        .output()
        .unwrap();
    assert!(created.status.success());
    let key = String::from_utf8(created.stdout)
        .unwrap()
        .trim()
        .to_string();
    let provider = bin_on(&data)
        .args(["keys", "create-provider", "--provider", "copenhagen"])
        .arg("--config")
        .arg(loadtest_config())
        .output()
        .unwrap();
    assert!(provider.status.success());
    let provider = String::from_utf8(provider.stdout)
        .unwrap()
        .trim()
        .to_string();
    let started = now_ms();
    // Small, frequent Parquet writes, so kills land mid-write too.
    let env = [
        ("CITYGATE__PARQUET__MAX_AGE", "150ms"),
        ("CITYGATE__PARQUET__MAX_ROWS", "700"),
    ];

    let acked: Ledger = Arc::default();
    let seed: u64 = rand::random();
    eprintln!("kill timing seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for round in 0..5 {
        let server = spawn_gateway(&loadtest_config(), &data, &env);
        let stop = Arc::new(AtomicBool::new(false));
        let mut clients = Vec::new();
        for c in 0..2 {
            let url = format!("http://{}/v1/datasets/traffic-counts/readings", server.http);
            clients.push(tokio::spawn(http_client(
                url,
                key.clone(),
                format!("r{round}-h{c}"),
                acked.clone(),
                stop.clone(),
            )));
            clients.push(tokio::spawn(mqtt_client(
                server.mqtt.clone(),
                key.clone(),
                format!("r{round}-m{c}"),
                acked.clone(),
                stop.clone(),
            )));
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..1500))).await;
        let status = Command::new("kill")
            .args(["-KILL", &server.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            c.await.unwrap();
        }
        drop(server);
        all_files_readable(&data);
    }

    // One more life. After the log's replay, history has every acknowledged reading once.
    let server = spawn_gateway(&loadtest_config(), &data, &env);
    let history = history_ids(&server.http, &provider, started).await;
    // Then stopped cleanly: everything in the log reaches Parquet.
    let mut server = server;
    server.stop_cleanly();
    assert!(all_files_readable(&data) > 0);

    let mut counts: HashMap<String, usize> = HashMap::new();
    for id in sensor_ids(&data, TRAFFIC) {
        *counts.entry(id).or_default() += 1;
    }
    let acked = acked.lock().unwrap();
    eprintln!(
        "acknowledged {} readings over 5 kills; {} distinct stored",
        acked.len(),
        counts.len()
    );
    assert!(
        acked.len() > 1000,
        "the clients got through: {}",
        acked.len()
    );
    let missing: Vec<&String> = acked
        .iter()
        .filter(|id| !counts.contains_key(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged readings lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    let twice: Vec<(&String, &usize)> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "{} readings stored more than once, e.g. {:?}",
        twice.len(),
        &twice[..twice.len().min(5)]
    );
    let mut queried: HashMap<&String, usize> = HashMap::new();
    for id in &history {
        *queried.entry(id).or_default() += 1;
    }
    let unseen = acked.iter().filter(|id| !queried.contains_key(*id)).count();
    assert_eq!(
        unseen, 0,
        "acknowledged readings history did not return after the kills"
    );
    let repeated = queried.values().filter(|n| **n > 1).count();
    assert_eq!(
        repeated, 0,
        "readings history returned twice after the kills"
    );
}

/// Every sensor id of traffic-counts since `since` (ms), page by page, as `key` sees them.
async fn history_ids(http: &str, key: &str, since: i64) -> Vec<String> {
    let client = reqwest::Client::new();
    let from = citygate::calendar::format_rfc3339((since - 60_000) * 1000);
    let to = citygate::calendar::format_rfc3339((now_ms() + 600_000) * 1000);
    let base =
        format!("http://{http}/v1/datasets/traffic-counts/history?from={from}&to={to}&limit=10000");
    let mut ids = Vec::new();
    let mut url = base.clone();
    loop {
        let resp = client.get(&url).bearer_auth(key).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let body: Value = resp.json().await.unwrap();
        for r in body["readings"].as_array().unwrap() {
            ids.push(r["sensor_id"].as_str().unwrap().to_string());
        }
        match body["next"].as_str() {
            Some(next) => url = format!("{base}&cursor={next}"),
            None => return ids,
        }
    }
}
