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

use std::cmp::Ordering;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use compact_str::CompactString;

use crate::config::QueryConfig;
use crate::feed::session::Filter;
use crate::model::{Dataset, Micros, Values};
use hot::{HotStore, Snapshot};
use lake::LakeError;

pub(crate) const HOUR: Micros = 3_600_000_000;

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
}

impl Selection {
    fn wants_sensor(&self, sensor: &str) -> bool {
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
/// many readings with exactly that key were returned so far (readings may share one).
/// Opaque to clients: `a1764500000000000_2_sensor-1` (order, time, count, sensor).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cursor {
    pub(crate) order: Order,
    pub(crate) ts: Micros,
    pub(crate) seen: u64,
    pub(crate) sensor: CompactString,
}

impl Cursor {
    pub(crate) fn encode(&self) -> String {
        let o = match self.order {
            Order::Asc => 'a',
            Order::Desc => 'd',
        };
        format!("{o}{}_{}_{}", self.ts, self.seen, self.sensor)
    }

    pub(crate) fn decode(text: &str) -> Option<Cursor> {
        let order = match text.as_bytes().first()? {
            b'a' => Order::Asc,
            b'd' => Order::Desc,
            _ => return None,
        };
        let mut parts = text[1..].splitn(3, '_');
        let ts = parts.next()?.parse().ok()?;
        let seen = parts.next()?.parse().ok()?;
        let sensor = parts.next()?;
        crate::model::is_valid_sensor_id(sensor).then(|| Cursor {
            order,
            ts,
            seen,
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
    lake_root: PathBuf,
    pub(crate) config: QueryConfig,
    /// Queries running at once, at most `[query] max_concurrent`.
    pub(crate) permits: tokio::sync::Semaphore,
}

impl QueryService {
    pub fn new(hot: Arc<HotStore>, lake_root: PathBuf, config: QueryConfig) -> Self {
        QueryService {
            hot,
            lake_root,
            permits: tokio::sync::Semaphore::new(config.max_concurrent.max(1)),
            config,
        }
    }

    /// Every reading of `[lo, hi)` in `sel`, unordered: the hot store's, then the lake's
    /// files of the hours that overlap (below the snapshot's boundary).
    async fn window(
        &self,
        sel: &Selection,
        snapshot: &Arc<Snapshot>,
        lo: Micros,
        hi: Micros,
    ) -> Result<Vec<Row>, QueryError> {
        let (sel, snapshot) = (sel.clone(), snapshot.clone());
        let root = self.lake_root.clone();
        let metrics = self.hot.metrics.clone();
        tokio::task::spawn_blocking(move || {
            let mut keep = |_: Micros, sensor: &str| sel.wants_sensor(sensor);
            let mut rows = snapshot.rows(&sel.dataset, lo, hi, &mut keep);
            let hours = lake::hours(&root, &sel.dataset.id, lo, hi, snapshot.lake_through);
            for hour in hours {
                for file in &hour.files {
                    metrics.file_read();
                    lake::read_file(file, &sel.dataset, lo, hi, &mut keep, &mut rows)?;
                }
            }
            rows.retain(|r| sel.wants_place(r));
            Ok(rows)
        })
        .await
        .map_err(|e| QueryError::Task(e.to_string()))?
    }

    /// The hours of `[from, to)` that hold readings of `sel`'s dataset, as hour starts:
    /// the lake's partitions and the hot store's times.
    fn hours_with_data(&self, sel: &Selection, snapshot: &Snapshot) -> Vec<Micros> {
        let mut hours: Vec<Micros> = lake::hours(
            &self.lake_root,
            &sel.dataset.id,
            sel.from,
            sel.to,
            snapshot.lake_through,
        )
        .into_iter()
        .map(|h| h.start)
        .collect();
        hours.extend(snapshot.hours(sel.from, sel.to));
        hours.sort_unstable();
        hours.dedup();
        hours
    }

    /// A page of at most `limit` raw readings of `sel` in `order` by (time, sensor), after
    /// `cursor`.
    pub(crate) async fn history(
        &self,
        sel: &Selection,
        order: Order,
        limit: usize,
        cursor: Option<&Cursor>,
    ) -> Result<Page, QueryError> {
        let snapshot = Arc::new(self.hot.snapshot(&sel.dataset.id));
        let mut hours = self.hours_with_data(sel, &snapshot);
        // Hours wholly passed by the cursor need no reading.
        if let Some(c) = cursor {
            let hour = c.ts - c.ts.rem_euclid(HOUR);
            match order {
                Order::Asc => hours.retain(|&h| h >= hour),
                Order::Desc => hours.retain(|&h| h <= hour),
            }
        }
        if order == Order::Desc {
            hours.reverse();
        }
        let mut out: Vec<Row> = Vec::new();
        // Readings of the cursor's own key that earlier pages returned.
        let mut skip = cursor.map_or(0, |c| c.seen);
        // How many readings of the last returned key were returned, earlier pages included.
        let mut run = 0u64;
        for hour in hours {
            let (lo, hi) = (hour.max(sel.from), (hour + HOUR).min(sel.to));
            let mut rows = self.window(sel, &snapshot, lo, hi).await?;
            match order {
                Order::Asc => rows.sort_by(key_cmp),
                Order::Desc => rows.sort_by(|a, b| key_cmp(b, a)),
            }
            for row in rows {
                let at_cursor = match cursor {
                    Some(c) => {
                        let ord = row.ts.cmp(&c.ts).then_with(|| row.sensor_id.cmp(&c.sensor));
                        let passed = match order {
                            Order::Asc => ord == Ordering::Less,
                            Order::Desc => ord == Ordering::Greater,
                        };
                        if passed {
                            continue;
                        }
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

    /// The last reading (by device time) of every sensor in `sel` within its range.
    pub(crate) async fn latest(&self, sel: &Selection) -> Result<Vec<Row>, QueryError> {
        let snapshot = Arc::new(self.hot.snapshot(&sel.dataset.id));
        let mut hours = self.hours_with_data(sel, &snapshot);
        hours.reverse();
        let mut best: HashMap<CompactString, Row> = HashMap::new();
        for hour in hours {
            let (lo, hi) = (hour.max(sel.from), (hour + HOUR).min(sel.to));
            for row in self.window(sel, &snapshot, lo, hi).await? {
                match best.get(&row.sensor_id) {
                    Some(b) if b.ts > row.ts => {}
                    _ => {
                        best.insert(row.sensor_id.clone(), row);
                    }
                }
            }
        }
        let mut rows: Vec<Row> = best.into_values().collect();
        rows.sort_by(|a, b| a.sensor_id.cmp(&b.sensor_id));
        Ok(rows)
    }

    /// Time buckets of `sel` (see [`aggregate`]). `Err(Ok(n))`: more than `max_rows` rows.
    pub(crate) async fn aggregate(
        &self,
        sel: &Selection,
        spec: &aggregate::Spec,
    ) -> Result<Result<Vec<aggregate::Bucket>, aggregate::TooMany>, QueryError> {
        let snapshot = Arc::new(self.hot.snapshot(&sel.dataset.id));
        let hours = self.hours_with_data(sel, &snapshot);
        let mut acc = aggregate::Accumulator::new(spec, self.config.max_rows);
        for hour in hours {
            let (lo, hi) = (hour.max(sel.from), (hour + HOUR).min(sel.to));
            let rows = self.window(sel, &snapshot, lo, hi).await?;
            if let Err(too_many) = acc.add(&rows) {
                return Ok(Err(too_many));
            }
        }
        Ok(Ok(acc.finish()))
    }
}
