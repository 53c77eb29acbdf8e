//! The recent rejects of one dataset, which its provider reads at
//! `GET /v1/datasets/{id}/rejects`: when, which key, which sensor, why.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::Serialize;

use crate::model::{Micros, Reason};

/// A reject as a provider sees it later: when, which key sent it, which sensor.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct RejectRecord {
    /// Receive time, µs since the epoch.
    pub at: Micros,
    pub key_id: String,
    pub sensor_id: Option<String>,
    pub index: u32,
    pub reason: Reason,
    pub message: String,
}

/// The last `capacity` rejects of one dataset, newest last.
#[derive(Debug)]
pub struct RejectLog {
    capacity: usize,
    entries: Mutex<VecDeque<RejectRecord>>,
}

impl RejectLog {
    pub fn new(capacity: usize) -> RejectLog {
        RejectLog {
            capacity,
            entries: Mutex::new(VecDeque::with_capacity(capacity.min(1024))),
        }
    }

    /// How many rejects the log keeps.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn record(&self, records: impl IntoIterator<Item = RejectRecord>) {
        if self.capacity == 0 {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        for record in records {
            if entries.len() == self.capacity {
                entries.pop_front();
            }
            entries.push_back(record);
        }
    }

    /// Up to `limit` most recent rejects, newest first.
    pub fn recent(&self, limit: usize) -> Vec<RejectRecord> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.iter().rev().take(limit).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: u32) -> RejectRecord {
        RejectRecord {
            at: i as i64,
            key_id: "k".into(),
            sensor_id: None,
            index: i,
            reason: Reason::AboveMax,
            message: String::new(),
        }
    }

    #[test]
    fn log_keeps_the_newest() {
        let log = RejectLog::new(3);
        log.record((0..5).map(rec));
        let got: Vec<u32> = log.recent(10).iter().map(|r| r.index).collect();
        assert_eq!(got, vec![4, 3, 2]);
        assert_eq!(log.recent(1)[0].index, 4);
    }
}
