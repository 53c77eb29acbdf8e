use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type, TimestampMicrosecondType};
use arrow_array::{Array, RecordBatch};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::files::HOUR;
use super::*;
use crate::config::{ByteSize, FsyncMode, WalConfig};
use crate::model::{Micros, Value};
use crate::pipeline::decode::tests::{reading, traffic, weather};
use crate::telemetry::{Metrics, WalMetrics};
use crate::wal::{checkpoint, record};

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
    assert_eq!(batches.len(), 1, "small test files hold one batch");
    (batches[0].clone(), kv)
}

fn rows(root: &Path) -> usize {
    parquet_files(root)
        .iter()
        .map(|f| read(f).0.num_rows())
        .sum()
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
    let stats = write_partitions(&layout, dir.path(), &ds.id, (7, 9), &readings).unwrap();
    assert_eq!((stats.files, stats.rows), (3, 4));

    let files = parquet_files(dir.path());
    let rel: Vec<String> = files
        .iter()
        .map(|p| p.strip_prefix(dir.path()).unwrap().display().to_string())
        .collect();
    assert_eq!(
        rel,
        vec![
            "dataset=traffic-counts/date=2026-11-25/hour=16/part-00000000000000000007-00000000000000000009-0.parquet",
            "dataset=traffic-counts/date=2026-11-26/hour=08/part-00000000000000000007-00000000000000000009-1.parquet",
            "dataset=traffic-counts/date=2026-11-26/hour=09/part-00000000000000000007-00000000000000000009-2.parquet",
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
    assert!(
        read(&files[2]).0.column(3).is_null(0),
        "missing optional field is null"
    );
}

#[test]
fn writing_a_range_again_replaces_the_same_files() {
    let dir = tempfile::tempdir().unwrap();
    let ds = traffic();
    let layout = ParquetLayout::new(&ds, 1).unwrap();
    let readings = vec![
        traffic_reading("a", T0, 1, None),
        traffic_reading("b", T0 + HOUR, 2, None),
    ];
    // A file where the second hour's directory must go makes the write fail half way.
    let blocker = partition_dir(dir.path(), &ds.id, (T0 + HOUR) / HOUR);
    std::fs::create_dir_all(blocker.parent().unwrap()).unwrap();
    std::fs::write(&blocker, b"not a directory").unwrap();
    let err = write_partitions(&layout, dir.path(), &ds.id, (1, 2), &readings).unwrap_err();
    assert!(err.to_string().contains("hour=09"), "{err}");
    assert_eq!(
        parquet_files(dir.path()).len(),
        1,
        "the first hour was written"
    );
    std::fs::remove_file(&blocker).unwrap();
    write_partitions(&layout, dir.path(), &ds.id, (1, 2), &readings).unwrap();
    assert_eq!(
        parquet_files(dir.path()).len(),
        2,
        "the first file was replaced, not copied"
    );
    assert_eq!(rows(dir.path()), 2);
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

/// A log and a traffic sink on it, in a temp dir.
struct Rig {
    dir: tempfile::TempDir,
    wal: Wal,
    metrics: DatasetMetrics,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Rig {
    fn new(cfg: ParquetConfig) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        Rig::in_dir(dir, cfg)
    }

    fn in_dir(dir: tempfile::TempDir, cfg: ParquetConfig) -> Rig {
        let wal_config = WalConfig {
            fsync: FsyncMode::Never,
            ..WalConfig::default()
        };
        let wal = Wal::open(
            &dir.path().join("wal"),
            &wal_config,
            Duration::from_secs(5),
            WalMetrics::default(),
            false,
        )
        .unwrap();
        let metrics = Metrics::new().dataset("traffic-counts");
        let sink = ParquetSink::new(
            Arc::new(traffic()),
            Lake::Local(dir.path().join("parquet")),
            cfg,
            metrics.clone(),
            wal.clone(),
        )
        .unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn(sink.run(stop.clone()));
        Rig {
            dir,
            wal,
            metrics,
            stop,
            task: Some(task),
        }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("parquet")
    }

    async fn append(&self, readings: Vec<Reading>) -> u64 {
        let frame = record::encode(&traffic(), &readings, now_micros());
        self.wal.append(frame).await.unwrap()
    }

    async fn append_weather(&self) -> u64 {
        let ds = weather();
        let r = reading(&ds, T0, |r| r.values[0] = Some(Value::Float(1.0)));
        self.wal
            .append(record::encode(&ds, &[r], now_micros()))
            .await
            .unwrap()
    }

    /// Closes the log and stops the sink, which writes everything first.
    async fn stop(mut self) -> (tempfile::TempDir, DatasetMetrics) {
        let wal = self.wal.clone();
        tokio::task::spawn_blocking(move || wal.close())
            .await
            .unwrap();
        self.stop.cancel();
        self.task.take().unwrap().await.unwrap();
        (self.dir, self.metrics)
    }

    fn checkpoint(&self) -> Checkpoint {
        checkpoint::load(&self.dir.path().join("wal"), "parquet-traffic-counts").unwrap()
    }
}

fn cfg(max_rows: usize, max_bytes: ByteSize, max_age: Duration) -> ParquetConfig {
    ParquetConfig {
        max_rows,
        max_bytes,
        max_age,
        zstd_level: 1,
    }
}

/// Waits, in real time, for `n` files under `root`.
async fn wait_for_files(root: &Path, n: usize) -> Vec<PathBuf> {
    for _ in 0..500 {
        let files = parquet_files(root);
        if files.len() >= n {
            return files;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("expected {n} files, found {:?}", parquet_files(root));
}

#[tokio::test]
async fn flushes_on_age_not_before() {
    let rig = Rig::new(cfg(1000, ByteSize::mib(64), Duration::from_millis(1500)));
    let started = Instant::now();
    rig.append((0..5).map(|i| traffic_reading("a", T0, i, None)).collect())
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        parquet_files(&rig.root()).is_empty(),
        "not due before max_age"
    );
    assert_eq!(rig.metrics.parquet_buffered.get(), 5);
    let files = wait_for_files(&rig.root(), 1).await;
    assert!(
        started.elapsed() >= Duration::from_millis(1400),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(read(&files[0]).0.num_rows(), 5);
    let name = files[0].file_name().unwrap().to_string_lossy().to_string();
    assert_eq!(
        name,
        "part-00000000000000000001-00000000000000000001-0.parquet"
    );
    let (_, metrics) = rig.stop().await;
    assert_eq!(metrics.parquet_rows.get(), 5);
}

#[tokio::test]
async fn flushes_on_rows_and_bytes_and_drains_on_stop() {
    let rig = Rig::new(cfg(10, ByteSize::mib(64), Duration::from_secs(3600)));
    rig.append((0..6).map(|i| traffic_reading("a", T0, i, None)).collect())
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(parquet_files(&rig.root()).is_empty());
    rig.append((6..12).map(|i| traffic_reading("a", T0, i, None)).collect())
        .await;
    let files = wait_for_files(&rig.root(), 1).await;
    assert_eq!(
        read(&files[0]).0.num_rows(),
        12,
        "one write of the whole buffer"
    );
    rig.append(
        (12..15)
            .map(|i| traffic_reading("b", T0, i, None))
            .collect(),
    )
    .await;
    let last = rig.append(vec![traffic_reading("c", T0, 99, None)]).await;
    let (dir, metrics) = rig.stop().await;
    assert_eq!(metrics.parquet_rows.get(), 16);
    assert_eq!(rows(&dir.path().join("parquet")), 16);
    let cp = checkpoint::load(&dir.path().join("wal"), "parquet-traffic-counts").unwrap();
    assert_eq!(
        cp,
        Checkpoint {
            lsn: last,
            intent: None
        }
    );

    let per_reading = traffic_reading("a", T0, 0, None).approx_size();
    let rig = Rig::new(cfg(
        1_000_000,
        ByteSize((per_reading * 10) as u64),
        Duration::from_secs(3600),
    ));
    rig.append((0..9).map(|i| traffic_reading("a", T0, i, None)).collect())
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        parquet_files(&rig.root()).is_empty(),
        "below the byte budget"
    );
    rig.append(vec![traffic_reading("a", T0, 9, None)]).await;
    let files = wait_for_files(&rig.root(), 1).await;
    assert_eq!(read(&files[0]).0.num_rows(), 10);
    rig.stop().await;
}

#[tokio::test]
async fn the_checkpoint_passes_other_datasets_records_so_the_log_can_shrink() {
    let rig = Rig::new(cfg(1000, ByteSize::mib(64), Duration::from_secs(3600)));
    let mut last = 0;
    for _ in 0..5 {
        last = rig.append_weather().await;
    }
    for _ in 0..300 {
        if rig.checkpoint().lsn == last {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        rig.checkpoint(),
        Checkpoint {
            lsn: last,
            intent: None
        }
    );
    rig.stop().await;
}

#[tokio::test]
async fn an_interrupted_write_is_redone_under_the_same_names() {
    let dir = tempfile::tempdir().unwrap();
    let wal_dir = dir.path().join("wal");
    // First life: two records of two hours, written but never flushed (the crash).
    {
        let rig = Rig::in_dir(dir, cfg(1000, ByteSize::mib(64), Duration::from_secs(3600)));
        rig.append(vec![traffic_reading("a", T0, 1, None)]).await;
        rig.append(vec![traffic_reading("b", T0 + HOUR, 2, None)])
            .await;
        let mut rig = rig;
        rig.task.take().unwrap().abort();
        let wal = rig.wal.clone();
        tokio::task::spawn_blocking(move || wal.close())
            .await
            .unwrap();
        // The crash hit mid-write: the intent was stored and the first hour's file written.
        checkpoint::store(
            &wal_dir,
            "parquet-traffic-counts",
            Checkpoint {
                lsn: 0,
                intent: Some((1, 2)),
            },
        )
        .unwrap();
        let layout = ParquetLayout::new(&traffic(), 1).unwrap();
        write_partitions(
            &layout,
            &rig.root(),
            "traffic-counts",
            (1, 2),
            &[traffic_reading("a", T0, 1, None)],
        )
        .unwrap();
        assert_eq!(parquet_files(&rig.root()).len(), 1);
        std::mem::forget(rig.stop);
        let Rig { dir, .. } = rig;
        // Second life.
        let rig = Rig::in_dir(dir, cfg(1000, ByteSize::mib(64), Duration::from_secs(3600)));
        let files = wait_for_files(&rig.root(), 2).await;
        let names: Vec<String> = files
            .iter()
            .map(|f| f.file_name().unwrap().to_string_lossy().to_string())
            .collect();
        assert_eq!(
            names,
            [
                "part-00000000000000000001-00000000000000000002-0.parquet",
                "part-00000000000000000001-00000000000000000002-1.parquet"
            ]
        );
        let (dir, _) = rig.stop().await;
        assert_eq!(
            rows(&dir.path().join("parquet")),
            2,
            "each reading exactly once"
        );
        let cp = checkpoint::load(&dir.path().join("wal"), "parquet-traffic-counts").unwrap();
        assert_eq!(
            cp,
            Checkpoint {
                lsn: 2,
                intent: None
            }
        );
    }
}

#[tokio::test]
async fn a_failing_disk_keeps_the_readings_in_the_log_and_retries() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("parquet"),
        b"a file where the lake should be",
    )
    .unwrap();
    let rig = Rig::in_dir(dir, cfg(3, ByteSize::mib(64), Duration::from_secs(3600)));
    rig.append((0..3).map(|i| traffic_reading("a", T0, i, None)).collect())
        .await;
    for _ in 0..300 {
        if rig.metrics.parquet_flush_errors.get() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(rig.metrics.parquet_flush_errors.get() >= 1);
    assert_eq!(
        rig.checkpoint().intent,
        Some((1, 1)),
        "the write is still owed"
    );
    std::fs::remove_file(rig.root()).unwrap();
    let files = wait_for_files(&rig.root(), 1).await;
    assert_eq!(read(&files[0]).0.num_rows(), 3);
    rig.stop().await;
}
