//! The WAL writer: one thread that turns queued appends into segment writes. Appends that
//! queue up while a write or fsync is under way go out together in the next one (group
//! commit), so many requests share one fsync; each caller learns its LSN only after the
//! write that holds its record (and, with `fsync = "always"`, its fsync) has finished.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, oneshot};

use super::record::seal;
use super::segment::segment_path;
use super::tail::Decoded;
use super::{Shared, WalError};
use crate::config::FsyncMode;

/// One record to append, and where to report its LSN.
pub(super) struct Append {
    pub frame: Vec<u8>,
    /// The record's readings, decoded, for the tail.
    pub decoded: Option<Decoded>,
    pub done: oneshot::Sender<Result<u64, WalError>>,
    /// The caller's place in the queue, given back when the writer takes the append.
    pub permit: OwnedSemaphorePermit,
}

/// An append of the run being written: where to answer, its LSN, its readings.
type RunAppend = (oneshot::Sender<Result<u64, WalError>>, u64, Option<Decoded>);

/// Most bytes and appends gathered into one write.
const GROUP_BYTES: usize = 16 << 20;
const GROUP_APPENDS: usize = 8192;

pub(super) struct Writer {
    pub dir: PathBuf,
    pub mode: FsyncMode,
    pub interval: Duration,
    pub segment_bytes: u64,
    pub next_lsn: u64,
    /// First LSN of the active segment, its file and length.
    pub active_first: u64,
    pub active: File,
    pub active_len: u64,
    pub shared: Arc<Shared>,
    dirty: bool,
    last_sync: Instant,
}

impl Writer {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        dir: PathBuf,
        mode: FsyncMode,
        interval: Duration,
        segment_bytes: u64,
        next_lsn: u64,
        active_first: u64,
        active: File,
        active_len: u64,
        shared: Arc<Shared>,
    ) -> Writer {
        Writer {
            dir,
            mode,
            interval,
            segment_bytes,
            next_lsn,
            active_first,
            active,
            active_len,
            shared,
            dirty: false,
            last_sync: Instant::now(),
        }
    }

    /// Serves appends until every sender is gone, then syncs and returns.
    pub(super) fn run(mut self, rx: Receiver<Append>) {
        let mut group: Vec<Append> = Vec::new();
        loop {
            let wait = match (self.mode, self.dirty) {
                (FsyncMode::Interval, true) => {
                    self.interval.saturating_sub(self.last_sync.elapsed())
                }
                _ => Duration::from_secs(3600),
            };
            match rx.recv_timeout(wait) {
                Ok(first) => group.push(first),
                Err(RecvTimeoutError::Timeout) => {
                    self.sync_if_dirty();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
            let mut bytes = group[0].frame.len();
            while bytes < GROUP_BYTES && group.len() < GROUP_APPENDS {
                match rx.try_recv() {
                    Ok(next) => {
                        bytes += next.frame.len();
                        group.push(next);
                    }
                    Err(_) => break,
                }
            }
            self.write_group(&mut group);
        }
        self.sync_if_dirty();
    }

    fn sync_if_dirty(&mut self) {
        if self.dirty
            && self.mode != FsyncMode::Never
            && let Err(e) = self.sync()
        {
            tracing::error!(error = %e, "WAL fsync failed");
        }
    }

    fn sync(&mut self) -> std::io::Result<()> {
        let started = Instant::now();
        self.active.sync_data()?;
        self.shared.metrics.fsync(started.elapsed());
        self.dirty = false;
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Writes a group: records that fit the quota, segment by segment; then answers each.
    fn write_group(&mut self, group: &mut Vec<Append>) {
        let max_bytes = self.shared.max_bytes;
        let mut run: Vec<u8> = Vec::with_capacity(group.iter().map(|a| a.frame.len()).sum());
        let mut run_appends: Vec<RunAppend> = Vec::new();
        for append in group.drain(..) {
            let Append {
                mut frame,
                decoded,
                done,
                permit,
            } = append;
            drop(permit);
            let size = frame.len() as u64;
            let used = self.shared.bytes.load(Ordering::Relaxed) + run.len() as u64;
            if used + size > max_bytes {
                // The caller takes its readings back: this append lets go of them first.
                drop(decoded);
                self.shared.metrics.refused("full");
                let _ = done.send(Err(WalError::Full { max_bytes }));
                continue;
            }
            if self.active_len + run.len() as u64 > 0
                && self.active_len + run.len() as u64 + size > self.segment_bytes
            {
                // This record opens a new segment: first finish the run in the current one.
                self.finish_run(&mut run, &mut run_appends);
                if let Err(e) = self.roll(self.next_lsn) {
                    drop(decoded);
                    tracing::error!(error = %e, "WAL segment roll failed");
                    self.shared.metrics.refused("io");
                    let _ = done.send(Err(WalError::Io(e.to_string())));
                    continue;
                }
            }
            let lsn = self.next_lsn;
            self.next_lsn += 1;
            seal(&mut frame, lsn);
            run.extend_from_slice(&frame);
            run_appends.push((done, lsn, decoded));
        }
        self.finish_run(&mut run, &mut run_appends);
    }

    /// Writes a run of records into the active segment (and fsyncs, if always), then
    /// answers its appends. On failure the segment is cut back to where the run began.
    fn finish_run(&mut self, run: &mut Vec<u8>, appends: &mut Vec<RunAppend>) {
        if run.is_empty() {
            return;
        }
        let result = self.active.write_all(run).and_then(|()| {
            self.dirty = true;
            match self.mode {
                FsyncMode::Always => self.sync(),
                FsyncMode::Interval if self.last_sync.elapsed() >= self.interval => self.sync(),
                _ => Ok(()),
            }
        });
        match result {
            Ok(()) => {
                let len = run.len() as u64;
                self.active_len += len;
                self.shared.bytes.fetch_add(len, Ordering::Relaxed);
                self.shared
                    .note_active_len(self.active_first, self.active_len);
                let last = appends.last().map(|(_, lsn, _)| *lsn).unwrap_or(0);
                self.shared.metrics.appended(appends.len() as u64, len);
                let mut answers = Vec::with_capacity(appends.len());
                let mut evicted = Vec::new();
                {
                    // In the tail before the committed LSN says so: a consumer woken by it
                    // finds the records in memory.
                    let mut tail = self.shared.tail.lock().unwrap_or_else(|e| e.into_inner());
                    for (done, lsn, decoded) in appends.drain(..) {
                        if let Some(d) = &decoded {
                            d.accepted.inc_by(d.readings.len() as u64);
                        }
                        tail.push(lsn, decoded, &mut evicted);
                        answers.push((done, lsn));
                    }
                }
                self.shared.committed.send_replace(last);
                for (done, lsn) in answers {
                    let _ = done.send(Ok(lsn));
                }
                // Freed after the answers, not before them.
                drop(evicted);
            }
            Err(e) => {
                tracing::error!(error = %e, "WAL write failed; its requests are refused");
                if let Err(cut) = self.active.set_len(self.active_len) {
                    tracing::error!(error = %cut, "cannot cut the WAL back after a failed write");
                }
                self.shared.metrics.refused("io");
                for (done, _, decoded) in appends.drain(..) {
                    drop(decoded);
                    let _ = done.send(Err(WalError::Io(e.to_string())));
                }
            }
        }
        run.clear();
    }

    /// Closes the active segment and opens a new one starting at `first_lsn`.
    fn roll(&mut self, first_lsn: u64) -> std::io::Result<()> {
        if self.dirty && self.mode != FsyncMode::Never {
            self.sync()?;
        }
        let path = segment_path(&self.dir, first_lsn);
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        File::open(&self.dir)?.sync_all()?;
        self.active = file;
        self.active_first = first_lsn;
        self.active_len = 0;
        self.dirty = false;
        self.shared.add_segment(first_lsn);
        Ok(())
    }
}
