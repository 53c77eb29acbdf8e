//! Connection-level behaviour: timeouts, the connection cap, shutdown answers.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use citygate::api::{AppState, router};
use citygate::market::{KeyKind, Keyring, Store};
use citygate::pipeline::Pipeline;
use citygate::telemetry::Metrics;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::harness::*;

/// Reads until EOF or `limit`; returns what arrived and whether the peer closed.
async fn read_until_close(stream: &mut TcpStream, limit: Duration) -> (String, bool) {
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(limit, async {
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .is_ok();
    (String::from_utf8_lossy(&buf).to_string(), closed)
}

/// The first bytes the server sends back (within 5 s).
async fn first_answer(stream: &mut TcpStream) -> String {
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("answered")
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).to_string()
}

#[tokio::test]
async fn slow_headers_are_cut_off() {
    let gw = Gateway::start_with(|c| c.http.header_read_timeout = Duration::from_millis(300)).await;
    let mut stream = TcpStream::connect(gw.app().http_addr()).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // ... and never the blank line.
    let (_, closed) = read_until_close(&mut stream, Duration::from_secs(5)).await;
    assert!(
        closed,
        "a client that never finishes its headers is disconnected"
    );
}

#[tokio::test]
async fn slow_bodies_get_408() {
    let gw = Gateway::start_with(|c| c.http.request_timeout = Duration::from_millis(300)).await;
    let key = gw.device_key(&[TRAFFIC]).await;
    let mut stream = TcpStream::connect(gw.app().http_addr()).await.unwrap();
    let head = format!(
        "POST /v1/datasets/traffic-counts/readings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n[{{\"sensor_id\":"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let text = first_answer(&mut stream).await;
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
}

#[tokio::test]
async fn chunked_bodies_over_the_limit_are_413() {
    let gw = Gateway::start_with(|c| c.http.max_body = citygate::config::ByteSize::kib(1)).await;
    let key = gw.device_key(&[TRAFFIC]).await;
    let mut stream = TcpStream::connect(gw.app().http_addr()).await.unwrap();
    let head = format!(
        "POST /v1/datasets/traffic-counts/readings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
         Transfer-Encoding: chunked\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = " ".repeat(600);
    for _ in 0..3 {
        let _ = stream
            .write_all(format!("{:x}\r\n{chunk}\r\n", chunk.len()).as_bytes())
            .await;
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let text = first_answer(&mut stream).await;
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
}

#[tokio::test]
async fn connections_over_the_cap_wait_for_a_free_slot() {
    let gw = Gateway::start_with(|c| c.http.max_connections = 1).await;
    let addr = gw.app().http_addr();
    let request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";

    let mut first = TcpStream::connect(addr).await.unwrap();
    first.write_all(request).await.unwrap();
    let mut buf = vec![0u8; 512];
    let n = first.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));

    // The second connection is accepted by the kernel but not served while the first is open.
    let mut second = TcpStream::connect(addr).await.unwrap();
    second.write_all(request).await.unwrap();
    let waited = tokio::time::timeout(Duration::from_millis(400), second.read(&mut buf)).await;
    assert!(waited.is_err(), "served beyond max_connections");

    drop(first);
    let n = tokio::time::timeout(Duration::from_secs(5), second.read(&mut buf))
        .await
        .expect("served once the first connection closed")
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn intake_answers_503_once_shutdown_has_begun() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let metrics = Arc::new(Metrics::new());
    let closing = CancellationToken::new();
    let wal = citygate::wal::Wal::open(
        &config.wal_dir(),
        &config.wal,
        config.pipeline.queue_timeout,
        metrics.wal().clone(),
        false,
    )
    .unwrap();
    let registry = Arc::new(citygate::registry::Registry::new(
        metrics.clone(),
        config.pipeline.rejects_kept,
    ));
    for spec in &config.datasets {
        registry.add(spec).unwrap();
    }
    let hub = Arc::new(citygate::feed::Hub::new(config.feed.clone()));
    let hot = citygate::query::hot::HotStore::new(
        wal.clone(),
        citygate::query::hot::HotLimits {
            window: config.query.hot_window,
            max_bytes: config.query.hot_max_bytes.as_usize(),
            latest_lookback: config.query.latest_lookback,
        },
        metrics.query().clone(),
        false,
    );
    let pipeline = Pipeline::new(
        &config.pipeline,
        registry.clone(),
        wal,
        hub.clone(),
        closing.clone(),
    );
    let store = Store::connect(&config.database(), 2).await.unwrap();
    store.ensure_provider("copenhagen", "City").await.unwrap();
    let secret = store
        .create_key(KeyKind::Device, "copenhagen", &[TRAFFIC.to_string()])
        .await
        .unwrap()
        .secret;
    let pipeline = Arc::new(pipeline);
    let catalog = citygate::market::catalog::Catalog::new(store.clone(), Box::new(|_| Ok(())));
    let keyring = Arc::new(Keyring::new(store.clone()));
    let sessions = Arc::new(citygate::api::session::Sessions::new(store.clone()));
    let market = Arc::new(citygate::market::Market::new(store, &config).unwrap());
    let app = router(AppState {
        pipeline,
        registry,
        catalog: Arc::new(catalog),
        feed: Arc::new(citygate::feed::session::FeedService {
            hub,
            keyring: keyring.clone(),
            market: market.clone(),
            metrics: citygate::telemetry::FeedMetrics::default(),
            tasks: tokio_util::task::TaskTracker::new(),
            closing: closing.clone(),
            slots: Arc::new(citygate::feed::session::Slots::new(8)),
        }),
        query: Arc::new(citygate::query::QueryService::new(
            hot,
            citygate::sink::lake::Lake::Local(config.parquet_dir()),
            config.query.clone(),
        )),
        keyring,
        market,
        metrics,
        http: Arc::new(config.http.clone()),
        websockets: Arc::new(tokio::sync::Semaphore::new(8)),
        max_datasets_per_provider: 8,
        sessions,
        console: Arc::default(),
    });
    closing.cancel();

    let request = Request::post("/v1/datasets/traffic-counts/readings")
        .header("authorization", format!("Bearer {secret}"))
        .body(Body::from(r#"{"sensor_id":"a","vehicle_count":1}"#))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "5");
    let ready = app
        .oneshot(Request::get("/readyz").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
}

#[tokio::test]
async fn many_concurrent_clients_lose_nothing() {
    let gw = Gateway::start().await;
    let key = gw.device_key(&[TRAFFIC]).await;
    let mut tasks = Vec::new();
    for c in 0..8 {
        let client = gw.client.clone();
        let url = gw.url("/v1/datasets/traffic-counts/readings");
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            let mut accepted = 0;
            for r in 0..20 {
                let body: Vec<serde_json::Value> = (0..25)
                    .map(|i| serde_json::json!({"sensor_id": format!("c{c}-r{r}-{i}"), "vehicle_count": i}))
                    .collect();
                let resp = client
                    .post(&url)
                    .bearer_auth(&key)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), 204);
                accepted += 25;
            }
            accepted
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    let dir = gw.stop().await;
    let mut ids = sensor_ids(dir.path(), TRAFFIC);
    assert_eq!(ids.len(), total);
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), total, "every acknowledged reading exactly once");
}
