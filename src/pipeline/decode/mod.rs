//! Decode: request bytes to [`Reading`]s, following the dataset's schema.
//!
//! Four wire formats share one `Builder`, so a field means the same thing whichever way it
//! arrived. Decoding is a pure function. A body that cannot be parsed at all is a
//! [`DecodeError`] (HTTP 400); a reading that parses but does not fit the schema is handed
//! to `out` as a [`Reject`] and the rest of the body goes on.
//!
//! Type rules, the same for every format:
//! - `float` fields take any number; `int` fields take integers and integral floats up to
//!   2^53 (so `3.0` from a float-only client is fine, `3.5` is `wrong_type`);
//! - `bool` and `string` fields take only their own type; `null` means absent.

/// The non-null scalar `visit_*` methods of a serde visitor that does not take scalars where
/// it stands: each calls `self.$on(kind)` with a description of what came ("a boolean",
/// "a number", "a string") and returns its result. `no_str` leaves `visit_str` to the visitor.
macro_rules! visit_scalars_as_kind {
    ($on:ident) => {
        visit_scalars_as_kind!($on, no_str);
        fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Ok(self.$on("a string"))
        }
    };
    ($on:ident, no_str) => {
        fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok(self.$on("a boolean"))
        }
        fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok(self.$on("a number"))
        }
        fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok(self.$on("a number"))
        }
        fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok(self.$on("a number"))
        }
    };
}

/// The `visit_*` methods of a visitor that hands every value on as a [`Scalar`] to
/// `self.$apply(scalar)` (returning `()`), objects and arrays drained and described.
/// `visit_str` is left to the visitor: where a string lands decides whether it is copied.
macro_rules! visit_values_into {
    ($apply:ident) => {
        fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<(), E> {
            self.$apply(Scalar::Bool(v));
            Ok(())
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<(), E> {
            self.$apply(Scalar::Int(v));
            Ok(())
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<(), E> {
            self.$apply(Scalar::UInt(v));
            Ok(())
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
            self.$apply(Scalar::Float(v));
            Ok(())
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
            self.$apply(Scalar::Null);
            Ok(())
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while map
                .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                .is_some()
            {}
            self.$apply(Scalar::Composite("an object"));
            Ok(())
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
            self.$apply(Scalar::Composite("an array"));
            Ok(())
        }
    };
}

mod json;
mod line;
mod senml;
pub(crate) mod time;

use compact_str::CompactString;

use crate::model::{Dataset, FieldType, MAX_SENSOR_ID_LEN, Micros, Reading, Value};
use crate::pipeline::reject::{Reason, Reject};

pub use time::{Precision, parse_rfc3339};

/// The wire formats citygate reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// One JSON object or an array of them.
    Json,
    /// One JSON object per line.
    Ndjson,
    /// RFC 8428 SenML JSON.
    Senml,
    /// InfluxDB line protocol.
    LineProtocol,
}

impl Format {
    /// The epoch unit assumed when a request does not say (`?precision=`): InfluxDB's
    /// nanoseconds for line protocol, milliseconds for JSON (what JavaScript's `Date.now()`
    /// gives). SenML times are always seconds.
    pub fn default_precision(self) -> Precision {
        match self {
            Format::LineProtocol => Precision::Nanos,
            _ => Precision::Millis,
        }
    }
}

/// What the decoder needs besides the bytes.
#[derive(Clone, Debug)]
pub struct DecodeCtx {
    /// When the request arrived; the timestamp of readings that carry none.
    pub received_at: Micros,
    /// Unit of numeric timestamps.
    pub precision: Precision,
    /// The sensor id the transport already names (the MQTT topic
    /// `citygate/{dataset}/{sensor_id}`): readings without one get it, readings naming
    /// another are rejected.
    pub default_sensor: Option<CompactString>,
}

/// The body as a whole cannot be read.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{0}")]
pub struct DecodeError(pub String);

/// Where decoders put what they read. The reading under construction is always the last
/// of [`Collect::readings`], built in place: a reading is never moved while it is decoded.
pub trait Collect {
    /// The vector readings are built in.
    fn readings(&mut self) -> &mut Vec<Reading>;
    /// The last reading is complete and decoded cleanly. `index` is its position in the body.
    fn accept_last(&mut self, index: u32);
    /// Reading `index` could not be decoded. `partial` is what was read of it, if anything
    /// (it has already been removed from `readings()`).
    fn reject(&mut self, index: u32, problem: Reject, partial: Option<Reading>);
    /// The collector wants no more readings (a request may carry only so many): the decoder
    /// stops at the next reading boundary. What it returns then does not matter.
    fn full(&self) -> bool {
        false
    }
}

/// Decodes `body` as `format` into `out`, reading by reading in body order. `index` is the
/// reading's 0-based position: array element, NDJSON or line-protocol line, or first SenML
/// record of the reading. On `Err` the body as a whole is unreadable and whatever `out` holds
/// must be discarded.
pub fn decode<C: Collect>(
    format: Format,
    body: &[u8],
    ds: &Dataset,
    ctx: &DecodeCtx,
    out: &mut C,
) -> Result<(), DecodeError> {
    match format {
        Format::Json => json::decode_json(body, ds, ctx, out),
        Format::Ndjson => json::decode_ndjson(body, ds, ctx, out),
        Format::Senml => senml::decode_senml(body, ds, ctx, out),
        Format::LineProtocol => line::decode_line_protocol(body, ds, ctx, out),
    }
}

/// A value as the wire gave it, before the schema says what it must be.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Scalar {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(CompactString),
    /// An object or array where a scalar belongs; the name says which.
    Composite(&'static str),
}

impl Scalar {
    fn kind(&self) -> &'static str {
        match self {
            Scalar::Null => "null",
            Scalar::Bool(_) => "a boolean",
            Scalar::Int(_) | Scalar::UInt(_) => "an integer",
            Scalar::Float(_) => "a number",
            Scalar::Str(_) => "a string",
            Scalar::Composite(kind) => kind,
        }
    }

    /// The value as a message shows it: `"abc"`, `3.5`, `an object`.
    fn describe(&self) -> String {
        match self {
            Scalar::Str(s) => format!("\"{}\"", truncate(s, 32)),
            Scalar::Int(i) => i.to_string(),
            Scalar::UInt(u) => u.to_string(),
            Scalar::Float(f) => f.to_string(),
            Scalar::Bool(b) => b.to_string(),
            other => other.kind().to_string(),
        }
    }

    fn as_f64(&self) -> Option<f64> {
        match *self {
            Scalar::Int(i) => Some(i as f64),
            Scalar::UInt(u) => Some(u as f64),
            Scalar::Float(f) => Some(f),
            _ => None,
        }
    }
}

/// Largest integer a float carries exactly.
const MAX_EXACT_FLOAT_INT: f64 = 9_007_199_254_740_992.0;

/// Builds one reading in place, field by field, keeping the first problem. Every decoder
/// drives one. Dropped without [`Builder::finish`] (a syntax error mid-reading), it removes
/// its half-built reading.
pub(crate) struct Builder<'a, C: Collect> {
    ds: &'a Dataset,
    ctx: &'a DecodeCtx,
    /// Always `Some` until [`Builder::finish`] hands it back.
    out: Option<&'a mut C>,
    /// Schema fields already set (duplicate detection); schemas have at most 64 fields.
    seen_fields: u64,
    /// Envelope parts already set: sensor, ts, lat, lon, seq, fields object.
    seen_envelope: u8,
    problem: Option<Reject>,
}

pub(crate) const ENV_SENSOR: u8 = 1;
pub(crate) const ENV_TS: u8 = 2;
pub(crate) const ENV_LAT: u8 = 4;
pub(crate) const ENV_LON: u8 = 8;
pub(crate) const ENV_SEQ: u8 = 16;
pub(crate) const ENV_FIELDS: u8 = 32;

impl<C: Collect> Drop for Builder<'_, C> {
    fn drop(&mut self) {
        if let Some(out) = self.out.take() {
            out.readings().pop();
        }
    }
}

impl<'a, C: Collect> Builder<'a, C> {
    pub(crate) fn new(ds: &'a Dataset, ctx: &'a DecodeCtx, out: &'a mut C) -> Builder<'a, C> {
        let mut reading = Reading::empty(ds.fields.len(), ctx.received_at);
        if let Some(sensor) = &ctx.default_sensor {
            reading.sensor_id = sensor.clone();
        }
        out.readings().push(reading);
        Builder {
            ds,
            ctx,
            out: Some(out),
            seen_fields: 0,
            seen_envelope: 0,
            problem: None,
        }
    }

    /// The reading under construction.
    #[inline]
    fn reading(&mut self) -> &mut Reading {
        self.out
            .as_mut()
            .and_then(|out| out.readings().last_mut())
            .expect("Builder::new pushed the reading")
    }

    /// Records a problem; only the first one of a reading is reported.
    pub(crate) fn fail(&mut self, reason: Reason, message: impl FnOnce() -> String) {
        if self.problem.is_none() {
            self.problem = Some(Reject::new(reason, message()));
        }
    }

    /// Marks envelope part `bit` as seen; `false` (and a problem) if it was seen before.
    #[inline]
    pub(crate) fn envelope_once(&mut self, bit: u8, name: &str) -> bool {
        if self.seen_envelope & bit != 0 {
            self.fail(Reason::DuplicateField, || format!("`{name}` appears twice"));
            return false;
        }
        self.seen_envelope |= bit;
        true
    }

    #[inline]
    pub(crate) fn set_sensor_str(&mut self, id: &str) {
        if !self.envelope_once(ENV_SENSOR, "sensor_id") {
            return;
        }
        if id.len() > MAX_SENSOR_ID_LEN {
            // Checked here too so a huge id never gets copied.
            self.fail(Reason::InvalidSensorId, || {
                format!(
                    "sensor id is {} bytes, at most {MAX_SENSOR_ID_LEN}",
                    id.len()
                )
            });
            return;
        }
        if let Some(named) = &self.ctx.default_sensor {
            if named != id {
                self.fail(Reason::InvalidSensorId, || {
                    format!(
                        "sensor_id `{}` does not match the topic's `{named}`",
                        truncate(id, 64)
                    )
                });
            }
            return;
        }
        self.reading().sensor_id = CompactString::new(id);
    }

    #[inline]
    pub(crate) fn set_sensor(&mut self, value: Scalar) {
        match value {
            Scalar::Str(s) => self.set_sensor_str(&s),
            // Numeric ids are common on small devices; they are ids, not numbers.
            Scalar::UInt(u) => self.set_sensor_str(&u.to_string()),
            Scalar::Int(i) if i >= 0 => self.set_sensor_str(&i.to_string()),
            Scalar::Null => {}
            other => self.fail(Reason::InvalidSensorId, || {
                format!("sensor_id must be a string, got {}", other.kind())
            }),
        }
    }

    /// Sets the device timestamp in µs.
    #[inline]
    pub(crate) fn set_ts_micros(&mut self, ts: Micros) {
        if self.envelope_once(ENV_TS, "ts") {
            let reading = self.reading();
            reading.ts = ts;
            reading.ts_missing = false;
        }
    }

    /// Sets the device timestamp from an RFC 3339 string.
    #[inline]
    pub(crate) fn set_ts_str(&mut self, text: &str) {
        match parse_rfc3339(text) {
            Some(ts) => self.set_ts_micros(ts),
            None => self.fail(Reason::InvalidTimestamp, || {
                format!("`{}` is not an RFC 3339 timestamp", truncate(text, 64))
            }),
        }
    }

    pub(crate) fn set_ts(&mut self, value: Scalar) {
        let precision = self.ctx.precision;
        let ts = match &value {
            Scalar::Null => return,
            Scalar::Str(s) => parse_rfc3339(s),
            Scalar::Int(i) => precision.int_to_micros(*i),
            Scalar::UInt(u) => i64::try_from(*u)
                .ok()
                .and_then(|i| precision.int_to_micros(i)),
            Scalar::Float(f) => precision.float_to_micros(*f),
            _ => None,
        };
        match ts {
            Some(ts) => self.set_ts_micros(ts),
            None => self.fail(Reason::InvalidTimestamp, || match value {
                Scalar::Str(s) => format!("`{s}` is not an RFC 3339 timestamp"),
                Scalar::Bool(_) | Scalar::Composite(_) => format!(
                    "ts must be an RFC 3339 string or an epoch number, got {}",
                    value.kind()
                ),
                _ => format!("timestamp {} is out of range", value.describe()),
            }),
        }
    }

    #[inline]
    pub(crate) fn set_location(&mut self, bit: u8, name: &'static str, value: Scalar) {
        if !self.envelope_once(bit, name) {
            return;
        }
        let v = match value {
            Scalar::Null => return,
            ref v => match v.as_f64() {
                Some(f) => f,
                None => {
                    return self.fail(Reason::InvalidLocation, || {
                        format!("{name} must be a number, got {}", v.kind())
                    });
                }
            },
        };
        if bit == ENV_LAT {
            self.reading().lat = Some(v);
        } else {
            self.reading().lon = Some(v);
        }
    }

    #[inline]
    pub(crate) fn set_seq(&mut self, value: Scalar) {
        if !self.envelope_once(ENV_SEQ, "seq") {
            return;
        }
        let seq = match value {
            Scalar::Null => return,
            Scalar::Int(i) if i >= 0 => i,
            Scalar::UInt(u) if u <= i64::MAX as u64 => u as i64,
            Scalar::Float(f) if (0.0..=MAX_EXACT_FLOAT_INT).contains(&f) && f.fract() == 0.0 => {
                f as i64
            }
            other => {
                return self.fail(Reason::InvalidSeq, || {
                    format!(
                        "seq must be a non-negative integer, got {}",
                        other.describe()
                    )
                });
            }
        };
        self.reading().seq = Some(seq);
    }

    /// Sets schema field `index`, converting the wire value to the field's type.
    #[inline]
    pub(crate) fn set_field(&mut self, index: usize, value: Scalar) {
        let spec = &self.ds.fields[index];
        let bit = 1u64 << index;
        if self.seen_fields & bit != 0 {
            let name = &spec.name;
            return self.fail(Reason::DuplicateField, || {
                format!("field `{name}` appears twice")
            });
        }
        self.seen_fields |= bit;
        let typed = match (spec.ty, value) {
            (_, Scalar::Null) => return,
            (FieldType::Float, Scalar::Float(f)) => Value::Float(f),
            (FieldType::Float, Scalar::Int(i)) => Value::Float(i as f64),
            (FieldType::Float, Scalar::UInt(u)) => Value::Float(u as f64),
            (FieldType::Int, Scalar::Int(i)) => Value::Int(i),
            (FieldType::Int, Scalar::UInt(u)) if u <= i64::MAX as u64 => Value::Int(u as i64),
            (FieldType::Int, Scalar::Float(f))
                if f.fract() == 0.0 && f.abs() <= MAX_EXACT_FLOAT_INT =>
            {
                Value::Int(f as i64)
            }
            (FieldType::Bool, Scalar::Bool(b)) => Value::Bool(b),
            (FieldType::String, Scalar::Str(s)) => Value::Str(s),
            (ty, other) => {
                let name = &spec.name;
                return self.fail(Reason::WrongType, || {
                    format!(
                        "field `{name}` must be {}, got {}",
                        type_phrase(ty),
                        other.describe()
                    )
                });
            }
        };
        self.reading().values[index] = Some(typed);
    }

    /// A key that is neither envelope nor schema field.
    pub(crate) fn unknown_field(&mut self, name: &str) {
        if self.ds.reject_unknown_fields {
            self.fail(Reason::UnknownField, || {
                format!("unknown field `{}`", truncate(name, 64))
            });
        }
    }

    pub(crate) fn dataset(&self) -> &'a Dataset {
        self.ds
    }

    /// Hands the reading (or its problem) to the collector as reading `index`, and the
    /// collector back to the caller for the next reading.
    pub(crate) fn finish(mut self, index: u32) -> &'a mut C {
        let out = self.out.take().expect("finish is called once");
        match self.problem.take() {
            None => out.accept_last(index),
            Some(problem) => {
                let partial = out.readings().pop();
                out.reject(index, problem, partial);
            }
        }
        out
    }
}

fn type_phrase(ty: FieldType) -> &'static str {
    match ty {
        FieldType::Float => "a number",
        FieldType::Int => "an integer",
        FieldType::Bool => "a boolean",
        FieldType::String => "a string",
    }
}

pub(crate) use crate::model::truncate;

/// The essence of a media type (`application/json; charset=utf-8` → `application/json`),
/// lowercased: what HTTP and MQTT 5 content types are compared by.
pub fn media_essence(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

#[cfg(test)]
pub(crate) mod tests;
