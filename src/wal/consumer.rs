//! One consumer's way through the log, the contract every sink (and any later store) reads
//! by: records in LSN order from the consumer's position, from the tail in memory while it
//! keeps up (decoded by intake, shared, no disk read), from the segments on disk while it is
//! behind or replaying after a restart. The consumer moves its durable checkpoint itself
//! ([`super::Wal::checkpoint`]) once its store has what it read.

use std::path::PathBuf;
use std::sync::Arc;

use super::segment::Reader;
use super::tail::Committed;
use super::{Shared, Wal};

/// A record as a consumer gets it.
#[derive(Debug)]
pub enum Record<'a> {
    /// From memory: the readings as intake accepted them, in their dataset's schema.
    Memory(&'a Committed),
    /// From disk: the payload, for [`super::record::header`] and
    /// [`super::record::decode_into`].
    Disk { lsn: u64, payload: &'a [u8] },
}

/// Records taken from the tail at a time (under its lock only to copy pointers).
const FROM_MEMORY: usize = 256;

#[derive(Debug)]
pub struct Consumer {
    dir: PathBuf,
    shared: Arc<Shared>,
    /// The last LSN handed out (or passed over).
    position: u64,
    /// On disk: a reader positioned at `position`.
    reader: Option<Reader>,
    /// The oldest LSN the tail held when last asked; the disk is read up to it.
    tail_front: u64,
    payload: Vec<u8>,
}

impl Consumer {
    pub(super) fn new(wal: &Wal, after: u64) -> Consumer {
        Consumer {
            dir: wal.dir.clone(),
            shared: wal.shared.clone(),
            position: after,
            reader: None,
            tail_front: 0,
            payload: Vec::new(),
        }
    }

    /// The last LSN handed out.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Hands the records after the position, up to `upto` (at most the committed LSN), to
    /// `each` in order, for as long as it answers `true` (it has room for more). Reads the
    /// disk when it must: call it from a blocking thread.
    pub fn read(&mut self, upto: u64, each: impl FnMut(Record<'_>) -> bool) -> std::io::Result<()> {
        self.read_from(upto, true, each).map(|_| ())
    }

    /// [`Consumer::read`] from memory only, for an async task (no disk, no blocking):
    /// `false` when the next record must come from disk.
    pub fn read_memory(&mut self, upto: u64, each: impl FnMut(Record<'_>) -> bool) -> bool {
        self.read_from(upto, false, each).unwrap_or(false)
    }

    /// `Ok(false)`: stopped where the disk would be needed (only without `disk`).
    fn read_from(
        &mut self,
        upto: u64,
        disk: bool,
        mut each: impl FnMut(Record<'_>) -> bool,
    ) -> std::io::Result<bool> {
        while self.position < upto {
            if self.position + 1 >= self.tail_front {
                let records = {
                    let tail = self.shared.tail.lock().unwrap_or_else(|e| e.into_inner());
                    // An empty tail (after a restart, until intake appends) is asked again
                    // at the next record: it fills while the consumer reads the disk.
                    self.tail_front = tail.front_lsn().unwrap_or(0);
                    tail.from(self.position + 1, upto, FROM_MEMORY)
                };
                if let Some(records) = records.filter(|r| !r.is_empty()) {
                    self.reader = None;
                    for record in &records {
                        self.position = record.lsn;
                        if !each(Record::Memory(record)) {
                            return Ok(true);
                        }
                    }
                    continue;
                }
            }
            if !disk {
                return Ok(false);
            }
            let (dir, position, lengths) = (&self.dir, self.position, &self.shared.segments);
            let reader = self
                .reader
                .get_or_insert_with(|| Reader::bounded(dir, position, lengths.clone()));
            if !reader.next_into(upto, &mut self.payload)? {
                return Ok(true);
            }
            self.position = reader.last_lsn();
            let room = each(Record::Disk {
                lsn: self.position,
                payload: &self.payload,
            });
            if !room {
                return Ok(true);
            }
        }
        Ok(true)
    }
}
