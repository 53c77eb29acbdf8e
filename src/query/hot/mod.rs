//! The hot store: every dataset's acknowledged readings of the last `[query] hot_window`, in
//! memory, in columnar chunks (Arrow arrays) in log order.
//!
//! It is a log consumer like the sinks, fed from the log's in-memory tail, so a reading is in
//! it as soon as its record is committed; a query first waits until the store has taken in
//! every record committed when the query started ([`HotStore::catch_up`]): what was
//! acknowledged is visible (read your writes).
//!
//! **Exactly once with the lake.** Each dataset keeps a boundary, `lake_through`: readings of
//! records up to it are read from the Parquet files, later ones from here. The boundary is
//! always a value the dataset's Parquet sink once stored as its checkpoint: every record up
//! to such a value is in files named by ranges that end at or below it, and every file
//! written later (a replay too) starts above it, so the files split cleanly at the boundary
//! (`lake::files` keeps those whose range ends at or below it). A chunk leaves memory only
//! once the sink has written its records; the boundary then moves to the first stored
//! checkpoint at or after the chunk's last record, and the few rows of later chunks at or
//! below it are masked, never returned twice.
//!
//! After a restart the store starts empty at the sinks' checkpoints and fills from the log's
//! replay; older readings come from the lake. It holds no segment of the log longer than the
//! sinks do: its place in the log is kept in memory only ([`crate::wal::Wal::hold`]).
//!
//! **Other nodes' readings** (`[cluster]`) are kept beside this node's, a part per node and
//! dataset in that node's log order. With each node's lake its own they leave by the window
//! and the budget alone (this node's lake never holds them); with a lake in object storage
//! each part keeps a boundary as this node's does, at its node's mark there (the last record
//! whose files are all uploaded, looked up every five seconds), and a query reads that
//! node's files up to it and its rows after it from here.

mod chunk;
mod store;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use compact_str::CompactString;

pub(crate) use chunk::{Chunk, field_map};
pub use store::HotStore;

use super::Row;
use crate::model::{Dataset, Micros, Reading, Values};

/// The log consumer name of the hot store (held in memory only).
const CONSUMER: &str = "hot-store";
/// Rows gathered before they become a columnar chunk...
const CHUNK_ROWS: usize = 8192;
/// ...or once the oldest of them has waited this long.
const CHUNK_AGE: Micros = 30_000_000;
/// Sensors whose last reading one dataset's index keeps at most; past it `latest` scans.
const LAST_MAX: usize = 200_000;
/// How often the store seals aged rows and lets chunks go.
const TICK: Duration = Duration::from_millis(500);
/// Records read from the disk at a time (replay after a restart).
const DISK_BATCH: usize = 1024;

/// What the hot store keeps and for how long.
#[derive(Clone, Debug)]
pub struct HotLimits {
    pub window: Duration,
    pub max_bytes: usize,
    /// How far back each sensor's last reading is looked for in the lake at start.
    pub latest_lookback: Duration,
}

/// A committed record not yet in a chunk: the readings as intake decoded them (shared).
#[derive(Debug, Clone)]
pub(crate) struct Open {
    lsn: u64,
    dataset: Arc<Dataset>,
    readings: Arc<Vec<Reading>>,
}

/// One dataset in the hot store.
#[derive(Debug, Default)]
struct DatasetHot {
    lake_through: u64,
    /// Checkpoints of the dataset's Parquet sink seen since `lake_through`, oldest first:
    /// the places the boundary may move to.
    marks: VecDeque<u64>,
    chunks: VecDeque<Arc<Chunk>>,
    open: Vec<Open>,
    open_rows: usize,
    open_since: Micros,
    /// The earliest device time among the open rows.
    open_min_ts: Micros,
    bytes: usize,
    /// Each sensor's last reading by device time (of equal times, the last logged), in
    /// the schema it came in: what `latest` answers from, once `seeded` (the lake's recent
    /// past is in it) and while `complete` (never more than [`LAST_MAX`] sensors).
    last: HashMap<CompactString, (Arc<Dataset>, Reading)>,
    seeded: bool,
    overfull: bool,
    /// Another node's readings of the dataset (`[cluster]`): their lake is not this node's,
    /// so chunks leave by the window and the budget alone, and no boundary masks them.
    remote: bool,
}

impl DatasetHot {
    fn take(&mut self, record: Open, now: Micros) {
        self.note_last(&record);
        self.append(record, now);
    }

    /// Adds a record's rows (those above the lake's boundary).
    fn append(&mut self, record: Open, now: Micros) {
        if record.lsn <= self.lake_through {
            return;
        }
        if let Some(last) = self.open.last()
            && !Arc::ptr_eq(&last.dataset, &record.dataset)
            && last.dataset.fields != record.dataset.fields
        {
            self.seal();
        }
        if self.open.is_empty() {
            self.open_since = now;
            self.open_min_ts = Micros::MAX;
        }
        for r in record.readings.iter() {
            self.open_min_ts = self.open_min_ts.min(r.ts);
        }
        self.open_rows += record.readings.len();
        self.open.push(record);
        if self.open_rows >= CHUNK_ROWS {
            self.seal();
        }
    }

    /// Keeps each sensor's last reading (log order: a later equal time replaces).
    fn note_last(&mut self, record: &Open) {
        for r in record.readings.iter() {
            if let Some((ds, last)) = self.last.get_mut(&r.sensor_id) {
                if r.ts >= last.ts {
                    *ds = record.dataset.clone();
                    *last = r.clone();
                }
            } else if self.last.len() < LAST_MAX {
                self.last
                    .insert(r.sensor_id.clone(), (record.dataset.clone(), r.clone()));
            } else {
                self.overfull = true;
            }
        }
    }

    fn seal(&mut self) {
        let Some(first) = self.open.first() else {
            return;
        };
        let chunk = Chunk::build(first.dataset.clone(), &self.open);
        self.bytes += chunk.bytes;
        self.chunks.push_back(Arc::new(chunk));
        self.open.clear();
        self.open_rows = 0;
    }

    /// Notes the sink's checkpoint; lets chunks go that are in the lake and either older
    /// than `oldest` or over the byte budget (`over`). Returns the bytes freed.
    fn tidy(&mut self, checkpoint: u64, oldest: Micros, mut over: usize, now: Micros) -> usize {
        // Rows wait to fill a chunk, but not past its age, nor past the window (only a
        // chunk can leave).
        if !self.open.is_empty()
            && (now - self.open_since >= CHUNK_AGE || self.open_min_ts < oldest)
        {
            self.seal();
        }
        if self.chunks.is_empty() && self.open.is_empty() {
            // Nothing here to lose: the lake has everything up to the checkpoint.
            self.lake_through = self.lake_through.max(checkpoint);
            self.marks.clear();
            return 0;
        }
        if checkpoint > self.lake_through && self.marks.back() != Some(&checkpoint) {
            self.marks.push_back(checkpoint);
        }
        let mut freed = 0;
        while let Some(front) = self.chunks.front() {
            if front.max_ts >= oldest && over == 0 {
                break;
            }
            // A chunk wholly at or below the boundary is the lake's already; else the
            // boundary moves to the first stored checkpoint at or after its last record.
            if !self.remote && front.last_lsn > self.lake_through {
                let Some(&mark) = self.marks.iter().find(|&&m| m >= front.last_lsn) else {
                    break;
                };
                self.lake_through = mark;
                while self.marks.front().is_some_and(|&m| m <= mark) {
                    self.marks.pop_front();
                }
            }
            let bytes = front.bytes;
            self.chunks.pop_front();
            self.bytes -= bytes;
            freed += bytes;
            over = over.saturating_sub(bytes);
        }
        freed
    }
}

/// What a query reads of one dataset: taken under its lock, read without it.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    /// Readings of records up to here are the lake's.
    pub(crate) lake_through: u64,
    chunks: Vec<Arc<Chunk>>,
    open: Vec<Open>,
    /// Other nodes' parts of the dataset (`[cluster]`), by node: each with no boundary, or,
    /// with a lake in object storage, its node's mark there.
    remote: Vec<Snapshot>,
    /// The node of a remote part.
    node: String,
    /// With a lake in object storage: every node's mark (the other nodes' files are read up
    /// to it, their readings after it from here).
    pub(crate) marks: Option<Arc<HashMap<String, u64>>>,
}

impl Snapshot {
    /// Takes the other nodes' marks in the shared lake: their readings up to a mark are read
    /// from their files, so masked here.
    pub(crate) fn mark_others(&mut self, marks: &HashMap<String, u64>) {
        let mut marks = marks.clone();
        for part in &mut self.remote {
            // A part may have moved past the mark fetched (its chunks left on a newer one):
            // files and memory split at the later of the two.
            let mark = marks.entry(part.node.clone()).or_default();
            *mark = (*mark).max(part.lake_through);
            part.lake_through = *mark;
        }
        self.marks = Some(Arc::new(marks));
    }

    /// This node's part, then the other nodes'.
    fn parts(&self) -> impl Iterator<Item = &Snapshot> {
        std::iter::once(self).chain(self.remote.iter())
    }

    /// [`Snapshot::scan`] into a fold, which takes whole chunks from their columns when it
    /// can.
    pub(crate) fn scan_fold(
        &self,
        sel: &super::Selection,
        span: (Micros, Micros),
        keep: &mut dyn FnMut(Micros, &str) -> bool,
        fold: &mut dyn super::Fold,
    ) -> crate::telemetry::Scanned {
        let mut scanned = crate::telemetry::Scanned::default();
        for part in self.parts() {
            let s = part.scan_fold_part(sel, span, keep, fold);
            scanned.rows += s.rows;
        }
        scanned
    }

    fn scan_fold_part(
        &self,
        sel: &super::Selection,
        (from, to): (Micros, Micros),
        keep: &mut dyn FnMut(Micros, &str) -> bool,
        fold: &mut dyn super::Fold,
    ) -> crate::telemetry::Scanned {
        let mut scanned = crate::telemetry::Scanned::default();
        let mut rest = Snapshot {
            lake_through: self.lake_through,
            open: self.open.clone(),
            ..Snapshot::default()
        };
        for chunk in &self.chunks {
            let overlaps = chunk.max_ts >= from && chunk.min_ts < to;
            if !overlaps || chunk.last_lsn <= self.lake_through {
                continue;
            }
            scanned.rows += chunk.rows() as u64;
            if !fold.add_chunk(chunk, sel, self.lake_through, (from, to)) {
                rest.chunks.push(chunk.clone());
            }
        }
        scanned.rows += self
            .open
            .iter()
            .filter(|r| r.lsn > self.lake_through)
            .map(|r| r.readings.len() as u64)
            .sum::<u64>();
        rest.scan_part(&sel.dataset, (from, to), keep, &mut |row| fold.add(row));
        scanned
    }

    /// Hands `out` every row of the snapshot in `[from, to)` whose time and sensor `keep`
    /// accepts, in `target`'s schema, in log order (this node's, then each other node's).
    #[cfg(test)]
    pub(crate) fn scan(
        &self,
        target: &Dataset,
        span: (Micros, Micros),
        keep: &mut dyn FnMut(Micros, &str) -> bool,
        out: &mut dyn FnMut(Row),
    ) {
        for part in self.parts() {
            part.scan_part(target, span, keep, out);
        }
    }

    fn scan_part(
        &self,
        target: &Dataset,
        (from, to): (Micros, Micros),
        keep: &mut dyn FnMut(Micros, &str) -> bool,
        out: &mut dyn FnMut(Row),
    ) {
        let mut keep = |ts: Micros, sensor: &str| ts >= from && ts < to && keep(ts, sensor);
        for chunk in &self.chunks {
            if chunk.max_ts < from || chunk.min_ts >= to {
                continue;
            }
            chunk.rows_into(self.lake_through, target, &mut keep, out);
        }
        for record in &self.open {
            if record.lsn <= self.lake_through {
                continue;
            }
            let map = field_map(&record.dataset, target);
            for r in record.readings.iter() {
                if !keep(r.ts, &r.sensor_id) {
                    continue;
                }
                let mut values: Values = smallvec::smallvec![None; target.fields.len()];
                for (to, from) in map.iter().enumerate() {
                    if let Some(from) = *from {
                        values[to] = r.values.get(from).cloned().flatten();
                    }
                }
                out(Row {
                    sensor_id: r.sensor_id.clone(),
                    ts: r.ts,
                    values,
                    lat: r.lat,
                    lon: r.lon,
                });
            }
        }
    }

    /// The starts of the hours in `[from, to)` the snapshot may hold readings of.
    pub(crate) fn hours(&self, from: Micros, to: Micros) -> Vec<Micros> {
        let hour = |t: Micros| t - t.rem_euclid(super::HOUR);
        let mut hours = Vec::new();
        for chunk in self.parts().flat_map(|p| &p.chunks) {
            let (lo, hi) = (chunk.min_ts.max(from), chunk.max_ts.min(to - 1));
            let mut h = hour(lo);
            while h <= hi {
                hours.push(h);
                h += super::HOUR;
            }
        }
        for record in self.parts().flat_map(|p| &p.open) {
            for r in record.readings.iter() {
                if r.ts >= from && r.ts < to {
                    hours.push(hour(r.ts));
                }
            }
        }
        hours.sort_unstable();
        hours.dedup();
        hours
    }
}

/// Figures for the metrics and the benchmark.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct HotFigures {
    pub(crate) chunk_bytes: usize,
    pub(crate) chunk_rows: usize,
    pub(crate) open_rows: usize,
}
