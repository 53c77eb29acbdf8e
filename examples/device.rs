//! A minimal device: pushes one traffic reading every few seconds to citygate's JSON intake
//! and prints what the gateway answered.
//!
//! ```text
//! CITYGATE_KEY=cg_... cargo run --example device
//! CITYGATE_URL=http://127.0.0.1:8080 CITYGATE_KEY=cg_... SENSOR=tc-0042 cargo run --example device
//! ```

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("CITYGATE_URL").unwrap_or_else(|_| "http://127.0.0.1:8080".into());
    let key = std::env::var("CITYGATE_KEY").map_err(|_| "set CITYGATE_KEY to a device key")?;
    let sensor = std::env::var("SENSOR").unwrap_or_else(|_| "tc-0042".into());
    let client = reqwest::Client::new();
    let endpoint = format!("{url}/v1/datasets/traffic-counts/readings");
    for seq in 0u64.. {
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64;
        let reading = json!({
            "sensor_id": sensor,
            "ts": now_ms,
            "seq": seq,
            "fields": {"vehicle_count": 20 + seq % 15, "mean_speed": 38.5 + (seq % 7) as f64},
        });
        let response = client
            .post(&endpoint)
            .bearer_auth(&key)
            .json(&reading)
            .send()
            .await?;
        let status = response.status();
        match status.as_u16() {
            204 => println!("seq {seq}: kept"),
            429 => {
                let wait = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1);
                println!("seq {seq}: over the rate limit, waiting {wait}s");
                tokio::time::sleep(Duration::from_secs(wait)).await;
                continue;
            }
            _ => println!("seq {seq}: {status}: {}", response.text().await?),
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    Ok(())
}
