//! The real binary: check-config, keys, serve, and SIGTERM flushing everything.

use std::path::Path;
use std::process::{Child, Command, Output};

use serde_json::{Value, json};

use crate::harness::*;

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("runs")
}

#[test]
fn check_config_prints_every_problem_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let ok = run(bin()
        .arg("check-config")
        .arg("--config")
        .arg(shipped_config()));
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("ok (4 datasets)"));

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[http]\nlisten = \"nowhere\"\nlisten_typo = 1\n[parquet]\nzstd_level = 99\n\
         [[datasets]]\nid = \"x\"\ntitle = \"X\"\nprovider = \"p\"\nlicence = \"CC0-1.0\"\nfields = []\n",
    )
    .unwrap();
    let out = run(bin().arg("check-config").arg("--config").arg(&bad));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "http.listen:",
        "http.listen_typo: unknown key",
        "parquet.zstd_level",
        "at least one field",
    ] {
        assert!(err.contains(needle), "missing `{needle}` in:\n{err}");
    }

    // An environment override is checked like the file.
    let out = run(bin()
        .arg("check-config")
        .arg("--config")
        .arg(shipped_config())
        .env("CITYGATE__HTTP__MAX_CONNECTIONS", "none"));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("http.max_connections"));
}

/// Starts `citygate serve` on the shipped config and `data_dir`, Parquet flushing hourly.
fn serve(data_dir: &Path) -> Server {
    spawn_gateway(
        &shipped_config(),
        data_dir,
        &[("CITYGATE__PARQUET__MAX_AGE", "1h")],
    )
}

fn terminate(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn keys_cli_serve_and_sigterm_flushes_everything() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let keys = |args: &[&str]| {
        run(bin_on(&data)
            .arg("keys")
            .args(args)
            .arg("--config")
            .arg(shipped_config()))
    };

    // No database yet: the CLI says where it looked and makes none (a key in a database the
    // gateway does not use would answer 401).
    let refused = keys(&["list"]);
    if test_postgres().is_none() {
        assert_eq!(refused.status.code(), Some(1));
        let err = String::from_utf8_lossy(&refused.stderr);
        let db = data.join("citygate.db");
        assert!(err.contains(&db.display().to_string()), "{err}");
        assert!(
            err.contains("--api") && err.contains("--create-database"),
            "{err}"
        );
        assert!(!db.exists(), "no database was made");
    }
    let created = keys(&[
        "create-device",
        "--provider",
        "copenhagen",
        "--datasets",
        "traffic-counts,weather",
        "--create-database",
    ]);
    let err = String::from_utf8_lossy(&created.stderr);
    assert!(
        err.contains("using the database"),
        "says which database: {err}"
    );
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let stdout = String::from_utf8(created.stdout).unwrap();
    let secret = stdout.trim_end_matches('\n');
    assert!(
        !secret.contains('\n'),
        "the secret alone on stdout: {stdout:?}"
    );
    assert!(
        secret.starts_with("cg_") && secret.len() >= 3 + 43,
        "{secret}"
    );

    let refused = keys(&[
        "create-device",
        "--provider",
        "copenhagen",
        "--datasets",
        "energy-meters",
    ]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&refused.stderr)
            .contains("belongs to provider `copenhagen-energy`")
    );

    let listed = String::from_utf8(keys(&["list"]).stdout).unwrap();
    assert!(
        listed.contains("device") && listed.contains("traffic-counts,weather"),
        "{listed}"
    );
    assert!(!listed.contains(&secret[3..]), "secrets are never listed");

    let server = serve(&data);
    let client = reqwest::Client::new();
    let url = format!("http://{}/v1/datasets/traffic-counts/readings", server.http);
    let mut sent = 0;
    for batch in 0..10 {
        let body: Vec<serde_json::Value> = (0..50)
            .map(|i| json!({"sensor_id": format!("b{batch}-{i}"), "vehicle_count": i}))
            .collect();
        let resp = client
            .post(&url)
            .bearer_auth(secret)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 204);
        sent += 50;
    }
    assert!(
        parquet_files(&data, TRAFFIC).is_empty(),
        "still buffered (max_age 1h)"
    );

    let mut server = server;
    terminate(&server.child);
    let status = tokio::task::spawn_blocking(move || {
        let status = server.child.wait().unwrap();
        drop(server);
        status
    })
    .await
    .unwrap();
    assert_eq!(status.code(), Some(0), "SIGTERM exits 0 after flushing");
    assert_eq!(
        row_count(&data, TRAFFIC),
        sent,
        "everything acknowledged was flushed"
    );

    let listed = String::from_utf8(keys(&["list"]).stdout).unwrap();
    let id = listed
        .lines()
        .find(|l| l.contains("device"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_string();
    assert!(keys(&["revoke", &id]).status.success());
    assert_eq!(
        keys(&["revoke", &id]).status.code(),
        Some(1),
        "already revoked"
    );
    assert!(
        String::from_utf8(keys(&["list"]).stdout)
            .unwrap()
            .contains("revoked")
    );
}

/// A second gateway on the same data directory refuses to start (two on one write-ahead log
/// would number different readings alike and lose one's files to the other's), and says why;
/// once the first has stopped, the directory is free.
#[test]
fn a_second_gateway_on_the_same_data_directory_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let first = serve(dir.path());
    let second = run(bin_on(dir.path())
        .arg("serve")
        .arg("--config")
        .arg(shipped_config())
        .env("CITYGATE__HTTP__LISTEN", "127.0.0.1:0")
        .env("CITYGATE__MQTT__LISTEN", "127.0.0.1:0"));
    assert_eq!(second.status.code(), Some(1));
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        err.contains("another citygate is running on the data directory"),
        "{err}"
    );
    terminate(&first.child);
    let mut first = first;
    assert!(first.child.wait().unwrap().success());
    let again = serve(dir.path());
    drop(again);
}

#[test]
fn serve_refuses_a_bad_config() {
    let out = run(bin()
        .arg("serve")
        .arg("--config")
        .arg(shipped_config())
        .env("CITYGATE__PARQUET__ZSTD_LEVEL", "0"));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("parquet.zstd_level"));
}

#[tokio::test]
async fn first_start_shows_the_admin_key_once_and_the_accounts_cli_makes_keys() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let start = |expect_line: bool| {
        let mut child = bin_on(&data)
            .arg("serve")
            .arg("--config")
            .arg(shipped_config())
            .env("CITYGATE__HTTP__LISTEN", "127.0.0.1:0")
            .env("CITYGATE__MQTT__LISTEN", "127.0.0.1:0")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        // Started once the log says so; stdout is read to its end after SIGTERM.
        let mut lines = BufReader::new(stderr).lines();
        let mut log = String::new();
        for line in lines.by_ref() {
            let line = line.unwrap();
            log.push_str(&line);
            log.push('\n');
            if line.contains("citygate started") {
                break;
            }
        }
        terminate(&child);
        assert!(child.wait().unwrap().success());
        let rest: Vec<String> = lines.map_while(Result::ok).collect();
        let out: Vec<String> = BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .collect();
        assert_eq!(out.len(), usize::from(expect_line), "{out:?}");
        let secret = out
            .first()
            .map(|l| l.rsplit(' ').next().unwrap().to_string());
        if let Some(secret) = &secret {
            assert!(
                !log.contains(&secret[3..]) && !rest.concat().contains(&secret[3..]),
                "the admin key is never logged"
            );
        }
        secret
    };
    let admin = start(true).expect("first start prints the admin key");
    assert!(admin.starts_with("cg_") && admin.len() == 46, "{admin}");
    assert!(start(false).is_none(), "shown once");

    let out = run(bin_on(&data)
        .args([
            "accounts",
            "create",
            "--role",
            "subscriber",
            "--name",
            "Harbour Logistics",
            "--sector",
            "mobility",
            "--config",
        ])
        .arg(shipped_config()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let secret = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(secret.starts_with("cg_"), "{secret}");
    let out = run(bin_on(&data)
        .args(["accounts", "list", "--config"])
        .arg(shipped_config()));
    let listed = String::from_utf8(out.stdout).unwrap();
    for needle in ["admin", "copenhagen", "Harbour Logistics", "mobility"] {
        assert!(listed.contains(needle), "{listed}");
    }
    let bad = run(bin_on(&data)
        .args([
            "accounts",
            "create",
            "--role",
            "subscriber",
            "--name",
            "X",
            "--sector",
            "Big!",
            "--config",
        ])
        .arg(shipped_config()));
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("sector"));

    // The admin key works against a running gateway.
    let server = serve(&data);
    let me: Value = reqwest::Client::new()
        .get(format!("http://{}/v1/me", server.http))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["account"]["role"], "admin");

    // From anywhere, through the running gateway's API: no config, no database here.
    let elsewhere = tempfile::tempdir().unwrap();
    let api = format!("http://{}", server.http);
    let through_api = |args: &[&str]| {
        let out = run(bin()
            .current_dir(elsewhere.path())
            .args(args)
            .args(["--api", &api])
            .env("CITYGATE_API_KEY", &admin));
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, device, err) = through_api(&[
        "keys",
        "create-device",
        "--provider",
        "copenhagen",
        "--datasets",
        "weather",
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("through the gateway at"), "{err}");
    let written = reqwest::Client::new()
        .post(format!("{api}/v1/datasets/weather/readings"))
        .bearer_auth(&device)
        .json(&serde_json::json!({"sensor_id": "w-1", "temperature": 4.5}))
        .send()
        .await
        .unwrap();
    assert_eq!(written.status(), 204, "the key the API made writes");
    let (code, listed, err) = through_api(&["keys", "list", "--account", "copenhagen"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        listed.contains("device") && listed.contains("weather"),
        "{listed}"
    );
    let (code, plan, err) = through_api(&[
        "plans",
        "create",
        "--dataset",
        "weather",
        "--name",
        "Open",
        "--kind",
        "free",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let (code, plans, err) = through_api(&["plans", "list"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        plans.contains(&plan) && plans.contains("weather"),
        "{plans}"
    );
    // A refusal is the API's, with its status and words.
    let (code, _, err) = through_api(&["keys", "revoke", "k_nothing"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("404") && err.contains("no key"), "{err}");
    let (code, _, err) = run_status(
        bin()
            .current_dir(elsewhere.path())
            .args(["keys", "list", "--api", &api]),
    );
    assert_eq!(code, Some(1));
    assert!(err.contains("--api-key"), "{err}");
    assert!(
        !elsewhere.path().join("data").exists(),
        "nothing was made here"
    );
}

fn run_status(cmd: &mut Command) -> (Option<i32>, String, String) {
    let out = run(cmd);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn plans_and_invoices_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cli = |args: &[&str]| {
        let out = run(bin_on(&data).args(args).arg("--create-database"));
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, id, err) = cli(&[
        "plans",
        "create",
        "--dataset",
        "weather",
        "--name",
        "Live",
        "--kind",
        "monthly",
        "--currency",
        "EUR",
        "--price-minor",
        "1500",
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(id.starts_with("plan_"), "{id}");
    let (code, _, err) = cli(&[
        "plans",
        "create",
        "--dataset",
        "weather",
        "--id",
        "weather-free",
        "--name",
        "Free",
        "--kind",
        "free",
        "--delay",
        "15m",
    ]);
    assert_eq!(code, Some(0), "{err}");
    // Every problem of a bad plan, and a dataset that does not exist.
    let (code, _, err) = cli(&[
        "plans",
        "create",
        "--dataset",
        "weather",
        "--name",
        "Bad",
        "--kind",
        "metered",
        "--currency",
        "euro",
    ]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("currency") && err.contains("per_1000_minor"),
        "{err}"
    );
    let (code, _, err) = cli(&[
        "plans",
        "create",
        "--dataset",
        "nowhere",
        "--name",
        "X",
        "--kind",
        "free",
    ]);
    assert_eq!(code, Some(1));
    assert!(err.contains("no dataset `nowhere`"), "{err}");

    let (code, _, err) = cli(&["plans", "withdraw", "weather-free"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(cli(&["plans", "withdraw", "weather-free"]).0, Some(1));
    let (_, list, _) = cli(&["plans", "list", "--dataset", "weather"]);
    let rows: Vec<&str> = list.lines().collect();
    assert_eq!(rows.len(), 3, "{list}");
    let (_, every, _) = cli(&["plans", "list"]);
    assert_eq!(every, list, "only weather has plans");
    assert!(rows[1].starts_with(&id) && rows[1].contains("monthly") && rows[1].contains("1500"));
    assert!(
        rows[2].starts_with("weather-free") && rows[2].contains("15m") && rows[2].contains(" no ")
    );

    // Invoices of a month with nothing billed: none, and a bad month is refused.
    let (code, out, err) = cli(&["invoices", "generate", "--period", "2026-11"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.lines().count(), 1, "header only: {out}");
    assert!(err.contains("0 invoice(s) for 2026-11"), "{err}");
    let (code, _, err) = cli(&["invoices", "generate", "--period", "2026-13"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("2026-13"), "{err}");
}
