//! What a session's tier makes of the readings it takes (live, delayed, aggregated by
//! window), and the per-session [`State`] that queues them for the connection and meters
//! what it hands over.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use compact_str::CompactString;
use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{CHUNK, End, FeedService, Follow, Out};
use crate::feed::{FeedBatch, Latest};
use crate::market::Grant;
use crate::model::{Micros, Reading, Value};

#[derive(Clone, Copy, PartialEq)]
pub(super) enum Tier {
    Live,
    Delay(Micros),
    Aggregate(Micros),
}

pub(super) fn tier_of(grant: &Grant) -> Tier {
    if let Some(a) = grant
        .aggregate
        .as_deref()
        .and_then(|a| humantime::parse_duration(a).ok())
    {
        return Tier::Aggregate(a.as_micros() as Micros);
    }
    if grant.delay.is_zero() {
        Tier::Live
    } else {
        Tier::Delay(grant.delay.as_micros() as Micros)
    }
}

#[derive(Default)]
struct FieldStats {
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
}

#[derive(Default)]
pub(super) struct SensorWindow {
    readings: u64,
    fields: BTreeMap<String, FieldStats>,
}

pub(super) struct Delayed {
    pub(super) due: Micros,
    position: u64,
    sensor: CompactString,
    json: Arc<str>,
}

impl Delayed {
    pub(super) fn out(self) -> Out {
        Out::Reading {
            position: self.position,
            sensor: self.sensor,
            json: self.json,
        }
    }
}

pub(super) struct State<'a> {
    pub(super) follow: &'a Follow,
    pub(super) out: &'a mpsc::Sender<Vec<Out>>,
    pub(super) tier: Tier,
    /// Positions up to here were handled.
    pub(super) last: Option<u64>,
    /// Delay tier: readings waiting for their time, in position order.
    pub(super) delayed: VecDeque<Delayed>,
    /// Readings `delayed` may hold (`[feed] max_delayed`).
    pub(super) max_delayed: usize,
    /// Aggregate tier: this window's stats by sensor.
    pub(super) window: BTreeMap<String, SensorWindow>,
    pub(super) window_start: Micros,
    pub(super) metered: (u64, u64),
    pub(super) latest: Vec<Latest>,
    /// What is ready for the client and not yet taken by its connection. Once it is due
    /// (see `since`) and the connection has no room, the session takes no new batch from the
    /// hub, so a client that does not keep up falls behind the hub's fan-out queue and is
    /// closed as a slow consumer.
    pub(super) queue: VecDeque<Out>,
    /// When the oldest reading in `queue` got there, and when the connection last took
    /// something: the queue is handed over at once when the session was idle for `coalesce`,
    /// else `coalesce` after the last hand-over (or once it holds a chunk), so a busy feed
    /// writes once for many readings and a quiet one adds no delay.
    pub(super) since: Option<Instant>,
    pub(super) last_flush: Option<Instant>,
    pub(super) coalesce: Duration,
}

impl State<'_> {
    pub(super) fn send(&mut self, out: Out) -> Result<(), End> {
        if self.queue.is_empty() {
            self.since = Some(Instant::now());
        }
        self.queue.push_back(out);
        Ok(())
    }

    /// When what waits is to be handed over (`None`: nothing waits).
    pub(super) fn due_at(&self) -> Option<Instant> {
        let since = self.since?;
        Some(match self.last_flush {
            Some(last) if self.queue.len() < CHUNK => since.max(last + self.coalesce),
            _ => since,
        })
    }

    /// Hands the connection what waits once it is due.
    pub(super) fn flush(&mut self) -> Result<(), End> {
        match self.due_at() {
            Some(due) if due <= Instant::now() => self.flush_now(),
            _ => Ok(()),
        }
    }

    /// Hands the connection what waits, in chunks of at most [`CHUNK`], as far as it has
    /// room.
    pub(super) fn flush_now(&mut self) -> Result<(), End> {
        while !self.queue.is_empty() {
            match self.out.try_reserve() {
                Ok(permit) => {
                    let n = self.queue.len().min(CHUNK);
                    let chunk: Vec<Out> = self.queue.drain(..n).collect();
                    self.metered.0 += n as u64;
                    self.metered.1 += chunk
                        .iter()
                        .map(|out| match out {
                            Out::Reading { json, .. } | Out::Retained { json, .. } => json.len(),
                            Out::Aggregate { json, .. } => json.len(),
                        } as u64)
                        .sum::<u64>();
                    permit.send(chunk);
                }
                Err(mpsc::error::TrySendError::Full(())) => break,
                Err(mpsc::error::TrySendError::Closed(())) => return Err(End::Gone),
            }
        }
        if self.queue.is_empty() {
            self.since = None;
            self.last_flush = Some(Instant::now());
        }
        Ok(())
    }

    pub(super) fn take(&mut self, batch: &FeedBatch, now: Micros) -> Result<(), End> {
        let json = batch.json();
        for (i, r) in batch.readings.iter().enumerate() {
            let position = batch.first + i as u64;
            if self.last.is_some_and(|l| position <= l) {
                continue;
            }
            self.last = Some(position);
            if !self.follow.filter.matches(r) {
                continue;
            }
            match self.tier {
                Tier::Live => self.send(Out::Reading {
                    position,
                    sensor: r.sensor_id.clone(),
                    json: json[i].clone(),
                })?,
                Tier::Delay(d) => {
                    if self.delayed.len() >= self.max_delayed {
                        return Err(End::DelayBufferFull);
                    }
                    self.delayed.push_back(Delayed {
                        due: r.ts.saturating_add(d),
                        position,
                        sensor: r.sensor_id.clone(),
                        json: json[i].clone(),
                    });
                }
                Tier::Aggregate(_) => self.aggregate(batch, r),
            }
        }
        self.release(now)
    }

    /// Sends the delayed readings that are due, in position order.
    pub(super) fn release(&mut self, now: Micros) -> Result<(), End> {
        while let Some(front) = self.delayed.front() {
            if front.due > now {
                break;
            }
            let d = self.delayed.pop_front().expect("front exists");
            self.send(d.out())?;
        }
        Ok(())
    }

    fn aggregate(&mut self, batch: &FeedBatch, r: &Reading) {
        let w = self.window.entry(r.sensor_id.to_string()).or_default();
        w.readings += 1;
        for (spec, value) in batch.dataset.fields.iter().zip(&r.values) {
            let x = match value {
                Some(Value::Float(f)) if f.is_finite() => *f,
                Some(Value::Int(i)) => *i as f64,
                _ => continue,
            };
            let s = w.fields.entry(spec.name.clone()).or_default();
            if s.count == 0 {
                s.min = x;
                s.max = x;
            }
            s.count += 1;
            s.sum += x;
            s.min = s.min.min(x);
            s.max = s.max.max(x);
        }
    }

    /// Ends the aggregation window at `end`: one message per sensor seen in it.
    pub(super) fn close_window(&mut self, end: Micros) -> Result<(), End> {
        let start = self.window_start;
        self.window_start = end;
        for (sensor, w) in std::mem::take(&mut self.window) {
            let fields: serde_json::Map<String, serde_json::Value> = w
                .fields
                .iter()
                .map(|(name, s)| {
                    (
                        name.clone(),
                        json!({"count": s.count, "mean": s.sum / s.count as f64,
                               "min": s.min, "max": s.max}),
                    )
                })
                .collect();
            let msg = json!({
                "dataset": self.follow.dataset,
                "sensor_id": sensor,
                "window_start": start,
                "window_end": end,
                "count": w.readings,
                "fields": fields,
            });
            self.send(Out::Aggregate {
                sensor: sensor.into(),
                json: msg.to_string(),
            })?;
        }
        Ok(())
    }

    pub(super) fn meter(&mut self, ctx: &FeedService) {
        if self.metered.0 > 0
            && let Some(sub) = &self.follow.grant.subscription
        {
            ctx.market
                .usage()
                .record(sub, self.metered.0, self.metered.1);
        }
        self.metered = (0, 0);
    }
}
