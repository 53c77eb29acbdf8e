//! `[cluster]`: nodes that serve one city together share their acknowledged readings through
//! an MQTT broker, so that every node's live feeds and recent history see all of them.

use std::time::Duration;

use serde::Deserialize;

use super::Secret;
use super::units;

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// The broker the nodes share, `mqtt://host:port` or `mqtts://host:port` (TLS). Empty:
    /// this node is on its own.
    pub broker: String,
    /// This node's name among the others, 1-32 of `a-z 0-9 -`, the same across restarts:
    /// its readings are published under it, and it skips its own.
    pub node_id: String,
    /// The topic level the nodes publish under: node `a` publishes to `{topic_prefix}/a`.
    pub topic_prefix: String,
    pub username: String,
    pub password: Secret,
    /// With `mqtts://`: PEM certificates to check the broker's against (empty: the system's
    /// roots).
    pub ca_file: String,
    /// With `mqtts://`: this node's certificate chain and key (PEM), when the broker asks.
    pub client_cert_file: String,
    pub client_key_file: String,
    /// The secret every node of the cluster shares (at least 16 characters): each message
    /// carries an HMAC under it, and a node takes only messages whose HMAC holds.
    pub secret: Secret,
    /// The keep-alive asked of the broker.
    #[serde(with = "units::duration")]
    pub keep_alive: Duration,
    /// How long the broker keeps this node's subscription, and the other nodes' readings
    /// for it, while the node is away (MQTT 5 session expiry).
    #[serde(with = "units::duration")]
    pub session_expiry: Duration,
    /// Readings acknowledged longer ago than this are not published any more (while the
    /// broker is away, say): the log is not held for them, and the other nodes' subscribers
    /// would have little use for them live. They are counted
    /// (`citygate_cluster_records_published_total{outcome="too_old"}`); the lake has them.
    #[serde(with = "units::duration")]
    pub max_backlog: Duration,
    /// Log records published and not yet acknowledged by the broker, at most.
    pub max_in_flight: usize,
}

impl Default for ClusterConfig {
    fn default() -> ClusterConfig {
        ClusterConfig {
            broker: String::new(),
            node_id: String::new(),
            topic_prefix: "citygate/readings".into(),
            username: String::new(),
            password: Secret::default(),
            ca_file: String::new(),
            client_cert_file: String::new(),
            client_key_file: String::new(),
            secret: Secret::default(),
            keep_alive: Duration::from_secs(30),
            session_expiry: Duration::from_secs(3600),
            max_backlog: Duration::from_secs(600),
            max_in_flight: 64,
        }
    }
}

impl ClusterConfig {
    pub fn enabled(&self) -> bool {
        !self.broker.is_empty()
    }

    /// Whether `name` may name a node: 1-32 of `a-z 0-9 -`.
    pub fn valid_node_id(name: &str) -> bool {
        (1..=32).contains(&name.len())
            && name
                .chars()
                .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-')
    }

    pub fn address(&self) -> Option<super::upstream::BrokerAddress> {
        super::upstream::broker_address(&self.broker)
    }

    /// The TLS files of the connections to the broker.
    pub fn tls_files(&self) -> super::TlsFiles<'_> {
        super::TlsFiles {
            ca: &self.ca_file,
            cert: &self.client_cert_file,
            key: &self.client_key_file,
        }
    }

    /// The topic this node publishes to.
    pub fn topic_of(&self, node: &str) -> String {
        format!("{}/{node}", self.topic_prefix)
    }
}

/// The problems of `[cluster]`.
pub(super) fn check(p: &mut Vec<String>, c: &ClusterConfig) {
    if !c.enabled() {
        return;
    }
    match c.address() {
        None => p.push(format!(
            "cluster.broker: `{}` must be mqtt://host[:port] or mqtts://host[:port] (TLS)",
            c.broker
        )),
        Some(a) => super::upstream::check_tls(p, "cluster", a.tls, c.tls_files()),
    }
    let id_ok = (1..=32).contains(&c.node_id.len())
        && c.node_id
            .chars()
            .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-');
    if !id_ok {
        p.push(format!(
            "cluster.node_id: `{}` must be 1-32 of a-z 0-9 - (each node its own, the same \
             across restarts)",
            c.node_id
        ));
    }
    if c.secret.0.chars().count() < 16 {
        p.push(
            "cluster.secret: every node needs the cluster's shared secret, at least 16 \
             characters (best from the environment: CITYGATE__CLUSTER__SECRET)"
                .into(),
        );
    }
    let prefix_ok = !c.topic_prefix.is_empty()
        && !c.topic_prefix.starts_with('$')
        && !c.topic_prefix.ends_with('/')
        && !c.topic_prefix.contains(['+', '#', '\0']);
    if !prefix_ok {
        p.push(format!(
            "cluster.topic_prefix: `{}` must be a topic without + # or a trailing /, not \
             starting with $",
            c.topic_prefix
        ));
    }
    if c.keep_alive < Duration::from_secs(5) || c.keep_alive > Duration::from_secs(3600) {
        p.push("cluster.keep_alive: must be 5s to 1h".into());
    }
    if c.session_expiry < Duration::from_secs(60) {
        p.push("cluster.session_expiry: must be at least 1m".into());
    }
    if c.max_backlog < Duration::from_secs(1) {
        p.push("cluster.max_backlog: must be at least 1s".into());
    }
    if !(1..=65_535).contains(&c.max_in_flight) {
        p.push("cluster.max_in_flight: must be 1 to 65535".into());
    }
}
