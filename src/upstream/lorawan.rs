//! LoRaWAN network servers' uplink messages, read as one citygate JSON reading: the device
//! is the sensor, the payload formatter's (or codec's) output the fields, the network's
//! receive time the timestamp.
//!
//! - The Things Stack v3: `end_device_ids.device_id`, `received_at`,
//!   `uplink_message.decoded_payload`.
//! - ChirpStack v4: `deviceInfo.deviceName`, `time`, `object`.

use bytes::Bytes;
use compact_str::CompactString;
use serde_json::{Map, Value, json};

/// Which network server wrote the uplink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Network {
    TheThingsStack,
    Chirpstack,
}

/// The uplink `payload` as its device and a citygate JSON reading, or why it is not one.
pub fn reading(network: Network, payload: &[u8]) -> Result<(CompactString, Bytes), String> {
    let uplink: Value =
        serde_json::from_slice(payload).map_err(|e| format!("the uplink is not JSON: {e}"))?;
    let (device, time, fields) = match network {
        Network::TheThingsStack => (
            &uplink["end_device_ids"]["device_id"],
            &uplink["received_at"],
            &uplink["uplink_message"]["decoded_payload"],
        ),
        Network::Chirpstack => (
            &uplink["deviceInfo"]["deviceName"],
            &uplink["time"],
            &uplink["object"],
        ),
    };
    let what = match network {
        Network::TheThingsStack => ("end_device_ids.device_id", "uplink_message.decoded_payload"),
        Network::Chirpstack => ("deviceInfo.deviceName", "object"),
    };
    let Some(device) = device.as_str() else {
        return Err(format!("the uplink has no {}", what.0));
    };
    let Some(fields) = fields.as_object() else {
        return Err(format!(
            "the uplink has no {} (is a payload formatter or codec set?)",
            what.1
        ));
    };
    let mut reading = Map::new();
    reading.insert("sensor_id".into(), json!(device));
    if let Some(time) = time.as_str() {
        reading.insert("ts".into(), json!(time));
    }
    reading.insert("fields".into(), Value::Object(fields.clone()));
    Ok((
        CompactString::from(device),
        Bytes::from(Value::Object(reading).to_string()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_things_stack_uplink_is_a_reading_of_its_device() {
        let uplink = br#"{"end_device_ids":{"device_id":"eui-70b3d57ed0000001",
            "application_ids":{"application_id":"air"}},"received_at":"2026-11-30T10:00:00.123Z",
            "uplink_message":{"f_port":1,"frm_payload":"AQI=","decoded_payload":{"pm25":7.5,"pm10":12},
            "rx_metadata":[{"gateway_ids":{"gateway_id":"gw-1"},"rssi":-97}]}}"#;
        let out: Value =
            serde_json::from_slice(&reading(Network::TheThingsStack, uplink).unwrap().1).unwrap();
        assert_eq!(
            out,
            json!({"sensor_id": "eui-70b3d57ed0000001", "ts": "2026-11-30T10:00:00.123Z",
                   "fields": {"pm25": 7.5, "pm10": 12}})
        );
    }

    #[test]
    fn a_chirpstack_uplink_is_a_reading_of_its_device() {
        let uplink = br#"{"deduplicationId":"x","time":"2026-11-30T10:00:00Z",
            "deviceInfo":{"deviceName":"meter-9","devEui":"0102030405060708"},
            "object":{"energy_kwh":1.25}}"#;
        let out: Value =
            serde_json::from_slice(&reading(Network::Chirpstack, uplink).unwrap().1).unwrap();
        assert_eq!(
            out,
            json!({"sensor_id": "meter-9", "ts": "2026-11-30T10:00:00Z",
                   "fields": {"energy_kwh": 1.25}})
        );
    }

    #[test]
    fn an_uplink_without_decoded_fields_says_so() {
        let raw =
            br#"{"end_device_ids":{"device_id":"d"},"uplink_message":{"frm_payload":"AQI="}}"#;
        let why = reading(Network::TheThingsStack, raw).unwrap_err();
        assert!(why.contains("decoded_payload"), "{why}");
        assert!(reading(Network::Chirpstack, b"not json").is_err());
    }
}
