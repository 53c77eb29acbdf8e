//! `[lake]`: where the Parquet files are kept: under the data directory (the default), or in
//! an S3-compatible object store (AWS S3, MinIO, Ceph, …) that every node writes under its
//! own name and reads whole.

use std::time::Duration;

use serde::Deserialize;

use super::Secret;
use super::units;

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LakeConfig {
    /// Empty: `{data_dir}/parquet`. `s3://bucket` or `s3://bucket/prefix`: object storage.
    pub url: String,
    /// An S3-compatible server's address (`https://minio.internal:9000`); empty: AWS.
    pub endpoint: String,
    /// Empty: `AWS_REGION`, else us-east-1.
    pub region: String,
    /// Empty: from the environment (`AWS_ACCESS_KEY_ID`, …) or the instance's role.
    pub access_key_id: String,
    pub secret_access_key: Secret,
    /// Allows an `http://` endpoint (a test server, a store on a private network).
    pub allow_http: bool,
    /// The longest one request to the store may take.
    #[serde(with = "units::duration")]
    pub request_timeout: Duration,
}

impl Default for LakeConfig {
    fn default() -> LakeConfig {
        LakeConfig {
            url: String::new(),
            endpoint: String::new(),
            region: String::new(),
            access_key_id: String::new(),
            secret_access_key: Secret::default(),
            allow_http: false,
            request_timeout: Duration::from_secs(30),
        }
    }
}

impl LakeConfig {
    /// `(bucket, prefix)` of an `s3://` URL.
    pub fn bucket_prefix(&self) -> Option<(String, String)> {
        let rest = self.url.strip_prefix("s3://")?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
        let prefix = prefix.trim_matches('/');
        // Plain levels: no `.`/`..`, no `=` (a reader would take a level for a partition).
        let prefix_ok = prefix.split('/').all(|level| {
            prefix.is_empty()
                || (!level.is_empty()
                    && level != "."
                    && level != ".."
                    && level
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)))
        });
        (bucket_ok && prefix_ok).then(|| (bucket.to_string(), prefix.to_string()))
    }

    /// Whether the lake is in object storage.
    pub fn is_object_store(&self) -> bool {
        !self.url.is_empty()
    }
}

/// The problems of `[lake]`; `node_id` is `[cluster] node_id` (each node writes under it).
pub(super) fn check(p: &mut Vec<String>, lake: &LakeConfig, node_id: &str) {
    if !lake.is_object_store() {
        return;
    }
    if lake.bucket_prefix().is_none() {
        p.push(format!(
            "lake.url: `{}` must be s3://bucket or s3://bucket/prefix (a bucket of 3-63 of a-z \
             0-9 - ., a prefix of levels of A-Z a-z 0-9 - _ .)",
            lake.url
        ));
    }
    if !lake.endpoint.is_empty() {
        match reqwest::Url::parse(&lake.endpoint) {
            Ok(url)
                if matches!(url.scheme(), "http" | "https")
                    && url.host().is_some()
                    && url.path() == "/"
                    && url.query().is_none()
                    && url.username().is_empty() =>
            {
                if url.scheme() == "http" && !lake.allow_http {
                    p.push(
                        "lake.endpoint: an http:// endpoint sends keys and data in the clear; \
                         set lake.allow_http = true to mean it"
                            .into(),
                    );
                }
            }
            _ => p.push(format!(
                "lake.endpoint: `{}` must be https://host[:port] (or http:// with allow_http)",
                lake.endpoint
            )),
        }
    }
    if lake.access_key_id.is_empty() != lake.secret_access_key.0.is_empty() {
        p.push(
            "lake.access_key_id and lake.secret_access_key: both, or neither (then from the \
             environment or the instance's role)"
                .into(),
        );
    }
    if lake.request_timeout < Duration::from_secs(1)
        || lake.request_timeout > Duration::from_secs(600)
    {
        p.push("lake.request_timeout: must be 1s to 10m".into());
    }
    if !super::ClusterConfig::valid_node_id(node_id) {
        p.push(
            "cluster.node_id: a lake in object storage is shared, so each node writes under a \
             name of its own (1-32 of a-z 0-9 -, the same across restarts)"
                .into(),
        );
    }
}
