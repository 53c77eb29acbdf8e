//! Intake: the protocol edges where readings arrive. Each edge authenticates the device key,
//! reads the bytes and hands them to the pipeline; the answer it gives follows the
//! pipeline's outcome. `http` serves citygate's JSON routes and the InfluxDB write APIs;
//! `mqtt` is citygate's own MQTT 3.1.1/5 endpoint on `rumqttd::protocol`.

pub mod http;
pub mod mqtt;
