//! Decoder tests: each format, base-field resolution, escaping, and round trips.

use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::model::{FieldSpec, RateLimit};

pub(crate) fn field(name: &str, ty: FieldType, unit: Option<&str>, required: bool) -> FieldSpec {
    FieldSpec {
        name: name.into(),
        ty,
        unit: unit.map(Into::into),
        min: None,
        max: None,
        required,
        max_length: None,
        description: None,
    }
}

fn dataset(id: &str, fields: Vec<FieldSpec>) -> Dataset {
    Dataset {
        id: id.into(),
        title: id.into(),
        description: String::new(),
        publisher: String::new(),
        provider: "city".into(),
        licence: "CC0-1.0".into(),
        attribution: String::new(),
        schema_version: 1,
        fields,
        reject_unknown_fields: true,
        max_future: Duration::from_secs(300),
        max_age: Duration::from_secs(7 * 86400),
        rate_limit: RateLimit {
            per_second: 100.0,
            burst: 100,
        },
    }
}

/// `traffic-counts` as shipped: vehicle_count int (required, 0..), mean_speed float 0..300.
pub(crate) fn traffic() -> Dataset {
    let mut count = field("vehicle_count", FieldType::Int, Some("count"), true);
    count.min = Some(0.0);
    let mut speed = field("mean_speed", FieldType::Float, Some("km/h"), false);
    speed.min = Some(0.0);
    speed.max = Some(300.0);
    dataset("traffic-counts", vec![count, speed])
}

/// `weather` as shipped (without bounds).
pub(crate) fn weather() -> Dataset {
    dataset(
        "weather",
        vec![
            field("temperature", FieldType::Float, Some("Cel"), true),
            field("humidity", FieldType::Float, Some("%RH"), false),
            field("wind_speed", FieldType::Float, Some("m/s"), false),
            field("precipitation", FieldType::Float, Some("mm"), false),
        ],
    )
}

/// A dataset with one field of every type.
fn mixed() -> Dataset {
    dataset(
        "mixed",
        vec![
            field("f", FieldType::Float, None, false),
            field("i", FieldType::Int, None, false),
            field("b", FieldType::Bool, None, false),
            field("s", FieldType::String, None, false),
        ],
    )
}

/// A reading of `ds` from sensor `s1` at `ts`, shaped by `f`.
pub(crate) fn reading(ds: &Dataset, ts: Micros, f: impl FnOnce(&mut Reading)) -> Reading {
    let mut r = Reading::empty(ds.fields.len(), ts);
    r.sensor_id = "s1".into();
    r.ts_missing = false;
    f(&mut r);
    r
}

const RECV: Micros = 1_795_680_900_000_000; // 2026-11-26T08:15:00Z

fn ctx(format: Format) -> DecodeCtx {
    DecodeCtx {
        received_at: RECV,
        precision: format.default_precision(),
        default_sensor: None,
    }
}

type Out = Vec<(u32, Result<Reading, Reject>)>;

/// Keeps every outcome in body order, accepted or not.
#[derive(Default)]
struct Collected {
    building: Vec<Reading>,
    out: Out,
}

impl Collect for Collected {
    fn readings(&mut self) -> &mut Vec<Reading> {
        &mut self.building
    }

    fn accept_last(&mut self, index: u32) {
        let reading = self.building.pop().expect("a reading was built");
        assert!(self.building.is_empty(), "one reading at a time");
        self.out.push((index, Ok(reading)));
    }

    fn reject(&mut self, index: u32, problem: Reject, _partial: Option<Reading>) {
        assert!(self.building.is_empty(), "the rejected reading was removed");
        self.out.push((index, Err(problem)));
    }
}

fn run(format: Format, ds: &Dataset, body: &str) -> Result<Out, DecodeError> {
    run_ctx(format, ds, body, ctx(format))
}

fn run_ctx(format: Format, ds: &Dataset, body: &str, ctx: DecodeCtx) -> Result<Out, DecodeError> {
    let mut collected = Collected::default();
    let result = decode(format, body.as_bytes(), ds, &ctx, &mut collected);
    if result.is_ok() {
        assert!(
            collected.building.is_empty(),
            "no half-built reading left behind"
        );
    }
    result.map(|()| collected.out)
}

fn ok(out: &Out, i: usize) -> &Reading {
    match &out[i].1 {
        Ok(r) => r,
        Err(e) => panic!("reading {i} rejected: {e:?}"),
    }
}

fn reason(out: &Out, i: usize) -> Reason {
    match &out[i].1 {
        Ok(r) => panic!("reading {i} accepted: {r:?}"),
        Err(e) => e.reason,
    }
}

// ---- JSON -----------------------------------------------------------------------------------

#[test]
fn json_single_object_nested_fields() {
    let ds = traffic();
    let out = run(
        Format::Json,
        &ds,
        r#"{"sensor_id":"tc-1","ts":"2026-11-26T08:15:00Z","lat":55.5,"lon":12.5,"seq":7,
            "fields":{"vehicle_count":31,"mean_speed":42.5}}"#,
    )
    .unwrap();
    assert_eq!(out.len(), 1);
    let r = ok(&out, 0);
    assert_eq!(r.sensor_id, "tc-1");
    assert_eq!(r.ts, RECV);
    assert!(!r.ts_missing);
    assert_eq!(r.received_at, RECV);
    assert_eq!((r.lat, r.lon, r.seq), (Some(55.5), Some(12.5), Some(7)));
    assert_eq!(r.values[0], Some(Value::Int(31)));
    assert_eq!(r.values[1], Some(Value::Float(42.5)));
}

#[test]
fn json_array_flat_fields_aliases_and_epoch_millis() {
    let ds = traffic();
    let out = run(
        Format::Json,
        &ds,
        r#"[{"sensor":"a","time":1795680900000,"vehicle_count":1},
            {"sensor_id":"b","timestamp":1795680900123.5,"vehicle_count":2.0,"mean_speed":3},
            {"sensor_id":"c","vehicle_count":3}]"#,
    )
    .unwrap();
    assert_eq!(out.iter().map(|o| o.0).collect::<Vec<_>>(), vec![0, 1, 2]);
    assert_eq!(ok(&out, 0).ts, RECV);
    assert_eq!(ok(&out, 1).ts, RECV + 123_500);
    assert_eq!(ok(&out, 1).values[0], Some(Value::Int(2)));
    assert_eq!(ok(&out, 1).values[1], Some(Value::Float(3.0)));
    let c = ok(&out, 2);
    assert!(c.ts_missing, "no ts: flagged and receive time used");
    assert_eq!(c.ts, RECV);
}

#[test]
fn json_precision_changes_epoch_unit() {
    let ds = traffic();
    let body = r#"{"sensor_id":"a","ts":1795680900,"vehicle_count":1}"#;
    let c = DecodeCtx {
        received_at: RECV,
        precision: Precision::Seconds,
        default_sensor: None,
    };
    assert_eq!(
        ok(&run_ctx(Format::Json, &ds, body, c).unwrap(), 0).ts,
        RECV
    );
}

#[test]
fn json_per_reading_rejects_keep_the_rest() {
    let ds = traffic();
    let out = run(
        Format::Json,
        &ds,
        r#"[{"sensor_id":"a","vehicle_count":"many"},
            {"sensor_id":"b","vehicle_count":1,"colour":"red"},
            {"sensor_id":"c","vehicle_count":1,"vehicle_count":2},
            {"sensor_id":"d","ts":"yesterday","vehicle_count":1},
            42,
            [1,2],
            {"sensor_id":"e","vehicle_count":1.5},
            {"sensor_id":"f","vehicle_count":1,"fields":{"mean_speed":{"a":1}}},
            {"sensor_id":{"x":1},"vehicle_count":1},
            {"sensor_id":"g","vehicle_count":1,"seq":-1},
            {"sensor_id":"h","vehicle_count":1,"lat":"north","lon":1},
            {"sensor_id":"i","vehicle_count":1,"fields":[1]},
            {"sensor_id":"ok","vehicle_count":5}]"#,
    )
    .unwrap();
    let reasons: Vec<Reason> = (0..12).map(|i| reason(&out, i)).collect();
    assert_eq!(
        reasons,
        vec![
            Reason::WrongType,
            Reason::UnknownField,
            Reason::DuplicateField,
            Reason::InvalidTimestamp,
            Reason::NotAnObject,
            Reason::NotAnObject,
            Reason::WrongType,
            Reason::WrongType,
            Reason::InvalidSensorId,
            Reason::InvalidSeq,
            Reason::InvalidLocation,
            Reason::WrongType,
        ]
    );
    assert_eq!(ok(&out, 12).values[0], Some(Value::Int(5)));
    match &out[0].1 {
        Err(e) => assert_eq!(
            e.message,
            "field `vehicle_count` must be an integer, got \"many\""
        ),
        Ok(_) => unreachable!(),
    }
}

#[test]
fn json_unknown_fields_allowed_when_dataset_says_so() {
    let mut ds = traffic();
    ds.reject_unknown_fields = false;
    let out = run(
        Format::Json,
        &ds,
        r#"{"sensor_id":"a","vehicle_count":1,"colour":"red","fields":{"x":{"deep":[1]}}}"#,
    )
    .unwrap();
    assert_eq!(ok(&out, 0).values[0], Some(Value::Int(1)));
}

#[test]
fn json_types_and_numeric_ids() {
    let ds = mixed();
    let out = run(
        Format::Json,
        &ds,
        r#"[{"sensor_id":1234,"f":1,"i":-3,"b":true,"s":"hello \"world\""},
            {"sensor_id":"x","f":null,"i":9007199254740993},
            {"sensor_id":"x","i":1e300},
            {"sensor_id":"x","b":1},
            {"sensor_id":"x","s":2}]"#,
    )
    .unwrap();
    let r = ok(&out, 0);
    assert_eq!(r.sensor_id, "1234");
    assert_eq!(
        r.values.to_vec(),
        vec![
            Some(Value::Float(1.0)),
            Some(Value::Int(-3)),
            Some(Value::Bool(true)),
            Some(Value::Str("hello \"world\"".into()))
        ]
    );
    assert_eq!(ok(&out, 1).values[0], None, "null is absent");
    assert_eq!(
        ok(&out, 1).values[1],
        Some(Value::Int(9_007_199_254_740_993))
    );
    assert_eq!(reason(&out, 2), Reason::WrongType);
    assert_eq!(reason(&out, 3), Reason::WrongType);
    assert_eq!(reason(&out, 4), Reason::WrongType);
}

#[test]
fn json_syntax_errors_fail_the_body() {
    let ds = traffic();
    for body in [
        "",
        "[",
        r#"{"sensor_id":"a""#,
        r#"[{"sensor_id":"a"}] trailing"#,
        "true",
        r#""just a string""#,
        "[NaN]",
    ] {
        let err = run(Format::Json, &ds, body).unwrap_err();
        assert!(err.0.starts_with("invalid JSON"), "{body}: {err}");
    }
}

#[test]
fn json_huge_sensor_id_is_rejected_not_copied() {
    let ds = traffic();
    let body = format!(
        r#"{{"sensor_id":"{}","vehicle_count":1}}"#,
        "x".repeat(100_000)
    );
    let out = run(Format::Json, &ds, &body).unwrap();
    assert_eq!(reason(&out, 0), Reason::InvalidSensorId);
}

#[test]
fn a_sensor_named_by_the_transport_fills_and_checks_readings() {
    let ds = traffic();
    let c = DecodeCtx {
        received_at: RECV,
        precision: Precision::Millis,
        default_sensor: Some("tc-topic".into()),
    };
    let out = run_ctx(
        Format::Json,
        &ds,
        r#"[{"vehicle_count":1},{"sensor_id":"tc-topic","vehicle_count":2},{"sensor_id":"other","vehicle_count":3}]"#,
        c,
    )
    .unwrap();
    assert_eq!(ok(&out, 0).sensor_id, "tc-topic");
    assert_eq!(ok(&out, 1).sensor_id, "tc-topic");
    assert_eq!(reason(&out, 2), Reason::InvalidSensorId);
}

// ---- NDJSON ---------------------------------------------------------------------------------

#[test]
fn ndjson_lines_are_independent() {
    let ds = traffic();
    let out = run(
        Format::Ndjson,
        &ds,
        "{\"sensor_id\":\"a\",\"vehicle_count\":1}\n\n{\"sensor_id\":\"b\",\"vehicle_count\":\r\n  \
         {\"sensor_id\":\"c\",\"vehicle_count\":3}  \n[1]\n",
    )
    .unwrap();
    assert_eq!(
        out.iter().map(|o| o.0).collect::<Vec<_>>(),
        vec![0, 2, 3, 4]
    );
    assert_eq!(ok(&out, 0).sensor_id, "a");
    assert_eq!(reason(&out, 1), Reason::Malformed);
    assert_eq!(ok(&out, 2).sensor_id, "c");
    assert_eq!(reason(&out, 3), Reason::NotAnObject);
}

// ---- SenML ----------------------------------------------------------------------------------

#[test]
fn senml_resolves_base_fields_into_readings() {
    let ds = weather();
    let out = run(
        Format::Senml,
        &ds,
        r#"[{"bn":"wx-0042:","bt":1795680900,"bu":"Cel","bver":10,"n":"temperature","v":3.5},
            {"n":"humidity","u":"%RH","v":81},
            {"n":"temperature","t":60,"v":3.25},
            {"bn":"wx-0043/","n":"temperature","v":-1},
            {"n":"wind_speed","u":"m/s","v":4.5,"ut":30}]"#,
    )
    .unwrap();
    assert_eq!(out.iter().map(|o| o.0).collect::<Vec<_>>(), vec![0, 2, 3]);
    let a = ok(&out, 0);
    assert_eq!(a.sensor_id, "wx-0042");
    assert_eq!(a.ts, RECV);
    assert_eq!(a.values[0], Some(Value::Float(3.5)));
    assert_eq!(a.values[1], Some(Value::Float(81.0)));
    let b = ok(&out, 1);
    assert_eq!((b.sensor_id.as_str(), b.ts), ("wx-0042", RECV + 60_000_000));
    let c = ok(&out, 2);
    assert_eq!(c.sensor_id, "wx-0043");
    assert_eq!(c.values[0], Some(Value::Float(-1.0)));
    assert_eq!(c.values[2], Some(Value::Float(4.5)));
}

#[test]
fn senml_relative_time_base_value_and_missing_time() {
    let ds = weather();
    let out = run(
        Format::Senml,
        &ds,
        r#"[{"bn":"a","bv":20,"n":"temperature","v":1.5,"t":-10},
            {"bn":"b","n":"temperature","v":2}]"#,
    )
    .unwrap();
    let a = ok(&out, 0);
    assert_eq!(a.ts, RECV - 10_000_000, "t < 2^28 is relative to now");
    assert!(!a.ts_missing);
    assert_eq!(a.values[0], Some(Value::Float(21.5)), "bv + v");
    let b = ok(&out, 1);
    assert!(b.ts_missing, "no bt and no t: receive time, flagged");
    assert_eq!(b.values[0], Some(Value::Float(22.0)), "bv carries forward");
}

#[test]
fn senml_rejects() {
    let ds = mixed();
    let mut ds_units = weather();
    ds_units.reject_unknown_fields = true;
    let out = run(
        Format::Senml,
        &ds_units,
        r#"[{"bn":"a","bt":1795680900,"n":"temperature","u":"K","v":276},
            {"bn":"b","n":"temperature","vd":"aGk="},
            {"bn":"c","n":"temperature","v":1,"x_":1},
            {"bn":"d","n":"colour","vs":"red"},
            {"bn":"e","v":1},
            {"bn":"f","n":"temperature"},
            {"bn":"g","n":"temperature","v":"1"},
            {"n":"humidity","v":1,"bn":"bad id"},
            {"bn":"h","n":"temperature","v":1,"vs":"1"}]"#,
    )
    .unwrap();
    let reasons: Vec<Option<Reason>> = out
        .iter()
        .map(|(_, r)| r.as_ref().err().map(|e| e.reason))
        .collect();
    assert_eq!(
        reasons,
        [
            Some(Reason::UnitMismatch),
            Some(Reason::Unsupported),
            Some(Reason::Unsupported),
            Some(Reason::UnknownField),
            Some(Reason::Malformed),
            Some(Reason::Malformed),
            Some(Reason::WrongType),
            None, // "bad id" passes decode; the sensor id charset is validate's job.
            Some(Reason::Malformed),
        ]
    );
    let out = run(Format::Senml, &ds_units, "[5]").unwrap();
    assert_eq!(reason(&out, 0), Reason::NotAnObject);
    let out = run(Format::Senml, &ds_units, r#"[{"n":"temperature","v":1}]"#).unwrap();
    assert_eq!(reason(&out, 0), Reason::MissingSensorId);

    let out = run(
        Format::Senml,
        &ds,
        r#"[{"bn":"x","n":"s","vs":"v"},{"n":"b","vb":false}]"#,
    )
    .unwrap();
    let r = ok(&out, 0);
    assert_eq!(r.values[2], Some(Value::Bool(false)));
    assert_eq!(r.values[3], Some(Value::Str("v".into())));
    assert!(
        run(Format::Senml, &ds, r#"{"bn":"x"}"#).is_err(),
        "a pack is an array"
    );
}

// ---- line protocol --------------------------------------------------------------------------

#[test]
fn line_protocol_as_telegraf_writes_it() {
    let ds = traffic();
    let out = run(
        Format::LineProtocol,
        &ds,
        "# comment\n\
         traffic,host=gw1,sensor=tc-1 vehicle_count=31i,mean_speed=42.5 1795680900000000000\n\
         \n\
         traffic,sensor_id=tc-2 vehicle_count=7u,lat=55.5,lon=12.25,seq=3i\r\n",
    )
    .unwrap();
    assert_eq!(out.iter().map(|o| o.0).collect::<Vec<_>>(), vec![1, 3]);
    let a = ok(&out, 0);
    assert_eq!(
        (a.sensor_id.as_str(), a.ts, a.ts_missing),
        ("tc-1", RECV, false)
    );
    assert_eq!(a.values[0], Some(Value::Int(31)));
    assert_eq!(a.values[1], Some(Value::Float(42.5)));
    let b = ok(&out, 1);
    assert!(b.ts_missing);
    assert_eq!((b.lat, b.lon, b.seq), (Some(55.5), Some(12.25), Some(3)));
}

#[test]
fn line_protocol_escaping_and_types() {
    let ds = mixed();
    let out = run(
        Format::LineProtocol,
        &ds,
        "my\\ meas\\,ure,sensor=a\\ b,other\\=tag=x\\,y f=-1e3,i=-42i,b=T,s=\"say \\\"hi\\\", ok=1\" 1\n\
         m,sensor=x s=\"a\\\\b\",b=false\n",
    )
    .unwrap();
    let a = ok(&out, 0);
    assert_eq!(a.sensor_id, "a b", "escaped space in a tag value");
    assert_eq!(a.values[0], Some(Value::Float(-1000.0)));
    assert_eq!(a.values[1], Some(Value::Int(-42)));
    assert_eq!(a.values[2], Some(Value::Bool(true)));
    assert_eq!(a.values[3], Some(Value::Str("say \"hi\", ok=1".into())));
    assert_eq!(a.ts, 0, "1 ns rounds down to 0 µs");
    let b = ok(&out, 1);
    assert_eq!(b.values[3], Some(Value::Str("a\\b".into())));
    assert_eq!(b.values[2], Some(Value::Bool(false)));
}

#[test]
fn line_protocol_malformed_lines_are_rejected_alone() {
    let ds = traffic();
    let out = run(
        Format::LineProtocol,
        &ds,
        "m,sensor=a\n\
         m,sensor=a vehicle_count=\n\
         m,sensor=a vehicle_count=1i 12:00\n\
         m,sensor=a vehicle_count=\"x\n\
         m,sensor vehicle_count=1i\n\
         m,sensor=a vehicle_count=zz\n\
         ,sensor=a vehicle_count=1i\n\
         m,sensor=a vehicle_count=1i,colour=\"red\"\n\
         m,sensor=a vehicle_count=1.5\n\
         m,sensor=a vehicle_count=1i 99999999999999999999\n\
         m,sensor=ok vehicle_count=2i\n",
    )
    .unwrap();
    let reasons: Vec<Reason> = (0..10).map(|i| reason(&out, i)).collect();
    assert_eq!(
        reasons,
        vec![
            Reason::Malformed,
            Reason::Malformed,
            Reason::Malformed,
            Reason::Malformed,
            Reason::Malformed,
            Reason::Malformed,
            Reason::Malformed,
            Reason::UnknownField,
            Reason::WrongType,
            Reason::Malformed,
        ]
    );
    assert_eq!(ok(&out, 10).sensor_id, "ok");
    assert_eq!(out[10].0, 10);
}

#[test]
fn line_protocol_nan_reaches_validation_as_not_finite() {
    let ds = traffic();
    let out = run(
        Format::LineProtocol,
        &ds,
        "m,sensor=a vehicle_count=1i,mean_speed=NaN",
    )
    .unwrap();
    let r = ok(&out, 0);
    let err = crate::pipeline::validate::validate(r, &ds, RECV).unwrap_err();
    assert_eq!(err.reason, Reason::NotFinite);
}

#[test]
fn line_protocol_precisions() {
    let ds = traffic();
    for (p, ts) in [
        (Precision::Nanos, "1795680900000000000"),
        (Precision::Micros, "1795680900000000"),
        (Precision::Millis, "1795680900000"),
        (Precision::Seconds, "1795680900"),
    ] {
        let c = DecodeCtx {
            received_at: 0,
            precision: p,
            default_sensor: None,
        };
        let body = format!("m,sensor=a vehicle_count=1i {ts}");
        assert_eq!(
            ok(&run_ctx(Format::LineProtocol, &ds, &body, c).unwrap(), 0).ts,
            RECV
        );
    }
}

// ---- round trips ----------------------------------------------------------------------------

fn arb_reading() -> impl Strategy<Value = (String, i64, Option<i64>, Option<f64>, bool, String)> {
    (
        "[A-Za-z0-9._-]{1,64}",
        (RECV - 86_400_000_000)..(RECV + 60_000_000),
        proptest::option::of(-1_000_000i64..1_000_000),
        proptest::option::of(-1e12f64..1e12),
        any::<bool>(),
        "[ -~]{0,40}",
    )
}

fn lp_escape_tag(s: &str) -> String {
    s.replace(',', "\\,")
        .replace('=', "\\=")
        .replace(' ', "\\ ")
}

fn lp_escape_str(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

proptest! {
    #[test]
    fn json_round_trips((sensor, ts, i, f, b, s) in arb_reading()) {
        let ds = mixed();
        let mut obj = serde_json::json!({"sensor_id": sensor, "ts": ts as f64 / 1000.0, "b": b, "s": s});
        if let Some(i) = i { obj["i"] = i.into(); }
        if let Some(f) = f { obj["f"] = f.into(); }
        let body = serde_json::to_string(&vec![obj]).unwrap();
        let c = DecodeCtx { received_at: RECV, precision: Precision::Millis, default_sensor: None };
        let out = run_ctx(Format::Json, &ds, &body, c).unwrap();
        let r = ok(&out, 0);
        prop_assert_eq!(r.sensor_id.as_str(), sensor.as_str());
        prop_assert!((r.ts - ts).abs() <= 1);
        prop_assert_eq!(&r.values[0], &f.map(Value::Float));
        prop_assert_eq!(&r.values[1], &i.map(Value::Int));
        prop_assert_eq!(&r.values[2], &Some(Value::Bool(b)));
        prop_assert_eq!(&r.values[3], &Some(Value::Str(s.as_str().into())));
    }

    #[test]
    fn line_protocol_round_trips((sensor, ts, i, f, b, s) in arb_reading(), spaced in "[a-z ,=]{1,10}") {
        let ds = mixed();
        let mut fields = vec![format!("b={b}"), format!("s=\"{}\"", lp_escape_str(&format!("{s}{spaced}")))];
        if let Some(i) = i { fields.push(format!("i={i}i")); }
        if let Some(f) = f { fields.push(format!("f={f:?}")); }
        let body = format!(
            "m\\ x,tag={},sensor={} {} {}",
            lp_escape_tag(&spaced), lp_escape_tag(&sensor), fields.join(","), ts * 1000
        );
        let out = run(Format::LineProtocol, &ds, &body).unwrap();
        let r = ok(&out, 0);
        prop_assert_eq!(r.sensor_id.as_str(), sensor.as_str());
        prop_assert_eq!(r.ts, ts);
        prop_assert_eq!(&r.values[0], &f.map(Value::Float));
        prop_assert_eq!(&r.values[1], &i.map(Value::Int));
        prop_assert_eq!(&r.values[2], &Some(Value::Bool(b)));
        let s_full = format!("{s}{spaced}");
        prop_assert_eq!(&r.values[3], &Some(Value::Str(s_full.as_str().into())));
    }

    #[test]
    fn decoders_never_panic_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let ds = mixed();
        let c = ctx(Format::Json);
        for format in [Format::Json, Format::Ndjson, Format::Senml, Format::LineProtocol] {
            let mut collected = Collected::default();
            if decode(format, &bytes, &ds, &c, &mut collected).is_ok() {
                prop_assert!(collected.building.is_empty());
            }
        }
    }

    #[test]
    fn decoders_never_panic_on_near_valid_text(text in r#"[\[\]{}",:a-z0-9 =\\.\n-]{0,120}"#) {
        let ds = mixed();
        let c = ctx(Format::Json);
        for format in [Format::Json, Format::Ndjson, Format::Senml, Format::LineProtocol] {
            let mut collected = Collected::default();
            if decode(format, text.as_bytes(), &ds, &c, &mut collected).is_ok() {
                prop_assert!(collected.building.is_empty());
            }
        }
    }
}
