//! One subscriber following one dataset, whatever the protocol: the readings it missed,
//! then live ones, filtered, shaped by its plan's tier, metered, and stopped when its
//! entitlement ends.
//!
//! Tiers: a paid (or provider's, or admin's) grant gets each reading as it arrives; a
//! `delay` grant gets each reading `delay` after its device time, in position order (so a
//! reconnect resuming from the last position it saw loses nothing, and replay cannot read
//! around the delay); an `aggregate` grant gets, at the end of each window, per sensor the
//! count and, per numeric field, count, mean, min and max of what arrived in the window.
//!
//! The key and the entitlement are checked again every `[feed] recheck`: a revoked key, an
//! expired subscription or a cancelled plan ends the session within that time (plus the
//! key cache's second when the key was revoked by another process).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use compact_str::CompactString;
use serde_json::json;
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;

use super::{Cursor, FeedBatch, Hub};
use crate::market::{Grant, Keyring, Market};
use crate::model::{Micros, Reading, Value, now_micros};

/// Batches a session takes from the hub in one turn at most, and the readings it gathers
/// before handing them on.
const DRAIN_BATCHES: usize = 256;
const DRAIN_READINGS: usize = 4096;
/// Readings handed to the connection in one message at most...
pub const CHUNK: usize = 1024;
/// ...and such messages waiting for the connection at most.
const OUT_CHUNKS: usize = 8;

/// The channel a session hands its client's readings through, in chunks.
pub fn channel() -> (mpsc::Sender<Vec<Out>>, mpsc::Receiver<Vec<Out>>) {
    mpsc::channel(OUT_CHUNKS)
}

/// Which readings of a dataset a session wants.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Filter {
    pub sensors: Option<HashSet<String>>,
    /// min lon, min lat, max lon, max lat.
    pub bbox: Option<[f64; 4]>,
}

impl Filter {
    /// From `sensors=a,b` and `bbox=minlon,minlat,maxlon,maxlat`.
    pub fn parse(sensors: Option<&str>, bbox: Option<&str>) -> Result<Filter, String> {
        let sensors = match sensors {
            Some(s) => {
                let set: HashSet<String> = s
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect();
                if set.is_empty() {
                    return Err("sensors: name at least one sensor id".into());
                }
                Some(set)
            }
            None => None,
        };
        let bbox = match bbox {
            Some(b) => {
                let v: Vec<f64> = b
                    .split(',')
                    .map(|x| x.trim().parse::<f64>())
                    .collect::<Result<_, _>>()
                    .map_err(|_| format!("bbox: `{b}` is not four numbers"))?;
                let [min_lon, min_lat, max_lon, max_lat] = v[..] else {
                    return Err(format!(
                        "bbox: `{b}` is not min_lon,min_lat,max_lon,max_lat"
                    ));
                };
                let ok = (-180.0..=180.0).contains(&min_lon)
                    && (-180.0..=180.0).contains(&max_lon)
                    && (-90.0..=90.0).contains(&min_lat)
                    && (-90.0..=90.0).contains(&max_lat)
                    && min_lon <= max_lon
                    && min_lat <= max_lat;
                if !ok {
                    return Err(format!(
                        "bbox: `{b}` is not min_lon,min_lat,max_lon,max_lat within the globe"
                    ));
                }
                Some([min_lon, min_lat, max_lon, max_lat])
            }
            None => None,
        };
        Ok(Filter { sensors, bbox })
    }

    pub fn matches(&self, r: &Reading) -> bool {
        if let Some(s) = &self.sensors
            && !s.contains(r.sensor_id.as_str())
        {
            return false;
        }
        if let Some([min_lon, min_lat, max_lon, max_lat]) = self.bbox {
            let (Some(lat), Some(lon)) = (r.lat, r.lon) else {
                return false;
            };
            return (min_lon..=max_lon).contains(&lon) && (min_lat..=max_lat).contains(&lat);
        }
        true
    }
}

/// What a session sends to its protocol.
#[derive(Debug)]
pub enum Out {
    /// A sensor's last reading, sent on subscribe (MQTT retained).
    Retained {
        sensor: CompactString,
        json: Arc<str>,
    },
    /// A reading, with its position (the SSE event id).
    Reading {
        position: u64,
        sensor: CompactString,
        json: Arc<str>,
    },
    /// One sensor's aggregates of one window.
    Aggregate { sensor: CompactString, json: String },
}

/// Why a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// The client went away.
    Gone,
    /// The client could not keep up.
    SlowConsumer,
    /// The key was revoked or expired.
    KeyRevoked,
    /// The entitlement ended (subscription expired or cancelled, dataset withdrawn).
    NotEntitled,
    /// The gateway is shutting down.
    Shutdown,
    /// A delayed tier would hold more readings than a session may (`[feed] max_delayed`).
    DelayBufferFull,
}

impl End {
    pub fn as_str(self) -> &'static str {
        match self {
            End::Gone => "gone",
            End::SlowConsumer => "slow_consumer",
            End::KeyRevoked => "key_revoked",
            End::NotEntitled => "not_entitled",
            End::Shutdown => "shutdown",
            End::DelayBufferFull => "delay_buffer_full",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            End::Gone => "the client went away",
            End::SlowConsumer => "the client did not keep up with the feed",
            End::KeyRevoked => "the key was revoked or expired",
            End::NotEntitled => "the subscription to this dataset ended",
            End::Shutdown => "the gateway is shutting down",
            End::DelayBufferFull => {
                "the plan's delay holds back more readings than a session may keep; \
                 follow fewer sensors, or a plan with a shorter delay"
            }
        }
    }
}

/// What every session needs.
#[derive(Debug)]
pub struct FeedService {
    pub hub: Arc<Hub>,
    pub keyring: Arc<Keyring>,
    pub market: Arc<Market>,
    pub metrics: crate::telemetry::FeedMetrics,
    /// Every running session, so shutdown can wait for their last metering.
    pub tasks: tokio_util::task::TaskTracker,
    pub closing: tokio_util::sync::CancellationToken,
    /// Live sessions per account, capped at `[feed] max_sessions_per_account`.
    pub slots: Arc<Slots>,
}

/// Live sessions per account: every SSE stream, WebSocket subscription and MQTT filter holds
/// a [`Slot`] while it runs, so one account cannot open sessions without bound (counted by
/// account, not key: an account can make keys). The protocol side
/// holds it (the response stream, the socket's or connection's table of followed feeds), so
/// a feed replaced or ended there gives its place back at once.
#[derive(Debug)]
pub struct Slots {
    max: usize,
    open: std::sync::Mutex<HashMap<String, usize>>,
}

impl Slots {
    pub fn new(max: usize) -> Slots {
        Slots {
            max,
            open: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// A place for one more session of `account`, or `None` when it has `max` already.
    pub fn take(self: &Arc<Self>, account: &str) -> Option<Slot> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(account.to_string()).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(Slot {
            account: account.to_string(),
            slots: self.clone(),
        })
    }

    pub fn max(&self) -> usize {
        self.max
    }
}

/// One running session's place; dropping it frees the place.
#[derive(Debug)]
pub struct Slot {
    account: String,
    slots: Arc<Slots>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.account) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.account);
            }
        }
    }
}

/// One session's request.
#[derive(Debug)]
pub struct Follow {
    /// The key's secret, to check it again as time passes.
    pub secret: String,
    pub dataset: String,
    pub filter: Filter,
    /// The last position the client has (resume).
    pub after: Option<u64>,
    /// The entitlement found at subscribe.
    pub grant: Grant,
}

#[derive(Clone, Copy, PartialEq)]
enum Tier {
    Live,
    Delay(Micros),
    Aggregate(Micros),
}

fn tier_of(grant: &Grant) -> Tier {
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
struct SensorWindow {
    readings: u64,
    fields: BTreeMap<String, FieldStats>,
}

struct Delayed {
    due: Micros,
    position: u64,
    sensor: CompactString,
    json: Arc<str>,
}

impl Delayed {
    fn out(self) -> Out {
        Out::Reading {
            position: self.position,
            sensor: self.sensor,
            json: self.json,
        }
    }
}

struct State<'a> {
    follow: &'a Follow,
    out: &'a mpsc::Sender<Vec<Out>>,
    tier: Tier,
    /// Positions up to here were handled.
    last: Option<u64>,
    /// Delay tier: readings waiting for their time, in position order.
    delayed: VecDeque<Delayed>,
    /// Readings `delayed` may hold (`[feed] max_delayed`).
    max_delayed: usize,
    /// Aggregate tier: this window's stats by sensor.
    window: BTreeMap<String, SensorWindow>,
    window_start: Micros,
    metered: (u64, u64),
    latest: Vec<super::Latest>,
    /// What is ready for the client and not yet taken by its connection. Once it is due
    /// (see `since`) and the connection has no room, the session takes no new batch from the
    /// hub, so a client that does not keep up falls behind the hub's fan-out queue and is
    /// closed as a slow consumer.
    queue: VecDeque<Out>,
    /// When the oldest reading in `queue` got there, and when the connection last took
    /// something: the queue is handed over at once when the session was idle for `coalesce`,
    /// else `coalesce` after the last hand-over (or once it holds a chunk), so a busy feed
    /// writes once for many readings and a quiet one adds no delay.
    since: Option<Instant>,
    last_flush: Option<Instant>,
    coalesce: Duration,
}

impl State<'_> {
    fn send(&mut self, out: Out) -> Result<(), End> {
        if self.queue.is_empty() {
            self.since = Some(Instant::now());
        }
        self.queue.push_back(out);
        Ok(())
    }

    /// When what waits is to be handed over (`None`: nothing waits).
    fn due_at(&self) -> Option<Instant> {
        let since = self.since?;
        Some(match self.last_flush {
            Some(last) if self.queue.len() < CHUNK => since.max(last + self.coalesce),
            _ => since,
        })
    }

    /// Hands the connection what waits once it is due.
    fn flush(&mut self) -> Result<(), End> {
        match self.due_at() {
            Some(due) if due <= Instant::now() => self.flush_now(),
            _ => Ok(()),
        }
    }

    /// Hands the connection what waits, in chunks of at most [`CHUNK`], as far as it has
    /// room.
    fn flush_now(&mut self) -> Result<(), End> {
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

    fn take(&mut self, batch: &FeedBatch, now: Micros) -> Result<(), End> {
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
    fn release(&mut self, now: Micros) -> Result<(), End> {
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
    fn close_window(&mut self, end: Micros) -> Result<(), End> {
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

    fn meter(&mut self, ctx: &FeedService) {
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

fn instant_at(t: Micros, now: Micros) -> Instant {
    Instant::now() + Duration::from_micros(t.saturating_sub(now).max(0) as u64)
}

/// Starts following: from this call on, every reading published to the dataset reaches
/// the session (call it before telling the client it is subscribed).
pub fn start(ctx: &FeedService, follow: &Follow) -> Cursor {
    ctx.hub.subscribe(&follow.dataset, follow.after, false)
}

/// [`start`], beginning with each sensor's last reading (MQTT's retained messages), as far
/// as the grant's tier allows: none for aggregates, only those due for a delay.
pub fn start_retained(ctx: &FeedService, follow: &Follow) -> Cursor {
    ctx.hub.subscribe(&follow.dataset, follow.after, true)
}

/// Runs a session begun with [`start`] until it ends; sends what the client gets to `out`
/// (bounded: a client that lets it fill is a slow consumer).
pub async fn run(
    ctx: Arc<FeedService>,
    follow: Follow,
    mut sub: Cursor,
    out: mpsc::Sender<Vec<Out>>,
) -> End {
    let now = now_micros();
    let tier = tier_of(&follow.grant);
    let mut state = State {
        follow: &follow,
        out: &out,
        tier,
        last: sub.after,
        delayed: VecDeque::new(),
        max_delayed: ctx.hub.config().max_delayed,
        window: BTreeMap::new(),
        window_start: match tier {
            Tier::Aggregate(w) => now - now.rem_euclid(w),
            _ => now,
        },
        metered: (0, 0),
        latest: std::mem::take(&mut sub.latest),
        queue: VecDeque::new(),
        since: None,
        last_flush: None,
        coalesce: ctx.hub.config().coalesce,
    };
    let end = follow_feed(
        &ctx,
        &mut state,
        &mut sub.live,
        std::mem::take(&mut sub.missed),
    )
    .await;
    state.meter(&ctx);
    end
}

async fn follow_feed(
    ctx: &FeedService,
    state: &mut State<'_>,
    live: &mut broadcast::Receiver<Arc<FeedBatch>>,
    missed: Vec<Arc<FeedBatch>>,
) -> End {
    let now = now_micros();
    for l in std::mem::take(&mut state.latest) {
        let due = match state.tier {
            Tier::Live => true,
            Tier::Delay(d) => l.ts.saturating_add(d) <= now,
            Tier::Aggregate(_) => false,
        };
        if due && state.follow.filter.matches(&l.reading) {
            let out = Out::Retained {
                sensor: l.sensor,
                json: l.json,
            };
            if let Err(end) = state.send(out) {
                return end;
            }
        }
    }
    for batch in missed {
        if let Err(end) = state.take(&batch, now) {
            return end;
        }
    }
    if let Err(end) = state.flush_now() {
        return end;
    }
    state.meter(ctx);
    let mut recheck = tokio::time::interval(ctx.hub.config().recheck);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let now = now_micros();
        let next_due = match state.tier {
            Tier::Delay(_) => state.delayed.front().map(|d| instant_at(d.due, now)),
            Tier::Aggregate(w) => Some(instant_at(state.window_start + w, now)),
            Tier::Live => None,
        };
        // `due`: what waits is to go out now (the connection must take it before more is
        // taken from the hub); `gathering`: it waits for more to go with it.
        let due_at = state.due_at();
        let due = due_at.is_some_and(|t| t <= Instant::now());
        let gathering = due_at.filter(|_| !due);
        let out = state.out;
        let step = tokio::select! {
            biased;
            _ = ctx.closing.cancelled() => Err(End::Shutdown),
            _ = out.closed() => Err(End::Gone),
            _ = recheck.tick() => recheck_grant(ctx, state).await,
            // Room again at the connection: hand over what waits.
            permit = out.reserve(), if due => match permit {
                Ok(permit) => {
                    drop(permit);
                    Ok(())
                }
                Err(_) => Err(End::Gone),
            },
            _ = tokio::time::sleep_until(gathering.unwrap_or_else(Instant::now)), if gathering.is_some() => Ok(()),
            _ = tokio::time::sleep_until(next_due.unwrap_or_else(Instant::now)), if next_due.is_some() => {
                let now = now_micros();
                match state.tier {
                    Tier::Aggregate(w) => {
                        let end = now - now.rem_euclid(w);
                        state.close_window(end.max(state.window_start + w))
                    }
                    _ => state.release(now),
                }
            }
            msg = live.recv(), if !due => match msg {
                Ok(batch) => {
                    let now = now_micros();
                    ctx.metrics.lag(now - batch.readings[0].received_at);
                    let mut taken = state.take(&batch, now);
                    // Whatever else is already there goes in the same turn: under load a
                    // session wakes once for many batches.
                    for _ in 0..DRAIN_BATCHES {
                        if taken.is_err() || state.queue.len() >= DRAIN_READINGS {
                            break;
                        }
                        match live.try_recv() {
                            Ok(batch) => taken = state.take(&batch, now),
                            Err(broadcast::error::TryRecvError::Lagged(_)) => {
                                taken = Err(End::SlowConsumer)
                            }
                            Err(_) => break,
                        }
                    }
                    taken
                }
                Err(broadcast::error::RecvError::Lagged(_)) => Err(End::SlowConsumer),
                Err(broadcast::error::RecvError::Closed) => Err(End::Shutdown),
            },
        };
        let step = step.and_then(|()| state.flush()).and_then(|()| {
            // A client holding up its session while the hub's queue for it fills is closed
            // now, not when (if ever) it catches up to find it lagged.
            if !state.queue.is_empty() && live.len() >= ctx.hub.config().session_queue {
                Err(End::SlowConsumer)
            } else {
                Ok(())
            }
        });
        state.meter(ctx);
        if let Err(end) = step {
            return end;
        }
    }
}

/// Checks the key and the entitlement again; a grant whose terms changed (a plan paid, a
/// tier ended) changes the session's tier.
async fn recheck_grant(ctx: &FeedService, state: &mut State<'_>) -> Result<(), End> {
    let key = match ctx.keyring.authenticate(&state.follow.secret).await {
        Ok(Some(key)) => key,
        Ok(None) => return Err(End::KeyRevoked),
        // A database hiccup is not a reason to cut a paying subscriber off: try again.
        Err(e) => {
            tracing::warn!(error = %e, "feed: key check failed; retrying");
            return Ok(());
        }
    };
    let now = now_micros();
    match ctx
        .market
        .entitlement(&key, &state.follow.dataset, now)
        .await
    {
        Ok(Some(grant)) => {
            let tier = tier_of(&grant);
            if tier != state.tier {
                // Upgraded to real time: what waited goes out now.
                if tier == Tier::Live {
                    while let Some(d) = state.delayed.pop_front() {
                        state.send(d.out())?;
                    }
                }
                state.tier = tier;
                state.window.clear();
                if let Tier::Aggregate(w) = tier {
                    state.window_start = now - now.rem_euclid(w);
                }
            }
            Ok(())
        }
        Ok(None) => Err(End::NotEntitled),
        Err(e) => {
            tracing::warn!(error = %e, "feed: entitlement check failed; retrying");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_and_match() {
        let f = Filter::parse(Some("a, b"), Some("12.4,55.6,12.7,55.8")).unwrap();
        let mut r = Reading::empty(1, 0);
        r.sensor_id = "a".into();
        assert!(!f.matches(&r), "no position: outside every box");
        r.lat = Some(55.7);
        r.lon = Some(12.5);
        assert!(f.matches(&r));
        r.lon = Some(13.0);
        assert!(!f.matches(&r));
        r.lon = Some(12.5);
        r.sensor_id = "c".into();
        assert!(!f.matches(&r));
        assert!(Filter::parse(None, None).unwrap().matches(&r));
        for bad in ["1,2,3", "a,b,c,d", "12.7,55.6,12.4,55.8", "0,95,1,96"] {
            assert!(Filter::parse(None, Some(bad)).is_err(), "{bad}");
        }
        assert!(Filter::parse(Some(" , "), None).is_err());
    }
}
