//! `[[upstream]]`: MQTT brokers citygate takes readings from (a city's broker cluster, a
//! LoRaWAN network server's MQTT integration), besides its own endpoints.

use std::time::Duration;

use serde::Deserialize;

use super::Secret;
use super::units::{self, ByteSize};

/// What an upstream's payloads are.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamFormat {
    /// As citygate's own MQTT endpoint reads them: JSON, NDJSON, SenML or line protocol,
    /// told by the payload.
    #[default]
    Auto,
    Json,
    Ndjson,
    Senml,
    LineProtocol,
    /// The Things Stack v3 uplink messages: the device id, `received_at` and the payload
    /// formatter's `decoded_payload`.
    TheThingsStack,
    /// ChirpStack v4 uplink events: the device name, `time` and the codec's `object`.
    Chirpstack,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Names it in metrics, logs and rejects: 1-32 of `a-z 0-9 -`.
    pub name: String,
    /// `mqtt://host:port` (1883 when no port is given), or `mqtts://host:port` over TLS
    /// (8883).
    pub url: String,
    /// Which topics, and what they name, level by level: `{dataset}`, `{sensor_id}`, `+`
    /// (any one level) or a literal, with an optional `#` last, e.g.
    /// `city/{dataset}/{sensor_id}` or `v3/+/devices/{sensor_id}/up`. citygate subscribes to
    /// the same pattern with `+` for its names.
    pub topic: String,
    /// The dataset of every message when `topic` has no `{dataset}`.
    #[serde(default)]
    pub dataset: String,
    /// The datasets a `{dataset}` topic may name: whoever may publish to the broker writes
    /// there, so only these (required with `{dataset}`).
    #[serde(default)]
    pub allow_datasets: Vec<String>,
    #[serde(default)]
    pub format: UpstreamFormat,
    /// Nodes with the same group split the messages between them (`$share/{group}/…`,
    /// which the broker must support). Empty: this node takes every message.
    #[serde(default)]
    pub share_group: String,
    /// The MQTT client id: the broker keeps this client's session (and the messages not yet
    /// acknowledged) under it, so each node needs its own, the same across restarts.
    /// Default: `citygate-{name}` (with a `share_group`, nodes must each name theirs).
    #[serde(default)]
    pub client_id: String,
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub password: Secret,
    /// With `mqtts://`: PEM certificates to check the broker's against (empty: the
    /// system's roots).
    #[serde(default)]
    pub ca_file: String,
    /// With `mqtts://`: this client's certificate chain and key (PEM), when the broker asks.
    #[serde(default)]
    pub client_cert_file: String,
    #[serde(default)]
    pub client_key_file: String,
    /// The keep-alive citygate asks the broker for.
    #[serde(default = "keep_alive", with = "units::duration")]
    pub keep_alive: Duration,
    /// The largest message citygate reads; larger ones break the connection (the broker
    /// should refuse them first).
    #[serde(default = "max_packet_size")]
    pub max_packet_size: ByteSize,
    /// Messages taken through the pipeline at once, their acknowledgements to the broker in
    /// the order they came.
    #[serde(default = "max_in_flight")]
    pub max_in_flight: usize,
}

fn keep_alive() -> Duration {
    Duration::from_secs(30)
}

fn max_packet_size() -> ByteSize {
    ByteSize::mib(1)
}

fn max_in_flight() -> usize {
    256
}

impl UpstreamConfig {
    pub fn client_id(&self) -> String {
        if self.client_id.is_empty() {
            format!("citygate-{}", self.name)
        } else {
            self.client_id.clone()
        }
    }

    /// Where the broker is, if `url` is an `mqtt://` or `mqtts://` URL.
    pub fn address(&self) -> Option<BrokerAddress> {
        broker_address(&self.url)
    }

    /// The TLS files of this upstream.
    pub fn tls_files(&self) -> TlsFiles<'_> {
        TlsFiles {
            ca: &self.ca_file,
            cert: &self.client_cert_file,
            key: &self.client_key_file,
        }
    }
}

/// The files a TLS connection to a broker uses (empty: none).
#[derive(Debug, Clone, Copy)]
pub struct TlsFiles<'a> {
    /// PEM certificates to check the broker's against; empty: the system's roots.
    pub ca: &'a str,
    /// This client's certificate chain and key (PEM), both or neither.
    pub cert: &'a str,
    pub key: &'a str,
}

/// A broker's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddress {
    pub host: String,
    pub port: u16,
    /// `mqtts://`: TLS.
    pub tls: bool,
}

/// The address of an `mqtt://host[:port]` (1883 by default) or `mqtts://host[:port]` (TLS,
/// 8883 by default) URL.
pub(crate) fn broker_address(url: &str) -> Option<BrokerAddress> {
    let (rest, tls, default_port) = match url.strip_prefix("mqtts://") {
        Some(rest) => (rest, true, 8883),
        None => (url.strip_prefix("mqtt://")?, false, 1883),
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() || rest.contains(['/', '@', '?', '#']) {
        return None;
    }
    // An IPv6 literal is bracketed: [::1]:1883.
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(':') && !port.contains(']') => {
            (host, port.parse().ok()?)
        }
        _ => (rest, default_port),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty() && port != 0).then(|| BrokerAddress {
        host: host.to_string(),
        port,
        tls,
    })
}

/// The problems of TLS files at `at`: a client certificate and key both or neither, and
/// files only for an `mqtts://` broker.
pub(super) fn check_tls(p: &mut Vec<String>, at: &str, tls: bool, files: TlsFiles<'_>) {
    if files.cert.is_empty() != files.key.is_empty() {
        p.push(format!(
            "{at}.client_cert_file and client_key_file: both, or neither"
        ));
    }
    let any = !files.ca.is_empty() || !files.cert.is_empty() || !files.key.is_empty();
    if any && !tls {
        p.push(format!(
            "{at}: TLS files are for an mqtts:// broker; the url is plain mqtt://"
        ));
    }
}

/// The problems of `[[upstream]]`, each naming its entry.
pub(super) fn check(p: &mut Vec<String>, upstreams: &[UpstreamConfig], datasets: &[String]) {
    let mut names = std::collections::HashSet::new();
    for (i, up) in upstreams.iter().enumerate() {
        let at = format!("upstream[{i}]");
        let name_ok = (1..=32).contains(&up.name.len())
            && up
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !name_ok {
            p.push(format!(
                "{at}.name: `{}` must be 1-32 of a-z 0-9 -",
                up.name
            ));
        } else if !names.insert(up.name.as_str()) {
            p.push(format!("{at}.name: `{}` is used twice", up.name));
        }
        match up.address() {
            None => p.push(format!(
                "{at}.url: `{}` must be mqtt://host[:port] or mqtts://host[:port] (TLS)",
                up.url
            )),
            Some(a) => check_tls(p, &at, a.tls, up.tls_files()),
        }
        match super::topic::Template::parse(&up.topic) {
            Err(why) => p.push(format!("{at}.topic: {why}")),
            Ok(t) if !t.names_dataset() && up.dataset.is_empty() => p.push(format!(
                "{at}: the topic names no {{dataset}}, so `dataset` must"
            )),
            Ok(t) if t.names_dataset() && !up.dataset.is_empty() => p.push(format!(
                "{at}: the topic names the {{dataset}}; leave `dataset` out"
            )),
            Ok(_) => {}
        }
        for d in &up.allow_datasets {
            if !datasets.contains(d) {
                p.push(format!(
                    "{at}.allow_datasets: `{d}` is not a dataset of this config"
                ));
            }
        }
        let names_dataset = up.topic.contains("{dataset}");
        if names_dataset && up.allow_datasets.is_empty() {
            p.push(format!(
                "{at}.allow_datasets: the topic names the {{dataset}}, so list the datasets it \
                 may write (anyone who can publish to the broker writes there)"
            ));
        }
        if !names_dataset && !up.allow_datasets.is_empty() {
            p.push(format!(
                "{at}.allow_datasets: only for a topic that names the {{dataset}}"
            ));
        }
        if !up.share_group.is_empty() && up.client_id.is_empty() {
            p.push(format!(
                "{at}.client_id: with a share_group each node needs a client id of its own \
                 (the broker keeps each one's session), e.g. citygate-node-1"
            ));
        }
        if !up.dataset.is_empty() && !datasets.contains(&up.dataset) {
            p.push(format!(
                "{at}.dataset: `{}` is not a dataset of this config",
                up.dataset
            ));
        }
        let group_ok = up
            .share_group
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !group_ok {
            p.push(format!(
                "{at}.share_group: `{}` must be letters, digits, - or _",
                up.share_group
            ));
        }
        let id = up.client_id();
        if id.is_empty() || id.len() > 64 || id.contains(['+', '#', '/']) {
            p.push(format!(
                "{at}.client_id: `{id}` must be 1-64 characters without + # /"
            ));
        }
        if up.keep_alive < Duration::from_secs(5) || up.keep_alive > Duration::from_secs(3600) {
            p.push(format!("{at}.keep_alive: must be 5s to 1h"));
        }
        if !(1024..=256 * 1024 * 1024).contains(&up.max_packet_size.0) {
            p.push(format!("{at}.max_packet_size: must be 1 KiB to 256 MiB"));
        }
        if !(1..=65_535).contains(&up.max_in_flight) {
            p.push(format!("{at}.max_in_flight: must be 1 to 65535"));
        }
    }
}
