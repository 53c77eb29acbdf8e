//! The hot store: every dataset's acknowledged readings of the last `[query] hot_window`, in
//! memory, in columnar chunks (Arrow arrays) in log order.
//!
//! It is a log consumer like the sinks, fed from the log's in-memory tail, so a reading is in
//! it as soon as its record is committed; a query first waits until the store has taken in
//! every record committed when the query started ([`HotStore::catch_up`]): what was
//! acknowledged is visible (read your writes).
//!
//! **Exactly once with the lake.** Each dataset keeps a boundary, `lake_through`: readings of
//! records up to it are read from the Parquet files, later ones from here. The boundary is
//! always a value the dataset's Parquet sink once stored as its checkpoint: every record up
//! to such a value is in files named by ranges that end at or below it, and every file
//! written later (a replay too) starts above it, so the files split cleanly at the boundary
//! (`lake::files` keeps those whose range ends at or below it). A chunk leaves memory only
//! once the sink has written its records; the boundary then moves to the first stored
//! checkpoint at or after the chunk's last record, and the few rows of later chunks at or
//! below it are masked, never returned twice.
//!
//! After a restart the store starts empty at the sinks' checkpoints and fills from the log's
//! replay; older readings come from the lake. It holds no segment of the log longer than the
//! sinks do: its place in the log is kept in memory only ([`Wal::hold`]).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use arrow_array::builder::{
    BooleanBuilder, Float64Builder, Int64Builder, StringBuilder, StringDictionaryBuilder,
};
use arrow_array::types::UInt32Type;
use arrow_array::{
    Array, ArrayRef, BooleanArray, DictionaryArray, Float64Array, Int64Array, StringArray,
    TimestampMicrosecondArray, UInt32Array,
};
use compact_str::CompactString;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::Row;
use crate::model::{Dataset, FieldType, Micros, Reading, Value, Values, now_micros};
use crate::registry::Registry;
use crate::sink::parquet::ParquetSink;
use crate::telemetry::QueryMetrics;
use crate::wal::{Consumer, Record, Wal, record};

/// The log consumer name of the hot store (held in memory only).
const CONSUMER: &str = "hot-store";
/// Rows gathered before they become a columnar chunk...
const CHUNK_ROWS: usize = 8192;
/// ...or once the oldest of them has waited this long.
const CHUNK_AGE: Micros = 30_000_000;
/// Sensors whose last reading one dataset's index keeps at most; past it `latest` scans.
const LAST_MAX: usize = 200_000;
/// How often the store seals aged rows and lets chunks go.
const TICK: Duration = Duration::from_millis(500);
/// Records read from the disk at a time (replay after a restart).
const DISK_BATCH: usize = 1024;

/// What the hot store keeps and for how long.
#[derive(Clone, Debug)]
pub struct HotLimits {
    pub window: Duration,
    pub max_bytes: usize,
    /// How far back each sensor's last reading is looked for in the lake at start.
    pub latest_lookback: Duration,
}

/// Sealed readings of consecutive log records of one dataset, one Arrow array per column.
#[derive(Debug)]
pub(crate) struct Chunk {
    /// The schema the values are in (the dataset may have changed since).
    pub(crate) dataset: Arc<Dataset>,
    pub(crate) first_lsn: u64,
    pub(crate) last_lsn: u64,
    pub(crate) min_ts: Micros,
    pub(crate) max_ts: Micros,
    /// Each row's record, as an offset from `first_lsn`.
    lsn: UInt32Array,
    sensor: DictionaryArray<UInt32Type>,
    ts: TimestampMicrosecondArray,
    values: Vec<ArrayRef>,
    /// Positions, when any reading of the chunk has one (most sensors never move).
    position: Option<(Float64Array, Float64Array)>,
    bytes: usize,
}

impl Chunk {
    fn build(dataset: Arc<Dataset>, records: &[Open]) -> Chunk {
        let rows: usize = records.iter().map(|r| r.readings.len()).sum();
        let first_lsn = records.first().map_or(0, |r| r.lsn);
        let last_lsn = records.last().map_or(0, |r| r.lsn);
        let mut lsn = Vec::with_capacity(rows);
        let mut sensor = StringDictionaryBuilder::<UInt32Type>::new();
        let mut ts = Vec::with_capacity(rows);
        let positioned = records.iter().any(|r| {
            r.readings
                .iter()
                .any(|r| r.lat.is_some() || r.lon.is_some())
        });
        let capacity = if positioned { rows } else { 0 };
        let mut lat = Float64Builder::with_capacity(capacity);
        let mut lon = Float64Builder::with_capacity(capacity);
        let mut columns: Vec<Column> = dataset
            .fields
            .iter()
            .map(|f| Column::new(f.ty, rows))
            .collect();
        let (mut min_ts, mut max_ts) = (Micros::MAX, Micros::MIN);
        for record in records {
            let offset = (record.lsn - first_lsn) as u32;
            for r in record.readings.iter() {
                lsn.push(offset);
                // 32-bit keys: one record may carry more sensors than 16 bits count, and a
                // chunk is sealed only between records.
                sensor.append_value(r.sensor_id.as_str());
                ts.push(r.ts);
                min_ts = min_ts.min(r.ts);
                max_ts = max_ts.max(r.ts);
                if positioned {
                    lat.append_option(r.lat);
                    lon.append_option(r.lon);
                }
                for (column, value) in columns.iter_mut().zip(r.values.iter()) {
                    column.push(value.as_ref());
                }
            }
        }
        let mut chunk = Chunk {
            dataset,
            first_lsn,
            last_lsn,
            min_ts,
            max_ts,
            lsn: UInt32Array::from(lsn),
            sensor: sensor.finish(),
            ts: TimestampMicrosecondArray::from(ts).with_timezone("UTC"),
            values: columns.into_iter().map(Column::finish).collect(),
            position: positioned.then(|| (lat.finish(), lon.finish())),
            bytes: 0,
        };
        chunk.bytes = chunk.lsn.get_array_memory_size()
            + chunk.sensor.get_array_memory_size()
            + chunk.ts.get_array_memory_size()
            + chunk
                .values
                .iter()
                .map(|a| a.get_array_memory_size())
                .sum::<usize>()
            + chunk.position.as_ref().map_or(0, |(lat, lon)| {
                lat.get_array_memory_size() + lon.get_array_memory_size()
            });
        chunk
    }

    pub(crate) fn rows(&self) -> usize {
        self.ts.len()
    }

    /// The chunk's columns, for folds that read them whole.
    pub(crate) fn columns(&self) -> ChunkColumns<'_> {
        ChunkColumns {
            dataset: &self.dataset,
            first_lsn: self.first_lsn,
            lsn: self.lsn.values(),
            ts: self.ts.values(),
            keys: self.sensor.keys().values(),
            sensors: self
                .sensor
                .values()
                .as_any()
                .downcast_ref::<StringArray>()
                .expect("a string dictionary"),
            values: &self.values,
        }
    }

    fn lsn(&self, row: usize) -> u64 {
        self.first_lsn + u64::from(self.lsn.value(row))
    }

    /// The rows above `lake_through` that `keep` accepts, in the schema of `target`.
    fn rows_into(
        &self,
        lake_through: u64,
        target: &Dataset,
        keep: &mut dyn FnMut(Micros, &str) -> bool,
        out: &mut dyn FnMut(Row),
    ) {
        if self.last_lsn <= lake_through {
            return;
        }
        let map = field_map(&self.dataset, target);
        let sensors = self
            .sensor
            .values()
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("a string dictionary");
        let keys = self.sensor.keys();
        for row in 0..self.rows() {
            let ts = self.ts.value(row);
            let sensor = sensors.value(keys.value(row) as usize);
            if self.lsn(row) <= lake_through || !keep(ts, sensor) {
                continue;
            }
            let mut values: Values = smallvec::smallvec![None; target.fields.len()];
            for (to, from) in map.iter().enumerate() {
                if let Some(from) = *from {
                    values[to] = value_at(&self.values[from], self.dataset.fields[from].ty, row);
                }
            }
            out(Row {
                sensor_id: CompactString::from(sensor),
                ts,
                values,
                lat: self
                    .position
                    .as_ref()
                    .and_then(|(lat, _)| (!lat.is_null(row)).then(|| lat.value(row))),
                lon: self
                    .position
                    .as_ref()
                    .and_then(|(_, lon)| (!lon.is_null(row)).then(|| lon.value(row))),
            });
        }
    }
}

/// A chunk's columns: row `i` is `ts[i]` of sensor `sensors[keys[i]]`, from record
/// `first_lsn + lsn[i]`, with `values[f][i]` in `dataset`'s schema.
pub(crate) struct ChunkColumns<'a> {
    pub(crate) dataset: &'a Dataset,
    pub(crate) first_lsn: u64,
    pub(crate) lsn: &'a [u32],
    pub(crate) ts: &'a [i64],
    pub(crate) keys: &'a [u32],
    pub(crate) sensors: &'a StringArray,
    pub(crate) values: &'a [ArrayRef],
}

/// Where each field of `to` is in `from` (by name and type), if it is.
pub(crate) fn field_map(from: &Dataset, to: &Dataset) -> Vec<Option<usize>> {
    to.fields
        .iter()
        .map(|f| {
            from.fields
                .iter()
                .position(|g| g.name == f.name && g.ty == f.ty)
        })
        .collect()
}

fn value_at(array: &ArrayRef, ty: FieldType, row: usize) -> Option<Value> {
    if array.is_null(row) {
        return None;
    }
    let any = array.as_any();
    Some(match ty {
        FieldType::Float => Value::Float(any.downcast_ref::<Float64Array>()?.value(row)),
        FieldType::Int => Value::Int(any.downcast_ref::<Int64Array>()?.value(row)),
        FieldType::Bool => Value::Bool(any.downcast_ref::<BooleanArray>()?.value(row)),
        FieldType::String => Value::Str(CompactString::from(
            any.downcast_ref::<StringArray>()?.value(row),
        )),
    })
}

/// One column being built.
enum Column {
    Float(Float64Builder),
    Int(Int64Builder),
    Bool(BooleanBuilder),
    Str(StringBuilder),
}

impl Column {
    fn new(ty: FieldType, rows: usize) -> Column {
        match ty {
            FieldType::Float => Column::Float(Float64Builder::with_capacity(rows)),
            FieldType::Int => Column::Int(Int64Builder::with_capacity(rows)),
            FieldType::Bool => Column::Bool(BooleanBuilder::with_capacity(rows)),
            FieldType::String => Column::Str(StringBuilder::new()),
        }
    }

    /// Appends `value`; one of another type than the column (it cannot come from the
    /// validated log) is stored as missing.
    fn push(&mut self, value: Option<&Value>) {
        match (self, value) {
            (Column::Float(b), Some(Value::Float(f))) => b.append_value(*f),
            (Column::Float(b), Some(Value::Int(i))) => b.append_value(*i as f64),
            (Column::Int(b), Some(Value::Int(i))) => b.append_value(*i),
            (Column::Bool(b), Some(Value::Bool(v))) => b.append_value(*v),
            (Column::Str(b), Some(Value::Str(s))) => b.append_value(s.as_str()),
            (Column::Float(b), _) => b.append_null(),
            (Column::Int(b), _) => b.append_null(),
            (Column::Bool(b), _) => b.append_null(),
            (Column::Str(b), _) => b.append_null(),
        }
    }

    fn finish(self) -> ArrayRef {
        match self {
            Column::Float(mut b) => Arc::new(b.finish()),
            Column::Int(mut b) => Arc::new(b.finish()),
            Column::Bool(mut b) => Arc::new(b.finish()),
            Column::Str(mut b) => Arc::new(b.finish()),
        }
    }
}

/// A committed record not yet in a chunk: the readings as intake decoded them (shared).
#[derive(Debug, Clone)]
pub(crate) struct Open {
    lsn: u64,
    dataset: Arc<Dataset>,
    readings: Arc<Vec<Reading>>,
}

/// One dataset in the hot store.
#[derive(Debug, Default)]
struct DatasetHot {
    lake_through: u64,
    /// Checkpoints of the dataset's Parquet sink seen since `lake_through`, oldest first:
    /// the places the boundary may move to.
    marks: VecDeque<u64>,
    chunks: VecDeque<Arc<Chunk>>,
    open: Vec<Open>,
    open_rows: usize,
    open_since: Micros,
    /// The earliest device time among the open rows.
    open_min_ts: Micros,
    bytes: usize,
    /// Each sensor's last reading by device time (of equal times, the last logged), in
    /// the schema it came in: what `latest` answers from, once `seeded` (the lake's recent
    /// past is in it) and while `complete` (never more than [`LAST_MAX`] sensors).
    last: HashMap<CompactString, (Arc<Dataset>, Reading)>,
    seeded: bool,
    overfull: bool,
}

impl DatasetHot {
    fn take(&mut self, record: Open, now: Micros) {
        self.note_last(&record);
        if record.lsn <= self.lake_through {
            return;
        }
        if let Some(last) = self.open.last()
            && !Arc::ptr_eq(&last.dataset, &record.dataset)
            && last.dataset.fields != record.dataset.fields
        {
            self.seal();
        }
        if self.open.is_empty() {
            self.open_since = now;
            self.open_min_ts = Micros::MAX;
        }
        for r in record.readings.iter() {
            self.open_min_ts = self.open_min_ts.min(r.ts);
        }
        self.open_rows += record.readings.len();
        self.open.push(record);
        if self.open_rows >= CHUNK_ROWS {
            self.seal();
        }
    }

    /// Keeps each sensor's last reading (log order: a later equal time replaces).
    fn note_last(&mut self, record: &Open) {
        for r in record.readings.iter() {
            if let Some((ds, last)) = self.last.get_mut(&r.sensor_id) {
                if r.ts >= last.ts {
                    *ds = record.dataset.clone();
                    *last = r.clone();
                }
            } else if self.last.len() < LAST_MAX {
                self.last
                    .insert(r.sensor_id.clone(), (record.dataset.clone(), r.clone()));
            } else {
                self.overfull = true;
            }
        }
    }

    fn seal(&mut self) {
        let Some(first) = self.open.first() else {
            return;
        };
        let chunk = Chunk::build(first.dataset.clone(), &self.open);
        self.bytes += chunk.bytes;
        self.chunks.push_back(Arc::new(chunk));
        self.open.clear();
        self.open_rows = 0;
    }

    /// Notes the sink's checkpoint; lets chunks go that are in the lake and either older
    /// than `oldest` or over the byte budget (`over`). Returns the bytes freed.
    fn tidy(&mut self, checkpoint: u64, oldest: Micros, mut over: usize, now: Micros) -> usize {
        // Rows wait to fill a chunk, but not past its age, nor past the window (only a
        // chunk can leave).
        if !self.open.is_empty()
            && (now - self.open_since >= CHUNK_AGE || self.open_min_ts < oldest)
        {
            self.seal();
        }
        if self.chunks.is_empty() && self.open.is_empty() {
            // Nothing here to lose: the lake has everything up to the checkpoint.
            self.lake_through = self.lake_through.max(checkpoint);
            self.marks.clear();
            return 0;
        }
        if checkpoint > self.lake_through && self.marks.back() != Some(&checkpoint) {
            self.marks.push_back(checkpoint);
        }
        let mut freed = 0;
        while let Some(front) = self.chunks.front() {
            if front.max_ts >= oldest && over == 0 {
                break;
            }
            // A chunk wholly at or below the boundary is the lake's already; else the
            // boundary moves to the first stored checkpoint at or after its last record.
            if front.last_lsn > self.lake_through {
                let Some(&mark) = self.marks.iter().find(|&&m| m >= front.last_lsn) else {
                    break;
                };
                self.lake_through = mark;
                while self.marks.front().is_some_and(|&m| m <= mark) {
                    self.marks.pop_front();
                }
            }
            let bytes = front.bytes;
            self.chunks.pop_front();
            self.bytes -= bytes;
            freed += bytes;
            over = over.saturating_sub(bytes);
        }
        freed
    }
}

/// What a query reads of one dataset: taken under its lock, read without it.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    /// Readings of records up to here are the lake's.
    pub(crate) lake_through: u64,
    chunks: Vec<Arc<Chunk>>,
    open: Vec<Open>,
}

impl Snapshot {
    /// [`Snapshot::scan`] into a fold, which takes whole chunks from their columns when it
    /// can.
    pub(crate) fn scan_fold(
        &self,
        sel: &super::Selection,
        (from, to): (Micros, Micros),
        keep: &mut dyn FnMut(Micros, &str) -> bool,
        fold: &mut dyn super::Fold,
    ) {
        let mut rest = Snapshot {
            lake_through: self.lake_through,
            chunks: Vec::new(),
            open: self.open.clone(),
        };
        for chunk in &self.chunks {
            let overlaps = chunk.max_ts >= from && chunk.min_ts < to;
            if overlaps && !fold.add_chunk(chunk, sel, self.lake_through, (from, to)) {
                rest.chunks.push(chunk.clone());
            }
        }
        rest.scan(&sel.dataset, (from, to), keep, &mut |row| fold.add(row));
    }

    /// Hands `out` every row of the snapshot in `[from, to)` whose time and sensor `keep`
    /// accepts, in `target`'s schema, in log order.
    pub(crate) fn scan(
        &self,
        target: &Dataset,
        (from, to): (Micros, Micros),
        keep: &mut dyn FnMut(Micros, &str) -> bool,
        out: &mut dyn FnMut(Row),
    ) {
        let mut keep = |ts: Micros, sensor: &str| ts >= from && ts < to && keep(ts, sensor);
        for chunk in &self.chunks {
            if chunk.max_ts < from || chunk.min_ts >= to {
                continue;
            }
            chunk.rows_into(self.lake_through, target, &mut keep, out);
        }
        for record in &self.open {
            if record.lsn <= self.lake_through {
                continue;
            }
            let map = field_map(&record.dataset, target);
            for r in record.readings.iter() {
                if !keep(r.ts, &r.sensor_id) {
                    continue;
                }
                let mut values: Values = smallvec::smallvec![None; target.fields.len()];
                for (to, from) in map.iter().enumerate() {
                    if let Some(from) = *from {
                        values[to] = r.values.get(from).cloned().flatten();
                    }
                }
                out(Row {
                    sensor_id: r.sensor_id.clone(),
                    ts: r.ts,
                    values,
                    lat: r.lat,
                    lon: r.lon,
                });
            }
        }
    }

    /// The starts of the hours in `[from, to)` the snapshot may hold readings of.
    pub(crate) fn hours(&self, from: Micros, to: Micros) -> Vec<Micros> {
        let hour = |t: Micros| t - t.rem_euclid(super::HOUR);
        let mut hours = Vec::new();
        for chunk in &self.chunks {
            let (lo, hi) = (chunk.min_ts.max(from), chunk.max_ts.min(to - 1));
            let mut h = hour(lo);
            while h <= hi {
                hours.push(h);
                h += super::HOUR;
            }
        }
        for record in &self.open {
            for r in record.readings.iter() {
                if r.ts >= from && r.ts < to {
                    hours.push(hour(r.ts));
                }
            }
        }
        hours.sort_unstable();
        hours.dedup();
        hours
    }
}

/// Figures for the metrics and the benchmark.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct HotFigures {
    pub(crate) chunk_bytes: usize,
    pub(crate) chunk_rows: usize,
    pub(crate) open_rows: usize,
}

/// Every dataset's recent readings (see the module header).
#[derive(Debug)]
pub struct HotStore {
    datasets: RwLock<HashMap<String, Arc<Mutex<DatasetHot>>>>,
    /// The last LSN taken in.
    applied: watch::Sender<u64>,
    wal: Wal,
    limits: HotLimits,
    pub(crate) metrics: QueryMetrics,
    /// Every dataset known at start has its last readings from the lake.
    seeded: std::sync::atomic::AtomicBool,
}

impl HotStore {
    pub fn new(wal: Wal, limits: HotLimits, metrics: QueryMetrics) -> Arc<HotStore> {
        Arc::new(HotStore {
            datasets: RwLock::new(HashMap::new()),
            applied: watch::Sender::new(0),
            wal,
            limits,
            metrics,
            seeded: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The sink's checkpoint of `dataset`: where its lake ends.
    fn lake_checkpoint(&self, dataset: &str) -> u64 {
        self.wal
            .position_of(&ParquetSink::consumer_name(dataset))
            .unwrap_or(0)
    }

    fn entry(&self, dataset: &str) -> Arc<Mutex<DatasetHot>> {
        if let Some(d) = self
            .datasets
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(dataset)
        {
            return d.clone();
        }
        let lake_through = self.lake_checkpoint(dataset);
        // A dataset first seen after the start's seeding has nothing older in the lake.
        let seeded = self.seeded.load(std::sync::atomic::Ordering::Acquire);
        self.datasets
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(dataset.to_string())
            .or_insert_with(|| {
                Arc::new(Mutex::new(DatasetHot {
                    lake_through,
                    seeded,
                    ..DatasetHot::default()
                }))
            })
            .clone()
    }

    /// What a query of `dataset` reads here.
    pub(crate) fn snapshot(&self, dataset: &str) -> Snapshot {
        let entry = self.entry(dataset);
        let d = entry.lock().unwrap_or_else(|e| e.into_inner());
        Snapshot {
            lake_through: d.lake_through,
            chunks: d.chunks.iter().cloned().collect(),
            open: d.open.clone(),
        }
    }

    /// The last reading of every sensor `sel` wants within its range, from the index:
    /// `None` when the index cannot answer alone (not seeded yet, over its size, or a
    /// sensor's last reading is past the range's end, so an earlier one is wanted).
    pub(crate) fn latest(&self, sel: &super::Selection) -> Option<Vec<Row>> {
        let entry = self.entry(&sel.dataset.id);
        let d = entry.lock().unwrap_or_else(|e| e.into_inner());
        if !d.seeded || d.overfull {
            return None;
        }
        let mut maps: Vec<(*const Dataset, Vec<Option<usize>>)> = Vec::new();
        let mut rows = Vec::new();
        for (sensor, (ds, r)) in &d.last {
            if !sel.wants_sensor(sensor) || r.ts < sel.from {
                continue;
            }
            if r.ts >= sel.to {
                return None;
            }
            let map = match maps.iter().find(|(p, _)| *p == Arc::as_ptr(ds)) {
                Some((_, m)) => m,
                None => {
                    maps.push((Arc::as_ptr(ds), field_map(ds, &sel.dataset)));
                    &maps.last().expect("just pushed").1
                }
            };
            let mut values: Values = smallvec::smallvec![None; sel.dataset.fields.len()];
            for (to, from) in map.iter().enumerate() {
                if let Some(from) = *from {
                    values[to] = r.values.get(from).cloned().flatten();
                }
            }
            let row = Row {
                sensor_id: r.sensor_id.clone(),
                ts: r.ts,
                values,
                lat: r.lat,
                lon: r.lon,
            };
            if sel.wants_place(&row) {
                rows.push(row);
            }
        }
        rows.sort_by(|a, b| a.sensor_id.cmp(&b.sensor_id));
        Some(rows)
    }

    /// Puts the lake's last readings of the recent past into each dataset's index (older
    /// than what the log brought since, or else left out). Blocking.
    fn seed(&self, root: &std::path::Path, registry: &Registry) {
        let now = now_micros();
        let from = now - self.limits.latest_lookback.as_micros() as Micros;
        for entry in registry.all() {
            let ds = entry.dataset.clone();
            let mut best: HashMap<CompactString, Row> = HashMap::new();
            for hour in super::lake::hours(root, &ds.id, from, Micros::MAX, u64::MAX) {
                for file in &hour.files {
                    let mut keep = |_: Micros, _: &str| true;
                    let mut add = |row: Row| match best.get(&row.sensor_id) {
                        Some(b) if b.ts > row.ts => {}
                        _ => {
                            best.insert(row.sensor_id.clone(), row);
                        }
                    };
                    if let Err(e) =
                        super::lake::read_file(file, &ds, from, Micros::MAX, &mut keep, &mut add)
                    {
                        tracing::warn!(error = %e, "the latest readings index skips a lake file");
                    }
                }
            }
            let hot = self.entry(&ds.id);
            let mut d = hot.lock().unwrap_or_else(|e| e.into_inner());
            for (sensor, row) in best {
                let older = d.last.get(&sensor).is_none_or(|(_, r)| r.ts < row.ts);
                if !older {
                    continue;
                }
                if d.last.len() >= LAST_MAX && !d.last.contains_key(&sensor) {
                    d.overfull = true;
                    continue;
                }
                let reading = Reading {
                    sensor_id: sensor.clone(),
                    ts: row.ts,
                    ts_missing: false,
                    received_at: row.ts,
                    values: row.values,
                    lat: row.lat,
                    lon: row.lon,
                    seq: None,
                };
                d.last.insert(sensor, (ds.clone(), reading));
            }
            d.seeded = true;
        }
        self.seeded
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Waits until every record committed now is in the store (false: not within
    /// `timeout`, or the store stopped).
    pub(crate) async fn catch_up(&self, timeout: Duration) -> bool {
        let target = self.wal.committed_lsn();
        let mut applied = self.applied.subscribe();
        tokio::time::timeout(timeout, applied.wait_for(|&lsn| lsn >= target))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    pub(crate) fn figures(&self) -> HotFigures {
        let mut f = HotFigures::default();
        for d in self
            .datasets
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            let d = d.lock().unwrap_or_else(|e| e.into_inner());
            f.chunk_bytes += d.bytes;
            f.chunk_rows += d.chunks.iter().map(|c| c.rows()).sum::<usize>();
            f.open_rows += d.open_rows;
        }
        f
    }

    fn take(&self, record: Open, now: Micros) {
        let entry = self.entry(&record.dataset.id);
        entry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take(record, now);
    }

    /// Seals aged rows and lets chunks go: those past the window, then the oldest while the
    /// store is over its byte budget (only ever what the lake already has).
    fn tidy(&self, now: Micros) {
        let oldest = now - self.limits.window.as_micros() as Micros;
        let entries: Vec<(String, Arc<Mutex<DatasetHot>>)> = self
            .datasets
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(id, d)| (id.clone(), d.clone()))
            .collect();
        let mut total: usize = entries
            .iter()
            .map(|(_, d)| d.lock().unwrap_or_else(|e| e.into_inner()).bytes)
            .sum();
        for (id, d) in entries {
            let checkpoint = self.lake_checkpoint(&id);
            let over = total.saturating_sub(self.limits.max_bytes);
            let freed = d
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .tidy(checkpoint, oldest, over, now);
            total = total.saturating_sub(freed);
        }
        let f = self.figures();
        self.metrics
            .set_hot(f.chunk_bytes, f.chunk_rows + f.open_rows);
    }

    /// Runs the store until `stop`; should it fail (a bug), it says so and stops holding
    /// the log, so that intake goes on (queries then answer 503: not caught up).
    pub(crate) async fn run_supervised(
        self: Arc<Self>,
        registry: Arc<Registry>,
        lake_root: std::path::PathBuf,
        stop: CancellationToken,
    ) {
        let run = tokio::spawn(self.clone().run(registry, lake_root, stop));
        if let Err(e) = run.await {
            tracing::error!(error = %e, "the hot store failed: history queries stop until a restart");
            self.wal.release(CONSUMER);
        }
    }

    /// Runs the store: takes in every committed record until `stop`.
    pub(crate) async fn run(
        self: Arc<Self>,
        registry: Arc<Registry>,
        lake_root: std::path::PathBuf,
        stop: CancellationToken,
    ) {
        // Each sensor's last reading from the lake, beside the log's replay.
        tokio::task::spawn_blocking({
            let (store, registry) = (self.clone(), registry.clone());
            move || store.seed(&lake_root, &registry)
        });
        // Start where the lake ends: the lowest checkpoint of any dataset's sink.
        let start = registry
            .all()
            .iter()
            .map(|e| self.lake_checkpoint(&e.dataset.id))
            .min()
            .unwrap_or(0);
        self.wal.hold(CONSUMER, start);
        let mut consumer = self.wal.consumer(start);
        self.applied.send_replace(start);
        let mut committed = self.wal.committed();
        let mut tick = tokio::time::interval(TICK);
        loop {
            let upto = *committed.borrow_and_update();
            if consumer.position() < upto {
                let now = now_micros();
                let in_memory = consumer.read_memory(upto, |record| {
                    if let Record::Memory(c) = record {
                        self.take(
                            Open {
                                lsn: c.lsn,
                                dataset: c.dataset.clone(),
                                readings: c.readings.clone(),
                            },
                            now,
                        );
                    }
                    true
                });
                if !in_memory {
                    let at = consumer.position();
                    consumer = match self.read_disk(consumer, upto, &registry).await {
                        Ok(c) => c,
                        Err(()) => {
                            // Retried after a pause, as the sinks do; the log keeps the
                            // records meanwhile (this store holds it).
                            tokio::select! {
                                _ = stop.cancelled() => return,
                                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                            }
                            self.wal.consumer(at)
                        }
                    };
                }
                self.applied.send_replace(consumer.position());
                continue;
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                changed = committed.changed() => if changed.is_err() { return },
                _ = tick.tick() => {
                    self.wal.hold(CONSUMER, consumer.position());
                    self.tidy(now_micros());
                }
            }
        }
    }

    /// Reads up to [`DISK_BATCH`] records from the disk on a blocking thread (the replay
    /// after a restart) and takes them in. `Err`: the log could not be read (logged); the
    /// caller starts again where it was.
    async fn read_disk(
        &self,
        mut consumer: Consumer,
        upto: u64,
        registry: &Arc<Registry>,
    ) -> Result<Consumer, ()> {
        let registry = registry.clone();
        let read = tokio::task::spawn_blocking(move || {
            let mut records = Vec::new();
            let result = consumer.read(upto, |record| {
                match record {
                    Record::Memory(c) => records.push(Open {
                        lsn: c.lsn,
                        dataset: c.dataset.clone(),
                        readings: c.readings.clone(),
                    }),
                    Record::Disk { lsn, payload } => {
                        if let Some(open) = decode(lsn, payload, &registry) {
                            records.push(open);
                        }
                    }
                }
                records.len() < DISK_BATCH
            });
            let failed = result.map_err(|e| {
                tracing::error!(error = %e, "the hot store cannot read the WAL; retrying");
            });
            (consumer, records, failed)
        })
        .await
        .map_err(|e| tracing::error!(error = %e, "the hot store's log read failed; retrying"))?;
        let (consumer, records, failed) = read;
        let now = now_micros();
        for record in records {
            self.take(record, now);
        }
        failed.map(|()| consumer)
    }
}

/// A record from the disk, decoded in its dataset's schema (`None`: a dataset no longer
/// here, or a record the sinks skip too).
fn decode(lsn: u64, payload: &[u8], registry: &Registry) -> Option<Open> {
    let header = record::header(payload).ok()?;
    let entry = registry.get(header.dataset)?;
    let mut readings = Vec::new();
    record::decode_into(payload, &entry.dataset, &mut readings).ok()?;
    Some(Open {
        lsn,
        dataset: entry.dataset.clone(),
        readings: Arc::new(readings),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dataset() -> Arc<Dataset> {
        let config =
            crate::config::Config::from_toml(crate::config::DEFAULT_CONFIG, "default", &[])
                .unwrap();
        Arc::new(config.datasets[0].build())
    }

    fn open(ds: &Arc<Dataset>, lsn: u64, ts: &[Micros]) -> Open {
        let readings = ts
            .iter()
            .map(|&t| {
                let mut r = Reading::empty(ds.fields.len(), t);
                r.ts = t;
                r.ts_missing = false;
                r.sensor_id = CompactString::from(format!("s-{lsn}"));
                r.values[0] = Some(Value::Int(lsn as i64));
                r
            })
            .collect();
        Open {
            lsn,
            dataset: ds.clone(),
            readings: Arc::new(readings),
        }
    }

    fn lsns(rows: &[Row]) -> Vec<i64> {
        rows.iter()
            .map(|r| match r.values[0] {
                Some(Value::Int(i)) => i,
                _ => -1,
            })
            .collect()
    }

    fn rows_of(
        s: &Snapshot,
        ds: &Dataset,
        from: Micros,
        to: Micros,
        keep: &mut dyn FnMut(Micros, &str) -> bool,
    ) -> Vec<Row> {
        let mut out = Vec::new();
        s.scan(ds, (from, to), keep, &mut |r| out.push(r));
        out
    }

    fn snapshot(d: &DatasetHot) -> Snapshot {
        Snapshot {
            lake_through: d.lake_through,
            chunks: d.chunks.iter().cloned().collect(),
            open: d.open.clone(),
        }
    }

    #[test]
    fn sealed_and_open_rows_read_back_alike_in_log_order() {
        let ds = dataset();
        let mut d = DatasetHot::default();
        for lsn in 1..=3 {
            d.take(open(&ds, lsn, &[lsn as i64 * 10, lsn as i64 * 10 + 1]), 0);
        }
        d.seal();
        d.take(open(&ds, 4, &[40]), 0);
        let rows = rows_of(&snapshot(&d), &ds, 0, 1000, &mut |_, _| true);
        assert_eq!(lsns(&rows), [1, 1, 2, 2, 3, 3, 4]);
        assert_eq!(rows[2].sensor_id, "s-2");
        assert_eq!(rows[2].ts, 20);
        let some = rows_of(&snapshot(&d), &ds, 11, 40, &mut |_, s| s != "s-2");
        assert_eq!(lsns(&some), [1, 3, 3]);
    }

    #[test]
    fn a_chunk_leaves_only_for_a_checkpoint_at_or_after_it_and_masks_up_to_that() {
        let ds = dataset();
        let mut d = DatasetHot::default();
        for lsn in 1..=4 {
            d.take(open(&ds, lsn, &[lsn as i64]), 0);
            if lsn % 2 == 0 {
                d.seal();
            }
        }
        // Chunks [1,2] and [3,4]. The sink has written through 1 only: nothing goes.
        assert_eq!(d.tidy(1, Micros::MAX, 0, 0), 0);
        assert_eq!(d.chunks.len(), 2);
        // Through 3: the first chunk goes; the boundary is 3, so row 3 is the lake's now.
        assert!(d.tidy(3, Micros::MAX, 0, 0) > 0);
        assert_eq!(d.lake_through, 3);
        assert_eq!(d.chunks.len(), 1);
        assert_eq!(
            lsns(&rows_of(&snapshot(&d), &ds, 0, 100, &mut |_, _| true)),
            [4]
        );
        // Records at or below the boundary are not taken in again (a replay).
        d.take(open(&ds, 3, &[3]), 0);
        assert_eq!(d.open_rows, 0);
    }

    #[test]
    fn chunks_below_one_checkpoint_all_leave_with_it() {
        let ds = dataset();
        let mut d = DatasetHot::default();
        for lsn in 1..=6 {
            d.take(open(&ds, lsn, &[lsn as i64]), 0);
            d.seal();
        }
        // One sink flush wrote all six records: every chunk goes at once, and stays gone.
        d.tidy(6, Micros::MAX, 0, 0);
        assert_eq!(d.chunks.len(), 0);
        assert_eq!(d.lake_through, 6);
        assert_eq!(d.bytes, 0);
    }

    #[test]
    fn one_record_of_more_sensors_than_16_bits_count_makes_one_chunk() {
        let ds = dataset();
        let mut o = open(&ds, 1, &vec![5; 70_000]);
        for (i, r) in Arc::get_mut(&mut o.readings)
            .unwrap()
            .iter_mut()
            .enumerate()
        {
            r.sensor_id = CompactString::from(format!("s{i}"));
        }
        let mut d = DatasetHot::default();
        d.take(o, 0);
        assert_eq!(d.chunks.len(), 1);
        let rows = rows_of(&snapshot(&d), &ds, 0, 10, &mut |_, s| s == "s69999");
        assert_eq!(rows.len(), 1);
    }

    #[test]
    fn buckets_from_columns_equal_buckets_from_rows() {
        use super::super::aggregate::{Accumulator, Func, Spec};
        use super::super::{Fold, Selection};
        let ds = dataset();
        let mut d = DatasetHot::default();
        for lsn in 1..=40u64 {
            let mut o = open(&ds, lsn, &[lsn as i64 * 7, lsn as i64 * 7 + 3]);
            for (i, r) in Arc::get_mut(&mut o.readings)
                .unwrap()
                .iter_mut()
                .enumerate()
            {
                r.sensor_id = CompactString::from(format!("s{}", (lsn as usize + i) % 3));
                r.values[1] = (lsn % 4 != 0).then(|| Value::Float(lsn as f64 / 3.0));
            }
            d.take(o, 0);
            if lsn % 9 == 0 {
                d.seal();
            }
        }
        // Rows of records up to 5 are the lake's.
        d.lake_through = 5;
        let snap = snapshot(&d);
        let sel = Selection {
            dataset: ds.clone(),
            from: 20,
            to: 250,
            filter: crate::feed::session::Filter::parse(Some("s0,s2"), None).unwrap(),
        };
        let spec = Spec {
            every: 30,
            fns: Func::ALL.to_vec(),
            by_sensor: true,
            fields: vec![(0, "vehicle_count".into()), (1, "mean_speed".into())],
        };
        let mut columns = Accumulator::new(spec.clone(), 1000);
        let mut keep = |_: Micros, s: &str| sel.wants_sensor(s);
        snap.scan_fold(&sel, (sel.from, sel.to), &mut keep, &mut columns);
        let mut rows = Accumulator::new(spec, 1000);
        for r in rows_of(&snap, &ds, sel.from, sel.to, &mut keep) {
            rows.add(r);
        }
        let (a, b) = (columns.finish().unwrap(), rows.finish().unwrap());
        assert!(!a.is_empty());
        assert_eq!(a, b);
    }

    #[test]
    fn traffic_readings_cost_few_bytes_each_in_a_chunk() {
        let ds = dataset();
        let mut d = DatasetHot::default();
        let mut lsn = 0;
        while d.chunks.is_empty() {
            lsn += 1;
            let mut o = open(&ds, lsn, &[lsn as i64 * 10_000_000]);
            Arc::get_mut(&mut o.readings).unwrap()[0].sensor_id =
                CompactString::from(format!("sensor-{:04}", lsn % 1000));
            Arc::get_mut(&mut o.readings).unwrap()[0].values[1] = Some(Value::Float(42.5));
            d.take(o, 0);
        }
        let per_reading = d.bytes as f64 / d.chunks[0].rows() as f64;
        assert!(per_reading <= 64.0, "{per_reading} bytes per reading");
    }
}
