//! Live quality figures of a dataset, for its catalog entry: when the last reading arrived,
//! how many readings and distinct sensors the last hour brought, and what share was
//! rejected. Buyers judge data by these before they pay.
//!
//! Its provider also reads the hour minute by minute ([`QualityTracker::minutes`], at
//! `GET /v1/datasets/{id}/quality`): readings accepted, sensors heard from, rejects by reason.
//!
//! Kept in memory per dataset: sixty one-minute buckets of those counts, and each sensor's
//! last minute seen (at most [`MAX_SENSORS`]; beyond that new sensors are not counted until
//! old ones age out). Counted since the process started.

use std::collections::HashMap;
use std::sync::Mutex;

use compact_str::CompactString;
use serde::Serialize;

use crate::model::{Micros, Reading, Reason};

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

/// One minute of a dataset's intake, as its provider reads it.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct QualityMinute {
    /// The minute's start, µs since the epoch.
    pub minute: Micros,
    pub accepted: u64,
    /// Sensors with a reading accepted in this minute.
    pub sensors: u64,
    pub rejected: u64,
    /// The rejects by reason (reasons with none left out).
    pub rejected_by_reason: Vec<ReasonCount>,
}

/// How many readings were rejected for one reason.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ReasonCount {
    pub reason: Reason,
    pub count: u64,
}

/// One minute's counts, in a ring slot.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    minute: i64,
    accepted: u64,
    sensors: u64,
    rejected: [u32; Reason::ALL.len()],
}

impl Bucket {
    const EMPTY: Bucket = Bucket {
        minute: i64::MIN,
        accepted: 0,
        sensors: 0,
        rejected: [0; Reason::ALL.len()],
    };

    fn rejected(&self) -> u64 {
        self.rejected.iter().map(|&n| u64::from(n)).sum()
    }
}

#[derive(Debug)]
struct Inner {
    /// One bucket per minute, in a ring by minute.
    minutes: [Bucket; BUCKETS],
    sensors: HashMap<CompactString, i64>,
    last_reading_at: Option<Micros>,
    /// Minute of the last sweep of `sensors`.
    swept: i64,
}

impl Default for QualityTracker {
    fn default() -> Self {
        QualityTracker {
            inner: Mutex::new(Inner {
                minutes: [Bucket::EMPTY; BUCKETS],
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
    fn bucket(&mut self, minute: i64) -> Option<&mut Bucket> {
        let slot = &mut self.minutes[minute.rem_euclid(BUCKETS as i64) as usize];
        if slot.minute > minute {
            return None;
        }
        if slot.minute != minute {
            *slot = Bucket {
                minute,
                ..Bucket::EMPTY
            };
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
        inner.last_reading_at = Some(inner.last_reading_at.map_or(now, |t| t.max(now)));
        if inner.swept < minute {
            inner
                .sensors
                .retain(|_, seen| *seen > minute - BUCKETS as i64);
            inner.swept = minute;
        }
        // Sensors first heard from in this minute.
        let mut new = 0;
        let sensors = &mut inner.sensors;
        for r in readings {
            if let Some(seen) = sensors.get_mut(&r.sensor_id) {
                if *seen < minute {
                    *seen = minute;
                    new += 1;
                }
            } else if sensors.len() < MAX_SENSORS {
                sensors.insert(r.sensor_id.clone(), minute);
                new += 1;
            }
        }
        if let Some(bucket) = inner.bucket(minute) {
            bucket.accepted += readings.len() as u64;
            bucket.sensors += new;
        }
    }

    /// Counts rejected readings at `now`, by reason.
    pub fn rejected(&self, reasons: impl IntoIterator<Item = Reason>, now: Micros) {
        let minute = now.div_euclid(MINUTE);
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(bucket) = inner.bucket(minute) {
            for reason in reasons {
                let n = &mut bucket.rejected[reason.index()];
                *n = n.saturating_add(1);
            }
        }
    }

    /// The hour before `now`, minute by minute, oldest first (minutes with nothing
    /// included, as zeros).
    pub fn minutes(&self, now: Micros) -> Vec<QualityMinute> {
        let minute = now.div_euclid(MINUTE);
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        (minute - BUCKETS as i64 + 1..=minute)
            .map(|m| {
                let b = inner.minutes[m.rem_euclid(BUCKETS as i64) as usize];
                let b = if b.minute == m { b } else { Bucket::EMPTY };
                QualityMinute {
                    minute: m * MINUTE,
                    accepted: b.accepted,
                    sensors: b.sensors,
                    rejected: b.rejected(),
                    rejected_by_reason: Reason::ALL
                        .iter()
                        .zip(b.rejected)
                        .filter(|(_, n)| *n > 0)
                        .map(|(&reason, n)| ReasonCount {
                            reason,
                            count: u64::from(n),
                        })
                        .collect(),
                }
            })
            .collect()
    }

    /// The figures for the hour before `now`.
    pub fn snapshot(&self, now: Micros) -> QualitySnapshot {
        let minute = now.div_euclid(MINUTE);
        let oldest = minute - BUCKETS as i64 + 1;
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (mut accepted, mut rejected) = (0, 0);
        for b in &inner.minutes {
            if (oldest..=minute).contains(&b.minute) {
                accepted += b.accepted;
                rejected += b.rejected();
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
        q.rejected([Reason::AboveMax], t0);
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

    #[test]
    fn the_hour_minute_by_minute_counts_sensors_once_and_rejects_by_reason() {
        assert!(Reason::ALL.iter().enumerate().all(|(i, r)| r.index() == i));
        let q = QualityTracker::default();
        let t0: Micros = 1_795_680_000_000_000;
        q.accepted(&readings(&["a", "b", "a"]), t0);
        q.accepted(&readings(&["a", "c"]), t0 + 1_000_000);
        q.rejected(
            [Reason::AboveMax, Reason::AboveMax, Reason::UnknownField],
            t0,
        );
        q.accepted(&readings(&["a"]), t0 + 2 * MINUTE);
        let minutes = q.minutes(t0 + 2 * MINUTE);
        assert_eq!(minutes.len(), 60);
        assert!(
            minutes
                .windows(2)
                .all(|w| w[1].minute - w[0].minute == MINUTE)
        );
        let first = &minutes[57];
        assert_eq!(first.minute, t0.div_euclid(MINUTE) * MINUTE);
        assert_eq!((first.accepted, first.sensors, first.rejected), (5, 3, 3));
        assert_eq!(
            first.rejected_by_reason,
            [(Reason::UnknownField, 1), (Reason::AboveMax, 2)]
                .map(|(reason, count)| ReasonCount { reason, count })
        );
        assert_eq!((minutes[58].accepted, minutes[58].sensors), (0, 0));
        assert_eq!((minutes[59].accepted, minutes[59].sensors), (1, 1));
        // An hour on, the first minute has left the window.
        let later = q.minutes(t0 + 61 * MINUTE);
        assert!(later.iter().all(|m| m.minute > t0));
        assert_eq!(later.iter().map(|m| m.accepted).sum::<u64>(), 1);
    }
}
