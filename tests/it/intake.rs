//! The HTTP status contract, as a device sees it, and what lands in Parquet.

use std::io::Write;

use arrow_array::Array;
use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type};
use serde_json::{Value, json};

use crate::harness::*;

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

#[tokio::test]
async fn all_accepted_is_204_and_lands_in_parquet_with_values() {
    let gw = Gateway::start().await;
    let key = gw.device_key(&[TRAFFIC]).await;
    let ts = now_ms();
    let resp = gw
        .post_json(
            TRAFFIC,
            &key,
            json!([
                {"sensor_id": "tc-1", "ts": ts, "fields": {"vehicle_count": 12, "mean_speed": 41.5}},
                {"sensor_id": "tc-2", "ts": ts, "vehicle_count": 7, "lat": 55.68, "lon": 12.57},
                {"sensor_id": "tc-3", "vehicle_count": 0, "seq": 9}
            ]),
        )
        .await;
    assert_eq!(resp.status(), 204);
    assert!(resp.text().await.unwrap().is_empty());

    let dir = gw.stop().await;
    let batches = read_rows(dir.path(), TRAFFIC);
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 3);
    let b = &batches[0];
    let counts = b
        .column_by_name("vehicle_count")
        .unwrap()
        .as_primitive::<Int64Type>();
    assert_eq!(counts.values().to_vec(), vec![12, 7, 0]);
    let speed = b
        .column_by_name("mean_speed")
        .unwrap()
        .as_primitive::<Float64Type>();
    assert_eq!(speed.value(0), 41.5);
    assert!(speed.is_null(1));
    let missing = b.column_by_name("ts_missing").unwrap().as_boolean();
    assert_eq!((missing.value(0), missing.value(2)), (false, true));
    assert_eq!(sensor_ids(dir.path(), TRAFFIC), ["tc-1", "tc-2", "tc-3"]);
}

#[tokio::test]
async fn partial_acceptance_is_200_with_reasons_and_provider_sees_rejects() {
    let gw = Gateway::start().await;
    let key = gw.device_key(&[TRAFFIC]).await;
    let resp = gw
        .post_json(
            TRAFFIC,
            &key,
            json!([
                {"sensor_id": "ok-1", "vehicle_count": 3},
                {"sensor_id": "bad-1", "vehicle_count": 3, "mean_speed": 999},
                {"sensor_id": "bad id", "vehicle_count": 3},
                {"sensor_id": "ok-2", "vehicle_count": 4, "colour": "red"},
                {"sensor_id": "ok-3", "vehicle_count": 5}
            ]),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["accepted"], 2);
    assert_eq!(body["rejected_count"], 3);
    let rejected = body["rejected"].as_array().unwrap();
    let pairs: Vec<(u64, &str)> = rejected
        .iter()
        .map(|r| (r["index"].as_u64().unwrap(), r["reason"].as_str().unwrap()))
        .collect();
    assert_eq!(
        pairs,
        [
            (1, "above_max"),
            (2, "invalid_sensor_id"),
            (3, "unknown_field")
        ]
    );
    assert!(
        rejected[0]["message"]
            .as_str()
            .unwrap()
            .contains("mean_speed")
    );

    // The provider of the dataset reads the rejects; to a device key or another provider
    // they are not there (404, as for everything a key may not see).
    let provider = gw.provider_key("copenhagen").await;
    let page: Value = gw
        .client
        .get(gw.url("/v1/datasets/traffic-counts/rejects"))
        .bearer_auth(&provider)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let recent = page["recent"].as_array().unwrap();
    assert_eq!(recent.len(), 3);
    assert_eq!(recent[0]["reason"], "unknown_field", "newest first");
    assert_eq!(recent[2]["sensor_id"], "bad-1");
    assert!(recent[2]["key_id"].as_str().unwrap().starts_with("key_"));
    let counts = page["counts"].as_array().unwrap();
    assert!(
        counts
            .iter()
            .any(|c| c["reason"] == "above_max" && c["count"] == 1)
    );
    let device_try = gw
        .client
        .get(gw.url("/v1/datasets/traffic-counts/rejects"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(device_try.status(), 404);
    let other_provider = gw.provider_key("copenhagen-energy").await;
    let other_try = gw
        .client
        .get(gw.url("/v1/datasets/traffic-counts/rejects"))
        .bearer_auth(&other_provider)
        .send()
        .await
        .unwrap();
    assert_eq!(other_try.status(), 404);

    // The hour minute by minute: this minute holds the two accepted readings, their two
    // sensors and the three rejects by reason; to others it is not there either.
    let (status, quality) = gw
        .get_as("/v1/datasets/traffic-counts/quality", &provider)
        .await;
    assert_eq!(status, 200, "{quality}");
    let minutes = quality["minutes"].as_array().unwrap();
    assert_eq!(minutes.len(), 60);
    let now = minutes
        .iter()
        .rev()
        .find(|m| m["accepted"] != 0)
        .expect("a minute with the readings");
    assert_eq!(
        (&now["accepted"], &now["sensors"], &now["rejected"]),
        (&json!(2), &json!(2), &json!(3))
    );
    let reasons: Vec<(&str, u64)> = now["rejected_by_reason"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["reason"].as_str().unwrap(), r["count"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        reasons,
        [
            ("invalid_sensor_id", 1),
            ("unknown_field", 1),
            ("above_max", 1)
        ]
    );
    assert_eq!(quality["last_hour"]["rejected_last_hour"], 3);
    for other in [&key, &other_provider] {
        let (status, _) = gw
            .get_as("/v1/datasets/traffic-counts/quality", other)
            .await;
        assert_eq!(status, 404);
    }

    let dir = gw.stop().await;
    assert_eq!(sensor_ids(dir.path(), TRAFFIC), ["ok-1", "ok-3"]);
}

#[tokio::test]
async fn all_rejected_is_422_and_nothing_is_stored() {
    let gw = Gateway::start().await;
    let key = gw.device_key(&[TRAFFIC]).await;
    let resp = gw
        .post_json(
            TRAFFIC,
            &key,
            json!([{"sensor_id": "a", "vehicle_count": -1}, {"sensor_id": "b", "ts": "soon", "vehicle_count": 1}]),
        )
        .await;
    assert_eq!(resp.status(), 422);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "all_rejected");
    assert_eq!(body["rejected"][0]["reason"], "below_min");
    assert_eq!(body["rejected"][1]["reason"], "invalid_timestamp");
    let dir = gw.stop().await;
    assert_eq!(row_count(dir.path(), TRAFFIC), 0);
}

#[tokio::test]
async fn unparseable_and_empty_bodies_are_400() {
    let gw = Gateway::start().await;
    let key = gw.device_key(&[TRAFFIC]).await;
    for (body, code) in [
        ("[{\"sensor_id\": \"a\"", "malformed"),
        ("not json", "malformed"),
        ("[]", "no_readings"),
        ("", "malformed"),
    ] {
        let resp = gw.post(TRAFFIC, &key, "application/json", body).await;
        assert_eq!(resp.status(), 400, "{body}");
        let json: Value = resp.json().await.unwrap();
        assert_eq!(json["error"], code, "{body}");
    }
    let resp = gw.post(TRAFFIC, &key, "application/x-ndjson", "\n\n").await;
    assert_eq!(resp.status(), 400);
}

#[tokio::test]
async fn keys_and_datasets_are_enforced() {
    let gw = Gateway::start().await;
    let key = gw.device_key(&[TRAFFIC]).await;
    let body = json!({"sensor_id": "a", "vehicle_count": 1}).to_string();

    let no_key = gw
        .client
        .post(gw.url("/v1/datasets/traffic-counts/readings"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(no_key.status(), 401);
    assert!(no_key.headers().contains_key("www-authenticate"));
    let wrong = gw
        .post(
            TRAFFIC,
            "cg_0000000000000000000000000000000000000000000",
            "application/json",
            body.clone(),
        )
        .await;
    assert_eq!(wrong.status(), 401);
    let garbage = gw
        .post(TRAFFIC, "hunter2", "application/json", body.clone())
        .await;
    assert_eq!(garbage.status(), 401);
    let other = gw
        .post("weather", &key, "application/json", body.clone())
        .await;
    assert_eq!(other.status(), 403);
    let missing = gw
        .post("no-such-dataset", &key, "application/json", body.clone())
        .await;
    assert_eq!(missing.status(), 404);
    let upper = gw
        .post("Traffic-Counts", &key, "application/json", body.clone())
        .await;
    assert_eq!(upper.status(), 404);

    // Revocation through the store takes effect within the key cache's second.
    let store = gw.app().store();
    let keys = store.list_keys().await.unwrap();
    assert_eq!(
        gw.post(TRAFFIC, &key, "application/json", body.clone())
            .await
            .status(),
        204
    );
    let device = keys
        .iter()
        .find(|k| k.kind == citygate::market::KeyKind::Device)
        .unwrap();
    store.revoke_key(&device.id).await.unwrap();
    tokio::time::sleep(
        citygate::market::keyring::KEY_CACHE_TTL + std::time::Duration::from_millis(100),
    )
    .await;
    assert_eq!(
        gw.post(TRAFFIC, &key, "application/json", body)
            .await
            .status(),
        401
    );
}

#[tokio::test]
async fn content_type_and_encoding_must_be_known() {
    let gw = Gateway::start().await;
    let key = gw.device_key(&[TRAFFIC]).await;
    let resp = gw.post(TRAFFIC, &key, "application/xml", "<x/>").await;
    assert_eq!(resp.status(), 415);
    let resp = gw
        .client
        .post(gw.url("/v1/datasets/traffic-counts/readings"))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .header("content-encoding", "br")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 415);
    let resp = gw
        .client
        .post(gw.url("/v1/datasets/traffic-counts/readings"))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body("not gzip at all")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let resp = gw
        .client
        .post(gw.url("/v1/datasets/traffic-counts/readings?precision=fortnights"))
        .bearer_auth(&key)
        .body(json!({"sensor_id": "a", "vehicle_count": 1}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
}

#[tokio::test]
async fn bodies_over_the_limit_are_413_including_gzip_bombs() {
    let gw = Gateway::start_with(|c| {
        c.http.max_body = citygate::config::ByteSize::kib(4);
        c.http.max_decompressed_body = citygate::config::ByteSize::kib(16);
    })
    .await;
    let key = gw.device_key(&[TRAFFIC]).await;
    let big: Vec<Value> = (0..200)
        .map(|i| json!({"sensor_id": format!("s-{i}"), "vehicle_count": i}))
        .collect();
    let body = Value::Array(big).to_string();
    assert!(body.len() > 4096);
    let resp = gw
        .post(TRAFFIC, &key, "application/json", body.clone())
        .await;
    assert_eq!(resp.status(), 413);
    let json: Value = resp.json().await.unwrap();
    assert_eq!(json["error"], "payload_too_large");

    // Compressed it fits the wire limit and the decompressed limit: accepted.
    let packed = gzip(body.as_bytes());
    assert!(packed.len() < 4096);
    let resp = gw
        .client
        .post(gw.url("/v1/datasets/traffic-counts/readings"))
        .bearer_auth(&key)
        .header("content-encoding", "gzip")
        .body(packed)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);

    // A bomb: small on the wire, huge inflated.
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(&vec![b' '; 3 << 20]).unwrap();
    let bomb = enc.finish().unwrap();
    assert!(bomb.len() < 4096, "{}", bomb.len());
    let resp = gw
        .client
        .post(gw.url("/v1/datasets/traffic-counts/readings"))
        .bearer_auth(&key)
        .header("content-encoding", "gzip")
        .body(bomb)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
}

#[tokio::test]
async fn over_the_rate_limit_is_429_with_retry_after_and_stores_nothing() {
    let gw = Gateway::start_with(|c| {
        let ds = c.datasets.iter_mut().find(|d| d.id == TRAFFIC).unwrap();
        ds.rate_limit.per_second = 0.5;
        ds.rate_limit.burst = 10;
    })
    .await;
    let key = gw.device_key(&[TRAFFIC]).await;
    let batch = |n: usize, tag: &str| {
        Value::Array(
            (0..n)
                .map(|i| json!({"sensor_id": format!("{tag}-{i}"), "vehicle_count": i}))
                .collect(),
        )
    };
    assert_eq!(
        gw.post_json(TRAFFIC, &key, batch(10, "first"))
            .await
            .status(),
        204
    );
    let resp = gw.post_json(TRAFFIC, &key, batch(2, "flood")).await;
    assert_eq!(resp.status(), 429);
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1..=4).contains(&retry),
        "2 readings at 0.5/s: about 4 s, got {retry}"
    );
    let json: Value = resp.json().await.unwrap();
    assert_eq!(json["error"], "rate_limited");

    // Another device key has its own allowance.
    let other = gw.device_key(&[TRAFFIC]).await;
    assert_eq!(
        gw.post_json(TRAFFIC, &other, batch(1, "other"))
            .await
            .status(),
        204
    );
    // A batch bigger than the burst can never pass: 413, so Telegraf splits it.
    let resp = gw.post_json(TRAFFIC, &other, batch(11, "huge")).await;
    assert_eq!(resp.status(), 413);

    // Rejected readings use the allowance too (a flood of rejects is not free): over the
    // limit they are refused whole and recorded nowhere.
    let resp = gw
        .post_json(
            TRAFFIC,
            &key,
            json!([{"sensor_id": "x", "vehicle_count": -5}]),
        )
        .await;
    assert_eq!(resp.status(), 429);

    let text = gw.metrics().await;
    assert!(
        text.contains("citygate_requests_rate_limited_total{dataset=\"traffic-counts\"} 2"),
        "{text}"
    );
    let dir = gw.stop().await;
    let mut ids = sensor_ids(dir.path(), TRAFFIC);
    ids.sort();
    assert_eq!(ids.len(), 11);
    assert!(
        ids.iter()
            .all(|id| id.starts_with("first-") || id == "other-0"),
        "{ids:?}"
    );
}

#[tokio::test]
async fn ndjson_and_senml_land() {
    let gw = Gateway::start().await;
    let key = gw.device_key(&["weather", "air-quality"]).await;
    let t = now_ms();
    let ndjson = format!(
        "{{\"sensor_id\":\"aq-1\",\"ts\":{t},\"pm2_5\":8.5,\"pm10\":14.0,\"no2\":21.0}}\n\
         {{\"sensor_id\":\"aq-2\",\"ts\":{t},\"pm2_5\":\"high\"}}\n\
         {{\"sensor_id\":\"aq-3\",\"ts\":{t},\"no2\":30.5}}\n"
    );
    let resp = gw
        .post("air-quality", &key, "application/x-ndjson", ndjson)
        .await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        (
            body["accepted"].as_u64(),
            body["rejected"][0]["index"].as_u64()
        ),
        (Some(2), Some(1))
    );

    let bt = t as f64 / 1000.0;
    let senml = json!([
        {"bn": "wx-0042:", "bt": bt, "bu": "Cel", "n": "temperature", "v": 3.5},
        {"n": "humidity", "u": "%RH", "v": 81},
        {"n": "temperature", "t": -60, "v": 3.25},
        {"bn": "wx-0043:", "n": "temperature", "u": "K", "v": 276.0}
    ]);
    let resp = gw
        .post("weather", &key, "application/senml+json", senml.to_string())
        .await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["accepted"], 2);
    assert_eq!(body["rejected"][0]["index"], 3);
    assert_eq!(body["rejected"][0]["reason"], "unit_mismatch");

    let dir = gw.stop().await;
    assert_eq!(sensor_ids(dir.path(), "air-quality"), ["aq-1", "aq-3"]);
    assert_eq!(sensor_ids(dir.path(), "weather"), ["wx-0042", "wx-0042"]);
    // (temperature, humidity) of each row. The reading a minute earlier may fall in the
    // previous hour's file (near the hour), so rows are compared in no particular order.
    let mut pairs: Vec<(f64, Option<f64>)> = Vec::new();
    for batch in read_rows(dir.path(), "weather") {
        let column = |name: &str| {
            batch
                .column_by_name(name)
                .unwrap()
                .as_primitive::<Float64Type>()
                .clone()
        };
        let (temperature, humidity) = (column("temperature"), column("humidity"));
        for i in 0..batch.num_rows() {
            let h = (!humidity.is_null(i)).then(|| humidity.value(i));
            pairs.push((temperature.value(i), h));
        }
    }
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert_eq!(pairs, [(3.25, None), (3.5, Some(81.0))]);
}

#[tokio::test]
async fn influx_v2_write_as_telegraf_sends_it() {
    let gw = Gateway::start().await;
    let key = gw.device_key(&[TRAFFIC]).await;
    let now_s = now_ms() / 1000;
    // What outputs.influxdb_v2 sends: gzip, Token auth, a host tag, int suffixes.
    let lines = format!(
        "traffic,host=edge-7,sensor=tc-0042 vehicle_count=31i,mean_speed=42.5 {now_s}\n\
         traffic,host=edge-7,sensor=tc-0043 vehicle_count=12i {now_s}\n"
    );
    let resp = gw
        .client
        .post(gw.url("/api/v2/write?org=city&bucket=traffic-counts&precision=s"))
        .header("authorization", format!("Token {key}"))
        .header("content-type", "text/plain; charset=utf-8")
        .header("content-encoding", "gzip")
        .header("user-agent", "Telegraf/1.30.0 Go/1.22")
        .body(gzip(lines.as_bytes()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);

    // v1 with the key as p=, ns precision by default.
    let ns = now_ms() * 1_000_000;
    let resp = gw
        .client
        .post(gw.url(&format!("/write?db=traffic-counts&u=device&p={key}")))
        .body(format!("traffic,sensor_id=tc-0044 vehicle_count=5i {ns}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);

    // Missing bucket, unknown bucket, bad line.
    let resp = gw
        .write_lp(
            "/api/v2/write?org=city",
            &key,
            "m,sensor=a vehicle_count=1i",
        )
        .await;
    assert_eq!(resp.status(), 400);
    let resp = gw
        .write_lp(
            "/api/v2/write?bucket=nope",
            &key,
            "m,sensor=a vehicle_count=1i",
        )
        .await;
    assert_eq!(resp.status(), 404);
    let resp = gw
        .write_lp(
            "/api/v2/write?bucket=traffic-counts",
            &key,
            "m,sensor=a vehicle_count=1i\nm,sensor=b vehicle_count=",
        )
        .await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["rejected"][0]["reason"], "malformed");

    let dir = gw.stop().await;
    assert_eq!(
        sensor_ids(dir.path(), TRAFFIC),
        ["tc-0042", "tc-0043", "tc-0044", "a"]
    );
}

#[tokio::test]
async fn ping_health_datasets_and_metrics() {
    let gw = Gateway::start().await;
    let ping = gw.client.get(gw.url("/ping")).send().await.unwrap();
    assert_eq!(ping.status(), 204);
    assert!(ping.headers().contains_key("x-influxdb-version"));
    let health: Value = gw
        .client
        .get(gw.url("/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "pass");
    assert_eq!(
        gw.client
            .get(gw.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        gw.client
            .get(gw.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        gw.client
            .get(gw.url("/nope"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    let list: Value = gw
        .client
        .get(gw.url("/v1/datasets"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = list["datasets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["air-quality", "energy-meters", "traffic-counts", "weather"]
    );
    let one: Value = gw
        .client
        .get(gw.url("/v1/datasets/weather"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(one["fields"][0]["name"], "temperature");
    assert_eq!(one["fields"][0]["unit"], "Cel");

    let key = gw.device_key(&[TRAFFIC]).await;
    gw.post_json(
        TRAFFIC,
        &key,
        json!([{"sensor_id": "tc-unique-4711", "vehicle_count": 1}, {"sensor_id": "b", "vehicle_count": -1}]),
    )
    .await;
    let text = gw.metrics().await;
    for needle in [
        "citygate_readings_accepted_total{dataset=\"traffic-counts\"} 1",
        "citygate_readings_rejected_total{dataset=\"traffic-counts\",reason=\"below_min\"} 1",
        "citygate_http_requests_total{route=\"/v1/datasets/{id}/readings\",status=\"200\"} 1",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    // The Parquet sink reads the log on its own time: the acknowledged reading shows up in its
    // buffer shortly after the answer.
    let buffered = "citygate_parquet_buffered_rows{dataset=\"traffic-counts\"} 1";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut text = text;
    while !text.contains(buffered) {
        assert!(
            std::time::Instant::now() < deadline,
            "missing {buffered} in\n{text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        text = gw.metrics().await;
    }
    assert!(
        !text.contains("tc-unique-4711"),
        "no sensor ids as labels:\n{text}"
    );
    assert!(
        !text.contains("key_") && !text.contains(&key[3..]),
        "no keys as labels"
    );
}

#[tokio::test]
async fn files_appear_by_age_while_running_and_metrics_count_them() {
    let gw =
        Gateway::start_with(|c| c.parquet.max_age = std::time::Duration::from_millis(100)).await;
    let key = gw.device_key(&[TRAFFIC]).await;
    let resp = gw
        .post_json(
            TRAFFIC,
            &key,
            json!([{"sensor_id": "a", "vehicle_count": 1}]),
        )
        .await;
    assert_eq!(resp.status(), 204);
    let mut files = Vec::new();
    for _ in 0..100 {
        files = parquet_files(gw.dir.path(), TRAFFIC);
        if !files.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(files.len(), 1, "flushed by age without shutdown");
    let name = files[0].file_name().unwrap().to_string_lossy().to_string();
    assert!(
        name.starts_with("part-") && name.ends_with(".parquet"),
        "{name}"
    );
    let mut text = String::new();
    for _ in 0..100 {
        text = gw.metrics().await;
        if text.contains("citygate_parquet_files_written_total{dataset=\"traffic-counts\"} 1") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        text.contains("citygate_parquet_rows_written_total{dataset=\"traffic-counts\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn large_bodies_are_decoded_whole() {
    let gw = Gateway::start().await;
    let key = gw.device_key(&[TRAFFIC]).await;
    let body: Vec<Value> = (0..4000)
        .map(|i| {
            let count = if i == 1234 { -1 } else { i };
            json!({"sensor_id": format!("big-{i:05}"), "vehicle_count": count, "mean_speed": 30.5, "lat": 55.6, "lon": 12.5})
        })
        .collect();
    let text = Value::Array(body).to_string();
    assert!(text.len() > citygate::pipeline::BLOCKING_DECODE_BYTES);
    let resp = gw.post(TRAFFIC, &key, "application/json", text).await;
    assert_eq!(resp.status(), 200);
    let json: Value = resp.json().await.unwrap();
    assert_eq!(json["accepted"], 3999);
    assert_eq!(json["rejected"][0]["index"], 1234);
    assert_eq!(json["rejected"][0]["sensor_id"], "big-01234");
    let dir = gw.stop().await;
    assert_eq!(row_count(dir.path(), TRAFFIC), 3999);
}

/// The bodies the README's curl examples send are accepted as the README says.
#[tokio::test]
async fn readme_example_bodies() {
    let gw = Gateway::start().await;
    let key = gw.device_key(&[TRAFFIC, "weather", "air-quality"]).await;
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/bodies");
    let read = |name: &str| std::fs::read(examples.join(name)).unwrap();
    let cases = [
        ("traffic.json", TRAFFIC, "application/json"),
        ("air-quality.ndjson", "air-quality", "application/x-ndjson"),
        ("weather.senml.json", "weather", "application/senml+json"),
    ];
    for (file, dataset, content_type) in cases {
        let resp = gw.post(dataset, &key, content_type, read(file)).await;
        assert_eq!(resp.status(), 204, "{file}: {}", resp.text().await.unwrap());
    }
    let resp = gw
        .write_lp(
            "/api/v2/write?org=city&bucket=traffic-counts",
            &key,
            read("traffic.lp"),
        )
        .await;
    assert_eq!(resp.status(), 204);
    let resp = gw
        .post(TRAFFIC, &key, "application/json", read("mixed.json"))
        .await;
    assert_eq!(resp.status(), 200);
    let json: Value = resp.json().await.unwrap();
    let reasons: Vec<&str> = json["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons, ["above_max", "invalid_sensor_id", "wrong_type"]);
    let dir = gw.stop().await;
    assert_eq!(row_count(dir.path(), TRAFFIC), 3 + 2 + 1);
    assert_eq!(row_count(dir.path(), "weather"), 1);
    assert_eq!(row_count(dir.path(), "air-quality"), 2);
}
