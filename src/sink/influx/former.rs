//! Batch forming: reading log records into batches of line-protocol points, with every
//! dataset's [`Shape`] and the schema conversions a record of another version needs.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use tokio::time::Instant;

use super::line::Shape;
use crate::model::{Dataset, Micros, Reading};
use crate::registry::Registry;
use crate::wal::{Consumer, Record, record};

/// A point waiting to be written: the shape that wrote it and its line in the batch's text.
/// The lines of a batch's points follow each other, so any run of points is one slice.
pub(super) struct Point {
    pub(super) shape: usize,
    pub(super) line: std::ops::Range<usize>,
}

/// Points gathered for one write, and the last log record they come from.
#[derive(Default)]
pub(super) struct Batch {
    pub(super) text: String,
    pub(super) points: Vec<Point>,
    pub(super) last_lsn: u64,
    pub(super) since: Option<Instant>,
    pub(super) oldest_appended: Option<Micros>,
}

/// Every dataset's shape, by position (append-only: positions stay valid), and the position
/// of each dataset id. Datasets created while running get their shape on first sight.
#[derive(Debug, Default)]
pub(super) struct Shapes {
    all: Vec<Arc<Shape>>,
    pub(super) by_id: HashMap<String, usize>,
}

impl Shapes {
    pub(super) fn add(&mut self, dataset: Arc<Dataset>) -> usize {
        let index = self.all.len();
        self.by_id.insert(dataset.id.clone(), index);
        self.all.push(Arc::new(Shape::new(dataset)));
        index
    }

    pub(super) fn get(shapes: &RwLock<Shapes>, index: usize) -> Arc<Shape> {
        shapes.read().unwrap_or_else(|e| e.into_inner()).all[index].clone()
    }

    /// The shape of dataset `id` and its position; `None` for a dataset the gateway does
    /// not know (its records are skipped).
    fn find(this: &RwLock<Shapes>, registry: &Registry, id: &str) -> Option<(usize, Arc<Shape>)> {
        {
            let shapes = this.read().unwrap_or_else(|e| e.into_inner());
            if let Some(&index) = shapes.by_id.get(id) {
                return Some((index, shapes.all[index].clone()));
            }
        }
        let dataset = registry.get(id)?.dataset.clone();
        let mut shapes = this.write().unwrap_or_else(|e| e.into_inner());
        let index = match shapes.by_id.get(id) {
            Some(&index) => index,
            None => shapes.add(dataset),
        };
        Some((index, shapes.all[index].clone()))
    }
}

/// Reads the log and turns its records into batches of points: blocking file reads and the
/// CPU work of the sink, run off the async threads while earlier batches are being sent.
pub(super) struct Former {
    pub(super) consumer: Consumer,
    pub(super) shapes: Arc<RwLock<Shapes>>,
    pub(super) registry: Arc<Registry>,
    pub(super) batch_size: usize,
    pub(super) batch: Batch,
    pub(super) readings: Vec<Reading>,
}

/// Whether readings of `a` are laid out as `b`'s (fields of the same names, in order).
fn same_fields(a: &Dataset, b: &Dataset) -> bool {
    std::ptr::eq(a, b)
        || (a.fields.len() == b.fields.len()
            && a.fields
                .iter()
                .zip(&b.fields)
                .all(|(x, y)| x.name == y.name))
}

/// `r`, a reading of `from`'s schema, with its values in `to`'s (by field name; a field
/// `from` lacks is empty).
fn by_name(r: &Reading, from: &Dataset, to: &Dataset) -> Reading {
    let mut out = r.clone();
    out.values = to
        .fields
        .iter()
        .map(|f| {
            from.fields
                .iter()
                .position(|g| g.name == f.name)
                .and_then(|i| r.values.get(i).cloned().flatten())
        })
        .collect();
    out
}

impl Former {
    /// Reads records into the batch until it is full or the log has nothing more committed;
    /// returns the last record seen.
    pub(super) fn fill(&mut self, committed: u64) -> std::io::Result<u64> {
        let Former {
            consumer,
            shapes,
            registry,
            batch_size,
            batch,
            readings,
        } = self;
        if batch.points.len() >= *batch_size {
            return Ok(consumer.position());
        }
        let each = |record: Record<'_>| {
            let (lsn, dataset, appended_at) = match &record {
                Record::Memory(c) => (c.lsn, c.dataset.id.as_str(), c.appended_at),
                Record::Disk { lsn, payload } => match record::header(payload) {
                    Ok(header) => (*lsn, header.dataset, header.appended_at),
                    Err(_) => return true,
                },
            };
            batch.last_lsn = lsn;
            let Some((index, shape)) = Shapes::find(shapes, registry, dataset) else {
                return true;
            };
            let these: &[Reading] = match record {
                // As intake had them, in the schema the shape was made from (a dataset
                // keeps its fields while the gateway runs).
                Record::Memory(c) if same_fields(&c.dataset, &shape.dataset) => &c.readings,
                Record::Memory(c) => {
                    // Another version of the dataset's schema: values by field name.
                    readings.clear();
                    readings.extend(
                        c.readings
                            .iter()
                            .map(|r| by_name(r, &c.dataset, &shape.dataset)),
                    );
                    readings
                }
                Record::Disk { payload, .. } => {
                    readings.clear();
                    if record::decode_into(payload, &shape.dataset, readings).is_err() {
                        tracing::error!(lsn, "undecodable WAL record skipped by the influx sink");
                        return true;
                    }
                    readings
                }
            };
            batch.since.get_or_insert_with(Instant::now);
            batch.oldest_appended.get_or_insert(appended_at);
            for r in these {
                let start = batch.text.len();
                if shape.write_point(&mut batch.text, r) {
                    batch.points.push(Point {
                        shape: index,
                        line: start..batch.text.len(),
                    });
                }
            }
            batch.points.len() < *batch_size
        };
        consumer.read(committed, each)?;
        Ok(consumer.position())
    }
}
