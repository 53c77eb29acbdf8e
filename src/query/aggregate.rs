//! Time buckets: readings grouped by `every` (aligned to the Unix epoch, so 15-minute
//! buckets start at :00, :15, …) and by sensor or not at all, with count, mean, min, max,
//! sum, first and last of each numeric field asked for.
//!
//! `count` counts the readings that carry the field; `first` and `last` are the values of
//! the earliest and latest reading by device time in the bucket (the later-read one on a
//! tie, so hot and lake agree). Memory is bounded: past `max_rows` buckets the answer is
//! refused, not truncated.

use std::collections::HashMap;

use compact_str::CompactString;

use super::Row;
use crate::model::{Micros, Value};

/// An aggregate function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Func {
    Count,
    Mean,
    Min,
    Max,
    Sum,
    First,
    Last,
}

impl Func {
    pub(crate) const ALL: [Func; 7] = [
        Func::Count,
        Func::Mean,
        Func::Min,
        Func::Max,
        Func::Sum,
        Func::First,
        Func::Last,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Func::Count => "count",
            Func::Mean => "mean",
            Func::Min => "min",
            Func::Max => "max",
            Func::Sum => "sum",
            Func::First => "first",
            Func::Last => "last",
        }
    }

    pub(crate) fn parse(name: &str) -> Option<Func> {
        Func::ALL.into_iter().find(|f| f.name() == name)
    }
}

/// What to compute.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    /// Bucket length, µs.
    pub(crate) every: Micros,
    pub(crate) fns: Vec<Func>,
    /// One bucket per sensor, or one for all.
    pub(crate) by_sensor: bool,
    /// The numeric fields, as (schema position, name).
    pub(crate) fields: Vec<(usize, String)>,
}

/// One field's running figures in a bucket.
#[derive(Debug, Clone, Copy)]
struct Figures {
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
    first: (Micros, f64),
    last: (Micros, f64),
}

impl Figures {
    fn new(ts: Micros, v: f64) -> Figures {
        Figures {
            count: 1,
            sum: v,
            min: v,
            max: v,
            first: (ts, v),
            last: (ts, v),
        }
    }

    fn add(&mut self, ts: Micros, v: f64) {
        self.count += 1;
        self.sum += v;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        if ts < self.first.0 {
            self.first = (ts, v);
        }
        if ts >= self.last.0 {
            self.last = (ts, v);
        }
    }

    fn value(&self, f: Func) -> f64 {
        match f {
            Func::Count => self.count as f64,
            Func::Mean => self.sum / self.count as f64,
            Func::Min => self.min,
            Func::Max => self.max,
            Func::Sum => self.sum,
            Func::First => self.first.1,
            Func::Last => self.last.1,
        }
    }
}

/// One bucket of the answer: its start, its sensor (when grouped by sensor), and per field
/// and function the value, in the order of `Spec::fields` × `Spec::fns` (`None`: no reading
/// in the bucket carried the field).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Bucket {
    pub(crate) start: Micros,
    pub(crate) sensor: Option<CompactString>,
    pub(crate) values: Vec<Option<f64>>,
}

/// More buckets than a response may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TooMany(pub(crate) usize);

/// Buckets being filled.
#[derive(Debug)]
pub(crate) struct Accumulator {
    spec: Spec,
    max: usize,
    buckets: HashMap<(Micros, CompactString), Vec<Option<Figures>>>,
    /// Set once a reading would have made more than `max` buckets; nothing is added after.
    too_many: Option<TooMany>,
}

fn number(v: &Option<Value>) -> Option<f64> {
    match v {
        Some(Value::Float(f)) => Some(*f),
        Some(Value::Int(i)) => Some(*i as f64),
        _ => None,
    }
}

impl Accumulator {
    pub(crate) fn new(spec: Spec, max: usize) -> Accumulator {
        Accumulator {
            spec,
            max,
            buckets: HashMap::new(),
            too_many: None,
        }
    }

    pub(crate) fn too_many(&self) -> Option<TooMany> {
        self.too_many
    }

    /// The buckets by start, then sensor; or that there were too many.
    pub(crate) fn finish(self) -> Result<Vec<Bucket>, TooMany> {
        if let Some(too_many) = self.too_many {
            return Err(too_many);
        }
        let (by_sensor, fns) = (self.spec.by_sensor, &self.spec.fns);
        let mut buckets: Vec<_> = self.buckets.into_iter().collect();
        buckets.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Ok(buckets
            .into_iter()
            .map(|((start, sensor), figures)| Bucket {
                start,
                sensor: by_sensor.then_some(sensor),
                values: figures
                    .iter()
                    .flat_map(|f| fns.iter().map(move |&func| f.map(|f| f.value(func))))
                    .collect(),
            })
            .collect())
    }
}

impl super::Fold for Accumulator {
    fn add(&mut self, row: Row) {
        if self.too_many.is_some() {
            return;
        }
        let start = row.ts - row.ts.rem_euclid(self.spec.every);
        let sensor = if self.spec.by_sensor {
            row.sensor_id.clone()
        } else {
            CompactString::default()
        };
        let key = (start, sensor);
        if !self.buckets.contains_key(&key) && self.buckets.len() == self.max {
            self.too_many = Some(TooMany(self.max));
            return;
        }
        let figures = self
            .buckets
            .entry(key)
            .or_insert_with(|| vec![None; self.spec.fields.len()]);
        for (slot, (at, _)) in figures.iter_mut().zip(&self.spec.fields) {
            if let Some(v) = row.values.get(*at).and_then(number) {
                match slot {
                    Some(f) => f.add(row.ts, v),
                    None => *slot = Some(Figures::new(row.ts, v)),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Fold;
    use super::*;

    fn add_all(acc: &mut Accumulator, rows: Vec<Row>) {
        for r in rows {
            acc.add(r);
        }
    }

    fn row(sensor: &str, ts: Micros, v: i64) -> Row {
        Row {
            sensor_id: sensor.into(),
            ts,
            values: smallvec::smallvec![Some(Value::Int(v))],
            lat: None,
            lon: None,
        }
    }

    #[test]
    fn buckets_align_to_the_epoch_and_compute_every_function() {
        let spec = Spec {
            every: 10,
            fns: Func::ALL.to_vec(),
            by_sensor: false,
            fields: vec![(0, "v".into())],
        };
        let mut acc = Accumulator::new(spec, 100);
        add_all(
            &mut acc,
            vec![
                row("a", 13, 4),
                row("b", 11, 2),
                row("a", 19, 9),
                row("a", 20, 1),
            ],
        );
        let buckets = acc.finish().unwrap();
        assert_eq!(buckets.len(), 2);
        assert_eq!(buckets[0].start, 10);
        assert_eq!(
            buckets[0].values,
            [3.0, 5.0, 2.0, 9.0, 15.0, 2.0, 9.0].map(Some)
        );
        assert_eq!(buckets[1].start, 20);
        assert_eq!(buckets[1].values[0], Some(1.0));
    }

    #[test]
    fn more_buckets_than_allowed_are_refused() {
        let spec = Spec {
            every: 1,
            fns: vec![Func::Count],
            by_sensor: true,
            fields: vec![(0, "v".into())],
        };
        let mut acc = Accumulator::new(spec, 2);
        add_all(
            &mut acc,
            vec![row("a", 1, 1), row("b", 1, 1), row("c", 1, 1)],
        );
        assert_eq!(acc.finish(), Err(TooMany(2)));
    }
}
