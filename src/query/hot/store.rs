//! The hot store itself: every dataset's part, the log consumer that fills them, the
//! read-your-writes wait, the tidying that lets chunks go, and the per-sensor last-reading
//! index (`latest`), seeded from the lake at start.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use compact_str::CompactString;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::chunk::field_map;
use super::{
    CONSUMER, DISK_BATCH, DatasetHot, HotFigures, HotLimits, LAST_MAX, Open, Snapshot, TICK,
};
use crate::model::{Dataset, Micros, Reading, Values, now_micros};
use crate::query::Row;
use crate::registry::Registry;
use crate::sink::parquet::ParquetSink;
use crate::telemetry::QueryMetrics;
use crate::wal::{Consumer, Record, Wal, record};

/// One dataset's readings of one node, under its lock.
type Part = Arc<Mutex<DatasetHot>>;

/// Every dataset's recent readings (see the module header).
#[derive(Debug)]
pub struct HotStore {
    datasets: RwLock<HashMap<String, Part>>,
    /// Other nodes' readings (`[cluster]`), by node and dataset, in each node's log order.
    remote: RwLock<HashMap<(String, String), Part>>,
    /// With a lake in object storage (shared by the nodes): each other node's last known
    /// mark per dataset. Its part then keeps a boundary as this node's does, and lets a
    /// chunk go only once the node's files hold it; without one (each node's lake its own)
    /// the other nodes' chunks go by the window and the budget alone.
    shared_marks: Option<Mutex<HashMap<(String, String), u64>>>,
    /// The last LSN taken in.
    applied: watch::Sender<u64>,
    wal: Wal,
    limits: HotLimits,
    pub(crate) metrics: QueryMetrics,
    /// Every dataset known at start has its last readings from the lake.
    seeded: std::sync::atomic::AtomicBool,
}

impl HotStore {
    /// A store; `shared_lake`: the lake is in object storage, shared by the nodes.
    pub fn new(
        wal: Wal,
        limits: HotLimits,
        metrics: QueryMetrics,
        shared_lake: bool,
    ) -> Arc<HotStore> {
        Arc::new(HotStore {
            datasets: RwLock::new(HashMap::new()),
            remote: RwLock::new(HashMap::new()),
            shared_marks: shared_lake.then(|| Mutex::new(HashMap::new())),
            applied: watch::Sender::new(0),
            wal,
            limits,
            metrics,
            seeded: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The sink's checkpoint of `dataset`: where its lake ends.
    fn lake_checkpoint(&self, dataset: &str) -> u64 {
        self.wal
            .position_of(&ParquetSink::consumer_name(dataset))
            .unwrap_or(0)
    }

    fn entry(&self, dataset: &str) -> Part {
        if let Some(d) = self
            .datasets
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(dataset)
        {
            return d.clone();
        }
        let lake_through = self.lake_checkpoint(dataset);
        // A dataset first seen after the start's seeding has nothing older in the lake.
        let seeded = self.seeded.load(std::sync::atomic::Ordering::Acquire);
        self.datasets
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(dataset.to_string())
            .or_insert_with(|| {
                Arc::new(Mutex::new(DatasetHot {
                    lake_through,
                    seeded,
                    ..DatasetHot::default()
                }))
            })
            .clone()
    }

    /// What a query of `dataset` reads here.
    pub(crate) fn snapshot(&self, dataset: &str) -> Snapshot {
        let entry = self.entry(dataset);
        let mut snapshot = part_of(&entry);
        // By node, so that pages of one query read them in one order.
        let mut remote: Vec<(String, Part)> = self
            .remote
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|((_, id), _)| id == dataset)
            .map(|((node, _), d)| (node.clone(), d.clone()))
            .collect();
        remote.sort_by(|a, b| a.0.cmp(&b.0));
        snapshot.remote = remote
            .iter()
            .map(|(node, d)| Snapshot {
                node: node.clone(),
                ..part_of(d)
            })
            .collect();
        snapshot
    }

    /// Notes the other nodes' marks of `dataset` in the shared lake (marks only move on).
    pub(crate) fn note_marks(&self, dataset: &str, marks: &HashMap<String, u64>) {
        let Some(known) = &self.shared_marks else {
            return;
        };
        let mut known = known.lock().unwrap_or_else(|e| e.into_inner());
        for (node, &mark) in marks {
            let m = known
                .entry((node.clone(), dataset.to_string()))
                .or_default();
            *m = (*m).max(mark);
        }
    }

    /// The datasets other nodes' readings are held of.
    pub(crate) fn remote_datasets(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .remote
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .map(|(_, id)| id.clone())
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }

    /// Takes in a record another node acknowledged (`[cluster]`): its rows beside this
    /// node's, its readings in the dataset's last-reading index.
    pub(crate) fn take_remote(
        &self,
        node: &str,
        lsn: u64,
        dataset: Arc<Dataset>,
        readings: Arc<Vec<Reading>>,
    ) {
        let record = Open {
            lsn,
            dataset,
            readings,
        };
        let now = now_micros();
        self.entry(&record.dataset.id)
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .note_last(&record);
        let key = (node.to_string(), record.dataset.id.clone());
        let part = self
            .remote
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned();
        let part = part.unwrap_or_else(|| {
            self.remote
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .entry(key)
                .or_insert_with(|| {
                    Arc::new(Mutex::new(DatasetHot {
                        remote: self.shared_marks.is_none(),
                        ..DatasetHot::default()
                    }))
                })
                .clone()
        });
        part.lock()
            .unwrap_or_else(|e| e.into_inner())
            .append(record, now);
    }

    /// The last reading of every sensor `sel` wants within its range, from the index:
    /// `None` when the index cannot answer alone (not seeded yet, over its size, or a
    /// sensor's last reading is past the range's end, so an earlier one is wanted).
    pub(crate) fn latest(&self, sel: &crate::query::Selection) -> Option<Vec<Row>> {
        let entry = self.entry(&sel.dataset.id);
        let d = entry.lock().unwrap_or_else(|e| e.into_inner());
        if !d.seeded || d.overfull {
            return None;
        }
        let mut maps: Vec<(*const Dataset, Vec<Option<usize>>)> = Vec::new();
        let mut rows = Vec::new();
        for (sensor, (ds, r)) in &d.last {
            if !sel.wants_sensor(sensor) || r.ts < sel.from {
                continue;
            }
            if r.ts >= sel.to {
                return None;
            }
            let map = match maps.iter().find(|(p, _)| *p == Arc::as_ptr(ds)) {
                Some((_, m)) => m,
                None => {
                    maps.push((Arc::as_ptr(ds), field_map(ds, &sel.dataset)));
                    &maps.last().expect("just pushed").1
                }
            };
            let mut values: Values = smallvec::smallvec![None; sel.dataset.fields.len()];
            for (to, from) in map.iter().enumerate() {
                if let Some(from) = *from {
                    values[to] = r.values.get(from).cloned().flatten();
                }
            }
            let row = Row {
                sensor_id: r.sensor_id.clone(),
                ts: r.ts,
                values,
                lat: r.lat,
                lon: r.lon,
            };
            if sel.wants_place(&row) {
                rows.push(row);
            }
        }
        rows.sort_by(|a, b| a.sensor_id.cmp(&b.sensor_id));
        Some(rows)
    }

    /// Puts the lake's last readings of the recent past into each dataset's index (older
    /// than what the log brought since, or else left out). Blocking.
    fn seed(&self, lake: &crate::query::lake::Lake, registry: &Registry) {
        let now = now_micros();
        let from = now - self.limits.latest_lookback.as_micros() as Micros;
        for entry in registry.all() {
            let ds = entry.dataset.clone();
            let mut best: HashMap<CompactString, Row> = HashMap::new();
            // An index that missed part of the lake is not used (`latest` reads the range
            // instead) until the next start.
            let mut complete = true;
            let hours = crate::query::lake::hours_in(lake, &ds.id, (from, Micros::MAX), u64::MAX, None)
                .unwrap_or_else(|e| {
                    tracing::warn!(error = %e, dataset = %ds.id, "the latest readings index cannot list the lake");
                    complete = false;
                    Vec::new()
                });
            for hour in hours {
                for file in &hour.files {
                    let mut keep = |_: Micros, _: &str| true;
                    let mut add = |row: Row| match best.get(&row.sensor_id) {
                        Some(b) if b.ts > row.ts => {}
                        _ => {
                            best.insert(row.sensor_id.clone(), row);
                        }
                    };
                    if let Err(e) = crate::query::lake::read_file(
                        lake,
                        file,
                        &ds,
                        from,
                        Micros::MAX,
                        &mut keep,
                        &mut add,
                    ) {
                        tracing::warn!(error = %e, "the latest readings index skips a lake file");
                        complete = false;
                    }
                }
            }
            let hot = self.entry(&ds.id);
            let mut d = hot.lock().unwrap_or_else(|e| e.into_inner());
            for (sensor, row) in best {
                let older = d.last.get(&sensor).is_none_or(|(_, r)| r.ts < row.ts);
                if !older {
                    continue;
                }
                if d.last.len() >= LAST_MAX && !d.last.contains_key(&sensor) {
                    d.overfull = true;
                    continue;
                }
                let reading = Reading {
                    sensor_id: sensor.clone(),
                    ts: row.ts,
                    ts_missing: false,
                    received_at: row.ts,
                    values: row.values,
                    lat: row.lat,
                    lon: row.lon,
                    seq: None,
                };
                d.last.insert(sensor, (ds.clone(), reading));
            }
            d.seeded = complete;
        }
        self.seeded
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Where `dataset`'s sensors were at their last reading (longitude, latitude), of the
    /// sensors whose last reading had a position: at most `max`, and whether that is all
    /// (false until the index is seeded, when it is over its size, or past `max`).
    pub(crate) fn positions(&self, dataset: &str, max: usize) -> (Vec<[f64; 2]>, bool) {
        let entry = self.entry(dataset);
        let d = entry.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for (_, r) in d.last.values() {
            if let (Some(lon), Some(lat)) = (r.lon, r.lat) {
                if out.len() == max {
                    return (out, false);
                }
                out.push([lon, lat]);
            }
        }
        (out, d.seeded && !d.overfull)
    }

    /// Waits until every record committed now is in the store (false: not within
    /// `timeout`, or the store stopped).
    pub(crate) async fn catch_up(&self, timeout: Duration) -> bool {
        let target = self.wal.committed_lsn();
        let mut applied = self.applied.subscribe();
        tokio::time::timeout(timeout, applied.wait_for(|&lsn| lsn >= target))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Every part: `(dataset, None)` this node's, `(dataset, Some(node))` another node's.
    fn parts(&self) -> Vec<(String, Option<String>, Part)> {
        let mut parts: Vec<_> = self
            .datasets
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(id, d)| (id.clone(), None, d.clone()))
            .collect();
        parts.extend(
            self.remote
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|((node, id), d)| (id.clone(), Some(node.clone()), d.clone())),
        );
        parts
    }

    pub(crate) fn figures(&self) -> HotFigures {
        let mut f = HotFigures::default();
        for (_, _, d) in self.parts() {
            let d = d.lock().unwrap_or_else(|e| e.into_inner());
            f.chunk_bytes += d.bytes;
            f.chunk_rows += d.chunks.iter().map(|c| c.rows()).sum::<usize>();
            f.open_rows += d.open_rows;
        }
        f
    }

    fn take(&self, record: Open, now: Micros) {
        let entry = self.entry(&record.dataset.id);
        entry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take(record, now);
    }

    /// Seals aged rows and lets chunks go: those past the window, then the oldest while the
    /// store is over its byte budget (only ever what the lake already has).
    fn tidy(&self, now: Micros) {
        let oldest = now - self.limits.window.as_micros() as Micros;
        let entries = self.parts();
        let mut total: usize = entries
            .iter()
            .map(|(_, _, d)| d.lock().unwrap_or_else(|e| e.into_inner()).bytes)
            .sum();
        for (id, node, d) in entries {
            // Another node's part: its node's mark in a shared lake; else no boundary.
            let checkpoint = match (node, &self.shared_marks) {
                (None, _) => self.lake_checkpoint(&id),
                (Some(node), Some(marks)) => marks
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&(node, id))
                    .copied()
                    .unwrap_or(0),
                (Some(_), None) => 0,
            };
            let over = total.saturating_sub(self.limits.max_bytes);
            let freed = d
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .tidy(checkpoint, oldest, over, now);
            total = total.saturating_sub(freed);
        }
        let f = self.figures();
        self.metrics
            .set_hot(f.chunk_bytes, f.chunk_rows + f.open_rows);
    }

    /// Runs the store until `stop`; should it fail (a bug), it says so and stops holding
    /// the log, so that intake goes on (queries then answer 503: not caught up).
    pub(crate) async fn run_supervised(
        self: Arc<Self>,
        registry: Arc<Registry>,
        lake: crate::query::lake::Lake,
        stop: CancellationToken,
    ) {
        if let crate::query::lake::Lake::Object(o) = &lake {
            tokio::spawn(self.clone().follow_marks(o.clone(), stop.clone()));
        }
        let run = tokio::spawn(self.clone().run(registry, lake, stop));
        if let Err(e) = run.await {
            tracing::error!(error = %e, "the hot store failed: history queries stop until a restart");
            self.wal.release(CONSUMER);
        }
    }

    /// With a shared lake: notes the other nodes' marks of the datasets it holds readings
    /// of, every five seconds (one listing per dataset), so that their chunks leave once
    /// their files hold them.
    async fn follow_marks(
        self: Arc<Self>,
        lake: Arc<crate::sink::lake::ObjectLake>,
        stop: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            for id in self.remote_datasets() {
                match lake.marks(&id).await {
                    Ok(marks) => self.note_marks(&id, &marks),
                    Err(e) => {
                        tracing::warn!(dataset = %id, error = %e, "cannot list the other nodes' marks in the lake")
                    }
                }
            }
        }
    }

    /// Runs the store: takes in every committed record until `stop`.
    pub(crate) async fn run(
        self: Arc<Self>,
        registry: Arc<Registry>,
        lake: crate::query::lake::Lake,
        stop: CancellationToken,
    ) {
        // Each sensor's last reading from the lake, beside the log's replay.
        tokio::task::spawn_blocking({
            let (store, registry) = (self.clone(), registry.clone());
            move || store.seed(&lake, &registry)
        });
        // Start where the lake ends: the lowest checkpoint of any dataset's sink.
        let start = registry
            .all()
            .iter()
            .map(|e| self.lake_checkpoint(&e.dataset.id))
            .min()
            .unwrap_or(0);
        self.wal.hold(CONSUMER, start);
        let mut consumer = self.wal.consumer(start);
        self.applied.send_replace(start);
        let mut committed = self.wal.committed();
        let mut tick = tokio::time::interval(TICK);
        loop {
            let upto = *committed.borrow_and_update();
            if consumer.position() < upto {
                let now = now_micros();
                let in_memory = consumer.read_memory(upto, |record| {
                    if let Record::Memory(c) = record {
                        self.take(
                            Open {
                                lsn: c.lsn,
                                dataset: c.dataset.clone(),
                                readings: c.readings.clone(),
                            },
                            now,
                        );
                    }
                    true
                });
                if !in_memory {
                    let at = consumer.position();
                    consumer = match self.read_disk(consumer, upto, &registry).await {
                        Ok(c) => c,
                        Err(()) => {
                            // Retried after a pause, as the sinks do; the log keeps the
                            // records meanwhile (this store holds it).
                            tokio::select! {
                                _ = stop.cancelled() => return,
                                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                            }
                            self.wal.consumer(at)
                        }
                    };
                }
                self.applied.send_replace(consumer.position());
                continue;
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                changed = committed.changed() => if changed.is_err() { return },
                _ = tick.tick() => {
                    self.wal.hold(CONSUMER, consumer.position());
                    self.tidy(now_micros());
                }
            }
        }
    }

    /// Reads up to [`DISK_BATCH`] records from the disk on a blocking thread (the replay
    /// after a restart) and takes them in. `Err`: the log could not be read (logged); the
    /// caller starts again where it was.
    async fn read_disk(
        &self,
        mut consumer: Consumer,
        upto: u64,
        registry: &Arc<Registry>,
    ) -> Result<Consumer, ()> {
        let registry = registry.clone();
        let read = tokio::task::spawn_blocking(move || {
            let mut records = Vec::new();
            let result = consumer.read(upto, |record| {
                match record {
                    Record::Memory(c) => records.push(Open {
                        lsn: c.lsn,
                        dataset: c.dataset.clone(),
                        readings: c.readings.clone(),
                    }),
                    Record::Disk { lsn, payload } => {
                        if let Some(open) = decode(lsn, payload, &registry) {
                            records.push(open);
                        }
                    }
                }
                records.len() < DISK_BATCH
            });
            let failed = result.map_err(|e| {
                tracing::error!(error = %e, "the hot store cannot read the WAL; retrying");
            });
            (consumer, records, failed)
        })
        .await
        .map_err(|e| tracing::error!(error = %e, "the hot store's log read failed; retrying"))?;
        let (consumer, records, failed) = read;
        let now = now_micros();
        for record in records {
            self.take(record, now);
        }
        failed.map(|()| consumer)
    }
}

/// What a query reads of one part.
fn part_of(entry: &Mutex<DatasetHot>) -> Snapshot {
    let d = entry.lock().unwrap_or_else(|e| e.into_inner());
    Snapshot {
        lake_through: d.lake_through,
        chunks: d.chunks.iter().cloned().collect(),
        open: d.open.clone(),
        ..Snapshot::default()
    }
}

/// A record from the disk, decoded in its dataset's schema (`None`: a dataset no longer
/// here, or a record the sinks skip too).
fn decode(lsn: u64, payload: &[u8], registry: &Registry) -> Option<Open> {
    let header = record::header(payload).ok()?;
    let entry = registry.get(header.dataset)?;
    let mut readings = Vec::new();
    record::decode_into(payload, &entry.dataset, &mut readings).ok()?;
    Some(Open {
        lsn,
        dataset: entry.dataset.clone(),
        readings: Arc::new(readings),
    })
}
