//! `citygate simulate` against a live gateway, over HTTP and MQTT: what it reports accepted
//! is what lands in Parquet.

use std::time::Duration;

use citygate::simulate::{SimFormat, SimulateOptions, run};

use crate::harness::*;

fn options(gw: &Gateway, key: &str, mqtt: bool, qos: u8, format: SimFormat) -> SimulateOptions {
    SimulateOptions {
        http: gw.base.clone(),
        mqtt: mqtt.then(|| format!("mqtt://{}", gw.app().mqtt_addr().unwrap())),
        qos,
        key: key.to_string(),
        rate: 2000.0,
        sensors: 10,
        duration: Duration::from_millis(1500),
        batch: 50,
        datasets: vec!["traffic-counts".into(), "weather".into()],
        format,
        concurrency: 2,
        progress: false,
    }
}

/// The readings stored; and `--sensors 10` means ten sensors per dataset, whatever the
/// number of workers.
async fn stored(gw: Gateway) -> usize {
    stored_of(gw, true).await
}

/// The readings stored; with `every_sensor`, each of the ten sensors per dataset among them
/// (not so under a rate limit, which may turn away all of one worker's sensors' readings).
async fn stored_of(gw: Gateway, every_sensor: bool) -> usize {
    let dir = gw.stop().await;
    for dataset in [TRAFFIC, "weather"].into_iter().filter(|_| every_sensor) {
        let mut sensors = sensor_ids(dir.path(), dataset);
        sensors.sort();
        sensors.dedup();
        assert_eq!(sensors.len(), 10, "{dataset}: {sensors:?}");
    }
    row_count(dir.path(), TRAFFIC) + row_count(dir.path(), "weather")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http_every_format() {
    for format in [
        SimFormat::Json,
        SimFormat::Ndjson,
        SimFormat::Senml,
        SimFormat::Line,
    ] {
        let gw = Gateway::start().await;
        let key = gw.device_key(&[TRAFFIC, "weather"]).await;
        let summary = run(options(&gw, &key, false, 1, format)).await.unwrap();
        assert_eq!(summary.errors, 0, "{format:?}: {:?}", summary.first_error);
        assert_eq!(summary.rejected, 0, "{format:?}");
        assert!(summary.accepted >= 1000, "{format:?}: {summary}");
        assert_eq!(stored(gw).await as u64, summary.accepted, "{format:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_mqtt_at_each_qos() {
    for (qos, format) in [
        (0, SimFormat::Json),
        (1, SimFormat::Senml),
        (2, SimFormat::Line),
    ] {
        let gw = Gateway::start().await;
        let key = gw.device_key(&[TRAFFIC, "weather"]).await;
        let summary = run(options(&gw, &key, true, qos, format)).await.unwrap();
        assert_eq!(summary.errors, 0, "qos {qos}: {:?}", summary.first_error);
        assert!(summary.accepted >= 1000, "qos {qos}: {summary}");
        assert_eq!(stored(gw).await as u64, summary.accepted, "qos {qos}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_is_throttled_not_lost() {
    let gw = Gateway::start_with(|c| {
        for ds in &mut c.datasets {
            ds.rate_limit.per_second = 200.0;
            ds.rate_limit.burst = 200;
        }
    })
    .await;
    let key = gw.device_key(&[TRAFFIC, "weather"]).await;
    let mut opts = options(&gw, &key, true, 1, SimFormat::Json);
    opts.rate = 0.0;
    let summary = run(opts).await.unwrap();
    assert!(summary.throttled > 0, "{summary}");
    assert_eq!(
        summary.sent,
        summary.accepted + summary.throttled,
        "{summary}"
    );
    assert_eq!(stored_of(gw, false).await as u64, summary.accepted);
}
