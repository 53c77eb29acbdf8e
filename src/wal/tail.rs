//! The log's recent past in memory: each committed record as intake had it, decoded and
//! shared. A consumer that keeps up takes its records from here (no disk read, no decode);
//! one that is behind, or replaying after a restart, reads the segments
//! ([`super::Consumer`] chooses). Bounded by [`TAIL_BYTES`]: the oldest records leave first.

use std::collections::VecDeque;
use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;

use crate::model::{Dataset, Micros, Reading};

/// The most bytes the tail holds (its readings by [`Reading::approx_size`], which intake
/// sums, and [`RECORD_OVERHEAD`] per record). Consumers that keep up are milliseconds
/// behind, which a few MiB cover even at a million readings a second; a larger tail only
/// holds memory (64 MiB here cost about 90 MB of RSS under MQTT load, 8 MiB lost no intake
/// throughput: BENCHMARKS.md).
pub(crate) const TAIL_BYTES: usize = 8 << 20;

/// What a record costs the tail beyond its readings: the record and its readings' vector,
/// their two reference counts, and the allocator's share of the three allocations. Counted,
/// the bound holds for records of one reading (an MQTT publish each) as for large batches.
pub(crate) const RECORD_OVERHEAD: usize =
    std::mem::size_of::<Committed>() + std::mem::size_of::<Vec<Reading>>() + 2 * 16 + 3 * 16;

/// A committed record as intake made it.
#[derive(Debug)]
pub struct Committed {
    pub lsn: u64,
    pub appended_at: Micros,
    /// The dataset the readings are of, in this schema.
    pub dataset: Arc<Dataset>,
    pub readings: Arc<Vec<Reading>>,
    bytes: usize,
}

/// What intake hands the log beside a record's bytes, for the tail.
#[derive(Debug)]
pub struct Decoded {
    pub appended_at: Micros,
    /// Counts the readings once the record is committed (the dataset's accepted counter).
    pub accepted: Counter,
    pub dataset: Arc<Dataset>,
    pub readings: Arc<Vec<Reading>>,
    /// The readings' size in memory ([`Reading::approx_size`]), summed by intake: the
    /// writer thread, which keeps the tail, does no per-reading work.
    pub bytes: usize,
}

/// Committed records of consecutive LSNs, the newest last.
#[derive(Debug)]
pub(crate) struct Tail {
    records: VecDeque<Arc<Committed>>,
    bytes: usize,
    max_bytes: usize,
}

impl Tail {
    pub(crate) fn new(max_bytes: usize) -> Tail {
        Tail {
            records: VecDeque::new(),
            bytes: 0,
            max_bytes,
        }
    }

    /// Adds the record committed as `lsn`; without `decoded` (a record appended as bytes
    /// only) the tail cannot hold it and starts over after it. What leaves the tail goes
    /// into `evicted`, for the caller to drop outside the lock (freeing a record's readings
    /// is the costliest part of all this).
    pub(crate) fn push(
        &mut self,
        lsn: u64,
        decoded: Option<Decoded>,
        evicted: &mut Vec<Arc<Committed>>,
    ) {
        if self.records.back().is_some_and(|last| last.lsn + 1 != lsn) {
            // Not the next record: what is held no longer joins up with what comes.
            self.clear(evicted);
        }
        let Some(d) = decoded else {
            self.clear(evicted);
            return;
        };
        let bytes = d.bytes + RECORD_OVERHEAD;
        self.records.push_back(Arc::new(Committed {
            lsn,
            appended_at: d.appended_at,
            dataset: d.dataset,
            readings: d.readings,
            bytes,
        }));
        self.bytes += bytes;
        while self.bytes > self.max_bytes
            && let Some(old) = self.records.pop_front()
        {
            self.bytes -= old.bytes;
            evicted.push(old);
        }
    }

    /// The oldest LSN held.
    pub(crate) fn front_lsn(&self) -> Option<u64> {
        self.records.front().map(|r| r.lsn)
    }

    fn clear(&mut self, evicted: &mut Vec<Arc<Committed>>) {
        evicted.extend(self.records.drain(..));
        self.bytes = 0;
    }

    /// Up to `max` records from `first` on, none past `upto`; `None` when the tail does not
    /// hold `first` (it is older, or the tail started later): read the disk.
    pub(crate) fn from(&self, first: u64, upto: u64, max: usize) -> Option<Vec<Arc<Committed>>> {
        let front = self.records.front()?.lsn;
        if first < front {
            return None;
        }
        let start = (first - front) as usize;
        if start > self.records.len() {
            return None;
        }
        Some(
            self.records
                .iter()
                .skip(start)
                .take_while(|r| r.lsn <= upto)
                .take(max)
                .cloned()
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(n: usize) -> Option<Decoded> {
        Some(Decoded {
            appended_at: 0,
            dataset: Arc::new(crate::pipeline::decode::tests::traffic()),
            readings: Arc::new(vec![Reading::empty(0, 0); n]),
            bytes: n * std::mem::size_of::<Reading>(),
            accepted: Counter::default(),
        })
    }

    #[test]
    fn holds_consecutive_records_within_its_bytes() {
        let per = std::mem::size_of::<Reading>() * 10 + RECORD_OVERHEAD;
        let mut tail = Tail::new(per * 3);
        let mut gone = Vec::new();
        for lsn in 1..=5 {
            tail.push(lsn, decoded(10), &mut gone);
        }
        assert_eq!(gone.len(), 2);
        // The three newest stay.
        assert!(tail.from(2, 5, 10).is_none());
        let got: Vec<u64> = tail.from(3, 5, 10).unwrap().iter().map(|r| r.lsn).collect();
        assert_eq!(got, vec![3, 4, 5]);
        assert_eq!(tail.from(4, 4, 10).unwrap().len(), 1);
        assert_eq!(tail.from(6, 5, 10).unwrap().len(), 0, "caught up");
        assert!(tail.from(7, 9, 10).is_none(), "not yet held");
        // A record without its readings: the tail starts over after it.
        tail.push(6, None, &mut gone);
        assert!(tail.from(6, 6, 10).is_none());
        tail.push(7, decoded(1), &mut gone);
        assert_eq!(tail.from(7, 7, 10).unwrap().len(), 1);
        assert!(tail.from(6, 7, 10).is_none());
    }
}
