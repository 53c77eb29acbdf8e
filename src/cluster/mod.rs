//! Nodes that serve one city together (`[cluster]`): each publishes the records of its log
//! to the broker the nodes share, and follows everyone else's into its feed hub and its hot
//! store, so that live feeds and recent history on every node see every node's readings.
//! Intake stays each node's own (its log, its lake); only acknowledged readings travel.
//!
//! **On the wire.** Node `a` publishes each record of its log, as the log holds it (its
//! LSN, its dataset, its fields by name; [`crate::wal::record`]), to `{topic_prefix}/a` at
//! QoS 1, after this node's epoch ([`epoch`]): a message is `epoch:u64le payload`.
//!
//! **Once each, in order per node.** [`publish`] is a log consumer: it moves its durable
//! checkpoint only past records the broker acknowledged, and after a restart or a lost
//! connection it publishes again from there. MQTT keeps one publisher's messages in order,
//! so a follower sees each node's records in LSN order, and [`follow`] drops a record whose
//! LSN it has seen from that node (a record published again) unless the node's epoch
//! changed (a node started on a fresh log numbers from 1 again).
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
    let cluster = Arc::new(Cluster {
        config: config.clone(),
        epoch: epoch(wal.dir())?,
        metrics: metrics.clone(),
    });
    let publisher = publish::Publisher::new(cluster.clone(), wal.clone())?;
    sinks.spawn(publisher.run(sinks_stop.clone()));
    let follower = follow::Follower::new(cluster, registry.clone(), hub.clone(), hot.clone());
    Ok(tokio::spawn(follower.run(closing.clone())))
}

impl Cluster {
    /// The options of one of this node's two connections (`role`: `out` or `in`).
    fn options(&self, role: &str) -> MqttOptions {
        let (host, port) = self.config.host_port().expect("checked by the config");
        let id = format!("citygate-{}-{role}", self.config.node_id);
        let mut options = MqttOptions::new(id, host, port);
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

/// A message: this node's epoch, then the record's payload as the log holds it.
fn message(epoch: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + payload.len());
    out.extend_from_slice(&epoch.to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// `(epoch, payload)` of a message.
fn read_message(message: &[u8]) -> Option<(u64, &[u8])> {
    let (epoch, payload) = message.split_at_checked(8)?;
    Some((u64::from_le_bytes(epoch.try_into().ok()?), payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_reads_back_and_a_short_one_does_not() {
        let m = message(42, b"payload");
        assert_eq!(read_message(&m), Some((42, &b"payload"[..])));
        assert_eq!(read_message(b"short"), None);
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
