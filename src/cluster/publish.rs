//! This node's records to the broker: a log consumer that publishes each record at QoS 1
//! and moves its checkpoint past the records the broker acknowledged, in log order. A lost
//! connection or a restart publishes again from the checkpoint (the followers drop what
//! they have seen).
//!
//! Each connection is a fresh rumqttc client and event loop, polled by a task of its own
//! (a poll is never cancelled half-way: a dropped poll can lose a publish it had started, or
//! never finish a reconnect), starting clean: what was in flight on the last one is
//! published again from the log, never resent by the client library. Acknowledgements are
//! matched to records by packet id.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::Outgoing as Sent;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason};
use rumqttc::v5::{AsyncClient, ConnectionError, Event};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Cluster;
use crate::model::{Micros, now_micros};
use crate::wal::{Checkpoint, Consumer, Record, Wal, record};

/// The log consumer's name (its checkpoint).
pub const CONSUMER: &str = "cluster";
/// The largest message published (a broker may allow less, and says so when it accepts
/// the connection): a record larger than that (a huge HTTP body) is not sent to the other
/// nodes (counted `too_large`; this node's lake has it).
pub const MAX_MESSAGE: usize = 8 << 20;
/// Room in a PUBLISH packet besides the message: fixed header, topic, packet id, properties.
const PACKET_OVERHEAD: usize = 64;
/// Records read ahead of the broker at most (what travels together comes from these), and
/// their bytes at most (one record always).
const READY_RECORDS: usize = 4096;
const READY_BYTES: usize = 16 << 20;
/// Messages acknowledged in a row before a bundle size halved after a lost connection
/// doubles again.
const GROW_AFTER: u32 = 64;

/// Records read from the log, not yet handed to the client, and their bytes.
#[derive(Default)]
struct Ready {
    records: VecDeque<Outgoing>,
    bytes: usize,
}

impl Ready {
    fn has_room(&self) -> bool {
        self.records.len() < READY_RECORDS && self.bytes < READY_BYTES
    }

    fn push(&mut self, o: Outgoing) {
        self.bytes += o.payload.as_ref().map_or(0, Vec::len);
        self.records.push_back(o);
    }

    /// Lets record `i`'s payload go (it is not to be published).
    fn leave_out(&mut self, i: usize) {
        if let Some(p) = self.records[i].payload.take() {
            self.bytes -= p.len();
        }
    }

    /// The first `n` records go.
    fn consume(&mut self, n: usize) {
        for o in self.records.drain(..n) {
            self.bytes -= o.payload.as_ref().map_or(0, Vec::len);
        }
    }

    fn clear(&mut self) {
        self.records.clear();
        self.bytes = 0;
    }
}
/// How often the checkpoint is stored and old records let go.
const TICK: Duration = Duration::from_millis(250);
/// How long a stopping node goes on publishing what its log still holds.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// A record read from the log, on its way to the broker.
struct Outgoing {
    lsn: u64,
    appended_at: Micros,
    /// The record's payload as the log holds it, or `None` when it is not to be published.
    payload: Option<Vec<u8>>,
}

/// A message (or a record left out) handed to the client on this connection.
struct Handed {
    /// The last record it holds.
    lsn: u64,
    /// How many records it holds.
    records: u64,
    /// Whether the broker must acknowledge it (a record not published settles with those
    /// before it).
    awaits: bool,
    /// The packet id the client gave it, once it was sent.
    pkid: Option<u16>,
    acked: bool,
}

/// Records handed to the client on this connection, in log order.
#[derive(Default)]
struct InFlight {
    records: VecDeque<Handed>,
    /// Of them, published and not yet acknowledged.
    awaiting: usize,
}

impl InFlight {
    fn publish(&mut self, lsn: u64, records: u64) {
        self.records.push_back(Handed {
            lsn,
            records,
            awaits: true,
            pkid: None,
            acked: false,
        });
        self.awaiting += 1;
    }

    fn skip(&mut self, lsn: u64) {
        self.records.push_back(Handed {
            lsn,
            records: 1,
            awaits: false,
            pkid: None,
            acked: true,
        });
    }

    /// The client sent a publish with `pkid`: the oldest published record without one
    /// (the client sends in the order it was handed them).
    fn sent(&mut self, pkid: u16) {
        if let Some(h) = self
            .records
            .iter_mut()
            .find(|h| h.awaits && h.pkid.is_none())
        {
            h.pkid = Some(pkid);
        }
    }

    /// The broker acknowledged `pkid`: the records of that message (`None`: no message
    /// here has it).
    fn acked(&mut self, pkid: u16) -> Option<u64> {
        let h = self
            .records
            .iter_mut()
            .find(|h| h.awaits && !h.acked && h.pkid == Some(pkid))?;
        h.acked = true;
        self.awaiting -= 1;
        Some(h.records)
    }

    /// The LSN the broker now has everything up to, if it moved.
    fn settle(&mut self) -> Option<u64> {
        let mut through = None;
        while self.records.front().is_some_and(|h| h.acked) {
            through = self.records.pop_front().map(|h| h.lsn);
        }
        through
    }
}

/// What woke the publisher.
enum Wake {
    Stop,
    /// Look again: something may be ready.
    Look,
    Tick,
    Reconnect,
    Event(Box<Option<Result<Event, ConnectionError>>>),
}

/// One connection: its client, and its events from the task that polls it.
struct Connection {
    client: AsyncClient,
    events: mpsc::UnboundedReceiver<Result<Event, ConnectionError>>,
    poller: tokio::task::JoinHandle<()>,
    connected: bool,
    /// The largest message the broker takes.
    max_message: usize,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

#[derive(Debug)]
pub struct Publisher {
    cluster: Arc<Cluster>,
    wal: Wal,
    topic: String,
    /// The broker has every record up to here.
    acked: u64,
}

impl Publisher {
    pub fn new(cluster: Arc<Cluster>, wal: Wal) -> std::io::Result<Publisher> {
        // The first start publishes what is committed from then on, not the log's past.
        let acked = wal.register_from_now(CONSUMER)?.lsn;
        let topic = cluster.config.topic_of(&cluster.config.node_id);
        Ok(Publisher {
            cluster,
            wal,
            topic,
            acked,
        })
    }

    /// Runs [`Self::run`]; should it fail (a bug), says so and stops holding the log, so that
    /// intake goes on (the other nodes then miss this node's readings until a restart).
    pub async fn run_supervised(self, stop: CancellationToken) {
        let wal = self.wal.clone();
        if let Err(e) = tokio::spawn(self.run(stop)).await {
            tracing::error!(error = %e, "the cluster publisher failed: the other nodes get no more of this node's readings until a restart");
            wal.release(CONSUMER);
        }
    }

    /// A new connection: a fresh client (clean start) whose event loop a task polls.
    fn connect(&self) -> Connection {
        let mut options = self.cluster.options("out");
        options.set_clean_start(true);
        let max = self.cluster.config.max_in_flight;
        options.set_outgoing_inflight_upper_limit(u16::try_from(max).unwrap_or(u16::MAX));
        let (client, mut eventloop) = AsyncClient::new(options, max + 16);
        let (tx, events) = mpsc::unbounded_channel();
        let poller = tokio::spawn(async move {
            loop {
                let event = eventloop.poll().await;
                let failed = event.is_err();
                if tx.send(event).is_err() || failed {
                    return;
                }
            }
        });
        Connection {
            client,
            events,
            poller,
            connected: false,
            max_message: MAX_MESSAGE,
        }
    }

    /// Publishes until `stop`, then for [`STOP_GRACE`] more what the log still holds.
    async fn run(mut self, stop: CancellationToken) {
        let config = self.cluster.config.clone();
        let metrics = self.cluster.metrics.clone();
        let mut conn = Some(self.connect());
        let mut reconnect_at = tokio::time::Instant::now();
        let mut consumer = self.wal.consumer(self.acked);
        let mut stored = self.acked;
        let mut ready = Ready::default();
        let mut in_flight = InFlight::default();
        // Halved when a connection goes while a message of several records is in flight (a
        // broker may refuse large messages without saying so at connect), grown again after
        // [`GROW_AFTER`] acknowledgements in a row.
        let mut bundle_limit = super::BUNDLE_BYTES;
        let mut acked_in_a_row = 0;
        let mut committed = self.wal.committed();
        let mut tick = tokio::time::interval(TICK);
        let mut backoff = Duration::from_millis(250);
        let mut stop_by: Option<tokio::time::Instant> = None;
        let max_backlog = config.max_backlog.as_micros() as Micros;
        loop {
            // Records acknowledged too long ago are let go, connected or not.
            let oldest = now_micros() - max_backlog;
            let max_message = conn.as_ref().map_or(MAX_MESSAGE, |c| c.max_message);
            // Room in a message for records (past its epoch and MAC, and each record's length).
            let room = max_message.saturating_sub(super::HEADER + 4);
            for i in 0..ready.records.len() {
                let o = &ready.records[i];
                let Some(p) = &o.payload else { continue };
                if o.appended_at < oldest {
                    ready.leave_out(i);
                    metrics.published("too_old", 1);
                } else if p.len() > room {
                    ready.leave_out(i);
                    metrics.published("too_large", 1);
                }
            }
            let live = conn.as_ref().filter(|c| c.connected);
            while let Some(o) = ready.records.front() {
                if o.payload.is_none() {
                    in_flight.skip(o.lsn);
                    ready.consume(1);
                    continue;
                }
                let Some(c) = live.filter(|_| in_flight.awaiting < config.max_in_flight) else {
                    break;
                };
                // The records ready to go together: consecutive, up to a bundle's size (the
                // first one whatever its size).
                let limit = bundle_limit.min(room);
                let mut size = 0;
                let run = ready
                    .records
                    .iter()
                    .take_while(|o| {
                        let Some(p) = &o.payload else { return false };
                        let first = size == 0;
                        size += p.len() + 4;
                        first || size <= limit
                    })
                    .count();
                let body = super::bundle(
                    ready
                        .records
                        .iter()
                        .take(run)
                        .filter_map(|o| o.payload.as_deref()),
                );
                let last = ready.records[run - 1].lsn;
                let message =
                    super::message(&config.secret.0, &self.topic, self.cluster.epoch, &body);
                if let Err(e) = c
                    .client
                    .try_publish(&self.topic, QoS::AtLeastOnce, false, message)
                {
                    // The request queue has room for every message in flight; full, it
                    // drains as the connection takes them.
                    tracing::debug!(error = %e, "cannot queue a message for the broker yet");
                    break;
                }
                in_flight.publish(last, run as u64);
                ready.consume(run);
            }
            if let Some(lsn) = in_flight.settle() {
                self.acked = lsn;
            }
            let upto = *committed.borrow_and_update();
            metrics.set_lag(upto.saturating_sub(self.acked));
            if let Some(by) = stop_by
                && (tokio::time::Instant::now() >= by
                    || (self.acked >= upto && in_flight.records.is_empty()))
            {
                break;
            }
            if ready.has_room() && consumer.position() < upto {
                consumer = self.read(consumer, upto, &mut ready).await;
                continue;
            }
            let no_conn = conn.is_none();
            let event = async {
                match conn.as_mut() {
                    Some(c) => c.events.recv().await,
                    None => std::future::pending().await,
                }
            };
            let wake = tokio::select! {
                _ = stop.cancelled(), if stop_by.is_none() => Wake::Stop,
                _ = tokio::time::sleep_until(stop_by.unwrap_or_else(tokio::time::Instant::now)), if stop_by.is_some() => Wake::Look,
                _ = committed.changed() => Wake::Look,
                _ = tick.tick() => Wake::Tick,
                _ = tokio::time::sleep_until(reconnect_at), if no_conn => Wake::Reconnect,
                event = event => Wake::Event(Box::new(event)),
            };
            let event = match wake {
                Wake::Stop => {
                    stop_by = Some(tokio::time::Instant::now() + STOP_GRACE);
                    continue;
                }
                Wake::Look => continue,
                Wake::Tick => {
                    if self.acked > stored {
                        self.store(self.acked);
                        stored = self.acked;
                    }
                    continue;
                }
                Wake::Reconnect => {
                    conn = Some(self.connect());
                    continue;
                }
                Wake::Event(event) => *event,
            };
            let c = conn.as_mut().expect("events come only with a connection");
            let mut lost = false;
            match event {
                Some(Ok(Event::Incoming(Packet::ConnAck(ack)))) => {
                    tracing::info!(topic = %self.topic, "publishing to the cluster's broker");
                    c.connected = true;
                    if let Some(max) = ack.properties.and_then(|p| p.max_packet_size) {
                        c.max_message = MAX_MESSAGE
                            .min((max as usize).saturating_sub(PACKET_OVERHEAD + self.topic.len()));
                    }
                    backoff = Duration::from_millis(250);
                    metrics.connected("out", true);
                }
                Some(Ok(Event::Outgoing(Sent::Publish(pkid)))) => in_flight.sent(pkid),
                Some(Ok(Event::Incoming(Packet::PubAck(ack)))) => {
                    if matches!(
                        ack.reason,
                        PubAckReason::Success | PubAckReason::NoMatchingSubscribers
                    ) {
                        if let Some(records) = in_flight.acked(ack.pkid) {
                            metrics.published("published", records);
                            acked_in_a_row += 1;
                            if acked_in_a_row >= GROW_AFTER {
                                bundle_limit = (bundle_limit * 2).min(super::BUNDLE_BYTES);
                                acked_in_a_row = 0;
                            }
                        }
                    } else if refused_for_good(ack.reason) {
                        // Not taken (the broker's access rules, say): the other nodes never
                        // see it; sending it again would not change that.
                        tracing::error!(reason = ?ack.reason, topic = %self.topic, "the cluster's broker refused a record");
                        if let Some(records) = in_flight.acked(ack.pkid) {
                            metrics.published("refused", records);
                        }
                    } else {
                        // For now (a quota, say): from that record again, later.
                        tracing::warn!(reason = ?ack.reason, retry_in = ?backoff, "the cluster's broker did not take a record; publishing again from it");
                        lost = true;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    if c.connected {
                        tracing::warn!(error = %e, "lost the cluster's broker; publishing again from the last acknowledged record");
                    } else {
                        tracing::warn!(error = %e, retry_in = ?backoff, "cannot reach the cluster's broker");
                    }
                    lost = true;
                }
                None => lost = true,
            }
            if lost {
                // What was in flight is published again, from the log, on a new connection
                // after a pause; in smaller messages if large ones were in flight.
                if in_flight.records.iter().any(|h| h.awaits && h.records > 1) {
                    bundle_limit = (bundle_limit / 2).max(1);
                }
                acked_in_a_row = 0;
                conn = None;
                metrics.connected("out", false);
                metrics.reconnect("out");
                in_flight = InFlight::default();
                ready.clear();
                consumer = self.wal.consumer(self.acked);
                if stop_by.is_some() {
                    break;
                }
                reconnect_at = tokio::time::Instant::now() + backoff;
                backoff = super::next_backoff(backoff);
            }
        }
        if self.acked > stored {
            self.store(self.acked);
        }
        metrics.connected("out", false);
        if let Some(c) = conn {
            let _ = c.client.try_disconnect();
            // The poller sends the DISCONNECT, then the connection ends.
            let mut c = c;
            let _ = tokio::time::timeout(Duration::from_millis(200), c.events.recv()).await;
        }
    }

    fn store(&self, lsn: u64) {
        let cp = Checkpoint { lsn, intent: None };
        if let Err(e) = self.wal.checkpoint(CONSUMER, cp) {
            tracing::error!(error = %e, "cannot store the cluster publisher's checkpoint; it publishes again from the last one after a restart");
        }
    }

    /// Reads records after the consumer's place into `ready` while it has room: from memory
    /// when it can, else from the disk on a blocking thread.
    async fn read(&self, mut consumer: Consumer, upto: u64, ready: &mut Ready) -> Consumer {
        let (records, bytes) = (ready.records.len(), ready.bytes);
        let mut taken = Vec::new();
        let mut taken_bytes = 0;
        let in_memory = consumer.read_memory(upto, |r| {
            let o = outgoing(r);
            taken_bytes += o.payload.as_ref().map_or(0, Vec::len);
            taken.push(o);
            records + taken.len() < READY_RECORDS && bytes + taken_bytes < READY_BYTES
        });
        let room = records + taken.len() < READY_RECORDS && bytes + taken_bytes < READY_BYTES;
        if !in_memory && room {
            let at = consumer.position();
            let (records, bytes) = (records + taken.len(), bytes + taken_bytes);
            let read = tokio::task::spawn_blocking(move || {
                let mut more: Vec<Outgoing> = Vec::new();
                let mut more_bytes = 0;
                let result = consumer.read(upto, |r| {
                    let o = outgoing(r);
                    more_bytes += o.payload.as_ref().map_or(0, Vec::len);
                    more.push(o);
                    records + more.len() < READY_RECORDS && bytes + more_bytes < READY_BYTES
                });
                (consumer, more, result)
            })
            .await;
            match read {
                Ok((c, more, Ok(()))) => {
                    consumer = c;
                    taken.extend(more);
                }
                Ok((_, _, Err(e))) => {
                    tracing::error!(error = %e, "the cluster publisher cannot read the log; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    consumer = self.wal.consumer(at);
                }
                Err(e) => {
                    tracing::error!(error = %e, "the cluster publisher's log read failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    consumer = self.wal.consumer(at);
                }
            }
        }
        for o in taken {
            ready.push(o);
        }
        consumer
    }
}

/// Whether a broker's refusal stands however often the record is sent.
fn refused_for_good(reason: PubAckReason) -> bool {
    matches!(
        reason,
        PubAckReason::NotAuthorized
            | PubAckReason::TopicNameInvalid
            | PubAckReason::PayloadFormatInvalid
    )
}

/// A record on its way: the payload from the disk as it is, one from memory encoded as the
/// log did.
fn outgoing(r: Record<'_>) -> Outgoing {
    match r {
        Record::Memory(c) => {
            let mut frame = record::encode(&c.dataset, &c.readings, c.appended_at);
            record::seal(&mut frame, c.lsn);
            frame.drain(..record::FRAME_HEADER);
            Outgoing {
                lsn: c.lsn,
                appended_at: c.appended_at,
                payload: Some(frame),
            }
        }
        Record::Disk { lsn, payload } => Outgoing {
            lsn,
            appended_at: record::header(payload).map_or(0, |h| h.appended_at),
            payload: Some(payload.to_vec()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checkpoint_moves_only_past_acknowledged_records_in_log_order() {
        let mut f = InFlight::default();
        f.publish(1, 1);
        f.skip(2);
        f.publish(3, 1);
        f.publish(4, 1);
        f.sent(7);
        f.sent(8);
        f.sent(9);
        assert_eq!(f.settle(), None, "record 1 is not acknowledged yet");
        // The broker acknowledges 4 and 3 before 1: nothing moves until 1 is in.
        assert!(f.acked(9).is_some() && f.acked(8).is_some());
        assert_eq!(f.settle(), None);
        assert_eq!(f.acked(9), None, "once");
        assert_eq!(f.acked(42), None, "no such packet");
        assert_eq!(f.acked(7), Some(1));
        assert_eq!(f.settle(), Some(4));
        assert_eq!(f.awaiting, 0);
        f.skip(5);
        assert_eq!(f.settle(), Some(5));
    }

    #[test]
    fn only_standing_refusals_let_a_record_go() {
        assert!(refused_for_good(PubAckReason::NotAuthorized));
        assert!(!refused_for_good(PubAckReason::QuotaExceeded));
        assert!(!refused_for_good(PubAckReason::UnspecifiedError));
    }
}
