//! Any bytes from an MQTT client after its CONNECT, against a running gateway: the session
//! handles them until the connection closes, and always closes. A panic anywhere in the
//! gateway aborts the run (libFuzzer's panic hook), a session that never ends fails it.
//!
//! The first byte picks the protocol version (3.1.1 or 5) and the key: a device's (its
//! publishes go through the whole pipeline) or the admin's (SUBSCRIBE follows feeds).
#![no_main]

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use citygate::App;
use citygate::config::{Config, DEFAULT_CONFIG, FsyncMode};
use citygate::market::KeyKind;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Gateway {
    runtime: tokio::runtime::Runtime,
    mqtt: SocketAddr,
    device_key: String,
    admin_key: String,
    _app: App,
    _dir: tempfile::TempDir,
}

fn gateway() -> &'static Gateway {
    static GATEWAY: OnceLock<Gateway> = OnceLock::new();
    GATEWAY.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::from_toml(DEFAULT_CONFIG, "default", &[]).unwrap();
        config.http.listen = "127.0.0.1:0".into();
        config.mqtt.listen = "127.0.0.1:0".into();
        config.mqtt.connect_timeout = Duration::from_secs(1);
        config.storage.data_dir = dir.path().to_path_buf();
        // Speed, not durability, is what a fuzz run needs of the log.
        config.wal.fsync = FsyncMode::Never;
        let admin_key = citygate::market::keys::new_secret();
        let options = citygate::StartOptions {
            admin_key: Some(admin_key.clone()),
            ..Default::default()
        };
        let (app, device_key) = runtime.block_on(async {
            let app = App::start_with(config, options).await.unwrap();
            let datasets: Vec<String> = ["traffic-counts", "weather"].map(String::from).to_vec();
            let device = app
                .store()
                .create_key(KeyKind::Device, "copenhagen", &datasets)
                .await
                .unwrap();
            (app, device.secret)
        });
        let mqtt = app.mqtt_addr().expect("mqtt enabled");
        Gateway {
            runtime,
            mqtt,
            device_key,
            admin_key,
            _app: app,
            _dir: dir,
        }
    })
}

fn mqtt_string(s: &[u8]) -> Vec<u8> {
    let mut out = (s.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(s);
    out
}

/// A CONNECT with user `fuzz`, password `key`, clean session, no keep-alive.
fn connect(level: u8, key: &str) -> Vec<u8> {
    let mut body = mqtt_string(b"MQTT");
    body.push(level);
    body.push(0xC2);
    body.extend(0u16.to_be_bytes());
    if level == 5 {
        body.push(0);
    }
    body.extend(mqtt_string(b""));
    body.extend(mqtt_string(b"fuzz"));
    body.extend(mqtt_string(key.as_bytes()));
    let mut out = vec![0x10];
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            break;
        }
    }
    out.extend(body);
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let gw = gateway();
    let level = if mode & 1 == 0 { 4 } else { 5 };
    let key = if mode & 2 == 0 {
        &gw.device_key
    } else {
        &gw.admin_key
    };
    let mut input = connect(level, key);
    input.extend_from_slice(rest);
    gw.runtime.block_on(async {
        let mut s = TcpStream::connect(gw.mqtt).await.unwrap();
        // The server may close before it has read everything: that is its right.
        let _ = s.write_all(&input).await;
        let _ = s.shutdown().await;
        let mut sink = [0u8; 4096];
        let closed = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match s.read(&mut sink).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(
            closed.is_ok(),
            "the session did not end after the client closed"
        );
    });
});
