//! Semantic checks of a parsed config. Each problem names its key; all are returned at once.

use std::collections::HashSet;
use std::time::Duration;

use super::{
    Config, ConsoleConfig, DatabaseConfig, DatasetConfig, FeedConfig, HttpConfig, InfluxConfig,
    MarketConfig, MqttConfig, ParquetConfig, PaymentProviderKind, PaymentsConfig, PipelineConfig,
    QueryConfig, StorageConfig, UPDATE_FREQUENCIES, WalConfig,
};
use crate::model::{
    FieldSpec, FieldType, RESERVED_NAMES, is_valid_dataset_id, is_valid_field_name,
};

/// Most fields a schema may have (duplicate detection uses a 64-bit mask).
pub(crate) const MAX_FIELDS: usize = 64;
/// The longest string value a schema may allow: the log stores a string's length in 16
/// bits, so a longer one would be cut after it was acknowledged.
pub(crate) const MAX_STRING_LEN: usize = u16::MAX as usize;

/// `positions[i]` is where `config.datasets[i]` stands in the file (datasets that could not
/// be read are not in `config`), so that each problem names the right `[[datasets]]`.
pub(super) fn validate(config: &Config, positions: &[usize]) -> Vec<String> {
    let mut p = Vec::new();
    check_listen(&mut p, "http.listen", &config.http.listen);
    check_listen(&mut p, "mqtt.listen", &config.mqtt.listen);
    check_mqtt(&mut p, &config.mqtt);
    check_http(&mut p, &config.http);
    check_storage(&mut p, &config.storage);
    check_pipeline(&mut p, &config.pipeline);
    check_wal(&mut p, &config.wal);
    check_public_url(&mut p, &config.http.public_url);
    check_database(&mut p, &config.database);
    check_feed(&mut p, &config.feed);
    check_market(&mut p, &config.market);
    check_payments(&mut p, &config.payments);
    check_influx(&mut p, &config.influx);
    check_parquet(&mut p, &config.parquet);
    check_query(&mut p, &config.query);
    check_console(&mut p, &config.console);
    let ids: Vec<String> = config.datasets.iter().map(|d| d.id.clone()).collect();
    super::upstream::check(&mut p, &config.upstream, &ids);
    super::cluster::check(&mut p, &config.cluster);
    super::lake::check(&mut p, &config.lake, &config.cluster.node_id);
    check_shutdown_and_log(&mut p, config);
    check_datasets(&mut p, config, positions);
    p
}

/// `[mqtt]`.
fn check_mqtt(p: &mut Vec<String>, mqtt: &MqttConfig) {
    if mqtt.max_connections == 0 {
        p.push("mqtt.max_connections: must be at least 1".into());
    }
    if mqtt.max_packet_size.0 < 1024 || mqtt.max_packet_size.0 > 268_435_455 {
        p.push("mqtt.max_packet_size: must be between 1 KiB and 256 MiB (the MQTT limit)".into());
    }
    if mqtt.connect_timeout.is_zero() {
        p.push("mqtt.connect_timeout: must be more than 0".into());
    }
    if mqtt.max_inflight == 0 {
        p.push("mqtt.max_inflight: must be at least 1".into());
    }
}

/// `[http]`; its `public_url` is checked after `[wal]`, where its problem has always been
/// reported.
fn check_http(p: &mut Vec<String>, http: &HttpConfig) {
    if http.max_body.0 == 0 {
        p.push("http.max_body: must be more than 0".into());
    }
    if http.max_decompressed_body < http.max_body {
        p.push(format!(
            "http.max_decompressed_body: {} is smaller than http.max_body ({})",
            http.max_decompressed_body, http.max_body
        ));
    }
    if http.header_read_timeout.is_zero() {
        p.push("http.header_read_timeout: must be more than 0".into());
    }
    if http.request_timeout.is_zero() {
        p.push("http.request_timeout: must be more than 0".into());
    }
    if http.max_connections == 0 {
        p.push("http.max_connections: must be at least 1".into());
    }
    if http.max_connections_per_ip == 0 {
        p.push("http.max_connections_per_ip: must be at least 1".into());
    }
}

/// `[storage]`.
fn check_storage(p: &mut Vec<String>, storage: &StorageConfig) {
    if storage.data_dir.as_os_str().is_empty() {
        p.push("storage.data_dir: must not be empty".into());
    }
}

/// `[pipeline]`.
fn check_pipeline(p: &mut Vec<String>, pipeline: &PipelineConfig) {
    if pipeline.queue_depth == 0 {
        p.push("pipeline.queue_depth: must be at least 1".into());
    }
    if pipeline.queue_timeout.is_zero() {
        p.push("pipeline.queue_timeout: must be more than 0".into());
    }
    if pipeline.max_readings == 0 {
        p.push("pipeline.max_readings: must be at least 1".into());
    }
}

/// `[wal]`.
fn check_wal(p: &mut Vec<String>, wal: &WalConfig) {
    if wal.fsync_interval.is_zero() {
        p.push("wal.fsync_interval: must be more than 0".into());
    }
    if wal.segment_bytes.0 < 64 * 1024 {
        p.push("wal.segment_bytes: must be at least 64 KiB".into());
    }
    if wal.max_bytes < wal.segment_bytes {
        p.push(format!(
            "wal.max_bytes: {} is smaller than wal.segment_bytes ({})",
            wal.max_bytes, wal.segment_bytes
        ));
    }
    if wal.queue_depth == 0 {
        p.push("wal.queue_depth: must be at least 1".into());
    }
}

/// `[http] public_url`.
fn check_public_url(p: &mut Vec<String>, public: &str) {
    if !(public.is_empty() || public.starts_with("http://") || public.starts_with("https://")) {
        p.push(format!(
            "http.public_url: `{public}` must be empty or an http(s):// URL"
        ));
    }
}

/// `[database]`.
fn check_database(p: &mut Vec<String>, database: &DatabaseConfig) {
    let db = &database.url.0;
    if !(db.is_empty() || db.starts_with("postgres://") || db.starts_with("postgresql://")) {
        p.push(
            "database.url: must be empty (SQLite under storage.data_dir) or a postgres:// URL"
                .into(),
        );
    }
    if database.max_connections == 0 {
        p.push("database.max_connections: must be at least 1".into());
    }
}

/// `[feed]`.
fn check_feed(p: &mut Vec<String>, feed: &FeedConfig) {
    if feed.session_queue == 0 {
        p.push("feed.session_queue: must be at least 1".into());
    }
    if feed.max_delayed == 0 {
        p.push("feed.max_delayed: must be at least 1".into());
    }
    if feed.max_sessions_per_account == 0 {
        p.push("feed.max_sessions_per_account: must be at least 1".into());
    }
    if feed.recheck.is_zero() || feed.recheck > Duration::from_secs(1) {
        p.push(
            "feed.recheck: must be more than 0 and at most 1s (revocation must stop delivery within a second)"
                .into(),
        );
    }
    if feed.coalesce > Duration::from_millis(100) {
        p.push("feed.coalesce: at most 100ms (it adds to every delivery's latency)".into());
    }
    if feed.heartbeat.is_zero() {
        p.push("feed.heartbeat: must be more than 0".into());
    }
}

/// `[market]`.
fn check_market(p: &mut Vec<String>, market: &MarketConfig) {
    let fee = market.platform_fee_percent;
    if !(0.0..=100.0).contains(&fee) {
        p.push(format!(
            "market.platform_fee_percent: {fee} must be between 0 and 100"
        ));
    }
    if market.usage_flush_interval.is_zero() {
        p.push("market.usage_flush_interval: must be more than 0".into());
    }
}

/// `[payments]`: the Stripe settings when Stripe takes the payments.
fn check_payments(p: &mut Vec<String>, payments: &PaymentsConfig) {
    if payments.provider == PaymentProviderKind::Stripe {
        let stripe = &payments.stripe;
        match reqwest::Url::parse(&stripe.api_base) {
            Ok(url) if url.scheme() == "http" || url.scheme() == "https" => {}
            _ => p.push(format!(
                "payments.stripe.api_base: `{}` is not an http(s):// URL",
                stripe.api_base
            )),
        }
        if stripe.secret_key.0.is_empty() {
            p.push(
                "payments.stripe.secret_key: required with provider = \"stripe\" \
                 (CITYGATE__PAYMENTS__STRIPE__SECRET_KEY)"
                    .into(),
            );
        }
        if stripe.webhook_secrets.iter().all(|s| s.0.is_empty()) {
            p.push(
                "payments.stripe.webhook_secrets: at least one signing secret (whsec_…) is \
                 needed to accept Stripe's webhooks"
                    .into(),
            );
        }
        if stripe.webhook_tolerance.is_zero() {
            p.push("payments.stripe.webhook_tolerance: must be more than 0".into());
        }
    }
}

/// `[influx]`, when the store is enabled.
fn check_influx(p: &mut Vec<String>, influx: &InfluxConfig) {
    if influx.enabled {
        match reqwest::Url::parse(&influx.url) {
            Ok(url) if url.scheme() == "http" => {}
            _ => p.push(format!(
                "influx.url: `{}` is not an http:// URL (this build speaks plain HTTP to the store)",
                influx.url
            )),
        }
        if influx.org.is_empty() {
            p.push("influx.org: must not be empty".into());
        }
        if influx.bucket.is_empty() {
            p.push("influx.bucket: must not be empty".into());
        }
        if influx.batch_size == 0 {
            p.push("influx.batch_size: must be at least 1".into());
        }
        if influx.parallel_writes == 0 {
            p.push("influx.parallel_writes: must be at least 1".into());
        }
        if influx.request_timeout.is_zero() {
            p.push("influx.request_timeout: must be more than 0".into());
        }
        if let Some(path) = &influx.token_file
            && !path.exists()
        {
            p.push(format!(
                "influx.token_file: {} does not exist",
                path.display()
            ));
        }
    }
}

/// `[parquet]`.
fn check_parquet(p: &mut Vec<String>, parquet: &ParquetConfig) {
    if parquet.max_rows == 0 {
        p.push("parquet.max_rows: must be at least 1".into());
    }
    if parquet.max_bytes.0 < 1024 {
        p.push("parquet.max_bytes: must be at least 1 KiB".into());
    }
    if parquet.max_age.is_zero() {
        p.push("parquet.max_age: must be more than 0".into());
    }
    if !(1..=22).contains(&parquet.zstd_level) {
        p.push(format!(
            "parquet.zstd_level: {} is not in 1..=22",
            parquet.zstd_level
        ));
    }
}

/// `[console]`: the tile URL goes into the pages' Content-Security-Policy and a `<meta>`
/// element, so it is held to plain URL characters.
fn check_console(p: &mut Vec<String>, console: &ConsoleConfig) {
    let tiles = &console.map_tiles;
    if !tiles.is_empty() {
        let plain = tiles
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._~:/?#[]@!$&()*+=%{}".contains(c));
        // A host name (and port): no wildcard, no template, nothing a policy would read as
        // another source.
        let host = tiles
            .strip_prefix("https://")
            .and_then(|rest| rest.split('/').next())
            .filter(|host| {
                let (name, port) = host.split_once(':').unwrap_or((host, "443"));
                !name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
                    && (1..=5).contains(&port.len())
                    && port.chars().all(|c| c.is_ascii_digit())
            });
        if !plain || host.is_none() || !["{z}", "{x}", "{y}"].iter().all(|v| tiles.contains(v)) {
            p.push(format!(
                "console.map_tiles: `{tiles}` must be an https:// URL template with {{z}}, {{x}} \
                 and {{y}} in it, e.g. https://tile.openstreetmap.org/{{z}}/{{x}}/{{y}}.png"
            ));
        }
    }
    if console.map_attribution.chars().count() > 200 {
        p.push("console.map_attribution: at most 200 characters".into());
    }
}

fn check_query(p: &mut Vec<String>, query: &QueryConfig) {
    for (name, value) in [
        ("hot_window", query.hot_window),
        ("max_range", query.max_range),
        ("latest_lookback", query.latest_lookback),
        ("timeout", query.timeout),
    ] {
        if value.is_zero() {
            p.push(format!("query.{name}: must be more than 0"));
        }
    }
    if !(1..=1_000_000).contains(&query.max_rows) {
        p.push(format!(
            "query.max_rows: {} is not in 1..=1000000",
            query.max_rows
        ));
    }
    if query.max_concurrent == 0 {
        p.push("query.max_concurrent: must be at least 1".into());
    }
    let r = query.rate_limit;
    if !(r.per_second.is_finite() && r.per_second > 0.0) || r.burst == 0 {
        p.push(format!(
            "query.rate_limit: per_second must be above 0 and burst at least 1, not {} and {}",
            r.per_second, r.burst
        ));
    }
}

/// `[shutdown]` and `[log]`.
fn check_shutdown_and_log(p: &mut Vec<String>, config: &Config) {
    if config.shutdown.timeout.is_zero() {
        p.push("shutdown.timeout: must be more than 0".into());
    }
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&config.log.level) {
        p.push(format!(
            "log.level: `{}` is not a log filter ({e})",
            config.log.level
        ));
    }
}

/// `[[datasets]]`: at least one, ids unique, each declaration valid.
fn check_datasets(p: &mut Vec<String>, config: &Config, positions: &[usize]) {
    if config.datasets.is_empty() {
        p.push(
            "datasets: at least one dataset is needed (a --config file replaces the built-in \
             config as a whole: start from a copy of config/citygate.toml, or change single \
             values of the built-in one with CITYGATE__SECTION__KEY variables)"
                .into(),
        );
    }
    let mut ids = HashSet::new();
    for (i, ds) in config.datasets.iter().enumerate() {
        let at = format!(
            "datasets[{}] ({})",
            positions.get(i).copied().unwrap_or(i),
            ds.id
        );
        if !ids.insert(ds.id.as_str()) {
            p.push(format!("{at}.id: `{}` is declared twice", ds.id));
        }
        check_dataset(p, &at, ds);
    }
}

fn check_listen(p: &mut Vec<String>, key: &str, addr: &str) {
    let port_ok = addr
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if !port_ok {
        p.push(format!("{key}: `{addr}` is not host:port"));
    }
}

/// Every problem of one dataset declaration (config or API), each named from `at`.
pub(crate) fn dataset_problems(at: &str, ds: &DatasetConfig) -> Vec<String> {
    let mut p = Vec::new();
    check_dataset(&mut p, at, ds);
    p
}

fn check_dataset(p: &mut Vec<String>, at: &str, ds: &DatasetConfig) {
    check_catalog_facts(p, at, ds);
    check_rate_limit(p, at, ds);
    check_fields(p, at, ds);
}

/// What the catalog shows of a dataset: id, title, provider, licence, frequency, keywords
/// (and how old its readings may be).
fn check_catalog_facts(p: &mut Vec<String>, at: &str, ds: &DatasetConfig) {
    if !is_valid_dataset_id(&ds.id) {
        p.push(format!(
            "{at}.id: `{}` must be 1-64 of a-z, 0-9 and `-`, not starting with `-`",
            ds.id
        ));
    }
    if ds.title.trim().is_empty() {
        p.push(format!("{at}.title: must not be empty"));
    }
    if ds.provider.trim().is_empty() {
        p.push(format!("{at}.provider: must not be empty"));
    }
    if ds.licence.trim().is_empty() {
        p.push(format!(
            "{at}.licence: must not be empty (an SPDX id or `commercial`)"
        ));
    }
    if !UPDATE_FREQUENCIES
        .iter()
        .any(|(name, _)| *name == ds.update_frequency)
    {
        p.push(format!(
            "{at}.update_frequency: `{}` is not one of {}",
            ds.update_frequency,
            UPDATE_FREQUENCIES
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if ds.keywords.len() > 20
        || ds
            .keywords
            .iter()
            .any(|k| k.trim().is_empty() || k.len() > 64)
    {
        p.push(format!("{at}.keywords: at most 20, each 1-64 characters"));
    }
    if ds.max_age.is_zero() {
        p.push(format!("{at}.max_age: must be more than 0"));
    }
}

fn check_rate_limit(p: &mut Vec<String>, at: &str, ds: &DatasetConfig) {
    let rate = ds.rate_limit;
    if !(rate.per_second.is_finite() && rate.per_second > 0.0) {
        p.push(format!(
            "{at}.rate_limit.per_second: must be a number above 0"
        ));
    } else if rate.per_second > 1e9 {
        p.push(format!("{at}.rate_limit.per_second: must be at most 1e9"));
    }
    if rate.burst == 0 {
        p.push(format!("{at}.rate_limit.burst: must be at least 1"));
    }
}

/// The schema: how many fields, then each field.
fn check_fields(p: &mut Vec<String>, at: &str, ds: &DatasetConfig) {
    if ds.fields.is_empty() {
        p.push(format!("{at}.fields: a dataset needs at least one field"));
    }
    if ds.fields.len() > MAX_FIELDS {
        p.push(format!("{at}.fields: at most {MAX_FIELDS} fields"));
    }
    let mut names = HashSet::new();
    for (j, f) in ds.fields.iter().enumerate() {
        check_field(p, &format!("{at}.fields[{j}] ({})", f.name), f, &mut names);
    }
}

/// One field; `names` are those of the fields before it.
fn check_field<'a>(p: &mut Vec<String>, at: &str, f: &'a FieldSpec, names: &mut HashSet<&'a str>) {
    if !is_valid_field_name(&f.name) {
        p.push(format!("{at}.name: must match [a-z][a-z0-9_]{{0,63}}"));
    }
    if RESERVED_NAMES.contains(&f.name.as_str()) {
        p.push(format!(
            "{at}.name: `{}` is reserved for a built-in column",
            f.name
        ));
    }
    if !names.insert(f.name.as_str()) {
        p.push(format!("{at}.name: `{}` is declared twice", f.name));
    }
    for (key, bound) in [("min", f.min), ("max", f.max)] {
        match bound {
            Some(_) if !f.ty.is_numeric() => {
                p.push(format!("{at}.{key}: only numeric fields have bounds"))
            }
            Some(b) if !b.is_finite() => p.push(format!("{at}.{key}: must be finite")),
            _ => {}
        }
    }
    if let (Some(min), Some(max)) = (f.min, f.max)
        && min > max
    {
        p.push(format!("{at}: min ({min}) is greater than max ({max})"));
    }
    if f.max_length.is_some() && f.ty != FieldType::String {
        p.push(format!("{at}.max_length: only string fields have a length"));
    }
    if f.max_length.is_some_and(|l| l > MAX_STRING_LEN) {
        p.push(format!(
            "{at}.max_length: at most {MAX_STRING_LEN} bytes (the longest string the \
             write-ahead log keeps whole)"
        ));
    }
    if f.max_length == Some(0) {
        p.push(format!("{at}.max_length: must be at least 1"));
    }
}
