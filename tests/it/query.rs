//! History queries as a planner uses them: over HTTP, with a key, against readings a device
//! posted, while those readings move from memory to Parquet; DuckDB as the oracle.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use crate::harness::*;
use crate::live::{open_plan, plan, subscribe, subscribed};

const HISTORY: &str = "/v1/datasets/traffic-counts/history";
const LATEST: &str = "/v1/datasets/traffic-counts/latest";
const AGGREGATE: &str = "/v1/datasets/traffic-counts/aggregate";
const HOUR_MS: i64 = 3_600_000;

fn at(ms: i64) -> String {
    citygate::calendar::format_rfc3339_micros(ms * 1000)
}

/// GET as `key` with `accept`: status, headers, body text.
async fn get_text(
    gw: &Gateway,
    path: &str,
    key: &str,
    accept: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut req = gw.client.get(gw.url(path)).bearer_auth(key);
    if let Some(accept) = accept {
        req = req.header("accept", accept);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.text().await.unwrap())
}

/// Posts readings `{sensor_id, ts, vehicle_count}` and expects them all kept.
async fn post(gw: &Gateway, device: &str, readings: &[(String, i64, i64)]) {
    let body: Vec<Value> = readings
        .iter()
        .map(|(s, ts, v)| json!({"sensor_id": s, "ts": ts, "vehicle_count": v}))
        .collect();
    let resp = gw.post_json(TRAFFIC, device, json!(body)).await;
    assert_eq!(resp.status(), 204, "{}", resp.text().await.unwrap());
}

/// Every page of `query` (a history URL without cursor) as `key`: the vehicle counts seen.
async fn all_pages(gw: &Gateway, query: &str, key: &str, pause: Duration) -> Vec<i64> {
    let mut seen = Vec::new();
    let mut path = query.to_string();
    // A first path may carry a cursor already; the next ones replace it.
    let query = query.split("&cursor=").next().unwrap();
    loop {
        let (status, body) = gw.get_as(&path, key).await;
        assert_eq!(status, 200, "{body}");
        for r in body["readings"].as_array().unwrap() {
            seen.push(r["vehicle_count"].as_i64().unwrap());
        }
        match body["next"].as_str() {
            Some(next) => path = format!("{query}&cursor={next}"),
            None => return seen,
        }
        tokio::time::sleep(pause).await;
    }
}

/// Waits until the lake's `traffic-counts` files hold at least `n` readings.
async fn in_parquet(gw: &Gateway, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while row_count(gw.dir.path(), TRAFFIC) < n {
        assert!(std::time::Instant::now() < deadline, "not all in Parquet");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the hot store holds fewer than `n` readings (its gauge is set every half
/// second: two settings are waited out before it is believed).
async fn held_fewer_than(gw: &Gateway, n: i64) {
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let held: i64 = gw
            .metrics()
            .await
            .lines()
            .find_map(|l| l.strip_prefix("citygate_query_hot_store_readings "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(i64::MAX);
        if held < n {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "readings never left memory"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_acknowledged_reading_is_in_history_and_latest_at_once() {
    let gw = Gateway::start().await;
    let provider = gw.provider_key("copenhagen").await;
    let device = gw.device_key(&[TRAFFIC]).await;
    let start = now_ms() - 1000;
    for i in 0..30 {
        let sensor = format!("rw-{}", i % 3);
        post(&gw, &device, &[(sensor.clone(), now_ms(), i)]).await;
        // Asked at once, by the provider (who sees its dataset fully).
        let (status, body) = gw
            .get_as(
                &format!(
                    "{HISTORY}?from={}&sensors={sensor}&order=desc&limit=1",
                    at(start)
                ),
                &provider,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["readings"][0]["vehicle_count"], i, "{body}");
        let (status, body) = gw
            .get_as(&format!("{LATEST}?sensors={sensor}"), &provider)
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["readings"][0]["vehicle_count"], i, "{body}");
    }
    // Over MQTT: queryable once the PUBACK is in.
    let mut s = crate::mqtt::raw_client(&gw, &device, "rw-mqtt").await;
    for i in 0..10u16 {
        let payload = format!(r#"{{"vehicle_count": {}}}"#, 100 + i);
        s.write_all(&crate::mqtt::raw_publish(
            b"citygate/traffic-counts/rw-mqtt",
            payload.as_bytes(),
            0b0010,
            i + 1,
        ))
        .await
        .unwrap();
        let puback = crate::mqtt::read_n(&mut s, 4).await;
        assert_eq!(puback, [0x40, 0x02, 0, i as u8 + 1]);
        let (_, body) = gw
            .get_as(&format!("{LATEST}?sensors=rw-mqtt"), &provider)
            .await;
        assert_eq!(body["readings"][0]["vehicle_count"], 100 + i, "{body}");
        let (_, body) = gw
            .get_as(
                &format!(
                    "{HISTORY}?from={}&sensors=rw-mqtt&order=desc&limit=1",
                    at(start)
                ),
                &provider,
            )
            .await;
        assert_eq!(body["readings"][0]["vehicle_count"], 100 + i, "{body}");
    }
    let (_, body) = gw
        .get_as(&format!("{LATEST}?sensors=rw-0,rw-1,rw-2"), &provider)
        .await;
    let latest: Vec<(String, i64)> = body["readings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["sensor_id"].as_str().unwrap().to_string(),
                r["vehicle_count"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        latest,
        [
            ("rw-0".into(), 27),
            ("rw-1".into(), 28),
            ("rw-2".into(), 29)
        ]
    );
}

#[tokio::test]
async fn paging_returns_each_reading_once_while_readings_move_to_parquet() {
    let gw = Gateway::start_with(|c| {
        c.parquet.max_age = Duration::from_millis(100);
        c.query.hot_window = Duration::from_secs(1);
    })
    .await;
    let provider = gw.provider_key("copenhagen").await;
    let device = gw.device_key(&[TRAFFIC]).await;
    // 1 200 readings two hours ago, a second apart, 4 sensors; several share a time.
    let base = (now_ms() - 2 * HOUR_MS) / 1000 * 1000;
    let readings: Vec<(String, i64, i64)> = (0..1200)
        .map(|i| (format!("pg-{}", i % 4), base + (i / 2) * 1000, i))
        .collect();
    for batch in readings.chunks(100) {
        post(&gw, &device, batch).await;
    }
    // Others keep posting (outside the range) while the pages are read.
    let writer = {
        let (client, url, device) = (
            gw.client.clone(),
            gw.url("/v1/datasets/traffic-counts/readings"),
            device.clone(),
        );
        tokio::spawn(async move {
            for i in 0..40 {
                let body = json!([{"sensor_id": "other", "ts": now_ms(), "vehicle_count": i}]);
                let resp = client
                    .post(&url)
                    .bearer_auth(&device)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), 204);
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        })
    };
    let query = format!(
        "{HISTORY}?from={}&to={}&sensors=pg-0,pg-1,pg-2,pg-3&limit=37",
        at(base),
        at(base + 600_000)
    );
    // The first page comes from memory; then the readings leave it for the lake (written,
    // and past the one-second window) before the rest of the pages are read.
    let (status, first) = gw.get_as(&query, &provider).await;
    assert_eq!(status, 200, "{first}");
    let mut seen: Vec<i64> = first["readings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["vehicle_count"].as_i64().unwrap())
        .collect();
    held_fewer_than(&gw, 1200).await;
    let next = first["next"].as_str().unwrap();
    let rest = all_pages(
        &gw,
        &format!("{query}&cursor={next}"),
        &provider,
        Duration::from_millis(20),
    )
    .await;
    seen.extend(rest);
    writer.await.unwrap();
    assert_eq!(seen.len(), 1200, "every reading once");
    seen.sort_unstable();
    assert_eq!(seen, (0..1200).collect::<Vec<_>>());
    // The readings left memory for the lake on the way: the query read Parquet files.
    assert!(
        gw.metrics()
            .await
            .lines()
            .any(|l| l.starts_with("citygate_query_lake_files_read_total ") && !l.ends_with(" 0")),
        "no Parquet file was read"
    );
    // In time order, descending too.
    let (_, body) = gw
        .get_as(&query.replace("limit=37", "order=desc&limit=3"), &provider)
        .await;
    let counts: Vec<i64> = body["readings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["vehicle_count"].as_i64().unwrap())
        .collect();
    assert_eq!(counts, [1199, 1198, 1197]);
}

#[tokio::test]
async fn history_survives_a_restart_complete_and_once() {
    let gw = Gateway::start().await;
    let device = gw.device_key(&[TRAFFIC]).await;
    let base = now_ms() - HOUR_MS;
    let readings: Vec<(String, i64, i64)> = (0..500)
        .map(|i| (format!("rs-{}", i % 5), base + i * 100, i))
        .collect();
    for batch in readings.chunks(50) {
        post(&gw, &device, batch).await;
    }
    let gw = gw.restart().await;
    let provider = gw.provider_key("copenhagen").await;
    let query = format!("{HISTORY}?from={}&to={}&limit=1000", at(base), at(now_ms()));
    let mut seen = all_pages(&gw, &query, &provider, Duration::ZERO).await;
    seen.sort_unstable();
    assert_eq!(seen, (0..500).collect::<Vec<_>>());
    // Each sensor's last reading, from the lake and the log's replay.
    let (_, body) = gw.get_as(LATEST, &provider).await;
    let last: Vec<i64> = body["readings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["vehicle_count"].as_i64().unwrap())
        .collect();
    assert_eq!(last, [495, 496, 497, 498, 499], "{body}");
}

#[tokio::test]
async fn aggregates_equal_duckdb_over_the_same_readings() {
    // Readings of two hours, the older part past a two-hour window: the answer crosses
    // from the lake (read from columns) to the hot store.
    let gw = Gateway::start_with(|c| {
        c.parquet.max_age = Duration::from_millis(100);
        c.query.hot_window = Duration::from_secs(2 * 3600);
    })
    .await;
    let provider = gw.provider_key("copenhagen").await;
    let device = gw.device_key(&[TRAFFIC]).await;
    let hour = (now_ms() - 3 * HOUR_MS) / HOUR_MS * HOUR_MS;
    // Three sensors over two hours, distinct times per sensor, counts that vary.
    let readings: Vec<(String, i64, i64)> = (0..720)
        .map(|i| {
            (
                format!("ag-{}", i % 3),
                hour + i * 10_000 + i % 3,
                (i * 37) % 101,
            )
        })
        .collect();
    // The first hour, all past the window: written (a file per post), then gone from memory.
    for (i, batch) in readings[..360].chunks(120).enumerate() {
        post(&gw, &device, batch).await;
        in_parquet(&gw, 120 * (i + 1)).await;
    }
    held_fewer_than(&gw, 1).await;
    // The second hour stays in memory (its chunk reaches into the window).
    for batch in readings[360..].chunks(120) {
        post(&gw, &device, batch).await;
    }
    // Wait until the lake holds them all too (DuckDB reads the files).
    in_parquet(&gw, readings.len()).await;
    let (from, to) = (hour, hour + 2 * HOUR_MS);
    let (status, body) = gw
        .get_as(
            &format!(
                "{AGGREGATE}?from={}&to={}&every=15m&fn=count,mean,min,max,sum,first,last&fields=vehicle_count",
                at(from),
                at(to)
            ),
            &provider,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let ours = body["buckets"].as_array().unwrap();
    let theirs = duckdb_buckets(&gw, (from, to), 15 * 60 * 1_000_000, None).await;
    assert_eq!(ours.len(), 8 * 3);
    same_buckets(ours, &theirs);
    // The metrics say where the readings came from and what was read for them.
    let lake = gw
        .counter("citygate_query_rows_scanned_total{source=\"lake\"}")
        .await;
    let hot = gw
        .counter("citygate_query_rows_scanned_total{source=\"hot\"}")
        .await;
    assert!(lake >= 360 && hot >= 360, "lake {lake}, hot {hot}");
    // The first hour came in three posts, each its own file: a quarter hour opens them
    // all and reads only the row group whose times reach into it.
    let pruned = "citygate_query_lake_row_groups_total{outcome=\"pruned\"}";
    let before = gw.counter(pruned).await;
    let (status, body) = gw
        .get_as(
            &format!(
                "{AGGREGATE}?from={}&to={}&every=15m&fields=vehicle_count",
                at(from),
                at(from + HOUR_MS / 4)
            ),
            &provider,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["buckets"].as_array().unwrap().len(), 3, "{body}");
    assert!(
        gw.counter(pruned).await >= before + 2,
        "{}",
        gw.metrics().await
    );
    // One bucket for all sensors: the counts add up.
    let (_, body) = gw
        .get_as(
            &format!(
                "{AGGREGATE}?from={}&to={}&every=1h&fn=count&group_by=none",
                at(from),
                at(to)
            ),
            &provider,
        )
        .await;
    let counts: Vec<i64> = body["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["vehicle_count_count"].as_i64().unwrap())
        .collect();
    assert_eq!(counts, [360, 360]);
}

/// DuckDB's buckets of `vehicle_count` over the gateway's Parquet files (see
/// tests/peers/duckdb_aggregate.py).
async fn duckdb_buckets(
    gw: &Gateway,
    (from, to): (i64, i64),
    every_us: i64,
    tz: Option<&str>,
) -> Vec<Value> {
    let root = gw.dir.path().join("parquet");
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/duckdb_aggregate.py");
    let mut args = vec![
        script.display().to_string(),
        root.display().to_string(),
        TRAFFIC.to_string(),
        (from * 1000).to_string(),
        (to * 1000).to_string(),
        every_us.to_string(),
    ];
    args.extend(tz.map(str::to_string));
    let out = tokio::task::spawn_blocking(move || python().args(&args).output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Our buckets (JSON, every function of `vehicle_count`) equal DuckDB's: counts exactly,
/// floats to 1e-9 relative.
fn same_buckets(ours: &[Value], theirs: &[Value]) {
    assert_eq!(ours.len(), theirs.len(), "{ours:?}\nvs\n{theirs:?}");
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0);
    for (o, t) in ours.iter().zip(theirs) {
        assert_eq!(o["bucket"], at(t[0].as_i64().unwrap() / 1000), "{o} vs {t}");
        assert_eq!(o["sensor_id"], t[1], "{o} vs {t}");
        assert_eq!(o["vehicle_count_count"], t[2], "{o} vs {t}");
        for (i, name) in ["mean", "min", "max", "sum", "first", "last"]
            .iter()
            .enumerate()
        {
            let ours = o[format!("vehicle_count_{name}")].as_f64().unwrap();
            let theirs = t[3 + i].as_f64().unwrap();
            assert!(close(ours, theirs), "{name}: {ours} vs {theirs} in {o}");
        }
    }
}

#[tokio::test]
async fn day_buckets_in_a_time_zone_run_from_local_midnight_like_duckdb() {
    let gw = Gateway::start_with(|c| c.parquet.max_age = Duration::from_millis(100)).await;
    let provider = gw.provider_key("copenhagen").await;
    let device = gw.device_key(&[TRAFFIC]).await;
    // Two sensors every 15 minutes over the last two days: at least one Copenhagen
    // midnight (23:00 or 22:00 UTC) falls inside.
    let end = now_ms() / 1000 * 1000;
    let start = end - 48 * HOUR_MS;
    let readings: Vec<(String, i64, i64)> = (0..192 * 2)
        .map(|i| {
            (
                format!("tz-{}", i % 2),
                start + (i / 2) * 15 * 60_000 + i % 2,
                (i * 13) % 47,
            )
        })
        .collect();
    for batch in readings.chunks(100) {
        post(&gw, &device, batch).await;
    }
    in_parquet(&gw, readings.len()).await;
    let (from, to) = (start, end + 1);
    let (status, body) = gw
        .get_as(
            &format!(
                "{AGGREGATE}?from={}&to={}&every=1d&tz=Europe/Copenhagen&fn=count,mean,min,max,sum,first,last&fields=vehicle_count",
                at(from),
                at(to)
            ),
            &provider,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let ours = body["buckets"].as_array().unwrap();
    // Buckets start at local midnight, not UTC midnight.
    for b in ours {
        let start = b["bucket"].as_str().unwrap();
        assert!(
            start.contains("T23:00:00") || start.contains("T22:00:00"),
            "{start} is not a Copenhagen midnight"
        );
    }
    let theirs = duckdb_buckets(&gw, (from, to), 86_400_000_000, Some("Europe/Copenhagen")).await;
    same_buckets(ours, &theirs);
    // A bucket that does not fit local days, and an unknown zone, are refused.
    for (query, code) in [
        ("every=7m&tz=Europe/Copenhagen", "invalid_every"),
        ("every=1h&tz=Europe/Copenhagen", "invalid_every"),
        ("every=1d&tz=Mars/Olympus_Mons", "invalid_tz"),
    ] {
        let (status, body) = gw.get_as(&format!("{AGGREGATE}?{query}"), &provider).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"], code, "{query}: {body}");
    }
}

#[tokio::test]
async fn the_marketplace_decides_who_reads_what_history() {
    let gw = Gateway::start().await;
    let provider = gw.provider_key("copenhagen").await;
    let (_, stranger) = gw.account("subscriber", "Nobody", "private").await;
    let (open_key, _, device) = subscribed(&gw, open_plan()).await;
    plan(
        &gw,
        &provider,
        json!({"id": "late", "name": "Free, 15 minutes late", "kind": "free", "delay": "15m"}),
    )
    .await;
    plan(
        &gw,
        &provider,
        json!({"id": "summary", "name": "Free, 5 minute summaries", "kind": "free", "aggregate": "5m"}),
    )
    .await;
    let (_, late) = gw.account("subscriber", "Late Lab", "research").await;
    subscribe(&gw, &late, "late").await;
    let (_, summary) = gw.account("subscriber", "Summary Lab", "research").await;
    subscribe(&gw, &summary, "summary").await;

    let now = now_ms();
    post(
        &gw,
        &device,
        &[
            ("mk-1".into(), now - HOUR_MS, 1),
            ("mk-1".into(), now - 1000, 2),
        ],
    )
    .await;
    let range = format!("from={}&to={}", at(now - 2 * HOUR_MS), at(now + 1000));
    let counts = |body: &Value| -> Vec<i64> {
        body["readings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["vehicle_count"].as_i64().unwrap())
            .collect()
    };

    // No subscription: the dataset does not exist for this key, on every route.
    for path in [
        format!("{HISTORY}?{range}"),
        LATEST.to_string(),
        format!("{AGGREGATE}?{range}&every=1h"),
    ] {
        let (status, body) = gw.get_as(&path, &stranger).await;
        assert_eq!(status, 404, "{path}: {body}");
    }
    let (status, _) = gw.get_as(&format!("{HISTORY}?{range}"), "").await;
    assert_eq!(status, 401);

    // A free plan in real time sees both readings.
    let (status, body) = gw.get_as(&format!("{HISTORY}?{range}"), &open_key).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(counts(&body), [1, 2]);

    // A delayed plan sees only what is older than its delay, on every route.
    let (_, body) = gw.get_as(&format!("{HISTORY}?{range}"), &late).await;
    assert_eq!(counts(&body), [1]);
    let (_, body) = gw.get_as(LATEST, &late).await;
    assert_eq!(counts(&body), [1]);
    let (_, body) = gw
        .get_as(
            &format!("{AGGREGATE}?{range}&every=1h&fn=count&group_by=none"),
            &late,
        )
        .await;
    let total: i64 = body["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["vehicle_count_count"].as_i64().unwrap())
        .sum();
    assert_eq!(total, 1, "{body}");

    // An aggregate plan: buckets of its window or longer, no single readings.
    for path in [format!("{HISTORY}?{range}"), LATEST.to_string()] {
        let (status, body) = gw.get_as(&path, &summary).await;
        assert_eq!(status, 403, "{path}: {body}");
        assert!(
            body["message"].as_str().unwrap().contains("/aggregate"),
            "{body}"
        );
    }
    let (status, _) = gw
        .get_as(&format!("{AGGREGATE}?{range}&every=1m"), &summary)
        .await;
    assert_eq!(status, 403);
    let (status, body) = gw
        .get_as(&format!("{AGGREGATE}?{range}&every=5m&fn=count"), &summary)
        .await;
    assert_eq!(status, 200, "{body}");

    // Revoked: gone within a second.
    let (_, me) = gw.get_as("/v1/me", &open_key).await;
    let key_id = me["key"]["id"].as_str().unwrap();
    let (status, _) = gw
        .delete_as(&format!("/v1/keys/{key_id}"), &gw.admin_key)
        .await;
    assert_eq!(status, 204);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, _) = gw.get_as(&format!("{HISTORY}?{range}"), &open_key).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn formats_links_and_bad_parameters() {
    let gw = Gateway::start().await;
    let provider = gw.provider_key("copenhagen").await;
    let device = gw.device_key(&[TRAFFIC]).await;
    let now = now_ms();
    post(
        &gw,
        &device,
        &(0..5)
            .map(|i| ("fm-1".to_string(), now - 5000 + i * 1000, i))
            .collect::<Vec<_>>(),
    )
    .await;
    let range = format!("from={}&to={}", at(now - 60_000), at(now + 1000));

    // CSV: a header row, one line per reading, CRLF; a Link to the next page.
    let (status, headers, text) =
        gw_csv(&gw, &format!("{HISTORY}?{range}&limit=3"), &provider).await;
    assert_eq!(status, 200, "{text}");
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    let lines: Vec<&str> = text.split("\r\n").filter(|l| !l.is_empty()).collect();
    assert_eq!(lines[0], "sensor_id,ts,vehicle_count,mean_speed,lat,lon");
    assert_eq!(lines.len(), 4, "{text}");
    assert!(lines[1].starts_with("fm-1,"), "{text}");
    let link = headers["link"].to_str().unwrap();
    assert!(
        link.contains("cursor=") && link.ends_with("rel=\"next\""),
        "{link}"
    );
    let next = link.trim_start_matches('<').split('>').next().unwrap();
    let (status, _, rest) = gw_csv(&gw, next, &provider).await;
    assert_eq!(status, 200);
    assert_eq!(
        rest.split("\r\n").filter(|l| !l.is_empty()).count(),
        3,
        "{rest}"
    );

    // NDJSON by format=.
    let (status, _, text) = get_text(
        &gw,
        &format!("{HISTORY}?{range}&format=ndjson"),
        &provider,
        None,
    )
    .await;
    assert_eq!(status, 200);
    let rows: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 5);
    assert_eq!(rows[4]["vehicle_count"], 4);

    // Nothing we write: 406.
    let (status, _, _) = get_text(&gw, HISTORY, &provider, Some("image/png")).await;
    assert_eq!(status, 406);

    // Every bad parameter: 400 with what is wrong.
    let huge = format!("from={}&to={}", at(now - 400 * 24 * HOUR_MS), at(now));
    for (query, code) in [
        (format!("{HISTORY}?from=yesterday"), "invalid_time"),
        (
            format!("{HISTORY}?from={}&to={}", at(now), at(now - 1000)),
            "invalid_range",
        ),
        (format!("{HISTORY}?{huge}"), "range_too_long"),
        (format!("{HISTORY}?fields=nope"), "unknown_field"),
        (format!("{HISTORY}?limit=0"), "invalid_limit"),
        (format!("{HISTORY}?limit=1000000"), "invalid_limit"),
        (format!("{HISTORY}?order=sideways"), "invalid_order"),
        (format!("{HISTORY}?cursor=zzz"), "invalid_cursor"),
        (format!("{HISTORY}?format=xml"), "invalid_format"),
        (format!("{HISTORY}?sensors=,"), "invalid_filter"),
        (format!("{HISTORY}?bbox=1,2,3"), "invalid_filter"),
        (format!("{AGGREGATE}?every=soon"), "invalid_every"),
        (format!("{AGGREGATE}?every=1ns"), "invalid_every"),
        (format!("{AGGREGATE}?{range}&every=1ms"), "too_many_buckets"),
        (format!("{AGGREGATE}?every=1h&fn=median"), "invalid_fn"),
        (
            format!("{AGGREGATE}?every=1h&group_by=street"),
            "invalid_group_by",
        ),
    ] {
        let (status, body) = gw.get_as(&query, &provider).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"], code, "{query}: {body}");
    }
    let (status, body) = gw.get_as(&format!("{HISTORY}?colour=red"), &provider).await;
    assert_eq!(status, 400, "{body}");
}

async fn gw_csv(gw: &Gateway, path: &str, key: &str) -> (u16, reqwest::header::HeaderMap, String) {
    get_text(gw, path, key, Some("text/csv")).await
}

#[tokio::test]
async fn a_plan_reaches_back_its_history_term_and_queries_are_metered_apart() {
    let gw = Gateway::start().await;
    let (key, sub, device) = subscribed(
        &gw,
        json!({"id": "day", "name": "Free, the last day", "kind": "free", "history": "1d"}),
    )
    .await;
    // The catalog shows the term.
    let (_, plans) = gw.get_as("/v1/catalog/traffic-counts/plans", "").await;
    assert_eq!(plans[0]["history"], "1day", "{plans}");
    let now = now_ms();
    post(
        &gw,
        &device,
        &[
            ("hi-1".into(), now - 2 * HOUR_MS, 1),
            ("hi-1".into(), now - 1000, 2),
        ],
    )
    .await;
    let (status, body) = gw
        .get_as(
            &format!("{HISTORY}?from={}", at(now - 2 * 24 * HOUR_MS)),
            &key,
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("reaches back"),
        "{body}"
    );
    let (status, body) = gw
        .get_as(&format!("{HISTORY}?from={}", at(now - 3 * HOUR_MS)), &key)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["readings"].as_array().unwrap().len(), 2);
    let (status, _) = gw
        .get_as(
            &format!(
                "{AGGREGATE}?from={}&every=1h&group_by=none&fn=count",
                at(now - 3 * HOUR_MS)
            ),
            &key,
        )
        .await;
    assert_eq!(status, 200);

    // 2 readings and (at least) 1 bucket returned: metered as query rows, not deliveries.
    let (status, usage) = gw
        .get_as(
            &format!(
                "/v1/usage?from={}&to={}",
                at(now - HOUR_MS),
                at(now + HOUR_MS)
            ),
            &key,
        )
        .await;
    assert_eq!(status, 200, "{usage}");
    let rows: Vec<&Value> = usage["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["subscription"] == sub.as_str())
        .collect();
    let query_rows: i64 = rows.iter().map(|r| r["query_rows"].as_i64().unwrap()).sum();
    let delivered: i64 = rows.iter().map(|r| r["readings"].as_i64().unwrap()).sum();
    assert!(query_rows >= 3, "{usage}");
    assert_eq!(delivered, 0, "{usage}");
    assert_eq!(usage["total_query_rows"], query_rows, "{usage}");
}

#[tokio::test]
async fn a_metered_plan_bills_query_rows_on_a_line_of_their_own() {
    let gw = Gateway::start().await;
    let provider = gw.provider_key("copenhagen").await;
    plan(
        &gw,
        &provider,
        json!({"id": "per-use", "name": "Pay per use", "kind": "metered", "currency": "DKK", "per_1000_minor": 1000}),
    )
    .await;
    let (account, key) = gw.account("subscriber", "Planning Office", "public").await;
    let sub = subscribe(&gw, &key, "per-use").await;
    let (status, _) = gw
        .post_as(
            &format!("/v1/subscriptions/{sub}/payments"),
            &gw.admin_key,
            json!({}),
        )
        .await;
    assert_eq!(status, 201);
    let device = gw.device_key(&[TRAFFIC]).await;
    let now = now_ms();
    let readings: Vec<(String, i64, i64)> = (0..7)
        .map(|i| ("me-1".to_string(), now - 10_000 + i, i))
        .collect();
    post(&gw, &device, &readings).await;
    let (status, body) = gw
        .get_as(&format!("{HISTORY}?from={}", at(now - 60_000)), &key)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["readings"].as_array().unwrap().len(), 7);

    let period = citygate::calendar::month_of(now * 1000);
    let (status, _) = gw
        .post_as(
            "/v1/invoices/generate",
            &gw.admin_key,
            json!({"period": period}),
        )
        .await;
    assert_eq!(status, 200);
    let (_, invoices) = gw.get_as("/v1/invoices", &key).await;
    let inv = &invoices[0];
    assert_eq!(inv["account"], account.as_str());
    let lines = inv["lines"].as_array().unwrap();
    let queried: Vec<&Value> = lines.iter().filter(|l| l["kind"] == "queried").collect();
    assert_eq!(queried.len(), 1, "{inv}");
    assert_eq!(queried[0]["quantity"], 7, "{inv}");
    // 7 rows at 10 DKK per 1000 = 0.07 DKK → 7 øre; no live deliveries, so no metered line.
    assert_eq!(queried[0]["amount_minor"], 7, "{inv}");
    assert!(lines.iter().all(|l| l["kind"] != "metered"), "{inv}");
    let (_, st) = gw
        .get_as(&format!("/v1/statements?period={period}"), &provider)
        .await;
    assert_eq!(st["datasets"][0]["query_rows"], 7, "{st}");
    assert_eq!(st["datasets"][0]["queried_minor"], 7, "{st}");
}

#[tokio::test]
async fn arrow_and_parquet_answers_read_in_pyarrow_and_csv_in_duckdb() {
    let gw = Gateway::start().await;
    let provider = gw.provider_key("copenhagen").await;
    let device = gw.device_key(&[TRAFFIC]).await;
    let now = now_ms() / 1000 * 1000;
    let body = json!([
        {"sensor_id": "pa-1", "ts": now - 3000, "vehicle_count": 4, "mean_speed": 31.5, "lat": 55.68, "lon": 12.57},
        {"sensor_id": "pa-2", "ts": now - 2000, "vehicle_count": 9}
    ]);
    assert_eq!(gw.post_json(TRAFFIC, &device, body).await.status(), 204);
    let range = format!("from={}&to={}", at(now - 60_000), at(now + 1000));
    let dir = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    for (accept, name) in [
        ("application/vnd.apache.arrow.stream", "answer.arrows"),
        ("application/vnd.apache.parquet", "answer.parquet"),
        ("text/csv", "answer.csv"),
    ] {
        let resp = gw
            .client
            .get(gw.url(&format!("{HISTORY}?{range}")))
            .bearer_auth(&provider)
            .header("accept", accept)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.headers()["content-type"]
                .to_str()
                .unwrap()
                .split(';')
                .next(),
            Some(accept)
        );
        let path = dir.path().join(name);
        std::fs::write(&path, resp.bytes().await.unwrap()).unwrap();
        paths.push(path.display().to_string());
    }
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/peers/read_query_formats.py")
        .display()
        .to_string();
    let out =
        tokio::task::spawn_blocking(move || python().arg(script).args(&paths).output().unwrap())
            .await
            .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_slice(&out.stdout).unwrap();
    for format in ["arrow", "parquet"] {
        let t = &seen[format];
        assert_eq!(t["types"]["ts"], "timestamp[us, tz=UTC]", "{t}");
        assert_eq!(t["types"]["vehicle_count"], "int64", "{t}");
        assert_eq!(t["types"]["mean_speed"], "double", "{t}");
        assert_eq!(t["types"]["sensor_id"], "string", "{t}");
        let rows = t["rows"].as_array().unwrap();
        assert_eq!(rows.len(), 2, "{t}");
        assert_eq!(rows[0]["sensor_id"], "pa-1");
        assert_eq!(rows[0]["mean_speed"], 31.5);
        assert_eq!(rows[1]["mean_speed"], Value::Null);
        assert_eq!(rows[1]["vehicle_count"], 9);
    }
    assert_eq!(seen["csv"]["rows"], 2, "{seen}");
    assert_eq!(
        seen["csv"]["columns"],
        json!([
            "sensor_id",
            "ts",
            "vehicle_count",
            "mean_speed",
            "lat",
            "lon"
        ])
    );
    // Buckets in Arrow too: a count is an integer, the rest floats.
    let resp = gw
        .client
        .get(gw.url(&format!("{AGGREGATE}?{range}&every=1h&format=arrow")))
        .bearer_auth(&provider)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .contains("traffic-counts-aggregate.arrows")
    );
}

#[tokio::test]
async fn a_key_past_its_query_allowance_is_told_when_to_come_back() {
    let gw = Gateway::start_with(|c| {
        c.query.rate_limit = citygate::model::RateLimit {
            per_second: 0.5,
            burst: 3,
        }
    })
    .await;
    let provider = gw.provider_key("copenhagen").await;
    let other = gw.provider_key("copenhagen").await;
    for _ in 0..3 {
        assert_eq!(gw.get_as(LATEST, &provider).await.0, 200);
    }
    let resp = gw
        .client
        .get(gw.url(LATEST))
        .bearer_auth(&provider)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    let wait: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&wait), "{wait}");
    // Another key has its own allowance.
    assert_eq!(gw.get_as(LATEST, &other).await.0, 200);
}

#[tokio::test]
async fn readings_of_one_sensor_and_time_come_in_log_order_wherever_they_are() {
    let gw = Gateway::start_with(|c| {
        c.parquet.max_age = Duration::from_millis(100);
        c.query.hot_window = Duration::from_secs(1);
    })
    .await;
    let provider = gw.provider_key("copenhagen").await;
    let device = gw.device_key(&[TRAFFIC]).await;
    let ts = now_ms() - 20 * 60_000;
    post(&gw, &device, &[("tie".into(), ts, 1)]).await;
    // The first has left memory for the lake before the second arrives.
    held_fewer_than(&gw, 1).await;
    post(&gw, &device, &[("tie".into(), ts, 2)]).await;
    let query = format!("{HISTORY}?from={}&sensors=tie&limit=1", at(ts - 1000));
    assert_eq!(
        all_pages(&gw, &query, &provider, Duration::ZERO).await,
        [1, 2]
    );
    let (_, body) = gw.get_as(&format!("{LATEST}?sensors=tie"), &provider).await;
    assert_eq!(
        body["readings"][0]["vehicle_count"], 2,
        "the last logged: {body}"
    );
    let (_, body) = gw
        .get_as(
            &format!(
                "{AGGREGATE}?from={}&every=1h&fn=first,last&sensors=tie",
                at(ts - 1000)
            ),
            &provider,
        )
        .await;
    assert_eq!(body["buckets"][0]["vehicle_count_first"], 1.0, "{body}");
    assert_eq!(body["buckets"][0]["vehicle_count_last"], 2.0, "{body}");

    // A cursor is for its own query: not another filter, not a forged time.
    let (_, page) = gw.get_as(&query, &provider).await;
    let next = page["next"].as_str().unwrap();
    let (status, body) = gw
        .get_as(
            &format!("{HISTORY}?from={}&limit=1&cursor={next}", at(ts - 1000)),
            &provider,
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_cursor");
    for forged in [
        "a-9223372036854775808_0_00000000_tie",
        "d9223372036854775807_0_00000000_tie",
    ] {
        let (status, _) = gw
            .get_as(&format!("{HISTORY}?limit=1&cursor={forged}"), &provider)
            .await;
        assert_eq!(status, 400);
    }
}

#[tokio::test]
async fn an_aggregate_plan_gets_whole_finished_buckets_and_a_short_history_its_default() {
    let gw = Gateway::start().await;
    let provider = gw.provider_key("copenhagen").await;
    plan(
        &gw,
        &provider,
        json!({"id": "summary", "name": "5 minute summaries", "kind": "free", "aggregate": "5m"}),
    )
    .await;
    plan(
        &gw,
        &provider,
        json!({"id": "recent", "name": "Half an hour, 5 minutes late", "kind": "free", "delay": "5m", "history": "30m"}),
    )
    .await;
    let (_, summary) = gw.account("subscriber", "Summary Lab", "research").await;
    subscribe(&gw, &summary, "summary").await;
    let (_, recent) = gw.account("subscriber", "Recent Lab", "research").await;
    subscribe(&gw, &recent, "recent").await;
    let device = gw.device_key(&[TRAFFIC]).await;
    let now = now_ms();
    let bucket = (now - 20 * 60_000) / 300_000 * 300_000;
    post(
        &gw,
        &device,
        &[
            ("ag-1".into(), bucket + 12_000, 71),
            ("ag-1".into(), bucket + 100_000, 5),
            ("ag-1".into(), now - 1000, 9),
        ],
    )
    .await;
    // A range cut inside a bucket gives nothing of it: no single reading shows.
    let (status, body) = gw
        .get_as(
            &format!(
                "{AGGREGATE}?every=5m&fn=count,first&from={}&to={}",
                at(bucket + 12_000),
                at(bucket + 13_000)
            ),
            &summary,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["buckets"], json!([]), "{body}");
    // The whole bucket, and not the one still filling.
    let (_, body) = gw
        .get_as(
            &format!("{AGGREGATE}?every=5m&fn=count&from={}", at(bucket)),
            &summary,
        )
        .await;
    let counts: Vec<i64> = body["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["vehicle_count_count"].as_i64().unwrap())
        .collect();
    assert_eq!(counts, [2], "{body}");

    // Without from=, a 30-minute plan reads its 30 minutes (not a 403 for the default hour),
    // and latest looks back from what the plan shows now.
    let (status, body) = gw.get_as(HISTORY, &recent).await;
    assert_eq!(status, 200, "{body}");
    let seen: Vec<i64> = body["readings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["vehicle_count"].as_i64().unwrap())
        .collect();
    assert_eq!(seen, [71, 5]);
    let (_, body) = gw.get_as(LATEST, &recent).await;
    assert_eq!(body["readings"][0]["vehicle_count"], 5, "{body}");
    // A plan whose history would not reach past its delay is refused.
    let (status, body) = gw
        .post_as(
            "/v1/catalog/traffic-counts/plans",
            &provider,
            json!({"id": "never", "name": "Never", "kind": "free", "delay": "1h", "history": "30m"}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_query_command_writes_every_page_as_one_file_in_each_format() {
    let gw = Gateway::start().await;
    let provider = gw.provider_key("copenhagen").await;
    let device = gw.device_key(&[TRAFFIC]).await;
    let now = now_ms();
    let readings: Vec<(String, i64, i64)> = (0..30)
        .map(|i| (format!("cq-{}", i % 3), now - 60_000 + i * 1000, i))
        .collect();
    post(&gw, &device, &readings).await;
    let dir = tempfile::tempdir().unwrap();
    let run = |format: &str, extra: &[&str]| {
        let out = dir.path().join(format!("answer.{format}"));
        let mut cmd = bin();
        cmd.args([
            "query",
            TRAFFIC,
            "--from",
            &at(now - 120_000),
            "--format",
            format,
        ])
        .args(["--page-size", "7", "--out", out.to_str().unwrap()])
        .args(["--api", &gw.base, "--api-key", &provider])
        .args(extra);
        let output = cmd.output().unwrap();
        assert!(
            output.status.success(),
            "{format}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        (out, String::from_utf8_lossy(&output.stderr).to_string())
    };
    let (csv, said) = tokio::task::block_in_place(|| run("csv", &[]));
    assert!(said.contains("30 readings"), "{said}");
    let text = std::fs::read_to_string(&csv).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 31, "one header, 30 readings:\n{text}");
    assert!(lines[0].starts_with("sensor_id,ts,"));
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("sensor_id")).count(),
        1
    );

    let (json_path, _) = tokio::task::block_in_place(|| run("json", &[]));
    let json: Value = serde_json::from_str(&std::fs::read_to_string(json_path).unwrap()).unwrap();
    let counts: Vec<i64> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["vehicle_count"].as_i64().unwrap())
        .collect();
    assert_eq!(counts, (0..30).collect::<Vec<_>>());

    let (parquet, _) = tokio::task::block_in_place(|| run("parquet", &[]));
    let file = std::fs::File::open(parquet).unwrap();
    let rows: usize = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap()
        .map(|b| b.unwrap().num_rows())
        .sum();
    assert_eq!(rows, 30);

    let (arrow, _) = tokio::task::block_in_place(|| run("arrow", &["--sensors", "cq-1"]));
    let reader =
        arrow_ipc::reader::StreamReader::try_new(std::fs::File::open(arrow).unwrap(), None)
            .unwrap();
    let rows: usize = reader.map(|b| b.unwrap().num_rows()).sum();
    assert_eq!(rows, 10);

    // Buckets and latest, one answer each; a refusal says why and exits 1.
    let (buckets, _) = tokio::task::block_in_place(|| {
        run(
            "csv",
            &["--every", "1h", "--fn", "count", "--group-by", "none"],
        )
    });
    let text = std::fs::read_to_string(buckets).unwrap();
    assert!(text.starts_with("bucket,vehicle_count_count"), "{text}");
    let output = tokio::task::block_in_place(|| {
        bin()
            .args(["query", TRAFFIC, "--from", "yesterday", "--api", &gw.base])
            .args(["--api-key", &provider])
            .output()
            .unwrap()
    });
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("400 invalid_time"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
