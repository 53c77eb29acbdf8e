//! InfluxDB line protocol, as Telegraf, Node-RED and the Influx client libraries write it.
//!
//! ```text
//! traffic,sensor=tc-0042,host=gw1 vehicle_count=31i,mean_speed=42.5 1795680900000000000
//! ```
//!
//! The dataset comes from the URL (`bucket` / `db`), so the measurement name is not used.
//! The tag `sensor` (or `sensor_id`) is the sensor id; other tags (Telegraf adds `host`) are
//! ignored. Fields named `lat`, `lon` and `seq` fill the envelope; the rest follow the schema.
//! Each line stands alone: a broken line is rejected as `malformed`, its neighbours go on.

use std::borrow::Cow;

use compact_str::CompactString;

use super::{Builder, Collect, DecodeCtx, DecodeError, ENV_LAT, ENV_LON, Scalar, truncate};
use crate::model::Dataset;
use crate::pipeline::reject::{Reason, Reject};

pub(super) fn decode_line_protocol<C: Collect>(
    body: &[u8],
    ds: &Dataset,
    ctx: &DecodeCtx,
    out: &mut C,
) -> Result<(), DecodeError> {
    for (index, line) in body.split(|&b| b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let trimmed = line.trim_ascii();
        if trimmed.is_empty() || trimmed[0] == b'#' {
            continue;
        }
        if out.full() {
            break;
        }
        let index = u32::try_from(index).unwrap_or(u32::MAX);
        let decoded = match std::str::from_utf8(line) {
            Ok(text) => decode_line(text.trim_start(), ds, ctx, &mut *out, index),
            Err(_) => Err(Reject::new(Reason::Malformed, "line is not valid UTF-8")),
        };
        if let Err(problem) = decoded {
            out.reject(index, problem, None);
        }
    }
    Ok(())
}

fn malformed(message: String) -> Reject {
    Reject::new(Reason::Malformed, message)
}

/// Finds the end of a token: the first of `stops` not escaped by a backslash.
#[inline]
fn token_end(b: &[u8], mut i: usize, stops: &[u8]) -> usize {
    while i < b.len() {
        let c = b[i];
        if c == b'\\' {
            i += 2;
            continue;
        }
        if stops.contains(&c) {
            return i;
        }
        i += 1;
    }
    b.len()
}

/// Removes the backslash of `\,`, `\=` and `\ ` (tag keys, tag values, field keys); other
/// backslashes are literal, as in InfluxDB.
fn unescape_key(raw: &str) -> Cow<'_, str> {
    if !raw.contains('\\') {
        return Cow::Borrowed(raw);
    }
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\'
            && let Some(&next) = chars.peek()
            && matches!(next, ',' | '=' | ' ')
        {
            out.push(next);
            chars.next();
            continue;
        }
        out.push(c);
    }
    Cow::Owned(out)
}

/// Unescapes a string field value (between the quotes): `\"` and `\\`.
fn unescape_string(raw: &str) -> CompactString {
    if !raw.contains('\\') {
        return CompactString::new(raw);
    }
    let mut out = CompactString::with_capacity(raw.len());
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\'
            && let Some(&next) = chars.peek()
            && matches!(next, '"' | '\\')
        {
            out.push(next);
            chars.next();
            continue;
        }
        out.push(c);
    }
    out
}

/// Decodes one line into `out` as reading `index`; `Err` for a line that does not parse
/// (its half-built reading is removed when the builder drops).
fn decode_line<C: Collect>(
    line: &str,
    ds: &Dataset,
    ctx: &DecodeCtx,
    out: &mut C,
    index: u32,
) -> Result<(), Reject> {
    let b = line.as_bytes();
    let mut b_ = Builder::new(ds, ctx, out);

    // Measurement.
    let mut i = token_end(b, 0, b", ");
    if i == 0 {
        return Err(malformed("missing measurement name".into()));
    }

    // Tags.
    while i < b.len() && b[i] == b',' {
        let key_start = i + 1;
        let key_end = token_end(b, key_start, b"=, ");
        if key_end >= b.len() || b[key_end] != b'=' || key_end == key_start {
            return Err(malformed(format!("malformed tag at byte {key_start}")));
        }
        let value_start = key_end + 1;
        let value_end = token_end(b, value_start, b", ");
        if value_end == value_start {
            return Err(malformed(format!("empty tag value at byte {value_start}")));
        }
        let key = unescape_key(&line[key_start..key_end]);
        if key == "sensor" || key == "sensor_id" {
            b_.set_sensor_str(&unescape_key(&line[value_start..value_end]));
        }
        i = value_end;
    }

    // Fields.
    if i >= b.len() || b[i] != b' ' {
        return Err(malformed("missing fields".into()));
    }
    while i < b.len() && b[i] == b' ' {
        i += 1;
    }
    loop {
        let key_start = i;
        let key_end = token_end(b, key_start, b"=, ");
        if key_end >= b.len() || b[key_end] != b'=' || key_end == key_start {
            return Err(malformed(format!("malformed field at byte {key_start}")));
        }
        let key = unescape_key(&line[key_start..key_end]);
        let (value, next) = parse_field_value(line, key_end + 1)?;
        match key.as_ref() {
            "lat" => b_.set_location(ENV_LAT, "lat", value),
            "lon" => b_.set_location(ENV_LON, "lon", value),
            "seq" => b_.set_seq(value),
            name => match ds.field_index(name) {
                Some(index) => b_.set_field(index, value),
                None => b_.unknown_field(name),
            },
        }
        i = next;
        if i < b.len() && b[i] == b',' {
            i += 1;
            continue;
        }
        break;
    }
    // Timestamp.
    let rest = line[i..].trim();
    if !rest.is_empty() {
        let ts: i64 = rest.parse().map_err(|_| {
            malformed(format!(
                "timestamp `{}` is not an integer",
                truncate(rest, 32)
            ))
        })?;
        match ctx.precision.int_to_micros(ts) {
            Some(ts) => b_.set_ts_micros(ts),
            None => b_.fail(Reason::InvalidTimestamp, || {
                format!("timestamp {ts} is out of range")
            }),
        }
    }
    b_.finish(index);
    Ok(())
}

/// Parses the field value starting at `start`; returns it and the index after it.
fn parse_field_value(line: &str, start: usize) -> Result<(Scalar, usize), Reject> {
    let b = line.as_bytes();
    if start < b.len() && b[start] == b'"' {
        let mut i = start + 1;
        while i < b.len() {
            match b[i] {
                b'\\' => i += 2,
                b'"' => {
                    let value = unescape_string(&line[start + 1..i]);
                    return Ok((Scalar::Str(value), i + 1));
                }
                _ => i += 1,
            }
        }
        return Err(malformed(format!("unterminated string at byte {start}")));
    }
    let end = b[start..]
        .iter()
        .position(|&c| c == b',' || c == b' ')
        .map_or(b.len(), |p| start + p);
    let raw = &line[start..end];
    let value = match raw {
        "" => return Err(malformed(format!("empty field value at byte {start}"))),
        "t" | "T" | "true" | "True" | "TRUE" => Scalar::Bool(true),
        "f" | "F" | "false" | "False" | "FALSE" => Scalar::Bool(false),
        _ => {
            let bad = || malformed(format!("invalid field value `{}`", truncate(raw, 32)));
            if let Some(int) = raw.strip_suffix('i') {
                Scalar::Int(int.parse().map_err(|_| bad())?)
            } else if let Some(uint) = raw.strip_suffix('u') {
                Scalar::UInt(uint.parse().map_err(|_| bad())?)
            } else {
                Scalar::Float(raw.parse().map_err(|_| bad())?)
            }
        }
    };
    Ok((value, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_keys_and_strings() {
        assert_eq!(unescape_key(r"a\ b\,c\=d\x"), r"a b,c=d\x");
        assert_eq!(
            unescape_string(r#"say \"hi\" \\ \n"#).as_str(),
            r#"say "hi" \ \n"#
        );
    }

    #[test]
    fn token_end_skips_escapes() {
        assert_eq!(token_end(br"a\ b c", 0, b" "), 4);
        assert_eq!(token_end(b"abc", 0, b" "), 3);
    }
}
