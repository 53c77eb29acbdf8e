//! Readings to Parquet: the column layout of a dataset and the crash-safe file write.
//!
//! Columns, in order: `sensor_id` (dictionary), `ts` (timestamp µs UTC), one typed column per
//! schema field (with its unit in the Arrow field metadata), `lat`, `lon`, `seq`,
//! `received_at`, `ts_missing`. The file's key-value metadata names the dataset, its licence
//! and schema version, so a file found alone still says what it is.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{BooleanBuilder, Float64Builder, Int64Builder, StringBuilder};
use arrow_array::types::Int32Type;
use arrow_array::{ArrayRef, DictionaryArray, Int32Array, RecordBatch, TimestampMicrosecondArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;

use crate::model::{Dataset, FieldType, Reading, Value};

#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("arrow: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> EncodeError + '_ {
    move |source| EncodeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A dataset's Arrow schema and Parquet writer settings, built once per dataset.
pub struct ParquetLayout {
    schema: SchemaRef,
    props: WriterProperties,
    field_types: Vec<FieldType>,
}

fn utc_micros() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

impl ParquetLayout {
    pub fn new(ds: &Dataset, zstd_level: i32) -> Result<ParquetLayout, EncodeError> {
        let mut columns = vec![
            Field::new_dictionary("sensor_id", DataType::Int32, DataType::Utf8, false),
            Field::new("ts", utc_micros(), false),
        ];
        for spec in &ds.fields {
            let ty = match spec.ty {
                FieldType::Float => DataType::Float64,
                FieldType::Int => DataType::Int64,
                FieldType::Bool => DataType::Boolean,
                FieldType::String => DataType::Utf8,
            };
            let mut field = Field::new(&spec.name, ty, true);
            if let Some(unit) = &spec.unit {
                field = field.with_metadata([("unit", unit.as_str())]);
            }
            columns.push(field);
        }
        columns.extend([
            Field::new("lat", DataType::Float64, true),
            Field::new("lon", DataType::Float64, true),
            Field::new("seq", DataType::Int64, true),
            Field::new("received_at", utc_micros(), false),
            Field::new("ts_missing", DataType::Boolean, false),
        ]);
        let schema = Arc::new(Schema::new(columns));

        let schema_json = serde_json::to_string(&ds.fields).unwrap_or_default();
        let mut props = WriterProperties::builder();
        // Times and sequence numbers rise steadily and rarely repeat: a dictionary would only
        // be built to be abandoned, while delta encoding stores them in a few bits each.
        for column in ["ts", "received_at", "seq"] {
            props = props
                .set_column_dictionary_enabled(ColumnPath::from(column), false)
                .set_column_encoding(ColumnPath::from(column), Encoding::DELTA_BINARY_PACKED);
        }
        let props = props
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(zstd_level)?))
            .set_created_by(format!("citygate {}", env!("CARGO_PKG_VERSION")))
            .set_key_value_metadata(Some(vec![
                KeyValue::new("citygate.dataset".into(), ds.id.clone()),
                KeyValue::new("citygate.provider".into(), ds.provider.clone()),
                KeyValue::new("citygate.licence".into(), ds.licence.clone()),
                KeyValue::new(
                    "citygate.schema_version".into(),
                    ds.schema_version.to_string(),
                ),
                KeyValue::new("citygate.schema".into(), schema_json),
            ]))
            .build();
        Ok(ParquetLayout {
            schema,
            props,
            field_types: ds.fields.iter().map(|f| f.ty).collect(),
        })
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    pub fn properties(&self) -> &WriterProperties {
        &self.props
    }

    /// Readings to one Arrow batch in this layout, in one pass over the readings.
    pub fn record_batch<'r>(
        &self,
        readings: impl ExactSizeIterator<Item = &'r Reading>,
    ) -> Result<RecordBatch, EncodeError> {
        let n = readings.len();
        let mut sensors = SensorDictionary::with_capacity(n);
        let mut ts = Vec::with_capacity(n);
        let mut lat = Float64Builder::with_capacity(n);
        let mut lon = Float64Builder::with_capacity(n);
        let mut seq = Int64Builder::with_capacity(n);
        let mut received = Vec::with_capacity(n);
        let mut missing = BooleanBuilder::with_capacity(n);
        let mut fields: Vec<FieldColumn> = self
            .field_types
            .iter()
            .map(|ty| FieldColumn::new(*ty, n))
            .collect();
        for r in readings {
            sensors.push(&r.sensor_id);
            ts.push(r.ts);
            for (column, value) in fields.iter_mut().zip(r.values.iter()) {
                column.push(value.as_ref());
            }
            lat.append_option(r.lat);
            lon.append_option(r.lon);
            seq.append_option(r.seq);
            received.push(r.received_at);
            missing.append_value(r.ts_missing);
        }

        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.schema.fields().len());
        columns.push(Arc::new(sensors.finish()?));
        columns.push(Arc::new(
            TimestampMicrosecondArray::from(ts).with_timezone("UTC"),
        ));
        columns.extend(fields.into_iter().map(FieldColumn::finish));
        columns.push(Arc::new(lat.finish()));
        columns.push(Arc::new(lon.finish()));
        columns.push(Arc::new(seq.finish()));
        columns.push(Arc::new(
            TimestampMicrosecondArray::from(received).with_timezone("UTC"),
        ));
        columns.push(Arc::new(missing.finish()));
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }

    /// Writes `batch` as the Parquet file `path`, crash-safely: into a hidden temporary name
    /// beside it, closed (footer written), fsynced, renamed, and the directory fsynced. A
    /// reader sees the whole file or nothing. Returns the file size.
    pub fn write_file(&self, batch: &RecordBatch, path: &Path) -> Result<u64, EncodeError> {
        let dir = path.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir).map_err(io(dir))?;
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("part.parquet");
        let tmp = dir.join(format!(".{name}.tmp"));
        let result = (|| {
            let file = File::create(&tmp).map_err(io(&tmp))?;
            let mut writer = ArrowWriter::try_new(
                BufWriter::with_capacity(1 << 20, file),
                self.schema.clone(),
                Some(self.props.clone()),
            )?;
            writer.write(batch)?;
            let file = writer
                .into_inner()?
                .into_inner()
                .map_err(|e| EncodeError::Io {
                    path: tmp.clone(),
                    source: e.into_error(),
                })?;
            file.sync_all().map_err(io(&tmp))?;
            let size = file.metadata().map_err(io(&tmp))?.len();
            fs::rename(&tmp, path).map_err(io(path))?;
            sync_dir(dir)?;
            Ok(size)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }
}

/// The `sensor_id` column: a dictionary of the distinct ids and one key per row. Ids of up to
/// 15 bytes (nearly all) are looked up as one `u128`, which hashes and compares in a few
/// instructions; longer ones by string. Readings often repeat the previous row's sensor, so
/// that is checked first.
struct SensorDictionary<'r> {
    short: HashMap<u128, i32, foldhash::fast::RandomState>,
    long: HashMap<&'r str, i32, foldhash::fast::RandomState>,
    values: StringBuilder,
    keys: Vec<i32>,
    last: Option<(u128, i32)>,
}

/// `id` and its length packed into a `u128`, if it is at most 15 bytes: bytes 0..8 in the low
/// half, bytes 8..n and the length in the high half. Loaded with overlapping word reads, so
/// there is no byte loop and no memcpy (whose narrow stores stall the wide load after them).
#[inline]
fn pack_short(id: &str) -> Option<u128> {
    let b = id.as_bytes();
    let n = b.len();
    let word = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or([0; 8]));
    let half = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap_or([0; 4])) as u64;
    let (lo, hi) = match n {
        // n == 8: nothing beyond the first word (and a 64-bit shift would overflow).
        8..=15 => (
            word(0),
            word(n - 8).checked_shr((16 - n as u32) * 8).unwrap_or(0),
        ),
        4..=7 => (half(0) | (half(n - 4) >> ((8 - n) * 8)) << 32, 0),
        0..=3 => (
            b.iter().rev().fold(0u64, |acc, &x| (acc << 8) | x as u64),
            0,
        ),
        _ => return None,
    };
    Some(lo as u128 | ((hi | (n as u64) << 56) as u128) << 64)
}

impl<'r> SensorDictionary<'r> {
    fn with_capacity(n: usize) -> Self {
        SensorDictionary {
            short: HashMap::with_capacity_and_hasher(256, Default::default()),
            long: HashMap::default(),
            values: StringBuilder::with_capacity(256, 256 * 16),
            keys: Vec::with_capacity(n),
            last: None,
        }
    }

    #[inline]
    fn push(&mut self, id: &'r str) {
        let next = (self.short.len() + self.long.len()) as i32;
        let values = &mut self.values;
        let key = match pack_short(id) {
            Some(packed) => match self.last {
                Some((last, key)) if last == packed => key,
                _ => {
                    let key = *self.short.entry(packed).or_insert_with(|| {
                        values.append_value(id);
                        next
                    });
                    self.last = Some((packed, key));
                    key
                }
            },
            None => *self.long.entry(id).or_insert_with(|| {
                values.append_value(id);
                next
            }),
        };
        self.keys.push(key);
    }

    fn finish(mut self) -> Result<DictionaryArray<Int32Type>, EncodeError> {
        let keys = Int32Array::from(self.keys);
        Ok(DictionaryArray::try_new(
            keys,
            Arc::new(self.values.finish()),
        )?)
    }
}

/// One schema field's column under construction.
enum FieldColumn {
    Float(Float64Builder),
    Int(Int64Builder),
    Bool(BooleanBuilder),
    Str(StringBuilder),
}

impl FieldColumn {
    fn new(ty: FieldType, n: usize) -> FieldColumn {
        match ty {
            FieldType::Float => FieldColumn::Float(Float64Builder::with_capacity(n)),
            FieldType::Int => FieldColumn::Int(Int64Builder::with_capacity(n)),
            FieldType::Bool => FieldColumn::Bool(BooleanBuilder::with_capacity(n)),
            FieldType::String => FieldColumn::Str(StringBuilder::with_capacity(n, n * 8)),
        }
    }

    /// Appends a value; one of another type (which validation never lets through) is null.
    #[inline]
    fn push(&mut self, value: Option<&Value>) {
        match (self, value) {
            (FieldColumn::Float(b), Some(Value::Float(f))) => b.append_value(*f),
            (FieldColumn::Int(b), Some(Value::Int(i))) => b.append_value(*i),
            (FieldColumn::Bool(b), Some(Value::Bool(x))) => b.append_value(*x),
            (FieldColumn::Str(b), Some(Value::Str(s))) => b.append_value(s),
            (FieldColumn::Float(b), _) => b.append_null(),
            (FieldColumn::Int(b), _) => b.append_null(),
            (FieldColumn::Bool(b), _) => b.append_null(),
            (FieldColumn::Str(b), _) => b.append_null(),
        }
    }

    fn finish(self) -> ArrayRef {
        match self {
            FieldColumn::Float(mut b) => Arc::new(b.finish()),
            FieldColumn::Int(mut b) => Arc::new(b.finish()),
            FieldColumn::Bool(mut b) => Arc::new(b.finish()),
            FieldColumn::Str(mut b) => Arc::new(b.finish()),
        }
    }
}

/// Makes a rename in `dir` durable.
pub fn sync_dir(dir: &Path) -> Result<(), EncodeError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::pack_short;

    #[test]
    fn packs_ids_up_to_15_bytes() {
        assert_eq!(pack_short(""), Some(0));
        assert_ne!(pack_short("a"), pack_short("a\0"));
        assert_ne!(pack_short("abcd"), pack_short("abcd\0"));
        assert!(pack_short(&"x".repeat(15)).is_some());
        assert_eq!(pack_short(&"x".repeat(16)), None);
    }

    proptest! {
        #[test]
        fn packing_is_injective(a in "[A-Za-z0-9._-]{0,15}", b in "[A-Za-z0-9._-]{0,15}") {
            prop_assert_eq!(pack_short(&a) == pack_short(&b), a == b);
        }

        #[test]
        fn packing_is_injective_on_near_strings(a in "[ab]{0,15}", cut in 0usize..15) {
            let b = &a[..cut.min(a.len())];
            prop_assert_eq!(pack_short(&a) == pack_short(b), a == b);
        }
    }
}
