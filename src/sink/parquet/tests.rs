use std::fs::File;
use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type, TimestampMicrosecondType};
use arrow_array::{Array, RecordBatch};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::*;
use crate::config::ByteSize;
use crate::model::Value;
use crate::pipeline::decode::tests::{reading, traffic};
use crate::telemetry::Metrics;

const T0: Micros = 1_795_680_900_000_000; // 2026-11-26T08:15:00Z

fn read(path: &Path) -> (RecordBatch, std::collections::HashMap<String, String>) {
    let builder = ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap()).unwrap();
    let kv = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .unwrap()
        .iter()
        .map(|kv| (kv.key.clone(), kv.value.clone().unwrap_or_default()))
        .collect();
    let batches: Vec<RecordBatch> = builder.build().unwrap().map(|b| b.unwrap()).collect();
    let batch = arrow_select_concat(&batches);
    (batch, kv)
}

fn arrow_select_concat(batches: &[RecordBatch]) -> RecordBatch {
    assert_eq!(batches.len(), 1, "small test files hold one batch");
    batches[0].clone()
}

fn traffic_reading(sensor: &str, ts: Micros, count: i64, speed: Option<f64>) -> Reading {
    let ds = traffic();
    reading(&ds, ts, |r| {
        r.sensor_id = sensor.into();
        r.received_at = ts + 5;
        r.values[0] = Some(Value::Int(count));
        r.values[1] = speed.map(Value::Float);
        r.seq = Some(count);
    })
}

#[test]
fn partitions_by_hour_with_typed_columns_and_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let ds = traffic();
    let layout = ParquetLayout::new(&ds, 1).unwrap();
    let readings = vec![
        traffic_reading("a", T0, 1, Some(10.5)),
        traffic_reading("b", T0 + HOUR, 2, None),
        traffic_reading("a", T0 + 60_000_000, 3, Some(30.0)),
        traffic_reading("c", T0 - 16 * HOUR, 4, Some(40.0)),
    ];
    let outcome = write_partitions(&layout, dir.path(), &ds.id, readings);
    assert!(outcome.failed.is_none());
    assert_eq!(outcome.stats.files, 3);
    assert_eq!(outcome.stats.rows, 4);

    let files = parquet_files(dir.path());
    let rel: Vec<String> = files
        .iter()
        .map(|p| {
            p.parent()
                .unwrap()
                .strip_prefix(dir.path())
                .unwrap()
                .display()
                .to_string()
        })
        .collect();
    assert_eq!(
        rel,
        vec![
            "dataset=traffic-counts/date=2026-11-25/hour=16",
            "dataset=traffic-counts/date=2026-11-26/hour=08",
            "dataset=traffic-counts/date=2026-11-26/hour=09",
        ]
    );

    let (batch, kv) = read(&files[1]);
    assert_eq!(batch.num_rows(), 2);
    let names: Vec<&str> = batch
        .schema_ref()
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect();
    assert_eq!(
        names,
        [
            "sensor_id",
            "ts",
            "vehicle_count",
            "mean_speed",
            "lat",
            "lon",
            "seq",
            "received_at",
            "ts_missing"
        ]
    );
    let counts = batch.column(2).as_primitive::<Int64Type>();
    assert_eq!(counts.values().to_vec(), vec![1, 3]);
    let speeds = batch.column(3).as_primitive::<Float64Type>();
    assert_eq!(speeds.value(0), 10.5);
    let ts = batch.column(1).as_primitive::<TimestampMicrosecondType>();
    assert_eq!(ts.value(0), T0);
    assert_eq!(
        batch.schema_ref().field(1).data_type(),
        &arrow_schema::DataType::Timestamp(arrow_schema::TimeUnit::Microsecond, Some("UTC".into()))
    );
    assert_eq!(
        batch
            .schema_ref()
            .field(3)
            .metadata()
            .get("unit")
            .map(String::as_str),
        Some("km/h")
    );
    assert!(batch.column(4).is_null(0), "lat absent");
    assert_eq!(kv["citygate.dataset"], "traffic-counts");
    assert_eq!(kv["citygate.licence"], "CC0-1.0");
    assert_eq!(kv["citygate.schema_version"], "1");
    assert!(kv["citygate.schema"].contains("vehicle_count"));

    let (b, _) = read(&files[2]);
    assert!(b.column(3).is_null(0), "missing optional field is null");
}

#[test]
fn failed_partitions_come_back_and_written_ones_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let ds = traffic();
    let layout = ParquetLayout::new(&ds, 1).unwrap();
    // A file where the second hour's directory must go makes that partition fail.
    let blocker = partition_dir(dir.path(), &ds.id, (T0 + HOUR) / HOUR);
    std::fs::create_dir_all(blocker.parent().unwrap()).unwrap();
    std::fs::write(&blocker, b"not a directory").unwrap();
    let readings = vec![
        traffic_reading("a", T0, 1, None),
        traffic_reading("b", T0 + HOUR, 2, None),
        traffic_reading("c", T0 + HOUR, 3, None),
    ];
    let outcome = write_partitions(&layout, dir.path(), &ds.id, readings);
    assert_eq!(outcome.stats.files, 1);
    let (err, rest) = outcome.failed.expect("second partition fails");
    assert!(err.to_string().contains("hour=09"), "{err}");
    let sensors: Vec<&str> = rest.iter().map(|r| r.sensor_id.as_str()).collect();
    assert_eq!(sensors, ["b", "c"]);
    assert!(
        std::fs::read_dir(dir.path().join("dataset=traffic-counts/date=2026-11-26"))
            .unwrap()
            .flatten()
            .all(|e| !e.file_name().to_string_lossy().ends_with(".tmp")),
        "no temp file left behind"
    );
}

#[test]
fn stale_temp_files_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let part = dir.path().join("dataset=x/date=2026-01-01/hour=00");
    std::fs::create_dir_all(&part).unwrap();
    std::fs::write(part.join(".part-1-0.parquet.tmp"), b"half").unwrap();
    std::fs::write(part.join("part-1-0.parquet"), b"kept").unwrap();
    assert_eq!(remove_stale_temp_files(dir.path()), 1);
    assert_eq!(parquet_files(dir.path()).len(), 1);
}

fn sink(root: &Path, max_rows: usize, max_age: Duration) -> (ParquetSink, DatasetMetrics) {
    sink_with_bytes(root, max_rows, ByteSize::mib(64), max_age)
}

fn sink_with_bytes(
    root: &Path,
    max_rows: usize,
    max_bytes: ByteSize,
    max_age: Duration,
) -> (ParquetSink, DatasetMetrics) {
    let metrics = Metrics::new().dataset("traffic-counts");
    let cfg = ParquetConfig {
        max_rows,
        max_bytes,
        max_age,
        zstd_level: 1,
    };
    let s = ParquetSink::new(
        Arc::new(traffic()),
        root.to_path_buf(),
        cfg,
        metrics.clone(),
    )
    .unwrap();
    (s, metrics)
}

async fn send(tx: &mpsc::Sender<SinkMsg>, readings: Vec<Reading>) {
    let (ack, acked) = oneshot::channel();
    tx.send(SinkMsg { readings, ack }).await.unwrap();
    acked.await.expect("sink acknowledges");
}

/// Waits (in real time: the encoder runs on a blocking thread) for `n` files under `root`.
fn wait_for_files(root: &Path, n: usize) -> Vec<PathBuf> {
    for _ in 0..2000 {
        let files = parquet_files(root);
        if files.len() >= n {
            return files;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    panic!("expected {n} files, found {:?}", parquet_files(root));
}

async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn flushes_on_age_not_before() {
    let dir = tempfile::tempdir().unwrap();
    let (s, metrics) = sink(dir.path(), 1000, Duration::from_secs(10));
    let (tx, rx) = mpsc::channel(8);
    let stop = CancellationToken::new();
    let task = tokio::spawn(s.run(rx, stop.clone()));

    send(
        &tx,
        (0..5).map(|i| traffic_reading("a", T0, i, None)).collect(),
    )
    .await;
    settle().await;
    assert_eq!(
        metrics.parquet_buffered.get(),
        5,
        "acked readings wait in the buffer"
    );
    tokio::time::advance(Duration::from_millis(9_990)).await;
    settle().await;
    assert!(
        parquet_files(dir.path()).is_empty(),
        "not due before max_age"
    );
    tokio::time::advance(Duration::from_millis(20)).await;
    settle().await;
    let files = wait_for_files(dir.path(), 1);
    assert_eq!(read(&files[0]).0.num_rows(), 5);

    stop.cancel();
    task.await.unwrap();
    assert_eq!(metrics.parquet_rows.get(), 5);
    assert_eq!(metrics.parquet_files.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn flushes_on_row_count_and_drains_on_stop() {
    let dir = tempfile::tempdir().unwrap();
    let (s, metrics) = sink(dir.path(), 10, Duration::from_secs(3600));
    let (tx, rx) = mpsc::channel(8);
    let stop = CancellationToken::new();
    let task = tokio::spawn(s.run(rx, stop.clone()));

    send(
        &tx,
        (0..6).map(|i| traffic_reading("a", T0, i, None)).collect(),
    )
    .await;
    settle().await;
    assert!(parquet_files(dir.path()).is_empty());
    send(
        &tx,
        (6..12).map(|i| traffic_reading("a", T0, i, None)).collect(),
    )
    .await;
    settle().await;
    let files = wait_for_files(dir.path(), 1);
    assert_eq!(
        read(&files[0]).0.num_rows(),
        12,
        "one flush of the whole buffer"
    );

    send(
        &tx,
        (12..15)
            .map(|i| traffic_reading("b", T0, i, None))
            .collect(),
    )
    .await;
    // A batch queued before stop is still taken and written.
    let (ack, acked) = oneshot::channel();
    tx.send(SinkMsg {
        readings: vec![traffic_reading("c", T0, 99, None)],
        ack,
    })
    .await
    .unwrap();
    stop.cancel();
    task.await.unwrap();
    acked
        .await
        .expect("queued batch acknowledged during the drain");
    assert_eq!(metrics.parquet_rows.get(), 16);
    assert_eq!(parquet_files(dir.path()).len(), 2);
    assert!(
        tx.send(SinkMsg {
            readings: vec![],
            ack: oneshot::channel().0
        })
        .await
        .is_err(),
        "closed after stop"
    );
}

#[tokio::test(start_paused = true)]
async fn flushes_on_buffered_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let per_reading = traffic_reading("a", T0, 0, None).approx_size();
    // Room for 10 readings by bytes, far more by rows and age.
    let budget = ByteSize((per_reading * 10) as u64);
    let (s, metrics) = sink_with_bytes(dir.path(), 1_000_000, budget, Duration::from_secs(3600));
    let (tx, rx) = mpsc::channel(8);
    let stop = CancellationToken::new();
    let task = tokio::spawn(s.run(rx, stop.clone()));
    send(
        &tx,
        (0..9).map(|i| traffic_reading("a", T0, i, None)).collect(),
    )
    .await;
    settle().await;
    assert!(
        parquet_files(dir.path()).is_empty(),
        "below the byte budget"
    );
    send(&tx, vec![traffic_reading("a", T0, 9, None)]).await;
    settle().await;
    let files = wait_for_files(dir.path(), 1);
    assert_eq!(read(&files[0]).0.num_rows(), 10);
    stop.cancel();
    task.await.unwrap();
    assert_eq!(metrics.parquet_rows.get(), 10);
}

#[tokio::test(start_paused = true)]
async fn a_failing_disk_keeps_readings_and_retries() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("lake");
    std::fs::write(&root, b"a file where the lake should be").unwrap();
    let (s, metrics) = sink(&root, 3, Duration::from_secs(3600));
    let (tx, rx) = mpsc::channel(8);
    let stop = CancellationToken::new();
    let task = tokio::spawn(s.run(rx, stop.clone()));

    send(
        &tx,
        (0..3).map(|i| traffic_reading("a", T0, i, None)).collect(),
    )
    .await;
    for _ in 0..200 {
        settle().await;
        if metrics.parquet_flush_errors.get() > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(metrics.parquet_flush_errors.get() >= 1);
    assert_eq!(
        metrics.parquet_buffered.get(),
        3,
        "readings kept for the retry"
    );

    std::fs::remove_file(&root).unwrap();
    stop.cancel();
    task.await.unwrap();
    let files = parquet_files(&root);
    assert_eq!(files.len(), 1);
    assert_eq!(read(&files[0]).0.num_rows(), 3);
}
