//! JSON and NDJSON readings.
//!
//! A reading is an object with an envelope and schema fields, either nested under `fields`
//! or flat beside the envelope (schema names never collide with envelope names):
//!
//! ```json
//! {"sensor_id": "tc-0042", "ts": "2026-11-26T08:15:00Z", "lat": 55.68, "lon": 12.57,
//!  "seq": 17, "fields": {"vehicle_count": 31, "mean_speed": 42.5}}
//! {"sensor_id": "tc-0042", "ts": 1795680900000, "vehicle_count": 31}
//! ```
//!
//! `sensor` is accepted for `sensor_id`, `time` / `timestamp` for `ts`. Parsing is driven by
//! the schema through serde seeds, straight into typed slots: no `serde_json::Value`.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::{Builder, DecodeCtx, DecodeError, ENV_FIELDS, ENV_LAT, ENV_LON, Scalar, truncate};
use crate::model::{Dataset, Reading};
use crate::pipeline::reject::{Reason, Reject};

type Outcome = Result<Reading, Reject>;

pub(super) fn decode_json<F>(
    body: &[u8],
    ds: &Dataset,
    ctx: &DecodeCtx,
    out: &mut F,
) -> Result<(), DecodeError>
where
    F: FnMut(u32, Outcome),
{
    let mut de = serde_json::Deserializer::from_slice(body);
    de.deserialize_any(TopVisitor { ds, ctx, out })
        .and_then(|()| de.end())
        .map_err(|e| DecodeError(format!("invalid JSON: {e}")))
}

pub(super) fn decode_ndjson<F>(
    body: &[u8],
    ds: &Dataset,
    ctx: &DecodeCtx,
    out: &mut F,
) -> Result<(), DecodeError>
where
    F: FnMut(u32, Outcome),
{
    for (index, line) in body.split(|&b| b == b'\n').enumerate() {
        let line = line.trim_ascii();
        if line.is_empty() {
            continue;
        }
        let mut de = serde_json::Deserializer::from_slice(line);
        let outcome = de
            .deserialize_any(ReadingVisitor { ds, ctx })
            .and_then(|outcome| de.end().map(|()| outcome))
            .unwrap_or_else(|e| Err(Reject::new(Reason::Malformed, format!("invalid JSON: {e}"))));
        out(u32::try_from(index).unwrap_or(u32::MAX), outcome);
    }
    Ok(())
}

/// The top of a JSON body: one reading object, or an array of them.
struct TopVisitor<'a, F> {
    ds: &'a Dataset,
    ctx: &'a DecodeCtx,
    out: &'a mut F,
}

impl<'de, F: FnMut(u32, Outcome)> Visitor<'de> for TopVisitor<'_, F> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a reading object or an array of reading objects")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        let outcome = read_reading(map, self.ds, self.ctx)?;
        (self.out)(0, outcome);
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut index = 0u32;
        let seed = ReadingVisitor {
            ds: self.ds,
            ctx: self.ctx,
        };
        while let Some(outcome) = seq.next_element_seed(seed)? {
            (self.out)(index, outcome);
            index = index.saturating_add(1);
        }
        Ok(())
    }
}

/// One array element or NDJSON line: a reading if it is an object.
#[derive(Clone, Copy)]
struct ReadingVisitor<'a> {
    ds: &'a Dataset,
    ctx: &'a DecodeCtx,
}

impl<'de> DeserializeSeed<'de> for ReadingVisitor<'_> {
    type Value = Outcome;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Outcome, D::Error> {
        d.deserialize_any(self)
    }
}

fn not_an_object(kind: &str) -> Outcome {
    Err(Reject::new(
        Reason::NotAnObject,
        format!("a reading must be a JSON object, got {kind}"),
    ))
}

impl<'de> Visitor<'de> for ReadingVisitor<'_> {
    type Value = Outcome;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a reading object")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Outcome, A::Error> {
        read_reading(map, self.ds, self.ctx)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Outcome, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(not_an_object("an array"))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Outcome, E> {
        Ok(not_an_object("a boolean"))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Outcome, E> {
        Ok(not_an_object("a number"))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Outcome, E> {
        Ok(not_an_object("a number"))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Outcome, E> {
        Ok(not_an_object("a number"))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Outcome, E> {
        Ok(not_an_object("a string"))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Outcome, E> {
        Ok(not_an_object("null"))
    }
}

/// A key of a reading object.
enum Key {
    Sensor,
    Ts,
    Lat,
    Lon,
    Seq,
    Fields,
    Field(usize),
    Unknown(compact_str::CompactString),
}

/// Resolves keys against the envelope names, then the schema.
#[derive(Clone, Copy)]
struct KeySeed<'a> {
    ds: &'a Dataset,
    /// Inside `fields`: only schema names count.
    fields_only: bool,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Key;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Key, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for KeySeed<'_> {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Key, E> {
        if !self.fields_only {
            match key {
                "sensor_id" | "sensor" => return Ok(Key::Sensor),
                "ts" | "time" | "timestamp" => return Ok(Key::Ts),
                "lat" => return Ok(Key::Lat),
                "lon" => return Ok(Key::Lon),
                "seq" => return Ok(Key::Seq),
                "fields" => return Ok(Key::Fields),
                _ => {}
            }
        }
        Ok(match self.ds.field_index(key) {
            Some(i) => Key::Field(i),
            None => Key::Unknown(truncate(key, 64).into()),
        })
    }
}

fn read_reading<'de, A: MapAccess<'de>>(
    mut map: A,
    ds: &Dataset,
    ctx: &DecodeCtx,
) -> Result<Outcome, A::Error> {
    let mut b = Builder::new(ds, ctx);
    let keys = KeySeed {
        ds,
        fields_only: false,
    };
    while let Some(key) = map.next_key_seed(keys)? {
        match key {
            Key::Sensor => b.set_sensor(map.next_value()?),
            Key::Ts => b.set_ts(map.next_value()?),
            Key::Lat => b.set_location(ENV_LAT, "lat", map.next_value()?),
            Key::Lon => b.set_location(ENV_LON, "lon", map.next_value()?),
            Key::Seq => b.set_seq(map.next_value()?),
            Key::Fields => map.next_value_seed(FieldsSeed { b: &mut b })?,
            Key::Field(i) => b.set_field(i, map.next_value()?),
            Key::Unknown(name) => {
                map.next_value::<IgnoredAny>()?;
                b.unknown_field(&name);
            }
        }
    }
    Ok(b.finish())
}

/// The `fields` object of a reading.
struct FieldsSeed<'b, 'a> {
    b: &'b mut Builder<'a>,
}

impl<'de> DeserializeSeed<'de> for FieldsSeed<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for FieldsSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object of fields")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        if !self.b.envelope_once(ENV_FIELDS, "fields") {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            return Ok(());
        }
        let keys = KeySeed {
            ds: self.b.dataset(),
            fields_only: true,
        };
        while let Some(key) = map.next_key_seed(keys)? {
            match key {
                Key::Field(i) => self.b.set_field(i, map.next_value()?),
                Key::Unknown(name) => {
                    map.next_value::<IgnoredAny>()?;
                    self.b.unknown_field(&name);
                }
                _ => unreachable!("fields_only keys are fields or unknown"),
            }
        }
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        self.fields_not_object("an array");
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.fields_not_object("a boolean");
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.fields_not_object("a number");
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.fields_not_object("a number");
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.fields_not_object("a number");
        Ok(())
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        self.fields_not_object("a string");
        Ok(())
    }
}

impl FieldsSeed<'_, '_> {
    fn fields_not_object(self, kind: &str) {
        self.b.fail(Reason::WrongType, || {
            format!("`fields` must be an object, got {kind}")
        });
    }
}

impl<'de> de::Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Scalar, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
        Ok(Scalar::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
        Ok(Scalar::Int(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
        Ok(Scalar::UInt(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
        Ok(Scalar::Float(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
        Ok(Scalar::Str(v.into()))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Scalar, E> {
        Ok(Scalar::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Scalar, E> {
        Ok(Scalar::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Scalar, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scalar, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::Composite("an object"))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Scalar, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Scalar::Composite("an array"))
    }
}
