//! Reading the log for the sink: one blocking read of a dataset's records ([`read_chunk`]),
//! and the readings gathered and not yet written ([`Pending`]).

use std::sync::Arc;

use tokio::time::Instant;

use crate::model::{Dataset, Micros, Reading};
use crate::wal::{Consumer, Record, record};

/// Readings gathered from the log and not yet written, in shared chunks (as intake made
/// them, or as decoded from disk).
#[derive(Default)]
pub(super) struct Pending {
    pub(super) chunks: Vec<Arc<Vec<Reading>>>,
    /// Readings in `chunks`.
    pub(super) rows: usize,
    pub(super) bytes: usize,
    /// LSN of the first and last record of ours in the buffer.
    pub(super) first_lsn: Option<u64>,
    pub(super) last_lsn: u64,
    /// When the first of them was read, and when it was appended to the log.
    pub(super) since: Option<Instant>,
    pub(super) oldest_appended: Option<Micros>,
}

impl Pending {
    pub(super) fn is_empty(&self) -> bool {
        self.first_lsn.is_none()
    }
}

/// What one blocking read of the log returned.
pub(super) struct Chunk {
    pub(super) consumer: Consumer,
    /// Read from memory only, and stopped where the disk is needed.
    pub(super) needs_disk: bool,
    pub(super) result: std::io::Result<()>,
    pub(super) chunks: Vec<Arc<Vec<Reading>>>,
    pub(super) rows: usize,
    pub(super) first_lsn: Option<u64>,
    pub(super) last_lsn: u64,
    pub(super) oldest_appended: Option<Micros>,
    pub(super) seen: u64,
    pub(super) dropped: usize,
}

/// Reads records up to `committed`, keeping `ds`'s readings, until about `max` of them:
/// shared as they are from memory, decoded from disk. Without `disk`, stops where the disk
/// would be needed (and sets `needs_disk`).
pub(super) fn read_chunk(
    mut consumer: Consumer,
    committed: u64,
    ds: &Dataset,
    max: usize,
    disk: bool,
) -> Chunk {
    let mut chunks: Vec<Arc<Vec<Reading>>> = Vec::new();
    let mut decoded: Vec<Reading> = Vec::new();
    let mut rows = 0usize;
    let (mut first_lsn, mut last_lsn, mut oldest_appended, mut dropped) = (None, 0, None, 0);
    let mut needs_disk = false;
    let each = |record: Record<'_>| {
        let (lsn, appended) = match record {
            Record::Memory(c) => {
                if c.dataset.id != ds.id {
                    return true;
                }
                if !decoded.is_empty() {
                    chunks.push(Arc::new(std::mem::take(&mut decoded)));
                }
                rows += c.readings.len();
                chunks.push(c.readings.clone());
                (c.lsn, c.appended_at)
            }
            Record::Disk { lsn, payload } => {
                let header = match record::header(payload) {
                    Ok(h) => h,
                    Err(e) => {
                        tracing::error!(lsn, error = %e, "unreadable WAL record skipped");
                        return true;
                    }
                };
                if header.dataset != ds.id {
                    return true;
                }
                let before = decoded.len();
                match record::decode_into(payload, ds, &mut decoded) {
                    Ok(n) => dropped += n,
                    Err(e) => {
                        tracing::error!(lsn, error = %e, "undecodable WAL record skipped; its readings are lost");
                        decoded.truncate(before);
                        return true;
                    }
                }
                rows += decoded.len() - before;
                (lsn, header.appended_at)
            }
        };
        first_lsn.get_or_insert(lsn);
        last_lsn = lsn;
        oldest_appended.get_or_insert(appended);
        rows < max
    };
    let result = if disk {
        consumer.read(committed, each)
    } else {
        needs_disk = !consumer.read_memory(committed, each);
        Ok(())
    };
    if !decoded.is_empty() {
        chunks.push(Arc::new(decoded));
    }
    Chunk {
        needs_disk,
        seen: consumer.position(),
        consumer,
        result,
        chunks,
        rows,
        first_lsn,
        last_lsn,
        oldest_appended,
        dropped,
    }
}
