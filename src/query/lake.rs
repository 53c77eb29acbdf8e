//! The lake: a dataset's older readings, read from the Parquet files its sink wrote.
//!
//! Pruning, cheapest first: hour partitions outside the asked range are never opened (the
//! directories are `date=…/hour=…` by device time); files whose log range is not wholly at
//! or below the hot store's boundary are the hot store's (see `hot`'s header); row groups
//! whose `ts` statistics miss the range are skipped; only the columns asked for are decoded.
//! The files are citygate's own; a reader that panics on one anyway fails the query with the
//! file's name rather than the process.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::path::Path;

use std::sync::Arc;

use bytes::{Buf, Bytes};

use arrow_array::types::Int32Type;
use arrow_array::{
    Array, BooleanArray, DictionaryArray, Float64Array, Int32Array, Int64Array, RecordBatch,
    StringArray, TimestampMicrosecondArray,
};
use arrow_schema::{DataType, Field, Schema};
use compact_str::CompactString;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder,
};
use parquet::file::reader::{ChunkReader, Length};
use parquet::file::statistics::Statistics;

use super::Row;
use crate::calendar::days_from_civil;
use crate::model::{Dataset, FieldType, Micros, Value, Values};
pub(crate) use crate::sink::lake::{Lake, LakeFile};
use crate::sink::parquet::log_range;
use crate::telemetry::Scanned;

const HOUR: Micros = 3_600_000_000;

#[derive(Debug, thiserror::Error)]
pub(crate) enum LakeError {
    #[error("lake file {path}: {message}")]
    File { path: String, message: String },
    #[error("the lake: {0}")]
    Store(#[from] crate::sink::lake::LakeError),
}

fn file_error(file: &LakeFile, message: impl ToString) -> LakeError {
    LakeError::File {
        path: file.name(),
        message: message.to_string(),
    }
}

/// One hour partition of a dataset: its start and its files (the lake's part of them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Hour {
    pub(crate) start: Micros,
    pub(crate) files: Vec<LakeFile>,
}

/// The hour partitions of `dataset` in `lake` that overlap `[from, to)`, oldest first, each
/// with its files: this node's whose log range ends at or below `lake_through`, in object
/// storage also another node's up to its mark in `marks` (`None`: every file). Blocking.
pub(crate) fn hours_in(
    lake: &Lake,
    dataset: &str,
    span: (Micros, Micros),
    lake_through: u64,
    marks: Option<&HashMap<String, u64>>,
) -> Result<Vec<Hour>, LakeError> {
    match lake {
        Lake::Local(root) => Ok(hours(root, dataset, span.0, span.1, lake_through)),
        Lake::Object(o) => Ok(o
            .runtime()
            .block_on(o.files(dataset, span, lake_through, marks))?
            .into_iter()
            .map(|(start, files)| Hour { start, files })
            .collect()),
    }
}

fn partition_value<'a>(name: &'a str, key: &str) -> Option<&'a str> {
    name.strip_prefix(key)?.strip_prefix('=')
}

/// `date=YYYY-MM-DD` → days since the epoch.
fn date_days(name: &str) -> Option<i64> {
    let v = partition_value(name, "date")?;
    let mut it = v.split('-');
    let (y, m, d) = (it.next()?, it.next()?, it.next()?);
    Some(days_from_civil(
        y.parse().ok()?,
        m.parse().ok()?,
        d.parse().ok()?,
    ))
}

/// The hour partitions of `dataset` under `root` that overlap `[from, to)`, oldest first,
/// each with its files whose log range ends at or below `lake_through`.
pub(crate) fn hours(
    root: &Path,
    dataset: &str,
    from: Micros,
    to: Micros,
    lake_through: u64,
) -> Vec<Hour> {
    let mut out = Vec::new();
    let base = root.join(format!("dataset={dataset}"));
    let Ok(dates) = std::fs::read_dir(&base) else {
        return out;
    };
    let (first_day, last_day) = (from.div_euclid(HOUR * 24), (to - 1).div_euclid(HOUR * 24));
    for date in dates.flatten() {
        let name = date.file_name();
        let Some(day) = name.to_str().and_then(date_days) else {
            continue;
        };
        if day < first_day || day > last_day {
            continue;
        }
        let Ok(hour_dirs) = std::fs::read_dir(date.path()) else {
            continue;
        };
        for hour in hour_dirs.flatten() {
            let name = hour.file_name();
            let Some(h) = name
                .to_str()
                .and_then(|n| partition_value(n, "hour"))
                .and_then(|h| h.parse::<i64>().ok())
            else {
                continue;
            };
            let start = (day * 24 + h) * HOUR;
            if start + HOUR <= from || start >= to {
                continue;
            }
            let Ok(files) = std::fs::read_dir(hour.path()) else {
                continue;
            };
            let mut files: Vec<std::path::PathBuf> = files
                .flatten()
                .filter(|f| {
                    f.file_name()
                        .to_str()
                        .and_then(log_range)
                        .is_some_and(|(_, last)| last <= lake_through)
                })
                .map(|f| f.path())
                .collect();
            if files.is_empty() {
                continue;
            }
            files.sort();
            let files = files.into_iter().map(LakeFile::Local).collect();
            out.push(Hour { start, files });
        }
    }
    out.sort_by_key(|h| h.start);
    out
}

/// A lake file's bytes, as the Parquet reader asks for them: from the disk, or from the
/// object store by byte ranges: the column chunks a read needs fetched at once
/// ([`Source::prefetch`]), anything else (the footer, say) when asked.
enum Source {
    File(File),
    Object {
        reader: crate::sink::lake::RangeReader,
        /// Byte ranges fetched ahead: `(start, bytes)`.
        fetched: Vec<(u64, Bytes)>,
    },
}

/// How much a read of an unfetched place (a page header) takes at a time.
const READ_WINDOW: u64 = 64 << 10;

impl Source {
    fn open(lake: &Lake, file: &LakeFile) -> Result<Source, LakeError> {
        match (lake, file) {
            (_, LakeFile::Local(path)) => File::open(path)
                .map(Source::File)
                .map_err(|e| file_error(file, e)),
            (Lake::Object(o), LakeFile::Object { key, size }) => Ok(Source::Object {
                reader: o.reader(key, *size),
                fetched: Vec::new(),
            }),
            (Lake::Local(_), LakeFile::Object { .. }) => {
                Err(file_error(file, "an object of a lake on local disk"))
            }
        }
    }

    /// Fetches `ranges` (an object store merges near ones into one request).
    fn prefetch(&mut self, ranges: Vec<std::ops::Range<u64>>) -> Result<(), String> {
        let Source::Object { reader, fetched } = self else {
            return Ok(());
        };
        if ranges.is_empty() {
            return Ok(());
        }
        let bytes = reader.get_ranges(&ranges).map_err(|e| e.to_string())?;
        fetched.extend(ranges.iter().map(|r| r.start).zip(bytes));
        Ok(())
    }

    /// The fetched bytes from `start` on, if a fetched range holds `start..start + len`.
    fn fetched(&self, start: u64, len: u64) -> Option<Bytes> {
        let Source::Object { fetched, .. } = self else {
            return None;
        };
        fetched.iter().find_map(|(at, bytes)| {
            let end = at + bytes.len() as u64;
            (*at <= start && start + len <= end).then(|| bytes.slice((start - at) as usize..))
        })
    }
}

impl Length for Source {
    fn len(&self) -> u64 {
        match self {
            Source::File(f) => f.len(),
            Source::Object { reader, .. } => reader.size(),
        }
    }
}

impl ChunkReader for Source {
    type T = Box<dyn Read + Send>;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        match self {
            Source::File(f) => Ok(Box::new(f.get_read(start)?)),
            Source::Object { reader, .. } => {
                if let Some(bytes) = self.fetched(start, 1) {
                    return Ok(Box::new(bytes.reader()));
                }
                let len = READ_WINDOW.min(reader.size().saturating_sub(start));
                Ok(Box::new(self.get_bytes(start, len as usize)?.reader()))
            }
        }
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        match self {
            Source::File(f) => f.get_bytes(start, length),
            Source::Object { reader, .. } => {
                if let Some(bytes) = self.fetched(start, length as u64) {
                    return Ok(bytes.slice(..length));
                }
                reader
                    .get(start..start + length as u64)
                    .map_err(|e| parquet::errors::ParquetError::External(Box::new(e)))
            }
        }
    }
}

/// The rows of `file` in `[from, to)` that `keep` accepts, in `target`'s schema. Blocking.
pub(crate) fn read_file(
    lake: &Lake,
    file: &LakeFile,
    target: &Dataset,
    from: Micros,
    to: Micros,
    keep: &mut dyn FnMut(Micros, &str) -> bool,
    out: &mut dyn FnMut(Row),
) -> Result<(), LakeError> {
    batches(lake, file, target, None, None, (from, to), &mut |batch| {
        rows_of(batch, target, from, to, keep, out)
    })
    .map(|_| ())
}

/// [`read_file`] into a fold, which takes whole record batches from their columns when it
/// can (see [`super::Fold::add_batch`]). Returns what was read and pruned.
pub(crate) fn read_file_fold(
    lake: &Lake,
    file: &LakeFile,
    sel: &super::Selection,
    (from, to): (Micros, Micros),
    keep: &mut dyn FnMut(Micros, &str) -> bool,
    fold: &mut dyn super::Fold,
) -> Result<Scanned, LakeError> {
    let target = &sel.dataset;
    batches(
        lake,
        file,
        target,
        sel.fields.as_deref(),
        sel.filter.sensors.as_ref(),
        (from, to),
        &mut |batch| {
            if fold.add_batch(batch, sel, (from, to)) {
                return Ok(());
            }
            rows_of(batch, target, from, to, keep, &mut |row| fold.add(row))
        },
    )
}

/// Hands `each` the record batches of `path` that may hold readings of `[from, to)`, with
/// the columns of `target`'s fields at `fields` (`None`: all) and the key columns
/// (`sensor_id` as the file's own dictionary); row groups whose `ts` statistics miss the
/// span, or whose `sensor_id` ones hold none of `sensors`, are not read. Blocking; a reader
/// that panics is an error naming the file.
fn batches(
    lake: &Lake,
    file: &LakeFile,
    target: &Dataset,
    fields: Option<&[usize]>,
    sensors: Option<&HashSet<String>>,
    span: (Micros, Micros),
    each: &mut dyn FnMut(&RecordBatch) -> Result<(), String>,
) -> Result<Scanned, LakeError> {
    let source = Source::open(lake, file)?;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        batches_inner(source, file, target, fields, sensors, span, each)
    }));
    match result {
        Ok(r) => r,
        Err(_) => Err(file_error(file, "the Parquet reader failed on it")),
    }
}

/// The file's Arrow schema with `sensor_id` read as a dictionary (the file stores it as
/// one): a sensor's rows are then told apart by a key, not by comparing strings.
fn dictionary_hint(schema: &Schema) -> Schema {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| {
            if f.name() == "sensor_id" && f.data_type() == &DataType::Utf8 {
                Field::new(
                    "sensor_id",
                    DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
                    f.is_nullable(),
                )
            } else {
                f.as_ref().clone()
            }
        })
        .collect();
    Schema::new_with_metadata(fields, schema.metadata().clone())
}

/// Rows per record batch read from a file (a few row groups' worth of a sensor's dictionary
/// keys at a time; arrow-rs reads 1 024 by default).
const BATCH_ROWS: usize = 8192;

fn batches_inner(
    source: Source,
    path: &LakeFile,
    target: &Dataset,
    fields: Option<&[usize]>,
    sensors: Option<&HashSet<String>>,
    (from, to): (Micros, Micros),
    each: &mut dyn FnMut(&RecordBatch) -> Result<(), String>,
) -> Result<Scanned, LakeError> {
    let loaded = ArrowReaderMetadata::load(&source, ArrowReaderOptions::new())
        .map_err(|e| file_error(path, e))?;
    let options = ArrowReaderOptions::new().with_schema(Arc::new(dictionary_hint(loaded.schema())));
    let metadata = ArrowReaderMetadata::try_new(loaded.metadata().clone(), options)
        .map_err(|e| file_error(path, e))?;
    let mut source = source;
    let file_metadata = metadata.metadata().clone();
    let parquet_schema = file_metadata.file_metadata().schema_descr();
    let column = |name: &str| {
        parquet_schema
            .columns()
            .iter()
            .position(|c| c.path().parts().len() == 1 && c.name() == name)
    };
    let Some(ts_column) = column("ts") else {
        return Err(file_error(path, "no `ts` column"));
    };
    let sensor_column = column("sensor_id");
    let row_groups: Vec<usize> = file_metadata
        .row_groups()
        .iter()
        .enumerate()
        .filter(|(_, rg)| match rg.column(ts_column).statistics() {
            Some(Statistics::Int64(s)) => match (s.min_opt(), s.max_opt()) {
                (Some(&min), Some(&max)) => max >= from && min < to,
                _ => true,
            },
            _ => true,
        })
        .filter(|(_, rg)| {
            let (Some(wanted), Some(at)) = (sensors, sensor_column) else {
                return true;
            };
            match rg.column(at).statistics() {
                // Bounds (a truncated minimum is a prefix, a truncated maximum rounds up).
                Some(Statistics::ByteArray(s)) => match (s.min_opt(), s.max_opt()) {
                    (Some(min), Some(max)) => wanted.iter().any(|w| {
                        let w = w.as_bytes();
                        min.data() <= w && w <= max.data()
                    }),
                    _ => true,
                },
                _ => true,
            }
        })
        .map(|(i, _)| i)
        .collect();
    let mut scanned = Scanned {
        files: 1,
        row_groups_read: row_groups.len() as u64,
        row_groups_pruned: (file_metadata.num_row_groups() - row_groups.len()) as u64,
        rows: 0,
    };
    if row_groups.is_empty() {
        return Ok(scanned);
    }
    let mut wanted: Vec<usize> = ["sensor_id", "ts", "lat", "lon"]
        .into_iter()
        .filter_map(column)
        .collect();
    wanted.extend(
        target
            .fields
            .iter()
            .enumerate()
            .filter(|(i, _)| fields.is_none_or(|f| f.contains(i)))
            .filter_map(|(_, f)| column(&f.name)),
    );
    // In object storage: the column chunks to read, fetched at once.
    let mut ranges = Vec::new();
    for &rg in &row_groups {
        for &c in &wanted {
            let (start, len) = file_metadata.row_group(rg).column(c).byte_range();
            ranges.push(start..start + len);
        }
    }
    source.prefetch(ranges).map_err(|e| file_error(path, e))?;
    let mask = ProjectionMask::leaves(parquet_schema, wanted);
    let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(source, metadata)
        .with_row_groups(row_groups)
        .with_projection(mask)
        .with_batch_size(BATCH_ROWS)
        .build()
        .map_err(|e| file_error(path, e))?;
    for batch in reader {
        let batch = batch.map_err(|e| file_error(path, e))?;
        scanned.rows += batch.num_rows() as u64;
        each(&batch).map_err(|m| file_error(path, m))?;
    }
    Ok(scanned)
}

/// The typed column of a field in `batch`, when it has it with the field's type.
enum Typed<'a> {
    Float(&'a Float64Array),
    Int(&'a Int64Array),
    Bool(&'a BooleanArray),
    Str(&'a StringArray),
    Missing,
}

impl Typed<'_> {
    fn value(&self, row: usize) -> Option<Value> {
        match self {
            Typed::Float(a) if !a.is_null(row) => Some(Value::Float(a.value(row))),
            Typed::Int(a) if !a.is_null(row) => Some(Value::Int(a.value(row))),
            Typed::Bool(a) if !a.is_null(row) => Some(Value::Bool(a.value(row))),
            Typed::Str(a) if !a.is_null(row) => Some(Value::Str(CompactString::from(a.value(row)))),
            _ => None,
        }
    }
}

fn typed<'a>(batch: &'a RecordBatch, name: &str, ty: FieldType) -> Typed<'a> {
    let Some(array) = batch.column_by_name(name) else {
        return Typed::Missing;
    };
    let any = array.as_any();
    match ty {
        FieldType::Float => any.downcast_ref().map_or(Typed::Missing, Typed::Float),
        FieldType::Int => any.downcast_ref().map_or(Typed::Missing, Typed::Int),
        FieldType::Bool => any.downcast_ref().map_or(Typed::Missing, Typed::Bool),
        FieldType::String => any.downcast_ref().map_or(Typed::Missing, Typed::Str),
    }
}

/// A batch's `sensor_id` column: plain strings, or the file's dictionary.
pub(crate) enum Sensors<'a> {
    Plain(&'a StringArray),
    Dictionary {
        keys: &'a Int32Array,
        values: &'a StringArray,
    },
}

impl<'a> Sensors<'a> {
    pub(crate) fn of(batch: &'a RecordBatch) -> Option<Sensors<'a>> {
        let column = batch.column_by_name("sensor_id")?;
        if let Some(plain) = column.as_any().downcast_ref::<StringArray>() {
            return Some(Sensors::Plain(plain));
        }
        let dictionary = column
            .as_any()
            .downcast_ref::<DictionaryArray<Int32Type>>()?;
        Some(Sensors::Dictionary {
            keys: dictionary.keys(),
            values: dictionary.values().as_any().downcast_ref::<StringArray>()?,
        })
    }

    fn value(&self, row: usize) -> Option<&'a str> {
        match self {
            Sensors::Plain(a) => (!a.is_null(row)).then(|| a.value(row)),
            Sensors::Dictionary { keys, values } => {
                (!keys.is_null(row)).then(|| values.value(keys.value(row) as usize))
            }
        }
    }
}

fn rows_of(
    batch: &RecordBatch,
    target: &Dataset,
    from: Micros,
    to: Micros,
    keep: &mut dyn FnMut(Micros, &str) -> bool,
    out: &mut dyn FnMut(Row),
) -> Result<(), String> {
    let sensors = Sensors::of(batch).ok_or("no string `sensor_id` column")?;
    let ts = batch
        .column_by_name("ts")
        .and_then(|a| a.as_any().downcast_ref::<TimestampMicrosecondArray>())
        .ok_or("no µs timestamp `ts` column")?;
    let position = |name: &str| {
        batch
            .column_by_name(name)
            .and_then(|a| a.as_any().downcast_ref::<Float64Array>())
    };
    let (lat, lon) = (position("lat"), position("lon"));
    let fields: Vec<Typed<'_>> = target
        .fields
        .iter()
        .map(|f| typed(batch, &f.name, f.ty))
        .collect();
    let coordinate = |a: Option<&Float64Array>, row: usize| {
        a.and_then(|a| (!a.is_null(row)).then(|| a.value(row)))
    };
    for row in 0..batch.num_rows() {
        let t = ts.value(row);
        if t < from || t >= to {
            continue;
        }
        let Some(sensor) = sensors.value(row) else {
            continue;
        };
        if !keep(t, sensor) {
            continue;
        }
        let values: Values = fields.iter().map(|f| f.value(row)).collect();
        out(Row {
            sensor_id: CompactString::from(sensor),
            ts: t,
            values,
            lat: coordinate(lat, row),
            lon: coordinate(lon, row),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_give_their_log_range() {
        assert_eq!(
            log_range("part-00000000000000000003-00000000000000000017-0.parquet"),
            Some((3, 17))
        );
        assert_eq!(log_range(".part-1-2-0.parquet.tmp"), None);
        assert_eq!(log_range("part-x-2-0.parquet"), None);
    }

    #[test]
    fn row_groups_are_pruned_by_time_and_by_the_sensors_asked_for() {
        let config =
            crate::config::Config::from_toml(crate::config::DEFAULT_CONFIG, "default", &[])
                .unwrap();
        let ds = config.datasets[0].build();
        let readings: Vec<crate::model::Reading> = ["b-1", "b-2", "b-3"]
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let mut r = crate::model::Reading::empty(ds.fields.len(), 1000 + i as Micros);
                r.sensor_id = CompactString::from(*s);
                r.values[0] = Some(Value::Int(i as i64));
                r
            })
            .collect();
        let layout = crate::sink::parquet::ParquetLayout::new(&ds, 1).unwrap();
        let batch = layout.record_batch(readings.iter()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("part-1-1-0.parquet");
        layout.write_file(&batch, &path).unwrap();
        let read = |sensors: &[&str], span| {
            let wanted: HashSet<String> = sensors.iter().map(|s| s.to_string()).collect();
            let wanted = (!sensors.is_empty()).then_some(&wanted);
            let mut rows = 0;
            let (lake, file) = (
                Lake::Local(dir.path().into()),
                LakeFile::Local(path.clone()),
            );
            let scanned = batches(&lake, &file, &ds, Some(&[0]), wanted, span, &mut |b| {
                rows += b.num_rows();
                Ok(())
            })
            .unwrap();
            (scanned.row_groups_read, scanned.row_groups_pruned, rows)
        };
        assert_eq!(read(&[], (0, 2000)), (1, 0, 3));
        assert_eq!(read(&["b-2", "z-9"], (0, 2000)), (1, 0, 3));
        assert_eq!(read(&["a-1", "c-1"], (0, 2000)), (0, 1, 0));
        assert_eq!(read(&[], (2000, 3000)), (0, 1, 0));
    }

    #[test]
    fn partitions_outside_the_range_and_files_past_the_boundary_are_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let touch = |date: &str, hour: &str, name: &str| {
            let d = dir
                .path()
                .join("dataset=d")
                .join(format!("date={date}"))
                .join(format!("hour={hour}"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join(name), b"").unwrap();
        };
        touch("2026-11-30", "10", "part-1-5-0.parquet");
        touch("2026-11-30", "11", "part-6-9-0.parquet");
        touch("2026-11-30", "11", "part-10-12-0.parquet");
        touch("2026-11-30", "12", "part-13-20-0.parquet");
        let day = days_from_civil(2026, 11, 30) * 24 * HOUR;
        let found = hours(dir.path(), "d", day + 11 * HOUR, day + 13 * HOUR, 9);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].start, day + 11 * HOUR);
        assert_eq!(found[0].files.len(), 1);
        assert!(found[0].files[0].name().ends_with("part-6-9-0.parquet"));
    }
}
