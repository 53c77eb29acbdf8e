//! Nodes that serve one city together (`[cluster]`): each publishes the records of its log
//! to the broker the nodes share, and follows everyone else's into its feed hub and its hot
//! store, so that live feeds and recent history on every node see every node's readings.
//! Intake stays each node's own (its log, its lake); only acknowledged readings travel.
//!
//! **On the wire.** Node `a` publishes the records of its log, as the log holds them (each
//! with its LSN, its dataset, its fields by name; [`crate::wal::record`]), to
//! `{topic_prefix}/a` at QoS 1: consecutive records travel together, up to [`BUNDLE_BYTES`]
//! a message, after the format's version, this node's epoch ([`epoch`]) and a MAC. A message
//! is `version:u8 epoch:u64le mac:[u8; 32] (len:u32le payload)*`, the MAC an HMAC-SHA256
//! under the cluster's shared `secret` of the topic, the version, the epoch and the records.
//! A node takes only messages of its own version: the nodes of a cluster upgrade together. A follower takes only messages whose MAC
//! holds: whoever else may publish on the broker cannot put readings into the nodes' feeds
//! nor silence a node with a forged LSN.
//!
//! **Once each, in order per node.** [`publish`] is a log consumer: it moves its durable
//! checkpoint only past records the broker acknowledged, and after a restart or a lost
//! connection it publishes again from there. MQTT keeps one publisher's messages in order,
//! so a follower sees each node's records in LSN order, and [`follow`] drops a record whose
//! LSN it has seen from that node (a record published again) unless the node's epoch
//! changed (a node started on a fresh log numbers from 1 again); a record below the highest
//! seen that fills a gap (one message taken by the broker only on a second try, after the
//! next) is taken.
//!
//! **When something goes away.** A follower keeps its broker session (MQTT 5, clean start
//! off, `session_expiry`): the broker holds the other nodes' records for it while it
//! reconnects. While the broker is away every node goes on taking and serving its own
//! readings; its publisher waits, holding the log, and sends the backlog when the broker is
//! back (records older than `max_backlog` are let go: the lake has them).

pub mod follow;
pub mod publish;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::v5::MqttOptions;
use tokio_util::sync::CancellationToken;

use crate::config::ClusterConfig;
use crate::feed::Hub;
use crate::query::hot::HotStore;
use crate::registry::Registry;
use crate::telemetry::ClusterMetrics;
use crate::wal::Wal;

/// The file in the log's directory holding the log's epoch.
const EPOCH_FILE: &str = "cluster-epoch";

/// What the cluster's tasks share.
#[derive(Debug)]
pub struct Cluster {
    config: ClusterConfig,
    epoch: u64,
    metrics: ClusterMetrics,
    /// TCP, or TLS as configured (read once, at start).
    transport: crate::upstream::tls::BrokerTransport,
}

/// This log's epoch: a random number made with the log and kept beside it, so that the other
/// nodes tell a node started on a fresh log (LSNs from 1 again) from one sending again.
pub fn epoch(wal_dir: &Path) -> std::io::Result<u64> {
    let path = wal_dir.join(EPOCH_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().parse().map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} holds no number", path.display()),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let epoch = rand::random::<u64>() | 1;
            let tmp = wal_dir.join(format!("{EPOCH_FILE}.tmp"));
            std::fs::write(&tmp, epoch.to_string())?;
            std::fs::File::open(&tmp)?.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            Ok(epoch)
        }
        Err(e) => Err(e),
    }
}

/// Starts publishing this node's records (a log consumer, stopped with the sinks by
/// `sinks_stop`) and following the other nodes' (until `closing`).
#[allow(clippy::too_many_arguments)]
pub fn start(
    config: &ClusterConfig,
    wal: &Wal,
    registry: &Arc<Registry>,
    hub: &Arc<Hub>,
    hot: &Arc<HotStore>,
    metrics: &ClusterMetrics,
    closing: &CancellationToken,
    sinks_stop: &CancellationToken,
    sinks: &tokio_util::task::TaskTracker,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    metrics.preset();
    let address = config.address().expect("checked by the config");
    let transport = crate::upstream::tls::BrokerTransport::of(&address, config.tls_files())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let cluster = Arc::new(Cluster {
        config: config.clone(),
        epoch: epoch(wal.dir())?,
        metrics: metrics.clone(),
        transport,
    });
    let publisher = publish::Publisher::new(cluster.clone(), wal.clone())?;
    sinks.spawn(publisher.run_supervised(sinks_stop.clone()));
    let follower = follow::Follower::new(cluster, registry.clone(), hub.clone(), hot.clone());
    Ok(tokio::spawn(follower.run(closing.clone())))
}

impl Cluster {
    /// The options of one of this node's two connections (`role`: `out` or `in`).
    fn options(&self, role: &str) -> MqttOptions {
        let address = self.config.address().expect("checked by the config");
        let id = format!("citygate-{}-{role}", self.config.node_id);
        let mut options = MqttOptions::new(id, address.host, address.port);
        options.set_transport(self.transport.0.clone());
        options.set_keep_alive(self.config.keep_alive);
        if !self.config.username.is_empty() {
            options.set_credentials(&self.config.username, &self.config.password.0);
        }
        options
    }
}

/// The wait before connecting again, doubled up to 30 s.
fn next_backoff(backoff: Duration) -> Duration {
    (backoff * 2).min(Duration::from_secs(30))
}

/// The wire format's version.
const VERSION: u8 = 1;
/// Bytes of a message before its records: the version, the epoch and the MAC.
const HEADER: usize = 1 + 8 + 32;
/// Records travel together up to this many bytes a message (one larger record alone).
pub const BUNDLE_BYTES: usize = 256 << 10;

/// Consecutive records' payloads as one message body: `(len:u32le payload)*`.
fn bundle<'a>(payloads: impl Iterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for p in payloads {
        out.extend_from_slice(&(p.len() as u32).to_le_bytes());
        out.extend_from_slice(p);
    }
    out
}

/// The records of a message body, in order; `None` where it stops making sense.
fn unbundle(mut body: &[u8]) -> impl Iterator<Item = Option<&[u8]>> {
    std::iter::from_fn(move || {
        if body.is_empty() {
            return None;
        }
        let Some((len, rest)) = body.split_at_checked(4) else {
            body = &[];
            return Some(None);
        };
        let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
        let Some((record, rest)) = rest.split_at_checked(len) else {
            body = &[];
            return Some(None);
        };
        body = rest;
        Some(Some(record))
    })
}

/// The MAC of a message on `topic`: HMAC-SHA256 under `secret` of the topic's length and
/// bytes, the version, the epoch and the body.
fn mac(secret: &str, topic: &str, epoch: u64, body: &[u8]) -> hmac::Hmac<sha2::Sha256> {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(&(topic.len() as u32).to_le_bytes());
    mac.update(topic.as_bytes());
    mac.update(&[VERSION]);
    mac.update(&epoch.to_le_bytes());
    mac.update(body);
    mac
}

/// A message on `topic`: the version, this node's epoch, the MAC, then the body.
fn message(secret: &str, topic: &str, epoch: u64, body: &[u8]) -> Vec<u8> {
    use hmac::Mac;
    let mut out = Vec::with_capacity(HEADER + body.len());
    out.push(VERSION);
    out.extend_from_slice(&epoch.to_le_bytes());
    out.extend_from_slice(&mac(secret, topic, epoch, body).finalize().into_bytes());
    out.extend_from_slice(body);
    out
}

/// `(epoch, body)` of a message on `topic` of this version whose MAC holds under `secret`.
fn read_message<'m>(secret: &str, topic: &str, message: &'m [u8]) -> Option<(u64, &'m [u8])> {
    use hmac::Mac;
    let (head, body) = message.split_at_checked(HEADER)?;
    if head[0] != VERSION {
        return None;
    }
    let epoch = u64::from_le_bytes(head[1..9].try_into().ok()?);
    // Compared in constant time.
    mac(secret, topic, epoch, body)
        .verify_slice(&head[9..])
        .ok()?;
    Some((epoch, body))
}

/// What a follower has taken of one node: its epoch, the highest LSN, and the gaps below it
/// (LSNs not seen, oldest first, at most [`MAX_GAPS`]).
#[derive(Debug, Default)]
struct Seen {
    epoch: u64,
    last: u64,
    gaps: std::collections::VecDeque<(u64, u64)>,
}

/// Gaps a follower remembers per node (a record the node left out leaves one for good).
const MAX_GAPS: usize = 256;

impl Seen {
    /// Whether record `lsn` of `epoch` was not taken yet.
    fn is_new(&self, epoch: u64, lsn: u64) -> bool {
        epoch != self.epoch
            || lsn > self.last
            || self.gaps.iter().any(|&(lo, hi)| lo <= lsn && lsn <= hi)
    }

    /// Notes record `lsn` of `epoch` taken.
    fn note(&mut self, epoch: u64, lsn: u64) {
        if epoch != self.epoch {
            *self = Seen {
                epoch,
                ..Seen::default()
            };
        }
        if lsn > self.last {
            if lsn > self.last + 1 && self.last > 0 {
                self.gaps.push_back((self.last + 1, lsn - 1));
                if self.gaps.len() > MAX_GAPS {
                    self.gaps.pop_front();
                }
            }
            self.last = lsn;
            return;
        }
        let Some(at) = self
            .gaps
            .iter()
            .position(|&(lo, hi)| lo <= lsn && lsn <= hi)
        else {
            return;
        };
        let (lo, hi) = self.gaps[at];
        match (lsn == lo, lsn == hi) {
            (true, true) => {
                self.gaps.remove(at);
            }
            (true, false) => self.gaps[at].0 = lsn + 1,
            (false, true) => self.gaps[at].1 = lsn - 1,
            (false, false) => {
                self.gaps[at].1 = lsn - 1;
                self.gaps.insert(at + 1, (lsn + 1, hi));
            }
        }
    }

    #[cfg(test)]
    fn first_time(&mut self, epoch: u64, lsn: u64) -> bool {
        let new = self.is_new(epoch, lsn);
        if new {
            self.note(epoch, lsn);
        }
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_taken_once_and_a_late_one_fills_its_gap() {
        let mut seen = Seen::default();
        assert!(seen.first_time(7, 1) && seen.first_time(7, 2));
        assert!(!seen.first_time(7, 2), "sent again");
        // Records 3-5 come on the broker's second try, after 6.
        assert!(seen.first_time(7, 6));
        assert!(seen.first_time(7, 4) && seen.first_time(7, 3) && seen.first_time(7, 5));
        assert!(!seen.first_time(7, 4) && !seen.first_time(7, 6));
        assert!(seen.gaps.is_empty());
        // A fresh log of the node numbers from 1 again.
        assert!(seen.first_time(8, 1));
    }

    #[test]
    fn records_travel_together_and_a_cut_bundle_says_so() {
        let body = bundle([&b"one"[..], b"", b"three"].into_iter());
        let got: Vec<Option<&[u8]>> = unbundle(&body).collect();
        assert_eq!(got, [Some(&b"one"[..]), Some(b""), Some(b"three")]);
        let cut: Vec<Option<&[u8]>> = unbundle(&body[..body.len() - 1]).collect();
        assert_eq!(cut, [Some(&b"one"[..]), Some(b""), None]);
    }

    #[test]
    fn a_message_reads_back_only_under_its_secret_and_topic() {
        let m = message("s3cret", "citygate/readings/a", 42, b"payload");
        assert_eq!(
            read_message("s3cret", "citygate/readings/a", &m),
            Some((42, &b"payload"[..]))
        );
        assert_eq!(read_message("other", "citygate/readings/a", &m), None);
        assert_eq!(
            read_message("s3cret", "citygate/readings/b", &m),
            None,
            "replayed as another node"
        );
        let mut forged = m.clone();
        *forged.last_mut().unwrap() ^= 1;
        assert_eq!(read_message("s3cret", "citygate/readings/a", &forged), None);
        assert_eq!(
            read_message("s3cret", "citygate/readings/a", b"short"),
            None
        );
    }

    #[test]
    fn the_epoch_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = epoch(dir.path()).unwrap();
        assert_eq!(epoch(dir.path()).unwrap(), first);
        std::fs::write(dir.path().join(EPOCH_FILE), "nonsense").unwrap();
        assert!(epoch(dir.path()).is_err());
    }
}
