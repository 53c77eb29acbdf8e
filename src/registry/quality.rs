//! Live quality figures of a dataset, for its catalog entry: when the last reading arrived,
//! how many readings and distinct sensors the last hour brought, and what share was
//! rejected. Buyers judge data by these before they pay.
//!
//! Kept in memory per dataset: sixty one-minute buckets of accepted and rejected counts, and
//! each sensor's last minute seen (at most [`MAX_SENSORS`]; beyond that new sensors are not
//! counted until old ones age out). Counted since the process started.

use std::collections::HashMap;
use std::sync::Mutex;

use compact_str::CompactString;
use serde::Serialize;

use crate::model::{Micros, Reading};

const MINUTE: Micros = 60_000_000;
const BUCKETS: usize = 60;
/// Distinct sensors tracked per dataset at most.
pub(crate) const MAX_SENSORS: usize = 1_000_000;

/// What the catalog shows.
#[derive(Clone, Debug, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct QualitySnapshot {
    /// Receive time of the newest accepted reading (µs), if any since start.
    pub last_reading_at: Option<Micros>,
    pub readings_last_hour: u64,
    pub active_sensors_last_hour: u64,
    pub rejected_last_hour: u64,
    /// Rejected share of the readings offered in the last hour (0 when none were).
    pub reject_rate: f64,
}

#[derive(Debug)]
struct Inner {
    /// Minute index → (accepted, rejected), in a ring by minute.
    minutes: [(i64, u64, u64); BUCKETS],
    sensors: HashMap<CompactString, i64>,
    last_reading_at: Option<Micros>,
    /// Minute of the last sweep of `sensors`.
    swept: i64,
}

impl Default for QualityTracker {
    fn default() -> Self {
        QualityTracker {
            inner: Mutex::new(Inner {
                minutes: [(i64::MIN, 0, 0); BUCKETS],
                sensors: HashMap::new(),
                last_reading_at: None,
                swept: i64::MIN,
            }),
        }
    }
}

/// One dataset's tracker; cheap per batch (one lock, one map probe per reading).
#[derive(Debug)]
pub struct QualityTracker {
    inner: Mutex<Inner>,
}

impl Inner {
    /// The bucket of `minute`, or `None` when its slot already holds a later minute (a
    /// clock that stepped back).
    fn bucket(&mut self, minute: i64) -> Option<&mut (i64, u64, u64)> {
        let slot = &mut self.minutes[minute.rem_euclid(BUCKETS as i64) as usize];
        if slot.0 > minute {
            return None;
        }
        if slot.0 != minute {
            *slot = (minute, 0, 0);
        }
        Some(slot)
    }
}

impl QualityTracker {
    /// Counts accepted `readings` received at `now`.
    pub fn accepted(&self, readings: &[Reading], now: Micros) {
        if readings.is_empty() {
            return;
        }
        let minute = now.div_euclid(MINUTE);
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(bucket) = inner.bucket(minute) {
            bucket.1 += readings.len() as u64;
        }
        inner.last_reading_at = Some(inner.last_reading_at.map_or(now, |t| t.max(now)));
        if inner.swept < minute {
            inner
                .sensors
                .retain(|_, seen| *seen > minute - BUCKETS as i64);
            inner.swept = minute;
        }
        let sensors = &mut inner.sensors;
        for r in readings {
            if let Some(seen) = sensors.get_mut(&r.sensor_id) {
                *seen = minute;
            } else if sensors.len() < MAX_SENSORS {
                sensors.insert(r.sensor_id.clone(), minute);
            }
        }
    }

    /// Counts `n` rejected readings at `now`.
    pub fn rejected(&self, n: usize, now: Micros) {
        if n == 0 {
            return;
        }
        let minute = now.div_euclid(MINUTE);
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(bucket) = inner.bucket(minute) {
            bucket.2 += n as u64;
        }
    }

    /// The figures for the hour before `now`.
    pub fn snapshot(&self, now: Micros) -> QualitySnapshot {
        let minute = now.div_euclid(MINUTE);
        let oldest = minute - BUCKETS as i64 + 1;
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (mut accepted, mut rejected) = (0, 0);
        for &(m, a, r) in &inner.minutes {
            if (oldest..=minute).contains(&m) {
                accepted += a;
                rejected += r;
            }
        }
        let active = inner.sensors.values().filter(|&&m| m >= oldest).count() as u64;
        let offered = accepted + rejected;
        QualitySnapshot {
            last_reading_at: inner.last_reading_at,
            readings_last_hour: accepted,
            active_sensors_last_hour: active,
            rejected_last_hour: rejected,
            reject_rate: if offered == 0 {
                0.0
            } else {
                rejected as f64 / offered as f64
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::decode::tests::{reading, traffic};

    fn readings(sensors: &[&str]) -> Vec<Reading> {
        let ds = traffic();
        sensors
            .iter()
            .map(|s| reading(&ds, 0, |r| r.sensor_id = (*s).into()))
            .collect()
    }

    #[test]
    fn the_last_hour_counts_readings_sensors_and_rejects() {
        let q = QualityTracker::default();
        let t0: Micros = 1_795_680_000_000_000;
        assert_eq!(q.snapshot(t0), QualitySnapshot::default());
        q.accepted(&readings(&["a", "b", "a"]), t0);
        q.rejected(1, t0);
        q.accepted(&readings(&["c"]), t0 + 30 * MINUTE);
        let s = q.snapshot(t0 + 30 * MINUTE);
        assert_eq!(s.readings_last_hour, 4);
        assert_eq!(s.active_sensors_last_hour, 3);
        assert_eq!(s.rejected_last_hour, 1);
        assert!((s.reject_rate - 0.2).abs() < 1e-12);
        assert_eq!(s.last_reading_at, Some(t0 + 30 * MINUTE));

        // An hour after the first batch only the second one counts.
        let s = q.snapshot(t0 + 61 * MINUTE);
        assert_eq!(s.readings_last_hour, 1);
        assert_eq!(s.active_sensors_last_hour, 1);
        assert_eq!(s.rejected_last_hour, 0);
        assert_eq!(s.reject_rate, 0.0);
        // Two hours on, nothing; the last reading time stays.
        let s = q.snapshot(t0 + 120 * MINUTE);
        assert_eq!(s.readings_last_hour, 0);
        assert_eq!(s.active_sensors_last_hour, 0);
        assert_eq!(s.last_reading_at, Some(t0 + 30 * MINUTE));
        // A late batch does not move the last reading time back.
        q.accepted(&readings(&["d"]), t0 + 5 * MINUTE);
        assert_eq!(
            q.snapshot(t0 + 120 * MINUTE).last_reading_at,
            Some(t0 + 30 * MINUTE)
        );
    }
}
