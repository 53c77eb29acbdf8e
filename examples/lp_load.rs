//! Line-protocol load generator: feeds an InfluxDB v2 write API (VictoriaMetrics, InfluxDB)
//! directly with the readings `benches/load/post_readings.lua` sends to citygate, written as
//! citygate's influx sink writes them: measurement `traffic-counts`, tags `provider` and
//! `sensor_id`, fields `vehicle_count` (int), `mean_speed`, `lat`, `lon` (floats) and `seq`
//! (int). Each group of 100 sensors is stamped with the clock's microsecond as it is written,
//! like a batch of 100 readings stamped on arrival. It is the baseline of
//! `scripts/influx-bench.sh`.
//!
//! ```text
//! cargo run --release --example lp_load -- --url http://127.0.0.1:8428 --connections 8 --duration 20
//! ```

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

struct Args {
    url: String,
    connections: usize,
    duration: Duration,
    batch: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        url: "http://127.0.0.1:8428".into(),
        connections: 8,
        duration: Duration::from_secs(20),
        batch: 5000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => args.url = value()?,
            "--connections" => {
                args.connections = value()?
                    .parse()
                    .map_err(|e| format!("--connections: {e}"))?
            }
            "--duration" => {
                args.duration =
                    Duration::from_secs(value()?.parse().map_err(|e| format!("--duration: {e}"))?)
            }
            "--batch" => args.batch = value()?.parse().map_err(|e| format!("--batch: {e}"))?,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(args)
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_micros()
        * 1000
}

/// One request body of `batch` points; every 100 points take the clock's time.
fn body(batch: usize) -> String {
    let mut out = String::with_capacity(batch * 140);
    let mut ts = 0;
    for i in 0..batch {
        if i % 100 == 0 {
            ts = now_nanos();
        }
        let s = i % 100;
        let _ = writeln!(
            out,
            "traffic-counts,provider=copenhagen,sensor_id=tc-00-{s:04} vehicle_count={}i,\
             mean_speed={}.5,lat=55.{:04},lon=12.{:04},seq={s}i {ts}",
            s % 120,
            20 + s % 50,
            6700 + s % 97,
            5600 + s % 89,
        );
    }
    out
}

#[tokio::main]
async fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("lp_load: {e}");
            std::process::exit(2);
        }
    };
    let written = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let client = reqwest::Client::new();
    let url = format!(
        "{}/api/v2/write?org=city&bucket=citygate&precision=ns",
        args.url
    );
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.connections {
        let (client, url) = (client.clone(), url.clone());
        let (written, failed) = (written.clone(), failed.clone());
        let (batch, duration) = (args.batch, args.duration);
        tasks.push(tokio::spawn(async move {
            while start.elapsed() < duration {
                let body = body(batch);
                match client.post(&url).body(body).send().await {
                    Ok(r) if r.status().is_success() => {
                        written.fetch_add(batch as u64, Ordering::Relaxed);
                    }
                    Ok(r) => {
                        if failed.fetch_add(1, Ordering::Relaxed) < 3 {
                            eprintln!(
                                "status {}: {}",
                                r.status(),
                                r.text().await.unwrap_or_default()
                            );
                        }
                    }
                    Err(e) => {
                        if failed.fetch_add(1, Ordering::Relaxed) < 3 {
                            eprintln!("request failed: {e}");
                        }
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("load task");
    }
    let secs = start.elapsed().as_secs_f64();
    let n = written.load(Ordering::Relaxed);
    println!(
        "{n} points written in {secs:.1}s = {:.0} points/s ({} failed requests)",
        n as f64 / secs,
        failed.load(Ordering::Relaxed)
    );
}
