use std::sync::Mutex;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;

use super::line::{Shape, push_float};
use super::*;
use crate::config::{Config, DEFAULT_CONFIG};
use crate::model::{FieldType, Value};
use crate::pipeline::decode::tests::{field, reading, traffic};
use crate::telemetry::Metrics;

const T0: Micros = 1_795_680_900_000_000;

#[test]
fn points_are_line_protocol_with_typed_fields_and_escaping() {
    let mut ds = traffic();
    ds.id = "traffic counts".into();
    ds.provider = "city,of=cph".into();
    ds.fields
        .push(field("note", FieldType::String, None, false));
    ds.fields.push(field("ok", FieldType::Bool, None, false));
    let r = reading(&ds, T0, |r| {
        r.sensor_id = "tc 1".into();
        r.values[0] = Some(Value::Int(31));
        r.values[1] = Some(Value::Float(42.5));
        r.values[2] = Some(Value::Str("say \"hi\"".into()));
        r.values[3] = Some(Value::Bool(true));
        r.lat = Some(55.5);
        r.lon = Some(12.25);
        r.seq = Some(7);
    });
    let shape = Shape::new(Arc::new(ds.clone()));
    let mut out = String::new();
    assert!(shape.write_point(&mut out, &r));
    assert_eq!(
        out,
        "traffic\\ counts,provider=city\\,of\\=cph,sensor_id=tc\\ 1 vehicle_count=31i,mean_speed=42.5,\
         note=\"say \\\"hi\\\"\",ok=true,lat=55.5,lon=12.25,seq=7i 1795680900000000000\n"
    );

    let nan = reading(&ds, T0, |r| r.values[1] = Some(Value::Float(f64::NAN)));
    let mut out = String::new();
    assert!(
        !shape.write_point(&mut out, &nan),
        "a NaN is never sent; nothing else to send"
    );
    assert!(out.is_empty());

    // Large, small and integral floats, and the sensor id read back from a line for a reject.
    let r = reading(&ds, T0, |r| {
        r.sensor_id = "a,b=c d\\e".into();
        r.values[0] = None;
        r.values[1] = Some(Value::Float(1e21));
        r.lat = Some(-0.000001);
        r.lon = Some(12.0);
    });
    let mut out = String::new();
    assert!(shape.write_point(&mut out, &r));
    assert_eq!(
        out,
        "traffic\\ counts,provider=city\\,of\\=cph,sensor_id=a\\,b\\=c\\ d\\\\e \
         mean_speed=1e21,lat=-1e-6,lon=12.0 1795680900000000000\n"
    );
    assert_eq!(shape.sensor_of(&out), "a,b=c d\\e");
}

#[test]
fn a_newline_in_a_string_never_starts_a_second_point() {
    let mut ds = traffic();
    ds.fields
        .push(field("note", FieldType::String, None, false));
    let r = reading(&ds, T0, |r| {
        r.values[0] = Some(Value::Int(1));
        r.values[2] = Some(Value::Str("x\"\nevil,sensor_id=y n=1i 1\r\t".into()));
    });
    let shape = Shape::new(Arc::new(ds));
    let mut out = String::new();
    assert!(shape.write_point(&mut out, &r));
    assert_eq!(out.matches('\n').count(), 1, "{out:?}");
    assert!(out.ends_with('\n'));
    assert!(
        out.contains("note=\"x\\\" evil,sensor_id=y n=1i 1  \""),
        "{out:?}"
    );
}

fn float_text(f: f64) -> String {
    let mut out = String::new();
    push_float(
        &mut out,
        f,
        &mut ryu::Buffer::new(),
        &mut itoa::Buffer::new(),
    );
    out
}

#[test]
fn floats_are_written_exactly() {
    for (f, text) in [
        (55.67, "55.67"),
        (55.0701, "55.0701"),
        (12.0, "12.0"),
        (-0.5, "-0.5"),
        (-0.0, "-0.0"),
        (0.1, "0.1"),
        (1e-5, "0.00001"),
        (1e-7, "1e-7"),
        (123456.789, "123456.789"),
        (1e21, "1e21"),
    ] {
        assert_eq!(float_text(f), text);
    }
}

proptest::proptest! {
    #[test]
    fn floats_parse_back_to_themselves(
        bits in proptest::num::u64::ANY,
        decimal in -1_000_000_000i64..1_000_000_000,
        scale in 0u32..7,
    ) {
        let any = f64::from_bits(bits);
        let sensorish = decimal as f64 / 10f64.powi(scale as i32);
        for f in [any, sensorish] {
            if f.is_finite() {
                let back: f64 = float_text(f).parse().unwrap();
                proptest::prop_assert_eq!(back.to_bits(), f.to_bits(), "{}", float_text(f));
            }
        }
    }
}

/// A stand-in store: refuses any body holding `poison` (400) after `fail_first` 503s, and
/// keeps the lines it accepted.
#[derive(Default)]
struct Store {
    lines: Mutex<Vec<String>>,
    fail_first: Mutex<u32>,
}

async fn write(State(store): State<Arc<Store>>, body: Bytes) -> (StatusCode, String) {
    {
        let mut fail = store.fail_first.lock().unwrap();
        if *fail > 0 {
            *fail -= 1;
            return (StatusCode::SERVICE_UNAVAILABLE, "busy".into());
        }
    }
    let text = String::from_utf8_lossy(&body).to_string();
    if text.contains("poison") {
        return (StatusCode::BAD_REQUEST, "unable to parse 'poison'".into());
    }
    store
        .lines
        .lock()
        .unwrap()
        .extend(text.lines().map(str::to_string));
    (StatusCode::NO_CONTENT, String::new())
}

async fn fake_store(fail_first: u32) -> (Arc<Store>, String) {
    let store = Arc::new(Store {
        fail_first: Mutex::new(fail_first),
        ..Store::default()
    });
    let app = Router::new()
        .route("/api/v2/write", post(write))
        .with_state(store.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (store, url)
}

async fn make_sink(url: &str, dir: &std::path::Path) -> (InfluxSink, Arc<Registry>, InfluxMetrics) {
    let mut config = Config::from_toml(DEFAULT_CONFIG, "t", &[]).unwrap();
    config.storage.data_dir = dir.to_path_buf();
    config.influx.enabled = true;
    config.influx.url = url.to_string();
    config.influx.max_retry_delay = Duration::from_millis(50);
    let metrics = Arc::new(Metrics::new());
    let wal = Wal::open(
        &config.wal_dir(),
        &config.wal,
        Duration::from_secs(1),
        metrics.wal().clone(),
        false,
    )
    .unwrap();
    let registry = Arc::new(Registry::new(metrics.clone(), config.pipeline.rejects_kept));
    for spec in &config.datasets {
        registry.add(spec).unwrap();
    }
    let influx_metrics = metrics.influx().clone();
    let sink = InfluxSink::new(
        config.influx.clone(),
        registry.clone(),
        wal,
        influx_metrics.clone(),
    )
    .unwrap();
    (sink, registry, influx_metrics)
}

fn batch_of(sink: &InfluxSink, n: usize, poison: &[usize]) -> (Bytes, Vec<Point>) {
    let index = sink.shapes.read().unwrap().by_id["traffic-counts"];
    let shape = Shapes::get(&sink.shapes, index);
    let ds = shape.dataset.clone();
    let mut text = String::new();
    let mut points = Vec::new();
    for i in 0..n {
        let r = reading(&ds, T0, |r| {
            r.sensor_id = if poison.contains(&i) {
                format!("poison-{i}")
            } else {
                format!("ok-{i}")
            }
            .into();
            r.values[0] = Some(Value::Int(i as i64));
        });
        let start = text.len();
        assert!(shape.write_point(&mut text, &r));
        points.push(Point {
            shape: index,
            line: start..text.len(),
        });
    }
    (Bytes::from(text), points)
}

#[tokio::test]
async fn poison_points_are_split_out_and_recorded_the_rest_written() {
    let (store, url) = fake_store(0).await;
    let dir = tempfile::tempdir().unwrap();
    let (sink, registry, metrics) = make_sink(&url, dir.path()).await;
    let (text, points) = batch_of(&sink, 10, &[3, 7]);
    assert!(
        sink.write(text.clone(), &points, &CancellationToken::new())
            .await
    );
    let mut written: Vec<String> = store.lines.lock().unwrap().clone();
    written.sort();
    assert_eq!(written.len(), 8);
    assert!(written.iter().all(|l| l.contains("sensor_id=ok-")));
    let recent = registry.get("traffic-counts").unwrap().rejects.recent(10);
    let mut bad: Vec<String> = recent
        .iter()
        .map(|r| r.sensor_id.clone().unwrap())
        .collect();
    bad.sort();
    assert_eq!(bad, ["poison-3", "poison-7"]);
    assert_eq!(recent[0].reason, Reason::StoreRejected);
    assert!(recent[0].message.contains("400"), "{}", recent[0].message);
    assert_eq!(metrics.totals().2, 2);
}

#[tokio::test]
async fn an_unavailable_store_is_retried_until_it_answers() {
    let (store, url) = fake_store(3).await;
    let dir = tempfile::tempdir().unwrap();
    let (sink, _, metrics) = make_sink(&url, dir.path()).await;
    let (text, points) = batch_of(&sink, 5, &[]);
    assert!(
        sink.write(text.clone(), &points, &CancellationToken::new())
            .await
    );
    assert_eq!(store.lines.lock().unwrap().len(), 5, "written once, whole");
    assert_eq!(metrics.totals().1, 3);

    // A stop while the store is down gives up without claiming the points were written.
    let (_, url) = fake_store(u32::MAX).await;
    let dir = tempfile::tempdir().unwrap();
    let (sink, _, _) = make_sink(&url, dir.path()).await;
    let stop = CancellationToken::new();
    let stopper = {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            stop.cancel();
        })
    };
    assert!(!sink.write(text.clone(), &points, &stop).await);
    stopper.await.unwrap();
}
