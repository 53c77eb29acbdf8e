//! Byte-level helpers around `rumqttd::protocol`: what the codec does not expose.
//!
//! rumqttd's `Publish` keeps its QoS and packet id crate-private, so we read them from the
//! raw frame before handing it to the codec; and the protocol level of a CONNECT decides
//! which codec (v4 or v5) reads the rest of the connection.

use rumqttd::protocol::v4::FixedHeader;

/// The MQTT version a connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Version {
    /// MQTT 3.1.1 (protocol level 4).
    V4,
    /// MQTT 5.
    V5,
}

/// Packet type numbers (the high nibble of the first byte).
pub(super) const CONNECT: u8 = 1;
pub(super) const PUBLISH: u8 = 3;

/// The protocol name and level of a complete CONNECT frame, if it has them.
pub(super) fn connect_protocol<'f>(
    frame: &'f [u8],
    header: &FixedHeader,
) -> Option<(&'f [u8], u8)> {
    let at = header.fixed_header_len;
    let name_len = u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]) as usize;
    let name = frame.get(at + 2..at + 2 + name_len)?;
    let level = *frame.get(at + 2 + name_len)?;
    Some((name, level))
}

/// Whether the fixed-header flags are the ones MQTT prescribes for the packet type
/// (§2.1.3): PUBREL, SUBSCRIBE and UNSUBSCRIBE carry `0010`, PUBLISH its own flags, every
/// other packet `0000`. Anything else is malformed.
pub(super) fn flags_valid(byte1: u8) -> bool {
    let flags = byte1 & 0x0F;
    match byte1 >> 4 {
        PUBLISH => true,
        6 | 8 | 10 => flags == 0b0010,
        _ => flags == 0,
    }
}

/// Whether a client may send a packet of this first byte's type at all: CONNECT, PUBLISH,
/// PUBACK, PUBREC, PUBREL, PUBCOMP, SUBSCRIBE, UNSUBSCRIBE, PINGREQ, DISCONNECT. The rest
/// (CONNACK, SUBACK, UNSUBACK, PINGRESP, AUTH, reserved) are refused before decoding:
/// rumqttd's v5 codec panics on some of them (found by fuzzing).
pub(super) fn client_may_send(byte1: u8) -> bool {
    matches!(byte1 >> 4, 1 | 3..=8 | 10 | 12 | 14)
}

/// A CONNACK refusing the protocol version, in the 3.1.1 format every client understands
/// (return code 0x01).
pub(super) const CONNACK_BAD_PROTOCOL_V3: [u8; 4] = [0x20, 0x02, 0x00, 0x01];
/// The same refusal for a client that asked for MQTT 5 but sent something we cannot read
/// as MQTT 5 (reason 0x84, unsupported protocol version; no properties).
pub(super) const CONNACK_BAD_PROTOCOL_V5: [u8; 5] = [0x20, 0x03, 0x00, 0x84, 0x00];

/// The flags and packet id of a PUBLISH, read from its raw frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct PublishHeader {
    pub qos: u8,
    pub dup: bool,
    pub retain: bool,
    /// 0 for QoS 0.
    pub pkid: u16,
}

/// Reads the PUBLISH header of a complete frame; `None` if the frame is too short to hold
/// one (the codec then reports it as malformed).
pub(super) fn publish_header(frame: &[u8], header: &FixedHeader) -> Option<PublishHeader> {
    let flags = header.byte1 & 0x0F;
    let qos = (flags >> 1) & 0b11;
    let at = header.fixed_header_len;
    let topic_len = u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]) as usize;
    let pkid = if qos > 0 {
        let p = at + 2 + topic_len;
        u16::from_be_bytes([*frame.get(p)?, *frame.get(p + 1)?])
    } else {
        0
    };
    Some(PublishHeader {
        qos,
        dup: flags & 0b1000 != 0,
        retain: flags & 0b0001 != 0,
        pkid,
    })
}

/// Appends a PUBLISH to `out` (rumqttd's `Publish` cannot be given a QoS or packet id):
/// fixed header, remaining length, topic (the concatenation of `topic`'s parts), packet id
/// when `qos > 0`, MQTT 5's empty properties, payload.
#[allow(clippy::too_many_arguments)]
pub(super) fn encode_publish(
    out: &mut bytes::BytesMut,
    version: Version,
    topic: &[&str],
    payload: &[u8],
    qos: u8,
    pkid: u16,
    retain: bool,
    dup: bool,
) {
    let props = usize::from(version == Version::V5);
    let id = if qos > 0 { 2 } else { 0 };
    let topic_len: usize = topic.iter().map(|p| p.len()).sum();
    let remaining = 2 + topic_len + id + props + payload.len();
    out.reserve(remaining + 5);
    out.extend_from_slice(&[(PUBLISH << 4) | (u8::from(dup) << 3) | (qos << 1) | u8::from(retain)]);
    let mut len = remaining;
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.extend_from_slice(&[byte]);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(&(topic_len as u16).to_be_bytes());
    for part in topic {
        out.extend_from_slice(part.as_bytes());
    }
    if qos > 0 {
        out.extend_from_slice(&pkid.to_be_bytes());
    }
    if props == 1 {
        out.extend_from_slice(&[0]);
    }
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(frame: &[u8]) -> FixedHeader {
        rumqttd::protocol::v4::check(frame.iter(), 1 << 20).unwrap()
    }

    #[test]
    fn reads_publish_flags_and_packet_id() {
        // QoS 1, retain, topic "a/b", pkid 0x1234, payload "x".
        let frame = [0x33, 0x08, 0x00, 0x03, b'a', b'/', b'b', 0x12, 0x34, b'x'];
        let h = publish_header(&frame, &header(&frame)).unwrap();
        assert_eq!(
            h,
            PublishHeader {
                qos: 1,
                dup: false,
                retain: true,
                pkid: 0x1234
            }
        );
        // QoS 0 has no packet id.
        let frame = [0x30, 0x04, 0x00, 0x01, b't', b'x'];
        assert_eq!(publish_header(&frame, &header(&frame)).unwrap().pkid, 0);
        // Too short for its topic.
        let frame = [0x32, 0x02, 0x00, 0x09];
        assert_eq!(publish_header(&frame, &header(&frame)), None);
    }

    #[test]
    fn checks_reserved_flags() {
        assert!(flags_valid(0x62)); // PUBREL
        assert!(!flags_valid(0x60));
        assert!(flags_valid(0x82)); // SUBSCRIBE
        assert!(!flags_valid(0x80));
        assert!(flags_valid(0xC0)); // PINGREQ
        assert!(!flags_valid(0xC1));
        assert!(flags_valid(0x3D)); // PUBLISH, any flags here
    }

    #[test]
    fn only_client_packets_are_decoded() {
        for byte1 in [0x10, 0x30, 0x40, 0x50, 0x62, 0x70, 0x82, 0xA2, 0xC0, 0xE0] {
            assert!(client_may_send(byte1), "{byte1:#x}");
        }
        // CONNACK, SUBACK, UNSUBACK, PINGRESP, AUTH, reserved.
        for byte1 in [0x20, 0x90, 0xB0, 0xD0, 0xF0, 0x00] {
            assert!(!client_may_send(byte1), "{byte1:#x}");
        }
    }

    #[test]
    fn reads_connect_protocol() {
        let frame = [
            0x10, 0x0a, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x3c,
        ];
        let (name, level) = connect_protocol(&frame, &header(&frame)).unwrap();
        assert_eq!((name, level), (&b"MQTT"[..], 5));
        let frame = [0x10, 0x02, 0x00, 0x09];
        assert_eq!(connect_protocol(&frame, &header(&frame)), None);
    }

    #[test]
    fn encoded_publishes_read_back_with_the_codec() {
        use rumqttd::protocol::{Packet, Protocol};
        let payload = vec![b'x'; 300];
        for version in [Version::V4, Version::V5] {
            for (qos, retain, dup) in [(0, false, false), (1, true, false), (1, false, true)] {
                let mut out = bytes::BytesMut::new();
                encode_publish(
                    &mut out,
                    version,
                    &["citygate/weather/", "s-1"],
                    &payload,
                    qos,
                    7,
                    retain,
                    dup,
                );
                let h = header(&out);
                let ph = publish_header(&out, &h).unwrap();
                assert_eq!((ph.qos, ph.retain, ph.dup), (qos, retain, dup));
                assert_eq!(ph.pkid, if qos > 0 { 7 } else { 0 });
                let packet = match version {
                    Version::V4 => rumqttd::protocol::v4::V4.read_mut(&mut out, 1 << 20),
                    Version::V5 => rumqttd::protocol::v5::V5.read_mut(&mut out, 1 << 20),
                }
                .unwrap();
                let Packet::Publish(p, _) = packet else {
                    panic!("{packet:?}")
                };
                assert_eq!(&p.topic[..], b"citygate/weather/s-1");
                assert_eq!(p.payload.len(), 300);
                assert!(out.is_empty());
            }
        }
    }
}
