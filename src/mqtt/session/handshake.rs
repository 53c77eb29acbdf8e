//! The CONNECT handshake: read the CONNECT within `connect_timeout`, pick the protocol
//! version, authenticate the key, register the client id (per account), answer CONNACK.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::stream::FuturesOrdered;
use rumqttd::protocol::v4;
use rumqttd::protocol::v5;
use rumqttd::protocol::{ConnAck, ConnAckProperties, ConnectReturnCode, Error, Packet};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::time::Instant;

use super::{Codec, Session, follow};
use crate::mqtt::Shared;
use crate::mqtt::wire::{self, Version};

/// Reads the CONNECT (within `connect_timeout`), authenticates, answers CONNACK.
pub(super) async fn handshake(
    stream: TcpStream,
    shared: &Arc<Shared>,
) -> Result<Session, &'static str> {
    let config = &shared.config;
    let max = config.max_packet_size.as_usize();
    let (mut rd, mut wr) = stream.into_split();
    let mut buf = BytesMut::with_capacity(4096);
    let deadline = Instant::now() + config.connect_timeout;
    let header = loop {
        match v4::check(buf.iter(), max) {
            Ok(header) => break header,
            Err(Error::InsufficientBytes(_)) => {}
            Err(_) => return Err("malformed_connect"),
        }
        match tokio::time::timeout_at(deadline, rd.read_buf(&mut buf)).await {
            Err(_) => {
                shared.metrics.connection("connect_timeout");
                return Err("connect_timeout");
            }
            Ok(Ok(0)) => return Err("closed_before_connect"),
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return Err("io_error"),
        }
    };
    if header.byte1 >> 4 != wire::CONNECT {
        return Err("first_packet_not_connect");
    }
    let frame = &buf[..header.frame_length()];
    let version = match wire::connect_protocol(frame, &header) {
        Some((b"MQTT", 4)) => Version::V4,
        Some((b"MQTT", 5)) => Version::V5,
        Some((_, 5)) => {
            let _ = wr.write_all(&wire::CONNACK_BAD_PROTOCOL_V5).await;
            shared.metrics.connection("unsupported_protocol");
            return Err("unsupported_protocol");
        }
        Some(_) => {
            // MQTT 3.1 ("MQIsdp") and anything else: refuse in 3.1.1 terms.
            let _ = wr.write_all(&wire::CONNACK_BAD_PROTOCOL_V3).await;
            shared.metrics.connection("unsupported_protocol");
            return Err("unsupported_protocol");
        }
        None => return Err("malformed_connect"),
    };
    let mut codec = match version {
        Version::V4 => Codec::V4(v4::V4),
        Version::V5 => Codec::V5(v5::V5),
    };
    let Ok(Packet::Connect(connect, props, will, _will_props, login)) = codec.read(&mut buf, max)
    else {
        return Err("malformed_connect");
    };
    shared.metrics.packet_in("connect");

    // The device key: the password, or the user name when there is no password.
    let secret = login
        .map(|l| {
            if l.password.is_empty() {
                l.username
            } else {
                l.password
            }
        })
        .unwrap_or_default();
    let key = match shared.keyring.authenticate(&secret).await {
        // Devices publish; subscribers (providers, admins) follow feeds and may leave no
        // will: they publish nothing, not even on disconnect.
        Ok(Some(key)) if key.kind == crate::market::KeyKind::Device || will.is_none() => key,
        Ok(_) => {
            let code = match version {
                Version::V4 => ConnectReturnCode::NotAuthorized,
                Version::V5 => ConnectReturnCode::NotAuthorized,
            };
            return Err(refuse(&codec, &mut wr, version, code, "not_authorized", shared).await);
        }
        Err(e) => {
            tracing::error!(error = %e, "key lookup failed during MQTT CONNECT");
            let code = match version {
                Version::V4 => ConnectReturnCode::ServiceUnavailable,
                Version::V5 => ConnectReturnCode::ServerUnavailable,
            };
            return Err(refuse(&codec, &mut wr, version, code, "server_unavailable", shared).await);
        }
    };

    let mut assigned = None;
    let client_id = if connect.client_id.is_empty() {
        if version == Version::V4 && !connect.clean_session {
            // 3.1.1 §3.1.3.1: a zero-byte client id needs a clean session.
            let code = ConnectReturnCode::ClientIdentifierNotValid;
            return Err(refuse(&codec, &mut wr, version, code, "client_id_invalid", shared).await);
        }
        let id = format!("cg-{:016x}", rand::random::<u64>());
        assigned = Some(id.clone());
        id
    } else {
        connect.client_id
    };
    let (number, takeover) = shared.register(&key.account, &client_id);

    let properties = (version == Version::V5).then(|| ConnAckProperties {
        // Sessions are not kept beyond the connection.
        session_expiry_interval: Some(0),
        receive_max: Some(shared.config.max_inflight),
        max_qos: None,
        retain_available: Some(0),
        max_packet_size: Some(u32::try_from(max).unwrap_or(u32::MAX)),
        assigned_client_identifier: assigned,
        topic_alias_max: Some(0),
        // Wildcards are granted within one dataset (`citygate/{dataset}/#`, `…/+`).
        wildcard_subscription_available: None,
        subscription_identifiers_available: Some(0),
        shared_subscription_available: Some(0),
        ..ConnAckProperties::default()
    });
    let mut out = BytesMut::with_capacity(4096);
    if codec
        .write(
            connack(version, ConnectReturnCode::Success, properties),
            &mut out,
        )
        .is_err()
        || wr.write_all(&out).await.is_err()
    {
        shared.unregister(&key.account, &client_id, number);
        return Err("io_error");
    }
    out.clear();
    shared.metrics.packet_out("connack");
    shared.metrics.connection("accepted");
    let keep_alive = (connect.keep_alive > 0)
        .then(|| Duration::from_millis(u64::from(connect.keep_alive) * 1500));
    let receive_max = props
        .and_then(|p| p.receive_maximum)
        .unwrap_or(u16::MAX)
        .min(shared.config.max_inflight);
    let feeds = follow::Feeds::new(secret, receive_max, shared.feed.hub.config().session_queue);
    Ok(Session {
        shared: shared.clone(),
        version,
        codec,
        rd,
        wr,
        buf,
        out,
        key,
        client_id,
        number,
        takeover,
        keep_alive,
        inflight: FuturesOrdered::new(),
        qos2: HashMap::new(),
        feeds,
    })
}

/// Answers a CONNECT with a refusal (a code valid for `version`) and counts it.
async fn refuse(
    codec: &Codec,
    wr: &mut OwnedWriteHalf,
    version: Version,
    code: ConnectReturnCode,
    why: &'static str,
    shared: &Shared,
) -> &'static str {
    let mut out = BytesMut::new();
    if codec.write(connack(version, code, None), &mut out).is_ok() {
        let _ = wr.write_all(&out).await;
        shared.metrics.packet_out("connack");
    }
    shared.metrics.connection(why);
    why
}

fn connack(version: Version, code: ConnectReturnCode, props: Option<ConnAckProperties>) -> Packet {
    let ack = ConnAck {
        session_present: false,
        code,
    };
    match version {
        Version::V4 => Packet::ConnAck(ack, None),
        Version::V5 => Packet::ConnAck(ack, props),
    }
}
