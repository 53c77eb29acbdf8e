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

use super::{Builder, Collect, DecodeCtx, DecodeError, ENV_FIELDS, ENV_LAT, ENV_LON, Scalar};
use crate::model::Dataset;
use crate::pipeline::reject::{Reason, Reject};

pub(super) fn decode_json<C: Collect>(
    body: &[u8],
    ds: &Dataset,
    ctx: &DecodeCtx,
    out: &mut C,
) -> Result<(), DecodeError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let single = de
        .deserialize_any(TopVisitor { ds, ctx, out })
        .and_then(|single| de.end().map(|()| single))
        .map_err(|e| DecodeError(format!("invalid JSON: {e}")))?;
    if let Some(reading) = single {
        reading.finish(0);
    }
    Ok(())
}

pub(super) fn decode_ndjson<C: Collect>(
    body: &[u8],
    ds: &Dataset,
    ctx: &DecodeCtx,
    out: &mut C,
) -> Result<(), DecodeError> {
    for (index, line) in body.split(|&b| b == b'\n').enumerate() {
        let line = line.trim_ascii();
        if line.is_empty() {
            continue;
        }
        if out.full() {
            break;
        }
        let index = u32::try_from(index).unwrap_or(u32::MAX);
        let mut de = serde_json::Deserializer::from_slice(line);
        let seed = ReadingSeed {
            ds,
            ctx,
            out: &mut *out,
            index,
        };
        // The reading is finished only once the whole line has parsed.
        let problem = match de.deserialize_any(seed).and_then(|r| de.end().map(|()| r)) {
            Ok(Some(reading)) => {
                reading.finish(index);
                continue;
            }
            Ok(None) => continue,
            Err(e) => Reject::new(Reason::Malformed, format!("invalid JSON: {e}")),
        };
        out.reject(index, problem, None);
    }
    Ok(())
}

/// The top of a JSON body: one reading object (returned unfinished, so it is only kept if
/// nothing follows it), or an array of them (each finished as it completes).
struct TopVisitor<'a, C: Collect> {
    ds: &'a Dataset,
    ctx: &'a DecodeCtx,
    out: &'a mut C,
}

impl<'de, 'a, C: Collect> Visitor<'de> for TopVisitor<'a, C> {
    type Value = Option<Builder<'a, C>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a reading object or an array of reading objects")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        read_reading(map, self.ds, self.ctx, self.out).map(Some)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut index = 0u32;
        loop {
            if self.out.full() {
                // Stop reading; serde reports the unread rest, which the caller ignores.
                return Ok(None);
            }
            let seed = ReadingSeed {
                ds: self.ds,
                ctx: self.ctx,
                out: &mut *self.out,
                index,
            };
            match seq.next_element_seed(seed)? {
                None => return Ok(None),
                Some(Some(reading)) => {
                    reading.finish(index);
                }
                Some(None) => {}
            }
            index = index.saturating_add(1);
        }
    }
}

/// One array element or NDJSON line: a reading under construction if it is an object;
/// anything else is rejected as reading `index` right here (`None`).
struct ReadingSeed<'a, C: Collect> {
    ds: &'a Dataset,
    ctx: &'a DecodeCtx,
    out: &'a mut C,
    index: u32,
}

type Element<'a, C> = Option<Builder<'a, C>>;

impl<'de, 'a, C: Collect> DeserializeSeed<'de> for ReadingSeed<'a, C> {
    type Value = Element<'a, C>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<C: Collect> ReadingSeed<'_, C> {
    fn not_an_object<'x>(self, kind: &str) -> Element<'x, C> {
        let problem = Reject::new(
            Reason::NotAnObject,
            format!("a reading must be a JSON object, got {kind}"),
        );
        self.out.reject(self.index, problem, None);
        None
    }
}

impl<'de, 'a, C: Collect> Visitor<'de> for ReadingSeed<'a, C> {
    type Value = Element<'a, C>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a reading object")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        read_reading(map, self.ds, self.ctx, self.out).map(Some)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(self.not_an_object("an array"))
    }

    visit_scalars_as_kind!(not_an_object);

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(self.not_an_object("null"))
    }
}

/// A key of a reading object. Unknown keys are reported to the builder by [`KeySeed`]
/// itself, so a `Key` is small and never carries a name.
#[derive(Clone, Copy)]
enum Key {
    Envelope(Target),
    Fields,
    Unknown,
}

/// Where a value goes in the reading.
#[derive(Clone, Copy)]
enum Target {
    Sensor,
    Ts,
    Lat,
    Lon,
    Seq,
    Field(usize),
}

/// Resolves keys against the envelope names, then the schema.
struct KeySeed<'b, 'a, C: Collect> {
    b: &'b mut Builder<'a, C>,
    /// Inside `fields`: only schema names count.
    fields_only: bool,
}

impl<'de, C: Collect> DeserializeSeed<'de> for KeySeed<'_, '_, C> {
    type Value = Key;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Key, D::Error> {
        d.deserialize_str(self)
    }
}

impl<C: Collect> Visitor<'_> for KeySeed<'_, '_, C> {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Key, E> {
        if !self.fields_only {
            let target = match key {
                "sensor_id" | "sensor" => Some(Target::Sensor),
                "ts" | "time" | "timestamp" => Some(Target::Ts),
                "lat" => Some(Target::Lat),
                "lon" => Some(Target::Lon),
                "seq" => Some(Target::Seq),
                "fields" => return Ok(Key::Fields),
                _ => None,
            };
            if let Some(target) = target {
                return Ok(Key::Envelope(target));
            }
        }
        Ok(match self.b.dataset().field_index(key) {
            Some(i) => Key::Envelope(Target::Field(i)),
            None => {
                self.b.unknown_field(key);
                Key::Unknown
            }
        })
    }
}

/// A value, delivered straight to its place in the reading: strings are read borrowed
/// (a timestamp is parsed where it lies), numbers never go through memory.
struct ValueSeed<'b, 'a, C: Collect> {
    b: &'b mut Builder<'a, C>,
    target: Target,
}

impl<C: Collect> ValueSeed<'_, '_, C> {
    #[inline]
    fn apply(self, value: Scalar) {
        match self.target {
            Target::Sensor => self.b.set_sensor(value),
            Target::Ts => self.b.set_ts(value),
            Target::Lat => self.b.set_location(ENV_LAT, "lat", value),
            Target::Lon => self.b.set_location(ENV_LON, "lon", value),
            Target::Seq => self.b.set_seq(value),
            Target::Field(i) => self.b.set_field(i, value),
        }
    }
}

impl<'de, C: Collect> DeserializeSeed<'de> for ValueSeed<'_, '_, C> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, C: Collect> Visitor<'de> for ValueSeed<'_, '_, C> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a value")
    }

    visit_values_into!(apply);

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        match self.target {
            Target::Sensor => self.b.set_sensor_str(v),
            Target::Ts => self.b.set_ts_str(v),
            _ => self.apply(Scalar::Str(v.into())),
        }
        Ok(())
    }
}

/// Reads a reading object into a new builder, left unfinished for the caller.
fn read_reading<'de, 'a, A: MapAccess<'de>, C: Collect>(
    mut map: A,
    ds: &'a Dataset,
    ctx: &'a DecodeCtx,
    out: &'a mut C,
) -> Result<Builder<'a, C>, A::Error> {
    let mut b = Builder::new(ds, ctx, out);
    loop {
        let keys = KeySeed {
            b: &mut b,
            fields_only: false,
        };
        match map.next_key_seed(keys)? {
            None => return Ok(b),
            Some(Key::Envelope(target)) => map.next_value_seed(ValueSeed { b: &mut b, target })?,
            Some(Key::Fields) => map.next_value_seed(FieldsSeed { b: &mut b })?,
            Some(Key::Unknown) => {
                map.next_value::<IgnoredAny>()?;
            }
        }
    }
}

/// The `fields` object of a reading.
struct FieldsSeed<'b, 'a, C: Collect> {
    b: &'b mut Builder<'a, C>,
}

impl<'de, C: Collect> DeserializeSeed<'de> for FieldsSeed<'_, '_, C> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, C: Collect> Visitor<'de> for FieldsSeed<'_, '_, C> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object of fields")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        if !self.b.envelope_once(ENV_FIELDS, "fields") {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            return Ok(());
        }
        loop {
            let keys = KeySeed {
                b: &mut *self.b,
                fields_only: true,
            };
            match map.next_key_seed(keys)? {
                None => return Ok(()),
                Some(Key::Envelope(target)) => map.next_value_seed(ValueSeed {
                    b: &mut *self.b,
                    target,
                })?,
                Some(_) => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        self.fields_not_object("an array");
        Ok(())
    }

    visit_scalars_as_kind!(fields_not_object);
}

impl<C: Collect> FieldsSeed<'_, '_, C> {
    fn fields_not_object(self, kind: &str) {
        self.b.fail(Reason::WrongType, || {
            format!("`fields` must be an object, got {kind}")
        });
    }
}
