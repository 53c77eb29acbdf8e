//! Validate: a decoded reading against its dataset's rules. A pure function of the reading,
//! the dataset and the current time.

use crate::model::{Dataset, FieldType, Micros, Reading, Value, is_valid_sensor_id};
use crate::pipeline::decode::truncate;
use crate::pipeline::reject::{Reason, Reject};

/// Checks `reading` against `ds` at time `now`; the first problem found is the reject.
pub fn validate(reading: &Reading, ds: &Dataset, now: Micros) -> Result<(), Reject> {
    if reading.sensor_id.is_empty() {
        return Err(Reject::new(Reason::MissingSensorId, "sensor_id is missing"));
    }
    if !is_valid_sensor_id(&reading.sensor_id) {
        return Err(Reject::new(
            Reason::InvalidSensorId,
            format!(
                "sensor id `{}` must be 1-64 characters of A-Z a-z 0-9 . _ -",
                truncate(&reading.sensor_id, 64)
            ),
        ));
    }
    if !reading.ts_missing {
        let max_future = micros(ds.max_future);
        let max_age = micros(ds.max_age);
        if reading.ts > now.saturating_add(max_future) {
            return Err(Reject::new(
                Reason::TimestampInFuture,
                format!(
                    "timestamp is {} ahead of the server clock (allowed: {})",
                    human(reading.ts - now),
                    humantime::format_duration(ds.max_future)
                ),
            ));
        }
        if reading.ts < now.saturating_sub(max_age) {
            return Err(Reject::new(
                Reason::TimestampTooOld,
                format!(
                    "timestamp is {} old (allowed: {})",
                    human(now.saturating_sub(reading.ts)),
                    humantime::format_duration(ds.max_age)
                ),
            ));
        }
    }
    match (reading.lat, reading.lon) {
        (None, None) => {}
        (Some(lat), Some(lon)) => {
            if !(lat.is_finite() && (-90.0..=90.0).contains(&lat)) {
                return Err(Reject::new(
                    Reason::InvalidLocation,
                    format!("lat {lat} is outside -90..90"),
                ));
            }
            if !(lon.is_finite() && (-180.0..=180.0).contains(&lon)) {
                return Err(Reject::new(
                    Reason::InvalidLocation,
                    format!("lon {lon} is outside -180..180"),
                ));
            }
        }
        _ => {
            return Err(Reject::new(
                Reason::InvalidLocation,
                "lat and lon come together or not at all",
            ));
        }
    }

    let mut present = 0;
    for (spec, value) in ds.fields.iter().zip(reading.values.iter()) {
        let Some(value) = value else {
            if spec.required {
                return Err(Reject::new(
                    Reason::MissingField,
                    format!("required field `{}` is missing", spec.name),
                ));
            }
            continue;
        };
        present += 1;
        let number = match (spec.ty, value) {
            (FieldType::Float, Value::Float(f)) => {
                if !f.is_finite() {
                    return Err(Reject::new(
                        Reason::NotFinite,
                        format!(
                            "field `{}` is {f}; only finite numbers are stored",
                            spec.name
                        ),
                    ));
                }
                *f
            }
            (FieldType::Int, Value::Int(i)) => *i as f64,
            (FieldType::String, Value::Str(s)) => {
                let max = spec.max_string_len();
                if s.len() > max {
                    return Err(Reject::new(
                        Reason::StringTooLong,
                        format!("field `{}` is {} bytes, at most {max}", spec.name, s.len()),
                    ));
                }
                if let Some(at) = s.bytes().position(|b| b < 0x20 || b == 0x7f) {
                    return Err(Reject::new(
                        Reason::ControlCharacter,
                        format!(
                            "field `{}` holds control character 0x{:02x} at byte {at}",
                            spec.name,
                            s.as_bytes()[at]
                        ),
                    ));
                }
                continue;
            }
            (FieldType::Bool, Value::Bool(_)) => continue,
            (ty, v) => {
                // Decoders convert to the schema type; a mismatch here is a decoder bug,
                // reported as a reject rather than stored wrongly.
                return Err(Reject::new(
                    Reason::WrongType,
                    format!("field `{}` must be {}, got {v:?}", spec.name, ty.name()),
                ));
            }
        };
        if let Some(min) = spec.min
            && number < min
        {
            return Err(Reject::new(
                Reason::BelowMin,
                format!("field `{}` is {number}, below the minimum {min}", spec.name),
            ));
        }
        if let Some(max) = spec.max
            && number > max
        {
            return Err(Reject::new(
                Reason::AboveMax,
                format!("field `{}` is {number}, above the maximum {max}", spec.name),
            ));
        }
    }
    if present == 0 {
        return Err(Reject::new(
            Reason::NoFields,
            "the reading carries none of the dataset's fields",
        ));
    }
    Ok(())
}

fn micros(d: std::time::Duration) -> Micros {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// A µs span as a short human duration, rounded to seconds.
fn human(span: Micros) -> String {
    let secs = (span.max(0) as u64).div_ceil(1_000_000);
    humantime::format_duration(std::time::Duration::from_secs(secs)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::decode::tests::{reading, traffic, weather};

    const NOW: Micros = 1_795_680_900_000_000;

    fn check(r: &Reading, ds: &Dataset) -> Option<Reason> {
        validate(r, ds, NOW).err().map(|e| e.reason)
    }

    #[test]
    fn a_good_reading_passes() {
        let ds = traffic();
        let r = reading(&ds, NOW, |r| {
            r.values[0] = Some(Value::Int(12));
            r.values[1] = Some(Value::Float(40.0));
            r.lat = Some(55.6);
            r.lon = Some(12.5);
        });
        assert_eq!(check(&r, &ds), None);
    }

    #[test]
    fn each_reason_is_detected() {
        let ds = traffic();
        let ok = |r: &mut Reading| r.values[0] = Some(Value::Int(1));
        type Mutation = Box<dyn Fn(&mut Reading)>;
        let cases: Vec<(Reason, Mutation)> = vec![
            (
                Reason::MissingSensorId,
                Box::new(|r| r.sensor_id = "".into()),
            ),
            (
                Reason::InvalidSensorId,
                Box::new(|r| r.sensor_id = "a b".into()),
            ),
            (
                Reason::InvalidSensorId,
                Box::new(|r| r.sensor_id = "x".repeat(65).into()),
            ),
            (
                Reason::TimestampInFuture,
                Box::new(|r| r.ts = NOW + 301_000_000),
            ),
            (
                Reason::TimestampTooOld,
                Box::new(|r| r.ts = NOW - 8 * 86_400_000_000),
            ),
            (Reason::InvalidLocation, Box::new(|r| r.lat = Some(1.0))),
            (
                Reason::InvalidLocation,
                Box::new(|r| (r.lat, r.lon) = (Some(91.0), Some(0.0))),
            ),
            (
                Reason::InvalidLocation,
                Box::new(|r| (r.lat, r.lon) = (Some(0.0), Some(f64::NAN))),
            ),
            (Reason::MissingField, Box::new(|r| r.values[0] = None)),
            (
                Reason::BelowMin,
                Box::new(|r| r.values[0] = Some(Value::Int(-1))),
            ),
            (
                Reason::AboveMax,
                Box::new(|r| r.values[1] = Some(Value::Float(301.0))),
            ),
            (
                Reason::NotFinite,
                Box::new(|r| r.values[1] = Some(Value::Float(f64::INFINITY))),
            ),
            (
                Reason::WrongType,
                Box::new(|r| r.values[1] = Some(Value::Bool(true))),
            ),
        ];
        for (want, mutate) in cases {
            let r = reading(&ds, NOW, |r| {
                ok(r);
                mutate(r)
            });
            assert_eq!(check(&r, &ds), Some(want), "{r:?}");
        }
    }

    #[test]
    fn timestamp_window_edges_are_inclusive_and_missing_ts_is_not_checked() {
        let ds = traffic();
        let at = |ts| {
            reading(&ds, NOW, |r| {
                r.values[0] = Some(Value::Int(1));
                r.ts = ts;
            })
        };
        assert_eq!(check(&at(NOW + 300_000_000), &ds), None);
        assert_eq!(check(&at(NOW - 7 * 86_400_000_000), &ds), None);
        let mut r = at(0);
        r.ts_missing = true;
        assert_eq!(check(&r, &ds), None);
    }

    #[test]
    fn no_fields_and_long_strings() {
        let mut ds = weather();
        ds.fields[0].required = false;
        let empty = reading(&ds, NOW, |_| {});
        assert_eq!(check(&empty, &ds), Some(Reason::NoFields));

        ds.fields.push(crate::model::FieldSpec {
            name: "note".into(),
            ty: FieldType::String,
            unit: None,
            min: None,
            max: None,
            required: false,
            max_length: Some(4),
            description: None,
        });
        let long = reading(&ds, NOW, |r| r.values[4] = Some(Value::Str("12345".into())));
        assert_eq!(check(&long, &ds), Some(Reason::StringTooLong));
        let fine = reading(&ds, NOW, |r| r.values[4] = Some(Value::Str("1234".into())));
        assert_eq!(check(&fine, &ds), None);
        for text in ["a\nb", "\r", "t\tb", "\u{7f}", "\0"] {
            let control = reading(&ds, NOW, |r| r.values[4] = Some(Value::Str(text.into())));
            assert_eq!(
                check(&control, &ds),
                Some(Reason::ControlCharacter),
                "{text:?}"
            );
        }
        let unicode = reading(&ds, NOW, |r| r.values[4] = Some(Value::Str("øé".into())));
        assert_eq!(check(&unicode, &ds), None);
    }
}
