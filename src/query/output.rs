//! Answers as tables, written as JSON, NDJSON, CSV, an Arrow IPC stream or a Parquet file.
//!
//! A [`Table`] is named, typed columns and rows of [`Cell`]s: raw readings (`sensor_id`,
//! `ts`, the fields asked for with the schema's types, `lat`, `lon`) and buckets (`bucket`,
//! `sensor_id` when grouped, then `{field}_{fn}`). Times are RFC 3339 (UTC, to the µs when
//! there is a fraction) in the text formats and timestamp(µs, UTC) in Arrow and Parquet.
//! JSON is one object with the rows as objects under `key` and whatever the caller adds
//! (`next`); NDJSON is one object per line; CSV follows RFC 4180 (a header row, CRLF, quotes
//! where needed); Arrow is one record batch in a stream (what pandas, polars and DuckDB
//! read); Parquet is a zstd file.

use std::sync::Arc;

use arrow_array::builder::{
    BooleanBuilder, Float64Builder, Int64Builder, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use serde_json::{Map, Value as Json};

use super::Row;
use super::aggregate::{Bucket, Func, Spec};
use crate::calendar::format_rfc3339_micros;
use crate::model::{FieldType, Micros, Value};

/// An output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Json,
    Ndjson,
    Csv,
    Arrow,
    Parquet,
}

impl Format {
    pub(crate) const NAMES: &'static str = "json, ndjson, csv, arrow, parquet";

    /// From `format=`.
    pub(crate) fn parse(name: &str) -> Option<Format> {
        match name {
            "json" => Some(Format::Json),
            "ndjson" => Some(Format::Ndjson),
            "csv" => Some(Format::Csv),
            "arrow" => Some(Format::Arrow),
            "parquet" => Some(Format::Parquet),
            _ => None,
        }
    }

    /// From an `Accept` header: the first media type named that we write (`None`: none is).
    pub(crate) fn from_accept(accept: &str) -> Option<Format> {
        accept
            .split(',')
            .find_map(|part| match part.split(';').next().unwrap_or("").trim() {
                "application/json" | "*/*" | "application/*" => Some(Format::Json),
                "application/x-ndjson" | "application/ndjson" => Some(Format::Ndjson),
                "text/csv" | "text/*" => Some(Format::Csv),
                "application/vnd.apache.arrow.stream" => Some(Format::Arrow),
                "application/vnd.apache.parquet" | "application/x-parquet" => Some(Format::Parquet),
                _ => None,
            })
    }

    pub(crate) fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Ndjson => "application/x-ndjson",
            Format::Csv => "text/csv; charset=utf-8; header=present",
            Format::Arrow => "application/vnd.apache.arrow.stream",
            Format::Parquet => "application/vnd.apache.parquet",
        }
    }

    /// The file name a download is offered under (`None`: shown inline).
    pub(crate) fn attachment(self) -> Option<&'static str> {
        match self {
            Format::Arrow => Some("arrows"),
            Format::Parquet => Some("parquet"),
            _ => None,
        }
    }
}

/// One value of a table.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Cell {
    Null,
    Text(String),
    Time(Micros),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl Cell {
    /// The cell as a JSON value, written to `out`.
    fn json(&self, out: &mut Vec<u8>) {
        match self {
            Cell::Null => out.extend_from_slice(b"null"),
            Cell::Text(s) => json_str(s, out),
            Cell::Time(t) => json_str(&format_rfc3339_micros(*t), out),
            Cell::Int(i) => out.extend_from_slice(itoa::Buffer::new().format(*i).as_bytes()),
            Cell::Float(f) if f.is_finite() => {
                out.extend_from_slice(ryu::Buffer::new().format_finite(*f).as_bytes())
            }
            Cell::Float(_) => out.extend_from_slice(b"null"),
            Cell::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        }
    }

    fn csv(&self, out: &mut String) {
        match self {
            Cell::Null => {}
            Cell::Text(s) => csv_text(s, out),
            Cell::Time(t) => out.push_str(&format_rfc3339_micros(*t)),
            Cell::Int(i) => out.push_str(itoa::Buffer::new().format(*i)),
            Cell::Float(f) => out.push_str(ryu::Buffer::new().format(*f)),
            Cell::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        }
    }
}

/// `s` as a JSON string.
fn json_str(s: &str, out: &mut Vec<u8>) {
    serde_json::to_writer(&mut *out, s).expect("a string always serializes into memory");
}

fn csv_text(s: &str, out: &mut String) {
    if s.contains([',', '"', '\r', '\n']) {
        out.push('"');
        out.push_str(&s.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(s);
    }
}

fn value_cell(v: &Option<Value>) -> Cell {
    match v {
        None => Cell::Null,
        Some(Value::Float(f)) => Cell::Float(*f),
        Some(Value::Int(i)) => Cell::Int(*i),
        Some(Value::Bool(b)) => Cell::Bool(*b),
        Some(Value::Str(s)) => Cell::Text(s.to_string()),
    }
}

/// The type of a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Text,
    Time,
    Int,
    Float,
    Bool,
}

impl Kind {
    fn of(ty: FieldType) -> Kind {
        match ty {
            FieldType::Float => Kind::Float,
            FieldType::Int => Kind::Int,
            FieldType::Bool => Kind::Bool,
            FieldType::String => Kind::Text,
        }
    }

    fn arrow(self) -> DataType {
        match self {
            Kind::Text => DataType::Utf8,
            Kind::Time => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            Kind::Int => DataType::Int64,
            Kind::Float => DataType::Float64,
            Kind::Bool => DataType::Boolean,
        }
    }
}

/// Named, typed columns and rows.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Table {
    pub(crate) columns: Vec<String>,
    pub(crate) kinds: Vec<Kind>,
    pub(crate) rows: Vec<Vec<Cell>>,
}

impl Table {
    /// Raw readings with the fields at `fields` (schema positions, names and types).
    pub(crate) fn readings(rows: &[Row], fields: &[(usize, String, FieldType)]) -> Table {
        let mut columns = vec!["sensor_id".to_string(), "ts".to_string()];
        columns.extend(fields.iter().map(|(_, name, _)| name.clone()));
        columns.extend(["lat".to_string(), "lon".to_string()]);
        let mut kinds = vec![Kind::Text, Kind::Time];
        kinds.extend(fields.iter().map(|(_, _, ty)| Kind::of(*ty)));
        kinds.extend([Kind::Float, Kind::Float]);
        let rows = rows
            .iter()
            .map(|r| {
                let mut cells = vec![Cell::Text(r.sensor_id.to_string()), Cell::Time(r.ts)];
                cells.extend(
                    fields
                        .iter()
                        .map(|(at, _, _)| r.values.get(*at).map_or(Cell::Null, value_cell)),
                );
                cells.push(r.lat.map_or(Cell::Null, Cell::Float));
                cells.push(r.lon.map_or(Cell::Null, Cell::Float));
                cells
            })
            .collect();
        Table {
            columns,
            kinds,
            rows,
        }
    }

    /// Buckets as `spec` computed them.
    pub(crate) fn buckets(buckets: &[Bucket], spec: &Spec) -> Table {
        let mut columns = vec!["bucket".to_string()];
        let mut kinds = vec![Kind::Time];
        if spec.by_sensor {
            columns.push("sensor_id".to_string());
            kinds.push(Kind::Text);
        }
        for (_, field) in &spec.fields {
            for f in &spec.fns {
                columns.push(format!("{field}_{}", f.name()));
                kinds.push(if *f == Func::Count {
                    Kind::Int
                } else {
                    Kind::Float
                });
            }
        }
        let rows = buckets
            .iter()
            .map(|b| {
                let mut cells = vec![Cell::Time(b.start)];
                if let Some(s) = &b.sensor {
                    cells.push(Cell::Text(s.to_string()));
                }
                let fns = spec.fns.iter().cycle();
                cells.extend(b.values.iter().zip(fns).map(|(v, f)| match (v, f) {
                    (None, Func::Count) => Cell::Int(0),
                    (None, _) => Cell::Null,
                    (Some(v), Func::Count) => Cell::Int(*v as i64),
                    (Some(v), _) => Cell::Float(*v),
                }));
                cells
            })
            .collect();
        Table {
            columns,
            kinds,
            rows,
        }
    }

    /// The table as one Arrow record batch.
    pub(crate) fn batch(&self) -> Result<RecordBatch, arrow_schema::ArrowError> {
        let fields: Vec<Field> = self
            .columns
            .iter()
            .zip(&self.kinds)
            .map(|(name, kind)| Field::new(name, kind.arrow(), true))
            .collect();
        let n = self.rows.len();
        let arrays: Vec<ArrayRef> = self
            .kinds
            .iter()
            .enumerate()
            .map(|(c, kind)| -> ArrayRef {
                let cells = self.rows.iter().map(|r| &r[c]);
                match kind {
                    Kind::Text => {
                        let mut b = StringBuilder::with_capacity(n, n * 8);
                        for cell in cells {
                            match cell {
                                Cell::Text(s) => b.append_value(s),
                                _ => b.append_null(),
                            }
                        }
                        Arc::new(b.finish())
                    }
                    Kind::Time => {
                        let mut b = TimestampMicrosecondBuilder::with_capacity(n);
                        for cell in cells {
                            match cell {
                                Cell::Time(t) => b.append_value(*t),
                                _ => b.append_null(),
                            }
                        }
                        Arc::new(b.finish().with_timezone("UTC"))
                    }
                    Kind::Int => {
                        let mut b = Int64Builder::with_capacity(n);
                        for cell in cells {
                            match cell {
                                Cell::Int(i) => b.append_value(*i),
                                _ => b.append_null(),
                            }
                        }
                        Arc::new(b.finish())
                    }
                    Kind::Float => {
                        let mut b = Float64Builder::with_capacity(n);
                        for cell in cells {
                            match cell {
                                Cell::Float(f) => b.append_value(*f),
                                Cell::Int(i) => b.append_value(*i as f64),
                                _ => b.append_null(),
                            }
                        }
                        Arc::new(b.finish())
                    }
                    Kind::Bool => {
                        let mut b = BooleanBuilder::with_capacity(n);
                        for cell in cells {
                            match cell {
                                Cell::Bool(v) => b.append_value(*v),
                                _ => b.append_null(),
                            }
                        }
                        Arc::new(b.finish())
                    }
                }
            })
            .collect();
        RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
    }

    /// Each row as a JSON object (keys in column order) written straight to `out`, each
    /// followed by `separator` but the last.
    fn objects(&self, separator: &[u8], out: &mut Vec<u8>) {
        let keys: Vec<Vec<u8>> = self
            .columns
            .iter()
            .map(|c| {
                let mut key = Vec::new();
                json_str(c, &mut key);
                key.push(b':');
                key
            })
            .collect();
        for (i, row) in self.rows.iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(separator);
            }
            out.push(b'{');
            for (j, (key, cell)) in keys.iter().zip(row).enumerate() {
                if j > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(key);
                cell.json(out);
            }
            out.push(b'}');
        }
    }

    /// The table in `format`. JSON: `{key: [rows], ..extra}`; the other formats have no
    /// place for `extra` (the caller sends it as headers).
    pub(crate) fn write(
        &self,
        format: Format,
        key: &str,
        extra: Map<String, Json>,
    ) -> Result<Vec<u8>, String> {
        Ok(match format {
            Format::Json => {
                let mut out = Vec::with_capacity(64 * self.rows.len() + 256);
                out.push(b'{');
                for (name, value) in &extra {
                    json_str(name, &mut out);
                    out.push(b':');
                    serde_json::to_writer(&mut out, value).map_err(|e| e.to_string())?;
                    out.push(b',');
                }
                json_str(key, &mut out);
                out.extend_from_slice(b":[");
                self.objects(b",", &mut out);
                out.extend_from_slice(b"]}\n");
                out
            }
            Format::Ndjson => {
                let mut out = Vec::with_capacity(64 * self.rows.len());
                self.objects(b"\n", &mut out);
                if !self.rows.is_empty() {
                    out.push(b'\n');
                }
                out
            }
            Format::Arrow => {
                let batch = self.batch().map_err(|e| e.to_string())?;
                let mut out = Vec::new();
                let mut w = arrow_ipc::writer::StreamWriter::try_new(&mut out, &batch.schema())
                    .map_err(|e| e.to_string())?;
                w.write(&batch).map_err(|e| e.to_string())?;
                w.finish().map_err(|e| e.to_string())?;
                drop(w);
                out
            }
            Format::Parquet => {
                let batch = self.batch().map_err(|e| e.to_string())?;
                let props = parquet::file::properties::WriterProperties::builder()
                    .set_compression(parquet::basic::Compression::ZSTD(Default::default()))
                    .build();
                let mut out = Vec::new();
                let mut w =
                    parquet::arrow::ArrowWriter::try_new(&mut out, batch.schema(), Some(props))
                        .map_err(|e| e.to_string())?;
                w.write(&batch).map_err(|e| e.to_string())?;
                w.close().map_err(|e| e.to_string())?;
                out
            }
            Format::Csv => {
                let mut out = String::new();
                for (i, c) in self.columns.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    csv_text(c, &mut out);
                }
                out.push_str("\r\n");
                for r in &self.rows {
                    for (i, cell) in r.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        cell.csv(&mut out);
                    }
                    out.push_str("\r\n");
                }
                out.into_bytes()
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_what_needs_quoting_and_leaves_nulls_empty() {
        let t = Table {
            columns: vec!["a".into(), "b,c".into()],
            kinds: vec![Kind::Text, Kind::Int],
            rows: vec![vec![Cell::Text("x\"y".into()), Cell::Null]],
        };
        assert_eq!(
            t.write(Format::Csv, "rows", Map::new()).unwrap(),
            b"a,\"b,c\"\r\n\"x\"\"y\",\r\n"
        );
    }

    #[test]
    fn accept_picks_the_first_format_written() {
        assert_eq!(
            Format::from_accept("text/html, text/csv;q=0.9"),
            Some(Format::Csv)
        );
        assert_eq!(Format::from_accept("image/png"), None);
        assert_eq!(Format::from_accept("*/*"), Some(Format::Json));
    }
}
