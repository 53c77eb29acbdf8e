//! Pipeline stages against their raw baselines.
//!
//! - decode: each wire format into `Reading`s vs `serde_json` into a derived struct holding
//!   the same information (the fastest a hand-written handler would be);
//! - validate: decoded readings against the dataset schema;
//! - parquet: our stage (rows → Arrow → zstd Parquet) vs a raw `ArrowWriter` writing the
//!   same, already-built `RecordBatch` with the same schema and codec.
//!
//! Run: `cargo bench --bench pipeline`. Figures and machine are in BENCHMARKS.md.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde::Deserialize;

use arrow_array::RecordBatch;
use citygate::config::{Config, DEFAULT_CONFIG};
use citygate::model::{Dataset, Reading};
use citygate::pipeline::decode::{Collect, DecodeCtx, Format, Precision, decode};
use citygate::pipeline::reject::Reject;
use citygate::pipeline::validate::validate;
use citygate::sink::parquet::ParquetLayout;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

const N: usize = 1000;
const NOW: i64 = 1_795_680_900_000_000; // 2026-11-26T08:15:00Z

fn traffic() -> Dataset {
    Config::from_toml(DEFAULT_CONFIG, "default", &[])
        .unwrap()
        .datasets
        .iter()
        .find(|d| d.id == "traffic-counts")
        .unwrap()
        .build()
}

/// `N` realistic traffic readings (about 150 bytes each as JSON).
fn json_objects() -> Vec<String> {
    (0..N)
        .map(|i| {
            format!(
                r#"{{"sensor_id":"tc-{:04}","ts":"2026-11-26T08:{:02}:{:02}.{:03}Z","lat":55.{:04},"lon":12.{:04},"seq":{},"fields":{{"vehicle_count":{},"mean_speed":{}.5}}}}"#,
                i % 500,
                i % 15,
                i % 60,
                i % 1000,
                6700 + i % 97,
                5600 + i % 89,
                i,
                i % 120,
                20 + i % 50
            )
        })
        .collect()
}

fn json_array() -> String {
    format!("[{}]", json_objects().join(","))
}

fn ndjson() -> String {
    json_objects().join("\n")
}

fn senml() -> String {
    let records: Vec<String> = (0..N)
        .map(|i| {
            format!(
                r#"{{"bn":"tc-{:04}:","bt":{}.{:03},"n":"vehicle_count","u":"count","v":{}}},{{"n":"mean_speed","u":"km/h","v":{}.5}}"#,
                i % 500,
                NOW / 1_000_000 - 600 + (i as i64 % 600),
                i % 1000,
                i % 120,
                20 + i % 50
            )
        })
        .collect();
    format!("[{}]", records.join(","))
}

fn line_protocol() -> String {
    (0..N)
        .map(|i| {
            format!(
                "traffic,sensor=tc-{:04},host=gw-1 vehicle_count={}i,mean_speed={}.5,lat=55.{:04},lon=12.{:04},seq={}i {}\n",
                i % 500,
                i % 120,
                20 + i % 50,
                6700 + i % 97,
                5600 + i % 89,
                i,
                (NOW - 600_000_000 + i as i64 * 1000) * 1000
            )
        })
        .collect()
}

// The raw baselines: what a hand-written handler would derive for the same data.
#[derive(Deserialize)]
#[allow(dead_code)]
struct RawFields {
    vehicle_count: i64,
    mean_speed: Option<f64>,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct RawReading {
    sensor_id: String,
    ts: String,
    lat: Option<f64>,
    lon: Option<f64>,
    seq: Option<u64>,
    fields: RawFields,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct RawSenml<'a> {
    bn: Option<&'a str>,
    bt: Option<f64>,
    n: &'a str,
    u: Option<&'a str>,
    v: f64,
}

fn ctx(format: Format) -> DecodeCtx {
    DecodeCtx {
        received_at: NOW,
        precision: match format {
            Format::LineProtocol => Precision::Nanos,
            _ => Precision::Millis,
        },
        default_sensor: None,
    }
}

/// Keeps the decoded readings (decode only: no validation).
struct Decoded(Vec<Reading>);

impl Collect for Decoded {
    fn readings(&mut self) -> &mut Vec<Reading> {
        &mut self.0
    }
    fn accept_last(&mut self, _: u32) {}
    fn reject(&mut self, index: u32, problem: Reject, _: Option<Reading>) {
        panic!("bench reading {index} rejected: {problem:?}");
    }
}

fn decode_all(format: Format, body: &[u8], ds: &Dataset) -> Vec<Reading> {
    let mut out = Decoded(Vec::with_capacity(N));
    decode(format, body, ds, &ctx(format), &mut out).unwrap();
    assert_eq!(out.0.len(), N);
    out.0
}

fn bench_decode(c: &mut Criterion) {
    let ds = traffic();
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(N as u64));

    let array = json_array();
    g.bench_function("json_array/citygate", |b| {
        b.iter(|| decode_all(Format::Json, black_box(array.as_bytes()), &ds))
    });
    g.bench_function("json_array/raw_serde_json", |b| {
        b.iter(|| serde_json::from_slice::<Vec<RawReading>>(black_box(array.as_bytes())).unwrap())
    });

    let nd = ndjson();
    g.bench_function("ndjson/citygate", |b| {
        b.iter(|| decode_all(Format::Ndjson, black_box(nd.as_bytes()), &ds))
    });
    g.bench_function("ndjson/raw_serde_json", |b| {
        b.iter(|| {
            black_box(nd.as_bytes())
                .split(|&c| c == b'\n')
                .map(|line| serde_json::from_slice::<RawReading>(line).unwrap())
                .collect::<Vec<_>>()
        })
    });

    let sm = senml();
    g.bench_function("senml/citygate", |b| {
        b.iter(|| decode_all(Format::Senml, black_box(sm.as_bytes()), &ds))
    });
    g.bench_function("senml/raw_serde_json", |b| {
        b.iter(|| serde_json::from_slice::<Vec<RawSenml>>(black_box(sm.as_bytes())).unwrap())
    });

    let lp = line_protocol();
    g.bench_function("line_protocol/citygate", |b| {
        b.iter(|| decode_all(Format::LineProtocol, black_box(lp.as_bytes()), &ds))
    });
    g.finish();
}

fn bench_validate(c: &mut Criterion) {
    let ds = traffic();
    let readings = decode_all(Format::Json, json_array().as_bytes(), &ds);
    let mut g = c.benchmark_group("validate");
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("traffic", |b| {
        b.iter(|| {
            readings
                .iter()
                .filter(|r| validate(black_box(r), &ds, NOW).is_ok())
                .count()
        })
    });
    g.finish();
}

fn bench_parquet(c: &mut Criterion) {
    let ds = traffic();
    let layout = ParquetLayout::new(&ds, 1).unwrap();
    let one = decode_all(Format::Json, json_array().as_bytes(), &ds);
    let rows: Vec<Reading> = (0..100).flat_map(|_| one.iter().cloned()).collect();
    let prebuilt = layout.record_batch(rows.iter()).unwrap();

    let mut g = c.benchmark_group("parquet");
    g.sample_size(20);
    g.throughput(Throughput::Elements(rows.len() as u64));
    // Writes `batch` into memory as a Parquet file with `props`.
    let write = |props: &WriterProperties, batch: &RecordBatch| {
        let mut w = ArrowWriter::try_new(
            Vec::with_capacity(4 << 20),
            layout.schema().clone(),
            Some(props.clone()),
        )
        .unwrap();
        w.write(batch).unwrap();
        w.into_inner().unwrap()
    };
    g.bench_function("citygate_stage", |b| {
        b.iter(|| {
            let batch = layout.record_batch(black_box(&rows).iter()).unwrap();
            write(layout.properties(), &batch)
        })
    });
    g.bench_function("record_batch_only", |b| {
        b.iter(|| layout.record_batch(black_box(&rows).iter()).unwrap())
    });
    // The baseline: ArrowWriter as anyone would set it up, same schema, same codec.
    let plain = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(1).unwrap()))
        .build();
    g.bench_function("raw_arrow_writer", |b| {
        b.iter(|| write(&plain, black_box(&prebuilt)))
    });
    // For transparency: the raw writer with citygate's per-column encodings too.
    g.bench_function("raw_arrow_writer_citygate_props", |b| {
        b.iter(|| {
            let mut w = ArrowWriter::try_new(
                Vec::with_capacity(4 << 20),
                layout.schema().clone(),
                Some(layout.properties().clone()),
            )
            .unwrap();
            w.write(black_box(&prebuilt)).unwrap();
            w.into_inner().unwrap()
        })
    });
    let size = |props: &WriterProperties| {
        let mut w =
            ArrowWriter::try_new(Vec::new(), layout.schema().clone(), Some(props.clone())).unwrap();
        w.write(&prebuilt).unwrap();
        w.into_inner().unwrap().len()
    };
    eprintln!(
        "parquet file size for {} rows: citygate {} bytes, default properties {} bytes",
        rows.len(),
        size(layout.properties()),
        size(&plain)
    );
    g.finish();
}

criterion_group!(benches, bench_decode, bench_validate, bench_parquet);
criterion_main!(benches);
