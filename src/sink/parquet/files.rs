//! Parquet files on disk: the Hive partition of an hour, writing one range of log records as
//! a file per hour partition, and listing and cleaning up the files below a root.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::encode::{EncodeError, ParquetLayout};
use crate::calendar::civil_from_days;
use crate::model::{Micros, Reading};

pub(super) const HOUR: Micros = 3_600_000_000;

/// The Hive partition directory of an hour (`hour_index` = µs / 1 h) below `root`.
pub fn partition_dir(root: &Path, dataset: &str, hour_index: i64) -> PathBuf {
    let (y, m, d) = civil_from_days(hour_index.div_euclid(24));
    let hour = hour_index.rem_euclid(24);
    root.join(format!("dataset={dataset}"))
        .join(format!("date={y:04}-{m:02}-{d:02}"))
        .join(format!("hour={hour:02}"))
}

/// `part-{first}-{last}-{n}.parquet` → `(first, last)`: the log range a file holds.
pub fn log_range(name: &str) -> Option<(u64, u64)> {
    let rest = name.strip_prefix("part-")?.strip_suffix(".parquet")?;
    let mut parts = rest.split('-');
    let first = parts.next()?.parse().ok()?;
    let last = parts.next()?.parse().ok()?;
    Some((first, last))
}

/// What one flush wrote.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FlushStats {
    pub files: u64,
    pub rows: u64,
    pub bytes: u64,
    /// The files, as written.
    pub written: Vec<PathBuf>,
}

/// Writes the readings of log records `range.0..=range.1` as one file per hour partition,
/// named from the range. Blocking. Writing the same range again yields the same files.
pub fn write_partitions(
    layout: &ParquetLayout,
    root: &Path,
    dataset: &str,
    range: (u64, u64),
    readings: &[Reading],
) -> Result<FlushStats, EncodeError> {
    write_readings(layout, root, dataset, range, readings.iter().collect())
}

/// [`write_partitions`] of readings held in shared chunks, in order.
pub fn write_chunks(
    layout: &ParquetLayout,
    root: &Path,
    dataset: &str,
    range: (u64, u64),
    chunks: &[Arc<Vec<Reading>>],
) -> Result<FlushStats, EncodeError> {
    let readings = chunks.iter().flat_map(|c| c.iter()).collect();
    write_readings(layout, root, dataset, range, readings)
}

fn write_readings(
    layout: &ParquetLayout,
    root: &Path,
    dataset: &str,
    range: (u64, u64),
    mut readings: Vec<&Reading>,
) -> Result<FlushStats, EncodeError> {
    let mut stats = FlushStats::default();
    if readings.is_empty() {
        return Ok(stats);
    }
    let hour_of = |r: &Reading| r.ts.div_euclid(HOUR);
    let first = hour_of(readings[0]);
    if readings.iter().any(|r| hour_of(r) != first) {
        // Stable: within an hour, log order stays.
        readings.sort_by_key(|r| hour_of(r));
    }
    let (a, b) = range;
    for (part, run) in readings
        .chunk_by(|x, y| hour_of(x) == hour_of(y))
        .enumerate()
    {
        let hour = hour_of(run[0]);
        let path =
            partition_dir(root, dataset, hour).join(format!("part-{a:020}-{b:020}-{part}.parquet"));
        let batch = layout.record_batch(run.iter().copied())?;
        stats.bytes += layout.write_file(&batch, &path)?;
        stats.written.push(path);
        stats.files += 1;
        stats.rows += run.len() as u64;
    }
    Ok(stats)
}

/// Calls `visit` for every file below `dir` (depth first; unreadable directories skipped).
fn walk_files(dir: &Path, visit: &mut impl FnMut(&Path)) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            walk_files(&path, visit);
        } else {
            visit(&path);
        }
    }
}

/// Every finished Parquet file below `root`, sorted by path (so by partition, then name).
pub fn parquet_files(root: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    walk_files(root, &mut |path| {
        if path.extension().is_some_and(|e| e == "parquet") {
            files.push(path.to_path_buf());
        }
    });
    files.sort();
    files
}

/// Removes temporary files a crash left behind (`.part-….parquet.tmp`): they never became
/// visible, and the readings in them were not acknowledged as written by this sink.
pub fn remove_stale_temp_files(root: &Path) -> usize {
    let mut removed = 0;
    walk_files(root, &mut |path| {
        let stale = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.') && n.ends_with(".parquet.tmp"));
        if stale && std::fs::remove_file(path).is_ok() {
            removed += 1;
        }
    });
    removed
}
