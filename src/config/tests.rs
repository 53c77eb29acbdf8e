use std::path::Path;
use std::time::Duration;

use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn every_file_under_config_parses_and_validates() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let text = std::fs::read_to_string(&path).unwrap();
            if let Err(e) = Config::from_toml(&text, &path.display().to_string(), &[]) {
                panic!("{e}");
            }
            seen += 1;
        }
    }
    assert!(seen >= 1, "no config files found in {}", dir.display());
}

#[test]
fn shipped_config_declares_the_four_city_datasets() {
    let config = Config::from_toml(DEFAULT_CONFIG, "default", &[]).unwrap();
    let ids: Vec<&str> = config.datasets.iter().map(|d| d.id.as_str()).collect();
    for id in ["traffic-counts", "weather", "energy-meters", "air-quality"] {
        assert!(ids.contains(&id), "{id} missing from {ids:?}");
    }
    assert_eq!(config.http.listen, "127.0.0.1:8080");
    assert_eq!(config.mqtt.listen, "127.0.0.1:1883");
    assert_eq!(config.storage.data_dir, PathBuf::from("data"));
    let traffic = config.datasets_by_id()["traffic-counts"].build();
    assert_eq!(traffic.max_future, Duration::from_secs(300));
    assert_eq!(traffic.max_age, Duration::from_secs(7 * 86400));
    assert_eq!(traffic.fields[0].name, "vehicle_count");
}

#[test]
fn env_overrides_replace_values_and_parse_types() {
    let config = Config::from_toml(
        DEFAULT_CONFIG,
        "default",
        &env(&[
            ("CITYGATE__HTTP__LISTEN", "0.0.0.0:9999"),
            ("CITYGATE__HTTP__MAX_CONNECTIONS", "7"),
            ("CITYGATE__PARQUET__MAX_AGE", "250ms"),
            ("CITYGATE__STORAGE__DATA_DIR", "/tmp/x"),
        ]),
    )
    .unwrap();
    assert_eq!(config.http.listen, "0.0.0.0:9999");
    assert_eq!(config.http.max_connections, 7);
    assert_eq!(config.parquet.max_age, Duration::from_millis(250));
    assert_eq!(config.storage.data_dir, PathBuf::from("/tmp/x"));
}

#[test]
fn unknown_keys_from_file_and_env_are_all_reported() {
    let text = format!("{DEFAULT_CONFIG}\n[extra]\nx = 1\n").replace(
        "listen = \"127.0.0.1:8080\"",
        "listen = \"127.0.0.1:8080\"\nlisten_port = 1",
    );
    let err = Config::from_toml(&text, "t", &env(&[("CITYGATE__HTTP__LISTN", "x")])).unwrap_err();
    let all = err.problems.join("\n");
    assert!(all.contains("http.listen_port: unknown key"), "{all}");
    assert!(all.contains("extra: unknown key"), "{all}");
    assert!(all.contains("http.listn: unknown key"), "{all}");
    assert_eq!(err.problems.len(), 3, "{all}");
}

#[test]
fn semantic_problems_are_reported_together() {
    let text = r#"
[http]
listen = "nowhere"
max_body = "0"
[parquet]
zstd_level = 40
[[datasets]]
id = "Bad Id"
title = ""
provider = "p"
licence = "CC0-1.0"
rate_limit = { per_second = 0, burst = 0 }
[[datasets.fields]]
name = "ts"
type = "float"
min = 10
max = 5
[[datasets.fields]]
name = "label"
type = "string"
min = 1
[[datasets.fields]]
name = "label"
type = "string"
[[datasets.fields]]
name = "essay"
type = "string"
max_length = 70000
"#;
    let err = Config::from_toml(text, "t", &[]).unwrap_err();
    let all = err.problems.join("\n");
    for needle in [
        "http.listen",
        "http.max_body",
        "parquet.zstd_level",
        "id: `Bad Id`",
        "title: must not be empty",
        "rate_limit.per_second",
        "rate_limit.burst",
        "`ts` is reserved",
        "min (10) is greater than max (5)",
        "only numeric fields have bounds",
        "`label` is declared twice",
        "max_length: at most 65535 bytes",
    ] {
        assert!(all.contains(needle), "missing `{needle}` in:\n{all}");
    }
}

#[test]
fn type_errors_name_the_key() {
    let err = Config::from_toml("[http]\nmax_connections = \"many\"\n", "t", &[]).unwrap_err();
    assert!(
        err.problems[0].starts_with("http.max_connections"),
        "{:?}",
        err.problems
    );
    let err = Config::from_toml("[parquet]\nmax_age = \"soon\"\n", "t", &[]).unwrap_err();
    assert!(
        err.problems[0].contains("`soon` is not a duration"),
        "{:?}",
        err.problems
    );
}

#[test]
fn type_errors_do_not_hide_the_other_problems() {
    let text = r#"
[wal]
fsync = "sometimes"
[http]
max_body = "lots"
[[datasets]]
id = "a"
title = "A"
provider = "p"
fields = []
[[datasets]]
id = "b"
title = "B"
provider = "p"
licence = "CC0-1.0"
max_age = 5
fields = [{name = "x", type = "flot"}]
[[datasets]]
id = "c"
title = "C"
provider = "p"
licence = "CC0-1.0"
max_age = "-1d"
fields = [{name = "x", type = "float", bogus = 1}]
"#;
    let err = Config::from_toml(text, "t.toml", &[]).unwrap_err();
    let all = err.problems.join("\n");
    for expected in [
        "wal.fsync: unknown variant `sometimes`",
        "http.max_body: `lots` is not a size",
        "datasets[0].licence: required, and missing",
        "datasets[1].fields[0].type: unknown variant `flot`",
        "datasets[1].max_age: invalid type",
        "datasets[2].fields[0].bogus: unknown key",
        "datasets[2].max_age:",
    ] {
        assert!(all.contains(expected), "{expected} not in:\n{all}");
    }
    // Each problem once, and the path not repeated in its message.
    assert_eq!(err.problems.len(), 7, "{all}");
    assert!(!all.contains("in `"), "{all}");
    assert!(!all.contains("at least one dataset"), "{all}");
}

#[test]
fn problems_from_the_environment_name_their_variable() {
    let err = Config::from_toml(
        DEFAULT_CONFIG,
        "the embedded default config",
        &env(&[
            ("CITYGATE__WAL__FSYNC", "sometimes"),
            ("CITYGATE__HTTP__MAX_BODY", "lots"),
        ]),
    )
    .unwrap_err();
    let all = err.problems.join("\n");
    assert!(
        all.contains("wal.fsync: unknown variant `sometimes`, expected one of `always`, `interval`, `never` (set by CITYGATE__WAL__FSYNC)"),
        "{all}"
    );
    assert!(all.contains("(set by CITYGATE__HTTP__MAX_BODY)"), "{all}");
    assert!(err.to_string().contains("environment variables"), "{err}");
}

#[test]
fn a_file_without_datasets_is_told_that_it_replaces_the_built_in_config() {
    let err =
        Config::from_toml("[http]\nlisten = \"127.0.0.1:9\"\n", "only-http.toml", &[]).unwrap_err();
    assert!(
        err.problems[0].contains("replaces the built-in config"),
        "{err}"
    );
}

#[test]
fn a_map_tile_server_is_an_https_template_of_plain_url_characters() {
    let with = |tiles: &str| {
        let text = DEFAULT_CONFIG.replace("map_tiles = \"\"", &format!("map_tiles = {tiles:?}"));
        Config::from_toml(&text, "t", &[])
    };
    let good = with("https://tile.openstreetmap.org/{z}/{x}/{y}.png").unwrap();
    assert_eq!(
        good.console.map_tiles,
        "https://tile.openstreetmap.org/{z}/{x}/{y}.png"
    );
    for bad in [
        "http://tile.openstreetmap.org/{z}/{x}/{y}.png",
        "https://tile.openstreetmap.org/{z}/{x}.png",
        "https://tiles.example/{z}/{x}/{y}.png'; script-src *",
        "https://{s}.tiles.example/{z}/{x}/{y}.png",
        "https:///{z}/{x}/{y}",
        "https://*/{z}/{x}/{y}.png",
        "https://*:*/{z}/{x}/{y}.png",
        "https://a.com($)/{z}/{x}/{y}.png",
        "https://tiles.example:/{z}/{x}/{y}.png",
    ] {
        let err = with(bad).unwrap_err();
        assert!(
            err.problems
                .iter()
                .any(|p| p.starts_with("console.map_tiles")),
            "{bad}: {:?}",
            err.problems
        );
    }
}

#[test]
fn upstream_brokers_are_checked_entry_by_entry() {
    let good = r#"
[[upstream]]
name = "city"
url = "mqtt://broker.example:1883"
topic = "city/{dataset}/{sensor_id}"
allow_datasets = ["traffic-counts"]
share_group = "citygate"
client_id = "citygate-node-1"
"#;
    // A secret from the environment, into the first [[upstream]].
    let config = Config::from_toml(
        &format!("{DEFAULT_CONFIG}\n{good}"),
        "t",
        &env(&[("CITYGATE__UPSTREAM__0__PASSWORD", "s3cret")]),
    )
    .unwrap();
    let up = &config.upstream[0];
    assert_eq!(up.password.0, "s3cret");
    // A password of digits stays text, as written.
    for digits in ["123456", "0123456"] {
        let config = Config::from_toml(
            &format!("{DEFAULT_CONFIG}\n{good}"),
            "t",
            &env(&[("CITYGATE__UPSTREAM__0__PASSWORD", digits)]),
        )
        .unwrap();
        assert_eq!(config.upstream[0].password.0, digits);
    }
    let err = Config::from_toml(
        &format!("{DEFAULT_CONFIG}\n{good}"),
        "t",
        &env(&[("CITYGATE__UPSTREAM__3__PASSWORD", "x")]),
    )
    .unwrap_err();
    assert!(
        err.problems[0].contains("CITYGATE__UPSTREAM__0__KEY"),
        "{:?}",
        err.problems
    );
    assert_eq!(
        up.address(),
        Some(crate::config::BrokerAddress {
            host: "broker.example".into(),
            port: 1883,
            tls: false
        })
    );
    assert_eq!(
        crate::config::upstream::broker_address("mqtts://eu1.cloud.thethings.network"),
        Some(crate::config::BrokerAddress {
            host: "eu1.cloud.thethings.network".into(),
            port: 8883,
            tls: true
        })
    );
    assert_eq!(up.client_id(), "citygate-node-1");

    let bad = r#"
[[upstream]]
name = "City Broker"
url = "tcp://broker"
topic = "city/{dataset}/{dataset}"

[[upstream]]
name = "ttn"
url = "mqtt://[::1]:1883"
topic = "v3/+/devices/{sensor_id}/up"
dataset = "no-such-dataset"

[[upstream]]
name = "ttn"
url = "mqtt://broker"
topic = "v3/+/devices/{sensor_id}/up"
share_group = "a/b"
"#;
    let err = Config::from_toml(&format!("{DEFAULT_CONFIG}\n{bad}"), "t", &[]).unwrap_err();
    let all = err.problems.join("\n");
    for needle in [
        "upstream[0].name: `City Broker`",
        "upstream[0].url: `tcp://broker` must be mqtt://host[:port] or mqtts://",
        "upstream[0].topic: `city/{dataset}/{dataset}` names {dataset} twice",
        "upstream[1].dataset: `no-such-dataset` is not a dataset",
        "upstream[2].name: `ttn` is used twice",
        "upstream[2]: the topic names no {dataset}, so `dataset` must",
        "upstream[2].share_group: `a/b`",
        "upstream[2].client_id: with a share_group",
        "upstream[0].allow_datasets: the topic names the {dataset}",
    ] {
        assert!(all.contains(needle), "missing `{needle}` in:\n{all}");
    }
}

#[test]
fn a_cluster_is_named_by_its_broker_and_each_node_by_its_id() {
    let config = Config::from_toml(
        DEFAULT_CONFIG,
        "t",
        &env(&[
            ("CITYGATE__CLUSTER__BROKER", "mqtt://broker.internal:1883"),
            ("CITYGATE__CLUSTER__NODE_ID", "node-2"),
            ("CITYGATE__CLUSTER__SECRET", "sixteen-chars-ok"),
        ]),
    )
    .unwrap();
    assert!(config.cluster.enabled());
    assert_eq!(
        config.cluster.topic_of("node-2"),
        "citygate/readings/node-2"
    );
    assert!(
        !Config::from_toml(DEFAULT_CONFIG, "t", &[])
            .unwrap()
            .cluster
            .enabled()
    );

    let err = Config::from_toml(
        DEFAULT_CONFIG,
        "t",
        &env(&[
            ("CITYGATE__CLUSTER__BROKER", "broker:1883"),
            ("CITYGATE__CLUSTER__NODE_ID", "Node 2"),
            ("CITYGATE__CLUSTER__TOPIC_PREFIX", "city/#"),
            ("CITYGATE__CLUSTER__MAX_IN_FLIGHT", "0"),
            ("CITYGATE__CLUSTER__MAX_BACKLOG", "0s"),
        ]),
    )
    .unwrap_err();
    let all = err.problems.join("\n");
    for needle in [
        "cluster.broker: `broker:1883`",
        "cluster.node_id: `Node 2`",
        "cluster.topic_prefix: `city/#`",
        "cluster.max_in_flight",
        "cluster.max_backlog",
        "cluster.secret: every node needs",
    ] {
        assert!(all.contains(needle), "missing `{needle}` in:\n{all}");
    }
}

#[test]
fn a_lake_in_object_storage_names_its_bucket_and_each_node() {
    let config = Config::from_toml(
        DEFAULT_CONFIG,
        "t",
        &env(&[
            ("CITYGATE__LAKE__URL", "s3://city-lake/citygate/v1"),
            ("CITYGATE__CLUSTER__NODE_ID", "node-1"),
        ]),
    )
    .unwrap();
    assert_eq!(
        config.lake.bucket_prefix(),
        Some(("city-lake".into(), "citygate/v1".into()))
    );
    assert!(
        !Config::from_toml(DEFAULT_CONFIG, "t", &[])
            .unwrap()
            .lake
            .is_object_store()
    );

    let err = Config::from_toml(
        DEFAULT_CONFIG,
        "t",
        &env(&[
            ("CITYGATE__LAKE__URL", "s3://Bad_Bucket"),
            ("CITYGATE__LAKE__ENDPOINT", "http://minio:9000"),
            ("CITYGATE__LAKE__ACCESS_KEY_ID", "only-the-id"),
        ]),
    )
    .unwrap_err();
    let all = err.problems.join("\n");
    for needle in [
        "lake.url: `s3://Bad_Bucket`",
        "lake.endpoint: an http:// endpoint",
        "lake.access_key_id and lake.secret_access_key",
        "cluster.node_id: a lake in object storage",
    ] {
        assert!(all.contains(needle), "missing `{needle}` in:\n{all}");
    }
}
