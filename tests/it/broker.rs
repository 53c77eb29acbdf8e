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
        let port = free_port();
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

    /// A broker with a second listener, on TLS, that asks every client for a certificate
    /// of the test CA; and the files of that CA, a client's certificate and another CA.
    pub(crate) fn start_tls() -> (Broker, TlsListener) {
        let dir = tempfile::tempdir().unwrap();
        let certs = TlsListener::make(dir.path(), free_port());
        let port = free_port();
        let d = dir.path().display();
        std::fs::write(
            dir.path().join("mosquitto.conf"),
            format!(
                "per_listener_settings false\nallow_anonymous true\nmax_queued_messages 100000\n\
                 persistence false\nlistener {port} 127.0.0.1\n\
                 listener {} 127.0.0.1\ncafile {d}/ca.pem\ncertfile {d}/server.pem\n\
                 keyfile {d}/server.key\nrequire_certificate true\n",
                certs.port
            ),
        )
        .unwrap();
        let child = Broker::spawn(dir.path(), port);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", certs.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "mosquitto's TLS listener did not come up"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        (Broker { child, port, dir }, certs)
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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A broker's TLS listener and the files a client needs for it.
pub(crate) struct TlsListener {
    pub port: u16,
    /// The CA that signed the broker's and the client's certificates.
    pub ca: String,
    pub client_cert: String,
    pub client_key: String,
    /// A CA that signed nothing here.
    pub other_ca: String,
}

impl TlsListener {
    /// Makes a CA, a certificate of it for the broker (127.0.0.1) and one for a client, and
    /// another CA, as PEM files in `dir`.
    fn make(dir: &std::path::Path, port: u16) -> TlsListener {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let ca_of = |name: &str| {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            let key = KeyPair::generate().unwrap();
            let cert = params.self_signed(&key).unwrap();
            (cert, key)
        };
        let (ca, ca_key) = ca_of("citygate test CA");
        let (other, _) = ca_of("another CA");
        let signed = |names: Vec<String>, cn: &str| {
            let mut params = CertificateParams::new(names).unwrap();
            params.distinguished_name.push(DnType::CommonName, cn);
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (server, server_key) = signed(vec!["127.0.0.1".into(), "localhost".into()], "broker");
        let (client, client_key) = signed(vec![], "citygate-node");
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path.display().to_string()
        };
        write("server.pem", &server);
        write("server.key", &server_key);
        TlsListener {
            port,
            ca: write("ca.pem", &ca.pem()),
            client_cert: write("client.pem", &client),
            client_key: write("client.key", &client_key),
            other_ca: write("other-ca.pem", &other.pem()),
        }
    }
}
