//! Time buckets: readings grouped by `every` (aligned to the Unix epoch, so 15-minute
//! buckets start at :00, :15, …; or local calendar days, [`super::zone`]) and by sensor or not at all, with count, mean, min, max,
//! sum, first and last of each numeric field asked for.
//!
//! `count` counts the readings that carry the field; `first` and `last` are the values of
//! the earliest and latest reading by device time in the bucket (on a tie, the earlier-read
//! one for `first` and the later-read one for `last`, so hot and lake agree). Memory is bounded: past `max_rows` buckets the answer is
//! refused, not truncated.

use std::collections::HashMap;

use compact_str::CompactString;

use super::{Row, Selection};
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
    /// Buckets aligned to local midnight in this zone (`every` then [`super::zone::fits`])
    /// rather than to the epoch.
    pub(crate) tz: Option<chrono_tz::Tz>,
    pub(crate) fns: Vec<Func>,
    /// One bucket per sensor, or one for all.
    pub(crate) by_sensor: bool,
    /// The numeric fields, as (schema position, name).
    pub(crate) fields: Vec<(usize, String)>,
}

impl Spec {
    /// The bucket that holds device time `t`: `[start, end)`.
    pub(crate) fn bucket_of(&self, t: Micros) -> (Micros, Micros) {
        if let Some(local) = self
            .tz
            .and_then(|tz| super::zone::bucket(tz, self.every, t))
        {
            return local;
        }
        let start = t - t.rem_euclid(self.every);
        (start, start.saturating_add(self.every))
    }
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
    /// No reading yet.
    const EMPTY: Figures = Figures {
        count: 0,
        sum: 0.0,
        min: f64::INFINITY,
        max: f64::NEG_INFINITY,
        first: (Micros::MAX, f64::NAN),
        last: (Micros::MIN, f64::NAN),
    };

    #[inline]
    fn add(&mut self, ts: Micros, v: f64) {
        self.add_sometimes::<true>(ts, v);
    }

    /// [`Self::add`], keeping `first` and `last` only when `ENDS` (they cost the most).
    #[inline(always)]
    fn add_sometimes<const ENDS: bool>(&mut self, ts: Micros, v: f64) {
        self.count += 1;
        self.sum += v;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        if ENDS {
            if ts < self.first.0 {
                self.first = (ts, v);
            }
            if ts >= self.last.0 {
                self.last = (ts, v);
            }
        }
    }

    /// Takes in the figures of the same bucket over later readings (by device time).
    fn merge(&mut self, o: &Figures) {
        if o.count == 0 {
            return;
        }
        self.count += o.count;
        self.sum += o.sum;
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
        if o.first.0 < self.first.0 {
            self.first = o.first;
        }
        if o.last.0 >= self.last.0 {
            self.last = o.last;
        }
    }

    /// `None`: no reading carried the field.
    fn value(&self, f: Func) -> Option<f64> {
        (self.count > 0).then(|| match f {
            Func::Count => self.count as f64,
            Func::Mean => self.sum / self.count as f64,
            Func::Min => self.min,
            Func::Max => self.max,
            Func::Sum => self.sum,
            Func::First => self.first.1,
            Func::Last => self.last.1,
        })
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

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// The group of a sensor the selection leaves out.
const LEFT_OUT: u32 = u32::MAX;

/// Buckets being filled. Each sensor met gets a group number (all share group 0 when not
/// grouped by sensor), and each group remembers the bucket it last filled: a sensor's run
/// of readings in one bucket finds its place without hashing or dividing.
#[derive(Debug)]
pub(crate) struct Accumulator {
    spec: Spec,
    max: usize,
    /// The sensors met, by group number.
    groups: Vec<CompactString>,
    group_of: FastMap<CompactString, u32>,
    /// Per group, the bucket it last added to: `[start, end)` and its place (`NOT_YET`
    /// before its first).
    recent: Vec<(Micros, Micros, u32)>,
    /// Bucket places by (start, group).
    index: FastMap<(Micros, u32), u32>,
    /// Per bucket place: (start, group).
    keys: Vec<(Micros, u32)>,
    /// Per bucket place, one slot per field of the spec.
    figures: Vec<Figures>,
    /// Each row's bucket place in the batch being folded (reused between batches).
    places: Vec<u32>,
    /// The last lake dictionary met and its values' groups (held, so that a later batch
    /// with the same buffers has the same dictionary).
    dictionary: Option<(arrow_array::StringArray, Vec<u32>)>,
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
        let one = !spec.by_sensor;
        Accumulator {
            spec,
            max,
            groups: if one {
                vec![CompactString::default()]
            } else {
                Vec::new()
            },
            group_of: FastMap::default(),
            recent: if one { vec![NOT_YET] } else { Vec::new() },
            index: FastMap::default(),
            keys: Vec::new(),
            figures: Vec::new(),
            places: Vec::new(),
            dictionary: None,
            too_many: None,
        }
    }

    pub(crate) fn too_many(&self) -> Option<TooMany> {
        self.too_many
    }

    /// Takes in `later`'s buckets: readings of the same spec from a later span of device
    /// time (a later hour).
    pub(crate) fn merge(&mut self, later: Accumulator) {
        if self.too_many.is_none() {
            self.too_many = later.too_many;
        }
        if self.too_many.is_some() {
            return;
        }
        let n = self.spec.fields.len();
        for (from, &(start, group)) in later.keys.iter().enumerate() {
            let group = self.group(&later.groups[group as usize]);
            let Some(to) = self.place(start, group) else {
                return;
            };
            for (mine, theirs) in self.figures[to * n..(to + 1) * n]
                .iter_mut()
                .zip(&later.figures[from * n..(from + 1) * n])
            {
                mine.merge(theirs);
            }
        }
    }

    /// The buckets by start, then sensor; or that there were too many.
    pub(crate) fn finish(self) -> Result<Vec<Bucket>, TooMany> {
        if let Some(too_many) = self.too_many {
            return Err(too_many);
        }
        let (fns, n) = (&self.spec.fns, self.spec.fields.len());
        // Groups ranked by sensor id, so that buckets sort on numbers.
        let mut by_name: Vec<usize> = (0..self.groups.len()).collect();
        by_name.sort_unstable_by(|&a, &b| self.groups[a].cmp(&self.groups[b]));
        let mut rank = vec![0; self.groups.len()];
        for (r, &g) in by_name.iter().enumerate() {
            rank[g] = r;
        }
        let mut order: Vec<usize> = (0..self.keys.len()).collect();
        order.sort_unstable_by_key(|&at| {
            let (start, group) = self.keys[at];
            (start, rank[group as usize])
        });
        Ok(order
            .into_iter()
            .map(|at| {
                let (start, group) = self.keys[at];
                Bucket {
                    start,
                    sensor: self
                        .spec
                        .by_sensor
                        .then(|| self.groups[group as usize].clone()),
                    values: self.figures[at * n..(at + 1) * n]
                        .iter()
                        .flat_map(|f| fns.iter().map(move |&func| f.value(func)))
                        .collect(),
                }
            })
            .collect())
    }

    /// The group of `sensor`, made if new.
    fn group(&mut self, sensor: &str) -> u32 {
        if !self.spec.by_sensor {
            return 0;
        }
        if let Some(&g) = self.group_of.get(sensor) {
            return g;
        }
        let g = self.groups.len() as u32;
        self.groups.push(CompactString::from(sensor));
        self.group_of.insert(CompactString::from(sensor), g);
        self.recent.push(NOT_YET);
        g
    }

    /// The groups of a dictionary's values (`LEFT_OUT`: a sensor `sel` leaves out).
    fn groups_of(&mut self, sensors: &arrow_array::StringArray, sel: &Selection) -> Vec<u32> {
        sensors
            .iter()
            .map(|s| match s {
                Some(s) if sel.wants_sensor(s) => self.group(s),
                _ => LEFT_OUT,
            })
            .collect()
    }

    /// The place of the bucket of time `t` in `group`, made if new (`None`: past `max`,
    /// noted).
    #[inline]
    fn place(&mut self, t: Micros, group: u32) -> Option<usize> {
        let (start, end, at) = self.recent[group as usize];
        if t >= start && t < end {
            return Some(at as usize);
        }
        self.place_anew(t, group)
    }

    /// [`Self::place`] when the group's last bucket is not the one.
    #[cold]
    fn place_anew(&mut self, t: Micros, group: u32) -> Option<usize> {
        let (start, end) = self.spec.bucket_of(t);
        let at = match self.index.get(&(start, group)) {
            Some(&at) => at,
            None => {
                if self.keys.len() >= self.max {
                    self.too_many = Some(TooMany(self.max));
                    return None;
                }
                let at = self.keys.len() as u32;
                self.keys.push((start, group));
                self.figures
                    .extend(std::iter::repeat_n(Figures::EMPTY, self.spec.fields.len()));
                self.index.insert((start, group), at);
                at
            }
        };
        self.recent[group as usize] = (start, end, at);
        Some(at as usize)
    }

    /// [`Self::place`] for a row of a batch: `NO_PLACE` when it is left out (or past `max`).
    #[inline]
    fn place_of(&mut self, t: Micros, group: u32) -> u32 {
        if group == LEFT_OUT || self.too_many.is_some() {
            return NO_PLACE;
        }
        self.place(t, group).map_or(NO_PLACE, |at| at as u32)
    }

    /// Adds the rows of `columns` that have a bucket place in `places` (at device times
    /// `times`), a column at a time.
    fn fold_placed(&mut self, places: &[u32], times: &[Micros], columns: &[Option<Numbers<'_>>]) {
        use arrow_array::Array;
        let stride = self.spec.fields.len();
        let ends = self
            .spec
            .fns
            .iter()
            .any(|f| matches!(f, Func::First | Func::Last));
        for (field, column) in columns.iter().enumerate() {
            let slots = Slots {
                figures: &mut self.figures,
                stride,
                field,
                ends,
            };
            match column {
                Some(Numbers::Float(a)) => slots.add(places, times, a.values(), a.nulls(), |v| v),
                Some(Numbers::Int(a)) => {
                    slots.add(places, times, a.values(), a.nulls(), |v| v as f64)
                }
                None => {}
            }
        }
    }

    /// Buckets from a lake batch's columns, when its sensors are a dictionary.
    fn fold_batch(
        &mut self,
        batch: &arrow_array::RecordBatch,
        sel: &Selection,
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
        // A file's batches share its dictionary: its groups are found once.
        let (held, groups) = match self.dictionary.take() {
            Some((held, groups)) if same_strings(&held, values) => (held, groups),
            _ => (values.clone(), self.groups_of(values, sel)),
        };
        let times = ts.values();
        let mut places = std::mem::take(&mut self.places);
        places.clear();
        for (row, (&t, &key)) in times.iter().zip(keys.values().iter()).enumerate() {
            let group = if t < from || t >= to || keys.is_null(row) {
                LEFT_OUT
            } else {
                groups.get(key as usize).copied().unwrap_or(LEFT_OUT)
            };
            places.push(self.place_of(t, group));
        }
        self.fold_placed(&places, times, &columns);
        self.places = places;
        self.dictionary = Some((held, groups));
        true
    }
}

/// Whether two string arrays are the same buffers (one dictionary, shared by batches).
fn same_strings(a: &arrow_array::StringArray, b: &arrow_array::StringArray) -> bool {
    use arrow_array::Array;
    a.len() == b.len()
        && a.values().as_ptr() == b.values().as_ptr()
        && a.offsets().inner().inner().as_ptr() == b.offsets().inner().inner().as_ptr()
}

impl super::Fold for Accumulator {
    fn add(&mut self, row: Row) {
        if self.too_many.is_some() {
            return;
        }
        let group = self.group(&row.sensor_id);
        let Some(at) = self.place(row.ts, group) else {
            return;
        };
        let n = self.spec.fields.len();
        for (slot, (field, _)) in self.figures[at * n..(at + 1) * n]
            .iter_mut()
            .zip(&self.spec.fields)
        {
            if let Some(v) = row.values.get(*field).and_then(number) {
                slot.add(row.ts, v);
            }
        }
    }

    fn add_batch(
        &mut self,
        batch: &arrow_array::RecordBatch,
        sel: &Selection,
        span: (Micros, Micros),
    ) -> bool {
        self.fold_batch(batch, sel, span)
    }

    fn add_chunk(
        &mut self,
        chunk: &super::hot::Chunk,
        sel: &Selection,
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
        let groups = self.groups_of(c.sensors, sel);
        // Rows of records at or below the boundary are the lake's.
        let masked = (lake_through >= c.first_lsn).then(|| lake_through - c.first_lsn);
        let mut places = std::mem::take(&mut self.places);
        places.clear();
        for (row, (&t, &key)) in c.ts.iter().zip(c.keys).enumerate() {
            let lake = masked.is_some_and(|m| u64::from(c.lsn[row]) <= m);
            let group = if t < from || t >= to || lake {
                LEFT_OUT
            } else {
                groups[key as usize]
            };
            places.push(self.place_of(t, group));
        }
        self.fold_placed(&places, c.ts, &columns);
        self.places = places;
        true
    }
}

/// A group's last bucket before it has one (an empty range).
const NOT_YET: (Micros, Micros, u32) = (0, 0, 0);

/// Not in any bucket: a row left out.
const NO_PLACE: u32 = u32::MAX;

/// One field's slots of every bucket.
struct Slots<'a> {
    figures: &'a mut [Figures],
    stride: usize,
    field: usize,
    /// Whether `first` or `last` is asked for.
    ends: bool,
}

impl Slots<'_> {
    /// Adds `values` (not null) of rows with a place to their buckets.
    #[inline]
    fn add<T: Copy>(
        self,
        places: &[u32],
        times: &[Micros],
        values: &[T],
        nulls: Option<&arrow_buffer::NullBuffer>,
        to_f64: impl Fn(T) -> f64,
    ) {
        match (self.ends, nulls) {
            (true, _) => self.add_rows::<true, T>(places, times, values, nulls, to_f64),
            (false, Some(_)) => self.add_rows::<false, T>(places, times, values, nulls, to_f64),
            (false, None) => self.add_rows::<false, T>(places, times, values, None, to_f64),
        }
    }

    #[inline(always)]
    fn add_rows<const ENDS: bool, T: Copy>(
        self,
        places: &[u32],
        times: &[Micros],
        values: &[T],
        nulls: Option<&arrow_buffer::NullBuffer>,
        to_f64: impl Fn(T) -> f64,
    ) {
        for (row, ((&at, &t), &v)) in places.iter().zip(times).zip(values).enumerate() {
            if at == NO_PLACE || nulls.is_some_and(|n| n.is_null(row)) {
                continue;
            }
            self.figures[at as usize * self.stride + self.field]
                .add_sometimes::<ENDS>(t, to_f64(v));
        }
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
            tz: None,
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
    fn buckets_of_later_hours_merge_into_the_same_answer() {
        let spec = |by_sensor| Spec {
            every: 100,
            tz: None,
            fns: Func::ALL.to_vec(),
            by_sensor,
            fields: vec![(0, "v".into())],
        };
        let rows: Vec<Row> = (0..400)
            .map(|i| row(["a", "b", "c"][i % 3], i as Micros, (i * 7 % 13) as i64))
            .collect();
        for by_sensor in [true, false] {
            let mut whole = Accumulator::new(spec(by_sensor), 100);
            add_all(&mut whole, rows.clone());
            // Spans of 60 cut buckets of 100 in two; each span is folded latest first.
            let mut merged = Accumulator::new(spec(by_sensor), 100);
            for span in rows.chunks(60) {
                let mut part = Accumulator::new(spec(by_sensor), 100);
                add_all(&mut part, span.iter().rev().cloned().collect());
                merged.merge(part);
            }
            assert_eq!(merged.finish(), whole.finish());
        }
    }

    #[test]
    fn more_buckets_than_allowed_are_refused() {
        let spec = Spec {
            every: 1,
            tz: None,
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
