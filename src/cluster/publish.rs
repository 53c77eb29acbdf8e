//! This node's records to the broker: a log consumer that publishes each record at QoS 1
//! and moves its checkpoint past the records the broker acknowledged, in order. A lost
//! connection or a restart publishes again from the checkpoint (the followers drop what
//! they have seen). The connection starts clean each time: what was in flight on the last
//! one is published again from the log, not resent by the client library.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event};
use tokio_util::sync::CancellationToken;

use super::Cluster;
use crate::model::{Micros, now_micros};
use crate::wal::{Checkpoint, Consumer, Record, Wal, record};

/// The log consumer's name (its checkpoint).
pub const CONSUMER: &str = "cluster";
/// The largest message published: a record larger than this (a huge HTTP body) is not
/// sent to the other nodes (counted `too_large`; this node's lake has it).
pub const MAX_MESSAGE: usize = 8 << 20;
/// How often the checkpoint is stored and old records let go.
const TICK: Duration = Duration::from_millis(250);
/// How long a stopping node goes on publishing what its log still holds.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// A record read from the log, on its way to the broker.
struct Outgoing {
    lsn: u64,
    appended_at: Micros,
    /// The message, or `None` when it is not to be published.
    message: Option<bytes::Bytes>,
}

/// Records handed to the broker on this connection, in order, and whether each awaits its
/// acknowledgement (a record not published settles with those before it).
#[derive(Default)]
struct InFlight {
    records: VecDeque<(u64, bool)>,
    awaiting: usize,
}

impl InFlight {
    /// The LSN the broker now has everything up to, if it moved.
    fn settle(&mut self) -> Option<u64> {
        let mut through = None;
        while let Some(&(lsn, false)) = self.records.front() {
            through = Some(lsn);
            self.records.pop_front();
        }
        through
    }

    /// The broker acknowledged the oldest published record (MQTT acknowledges QoS 1 in the
    /// order published).
    fn acked(&mut self) -> Option<u64> {
        let (lsn, _) = self.records.pop_front()?;
        self.awaiting -= 1;
        Some(self.settle().unwrap_or(lsn))
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

    /// Publishes until `stop`, then for [`STOP_GRACE`] more what the log still holds.
    pub async fn run(mut self, stop: CancellationToken) {
        let config = &self.cluster.config;
        let metrics = self.cluster.metrics.clone();
        let mut options = self.cluster.options("out");
        options.set_clean_start(true);
        let capacity = config.max_in_flight + 16;
        let (client, mut events) = AsyncClient::new(options, capacity);
        let mut consumer = self.wal.consumer(self.acked);
        let mut stored = self.acked;
        let mut ready: VecDeque<Outgoing> = VecDeque::new();
        let mut in_flight = InFlight::default();
        let mut connected = false;
        let mut committed = self.wal.committed();
        let mut tick = tokio::time::interval(TICK);
        let mut backoff = Duration::from_millis(250);
        let mut stop_by: Option<tokio::time::Instant> = None;
        let max_backlog = config.max_backlog.as_micros() as Micros;
        loop {
            // Records acknowledged too long ago are let go, connected or not.
            let oldest = now_micros() - max_backlog;
            for o in ready.iter_mut() {
                if o.message.is_some() && o.appended_at < oldest {
                    o.message = None;
                    metrics.published("too_old", 1);
                }
            }
            while let Some(o) = ready.front() {
                let sendable = o.message.is_some();
                if sendable && (!connected || in_flight.awaiting >= config.max_in_flight) {
                    break;
                }
                let o = ready.pop_front().expect("front");
                match o.message {
                    Some(message) => {
                        if let Err(e) = client.try_publish(
                            &self.topic,
                            QoS::AtLeastOnce,
                            false,
                            message.clone(),
                        ) {
                            // The request queue is full until the connection takes some:
                            // the record waits its turn.
                            tracing::debug!(error = %e, "cannot queue a record for the broker yet");
                            ready.push_front(Outgoing {
                                message: Some(message),
                                ..o
                            });
                            break;
                        }
                        in_flight.records.push_back((o.lsn, true));
                        in_flight.awaiting += 1;
                    }
                    None => in_flight.records.push_back((o.lsn, false)),
                }
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
            if ready.len() < config.max_in_flight && consumer.position() < upto {
                consumer = self.read(consumer, upto, &mut ready).await;
                continue;
            }
            tokio::select! {
                _ = stop.cancelled(), if stop_by.is_none() => {
                    stop_by = Some(tokio::time::Instant::now() + STOP_GRACE);
                }
                _ = tokio::time::sleep_until(stop_by.unwrap_or_else(tokio::time::Instant::now)), if stop_by.is_some() => {}
                _ = committed.changed() => {}
                _ = tick.tick() => {
                    if self.acked > stored {
                        self.store(self.acked);
                        stored = self.acked;
                    }
                }
                event = events.poll() => match event {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        tracing::info!(topic = %self.topic, "publishing to the cluster's broker");
                        connected = true;
                        backoff = Duration::from_millis(250);
                        metrics.connected("out", true);
                    }
                    Ok(Event::Incoming(Packet::PubAck(ack))) => {
                        if let Some(lsn) = in_flight.acked() {
                            self.acked = lsn;
                            use rumqttc::v5::mqttbytes::v5::PubAckReason;
                            if matches!(ack.reason, PubAckReason::Success | PubAckReason::NoMatchingSubscribers) {
                                metrics.published("published", 1);
                            } else {
                                // Not taken (the broker's access rules, say): the other
                                // nodes never see it; sending it again would not change that.
                                tracing::error!(reason = ?ack.reason, topic = %self.topic, "the cluster's broker refused a record");
                                metrics.published("refused", 1);
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if connected {
                            tracing::warn!(error = %e, "lost the cluster's broker; publishing again from the last acknowledged record");
                        } else {
                            tracing::warn!(error = %e, retry_in = ?backoff, "cannot reach the cluster's broker");
                        }
                        connected = false;
                        metrics.connected("out", false);
                        metrics.reconnect("out");
                        // What was in flight is published again, from the log.
                        in_flight = InFlight::default();
                        ready.clear();
                        consumer = self.wal.consumer(self.acked);
                        if stop_by.is_some() {
                            break;
                        }
                        tokio::select! {
                            _ = stop.cancelled() => {}
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = super::next_backoff(backoff);
                    }
                }
            }
        }
        if self.acked > stored {
            self.store(self.acked);
        }
        metrics.connected("out", false);
        let _ = client.try_disconnect();
        // The DISCONNECT goes out on the next poll.
        let _ = tokio::time::timeout(Duration::from_millis(200), events.poll()).await;
    }

    fn store(&self, lsn: u64) {
        let cp = Checkpoint { lsn, intent: None };
        if let Err(e) = self.wal.checkpoint(CONSUMER, cp) {
            tracing::error!(error = %e, "cannot store the cluster publisher's checkpoint; it publishes again from the last one after a restart");
        }
    }

    /// Reads records after the consumer's place into `ready`: from memory when it can, else
    /// from the disk on a blocking thread.
    async fn read(
        &self,
        mut consumer: Consumer,
        upto: u64,
        ready: &mut VecDeque<Outgoing>,
    ) -> Consumer {
        let max = self.cluster.config.max_in_flight;
        let epoch = self.cluster.epoch;
        let metrics = &self.cluster.metrics;
        let mut taken = Vec::new();
        let in_memory = consumer.read_memory(upto, |r| {
            taken.push(outgoing(epoch, r));
            ready.len() + taken.len() < max
        });
        if !in_memory {
            let at = consumer.position();
            let read = tokio::task::spawn_blocking(move || {
                let mut taken = Vec::new();
                let result = consumer.read(upto, |r| {
                    taken.push(outgoing(epoch, r));
                    taken.len() < max
                });
                (consumer, taken, result)
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
        for mut o in taken {
            if o.message.as_ref().is_some_and(|m| m.len() > MAX_MESSAGE) {
                o.message = None;
                metrics.published("too_large", 1);
            }
            ready.push_back(o);
        }
        consumer
    }
}

/// A record as the message to publish: the payload from the disk as it is, one from memory
/// encoded as the log did.
fn outgoing(epoch: u64, r: Record<'_>) -> Outgoing {
    match r {
        Record::Memory(c) => {
            let mut frame = record::encode(&c.dataset, &c.readings, c.appended_at);
            record::seal(&mut frame, c.lsn);
            Outgoing {
                lsn: c.lsn,
                appended_at: c.appended_at,
                message: Some(super::message(epoch, &frame[record::FRAME_HEADER..]).into()),
            }
        }
        Record::Disk { lsn, payload } => Outgoing {
            lsn,
            appended_at: record::header(payload).map_or(0, |h| h.appended_at),
            message: Some(super::message(epoch, payload).into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checkpoint_moves_only_past_acknowledged_records_in_order() {
        let mut f = InFlight::default();
        f.records.push_back((1, true));
        f.records.push_back((2, false));
        f.records.push_back((3, true));
        f.awaiting = 2;
        assert_eq!(f.settle(), None, "record 1 is not acknowledged yet");
        assert_eq!(f.acked(), Some(2), "1 acknowledged, 2 was never to be sent");
        assert_eq!(f.acked(), Some(3));
        assert_eq!(f.awaiting, 0);
        f.records.push_back((4, false));
        assert_eq!(f.settle(), Some(4));
    }
}
