//! SenML JSON (RFC 8428), as LwM2M devices and many field gateways send it.
//!
//! ```json
//! [{"bn": "wx-0042:", "bt": 1795680900, "bu": "Cel", "n": "temperature", "v": 3.5},
//!  {"n": "humidity", "u": "%RH", "v": 81}]
//! ```
//!
//! Base fields carry forward (`bn`, `bt`, `bu`, `bv`); a record's name is `n`, its time
//! `bt + t` in seconds (below 2^28 relative to now, per the RFC), its unit `u` or `bu`, its
//! value `bv + v`, or `vs` / `vb`. The **sensor id is the base name** with one trailing `:` or
//! `/` removed; `n` is the schema field. Consecutive records of one sensor and time form one
//! reading. A unit that contradicts the schema's unit is rejected (`unit_mismatch`).
//! Data values (`vd`), sums (`s`) and must-understand labels (ending in `_`) are `unsupported`.

use std::fmt;

use compact_str::CompactString;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::{Builder, Collect, DecodeCtx, DecodeError, Scalar, truncate};
use crate::model::{Dataset, Micros};
use crate::pipeline::reject::{Reason, Reject};

/// Times below this are relative to now (RFC 8428 §4.5.3).
const RELATIVE_TIME_LIMIT: f64 = (1u64 << 28) as f64;

pub(super) fn decode_senml<C: Collect>(
    body: &[u8],
    ds: &Dataset,
    ctx: &DecodeCtx,
    out: &mut C,
) -> Result<(), DecodeError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    de.deserialize_any(PackVisitor { ds, ctx, out })
        .and_then(|()| de.end())
        .map_err(|e| DecodeError(format!("invalid SenML: {e}")))
}

/// One SenML record as written, before base values are applied. One `Record` is reused for
/// every record of a pack, filled in place.
#[derive(Default, Debug)]
struct Record {
    bn: Option<CompactString>,
    bt: Option<f64>,
    bu: Option<CompactString>,
    bv: Option<f64>,
    /// `n`, already looked up in the schema.
    n: Option<Name>,
    u: Option<CompactString>,
    v: Option<Scalar>,
    vs: Option<CompactString>,
    vb: Option<bool>,
    vd: bool,
    s: bool,
    t: Option<f64>,
    problem: Option<Reject>,
}

/// A record name resolved against the schema.
#[derive(Debug)]
enum Name {
    Field(usize),
    Unknown(CompactString),
    /// `n` held something other than a string (what it held).
    NotText(&'static str),
}

impl Record {
    /// Ready for the next record. Only what a record sets is reset: the rest is taken out
    /// (`take`) as the record is applied.
    fn clear(&mut self) {
        self.bt = None;
        self.bv = None;
        self.u = None;
        self.vb = None;
        self.vd = false;
        self.s = false;
        self.t = None;
        self.n = None;
        self.v = None;
        self.vs = None;
        self.problem = None;
        self.bn = None;
        self.bu = None;
    }

    fn fail(&mut self, reason: Reason, message: String) {
        if self.problem.is_none() {
            self.problem = Some(Reject::new(reason, message));
        }
    }
}

/// The base values in force at a record (RFC 8428 §4.1: they apply to every later record
/// until changed).
#[derive(Default)]
struct Base {
    /// The sensor id: the base name without its trailing separator.
    sensor: Option<CompactString>,
    time: Option<f64>,
    unit: Option<CompactString>,
    value: Option<f64>,
}

impl Base {
    /// Takes the base fields of `rec` into force.
    fn update(&mut self, rec: &mut Record) {
        if let Some(bn) = rec.bn.take() {
            self.sensor = Some(CompactString::new(
                bn.strip_suffix([':', '/']).unwrap_or(&bn),
            ));
        }
        if rec.bt.is_some() {
            self.time = rec.bt;
        }
        if let Some(bu) = rec.bu.take() {
            self.unit = Some(bu);
        }
        if rec.bv.is_some() {
            self.value = rec.bv;
        }
    }

    /// The record's time in µs: `None` when neither `bt` nor `t` was ever given.
    fn time_of(&self, rec: &mut Record, ctx: &DecodeCtx) -> Option<Micros> {
        if self.time.is_none() && rec.t.is_none() {
            return None;
        }
        let total = self.time.unwrap_or(0.0) + rec.t.unwrap_or(0.0);
        let micros = if total < RELATIVE_TIME_LIMIT {
            ctx.received_at as f64 + total * 1e6
        } else {
            total * 1e6
        };
        if micros.is_finite() && micros.abs() < 9.2e18 {
            Some(micros.round() as i64)
        } else {
            rec.fail(
                Reason::InvalidTimestamp,
                format!("time {total} is out of range"),
            );
            None
        }
    }
}

/// The reading being assembled from consecutive records of one sensor and time.
struct Group<'a, C: Collect> {
    first_record: u32,
    sensor: Option<CompactString>,
    ts: Option<Micros>,
    builder: Builder<'a, C>,
}

impl<'a, C: Collect> Group<'a, C> {
    fn start(
        ds: &'a Dataset,
        ctx: &'a DecodeCtx,
        out: &'a mut C,
        first_record: u32,
        sensor: Option<CompactString>,
        ts: Option<Micros>,
    ) -> Group<'a, C> {
        let mut builder = Builder::new(ds, ctx, out);
        if let Some(id) = &sensor {
            builder.set_sensor_str(id);
        }
        if let Some(ts) = ts {
            builder.set_ts_micros(ts);
        }
        Group {
            first_record,
            sensor,
            ts,
            builder,
        }
    }

    /// Finishes the reading and hands the collector back for the next one.
    fn close(mut self) -> &'a mut C {
        if self.sensor.is_none() {
            // After the records, so a record's own problem (not an object, say) comes first.
            self.builder.fail(Reason::MissingSensorId, || {
                "no base name `bn`: the base name is the sensor id".into()
            });
        }
        self.builder.finish(self.first_record)
    }
}

/// Adds one record's field to the reading, with the base unit and value in force.
fn apply_record<C: Collect>(
    b: &mut Builder<'_, C>,
    rec: &mut Record,
    base_unit: Option<&str>,
    base_value: Option<f64>,
    ds: &Dataset,
) {
    if let Some(problem) = rec.problem.take() {
        return b.fail(problem.reason, || problem.message);
    }
    let index = match rec.n.take() {
        Some(Name::Field(index)) => index,
        Some(Name::Unknown(name)) if !name.is_empty() => return b.unknown_field(&name),
        Some(Name::NotText(got)) => {
            return b.fail(Reason::WrongType, || {
                format!("SenML `n` must be a string, got {got}")
            });
        }
        _ => return b.fail(Reason::Malformed, || "record has no name `n`".into()),
    };
    let spec = &ds.fields[index];
    let name = &spec.name;
    if let (Some(expected), Some(unit)) = (spec.unit.as_deref(), rec.u.as_deref().or(base_unit))
        && expected != unit
    {
        return b.fail(Reason::UnitMismatch, || {
            format!(
                "field `{name}` is in `{expected}`, got `{}`",
                truncate(unit, 32)
            )
        });
    }
    let values = rec.v.is_some() as u8 + rec.vs.is_some() as u8 + rec.vb.is_some() as u8;
    if values > 1 {
        return b.fail(Reason::Malformed, || {
            format!("record `{name}` has more than one value")
        });
    }
    let value = if let Some(v) = rec.v.take() {
        match (base_value, v) {
            (None, v) => v,
            (Some(bv), v) => Scalar::Float(bv + v.as_f64().unwrap_or(f64::NAN)),
        }
    } else if let Some(vs) = rec.vs.take() {
        Scalar::Str(vs)
    } else if let Some(vb) = rec.vb {
        Scalar::Bool(vb)
    } else if rec.vd || rec.s {
        let what = if rec.vd {
            "data values (`vd`)"
        } else {
            "sums (`s`)"
        };
        return b.fail(Reason::Unsupported, || format!("{what} are not stored"));
    } else {
        return b.fail(Reason::Malformed, || {
            format!("record `{name}` has no value")
        });
    };
    b.set_field(index, value);
}

/// The SenML pack: an array of records, resolved and grouped into readings as they stream
/// by (no intermediate list of records).
struct PackVisitor<'a, C: Collect> {
    ds: &'a Dataset,
    ctx: &'a DecodeCtx,
    out: &'a mut C,
}

impl<'de, 'a, C: Collect> Visitor<'de> for PackVisitor<'a, C> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a SenML pack (a JSON array of records)")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let PackVisitor { ds, ctx, out } = self;
        let mut base = Base::default();
        // The collector is owned by the open group's builder, or idle here between groups.
        let mut idle: Option<&'a mut C> = Some(out);
        let mut group: Option<Group<'a, C>> = None;
        let mut index = 0u32;
        let mut rec = Record::default();
        while seq
            .next_element_seed(RecordSeed { rec: &mut rec, ds })?
            .is_some()
        {
            base.update(&mut rec);
            let ts = base.time_of(&mut rec, ctx);
            let same = group
                .as_ref()
                .is_some_and(|g| g.sensor == base.sensor && g.ts == ts);
            if !same {
                let out = match group.take() {
                    Some(done) => done.close(),
                    None => idle.take().expect("the collector is idle without a group"),
                };
                if out.full() {
                    return Ok(());
                }
                group = Some(Group::start(ds, ctx, out, index, base.sensor.clone(), ts));
            }
            if let Some(g) = group.as_mut() {
                apply_record(
                    &mut g.builder,
                    &mut rec,
                    base.unit.as_deref(),
                    base.value,
                    ds,
                );
            }
            rec.clear();
            index = index.saturating_add(1);
        }
        if let Some(done) = group {
            done.close();
        }
        Ok(())
    }
}

/// Parses one record into `rec` (cleared by the caller).
struct RecordSeed<'r> {
    rec: &'r mut Record,
    ds: &'r Dataset,
}

impl<'de> DeserializeSeed<'de> for RecordSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl RecordSeed<'_> {
    fn not_a_record(self, kind: &str) {
        self.rec.fail(
            Reason::NotAnObject,
            format!("a SenML record must be a JSON object, got {kind}"),
        );
    }
}

impl<'de> Visitor<'de> for RecordSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a SenML record")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let rec = self.rec;
        while let Some(label) = map.next_key_seed(LabelSeed { rec: &mut *rec })? {
            match label {
                Label::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
                Label::Vd => {
                    map.next_value::<IgnoredAny>()?;
                    rec.vd = true;
                }
                Label::S => {
                    map.next_value::<IgnoredAny>()?;
                    rec.s = true;
                }
                Label::N => {
                    let name = map.next_value_seed(NameSeed { ds: self.ds })?;
                    if rec.n.is_some() {
                        rec.fail(Reason::DuplicateField, "`n` appears twice".into());
                    }
                    rec.n = Some(name);
                }
                label => map.next_value_seed(LabelValue {
                    rec: &mut *rec,
                    label,
                })?,
            }
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        self.not_a_record("an array");
        Ok(())
    }

    visit_scalars_as_kind!(not_a_record);

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.not_a_record("null");
        Ok(())
    }
}

/// The value of `n`, looked up in the schema as it is read (no copy of known names).
struct NameSeed<'r> {
    ds: &'r Dataset,
}

impl NameSeed<'_> {
    fn not_text(self, kind: &'static str) -> Name {
        Name::NotText(kind)
    }
}

impl<'de> DeserializeSeed<'de> for NameSeed<'_> {
    type Value = Name;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Name, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for NameSeed<'_> {
    type Value = Name;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a record name")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Name, E> {
        Ok(match self.ds.field_index(v) {
            Some(index) => Name::Field(index),
            None => Name::Unknown(truncate(v, 64).into()),
        })
    }

    visit_scalars_as_kind!(not_text, no_str);

    fn visit_unit<E: de::Error>(self) -> Result<Name, E> {
        Ok(Name::NotText("null"))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Name, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Name::NotText("an object"))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Name, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Name::NotText("an array"))
    }
}

/// The value of a label, stored into the record as it is read.
struct LabelValue<'r> {
    rec: &'r mut Record,
    label: Label,
}

impl<'de> DeserializeSeed<'de> for LabelValue<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for LabelValue<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a SenML value")
    }

    visit_values_into!(store);

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.store(Scalar::Str(v.into()));
        Ok(())
    }
}

impl LabelValue<'_> {
    #[inline]
    fn store(self, value: Scalar) {
        store(self.rec, self.label, value)
    }
}

/// Stores one labelled value, noting a wrong type or a repeated label.
#[inline]
fn store(rec: &mut Record, label: Label, value: Scalar) {
    fn wrong(rec: &mut Record, label: &str, want: &str, got: &Scalar) {
        rec.fail(
            Reason::WrongType,
            format!("SenML `{label}` must be {want}, got {}", got.describe()),
        );
    }
    fn number(rec: &mut Record, slot: fn(&mut Record) -> &mut Option<f64>, label: &str, v: Scalar) {
        match v.as_f64() {
            Some(f) if slot(rec).is_none() => *slot(rec) = Some(f),
            Some(_) => rec.fail(Reason::DuplicateField, format!("`{label}` appears twice")),
            None => wrong(rec, label, "a number", &v),
        }
    }
    fn text(
        rec: &mut Record,
        slot: fn(&mut Record) -> &mut Option<CompactString>,
        label: &str,
        v: Scalar,
    ) {
        match v {
            Scalar::Str(s) if slot(rec).is_none() => *slot(rec) = Some(s),
            Scalar::Str(_) => rec.fail(Reason::DuplicateField, format!("`{label}` appears twice")),
            other => wrong(rec, label, "a string", &other),
        }
    }
    match label {
        Label::Bn => text(rec, |r| &mut r.bn, "bn", value),
        Label::Bu => text(rec, |r| &mut r.bu, "bu", value),
        Label::U => text(rec, |r| &mut r.u, "u", value),
        Label::Vs => text(rec, |r| &mut r.vs, "vs", value),
        Label::Bt => number(rec, |r| &mut r.bt, "bt", value),
        Label::Bv => number(rec, |r| &mut r.bv, "bv", value),
        Label::T => number(rec, |r| &mut r.t, "t", value),
        Label::V => match value {
            Scalar::Int(_) | Scalar::UInt(_) | Scalar::Float(_) if rec.v.is_none() => {
                rec.v = Some(value)
            }
            Scalar::Int(_) | Scalar::UInt(_) | Scalar::Float(_) => {
                rec.fail(Reason::DuplicateField, "`v` appears twice".into())
            }
            other => wrong(rec, "v", "a number", &other),
        },
        Label::Vb => match value {
            Scalar::Bool(b) => rec.vb = Some(b),
            other => wrong(rec, "vb", "a boolean", &other),
        },
        Label::N | Label::Vd | Label::S | Label::Other => {}
    }
}

enum Label {
    Bn,
    Bt,
    Bu,
    Bv,
    N,
    U,
    V,
    Vs,
    Vb,
    Vd,
    S,
    T,
    /// Known labels we do not use (`bver`, `bs`, `ut`), extension labels, and must-understand
    /// labels (which have already failed the record).
    Other,
}

/// Reads a label; a must-understand label (ending in `_`) fails the record right away, so
/// `Label` stays one byte.
struct LabelSeed<'r> {
    rec: &'r mut Record,
}

impl<'de> DeserializeSeed<'de> for LabelSeed<'_> {
    type Value = Label;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Label, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for LabelSeed<'_> {
    type Value = Label;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a SenML label")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Label, E> {
        Ok(match v {
            "bn" => Label::Bn,
            "bt" => Label::Bt,
            "bu" => Label::Bu,
            "bv" => Label::Bv,
            "n" => Label::N,
            "u" => Label::U,
            "v" => Label::V,
            "vs" => Label::Vs,
            "vb" => Label::Vb,
            "vd" => Label::Vd,
            "s" => Label::S,
            "t" => Label::T,
            other if other.ends_with('_') => {
                self.rec.fail(
                    Reason::Unsupported,
                    format!(
                        "must-understand label `{}` is not supported",
                        truncate(other, 32)
                    ),
                );
                Label::Other
            }
            _ => Label::Other,
        })
    }
}
