//! Intake: the protocol edges where readings arrive. Each edge authenticates, reads the
//! bytes and hands them to the pipeline; the answer it gives follows the pipeline's outcome.
//! HTTP today; the MQTT endpoint (on `rumqttd::protocol`) and the upstream broker client
//! (`rumqttc`) come with the MQTT issue.

pub mod http;
