//! Line protocol: escaping, exact float text, and [`Shape`], which writes one dataset's
//! readings as points.

use std::sync::Arc;

use crate::model::{Dataset, Reading, Value};

/// Appends `s` with a backslash before each of `special`, and a space in place of each
/// control character: line protocol has no escape for a newline, which would start a point
/// of the client's making. (Validation rejects them; this guards records logged before.)
fn escape(out: &mut String, s: &str, special: &[u8]) {
    let control = |b: u8| b < 0x20 || b == 0x7f;
    if !s.bytes().any(|b| special.contains(&b) || control(b)) {
        out.push_str(s);
        return;
    }
    for c in s.chars() {
        if c.is_ascii() && control(c as u8) {
            out.push(' ');
            continue;
        }
        if c.is_ascii() && special.contains(&(c as u8)) {
            out.push('\\');
        }
        out.push(c);
    }
}

/// Appends a finite float so that it parses back to exactly `f`. Values with at most four
/// decimals (most sensor readings) are written from integers; `m / 10^4` computed in
/// floating point rounds the same rational as a parser reading the digits of `m` over
/// `10^4`, so when it gives `f` back those digits are exact. Anything else goes to ryu.
pub(super) fn push_float(
    out: &mut String,
    f: f64,
    floats: &mut ryu::Buffer,
    ints: &mut itoa::Buffer,
) {
    const SCALE: f64 = 10_000.0;
    // Below 1e11 the scaled value stays under 2^53, where every integer is exact.
    if f.abs() < 1e11 {
        let m = (f * SCALE).round();
        if m / SCALE == f {
            let mut m = m.abs() as u64;
            let mut decimals = 4;
            while decimals > 1 && m.is_multiple_of(10) {
                m /= 10;
                decimals -= 1;
            }
            let unit = 10u64.pow(decimals);
            if f.is_sign_negative() {
                out.push('-');
            }
            out.push_str(ints.format(m / unit));
            out.push('.');
            let frac = ints.format(m % unit);
            for _ in frac.len()..decimals as usize {
                out.push('0');
            }
            out.push_str(frac);
            return;
        }
    }
    out.push_str(floats.format_finite(f));
}

/// What a measurement name escapes.
const MEASUREMENT: &[u8] = b", \\";
/// What a tag key or value, or a field key, escapes.
const TAG: &[u8] = b",= \\";
/// What a string field value escapes (inside its quotes).
const STRING: &[u8] = b"\"\\";

/// How one dataset's readings become line-protocol points, worked out once: the escaped
/// measurement and provider tag, and the escaped field keys.
#[derive(Debug)]
pub(crate) struct Shape {
    pub(super) dataset: Arc<Dataset>,
    /// `measurement,provider=…,sensor_id=`
    prefix: String,
    keys: Vec<String>,
}

impl Shape {
    pub(crate) fn new(dataset: Arc<Dataset>) -> Shape {
        let mut prefix = String::new();
        escape(&mut prefix, &dataset.id, MEASUREMENT);
        prefix.push_str(",provider=");
        escape(&mut prefix, &dataset.provider, TAG);
        prefix.push_str(",sensor_id=");
        let keys = dataset
            .fields
            .iter()
            .map(|f| {
                let mut key = String::new();
                escape(&mut key, &f.name, TAG);
                key
            })
            .collect();
        Shape {
            dataset,
            prefix,
            keys,
        }
    }

    /// Appends one reading as a point; `false` (and nothing appended) if it has no field that
    /// can be sent.
    pub(crate) fn write_point(&self, out: &mut String, r: &Reading) -> bool {
        let start = out.len();
        out.push_str(&self.prefix);
        escape(out, &r.sensor_id, TAG);
        let mut first = true;
        let mut field = |out: &mut String, key: &str| {
            out.push(if first { ' ' } else { ',' });
            first = false;
            out.push_str(key);
            out.push('=');
        };
        let mut floats = ryu::Buffer::new();
        let mut ints = itoa::Buffer::new();
        for (key, value) in self.keys.iter().zip(&r.values) {
            match value {
                Some(Value::Float(f)) if f.is_finite() => {
                    field(out, key);
                    push_float(out, *f, &mut floats, &mut ints);
                }
                Some(Value::Int(i)) => {
                    field(out, key);
                    out.push_str(ints.format(*i));
                    out.push('i');
                }
                Some(Value::Bool(b)) => {
                    field(out, key);
                    out.push_str(if *b { "true" } else { "false" });
                }
                Some(Value::Str(s)) => {
                    field(out, key);
                    out.push('"');
                    escape(out, s, STRING);
                    out.push('"');
                }
                _ => {}
            }
        }
        if let (Some(lat), Some(lon)) = (r.lat, r.lon)
            && lat.is_finite()
            && lon.is_finite()
        {
            field(out, "lat");
            push_float(out, lat, &mut floats, &mut ints);
            field(out, "lon");
            push_float(out, lon, &mut floats, &mut ints);
        }
        if let Some(seq) = r.seq {
            field(out, "seq");
            out.push_str(ints.format(seq));
            out.push('i');
        }
        if first {
            out.truncate(start);
            return false;
        }
        out.push(' ');
        match r.ts.checked_mul(1000) {
            Some(ns) => out.push_str(ints.format(ns)),
            None => out.push_str(itoa::Buffer::new().format(i128::from(r.ts) * 1000)),
        }
        out.push('\n');
        true
    }

    /// The sensor id of a point this shape wrote (unescaped).
    pub(super) fn sensor_of(&self, line: &str) -> String {
        let mut sensor = String::new();
        let mut chars = line[self.prefix.len()..].chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => sensor.extend(chars.next()),
                ',' | ' ' => break,
                c => sensor.push(c),
            }
        }
        sensor
    }
}
