//! The simulated city: each worker's share of the sensors, the values they read over the
//! day (traffic peaks, the sun, meters counting up), written as a body in each format.

use std::f64::consts::PI;
use std::fmt::Write as _;

use rand::Rng;
use rand::rngs::SmallRng;

use super::SimFormat;
use crate::model::now_micros;

/// Copenhagen local hour (UTC+1) of a µs timestamp, fractional.
fn local_hour(ts: i64) -> f64 {
    let secs = ts.div_euclid(1_000_000) + 3600;
    (secs.rem_euclid(86_400)) as f64 / 3600.0
}

/// Traffic intensity 0..1 over the day: morning and afternoon peaks.
pub(super) fn traffic_level(hour: f64) -> f64 {
    let peak = |h: f64, width: f64| (-((hour - h).powi(2)) / width).exp();
    (0.12 + 0.8 * peak(8.0, 3.0) + 0.75 * peak(17.0, 5.0)).min(1.0)
}

/// One worker's share of the city: the sensors it sends for (every `workers`-th of all, from
/// its own number), their state that must persist (energy counters, `seq`), and positions.
pub(super) struct City {
    /// Each sensor's number among all of the dataset's.
    pub(super) owned: Vec<usize>,
    next: usize,
    energy: Vec<f64>,
    seq: Vec<i64>,
}

impl City {
    pub(super) fn new(sensors: usize, worker: usize, workers: usize) -> City {
        let owned: Vec<usize> = (worker..sensors).step_by(workers.max(1)).collect();
        City {
            energy: owned.iter().map(|&s| 10_000.0 + 137.0 * s as f64).collect(),
            seq: vec![0; owned.len()],
            owned,
            next: 0,
        }
    }

    /// Appends a body of `n` readings of `ds` in `format` to `out`.
    pub(super) fn batch(
        &mut self,
        ds: &str,
        n: usize,
        format: SimFormat,
        rng: &mut SmallRng,
        out: &mut String,
    ) {
        let ts = now_micros();
        let hour = local_hour(ts);
        let traffic = traffic_level(hour);
        let sun = (2.0 * PI * (hour - 9.0) / 24.0).sin();
        let prefix = match ds {
            "traffic-counts" => "tc",
            "weather" => "wx",
            "energy-meters" => "em",
            _ => "aq",
        };
        if matches!(format, SimFormat::Json | SimFormat::Senml) {
            out.push('[');
        }
        for k in 0..n {
            let at = self.next;
            self.next = (self.next + 1) % self.owned.len();
            let s = self.owned[at];
            self.seq[at] += 1;
            let sensor = format!("{prefix}-{s:04}");
            let lat = 55.676 + ((s * 7919) % 1000) as f64 / 10_000.0 - 0.05;
            let lon = 12.568 + ((s * 104_729) % 1000) as f64 / 10_000.0 - 0.05;
            let fields: Vec<(&str, &str, FieldValue)> = match ds {
                "traffic-counts" => {
                    let count = (traffic * 60.0 * rng.random_range(0.7..1.3)).round() as i64;
                    let speed = (52.0 - 25.0 * traffic + rng.random_range(-6.0..6.0)).max(3.0);
                    vec![
                        ("vehicle_count", "count", FieldValue::Int(count)),
                        ("mean_speed", "km/h", FieldValue::Float(round1(speed))),
                    ]
                }
                "weather" => {
                    let temp = 7.0 + 4.5 * sun + (s % 5) as f64 * 0.3 + rng.random_range(-0.4..0.4);
                    let humidity =
                        (82.0 - 6.0 * sun + rng.random_range(-3.0..3.0)).clamp(0.0, 100.0);
                    let wind = (5.0f64 + rng.random_range(-3.0..6.0)).max(0.0);
                    let rain = if rng.random_bool(0.1) {
                        rng.random_range(0.1..2.5)
                    } else {
                        0.0
                    };
                    vec![
                        ("temperature", "Cel", FieldValue::Float(round1(temp))),
                        ("humidity", "%RH", FieldValue::Float(round1(humidity))),
                        ("wind_speed", "m/s", FieldValue::Float(round1(wind))),
                        ("precipitation", "mm", FieldValue::Float(round1(rain))),
                    ]
                }
                "energy-meters" => {
                    let power = 1500.0 + 2500.0 * sun.max(0.0) + rng.random_range(0.0..800.0);
                    self.energy[at] += power / 1000.0 / 60.0;
                    vec![
                        (
                            "energy",
                            "kWh",
                            FieldValue::Float((self.energy[at] * 1000.0).round() / 1000.0),
                        ),
                        ("power", "W", FieldValue::Float(power.round())),
                    ]
                }
                _ => {
                    let pm25 = 5.0 + 14.0 * traffic + rng.random_range(0.0..4.0);
                    vec![
                        ("pm2_5", "ug/m3", FieldValue::Float(round1(pm25))),
                        (
                            "pm10",
                            "ug/m3",
                            FieldValue::Float(round1(pm25 * 1.7 + rng.random_range(0.0..3.0))),
                        ),
                        (
                            "no2",
                            "ug/m3",
                            FieldValue::Float(round1(
                                12.0 + 35.0 * traffic + rng.random_range(0.0..6.0),
                            )),
                        ),
                    ]
                }
            };
            let reading = SimReading {
                sensor: &sensor,
                ts,
                lat,
                lon,
                seq: self.seq[at],
                fields: &fields,
            };
            match format {
                SimFormat::Json => {
                    if k > 0 {
                        out.push(',');
                    }
                    reading.json(out);
                }
                SimFormat::Ndjson => {
                    reading.json(out);
                    out.push('\n');
                }
                SimFormat::Senml => {
                    if k > 0 {
                        out.push(',');
                    }
                    reading.senml(out);
                }
                SimFormat::Line => reading.line(prefix, out),
            }
        }
        if matches!(format, SimFormat::Json | SimFormat::Senml) {
            out.push(']');
        }
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

#[derive(Clone, Copy)]
enum FieldValue {
    Int(i64),
    Float(f64),
}

struct SimReading<'a> {
    sensor: &'a str,
    ts: i64,
    lat: f64,
    lon: f64,
    seq: i64,
    fields: &'a [(&'a str, &'a str, FieldValue)],
}

impl SimReading<'_> {
    fn json(&self, out: &mut String) {
        let _ = write!(
            out,
            r#"{{"sensor_id":"{}","ts":{},"lat":{:.5},"lon":{:.5},"seq":{},"fields":{{"#,
            self.sensor,
            self.ts / 1000,
            self.lat,
            self.lon,
            self.seq
        );
        for (i, (name, _, v)) in self.fields.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = match v {
                FieldValue::Int(x) => write!(out, r#""{name}":{x}"#),
                FieldValue::Float(x) => write!(out, r#""{name}":{x}"#),
            };
        }
        out.push_str("}}");
    }

    fn senml(&self, out: &mut String) {
        for (i, (name, unit, v)) in self.fields.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            if i == 0 {
                let _ = write!(
                    out,
                    r#"{{"bn":"{}:","bt":{:.3},"n":"{name}","u":"{unit}","v":"#,
                    self.sensor,
                    self.ts as f64 / 1e6
                );
            } else {
                let _ = write!(out, r#"{{"n":"{name}","u":"{unit}","v":"#);
            }
            let _ = match v {
                FieldValue::Int(x) => write!(out, "{x}}}"),
                FieldValue::Float(x) => write!(out, "{x}}}"),
            };
        }
    }

    fn line(&self, measurement: &str, out: &mut String) {
        let _ = write!(out, "{measurement},sensor={} ", self.sensor);
        for (name, _, v) in self.fields {
            let _ = match v {
                FieldValue::Int(x) => write!(out, "{name}={x}i,"),
                FieldValue::Float(x) => write!(out, "{name}={x},"),
            };
        }
        let _ = writeln!(
            out,
            "lat={:.5},lon={:.5},seq={}i {}",
            self.lat,
            self.lon,
            self.seq,
            self.ts * 1000
        );
    }
}
