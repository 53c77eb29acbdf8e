//! A sealed chunk of the hot store: readings of consecutive log records of one dataset, one
//! Arrow array per column (sensor ids as a dictionary, positions only when any reading has
//! one), read back as rows or, by folds that can, as columns.

use std::sync::Arc;

use arrow_array::builder::{
    BooleanBuilder, Float64Builder, Int64Builder, StringBuilder, StringDictionaryBuilder,
};
use arrow_array::types::UInt32Type;
use arrow_array::{
    Array, ArrayRef, BooleanArray, DictionaryArray, Float64Array, Int64Array, StringArray,
    TimestampMicrosecondArray, UInt32Array,
};
use compact_str::CompactString;

use super::Open;
use crate::model::{Dataset, FieldType, Micros, Value, Values};
use crate::query::Row;

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
    pub(super) bytes: usize,
}

impl Chunk {
    pub(super) fn build(dataset: Arc<Dataset>, records: &[Open]) -> Chunk {
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
    pub(super) fn rows_into(
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
