//! The CONNECT handshake: read the CONNECT within `connect_timeout`, pick the protocol
//! version, authenticate the key, register the client id (per account), answer CONNACK.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::stream::FuturesOrdered;
use rumqttd::protocol::v4::{self, FixedHeader};
use rumqttd::protocol::v5;
use rumqttd::protocol::{ConnAck, ConnAckProperties, ConnectReturnCode, Error, Login, Packet};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::Instant;

use super::{Codec, Session, follow};
use crate::market::ApiKey;
use crate::mqtt::Shared;
use crate::mqtt::wire::{self, Version};

/// Reads the CONNECT (within `connect_timeout`), authenticates, answers CONNACK.
pub(super) async fn handshake(
    stream: TcpStream,
    shared: &Arc<Shared>,
) -> Result<Session, &'static str> {
    let max = shared.config.max_packet_size.as_usize();
    let (mut rd, mut wr) = stream.into_split();
    // A CONNECT is a few hundred bytes; a longer one grows the buffer. The session lets go
    // of it once the connection is quiet, and of everything bigger it made meanwhile.
    let mut buf = BytesMut::with_capacity(256);
    let header = read_connect(&mut rd, &mut buf, max, shared).await?;
    let frame = &buf[..header.frame_length()];
    let version = protocol_version(frame, &header, &mut wr, shared).await?;
    let mut codec = match version {
        Version::V4 => Codec::V4(v4::V4),
        Version::V5 => Codec::V5(v5::V5),
    };
    let Ok(Packet::Connect(connect, props, will, _will_props, login)) = codec.read(&mut buf, max)
    else {
        return Err("malformed_connect");
    };
    shared.metrics.packet_in("connect");

    let secret = device_secret(login);
    let key = authenticate(&secret, will.is_none(), &codec, &mut wr, version, shared).await?;
    let (client_id, assigned) = client_id(
        connect.client_id,
        connect.clean_session,
        &codec,
        &mut wr,
        version,
        shared,
    )
    .await?;
    let (number, takeover) = shared.register(&key.account, &client_id);

    let properties = connack_properties(version, max, assigned, shared);
    let Ok(out) = accept(&codec, &mut wr, version, properties, shared).await else {
        shared.unregister(&key.account, &client_id, number);
        return Err("io_error");
    };
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
        run: Vec::new(),
        awaiting: 0,
        qos2: HashMap::new(),
        feeds,
    })
}

/// Reads until `buf` holds the first packet whole (by `connect_timeout`); its header, when
/// it is a CONNECT.
async fn read_connect(
    rd: &mut OwnedReadHalf,
    buf: &mut BytesMut,
    max: usize,
    shared: &Shared,
) -> Result<FixedHeader, &'static str> {
    let deadline = Instant::now() + shared.config.connect_timeout;
    let header = loop {
        match v4::check(buf.iter(), max) {
            Ok(header) => break header,
            Err(Error::InsufficientBytes(_)) => {}
            Err(_) => return Err("malformed_connect"),
        }
        match tokio::time::timeout_at(deadline, rd.read_buf(buf)).await {
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
    Ok(header)
}

/// The protocol version the CONNECT asks for; any other protocol is refused with the
/// CONNACK its client can read.
async fn protocol_version(
    frame: &[u8],
    header: &FixedHeader,
    wr: &mut OwnedWriteHalf,
    shared: &Shared,
) -> Result<Version, &'static str> {
    match wire::connect_protocol(frame, header) {
        Some((b"MQTT", 4)) => Ok(Version::V4),
        Some((b"MQTT", 5)) => Ok(Version::V5),
        Some((_, 5)) => {
            let _ = wr.write_all(&wire::CONNACK_BAD_PROTOCOL_V5).await;
            shared.metrics.connection("unsupported_protocol");
            Err("unsupported_protocol")
        }
        Some(_) => {
            // MQTT 3.1 ("MQIsdp") and anything else: refuse in 3.1.1 terms.
            let _ = wr.write_all(&wire::CONNACK_BAD_PROTOCOL_V3).await;
            shared.metrics.connection("unsupported_protocol");
            Err("unsupported_protocol")
        }
        None => Err("malformed_connect"),
    }
}

/// The device key: the password, or the user name when there is no password.
fn device_secret(login: Option<Login>) -> String {
    login
        .map(|l| {
            if l.password.is_empty() {
                l.username
            } else {
                l.password
            }
        })
        .unwrap_or_default()
}

/// The key `secret` names, or the CONNACK refusing it (sent and counted).
async fn authenticate(
    secret: &str,
    no_will: bool,
    codec: &Codec,
    wr: &mut OwnedWriteHalf,
    version: Version,
    shared: &Shared,
) -> Result<Arc<ApiKey>, &'static str> {
    match shared.keyring.authenticate(secret).await {
        // Devices publish; subscribers (providers, admins) follow feeds and may leave no
        // will: they publish nothing, not even on disconnect.
        Ok(Some(key)) if key.kind == crate::market::KeyKind::Device || no_will => Ok(key),
        Ok(_) => {
            let code = match version {
                Version::V4 => ConnectReturnCode::NotAuthorized,
                Version::V5 => ConnectReturnCode::NotAuthorized,
            };
            Err(refuse(codec, wr, version, code, "not_authorized", shared).await)
        }
        Err(e) => {
            tracing::error!(error = %e, "key lookup failed during MQTT CONNECT");
            let code = match version {
                Version::V4 => ConnectReturnCode::ServiceUnavailable,
                Version::V5 => ConnectReturnCode::ServerUnavailable,
            };
            Err(refuse(codec, wr, version, code, "server_unavailable", shared).await)
        }
    }
}

/// The client id: the one the CONNECT gives, or one we assign (also returned, for the
/// CONNACK to tell it) when it gives none.
async fn client_id(
    given: String,
    clean_session: bool,
    codec: &Codec,
    wr: &mut OwnedWriteHalf,
    version: Version,
    shared: &Shared,
) -> Result<(String, Option<String>), &'static str> {
    if !given.is_empty() {
        return Ok((given, None));
    }
    if version == Version::V4 && !clean_session {
        // 3.1.1 §3.1.3.1: a zero-byte client id needs a clean session.
        let code = ConnectReturnCode::ClientIdentifierNotValid;
        return Err(refuse(codec, wr, version, code, "client_id_invalid", shared).await);
    }
    let id = format!("cg-{:016x}", rand::random::<u64>());
    Ok((id.clone(), Some(id)))
}

/// What the CONNACK of an MQTT 5 session announces (3.1.1 has no properties).
fn connack_properties(
    version: Version,
    max: usize,
    assigned: Option<String>,
    shared: &Shared,
) -> Option<ConnAckProperties> {
    (version == Version::V5).then(|| ConnAckProperties {
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
    })
}

/// Answers CONNACK (success) and counts the connection accepted. Returns the (empty)
/// buffer the session goes on writing with; `Err` when the CONNACK could not be sent.
async fn accept(
    codec: &Codec,
    wr: &mut OwnedWriteHalf,
    version: Version,
    properties: Option<ConnAckProperties>,
    shared: &Shared,
) -> Result<BytesMut, ()> {
    let mut out = BytesMut::with_capacity(64);
    if codec
        .write(
            connack(version, ConnectReturnCode::Success, properties),
            &mut out,
        )
        .is_err()
        || wr.write_all(&out).await.is_err()
    {
        return Err(());
    }
    out.clear();
    shared.metrics.packet_out("connack");
    shared.metrics.connection("accepted");
    Ok(out)
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
