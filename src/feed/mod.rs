//! Live feeds: readings fan out to entitled subscribers as they arrive.
//!
//! Readings enter the [`Hub`] after they are durably acknowledged (the pipeline publishes a
//! batch once its log append returned). Each dataset numbers its readings with positions
//! that only grow (they start at the hub's start time in nanoseconds, so positions of a
//! restarted gateway are above any earlier one) and keeps recent batches for
//! `[feed] replay_window` (at most `replay_max` readings), from which a reconnecting client
//! gets what it missed, and an MQTT subscriber each sensor's last reading. Fan-out is a broadcast channel per dataset holding `session_queue`
//! batches: a session whose client does not take what it has is not given more, and once it
//! is that many batches behind it is closed as a slow consumer; nobody else waits for it. A batch's JSON is made once, on first use, and shared by every
//! session. [`session`] runs one subscriber's session whatever its protocol.

pub mod session;

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use compact_str::CompactString;
use tokio::sync::broadcast;

use crate::config::FeedConfig;
use crate::model::{Dataset, Micros, Reading, Value, now_micros};

/// Readings of one dataset published together, with consecutive positions.
#[derive(Debug)]
pub struct FeedBatch {
    pub dataset: Arc<Dataset>,
    /// The position of `readings[0]`; the next reading has the next position.
    pub first: u64,
    pub readings: Arc<Vec<Reading>>,
    json: OnceLock<Vec<Arc<str>>>,
}

impl FeedBatch {
    /// Each reading as the JSON object subscribers receive, made once per batch.
    pub fn json(&self) -> &[Arc<str>] {
        self.json.get_or_init(|| {
            self.readings
                .iter()
                .enumerate()
                .map(|(i, r)| reading_json(&self.dataset, self.first + i as u64, r).into())
                .collect()
        })
    }

    pub fn last(&self) -> u64 {
        self.first + self.readings.len() as u64 - 1
    }
}

fn push_json_str(out: &mut String, s: &str) {
    out.push_str(&serde_json::to_string(s).expect("a string serialises"));
}

fn push_float(out: &mut String, f: f64) {
    if f.is_finite() {
        out.push_str(ryu::Buffer::new().format_finite(f));
    } else {
        out.push_str("null");
    }
}

/// `{"id":"…","dataset":"…","sensor_id":"…","time":µs,"received_at":µs,"fields":{…}[,"lat":…,"lon":…]}`
pub fn reading_json(ds: &Dataset, position: u64, r: &Reading) -> String {
    let mut out = String::with_capacity(160);
    let _ = write!(out, "{{\"id\":\"{position}\",\"dataset\":");
    push_json_str(&mut out, &ds.id);
    out.push_str(",\"sensor_id\":");
    push_json_str(&mut out, &r.sensor_id);
    let _ = write!(
        out,
        ",\"time\":{},\"received_at\":{},\"fields\":{{",
        r.ts, r.received_at
    );
    let mut first = true;
    for (spec, value) in ds.fields.iter().zip(&r.values) {
        let Some(value) = value else { continue };
        if !first {
            out.push(',');
        }
        first = false;
        push_json_str(&mut out, &spec.name);
        out.push(':');
        match value {
            Value::Float(f) => push_float(&mut out, *f),
            Value::Int(i) => {
                let _ = write!(out, "{i}");
            }
            Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Value::Str(s) => push_json_str(&mut out, s),
        }
    }
    out.push('}');
    if let (Some(lat), Some(lon)) = (r.lat, r.lon) {
        out.push_str(",\"lat\":");
        push_float(&mut out, lat);
        out.push_str(",\"lon\":");
        push_float(&mut out, lon);
    }
    out.push('}');
    out
}

#[derive(Debug)]
struct Recent {
    next: u64,
    batches: VecDeque<Arc<FeedBatch>>,
    readings: usize,
}

/// A sensor's last reading, as a retained message.
#[derive(Debug)]
pub struct Latest {
    pub sensor: CompactString,
    /// Device time.
    pub ts: Micros,
    pub reading: Reading,
    pub json: Arc<str>,
}

/// One dataset's feed: positions, recent batches, and the broadcast to its sessions.
#[derive(Debug)]
pub struct DatasetFeed {
    recent: Mutex<Recent>,
    tx: broadcast::Sender<Arc<FeedBatch>>,
}

/// What a new session starts from: the readings it missed, then everything live.
#[derive(Debug)]
pub struct Cursor {
    /// Each sensor's last reading, when asked for.
    pub latest: Vec<Latest>,
    pub missed: Vec<Arc<FeedBatch>>,
    /// Readings at or before this position were in `missed` or before the resume point.
    pub after: Option<u64>,
    pub live: broadcast::Receiver<Arc<FeedBatch>>,
}

#[derive(Debug)]
pub struct Hub {
    feeds: RwLock<HashMap<String, Arc<DatasetFeed>>>,
    config: FeedConfig,
    start: u64,
}

impl Hub {
    pub fn new(config: FeedConfig) -> Hub {
        Hub {
            feeds: RwLock::new(HashMap::new()),
            config,
            start: (now_micros().max(0) as u64).saturating_mul(1000),
        }
    }

    pub fn config(&self) -> &FeedConfig {
        &self.config
    }

    fn feed(&self, dataset: &str) -> Arc<DatasetFeed> {
        if let Some(f) = self
            .feeds
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(dataset)
        {
            return f.clone();
        }
        self.feeds
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(dataset.to_string())
            .or_insert_with(|| {
                Arc::new(DatasetFeed {
                    recent: Mutex::new(Recent {
                        next: self.start,
                        batches: VecDeque::new(),
                        readings: 0,
                    }),
                    tx: broadcast::channel(self.config.session_queue).0,
                })
            })
            .clone()
    }

    /// Publishes acknowledged readings of `dataset`.
    pub fn publish(&self, dataset: &Arc<Dataset>, readings: impl Into<Arc<Vec<Reading>>>) {
        let readings = readings.into();
        if readings.is_empty() {
            return;
        }
        let feed = self.feed(&dataset.id);
        let now = now_micros();
        let window = self.config.replay_window.as_micros() as Micros;
        let mut recent = feed.recent.lock().unwrap_or_else(|e| e.into_inner());
        let batch = Arc::new(FeedBatch {
            dataset: dataset.clone(),
            first: recent.next,
            readings,
            json: OnceLock::new(),
        });
        let count = batch.readings.len();
        recent.next += count as u64;
        if window > 0 && self.config.replay_max > 0 {
            recent.readings += count;
            recent.batches.push_back(batch.clone());
            while let Some(old) = recent.batches.front() {
                let too_many = recent.readings > self.config.replay_max;
                let too_old = old.readings[0].received_at < now - window;
                if !(too_many || too_old) {
                    break;
                }
                recent.readings -= old.readings.len();
                recent.batches.pop_front();
            }
        }
        // Sent under the lock: sessions see batches in position order.
        let _ = feed.tx.send(batch);
    }

    /// Starts following `dataset`: live from now, or, with `after` (the last position the
    /// client has), from the reading after it as far as the recent history goes.
    /// With `latest`, also each sensor's last reading within the recent history (for
    /// retained messages).
    ///
    /// The lock that publishing takes is held only to copy pointers to the recent batches
    /// and join the broadcast; the scans run after it is released, so a subscriber never
    /// holds up intake's acknowledgements for longer than that copy.
    pub fn subscribe(&self, dataset: &str, after: Option<u64>, latest: bool) -> Cursor {
        let feed = self.feed(dataset);
        let (live, history, next) = {
            let recent = feed.recent.lock().unwrap_or_else(|e| e.into_inner());
            // Batches are in position order: those holding anything after `after` are a tail.
            let from = match (latest, after) {
                (true, _) => 0,
                (false, Some(after)) => recent.batches.partition_point(|b| b.last() <= after),
                (false, None) => recent.batches.len(),
            };
            let history: Vec<Arc<FeedBatch>> = recent.batches.range(from..).cloned().collect();
            (feed.tx.subscribe(), history, recent.next)
        };
        let latest = if latest {
            // Newest first: the first reading seen of each sensor is its last.
            let mut seen: HashMap<&str, ()> = HashMap::new();
            let mut found = Vec::new();
            for batch in history.iter().rev() {
                for (i, r) in batch.readings.iter().enumerate().rev() {
                    if seen.insert(r.sensor_id.as_str(), ()).is_none() {
                        found.push(Latest {
                            sensor: r.sensor_id.clone(),
                            ts: r.ts,
                            reading: r.clone(),
                            json: batch.json()[i].clone(),
                        });
                    }
                }
            }
            found
        } else {
            Vec::new()
        };
        let missed = match after {
            Some(after) if after < next => history
                .iter()
                .filter(|b| b.last() > after)
                .cloned()
                .collect(),
            _ => Vec::new(),
        };
        Cursor {
            latest,
            missed,
            after,
            live,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::{Config, DEFAULT_CONFIG};

    fn dataset() -> Arc<Dataset> {
        let config = Config::from_toml(DEFAULT_CONFIG, "default", &[]).unwrap();
        Arc::new(config.datasets[0].build())
    }

    fn reading(sensor: &str, n: i64) -> Reading {
        let ds = dataset();
        let mut r = Reading::empty(ds.fields.len(), 1_000);
        r.sensor_id = sensor.into();
        r.ts = 1_000 + n;
        r.received_at = now_micros();
        r.values[0] = Some(Value::Int(n));
        r
    }

    #[test]
    fn readings_become_json_once_with_their_positions() {
        let ds = dataset();
        let hub = Hub::new(FeedConfig::default());
        let mut sub = hub.subscribe(&ds.id, None, false);
        hub.publish(&ds, vec![reading("a", 1), reading("b\"x", 2)]);
        let batch = sub.live.try_recv().unwrap();
        let json = batch.json();
        let first: serde_json::Value = serde_json::from_str(&json[0]).unwrap();
        assert_eq!(first["id"], hub.start.to_string());
        assert_eq!(first["sensor_id"], "a");
        assert_eq!(first["fields"][&ds.fields[0].name], 1);
        let second: serde_json::Value = serde_json::from_str(&json[1]).unwrap();
        assert_eq!(second["sensor_id"], "b\"x");
        assert_eq!(second["id"], (hub.start + 1).to_string());
        assert!(std::ptr::eq(batch.json(), json), "made once");
    }

    #[test]
    fn a_resumed_subscription_gets_what_it_missed_exactly_once() {
        let ds = dataset();
        let hub = Hub::new(FeedConfig::default());
        for n in 0..10 {
            hub.publish(&ds, vec![reading("a", 2 * n), reading("b", 2 * n + 1)]);
        }
        // The client saw positions up to start + 6: it gets 7..=19, whole batches from the
        // one holding position 7 (the session skips what it already has).
        let sub = hub.subscribe(&ds.id, Some(hub.start + 6), false);
        let firsts: Vec<u64> = sub.missed.iter().map(|b| b.first - hub.start).collect();
        assert_eq!(firsts, [6, 8, 10, 12, 14, 16, 18]);
        // Nothing to resume from a future position; everything from an older process's.
        assert!(
            hub.subscribe(&ds.id, Some(hub.start + 1_000), false)
                .missed
                .is_empty()
        );
        assert_eq!(hub.subscribe(&ds.id, Some(5), false).missed.len(), 10);
    }

    #[test]
    fn recent_history_is_bounded_by_count() {
        let ds = dataset();
        let hub = Hub::new(FeedConfig {
            replay_max: 5,
            replay_window: Duration::from_secs(60),
            ..FeedConfig::default()
        });
        for n in 0..10 {
            hub.publish(&ds, vec![reading("a", n)]);
        }
        assert_eq!(hub.subscribe(&ds.id, Some(0), false).missed.len(), 5);
    }

    #[test]
    fn each_sensors_last_reading_is_kept() {
        let ds = dataset();
        let hub = Hub::new(FeedConfig::default());
        hub.publish(&ds, vec![reading("a", 1), reading("b", 2)]);
        hub.publish(&ds, vec![reading("a", 3)]);
        let mut latest: Vec<(String, i64)> = hub
            .subscribe(&ds.id, None, true)
            .latest
            .iter()
            .map(|l| (l.sensor.to_string(), l.ts - 1_000))
            .collect();
        latest.sort();
        assert_eq!(latest, [("a".into(), 3), ("b".into(), 2)]);
        assert!(hub.subscribe(&ds.id, None, false).latest.is_empty());
    }
}
