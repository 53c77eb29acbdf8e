//! Readings to Parquet: the column layout of a dataset and the crash-safe file write.
//!
//! Columns, in order: `sensor_id` (dictionary), `ts` (timestamp µs UTC), one typed column per
//! schema field (with its unit in the Arrow field metadata), `lat`, `lon`, `seq`,
//! `received_at`, `ts_missing`. The file's key-value metadata names the dataset, its licence
//! and schema version, so a file found alone still says what it is.

use std::fs::{self, File};
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{
    BooleanBuilder, Float64Builder, Int64Builder, StringBuilder, StringDictionaryBuilder,
    TimestampMicrosecondBuilder,
};
use arrow_array::types::Int32Type;
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;

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
        let props = WriterProperties::builder()
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

    /// Readings to one Arrow batch in this layout.
    pub fn record_batch<'r>(
        &self,
        readings: impl ExactSizeIterator<Item = &'r Reading> + Clone,
    ) -> Result<RecordBatch, EncodeError> {
        let n = readings.len();
        let mut sensor = StringDictionaryBuilder::<Int32Type>::with_capacity(n, 256, 256 * 16);
        let mut ts = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
        let mut lat = Float64Builder::with_capacity(n);
        let mut lon = Float64Builder::with_capacity(n);
        let mut seq = Int64Builder::with_capacity(n);
        let mut received = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
        let mut missing = BooleanBuilder::with_capacity(n);
        for r in readings.clone() {
            sensor.append_value(r.sensor_id.as_str());
            ts.append_value(r.ts);
            lat.append_option(r.lat);
            lon.append_option(r.lon);
            seq.append_option(r.seq);
            received.append_value(r.received_at);
            missing.append_value(r.ts_missing);
        }

        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.schema.fields().len());
        columns.push(Arc::new(sensor.finish()));
        columns.push(Arc::new(ts.finish()));
        // Column by column: each pass touches one builder, which keeps the loop tight.
        for (i, ty) in self.field_types.iter().enumerate() {
            let values = readings
                .clone()
                .map(|r| r.values.get(i).and_then(Option::as_ref));
            columns.push(match ty {
                FieldType::Float => {
                    let mut b = Float64Builder::with_capacity(n);
                    for v in values {
                        b.append_option(match v {
                            Some(Value::Float(f)) => Some(*f),
                            _ => None,
                        });
                    }
                    Arc::new(b.finish())
                }
                FieldType::Int => {
                    let mut b = Int64Builder::with_capacity(n);
                    for v in values {
                        b.append_option(match v {
                            Some(Value::Int(i)) => Some(*i),
                            _ => None,
                        });
                    }
                    Arc::new(b.finish())
                }
                FieldType::Bool => {
                    let mut b = BooleanBuilder::with_capacity(n);
                    for v in values {
                        b.append_option(match v {
                            Some(Value::Bool(x)) => Some(*x),
                            _ => None,
                        });
                    }
                    Arc::new(b.finish())
                }
                FieldType::String => {
                    let mut b = StringBuilder::with_capacity(n, n * 8);
                    for v in values {
                        b.append_option(match v {
                            Some(Value::Str(s)) => Some(s.as_str()),
                            _ => None,
                        });
                    }
                    Arc::new(b.finish())
                }
            });
        }
        columns.push(Arc::new(lat.finish()));
        columns.push(Arc::new(lon.finish()));
        columns.push(Arc::new(seq.finish()));
        columns.push(Arc::new(received.finish()));
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

/// Makes a rename in `dir` durable.
pub fn sync_dir(dir: &Path) -> Result<(), EncodeError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}
