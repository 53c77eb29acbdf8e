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

mod filter;
mod slots;
mod tier;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use compact_str::CompactString;
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;

pub use filter::Filter;
pub use slots::{Slot, Slots};
use tier::{State, Tier, tier_of};

use super::{Cursor, FeedBatch, Hub};
use crate::market::{Grant, Keyring, Market};
use crate::model::{Micros, now_micros};

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
mod tests;
