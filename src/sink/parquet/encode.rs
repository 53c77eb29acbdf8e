//! Readings to Parquet: the column layout of a dataset and the crash-safe file write.
//!
//! Columns, in order: `sensor_id` (string, dictionary-encoded in the file), `ts` (timestamp µs
//! UTC), one typed column per schema field (with its unit in the Arrow field metadata), `lat`,
//! `lon`, `seq`, `received_at`, `ts_missing`.
//!
//! `sensor_id` is a plain string column in Arrow and a dictionary in Parquet: the Parquet
//! writer builds its own dictionary from the values whatever the Arrow type (it re-interns an
//! Arrow dictionary row by row), so an Arrow dictionary would only cost a second hash per row. The file's key-value metadata names the dataset, its licence
//! and schema version, so a file found alone still says what it is.

use std::fs::{self, File};
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{BooleanBufferBuilder, BooleanBuilder, StringBuilder};
use arrow_array::types::{Float64Type, Int64Type};
use arrow_array::{
    ArrayRef, ArrowPrimitiveType, PrimitiveArray, RecordBatch, TimestampMicrosecondArray,
};
use arrow_buffer::{ArrowNativeType, NullBuffer, ScalarBuffer};
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
    #[error("{0}")]
    Lake(#[from] crate::sink::lake::LakeError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> EncodeError + '_ {
    move |source| EncodeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A dataset's Arrow schema and Parquet writer settings, built once per dataset.
#[derive(Debug)]
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
            Field::new("sensor_id", DataType::Utf8, false),
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
        // Sensor ids repeat in every file: always a dictionary.
        props = props.set_column_dictionary_enabled(ColumnPath::from("sensor_id"), true);
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
        let mut sensors = StringBuilder::with_capacity(n, n * 12);
        let mut ts = Vec::with_capacity(n);
        let mut lat = Nullable::<f64>::with_capacity(n);
        let mut lon = Nullable::<f64>::with_capacity(n);
        let mut seq = Nullable::<i64>::with_capacity(n);
        let mut received = Vec::with_capacity(n);
        let mut missing = BooleanBuilder::with_capacity(n);
        let mut fields: Vec<FieldColumn> = self
            .field_types
            .iter()
            .map(|ty| FieldColumn::new(*ty, n))
            .collect();
        for r in readings {
            sensors.append_value(&r.sensor_id);
            ts.push(r.ts);
            for (column, value) in fields.iter_mut().zip(r.values.iter()) {
                column.push(value.as_ref());
            }
            lat.push(r.lat);
            lon.push(r.lon);
            seq.push(r.seq);
            received.push(r.received_at);
            missing.append_value(r.ts_missing);
        }

        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.schema.fields().len());
        columns.push(Arc::new(sensors.finish()));
        columns.push(Arc::new(
            TimestampMicrosecondArray::from(ts).with_timezone("UTC"),
        ));
        columns.extend(fields.into_iter().map(FieldColumn::finish));
        columns.push(Arc::new(lat.finish::<Float64Type>()));
        columns.push(Arc::new(lon.finish::<Float64Type>()));
        columns.push(Arc::new(seq.finish::<Int64Type>()));
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

/// A nullable primitive column. Sensor columns are nearly always all present or all absent
/// (a fixed sensor sends no position), so validity bits are only kept once a column mixes
/// values and nulls; the common cases cost one `Vec` push per row.
struct Nullable<T> {
    values: Vec<T>,
    validity: Validity,
}

enum Validity {
    AllValid,
    AllNull,
    Mixed(BooleanBufferBuilder),
}

impl<T: ArrowNativeType + Default> Nullable<T> {
    fn with_capacity(n: usize) -> Self {
        Nullable {
            values: Vec::with_capacity(n),
            validity: Validity::AllValid,
        }
    }

    #[inline(always)]
    fn push(&mut self, value: Option<T>) {
        match (&mut self.validity, value.is_some()) {
            (Validity::AllValid, true) | (Validity::AllNull, false) => {}
            (Validity::Mixed(bits), valid) => bits.append(valid),
            (_, valid) => self.switch(valid),
        }
        self.values.push(value.unwrap_or_default());
    }

    /// The first row unlike all before it: from here on validity is kept bit by bit.
    #[cold]
    fn switch(&mut self, valid: bool) {
        let len = self.values.len();
        if len == 0 {
            self.validity = if valid {
                Validity::AllValid
            } else {
                Validity::AllNull
            };
            return;
        }
        let mut bits = BooleanBufferBuilder::new(self.values.capacity());
        bits.append_n(len, !valid);
        bits.append(valid);
        self.validity = Validity::Mixed(bits);
    }

    fn finish<P: ArrowPrimitiveType<Native = T>>(self) -> PrimitiveArray<P> {
        let len = self.values.len();
        let nulls = match self.validity {
            Validity::AllValid => None,
            Validity::AllNull => Some(NullBuffer::new_null(len)),
            Validity::Mixed(mut bits) => Some(NullBuffer::new(bits.finish())),
        };
        PrimitiveArray::new(ScalarBuffer::from(self.values), nulls)
    }
}

/// One schema field's column under construction.
enum FieldColumn {
    Float(Nullable<f64>),
    Int(Nullable<i64>),
    Bool(BooleanBuilder),
    Str(StringBuilder),
}

impl FieldColumn {
    fn new(ty: FieldType, n: usize) -> FieldColumn {
        match ty {
            FieldType::Float => FieldColumn::Float(Nullable::with_capacity(n)),
            FieldType::Int => FieldColumn::Int(Nullable::with_capacity(n)),
            FieldType::Bool => FieldColumn::Bool(BooleanBuilder::with_capacity(n)),
            FieldType::String => FieldColumn::Str(StringBuilder::with_capacity(n, n * 8)),
        }
    }

    /// Appends a value; one of another type (which validation never lets through) is null.
    #[inline]
    fn push(&mut self, value: Option<&Value>) {
        match (self, value) {
            (FieldColumn::Float(b), Some(Value::Float(f))) => b.push(Some(*f)),
            (FieldColumn::Int(b), Some(Value::Int(i))) => b.push(Some(*i)),
            (FieldColumn::Bool(b), Some(Value::Bool(x))) => b.append_value(*x),
            (FieldColumn::Str(b), Some(Value::Str(s))) => b.append_value(s),
            (FieldColumn::Float(b), _) => b.push(None),
            (FieldColumn::Int(b), _) => b.push(None),
            (FieldColumn::Bool(b), _) => b.append_null(),
            (FieldColumn::Str(b), _) => b.append_null(),
        }
    }

    fn finish(self) -> ArrayRef {
        match self {
            FieldColumn::Float(b) => Arc::new(b.finish::<Float64Type>()),
            FieldColumn::Int(b) => Arc::new(b.finish::<Int64Type>()),
            FieldColumn::Bool(mut b) => Arc::new(b.finish()),
            FieldColumn::Str(mut b) => Arc::new(b.finish()),
        }
    }
}

/// Makes a rename in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), EncodeError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

#[cfg(test)]
mod tests {
    #[test]
    fn nullable_columns_in_every_shape() {
        use arrow_array::Array;
        let column = |values: &[Option<i64>]| {
            let mut c = super::Nullable::<i64>::with_capacity(values.len());
            for v in values {
                c.push(*v);
            }
            let array = c.finish::<super::Int64Type>();
            (0..array.len())
                .map(|i| array.is_valid(i).then(|| array.value(i)))
                .collect::<Vec<_>>()
        };
        for case in [
            vec![],
            vec![Some(1), Some(2)],
            vec![None, None],
            vec![Some(1), None, Some(3)],
            vec![None, Some(2), None],
            vec![None, None, Some(3)],
        ] {
            assert_eq!(column(&case), case);
        }
    }
}
