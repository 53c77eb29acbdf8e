//! The MQTT endpoint: devices publish over MQTT 3.1.1 and 5 and are acknowledged only when
//! the pipeline has accepted their readings.
//!
//! citygate speaks MQTT itself, with `rumqttd::protocol` (the v4 and v5 packet codecs) for the
//! wire format, rather than embedding the rumqttd broker: that broker acknowledges a QoS 1
//! publish before anyone reads it, keeps its log in memory and has no topic authorisation.
//! Here a PUBACK (or PUBREC) leaves only after `Pipeline::ingest` has returned for that
//! publish, in the order the publishes came, with many in flight per connection.
//!
//! - CONNECT: the password (or the user name when there is no password) is a device key.
//!   Client ids are per account: a second connection of the same account with the same
//!   client id takes the session over; another account's same client id is another session,
//!   so no tenant can disconnect, or lock out, another's device.
//! - The key is checked again every `[feed] recheck` (at most a second) while the connection
//!   lives: once revoked, expired or rotated past its overlap, the connection ends (MQTT 5:
//!   DISCONNECT `0x87`), so nothing more is acknowledged for it.
//! - PUBLISH to `citygate/{dataset}/{sensor_id}` or `citygate/{dataset}` (module `topic`).
//! - MQTT 5 rejects carry reason codes: `0x87` not authorised, `0x90` topic invalid, `0x97`
//!   quota exceeded (rate limit, full queue), `0x99` payload invalid, with a reason string.
//!   A publish of which some readings were rejected is acknowledged `0x00` (the rest are
//!   kept) with a reason string naming the rejects.
//! - MQTT 3.1.1 has no reason codes: invalid readings are acknowledged and recorded as
//!   rejects; over the rate limit, a QoS 1/2 acknowledgement waits until the limit allows (the
//!   device slows down); QoS 0 over the limit is dropped and counted; a publish that can
//!   never be accepted (unknown topic, dataset not allowed) closes the connection, as the
//!   3.1.1 spec allows, instead of being acknowledged and dropped.
//! - Subscribers (any key but a device key; no will allowed) SUBSCRIBE to
//!   `citygate/{dataset}/#`, `…/+` or `…/{sensor_id}` of datasets they are entitled to; every
//!   filter is checked on its own and the SUBACK says which were granted (QoS 0 or 1) and
//!   which refused (MQTT 5 `0x87`, 3.1.1 `0x80`). Each sensor's last reading (within
//!   `[feed] replay_window`) comes first, retained; then readings as the live feeds deliver
//!   them (delay and aggregate tiers included), QoS 1 within the client's receive maximum.
//!   When the entitlement ends the connection is closed (MQTT 5: DISCONNECT `0x87`). A
//!   device key's SUBSCRIBE is refused.
//! - Protocol violations disconnect that client only.

mod session;
mod topic;

/// How citygate's endpoint tells a payload's format, for upstream brokers' messages too.
pub(crate) use topic::format_of;
mod wire;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::MqttConfig;
use crate::market::Keyring;
use crate::pipeline::Pipeline;
use crate::telemetry::MqttMetrics;

/// What every MQTT session shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub pipeline: Arc<Pipeline>,
    pub keyring: Arc<Keyring>,
    pub metrics: MqttMetrics,
    pub config: MqttConfig,
    /// Live feeds for subscriber connections.
    pub feed: Arc<crate::feed::session::FeedService>,
    /// Fired when the gateway shuts down.
    pub closing: CancellationToken,
    /// Open sessions by (account, client id): number and takeover token.
    sessions: Mutex<HashMap<(String, String), (u64, CancellationToken)>>,
    next_session: AtomicU64,
}

impl Shared {
    pub(crate) fn new(
        pipeline: Arc<Pipeline>,
        keyring: Arc<Keyring>,
        metrics: MqttMetrics,
        config: MqttConfig,
        feed: Arc<crate::feed::session::FeedService>,
        closing: CancellationToken,
    ) -> Shared {
        Shared {
            pipeline,
            keyring,
            metrics,
            config,
            feed,
            closing,
            sessions: Mutex::new(HashMap::new()),
            next_session: AtomicU64::new(1),
        }
    }

    /// Registers a session of `account` under `client_id`, taking over (cancelling) the
    /// account's session already there. Returns the session's number and its takeover token.
    fn register(&self, account: &str, client_id: &str) -> (u64, CancellationToken) {
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        let token = CancellationToken::new();
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let slot = (account.to_string(), client_id.to_string());
        if let Some((_, previous)) = sessions.insert(slot, (id, token.clone())) {
            previous.cancel();
        }
        (id, token)
    }

    /// Forgets a finished session, unless another has taken its client id since.
    fn unregister(&self, account: &str, client_id: &str, id: u64) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let slot = (account.to_string(), client_id.to_string());
        if sessions
            .get(&slot)
            .is_some_and(|(current, _)| *current == id)
        {
            sessions.remove(&slot);
        }
    }
}

/// Accepts MQTT connections until `shared.closing` fires, then waits up to `drain` for the
/// sessions to finish what they have in flight.
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>, drain: Duration) {
    let permits = Arc::new(Semaphore::new(shared.config.max_connections));
    let sessions = TaskTracker::new();
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            _ = shared.closing.cancelled() => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "mqtt accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shared.closing.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        sessions.spawn(async move {
            session::run(stream, peer, shared).await;
            drop(permit);
        });
    }
    drop(listener);
    sessions.close();
    if tokio::time::timeout(drain, sessions.wait()).await.is_err() {
        tracing::warn!(
            open = sessions.len(),
            "mqtt sessions still open at the shutdown deadline"
        );
    }
}
