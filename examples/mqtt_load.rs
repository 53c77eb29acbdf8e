//! MQTT load generator: many rumqttc connections publishing single readings at QoS 1 with an
//! inflight window, measuring acknowledged readings per second and PUBACK latency. With
//! `--subscribe` it also runs one subscriber on `citygate/#` and counts what it receives, which
//! is how a plain broker (mosquitto) is measured: publish → broker → subscriber.
//!
//! ```text
//! cargo run --release --example mqtt_load -- --port 1883 --key cg_... --connections 16 --duration 20
//! cargo run --release --example mqtt_load -- --port 1884 --subscribe --connections 16 --duration 20
//! cargo run --release --example mqtt_load -- --port 1883 --key cg_... --rate 10000 --duration 20
//! cargo run --release --example mqtt_load -- --port 1883 --key cg_... --idle 10000 --duration 30
//! ```
//!
//! With `--idle N` it opens N MQTT 3.1.1 connections (user `device`, the key as password,
//! keep-alive off), waits for each CONNACK, says `idle N connected` and holds them, sending
//! nothing, for the duration: what a city's quiet devices cost a server.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};

struct Args {
    host: String,
    port: u16,
    key: Option<String>,
    connections: usize,
    duration: Duration,
    /// Readings per second in total; 0 = as fast as acknowledgements allow.
    rate: f64,
    inflight: u16,
    subscribe: bool,
    idle: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        host: "127.0.0.1".into(),
        port: 1883,
        key: None,
        connections: 16,
        duration: Duration::from_secs(20),
        rate: 0.0,
        inflight: 100,
        subscribe: false,
        idle: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--host" => args.host = value()?,
            "--port" => args.port = value()?.parse().map_err(|e| format!("--port: {e}"))?,
            "--key" => args.key = Some(value()?),
            "--connections" => {
                args.connections = value()?
                    .parse()
                    .map_err(|e| format!("--connections: {e}"))?
            }
            "--duration" => {
                args.duration =
                    Duration::from_secs(value()?.parse().map_err(|e| format!("--duration: {e}"))?)
            }
            "--rate" => args.rate = value()?.parse().map_err(|e| format!("--rate: {e}"))?,
            "--inflight" => {
                args.inflight = value()?.parse().map_err(|e| format!("--inflight: {e}"))?
            }
            "--subscribe" => args.subscribe = true,
            "--idle" => args.idle = value()?.parse().map_err(|e| format!("--idle: {e}"))?,
            // `cargo test --all-targets` builds examples but does not run them; be explicit.
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(args)
}

#[derive(Default)]
struct Stats {
    published: AtomicU64,
    acked: AtomicU64,
    refused: AtomicU64,
    received: AtomicU64,
    latencies_us: Mutex<Vec<u32>>,
}

fn options(args: &Args, id: String) -> MqttOptions {
    let mut o = MqttOptions::new(id, args.host.clone(), args.port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_inflight(args.inflight);
    o.set_max_packet_size(1 << 20, 1 << 20);
    if let Some(key) = &args.key {
        o.set_credentials("device", key.clone());
    }
    o
}

#[tokio::main]
async fn main() {
    let args = match parse_args() {
        Ok(args) => Arc::new(args),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    if args.idle > 0 {
        hold_idle(&args).await;
        return;
    }
    let stats = Arc::new(Stats::default());
    let measuring = Arc::new(std::sync::atomic::AtomicBool::new(true));

    if args.subscribe {
        let (client, mut eventloop) =
            AsyncClient::new(options(&args, "load-subscriber".into()), 1000);
        client
            .subscribe("citygate/#", QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        let stats = stats.clone();
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(_))) => {
                        stats.received.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        eprintln!("subscriber: {e}");
                        return;
                    }
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let started = Instant::now();
    let until = started + args.duration;
    let mut handles = Vec::new();
    for c in 0..args.connections {
        let (client, mut eventloop) = AsyncClient::new(
            options(&args, format!("load-{c}")),
            usize::from(args.inflight),
        );
        // The event loop: records when each publish left and when its PUBACK came back.
        let loop_stats = stats.clone();
        let loop_measuring = measuring.clone();
        handles.push(tokio::spawn(async move {
            let mut sent_at = vec![None::<Instant>; 65536];
            loop {
                match eventloop.poll().await {
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                        sent_at[pkid as usize] = Some(Instant::now());
                    }
                    Ok(Event::Incoming(Packet::PubAck(ack))) => {
                        if loop_measuring.load(Ordering::Relaxed) {
                            loop_stats.acked.fetch_add(1, Ordering::Relaxed);
                            if let Some(t) = sent_at[ack.pkid as usize].take() {
                                let us = t.elapsed().as_micros().min(u32::MAX as u128) as u32;
                                loop_stats.latencies_us.lock().unwrap().push(us);
                            }
                        }
                    }
                    Ok(Event::Incoming(Packet::Disconnect)) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        }));
        // The publisher: never awaits anything the event loop task must do first.
        let pub_stats = stats.clone();
        let args = args.clone();
        handles.push(tokio::spawn(async move {
            let per_connection = args.rate / args.connections as f64;
            let mut next = Instant::now();
            let mut i: u64 = 0;
            while Instant::now() < until {
                if per_connection > 0.0 {
                    next += Duration::from_secs_f64(1.0 / per_connection);
                    tokio::time::sleep_until(next.into()).await;
                }
                let topic = format!("citygate/traffic-counts/load-{c:03}-{}", i % 10);
                let payload = format!(r#"{{"vehicle_count":{},"mean_speed":42.5}}"#, i % 100);
                if client
                    .publish(topic, QoS::AtLeastOnce, false, payload)
                    .await
                    .is_err()
                {
                    pub_stats.refused.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                pub_stats.published.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
            let _ = client.disconnect().await;
        }));
    }

    // Report once a second, then the totals over the measured window.
    let mut last = (0u64, 0u64);
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let acked = stats.acked.load(Ordering::Relaxed);
        let received = stats.received.load(Ordering::Relaxed);
        eprintln!(
            "{:5.1}s  acked {:>9} (+{:>7}/s)  received {:>9} (+{:>7}/s)",
            started.elapsed().as_secs_f64(),
            acked,
            acked - last.0,
            received,
            received - last.1
        );
        last = (acked, received);
    }
    let elapsed = started.elapsed().as_secs_f64();
    measuring.store(false, Ordering::Relaxed);
    let acked = stats.acked.load(Ordering::Relaxed);
    let received = stats.received.load(Ordering::Relaxed);
    let mut lat = std::mem::take(&mut *stats.latencies_us.lock().unwrap());
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        lat[((lat.len() - 1) as f64 * p) as usize] as f64 / 1000.0
    };
    println!(
        "connections {}  published {}  acked {} ({:.0}/s)  received by subscriber {} ({:.0}/s)  \
         puback latency p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        args.connections,
        stats.published.load(Ordering::Relaxed),
        acked,
        acked as f64 / elapsed,
        received,
        received as f64 / elapsed,
        pct(0.5),
        pct(0.99),
        pct(1.0),
    );
    for h in handles {
        h.abort();
    }
}

/// An MQTT 3.1.1 CONNECT: clean session, keep-alive off, user `device` with `password`.
fn connect_packet(client_id: &str, password: &str) -> Vec<u8> {
    let string = |s: &str| {
        let mut out = (s.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(s.as_bytes());
        out
    };
    let mut body = string("MQTT");
    body.extend([4, 0xC2, 0, 0]);
    body.extend(string(client_id));
    body.extend(string("device"));
    body.extend(string(password));
    let mut packet = vec![0x10];
    let mut len = body.len();
    loop {
        let byte = (len % 128) as u8;
        len /= 128;
        packet.push(if len > 0 { byte | 0x80 } else { byte });
        if len == 0 {
            break;
        }
    }
    packet.extend(body);
    packet
}

/// Opens `--idle` connections, each waiting for its CONNACK, then holds them silent.
async fn hold_idle(args: &Args) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let password = args.key.clone().unwrap_or_default();
    let mut held = Vec::with_capacity(args.idle);
    // A few hundred handshakes at a time, so the listener's backlog is not the test.
    for chunk in (0..args.idle).collect::<Vec<_>>().chunks(200) {
        let opened = futures_util::future::join_all(chunk.iter().map(|&i| {
            let (host, port, password) = (args.host.clone(), args.port, password.clone());
            async move {
                let mut s = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
                s.write_all(&connect_packet(&format!("idle-{i}"), &password))
                    .await?;
                let mut connack = [0u8; 4];
                s.read_exact(&mut connack).await?;
                if connack != [0x20, 0x02, 0x00, 0x00] {
                    return Err(std::io::Error::other(format!("refused: {connack:?}")));
                }
                Ok::<_, std::io::Error>(s)
            }
        }))
        .await;
        for s in opened {
            match s {
                Ok(s) => held.push(s),
                Err(e) => {
                    eprintln!("connection {}: {e}", held.len());
                    std::process::exit(1);
                }
            }
        }
    }
    println!("idle {} connected", held.len());
    tokio::time::sleep(args.duration).await;
}
