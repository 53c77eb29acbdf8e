//! One MQTT connection: the CONNECT handshake, then a loop that reads packets while fewer
//! than `max_inflight` publishes await the pipeline, and writes their acknowledgements in
//! the order the publishes came (MQTT §4.6). When the window is full the socket is not read:
//! backpressure reaches the device instead of memory growing.
//!
//! A connection with a subscriber's (or provider's, or admin's) key may also SUBSCRIBE to
//! the datasets it is entitled to; [`follow`] runs those feeds and writes their PUBLISHes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::stream::FuturesOrdered;
use futures_util::{FutureExt, StreamExt};
use rumqttd::protocol::v4::{self, FixedHeader};
use rumqttd::protocol::v5;
use rumqttd::protocol::{
    Disconnect, DisconnectProperties, DisconnectReasonCode, Error, Packet, PingResp, Protocol,
    PubComp, PubCompReason, PubRecReason, UnsubAck, UnsubAckReason,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

mod follow;
mod handshake;
mod publish;
mod settle;

use handshake::handshake;
use publish::{Pending, Staged};
// The verdict types `settle` decides with.
use publish::{Refusal, Verdict};

use super::Shared;
use super::wire::{self, PublishHeader, Version};
use crate::market::ApiKey;

/// Runs a connection to its end and counts why it ended.
pub(super) async fn run(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let metrics = shared.metrics.clone();
    metrics.connections_open().inc();
    let reason = match handshake(stream, &shared).await {
        Ok(mut session) => {
            let reason = session.serve().await;
            session.feeds.stop_all();
            shared.unregister(&session.key.account, &session.client_id, session.number);
            metrics.inflight().dec_by(session.awaiting as i64);
            reason
        }
        Err(reason) => reason,
    };
    tracing::debug!(%peer, reason, "mqtt connection closed");
    metrics.disconnect(reason);
    metrics.connections_open().dec();
}

/// The codec of the connection's protocol version.
enum Codec {
    V4(v4::V4),
    V5(v5::V5),
}

impl Codec {
    fn read(&mut self, buf: &mut BytesMut, max: usize) -> Result<Packet, Error> {
        match self {
            Codec::V4(c) => c.read_mut(buf, max),
            Codec::V5(c) => c.read_mut(buf, max),
        }
    }

    fn write(&self, packet: Packet, out: &mut BytesMut) -> Result<usize, Error> {
        match self {
            Codec::V4(c) => c.write(packet, out),
            Codec::V5(c) => c.write(packet, out),
        }
    }
}

/// What a read takes from the socket at most (and the buffer it makes for it): publishes
/// read together travel together, so a busy connection reads many at once.
const READ_CHUNK: usize = 16 * 1024;

/// A protocol violation: disconnect (MQTT 5 with `code`), counted as `reason`.
struct Violation {
    code: DisconnectReasonCode,
    reason: &'static str,
}

fn violation(code: DisconnectReasonCode, reason: &'static str) -> Violation {
    Violation { code, reason }
}

struct Session {
    shared: Arc<Shared>,
    version: Version,
    codec: Codec,
    rd: OwnedReadHalf,
    wr: OwnedWriteHalf,
    buf: BytesMut,
    out: BytesMut,
    key: Arc<ApiKey>,
    client_id: String,
    number: u64,
    takeover: CancellationToken,
    keep_alive: Option<Duration>,
    inflight: FuturesOrdered<Pending>,
    /// Publishes of this read turn admitted and not yet sent to the log.
    run: Vec<Staged>,
    /// Publishes not yet acknowledged (in `run` or `inflight`): the window's fill.
    awaiting: usize,
    /// QoS 2 packet ids received and not yet released: `None` while the pipeline works,
    /// then the PUBREC reason sent (so a duplicate gets the same answer, and is not stored
    /// twice).
    qos2: HashMap<u16, Option<PubRecReason>>,
    /// What this connection subscribed to (subscriber keys).
    feeds: follow::Feeds,
}

fn packet_name(packet: &Packet) -> &'static str {
    match packet {
        Packet::Connect(..) => "connect",
        Packet::ConnAck(..) => "connack",
        Packet::Publish(..) => "publish",
        Packet::PubAck(..) => "puback",
        Packet::PingReq(..) => "pingreq",
        Packet::PingResp(..) => "pingresp",
        Packet::Subscribe(..) => "subscribe",
        Packet::SubAck(..) => "suback",
        Packet::PubRec(..) => "pubrec",
        Packet::PubRel(..) => "pubrel",
        Packet::PubComp(..) => "pubcomp",
        Packet::Unsubscribe(..) => "unsubscribe",
        Packet::UnsubAck(..) => "unsuback",
        Packet::Disconnect(..) => "disconnect",
    }
}

/// How a read loop turn ended.
enum Flow {
    Continue,
    Close(&'static str),
    /// A SUBSCRIBE: its filters are checked against the entitlements (which may ask the
    /// database) before the SUBACK.
    Subscribe(rumqttd::protocol::Subscribe),
}

impl Session {
    fn max_packet(&self) -> usize {
        self.shared.config.max_packet_size.as_usize()
    }

    fn window_open(&self) -> bool {
        self.awaiting < usize::from(self.shared.config.max_inflight)
    }

    /// The connection's life after CONNACK. Returns why it ended.
    async fn serve(&mut self) -> &'static str {
        let closing = self.shared.closing.clone();
        let takeover = self.takeover.clone();
        let mut last_seen = Instant::now();
        let mut eof = false;
        let mut recheck = tokio::time::interval(self.shared.feed.hub.config().recheck);
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Handle what is buffered, as far as the in-flight window allows.
            while self.window_open() {
                match self.next_packet() {
                    Ok(None) => break,
                    Ok(Some((packet, header))) => match self.handle(packet, header) {
                        Ok(Flow::Continue) => {}
                        Ok(Flow::Subscribe(subscribe)) => {
                            self.send_run();
                            self.on_subscribe(subscribe).await
                        }
                        Ok(Flow::Close(reason)) => {
                            self.drain().await;
                            return reason;
                        }
                        Err(v) => return self.disconnect(v).await,
                    },
                    Err(v) => return self.disconnect(v).await,
                }
            }
            // What this turn admitted goes to the log together.
            self.send_run();
            if self.flush().await.is_err() {
                return "io_error";
            }
            if self.awaiting == 0 {
                self.release_buffers();
            }
            if eof {
                // The client is gone; finish what it sent (QoS 0 readings sent just before
                // closing are still kept), then stop.
                self.drain().await;
                return "client_closed";
            }
            let keep_alive_limit = self.keep_alive;
            let keep_alive = async move {
                match keep_alive_limit {
                    Some(limit) => tokio::time::sleep_until(last_seen + limit).await,
                    None => std::future::pending().await,
                }
            };
            let window_open = self.window_open();
            // While publishes await the pipeline the client may be waiting on us: its
            // keep-alive only counts while nothing of it is in flight.
            let idle = self.awaiting == 0;
            let may_deliver = self.feeds.may_deliver();
            let retransmit = self.feeds.retransmit_due(self.version);
            tokio::select! {
                biased;
                _ = takeover.cancelled() => {
                    return self
                        .disconnect(violation(DisconnectReasonCode::SessionTakenOver, "taken_over"))
                        .await;
                }
                _ = closing.cancelled() => {
                    self.drain().await;
                    return self
                        .disconnect(violation(DisconnectReasonCode::ServerShuttingDown, "server_shutdown"))
                        .await;
                }
                Some(acks) = self.inflight.next(), if !self.inflight.is_empty() => {
                    // Take every acknowledgement that is ready now, so they leave in one write.
                    last_seen = Instant::now();
                    let mut next = Some(acks);
                    while let Some(acks) = next {
                        if let Err(reason) = self.write_acks(acks) {
                            let _ = self.flush().await;
                            return reason;
                        }
                        next = self.inflight.next().now_or_never().flatten();
                    }
                }
                ready = self.rd.readable(), if window_open => {
                    if ready.is_err() {
                        return "io_error";
                    }
                    // Room for what is waiting: a quiet connection holds no buffer.
                    if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
                        self.buf.reserve(READ_CHUNK);
                    }
                    match self.rd.try_read_buf(&mut self.buf) {
                        Ok(0) => eof = true,
                        Ok(_) => last_seen = Instant::now(),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(_) => return "io_error",
                    }
                }
                _ = keep_alive, if idle => {
                    return self
                        .disconnect(violation(DisconnectReasonCode::KeepAliveTimeout, "keep_alive_timeout"))
                        .await;
                }
                Some(message) = self.feeds.next(), if may_deliver => {
                    // Everything ready goes out in one write.
                    let mut next = Some(message);
                    while let Some(message) = next {
                        if let Err(v) = self.deliver(message) {
                            return self.disconnect(v).await;
                        }
                        next = if self.feeds.may_deliver() && self.out.len() < 256 * 1024 {
                            self.feeds.try_next()
                        } else {
                            None
                        };
                    }
                }
                _ = tokio::time::sleep_until(retransmit.unwrap_or_else(Instant::now)), if retransmit.is_some() => {
                    self.retransmit();
                }
                _ = recheck.tick() => {
                    if let Err(v) = self.recheck_key().await {
                        return self.disconnect(v).await;
                    }
                }
            }
        }
    }

    /// Authenticates the key afresh: a revoked, expired or rotated-out key ends the
    /// connection. A database that does not answer keeps the connection (the key cache
    /// bounds how long a known key is trusted; an unknown one never gets this far).
    async fn recheck_key(&mut self) -> Result<(), Violation> {
        match self.shared.keyring.authenticate(&self.feeds.secret).await {
            Ok(Some(key)) => {
                self.key = key;
                Ok(())
            }
            Ok(None) => Err(violation(
                DisconnectReasonCode::NotAuthorized,
                "key_revoked",
            )),
            Err(e) => {
                tracing::warn!(error = %e, key = %self.key.id, "mqtt key recheck failed");
                Ok(())
            }
        }
    }

    /// The next complete packet in the buffer, with the raw PUBLISH header when it is one.
    #[allow(clippy::type_complexity)]
    fn next_packet(&mut self) -> Result<Option<(Packet, Option<PublishHeader>)>, Violation> {
        let max = self.max_packet();
        let header: FixedHeader = match v4::check(self.buf.iter(), max) {
            Ok(header) => header,
            Err(Error::InsufficientBytes(_)) => return Ok(None),
            Err(Error::PayloadSizeLimitExceeded(_)) => {
                return Err(violation(
                    DisconnectReasonCode::PacketTooLarge,
                    "packet_too_large",
                ));
            }
            Err(_) => {
                return Err(violation(
                    DisconnectReasonCode::MalformedPacket,
                    "malformed_packet",
                ));
            }
        };
        if !wire::client_may_send(header.byte1) {
            return Err(violation(
                DisconnectReasonCode::ProtocolError,
                "unexpected_packet",
            ));
        }
        if !wire::flags_valid(header.byte1) {
            return Err(violation(
                DisconnectReasonCode::MalformedPacket,
                "malformed_packet",
            ));
        }
        let publish = (header.byte1 >> 4 == wire::PUBLISH)
            .then(|| wire::publish_header(&self.buf[..header.frame_length()], &header))
            .flatten();
        match self.codec.read(&mut self.buf, max) {
            Ok(packet) => Ok(Some((packet, publish))),
            Err(_) => Err(violation(
                DisconnectReasonCode::MalformedPacket,
                "malformed_packet",
            )),
        }
    }

    /// Lets go of the read and write buffers while they are empty: a connection that
    /// waits for its next publish (a sensor reports every few minutes) holds only its
    /// socket and its task. The next read or write makes them again.
    fn release_buffers(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > 0 {
            self.buf = BytesMut::new();
        }
        if self.out.is_empty() && self.out.capacity() > 0 {
            self.out = BytesMut::new();
        }
    }

    fn send(&mut self, packet: Packet) {
        let name = packet_name(&packet);
        // Every packet we build is valid for the connection's version.
        if self.codec.write(packet, &mut self.out).is_ok() {
            self.shared.metrics.packet_out(name);
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.out.is_empty() {
            let result = self.wr.write_all(&self.out).await;
            self.out.clear();
            result?;
        }
        Ok(())
    }

    /// Writes every pending acknowledgement as its publish completes.
    async fn drain(&mut self) {
        self.send_run();
        while let Some(acks) = self.inflight.next().await {
            if self.write_acks(acks).is_err() {
                break;
            }
        }
        let _ = self.flush().await;
    }

    /// Ends the connection: MQTT 5 clients get a DISCONNECT with the reason code and a
    /// reason string. (The string also keeps rumqttd's encoder right: without properties it
    /// announces one byte fewer than it writes.)
    async fn disconnect(&mut self, v: Violation) -> &'static str {
        if self.version == Version::V5 {
            self.send(Packet::Disconnect(
                Disconnect {
                    reason_code: v.code,
                },
                Some(DisconnectProperties {
                    session_expiry_interval: None,
                    reason_string: Some(v.reason.replace('_', " ")),
                    user_properties: Vec::new(),
                    server_reference: None,
                }),
            ));
        }
        let _ = self.flush().await;
        let _ = self.wr.shutdown().await;
        v.reason
    }

    fn handle(&mut self, packet: Packet, header: Option<PublishHeader>) -> Result<Flow, Violation> {
        self.shared.metrics.packet_in(packet_name(&packet));
        match packet {
            Packet::Publish(publish, props) => {
                let header = header.ok_or_else(|| {
                    violation(DisconnectReasonCode::MalformedPacket, "malformed_packet")
                })?;
                self.on_publish(publish, props, header)?;
            }
            Packet::PubRel(rel, _) => {
                let reason = match self.qos2.remove(&rel.pkid) {
                    Some(_) => PubCompReason::Success,
                    None => PubCompReason::PacketIdentifierNotFound,
                };
                self.send(Packet::PubComp(
                    PubComp {
                        pkid: rel.pkid,
                        reason,
                    },
                    None,
                ));
            }
            Packet::PingReq(_) => self.send(Packet::PingResp(PingResp)),
            Packet::Subscribe(subscribe, _) => return Ok(Flow::Subscribe(subscribe)),
            Packet::Unsubscribe(unsubscribe, _) => {
                let reasons = unsubscribe
                    .filters
                    .iter()
                    .map(|filter| {
                        if self.feeds.stop(filter) {
                            UnsubAckReason::Success
                        } else {
                            UnsubAckReason::NoSubscriptionExisted
                        }
                    })
                    .collect();
                self.send(Packet::UnsubAck(
                    UnsubAck {
                        pkid: unsubscribe.pkid,
                        reasons,
                    },
                    None,
                ));
            }
            // The subscriber acknowledges a QoS 1 delivery.
            Packet::PubAck(ack, _) if self.key.kind != crate::market::KeyKind::Device => {
                self.feeds.acked(ack.pkid);
            }
            Packet::Disconnect(..) => return Ok(Flow::Close("client_disconnect")),
            Packet::Connect(..) => {
                return Err(violation(
                    DisconnectReasonCode::ProtocolError,
                    "second_connect",
                ));
            }
            // A device has nothing to acknowledge, and servers send the rest.
            Packet::ConnAck(..)
            | Packet::PubAck(..)
            | Packet::PubRec(..)
            | Packet::PubComp(..)
            | Packet::SubAck(..)
            | Packet::UnsubAck(..)
            | Packet::PingResp(..) => {
                return Err(violation(
                    DisconnectReasonCode::ProtocolError,
                    "unexpected_packet",
                ));
            }
        }
        Ok(Flow::Continue)
    }
}
