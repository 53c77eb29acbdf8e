//! Debian's mosquitto as the broker a city already runs, on a free port, and devices
//! publishing to it with rumqttc.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

/// A mosquitto broker on a free port; stopped on drop.
pub(crate) struct Broker {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Broker {
    pub(crate) fn start() -> Broker {
        Broker::start_with("persistence false\n")
    }

    /// A broker with `extra` configuration lines.
    pub(crate) fn start_with(extra: &str) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        std::fs::write(
            dir.path().join("mosquitto.conf"),
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 100000\n{extra}"
            ),
        )
        .unwrap();
        let child = Broker::spawn(dir.path(), port);
        Broker { child, port, dir }
    }

    fn spawn(dir: &std::path::Path, port: u16) -> Child {
        let exe = ["/usr/sbin/mosquitto", "mosquitto"]
            .into_iter()
            .find(|p| !p.starts_with('/') || std::path::Path::new(p).exists())
            .unwrap();
        let child = Command::new(exe)
            .arg("-c")
            .arg(dir.join("mosquitto.conf"))
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto runs (scripts/test.sh installs Debian's mosquitto)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "mosquitto did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
        child
    }

    /// Stops the broker as an operator does (SIGTERM: a persistent one saves its sessions)
    /// and waits for it to exit.
    pub(crate) fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }

    /// Starts a stopped broker again.
    pub(crate) fn resume(&mut self) {
        self.child = Broker::spawn(self.dir.path(), self.port);
    }

    /// Where a persistent broker keeps its database: its own directory.
    pub(crate) fn persistent() -> Broker {
        let broker =
            Broker::start_with("persistence true\npersistence_location ./\nautosave_interval 1\n");
        // Run as root, mosquitto writes as the user `mosquitto`.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(broker.dir.path(), std::fs::Permissions::from_mode(0o777))
            .unwrap();
        broker
    }
}

impl Broker {
    /// Publishes every `(topic, payload)` at QoS 1 as one device.
    pub(crate) async fn publish(&self, messages: Vec<(String, Vec<u8>)>) {
        publish(self.port, messages).await;
    }
}

/// Publishes every `(topic, payload)` at QoS 1 to the broker on `port` and returns once it
/// has acknowledged them all.
pub(crate) async fn publish(port: u16, messages: Vec<(String, Vec<u8>)>) {
    let mut options = MqttOptions::new(
        format!("device-{}", rand::random::<u32>()),
        "127.0.0.1",
        port,
    );
    options.set_inflight(100);
    let (client, mut events) = AsyncClient::new(options, 1000);
    let n = messages.len();
    let sender = tokio::spawn(async move {
        for (topic, payload) in messages {
            client
                .publish(topic, QoS::AtLeastOnce, false, payload)
                .await
                .unwrap();
        }
        client
    });
    let mut acked = 0;
    while acked < n {
        match tokio::time::timeout(Duration::from_secs(20), events.poll()).await {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
            Ok(Ok(_)) => {}
            other => panic!("publishing to mosquitto failed: {other:?}"),
        }
    }
    let client = sender.await.unwrap();
    let _ = client.disconnect().await;
}
