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

/// Buckets being filled: each bucket's place in `figures` by (start, sensor).
#[derive(Debug)]
pub(crate) struct Accumulator {
    spec: Spec,
    max: usize,
    index: HashMap<(Micros, CompactString), usize>,
    /// Per bucket, per field of the spec.
    figures: Vec<Vec<Option<Figures>>>,
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
            index: HashMap::new(),
            figures: Vec::new(),
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
        let mut figures: Vec<Option<Vec<Option<Figures>>>> =
            self.figures.into_iter().map(Some).collect();
        let mut buckets: Vec<_> = self
            .index
            .into_iter()
            .map(|(key, at)| (key, figures[at].take().unwrap_or_default()))
            .collect();
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
        let Some(at) = self.bucket(start, sensor) else {
            return;
        };
        for (slot, (field, _)) in self.figures[at].iter_mut().zip(&self.spec.fields) {
            if let Some(v) = row.values.get(*field).and_then(number) {
                add_to(slot, row.ts, v);
            }
        }
    }

    fn add_batch(
        &mut self,
        batch: &arrow_array::RecordBatch,
        sel: &super::Selection,
        span: (Micros, Micros),
    ) -> bool {
        self.fold_batch(batch, sel, span)
    }

    fn add_chunk(
        &mut self,
        chunk: &super::hot::Chunk,
        sel: &super::Selection,
        lake_through: u64,
        (from, to): (Micros, Micros),
    ) -> bool {
        if self.too_many.is_some() || chunk.last_lsn <= lake_through {
            return true;
        }
        let c = chunk.columns();
        // The spec's fields in the chunk's own schema, as numbers.
        let map = super::hot::field_map(c.dataset, &sel.dataset);
        let columns: Vec<Option<Numbers<'_>>> = self
            .spec
            .fields
            .iter()
            .map(|(at, _)| {
                map.get(*at)
                    .copied()
                    .flatten()
                    .and_then(|i| Numbers::of(&c.values[i]))
            })
            .collect();
        let wanted: Vec<bool> = c
            .sensors
            .iter()
            .map(|s| s.is_some_and(|s| sel.wants_sensor(s)))
            .collect();
        // Bucket places by (start, chunk's sensor key): no string hashed per row.
        let mut local: HashMap<(Micros, u32), usize> = HashMap::new();
        let masked = lake_through.saturating_sub(c.first_lsn);
        for row in 0..c.ts.len() {
            let (ts, key) = (c.ts[row], c.keys[row]);
            if ts < from
                || ts >= to
                || !wanted[key as usize]
                || (lake_through >= c.first_lsn && u64::from(c.lsn[row]) <= masked)
            {
                continue;
            }
            if !self.fold_keyed(&mut local, (ts, key, row), c.sensors, &columns) {
                return true;
            }
        }
        true
    }
}

impl Accumulator {
    /// Buckets from a lake batch's columns, when its sensors are a dictionary.
    fn fold_batch(
        &mut self,
        batch: &arrow_array::RecordBatch,
        sel: &super::Selection,
        (from, to): (Micros, Micros),
    ) -> bool {
        use arrow_array::Array;
        let Some(super::lake::Sensors::Dictionary { keys, values }) =
            super::lake::Sensors::of(batch)
        else {
            return false;
        };
        let Some(ts) = batch.column_by_name("ts").and_then(|a| {
            a.as_any()
                .downcast_ref::<arrow_array::TimestampMicrosecondArray>()
        }) else {
            return false;
        };
        if self.too_many.is_some() {
            return true;
        }
        let columns: Vec<Option<Numbers<'_>>> = self
            .spec
            .fields
            .iter()
            .map(|(_, name)| batch.column_by_name(name).and_then(Numbers::of))
            .collect();
        let wanted: Vec<bool> = values
            .iter()
            .map(|s| s.is_some_and(|s| sel.wants_sensor(s)))
            .collect();
        let mut local: HashMap<(Micros, u32), usize> = HashMap::new();
        let times = ts.values();
        for row in 0..batch.num_rows() {
            let t = times[row];
            if t < from || t >= to || keys.is_null(row) {
                continue;
            }
            let key = keys.value(row);
            if !wanted.get(key as usize).copied().unwrap_or(false) {
                continue;
            }
            if !self.fold_keyed(&mut local, (t, key as u32, row), values, &columns) {
                return true;
            }
        }
        true
    }

    /// Adds row `row` of `columns` (device time `t`, sensor `sensors[key]`) to its bucket,
    /// found through `local` by (start, key) so that no sensor string is hashed per row.
    /// `false`: the bucket would be one past `max` (noted).
    fn fold_keyed(
        &mut self,
        local: &mut HashMap<(Micros, u32), usize>,
        (t, key, row): (Micros, u32, usize),
        sensors: &arrow_array::StringArray,
        columns: &[Option<Numbers<'_>>],
    ) -> bool {
        let start = t - t.rem_euclid(self.spec.every);
        let group = if self.spec.by_sensor { key } else { 0 };
        let at = match local.get(&(start, group)) {
            Some(&at) => at,
            None => {
                let sensor = if self.spec.by_sensor {
                    CompactString::from(sensors.value(key as usize))
                } else {
                    CompactString::default()
                };
                let Some(at) = self.bucket(start, sensor) else {
                    return false;
                };
                local.insert((start, group), at);
                at
            }
        };
        for (slot, column) in self.figures[at].iter_mut().zip(columns) {
            if let Some(v) = column.as_ref().and_then(|n| n.get(row)) {
                add_to(slot, t, v);
            }
        }
        true
    }

    /// The place of bucket (start, sensor), made if new (`None`: past `max`, noted).
    fn bucket(&mut self, start: Micros, sensor: CompactString) -> Option<usize> {
        let next = self.figures.len();
        if next == self.max && !self.index.contains_key(&(start, sensor.clone())) {
            self.too_many = Some(TooMany(self.max));
            return None;
        }
        let at = *self.index.entry((start, sensor)).or_insert(next);
        if at == next {
            self.figures.push(vec![None; self.spec.fields.len()]);
        }
        Some(at)
    }
}

fn add_to(slot: &mut Option<Figures>, ts: Micros, v: f64) {
    match slot {
        Some(f) => f.add(ts, v),
        None => *slot = Some(Figures::new(ts, v)),
    }
}

/// A numeric column, read as f64.
enum Numbers<'a> {
    Float(&'a arrow_array::Float64Array),
    Int(&'a arrow_array::Int64Array),
}

impl<'a> Numbers<'a> {
    fn of(array: &'a arrow_array::ArrayRef) -> Option<Numbers<'a>> {
        let any = array.as_any();
        any.downcast_ref()
            .map(Numbers::Float)
            .or_else(|| any.downcast_ref().map(Numbers::Int))
    }

    fn get(&self, row: usize) -> Option<f64> {
        use arrow_array::Array;
        match self {
            Numbers::Float(a) => (!a.is_null(row)).then(|| a.value(row)),
            Numbers::Int(a) => (!a.is_null(row)).then(|| a.value(row) as f64),
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
