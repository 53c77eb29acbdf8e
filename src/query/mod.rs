//! History queries: a dataset's readings of the last hours and days, for planners.
//!
//! Three shapes, over one selection (a dataset, a time range `[from, to)`, some sensors, a
//! box): raw readings in time order, paged by a cursor ([`QueryService::history`]); the last
//! reading of every sensor ([`QueryService::latest`]); time buckets aligned to the epoch with
//! count, mean, min, max, sum, first and last per numeric field ([`aggregate`]).
//!
//! Readings come from two places that never overlap: the hot store ([`hot`]: the last
//! hours, in memory, visible from the moment they are acknowledged) and the lake ([`lake`]:
//! the Parquet files below the hot store's boundary). A query takes a snapshot of the hot
//! store and its boundary first, then reads the files below that boundary: each reading is
//! read once, wherever it is at that moment. Work is done an hour partition at a time, so a
//! page of raw readings costs the hours it spans, not the range.
//!
//! Who may ask what (entitlements, tiers, the range a plan reaches) is the API's business
//! (`api::query`); this module answers the question it is given.

pub(crate) mod aggregate;
pub mod hot;
pub(crate) mod lake;
pub(crate) mod output;
mod pool;
pub(crate) mod zone;

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;

use compact_str::CompactString;
use futures_util::StreamExt;

use crate::config::QueryConfig;
use crate::feed::session::Filter;
use crate::model::{Dataset, Micros, Values};
use crate::pipeline::limit::Limiter;
use crate::telemetry::Scanned;
use hot::{HotStore, Snapshot};
use lake::LakeError;

pub(crate) const HOUR: Micros = 3_600_000_000;

/// Hour partitions a query reads at once, each on a query thread of its own ([`pool`]; the
/// machines this runs on have two cores or more).
const HOURS_AT_ONCE: usize = 2;

/// One reading as a query returns it: values in the dataset's current schema order.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Row {
    pub(crate) sensor_id: CompactString,
    pub(crate) ts: Micros,
    pub(crate) values: Values,
    pub(crate) lat: Option<f64>,
    pub(crate) lon: Option<f64>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum QueryError {
    #[error(transparent)]
    Lake(#[from] LakeError),
    #[error("the query task failed: {0}")]
    Task(String),
}

/// What is asked of a dataset.
#[derive(Debug, Clone)]
pub(crate) struct Selection {
    pub(crate) dataset: Arc<Dataset>,
    pub(crate) from: Micros,
    pub(crate) to: Micros,
    pub(crate) filter: Filter,
    /// The schema positions of the fields the answer shows (`None`: all); the lake decodes
    /// no other column.
    pub(crate) fields: Option<Vec<usize>>,
}

impl Selection {
    pub(crate) fn wants_sensor(&self, sensor: &str) -> bool {
        self.filter
            .sensors
            .as_ref()
            .is_none_or(|s| s.contains(sensor))
    }

    /// The box, on a row's own position (a row without one is outside every box).
    fn wants_place(&self, row: &Row) -> bool {
        match self.filter.bbox {
            None => true,
            Some([min_lon, min_lat, max_lon, max_lat]) => match (row.lat, row.lon) {
                (Some(lat), Some(lon)) => {
                    (min_lon..=max_lon).contains(&lon) && (min_lat..=max_lat).contains(&lat)
                }
                _ => false,
            },
        }
    }
}

/// Ascending or descending time order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Order {
    Asc,
    Desc,
}

/// Where a page of raw readings ended: the key `(ts, sensor)` of its last reading and how
/// many readings with exactly that key were returned so far (readings may share one), for
/// one query (`query`: a hash of the dataset, order and filter, so that a cursor is not
/// taken to another query). Opaque to clients:
/// `a1764500000000000_2_5f3c9a01_sensor-1` (order, time, count, query, sensor).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cursor {
    pub(crate) order: Order,
    pub(crate) ts: Micros,
    pub(crate) seen: u64,
    pub(crate) query: u32,
    pub(crate) sensor: CompactString,
}

/// Device times a cursor may name: years 1 to 9999, as RFC 3339 does.
const CURSOR_TIMES: std::ops::RangeInclusive<Micros> =
    -62_135_596_800_000_000..=253_402_300_799_999_999;

impl Cursor {
    /// The hash a cursor of `sel` in `order` carries (FNV-1a: the same in every process,
    /// so a cursor outlives a restart).
    pub(crate) fn query_of(sel: &Selection, order: Order) -> u32 {
        let mut text = format!("{}|{:?}|{:?}|", sel.dataset.id, order, sel.filter.bbox);
        let mut sensors: Vec<&String> = sel.filter.sensors.iter().flatten().collect();
        sensors.sort();
        for s in sensors {
            text.push_str(s);
            text.push(',');
        }
        text.bytes().fold(0x811c_9dc5u32, |h, b| {
            (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
        })
    }

    pub(crate) fn encode(&self) -> String {
        let o = match self.order {
            Order::Asc => 'a',
            Order::Desc => 'd',
        };
        format!(
            "{o}{}_{}_{:08x}_{}",
            self.ts, self.seen, self.query, self.sensor
        )
    }

    pub(crate) fn decode(text: &str) -> Option<Cursor> {
        let order = match text.as_bytes().first()? {
            b'a' => Order::Asc,
            b'd' => Order::Desc,
            _ => return None,
        };
        let mut parts = text[1..].splitn(4, '_');
        let ts = parts
            .next()?
            .parse()
            .ok()
            .filter(|t| CURSOR_TIMES.contains(t))?;
        let seen = parts.next()?.parse().ok()?;
        let query = u32::from_str_radix(parts.next()?, 16).ok()?;
        let sensor = parts.next()?;
        crate::model::is_valid_sensor_id(sensor).then(|| Cursor {
            order,
            ts,
            seen,
            query,
            sensor: CompactString::from(sensor),
        })
    }
}

fn key_cmp(a: &Row, b: &Row) -> Ordering {
    a.ts.cmp(&b.ts).then_with(|| a.sensor_id.cmp(&b.sensor_id))
}

/// A page of raw readings, and where the next one starts (none: this was the last).
#[derive(Debug)]
pub(crate) struct Page {
    pub(crate) rows: Vec<Row>,
    pub(crate) next: Option<Cursor>,
}

/// The hot store and the lake, asked as one.
#[derive(Debug)]
pub struct QueryService {
    pub(crate) hot: Arc<HotStore>,
    lake: lake::Lake,
    pub(crate) config: QueryConfig,
    /// The low-priority threads queries read on.
    pool: pool::Pool,
    /// Queries running at once, at most `[query] max_concurrent`.
    pub(crate) permits: tokio::sync::Semaphore,
    /// Queries per key, `[query] rate_limit`.
    pub(crate) limiter: Limiter,
}

impl QueryService {
    pub fn new(hot: Arc<HotStore>, lake: crate::sink::lake::Lake, config: QueryConfig) -> Self {
        QueryService {
            hot,
            lake,
            permits: tokio::sync::Semaphore::new(config.max_concurrent.max(1)),
            pool: pool::Pool::new(config.max_concurrent.max(1) * HOURS_AT_ONCE),
            limiter: Limiter::new(config.rate_limit),
            config,
        }
    }

    /// Hands `fold` every reading of `[lo, hi)` in `sel`, in log order: the lake's files of
    /// the hours that overlap (below the snapshot's boundary; their names sort by log
    /// range), then the hot store's. Log order makes ties (one sensor, one time) come out
    /// the same wherever the readings are. On a query thread ([`pool`]); `fold` comes back.
    async fn window<F: Fold + Send + 'static>(
        &self,
        sel: &Selection,
        snapshot: &Arc<Snapshot>,
        (lo, hi): (Micros, Micros),
        files: Arc<Vec<lake::LakeFile>>,
        mut fold: F,
    ) -> Result<F, QueryError> {
        let (sel, snapshot) = (sel.clone(), snapshot.clone());
        let lake = self.lake.clone();
        let metrics = self.hot.metrics.clone();
        self.pool
            .run(move || {
                let mut keep = |_: Micros, sensor: &str| sel.wants_sensor(sensor);
                let mut placed = Placed {
                    sel: &sel,
                    fold: &mut fold,
                };
                let mut scanned = Scanned::default();
                // The hour's files, in log order (their names sort by log range).
                for file in files.iter() {
                    scanned +=
                        lake::read_file_fold(&lake, file, &sel, (lo, hi), &mut keep, &mut placed)?;
                }
                let hot = snapshot.scan_fold(&sel, (lo, hi), &mut keep, &mut placed);
                metrics.scanned(scanned, hot);
                Ok(fold)
            })
            .await?
    }

    /// Runs `f` (making an answer out of what a query found) on a query thread.
    pub(crate) async fn render<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, QueryError> {
        self.pool.run(f).await
    }

    /// What a query of `dataset` reads in the hot store, with, for a lake in object storage,
    /// every node's mark there.
    async fn snapshot(&self, dataset: &str) -> Result<Arc<Snapshot>, QueryError> {
        let mut snapshot = self.hot.snapshot(dataset);
        if let lake::Lake::Object(o) = &self.lake {
            let marks = o.marks(dataset).await.map_err(LakeError::from)?;
            self.hot.note_marks(dataset, &marks);
            snapshot.mark_others(&marks);
        }
        Ok(Arc::new(snapshot))
    }

    /// The hours of `[from, to)` that hold readings of `sel`'s dataset, as hour starts, each
    /// with the lake's files of that hour (listed once per query): the lake's partitions and
    /// the hot store's times.
    async fn hours_with_data(
        &self,
        sel: &Selection,
        snapshot: &Arc<Snapshot>,
    ) -> Result<Vec<(Micros, Arc<Vec<lake::LakeFile>>)>, QueryError> {
        let (lake, snapshot2) = (self.lake.clone(), snapshot.clone());
        let (id, span) = (sel.dataset.id.clone(), (sel.from, sel.to));
        let listed = self
            .pool
            .run(move || {
                lake::hours_in(
                    &lake,
                    &id,
                    span,
                    snapshot2.lake_through,
                    snapshot2.marks.as_deref(),
                )
            })
            .await??;
        let mut hours: HashMap<Micros, Arc<Vec<lake::LakeFile>>> = listed
            .into_iter()
            .map(|h| (h.start, Arc::new(h.files)))
            .collect();
        for hour in snapshot.hours(sel.from, sel.to) {
            hours.entry(hour).or_default();
        }
        let mut hours: Vec<(Micros, Arc<Vec<lake::LakeFile>>)> = hours.into_iter().collect();
        hours.sort_unstable_by_key(|(h, _)| *h);
        Ok(hours)
    }

    /// A page of at most `limit` raw readings of `sel` in `order` by (time, sensor), after
    /// `cursor`. Each hour keeps only the first readings it could return (memory bounded
    /// by the page, not by the hour).
    pub(crate) async fn history(
        &self,
        sel: &Selection,
        order: Order,
        limit: usize,
        cursor: Option<&Cursor>,
    ) -> Result<Page, QueryError> {
        let snapshot = self.snapshot(&sel.dataset.id).await?;
        let mut hours = self.hours_with_data(sel, &snapshot).await?;
        // Hours wholly passed by the cursor need no reading.
        if let Some(c) = cursor {
            let hour = c.ts - c.ts.rem_euclid(HOUR);
            match order {
                Order::Asc => hours.retain(|(h, _)| *h >= hour),
                Order::Desc => hours.retain(|(h, _)| *h <= hour),
            }
        }
        if order == Order::Desc {
            hours.reverse();
        }
        // Readings of the cursor's own key that earlier pages returned.
        let mut skip = cursor.map_or(0, |c| c.seen);
        // The most one hour can contribute: the page, one more, and the cursor's key.
        let keep = (limit + 1).saturating_add(skip.min(self.config.max_rows as u64) as usize);
        let mut out: Vec<Row> = Vec::new();
        // How many readings of the last returned key were returned, earlier pages included.
        let mut run = 0u64;
        // The next hour is read while this one is taken (at most one hour read in vain).
        let mut each = futures_util::stream::iter(hours)
            .map(|(hour, files)| {
                let span = (hour.max(sel.from), (hour + HOUR).min(sel.to));
                self.window(sel, &snapshot, span, files, TopK::new(order, cursor, keep))
            })
            .buffered(HOURS_AT_ONCE);
        while let Some(top) = each.next().await {
            for row in top?.into_rows() {
                let at_cursor = match cursor {
                    Some(c) => {
                        let ord = row.ts.cmp(&c.ts).then_with(|| row.sensor_id.cmp(&c.sensor));
                        if ord.is_eq() && skip > 0 {
                            skip -= 1;
                            continue;
                        }
                        ord.is_eq()
                    }
                    None => false,
                };
                if let Some(last) = out.last() {
                    if out.len() == limit {
                        return Ok(Page {
                            next: Some(Cursor {
                                order,
                                ts: last.ts,
                                seen: run,
                                query: Cursor::query_of(sel, order),
                                sensor: last.sensor_id.clone(),
                            }),
                            rows: out,
                        });
                    }
                    run = if key_cmp(last, &row).is_eq() {
                        run + 1
                    } else {
                        1
                    };
                } else {
                    run = 1;
                }
                if at_cursor && run == 1 {
                    run += cursor.map_or(0, |c| c.seen);
                }
                out.push(row);
            }
        }
        Ok(Page {
            rows: out,
            next: None,
        })
    }

    /// The last reading (by device time; of equal times, the last logged) of every sensor
    /// in `sel` within its range: from the hot store's index when it can answer alone (a
    /// range ending now), else by reading the range back from its end.
    pub(crate) async fn latest(&self, sel: &Selection) -> Result<Vec<Row>, QueryError> {
        if let Some(rows) = self.hot.latest(sel) {
            return Ok(rows);
        }
        let snapshot = self.snapshot(&sel.dataset.id).await?;
        let mut hours = self.hours_with_data(sel, &snapshot).await?;
        hours.reverse();
        let mut best = Latest::default();
        for (hour, files) in hours {
            let span = (hour.max(sel.from), (hour + HOUR).min(sel.to));
            best = self.window(sel, &snapshot, span, files, best).await?;
        }
        let mut rows: Vec<Row> = best.0.into_values().collect();
        rows.sort_by(|a, b| a.sensor_id.cmp(&b.sensor_id));
        Ok(rows)
    }

    /// Time buckets of `sel` (see [`aggregate`]). `Ok(Err(_))`: more than `max_rows`.
    pub(crate) async fn aggregate(
        &self,
        sel: &Selection,
        spec: &aggregate::Spec,
    ) -> Result<Result<Vec<aggregate::Bucket>, aggregate::TooMany>, QueryError> {
        let snapshot = self.snapshot(&sel.dataset.id).await?;
        let hours = self.hours_with_data(sel, &snapshot).await?;
        let max = self.config.max_rows;
        // Each hour into buckets of its own, `HOURS_AT_ONCE` hours at a time; hours are
        // merged in time order.
        let mut each = futures_util::stream::iter(hours)
            .map(|(hour, files)| {
                let span = (hour.max(sel.from), (hour + HOUR).min(sel.to));
                let acc = aggregate::Accumulator::new(spec.clone(), max);
                self.window(sel, &snapshot, span, files, acc)
            })
            .buffered(HOURS_AT_ONCE);
        let mut acc = aggregate::Accumulator::new(spec.clone(), max);
        while let Some(hour) = each.next().await {
            acc.merge(hour?);
            if acc.too_many().is_some() {
                break;
            }
        }
        Ok(acc.finish())
    }
}

/// What a query makes of the readings it is handed, one at a time (on a blocking thread).
pub(crate) trait Fold {
    fn add(&mut self, row: Row);

    /// Takes every row of a hot chunk in `sel`'s range at once, from its columns (`false`:
    /// this fold takes rows, one at a time).
    fn add_chunk(
        &mut self,
        _chunk: &hot::Chunk,
        _sel: &Selection,
        _lake_through: u64,
        _span: (Micros, Micros),
    ) -> bool {
        false
    }

    /// Takes every row of a lake record batch in the range at once, from its columns
    /// (`false`: rows, one at a time).
    fn add_batch(
        &mut self,
        _batch: &arrow_array::RecordBatch,
        _sel: &Selection,
        _span: (Micros, Micros),
    ) -> bool {
        false
    }
}

/// A fold behind the selection's box (a reading without a position is outside every box).
struct Placed<'a, F> {
    sel: &'a Selection,
    fold: &'a mut F,
}

impl<F: Fold> Fold for Placed<'_, F> {
    fn add(&mut self, row: Row) {
        if self.sel.wants_place(&row) {
            self.fold.add(row);
        }
    }

    fn add_chunk(
        &mut self,
        chunk: &hot::Chunk,
        sel: &Selection,
        lake_through: u64,
        span: (Micros, Micros),
    ) -> bool {
        sel.filter.bbox.is_none() && self.fold.add_chunk(chunk, sel, lake_through, span)
    }

    fn add_batch(
        &mut self,
        batch: &arrow_array::RecordBatch,
        sel: &Selection,
        span: (Micros, Micros),
    ) -> bool {
        sel.filter.bbox.is_none() && self.fold.add_batch(batch, sel, span)
    }
}

/// The first `k` readings in `order` (ties in log order) at or after the cursor's key.
struct TopK {
    order: Order,
    after: Option<(Micros, CompactString)>,
    k: usize,
    seq: u64,
    heap: BinaryHeap<Ranked>,
}

/// A reading and its place: by (time, sensor) in the order asked, then in log order.
struct Ranked {
    desc: bool,
    seq: u64,
    row: Row,
}

impl Ranked {
    fn cmp_rank(&self, other: &Ranked) -> Ordering {
        let by_key = key_cmp(&self.row, &other.row);
        let by_key = if self.desc { by_key.reverse() } else { by_key };
        by_key.then(self.seq.cmp(&other.seq))
    }
}

impl PartialEq for Ranked {
    fn eq(&self, other: &Self) -> bool {
        self.cmp_rank(other).is_eq()
    }
}
impl Eq for Ranked {}
impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Ranked {
    fn cmp(&self, other: &Self) -> Ordering {
        self.cmp_rank(other)
    }
}

impl TopK {
    fn new(order: Order, cursor: Option<&Cursor>, k: usize) -> TopK {
        TopK {
            order,
            after: cursor.map(|c| (c.ts, c.sensor.clone())),
            k: k.max(1),
            seq: 0,
            heap: BinaryHeap::new(),
        }
    }

    fn into_rows(self) -> Vec<Row> {
        self.heap
            .into_sorted_vec()
            .into_iter()
            .map(|r| r.row)
            .collect()
    }
}

impl Fold for TopK {
    fn add(&mut self, row: Row) {
        if let Some((ts, sensor)) = &self.after {
            let ord = row.ts.cmp(ts).then_with(|| row.sensor_id.cmp(sensor));
            let passed = match self.order {
                Order::Asc => ord.is_lt(),
                Order::Desc => ord.is_gt(),
            };
            if passed {
                return;
            }
        }
        self.seq += 1;
        let ranked = Ranked {
            desc: self.order == Order::Desc,
            seq: self.seq,
            row,
        };
        if self.heap.len() < self.k {
            self.heap.push(ranked);
        } else if self.heap.peek().is_some_and(|worst| ranked < *worst) {
            self.heap.pop();
            self.heap.push(ranked);
        }
    }
}

/// Each sensor's last reading so far.
#[derive(Default)]
struct Latest(HashMap<CompactString, Row>);

impl Fold for Latest {
    fn add(&mut self, row: Row) {
        match self.0.get(&row.sensor_id) {
            Some(best) if best.ts > row.ts => {}
            _ => {
                self.0.insert(row.sensor_id.clone(), row);
            }
        }
    }
}
