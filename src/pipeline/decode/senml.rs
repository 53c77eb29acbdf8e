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

use super::{Builder, DecodeCtx, DecodeError, Scalar, truncate};
use crate::model::{Dataset, Micros, Reading};
use crate::pipeline::reject::{Reason, Reject};

/// Times below this are relative to now (RFC 8428 §4.5.3).
const RELATIVE_TIME_LIMIT: f64 = (1u64 << 28) as f64;

pub(super) fn decode_senml<F>(
    body: &[u8],
    ds: &Dataset,
    ctx: &DecodeCtx,
    out: &mut F,
) -> Result<(), DecodeError>
where
    F: FnMut(u32, Result<Reading, Reject>),
{
    let mut de = serde_json::Deserializer::from_slice(body);
    let records = de
        .deserialize_any(PackVisitor)
        .and_then(|records| de.end().map(|()| records))
        .map_err(|e| DecodeError(format!("invalid SenML: {e}")))?;
    resolve(records, ds, ctx, out);
    Ok(())
}

/// One SenML record as written, before base values are applied.
#[derive(Default, Debug)]
struct Record {
    bn: Option<CompactString>,
    bt: Option<f64>,
    bu: Option<CompactString>,
    bv: Option<f64>,
    n: Option<CompactString>,
    u: Option<CompactString>,
    v: Option<Scalar>,
    vs: Option<CompactString>,
    vb: Option<bool>,
    vd: bool,
    s: bool,
    t: Option<f64>,
    problem: Option<Reject>,
}

impl Record {
    fn fail(&mut self, reason: Reason, message: String) {
        if self.problem.is_none() {
            self.problem = Some(Reject::new(reason, message));
        }
    }
}

/// The reading being assembled from consecutive records.
struct Group<'a> {
    first_record: u32,
    sensor: Option<CompactString>,
    ts: Option<Micros>,
    builder: Builder<'a>,
}

fn resolve<'a, F>(records: Vec<Record>, ds: &'a Dataset, ctx: &'a DecodeCtx, out: &mut F)
where
    F: FnMut(u32, Result<Reading, Reject>),
{
    let mut base_name: Option<CompactString> = None;
    let mut base_time: Option<f64> = None;
    let mut base_unit: Option<CompactString> = None;
    let mut base_value: Option<f64> = None;
    let mut group: Option<Group<'a>> = None;

    for (index, mut rec) in records.into_iter().enumerate() {
        let index = u32::try_from(index).unwrap_or(u32::MAX);
        if let Some(bn) = rec.bn.take() {
            base_name = Some(bn);
        }
        if rec.bt.is_some() {
            base_time = rec.bt;
        }
        if let Some(bu) = rec.bu.take() {
            base_unit = Some(bu);
        }
        if rec.bv.is_some() {
            base_value = rec.bv;
        }

        let sensor = base_name
            .as_deref()
            .map(|n| CompactString::new(n.strip_suffix([':', '/']).unwrap_or(n)));
        let ts = match (base_time, rec.t) {
            (None, None) => None,
            (bt, t) => {
                let total = bt.unwrap_or(0.0) + t.unwrap_or(0.0);
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
        };

        let same = group
            .as_ref()
            .is_some_and(|g| g.sensor == sensor && g.ts == ts);
        if !same {
            if let Some(done) = group.take() {
                out(done.first_record, done.builder.finish());
            }
            let mut builder = Builder::new(ds, ctx);
            if let Some(id) = &sensor {
                builder.set_sensor_str(id);
            }
            if let Some(ts) = ts {
                builder.set_ts_micros(ts);
            }
            group = Some(Group {
                first_record: index,
                sensor,
                ts,
                builder,
            });
        }
        let Some(g) = group.as_mut() else { continue };
        apply_record(&mut g.builder, rec, base_unit.as_deref(), base_value, ds);
        if g.sensor.is_none() {
            // After the record, so a record's own problem (not an object, say) comes first.
            g.builder.fail(Reason::MissingSensorId, || {
                "no base name `bn`: the base name is the sensor id".into()
            });
        }
    }
    if let Some(done) = group {
        out(done.first_record, done.builder.finish());
    }
}

fn apply_record(
    b: &mut Builder<'_>,
    rec: Record,
    base_unit: Option<&str>,
    base_value: Option<f64>,
    ds: &Dataset,
) {
    if let Some(problem) = rec.problem {
        return b.fail(problem.reason, || problem.message);
    }
    let Some(name) = rec.n.filter(|n| !n.is_empty()) else {
        return b.fail(Reason::Malformed, || "record has no name `n`".into());
    };
    let Some(index) = ds.field_index(&name) else {
        return b.unknown_field(&name);
    };
    let spec = &ds.fields[index];
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
    let value = if let Some(v) = rec.v {
        match (base_value, v) {
            (None, v) => v,
            (Some(bv), v) => Scalar::Float(bv + v.as_f64().unwrap_or(f64::NAN)),
        }
    } else if let Some(vs) = rec.vs {
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

/// The SenML pack: an array of records.
struct PackVisitor;

impl<'de> Visitor<'de> for PackVisitor {
    type Value = Vec<Record>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a SenML pack (a JSON array of records)")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Record>, A::Error> {
        let mut records = Vec::with_capacity(seq.size_hint().unwrap_or(16).min(4096));
        while let Some(record) = seq.next_element_seed(RecordSeed)? {
            records.push(record);
        }
        Ok(records)
    }
}

struct RecordSeed;

impl<'de> DeserializeSeed<'de> for RecordSeed {
    type Value = Record;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Record, D::Error> {
        d.deserialize_any(RecordVisitor)
    }
}

struct RecordVisitor;

fn not_a_record(kind: &str) -> Record {
    let mut rec = Record::default();
    rec.fail(
        Reason::NotAnObject,
        format!("a SenML record must be a JSON object, got {kind}"),
    );
    rec
}

impl<'de> Visitor<'de> for RecordVisitor {
    type Value = Record;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a SenML record")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Record, A::Error> {
        let mut rec = Record::default();
        while let Some(label) = map.next_key_seed(LabelSeed)? {
            match label {
                Label::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
                Label::MustUnderstand(name) => {
                    map.next_value::<IgnoredAny>()?;
                    rec.fail(
                        Reason::Unsupported,
                        format!("must-understand label `{name}` is not supported"),
                    );
                }
                Label::Vd => {
                    map.next_value::<IgnoredAny>()?;
                    rec.vd = true;
                }
                Label::S => {
                    map.next_value::<IgnoredAny>()?;
                    rec.s = true;
                }
                label => {
                    let value: Scalar = map.next_value()?;
                    store(&mut rec, label, value);
                }
            }
        }
        Ok(rec)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Record, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(not_a_record("an array"))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Record, E> {
        Ok(not_a_record("a boolean"))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Record, E> {
        Ok(not_a_record("a number"))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Record, E> {
        Ok(not_a_record("a number"))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Record, E> {
        Ok(not_a_record("a number"))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Record, E> {
        Ok(not_a_record("a string"))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Record, E> {
        Ok(not_a_record("null"))
    }
}

/// Stores one labelled value, noting a wrong type or a repeated label.
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
        Label::N => text(rec, |r| &mut r.n, "n", value),
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
        Label::Vd | Label::S | Label::Other | Label::MustUnderstand(_) => {}
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
    MustUnderstand(CompactString),
    /// Known labels we do not use (`bver`, `bs`, `ut`) and extension labels.
    Other,
}

struct LabelSeed;

impl<'de> DeserializeSeed<'de> for LabelSeed {
    type Value = Label;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Label, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for LabelSeed {
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
            other if other.ends_with('_') => Label::MustUnderstand(truncate(other, 32).into()),
            _ => Label::Other,
        })
    }
}
