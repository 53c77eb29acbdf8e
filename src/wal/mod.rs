//! The write-ahead log: the source of truth for every sink.
//!
//! Intake appends each accepted batch as one record and answers the device only once
//! [`Wal::append`] returns, which with `fsync = "always"` means after the fsync that covers
//! the record (group commit: concurrent appends share one). Sinks are consumers: each reads
//! the log from its own checkpoint ([`checkpoint`]) and moves the checkpoint once what it
//! read is durable in its store. A segment is deleted when every registered consumer has
//! passed it.
//!
//! Loss windows by `fsync` mode: `always`: none, for any crash. `interval`: a process crash
//! (kill -9) loses nothing (the data is in the kernel's page cache), a power cut or kernel
//! crash loses up to `fsync_interval` of acknowledged readings. `never`: the same for process
//! crashes; a power cut loses whatever the kernel had not written back (typically up to ~30 s).
//!
//! Recovery ([`Wal::open`]) scans every segment: a torn record at the very end (a crash
//! mid-write) is cut off; a damaged record with valid ones after it is corruption, and start
//! refuses unless the operator asks to skip it (`citygate serve --skip-corrupt-wal`).

pub(crate) mod checkpoint;
pub(crate) mod consumer;
pub mod record;
pub mod segment;
pub(crate) mod tail;
mod writer;

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::{Semaphore, oneshot, watch};

pub use checkpoint::Checkpoint;
pub use consumer::{Consumer, Record};
pub use segment::Reader;
pub use tail::{Committed, Decoded};

use crate::config::WalConfig;
use crate::telemetry::WalMetrics;

#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum WalError {
    #[error("the write-ahead log is full ({max_bytes} bytes): a sink is behind")]
    Full { max_bytes: u64 },
    #[error("the write-ahead log could not be written: {0}")]
    Io(String),
    #[error("the write-ahead log queue stayed full for {0:?}")]
    QueueFull(Duration),
    #[error("the write-ahead log is closed")]
    Closed,
    #[error(
        "the write-ahead log is corrupt: {segment} at byte {offset}, and valid records follow. \
         Nothing was changed. Restore the file from a backup, or start with \
         `citygate serve --skip-corrupt-wal` to drop the damaged bytes ({skipped} bytes here) and keep every valid record"
    )]
    Corrupt {
        segment: String,
        offset: u64,
        skipped: u64,
    },
}

/// State shared by the handle, the writer thread and the consumers.
#[derive(Debug)]
pub(crate) struct Shared {
    max_bytes: u64,
    bytes: AtomicU64,
    committed: watch::Sender<u64>,
    /// Segments by first LSN, with their length.
    segments: segment::Lengths,
    /// Registered consumers and how far each has durably consumed.
    consumers: Mutex<BTreeMap<String, u64>>,
    /// The recent committed records, decoded, for consumers that keep up.
    tail: Mutex<tail::Tail>,
    metrics: WalMetrics,
}

impl Shared {
    fn note_active_len(&self, first: u64, len: u64) {
        let mut segments = self.segments.lock().unwrap_or_else(|e| e.into_inner());
        segments.insert(first, len);
        self.metrics
            .set_size(self.bytes.load(Ordering::Relaxed), segments.len());
    }

    fn add_segment(&self, first: u64) {
        let mut segments = self.segments.lock().unwrap_or_else(|e| e.into_inner());
        segments.insert(first, 0);
        self.metrics
            .set_size(self.bytes.load(Ordering::Relaxed), segments.len());
    }
}

/// A handle on the write-ahead log (cheap to clone).
#[derive(Debug, Clone)]
pub struct Wal {
    dir: PathBuf,
    shared: Arc<Shared>,
    tx: Arc<Mutex<Option<std::sync::mpsc::Sender<writer::Append>>>>,
    permits: Arc<Semaphore>,
    queue_timeout: Duration,
    writer: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl Wal {
    /// Opens (creating) the log in `dir`, recovering from whatever a crash left, and starts
    /// the writer.
    pub fn open(
        dir: &Path,
        config: &WalConfig,
        queue_timeout: Duration,
        metrics: WalMetrics,
        skip_corrupt: bool,
    ) -> Result<Wal, WalError> {
        let io = |e: std::io::Error| WalError::Io(format!("{}: {e}", dir.display()));
        fs::create_dir_all(dir).map_err(io)?;
        let (last_lsn, segments) = recover(dir, skip_corrupt)?;

        let (active_first, active_len) = match segments.iter().next_back() {
            Some((first, len)) => (*first, *len),
            None => {
                let first = last_lsn + 1;
                fs::File::create(segment::segment_path(dir, first)).map_err(io)?;
                fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
                (first, 0)
            }
        };
        let mut segments = segments;
        segments.entry(active_first).or_insert(0);
        let total: u64 = segments.values().sum();
        metrics.set_size(total, segments.len());
        let (committed, _) = watch::channel(last_lsn);
        let shared = Arc::new(Shared {
            max_bytes: config.max_bytes.0,
            bytes: AtomicU64::new(total),
            committed,
            segments: Arc::new(Mutex::new(segments)),
            consumers: Mutex::new(BTreeMap::new()),
            tail: Mutex::new(tail::Tail::new(tail::TAIL_BYTES)),
            metrics,
        });
        let active = OpenOptions::new()
            .append(true)
            .open(segment::segment_path(dir, active_first))
            .map_err(io)?;
        let writer = writer::Writer::new(
            dir.to_path_buf(),
            config.fsync,
            config.fsync_interval,
            config.segment_bytes.0,
            last_lsn + 1,
            active_first,
            active,
            active_len,
            shared.clone(),
        );
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = std::thread::Builder::new()
            .name("citygate-wal".into())
            .spawn(move || writer.run(rx))
            .map_err(io)?;
        tracing::info!(
            dir = %dir.display(),
            last_lsn,
            bytes = total,
            fsync = ?config.fsync,
            "write-ahead log open"
        );
        Ok(Wal {
            dir: dir.to_path_buf(),
            shared,
            tx: Arc::new(Mutex::new(Some(tx))),
            permits: Arc::new(Semaphore::new(config.queue_depth)),
            queue_timeout,
            writer: Arc::new(Mutex::new(Some(handle))),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends one encoded record ([`record::encode`]) and returns its LSN once it is
    /// written (and, with `fsync = "always"`, fsynced). Refused when the log is full, the
    /// queue stays full for `queue_timeout`, or the write fails: never accepted and lost.
    pub async fn append(&self, frame: Vec<u8>) -> Result<u64, WalError> {
        self.append_with(frame, None).await
    }

    /// [`Wal::append`] of a record whose readings intake has decoded: consumers that keep up
    /// take them from memory, shared, instead of reading and decoding the record again.
    pub async fn append_decoded(&self, frame: Vec<u8>, decoded: Decoded) -> Result<u64, WalError> {
        self.append_with(frame, Some(decoded)).await
    }

    async fn append_with(&self, frame: Vec<u8>, decoded: Option<Decoded>) -> Result<u64, WalError> {
        let max_bytes = self.shared.max_bytes;
        if self.shared.bytes.load(Ordering::Relaxed) + frame.len() as u64 > max_bytes {
            self.shared.metrics.refused("full");
            return Err(WalError::Full { max_bytes });
        }
        let permit = tokio::time::timeout(self.queue_timeout, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| WalError::QueueFull(self.queue_timeout))?
            .map_err(|_| WalError::Closed)?;
        let (done, result) = oneshot::channel();
        {
            let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner());
            let tx = tx.as_ref().ok_or(WalError::Closed)?;
            tx.send(writer::Append {
                frame,
                decoded,
                done,
                permit,
            })
            .map_err(|_| WalError::Closed)?;
        }
        result.await.map_err(|_| WalError::Closed)?
    }

    /// A reader of the records after `after` (a consumer's checkpoint).
    pub fn consumer(&self, after: u64) -> Consumer {
        Consumer::new(self, after)
    }

    /// The last LSN written (readable by consumers), and changes to it.
    pub fn committed(&self) -> watch::Receiver<u64> {
        self.shared.committed.subscribe()
    }

    pub fn committed_lsn(&self) -> u64 {
        *self.shared.committed.borrow()
    }

    pub fn bytes(&self) -> u64 {
        self.shared.bytes.load(Ordering::Relaxed)
    }

    pub fn metrics(&self) -> &WalMetrics {
        &self.shared.metrics
    }

    /// Registers a consumer: segments are kept until it has passed them. Returns its stored
    /// checkpoint.
    pub fn register(&self, consumer: &str) -> std::io::Result<Checkpoint> {
        let stored = checkpoint::load(&self.dir, consumer)?;
        self.shared
            .consumers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(consumer.to_string(), stored.lsn);
        Ok(stored)
    }

    /// [`Wal::register`] for a consumer that wants only what is committed from its first
    /// start on (not the log's past): without a stored checkpoint it starts at the end.
    pub(crate) fn register_from_now(&self, consumer: &str) -> std::io::Result<Checkpoint> {
        if !checkpoint::exists(&self.dir, consumer)? {
            let now = Checkpoint {
                lsn: self.committed_lsn(),
                intent: None,
            };
            checkpoint::store(&self.dir, consumer, now)?;
        }
        self.register(consumer)
    }

    /// Where `consumer` stands in the log (its checkpoint, or where it holds the log), if
    /// it is registered.
    pub(crate) fn position_of(&self, consumer: &str) -> Option<u64> {
        self.shared
            .consumers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(consumer)
            .copied()
    }

    /// Keeps segments after `lsn` for `consumer`, in memory only: for a consumer that
    /// starts over after a restart (the hot store) and so has no checkpoint to store.
    pub(crate) fn hold(&self, consumer: &str, lsn: u64) {
        self.shared
            .consumers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(consumer.to_string(), lsn);
        self.clean();
    }

    /// Stops keeping segments for `consumer` (one that ended).
    pub(crate) fn release(&self, consumer: &str) {
        self.shared
            .consumers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(consumer);
        self.clean();
    }

    /// Stores a consumer's checkpoint durably, then deletes segments every consumer has
    /// passed.
    pub fn checkpoint(&self, consumer: &str, cp: Checkpoint) -> std::io::Result<()> {
        checkpoint::store(&self.dir, consumer, cp)?;
        self.shared
            .consumers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(consumer.to_string(), cp.lsn);
        self.clean();
        Ok(())
    }

    /// Deletes segments wholly below every consumer's checkpoint (never the active one).
    fn clean(&self) {
        let floor = {
            let consumers = self
                .shared
                .consumers
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            match consumers.values().min() {
                Some(min) => *min,
                None => return,
            }
        };
        let mut segments = self
            .shared
            .segments
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let firsts: Vec<u64> = segments.keys().copied().collect();
        for pair in firsts.windows(2) {
            let (first, next_first) = (pair[0], pair[1]);
            // Every record of this segment is below the next segment's first LSN.
            if next_first.saturating_sub(1) > floor {
                break;
            }
            let path = segment::segment_path(&self.dir, first);
            match fs::remove_file(&path) {
                Ok(()) => {
                    let len = segments.remove(&first).unwrap_or(0);
                    self.shared.bytes.fetch_sub(len, Ordering::Relaxed);
                    tracing::debug!(segment = %path.display(), "WAL segment released");
                }
                Err(e) => {
                    tracing::warn!(segment = %path.display(), error = %e, "cannot delete WAL segment");
                    break;
                }
            }
        }
        self.shared
            .metrics
            .set_size(self.shared.bytes.load(Ordering::Relaxed), segments.len());
    }

    /// Stops taking appends, lets the writer finish what is queued (and sync), and waits for
    /// it. Blocking: call from a blocking context.
    pub fn close(&self) {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(handle) = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = handle.join();
        }
    }
}

/// Scans every segment, cutting a torn tail and refusing (or, with `skip_corrupt`, repairing)
/// corruption. Returns the last valid LSN and the segments with their lengths.
fn recover(dir: &Path, skip_corrupt: bool) -> Result<(u64, BTreeMap<u64, u64>), WalError> {
    let io = |e: std::io::Error| WalError::Io(format!("{}: {e}", dir.display()));
    let segments = segment::list(dir).map_err(io)?;
    let mut last_lsn = segments
        .first()
        .map_or(0, |(first, _)| first.saturating_sub(1));
    let mut out = BTreeMap::new();
    let count = segments.len();
    for (i, (first, path)) in segments.iter().enumerate() {
        let bytes = fs::read(path).map_err(io)?;
        let scan = segment::scan(&bytes, last_lsn);
        let is_last = i + 1 == count;
        let len = match scan.damage {
            None => bytes.len() as u64,
            Some(damage) if damage.resumes_at.is_none() && is_last => {
                // A crash mid-write: cut the torn record.
                tracing::warn!(
                    segment = %path.display(),
                    offset = damage.offset,
                    cut = bytes.len() as u64 - damage.offset,
                    "WAL ends in a torn record (a crash mid-write); cutting it off"
                );
                segment::truncate(path, damage.offset).map_err(io)?;
                damage.offset
            }
            Some(damage) => {
                let (good, _, skipped) = segment::salvage(&bytes, last_lsn);
                if !skip_corrupt {
                    return Err(WalError::Corrupt {
                        segment: path.display().to_string(),
                        offset: damage.offset,
                        skipped,
                    });
                }
                tracing::error!(
                    segment = %path.display(),
                    offset = damage.offset,
                    skipped_bytes = skipped,
                    "WAL corruption skipped on the operator's request; readings in the damaged bytes are lost"
                );
                let tmp = path.with_extension("salvage");
                fs::write(&tmp, &good).map_err(io)?;
                fs::File::open(&tmp)
                    .and_then(|f| f.sync_all())
                    .map_err(io)?;
                fs::rename(&tmp, path).map_err(io)?;
                good.len() as u64
            }
        };
        let rescanned = if scan.damage.is_some() {
            let bytes = fs::read(path).map_err(io)?;
            segment::scan(&bytes, last_lsn).last_lsn
        } else {
            scan.last_lsn
        };
        last_lsn = last_lsn.max(rescanned);
        out.insert(*first, len);
    }
    if count > 0 {
        fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    }
    Ok((last_lsn, out))
}

#[cfg(test)]
mod tests;
