//! The data model: readings, datasets and their schemas, and why a reading is rejected.
//! Plain types, no I/O.
//!
//! A [`Reading`] is one observation of one sensor at one time. Its field values sit in
//! schema order (`values[i]` belongs to `dataset.fields[i]`), so every later stage (validate,
//! Parquet columns, line protocol) indexes instead of looking names up.

use std::time::Duration;

use compact_str::CompactString;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

/// Microseconds since the Unix epoch, UTC. The one time unit inside citygate.
pub type Micros = i64;

/// The longest sensor id we accept (`[A-Za-z0-9._-]{1,64}`).
pub const MAX_SENSOR_ID_LEN: usize = 64;

/// Column names every dataset has; a schema field may not take one of them.
pub const RESERVED_NAMES: [&str; 11] = [
    "sensor_id",
    "sensor",
    "ts",
    "time",
    "timestamp",
    "received_at",
    "ts_missing",
    "lat",
    "lon",
    "seq",
    "fields",
];

/// One typed field value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Float(f64),
    Int(i64),
    Bool(bool),
    Str(CompactString),
}

/// Field values in schema order; `None` where the reading did not carry the field.
/// Inline up to four fields (most sensor schemas), so a typical reading costs no allocation
/// for its values and stays small enough (200 bytes) to move and scan cheaply.
pub type Values = SmallVec<[Option<Value>; 4]>;

/// One sensor observation after decoding.
#[derive(Clone, Debug, PartialEq)]
pub struct Reading {
    pub sensor_id: CompactString,
    /// Device time; the receive time when the device sent none (then `ts_missing` is set).
    pub ts: Micros,
    pub ts_missing: bool,
    pub received_at: Micros,
    pub values: Values,
    pub lat: Option<f64>,
    pub lon: Option<f64>,
    pub seq: Option<i64>,
}

impl Reading {
    /// An empty reading for `dataset` received at `received_at`, timestamp not yet known.
    pub fn empty(field_count: usize, received_at: Micros) -> Reading {
        Reading {
            sensor_id: CompactString::default(),
            ts: received_at,
            ts_missing: true,
            received_at,
            values: smallvec::smallvec![None; field_count],
            lat: None,
            lon: None,
            seq: None,
        }
    }

    /// A rough in-memory size, used by batchers to flush on bytes.
    pub fn approx_size(&self) -> usize {
        let strings: usize = self
            .values
            .iter()
            .map(|v| match v {
                Some(Value::Str(s)) if s.is_heap_allocated() => s.len(),
                _ => 0,
            })
            .sum();
        let spilled = if self.values.spilled() {
            self.values.capacity() * std::mem::size_of::<Option<Value>>()
        } else {
            0
        };
        std::mem::size_of::<Reading>() + strings + spilled
    }
}

/// The type of a schema field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    Float,
    Int,
    Bool,
    String,
}

impl FieldType {
    pub fn name(self) -> &'static str {
        match self {
            FieldType::Float => "float",
            FieldType::Int => "int",
            FieldType::Bool => "bool",
            FieldType::String => "string",
        }
    }

    pub fn is_numeric(self) -> bool {
        matches!(self, FieldType::Float | FieldType::Int)
    }
}

/// Default longest string value, in bytes.
pub const DEFAULT_MAX_STRING_LEN: usize = 256;

/// One field of a dataset schema, as declared in config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FieldSpec {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: FieldType,
    /// Unit, written as SenML / UCUM units (`Cel`, `%RH`, `km/h`, `kWh`, `ug/m3`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    #[serde(default)]
    pub required: bool,
    /// Longest accepted string, in bytes (string fields only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_length: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl FieldSpec {
    pub fn max_string_len(&self) -> usize {
        self.max_length.unwrap_or(DEFAULT_MAX_STRING_LEN)
    }
}

/// Readings per second and burst allowed to one device key on one dataset.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: u32,
}

/// A dataset as the running gateway knows it: catalog facts plus the schema that
/// decoding and validation follow. Built from `config::DatasetConfig`.
#[derive(Clone, Debug)]
pub struct Dataset {
    pub id: String,
    pub title: String,
    pub description: String,
    pub publisher: String,
    /// The account that owns the dataset and may mint device keys for it.
    pub provider: String,
    pub licence: String,
    pub attribution: String,
    pub schema_version: u32,
    pub fields: Vec<FieldSpec>,
    pub reject_unknown_fields: bool,
    pub max_future: Duration,
    pub max_age: Duration,
    pub rate_limit: RateLimit,
}

impl Dataset {
    /// The schema position of field `name`. Schemas are short, so a scan beats hashing.
    #[inline]
    pub fn field_index(&self, name: &str) -> Option<usize> {
        self.fields.iter().position(|f| f.name == name)
    }
}

/// Whether `id` is a valid sensor id: `[A-Za-z0-9._-]{1,64}`.
#[inline]
pub fn is_valid_sensor_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_SENSOR_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Whether `id` is a valid dataset id: `[a-z0-9-]{1,64}`, not starting with `-`.
/// Dataset ids appear in URLs, MQTT topics and directory names, so they stay plain.
pub fn is_valid_dataset_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && !id.starts_with('-')
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Whether `name` is a valid field name: `[a-z][a-z0-9_]{0,63}`, usable as a Parquet
/// column, an Influx field key and a JSON key without quoting trouble.
pub fn is_valid_field_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z'))
        && name.len() <= 64
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Now, in microseconds since the epoch.
pub fn now_micros() -> Micros {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.as_micros()).unwrap_or(i64::MAX)
}

/// Why a reading was rejected. `code()` is the stable, machine-readable name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The reading's own syntax is broken (an NDJSON line, a line-protocol line).
    Malformed,
    /// An element of a JSON array is not an object.
    NotAnObject,
    MissingSensorId,
    InvalidSensorId,
    InvalidTimestamp,
    TimestampInFuture,
    TimestampTooOld,
    UnknownField,
    DuplicateField,
    MissingField,
    WrongType,
    /// NaN or infinity.
    NotFinite,
    BelowMin,
    AboveMax,
    StringTooLong,
    /// A string value holds a control character (a newline, say): stores downstream read
    /// those as structure (line protocol, CSV).
    ControlCharacter,
    InvalidLocation,
    InvalidSeq,
    UnitMismatch,
    /// The reading carries no schema field at all.
    NoFields,
    /// A construct we do not store (SenML data values, sums, must-understand labels).
    Unsupported,
    /// Accepted, but a downstream store (InfluxDB) refused it as invalid.
    StoreRejected,
}

impl Reason {
    pub const ALL: [Reason; 22] = [
        Reason::Malformed,
        Reason::NotAnObject,
        Reason::MissingSensorId,
        Reason::InvalidSensorId,
        Reason::InvalidTimestamp,
        Reason::TimestampInFuture,
        Reason::TimestampTooOld,
        Reason::UnknownField,
        Reason::DuplicateField,
        Reason::MissingField,
        Reason::WrongType,
        Reason::NotFinite,
        Reason::BelowMin,
        Reason::AboveMax,
        Reason::StringTooLong,
        Reason::ControlCharacter,
        Reason::InvalidLocation,
        Reason::InvalidSeq,
        Reason::UnitMismatch,
        Reason::NoFields,
        Reason::Unsupported,
        Reason::StoreRejected,
    ];

    /// This reason's place in [`Reason::ALL`] (its declaration order), for tables by reason.
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn code(self) -> &'static str {
        match self {
            Reason::Malformed => "malformed",
            Reason::NotAnObject => "not_an_object",
            Reason::MissingSensorId => "missing_sensor_id",
            Reason::InvalidSensorId => "invalid_sensor_id",
            Reason::InvalidTimestamp => "invalid_timestamp",
            Reason::TimestampInFuture => "timestamp_in_future",
            Reason::TimestampTooOld => "timestamp_too_old",
            Reason::UnknownField => "unknown_field",
            Reason::DuplicateField => "duplicate_field",
            Reason::MissingField => "missing_field",
            Reason::WrongType => "wrong_type",
            Reason::NotFinite => "not_finite",
            Reason::BelowMin => "below_min",
            Reason::AboveMax => "above_max",
            Reason::StringTooLong => "string_too_long",
            Reason::ControlCharacter => "control_character",
            Reason::InvalidLocation => "invalid_location",
            Reason::InvalidSeq => "invalid_seq",
            Reason::UnitMismatch => "unit_mismatch",
            Reason::NoFields => "no_fields",
            Reason::Unsupported => "unsupported",
            Reason::StoreRejected => "store_rejected",
        }
    }
}

/// At most `max` bytes of `s`, cut at a character boundary: keeps echoed input short.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sensor_ids() {
        assert!(is_valid_sensor_id("tc-001"));
        assert!(is_valid_sensor_id("A.b_c-9"));
        assert!(is_valid_sensor_id(&"x".repeat(64)));
        assert!(!is_valid_sensor_id(&"x".repeat(65)));
        assert!(!is_valid_sensor_id(""));
        assert!(!is_valid_sensor_id("a b"));
        assert!(!is_valid_sensor_id("a/b"));
        assert!(!is_valid_sensor_id("æ"));
    }

    #[test]
    fn dataset_ids_and_field_names() {
        assert!(is_valid_dataset_id("air-quality"));
        assert!(!is_valid_dataset_id("Air"));
        assert!(!is_valid_dataset_id("-x"));
        assert!(!is_valid_dataset_id("a/b"));
        assert!(is_valid_field_name("pm2_5"));
        assert!(!is_valid_field_name("2pm"));
        assert!(!is_valid_field_name("PM"));
        assert!(!is_valid_field_name(""));
    }
}
