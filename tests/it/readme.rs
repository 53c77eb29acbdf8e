//! The README runs as written: its command examples ("Try it", "The command line", "The
//! marketplace", "History queries", "The web console"), in order, against a fresh gateway, each HTTP call checked for success; then,
//! the gateway stopped, "Where the data lands" reads the Parquet files those examples made. So
//! a newcomer's copy and paste cannot break unnoticed. The only changes made to the text are
//! the ones a reader makes without thinking: the gateway's real ports instead of 8080 and
//! 1883, the built binary for `cargo run --release -q --`, the admin key the gateway printed
//! for `ADMIN=cg_...`, and the Python that has DuckDB and pyarrow for `python3`.

use std::path::Path;

use crate::harness::*;

/// The `sh` blocks of the README sections named `titles`, in order.
fn examples(readme: &str, titles: &[&str]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut section = String::new();
    let mut block: Option<String> = None;
    for line in readme.lines() {
        if let Some(title) = line.strip_prefix("## ") {
            section = title.trim().to_string();
        }
        match &mut block {
            None if line.trim() == "```sh" && titles.contains(&section.as_str()) => {
                block = Some(String::new());
            }
            Some(text) if line.trim() == "```" => {
                out.push((section.clone(), std::mem::take(text)));
                block = None;
            }
            Some(text) => {
                text.push_str(line);
                text.push('\n');
            }
            None => {}
        }
    }
    out
}

#[test]
fn the_readme_runs_as_written() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let blocks = examples(
        &readme,
        &[
            "Try it",
            "The command line",
            "The marketplace",
            "History queries",
            "The web console",
        ],
    );
    assert!(blocks.len() >= 4, "the README's examples were not found");

    let dir = tempfile::tempdir().unwrap();
    let admin = citygate::market::keys::new_secret();
    let gw = spawn_gateway(
        &shipped_config(),
        dir.path(),
        &[("CITYGATE_ADMIN_KEY", admin.as_str())],
    );
    let mqtt_port = gw.mqtt.rsplit(':').next().unwrap().to_string();
    let bin = env!("CARGO_BIN_EXE_citygate");
    let python = python().get_program().to_string_lossy().to_string();

    let mut script = String::from(
        "set -euo pipefail\n\
         # Every HTTP call must succeed (an error status fails the walk-through).\n\
         curl() { command curl --fail-with-body \"$@\"; }\n",
    );
    for (section, text) in &blocks {
        script.push_str(&format!("\n# ---- README: {section}\n"));
        for line in text.lines() {
            let line = if line.trim_start().starts_with("ADMIN=cg_...") {
                "ADMIN=\"$CITYGATE_ADMIN_KEY\"".to_string()
            } else {
                line.replace("cargo run --release -q --", bin)
                    .replace("http://127.0.0.1:8080", &format!("http://{}", gw.http))
                    .replace("localhost:8080", &gw.http)
                    .replace("mqtt://127.0.0.1:1883", &format!("mqtt://{}", gw.mqtt))
                    .replace("mosquitto_pub ", &format!("mosquitto_pub -p {mqtt_port} "))
                    .replace("python3 ", &format!("{python} "))
            };
            script.push_str(&line);
            script.push('\n');
        }
    }
    // The CLI commands work on the gateway's data directory and database, as a reader's do
    // when both run from the same place.
    let gateway_env = bin_on(dir.path());
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .envs(gateway_env.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .env("CITYGATE_ADMIN_KEY", &admin)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the README's examples failed:\n--- script\n{script}\n--- stdout\n{}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    // What the README says the reader sees.
    assert!(stdout.contains("HTTP/1.1 204 No Content"), "{stdout}");
    assert!(stdout.contains("\"rejected_count\":3"), "{stdout}");
    assert!(stdout.contains("\"plan\":\"traffic-live\""), "{stdout}");
    // History: the reading "Try it" posted, raw, as CSV and in a bucket.
    assert!(stdout.contains("\"sensor_id\":\"tc-0001\""), "{stdout}");
    assert!(
        stdout.contains("sensor_id,ts,vehicle_count,lat,lon"),
        "{stdout}"
    );
    assert!(stdout.contains("\"vehicle_count_max\""), "{stdout}");
    assert!(stdout.contains("ts: timestamp[us, tz=UTC]"), "{stdout}");
    assert!(
        stdout.contains("tc-0001") && stdout.contains("readings"),
        "{stdout}"
    );

    // The readings are in files once the gateway stops; read them from a directory whose
    // `data` is the gateway's, as the README's reader does.
    let mut gw = gw;
    gw.stop_cleanly();
    let reader = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(dir.path(), reader.path().join("data")).unwrap();
    let mut script = String::from("set -euo pipefail\n");
    for (_, text) in examples(&readme, &["Where the data lands"]) {
        script.push_str(&text.replace("python3 ", &format!("{python} ")));
    }
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(reader.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "reading the lake as the README says failed:\n{script}\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // DuckDB's table of the traffic readings, and pyarrow's mean temperature per sensor.
    assert!(
        stdout.contains("tc-0001") && stdout.contains("readings"),
        "{stdout}"
    );
    assert!(stdout.contains("temperature_mean"), "{stdout}");
}

/// Every `toml` block of the README is config citygate reads: no unknown key, no value of the
/// wrong type (a secret left for the environment may leave other problems).
#[test]
fn the_readmes_config_examples_are_config() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let mut blocks = Vec::new();
    let mut open: Option<String> = None;
    for line in readme.lines() {
        match open.take() {
            None => {
                if line.trim() == "```toml" {
                    open = Some(String::new());
                }
            }
            Some(text) if line.trim() == "```" => blocks.push(text),
            Some(mut text) => {
                text.push_str(line);
                text.push('\n');
                open = Some(text);
            }
        }
    }
    assert!(
        blocks.len() >= 4,
        "the README's config examples were not found"
    );
    for block in &blocks {
        if let Err(e) = citygate::Config::from_toml(block, "README", &[]) {
            for problem in &e.problems {
                assert!(
                    !problem.contains("unknown key")
                        && !problem.contains("unknown field")
                        && !problem.contains("invalid type")
                        && !problem.contains("TOML parse error"),
                    "{problem} in:\n{block}"
                );
            }
        }
    }
}
