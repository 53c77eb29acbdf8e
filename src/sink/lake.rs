//! Where the lake's Parquet files are kept: under the data directory, or in an S3-compatible
//! object store shared by every node.
//!
//! ```text
//! {data_dir}/parquet/dataset={id}/date=YYYY-MM-DD/hour=HH/part-{first}-{last}-{n}.parquet
//! s3://{bucket}/{prefix}/dataset={id}/date=YYYY-MM-DD/hour=HH/node={node}/part-{first}-{last}-{n}.parquet
//! s3://{bucket}/{prefix}/_marks/dataset={id}/node={node}/{lsn}
//! ```
//!
//! In object storage the Parquet sink writes each range to a staging directory as it always
//! does, uploads the files (multipart past [`PART_SIZE`]), leaves a mark, deletes the local
//! copies, and only then moves its checkpoint: a crash before that uploads the same range
//! again under the same names (an overwrite, never a second copy). A node writes under its
//! own `node=` partition, so nodes never write the same object. A node's mark is the last
//! log record of a dataset whose files are all uploaded: a reader takes another node's
//! files up to its mark, and that node's later readings from what it follows live
//! (`[cluster]`), so each reading is read once. Readers fetch files by byte ranges (the
//! footer, then the column chunks a query needs), never whole.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::config::{Config, LakeConfig};

/// Uploads larger than this go in parts (S3 asks at least 5 MiB of each part but the last).
pub const PART_SIZE: usize = 8 << 20;
/// How long a reader keeps the other nodes' marks before listing them again.
const MARKS_FRESH: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum LakeError {
    #[error("cannot use the lake at {url}: {message}")]
    Setup { url: String, message: String },
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    #[error(
        "node `{node}` uploaded {dataset}'s records up to {mark} to the lake, but this data \
         directory's log ends at {lsn}: a node started on a fresh data directory, or two nodes \
         with one node_id, would overwrite each other's files. Give this node a node_id of its \
         own ([cluster] node_id)"
    )]
    NodeReused {
        node: String,
        dataset: String,
        mark: u64,
        lsn: u64,
    },
    #[error("staging file {path}: {source}")]
    Staging {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Where the Parquet files are (cheap to clone).
#[derive(Clone, Debug)]
pub enum Lake {
    /// Under this directory.
    Local(PathBuf),
    /// In object storage.
    Object(Arc<ObjectLake>),
}

/// Every node's mark of one dataset.
pub type Marks = Arc<HashMap<String, u64>>;

/// The lake in an object store.
#[derive(Debug)]
pub struct ObjectLake {
    store: Arc<dyn ObjectStore>,
    url: String,
    /// The key prefix, no slash at either end (empty: the bucket's root).
    prefix: String,
    /// This node's name.
    node: String,
    /// Where the sink writes files before they are uploaded.
    staging: PathBuf,
    /// Every node's mark per dataset, as last listed.
    marks: Mutex<HashMap<String, (Instant, Marks)>>,
    /// The runtime blocking callers (the sink's write thread, query threads) run requests on.
    runtime: tokio::runtime::Handle,
}

/// A file of the lake a query reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LakeFile {
    Local(PathBuf),
    Object { key: String, size: u64 },
}

impl LakeFile {
    /// How errors name it.
    pub fn name(&self) -> String {
        match self {
            LakeFile::Local(p) => p.display().to_string(),
            LakeFile::Object { key, .. } => key.clone(),
        }
    }
}

impl Lake {
    /// The lake `config` describes; connects nothing yet.
    pub fn open(config: &Config) -> Result<Lake, LakeError> {
        let lake = &config.lake;
        if !lake.is_object_store() {
            return Ok(Lake::Local(config.parquet_dir()));
        }
        let setup = |message: String| LakeError::Setup {
            url: lake.url.clone(),
            message,
        };
        let (bucket, prefix) = lake
            .bucket_prefix()
            .ok_or_else(|| setup("not an s3://bucket/prefix URL".into()))?;
        let store = s3(lake, &bucket).map_err(|e| setup(e.to_string()))?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| setup("opened outside the runtime".into()))?;
        Ok(Lake::Object(Arc::new(ObjectLake {
            runtime,
            store: Arc::new(store),
            url: lake.url.clone(),
            prefix,
            node: config.cluster.node_id.clone(),
            staging: config.storage.data_dir.join("lake-staging"),
            marks: Mutex::new(HashMap::new()),
        })))
    }

    /// In object storage: refuses a node whose name uploaded more of `datasets` than this
    /// log holds (a rebuilt node, or two nodes with one name, would overwrite files).
    pub async fn check_node(&self, datasets: &[String], last_lsn: u64) -> Result<(), LakeError> {
        let Lake::Object(o) = self else {
            return Ok(());
        };
        for dataset in datasets {
            let marks = o.marks(dataset).await?;
            if let Some(&mark) = marks.get(&o.node)
                && mark > last_lsn
            {
                return Err(LakeError::NodeReused {
                    node: o.node.clone(),
                    dataset: dataset.clone(),
                    mark,
                    lsn: last_lsn,
                });
            }
        }
        Ok(())
    }

    /// The directory the Parquet sink writes its files in: the lake itself, or the staging
    /// directory of an object store.
    pub fn write_root(&self) -> &Path {
        match self {
            Lake::Local(root) => root,
            Lake::Object(o) => &o.staging,
        }
    }

    /// After the sink wrote `files` of `dataset` (a range of log records ending at
    /// `through`): in object storage, uploads them, moves this node's mark and deletes the
    /// local copies; locally, nothing. Blocking (the sink's write thread).
    pub fn publish(&self, dataset: &str, files: &[PathBuf], through: u64) -> Result<(), LakeError> {
        match self {
            Lake::Local(_) => Ok(()),
            Lake::Object(o) => o.runtime.block_on(o.publish(dataset, files, through)),
        }
    }
}

/// The S3 client of `lake`.
fn s3(lake: &LakeConfig, bucket: &str) -> object_store::Result<object_store::aws::AmazonS3> {
    // The TLS library's cryptography: ring, once per process (a second install is a no-op).
    let _ = rustls::crypto::ring::default_provider().install_default();
    // AWS_* variables count as object_store reads them (credentials, a role, a region);
    // what [lake] sets wins.
    let mut builder = object_store::aws::AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_allow_http(lake.allow_http)
        .with_client_options(
            object_store::ClientOptions::new()
                .with_allow_http(lake.allow_http)
                .with_timeout(lake.request_timeout)
                .with_connect_timeout(Duration::from_secs(5)),
        )
        // A few quick retries: a query or a flush that cannot reach the store fails within
        // about a request timeout and a half, and is tried again by its caller.
        .with_retry(object_store::RetryConfig {
            backoff: object_store::BackoffConfig::default(),
            max_retries: 3,
            retry_timeout: lake.request_timeout + lake.request_timeout / 2,
        });
    if !lake.region.is_empty() {
        builder = builder.with_region(&lake.region);
    }
    if !lake.endpoint.is_empty() {
        builder = builder.with_endpoint(&lake.endpoint);
    }
    if !lake.access_key_id.is_empty() {
        builder = builder
            .with_access_key_id(&lake.access_key_id)
            .with_secret_access_key(&lake.secret_access_key.0);
    }
    builder.build()
}

/// `date=YYYY-MM-DD` → days since the epoch.
fn date_days(level: &str) -> Option<i64> {
    let v = level.strip_prefix("date=")?;
    let mut it = v.split('-');
    let (y, m, d) = (it.next()?, it.next()?, it.next()?);
    Some(crate::calendar::days_from_civil(
        y.parse().ok()?,
        m.parse().ok()?,
        d.parse().ok()?,
    ))
}

/// `(hour, node, file name)` of a key's last levels: `…/hour=HH/node=N/part-….parquet`.
fn hour_node_file(key: &str) -> Option<(i64, &str, &str)> {
    let mut levels = key.rsplit('/');
    let file = levels.next()?;
    let node = levels.next()?.strip_prefix("node=")?;
    let hour = levels.next()?.strip_prefix("hour=")?.parse().ok()?;
    Some((hour, node, file))
}

impl ObjectLake {
    fn key(&self, rest: &str) -> Key {
        if self.prefix.is_empty() {
            Key::from(rest)
        } else {
            Key::from(format!("{}/{rest}", self.prefix))
        }
    }

    /// The key of a staged file: its partition path, this node's partition, its name.
    fn key_of(&self, file: &Path) -> Option<Key> {
        let rel = file.strip_prefix(&self.staging).ok()?;
        let name = rel.file_name()?.to_str()?;
        let dir = rel.parent()?.to_str()?;
        Some(self.key(&format!("{dir}/node={}/{name}", self.node)))
    }

    async fn publish(
        &self,
        dataset: &str,
        files: &[PathBuf],
        through: u64,
    ) -> Result<(), LakeError> {
        for file in files {
            let Some(key) = self.key_of(file) else {
                return Err(LakeError::Staging {
                    path: file.clone(),
                    source: std::io::Error::other("not a staged partition file"),
                });
            };
            let staging = |source| LakeError::Staging {
                path: file.clone(),
                source,
            };
            let mut local = tokio::fs::File::open(file).await.map_err(staging)?;
            let mut upload = object_store::buffered::BufWriter::with_capacity(
                self.store.clone(),
                key,
                PART_SIZE,
            );
            let failed = |source| LakeError::Staging {
                path: file.clone(),
                source,
            };
            if let Err(e) = tokio::io::copy(&mut local, &mut upload).await {
                // Parts already uploaded go (a writer that shut down has none left).
                let _ = upload.abort().await;
                return Err(failed(e));
            }
            tokio::io::AsyncWriteExt::shutdown(&mut upload)
                .await
                .map_err(failed)?;
        }
        // The mark names the last record; the older marks go (the newest one counts).
        let marks = self.key(&format!("_marks/dataset={dataset}/node={}", self.node));
        let mark = marks.clone().join(format!("{through:020}"));
        self.store.put(&mark, Bytes::new().into()).await?;
        let older: Vec<Key> = self
            .store
            .list(Some(&marks))
            .try_filter(|m| std::future::ready(m.location != mark))
            .map_ok(|m| m.location)
            .try_collect()
            .await?;
        for key in older {
            let _ = self.store.delete(&key).await;
        }
        for file in files {
            let _ = std::fs::remove_file(file);
        }
        Ok(())
    }

    /// Every node's mark of `dataset` (the last record whose files are all there), listed
    /// at most every [`MARKS_FRESH`].
    pub async fn marks(&self, dataset: &str) -> Result<Marks, LakeError> {
        if let Some((at, marks)) = self
            .marks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(dataset)
            && at.elapsed() < MARKS_FRESH
        {
            return Ok(marks.clone());
        }
        let dir = self.key(&format!("_marks/dataset={dataset}"));
        let mut marks: HashMap<String, u64> = HashMap::new();
        let mut listed = self.store.list(Some(&dir));
        while let Some(meta) = listed.next().await {
            let meta = meta?;
            let key = meta.location.as_ref();
            let mut levels = key.rsplit('/');
            let (Some(lsn), Some(node)) = (
                levels.next().and_then(|l| l.parse::<u64>().ok()),
                levels.next().and_then(|n| n.strip_prefix("node=")),
            ) else {
                continue;
            };
            let m = marks.entry(node.to_string()).or_default();
            *m = (*m).max(lsn);
        }
        let marks = Arc::new(marks);
        self.marks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(dataset.to_string(), (Instant::now(), marks.clone()));
        Ok(marks)
    }

    /// The files of `dataset` in the hour partitions overlapping `[from, to)`, with their
    /// hour's start: this node's up to `own_through`, another node's up to its mark in
    /// `marks` (none: all of them), each hour's in key order.
    pub async fn files(
        &self,
        dataset: &str,
        (from, to): (i64, i64),
        own_through: u64,
        marks: Option<&HashMap<String, u64>>,
    ) -> Result<Vec<(i64, Vec<LakeFile>)>, LakeError> {
        const HOUR: i64 = 3_600_000_000;
        const DAY: i64 = 24 * HOUR;
        let (first_day, last_day) = (from.div_euclid(DAY), (to - 1).div_euclid(DAY));
        // The days the lake has (one listing of the dataset's date partitions), then the
        // files of those in the range: the cost follows the data, not the range asked.
        let dates = self
            .store
            .list_with_delimiter(Some(&self.key(&format!("dataset={dataset}"))))
            .await?;
        let days: Vec<i64> = dates
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().and_then(date_days))
            .filter(|d| (first_day..=last_day).contains(d))
            .collect();
        let listings = futures_util::stream::iter(days.into_iter().map(|day| {
            let (y, m, d) = crate::calendar::civil_from_days(day);
            let dir = self.key(&format!("dataset={dataset}/date={y:04}-{m:02}-{d:02}"));
            async move {
                let metas: Vec<object_store::ObjectMeta> =
                    self.store.list(Some(&dir)).try_collect().await?;
                Ok::<_, object_store::Error>((day, metas))
            }
        }))
        .buffer_unordered(8)
        .try_collect::<Vec<_>>()
        .await?;
        let mut hours: HashMap<i64, Vec<LakeFile>> = HashMap::new();
        for (day, metas) in listings {
            for meta in metas {
                let key = meta.location.as_ref();
                let Some((hour, node, name)) = hour_node_file(key) else {
                    continue;
                };
                let start = day * DAY + hour * HOUR;
                if start + HOUR <= from || start >= to {
                    continue;
                }
                let Some((_, last)) = crate::sink::parquet::log_range(name) else {
                    continue;
                };
                let through = if node == self.node {
                    own_through
                } else {
                    match marks {
                        None => u64::MAX,
                        Some(marks) => marks.get(node).copied().unwrap_or(0),
                    }
                };
                if last <= through {
                    hours.entry(start).or_default().push(LakeFile::Object {
                        key: key.to_string(),
                        size: meta.size,
                    });
                }
            }
        }
        let mut hours: Vec<(i64, Vec<LakeFile>)> = hours.into_iter().collect();
        for (_, files) in &mut hours {
            files.sort_by_key(|f| f.name());
        }
        hours.sort_by_key(|(start, _)| *start);
        Ok(hours)
    }

    /// A reader of `key` (`size` bytes) by byte ranges, for a blocking thread.
    pub fn reader(&self, key: &str, size: u64) -> RangeReader {
        RangeReader {
            store: self.store.clone(),
            key: Key::from(key),
            size,
            runtime: self.runtime.clone(),
        }
    }

    /// The runtime requests run on, for blocking callers.
    pub fn runtime(&self) -> &tokio::runtime::Handle {
        &self.runtime
    }

    pub fn url(&self) -> &str {
        &self.url
    }
}

/// An object read by byte ranges: what the Parquet reader asks for, fetched when asked.
#[derive(Debug)]
pub struct RangeReader {
    store: Arc<dyn ObjectStore>,
    key: Key,
    size: u64,
    runtime: tokio::runtime::Handle,
}

impl RangeReader {
    /// The bytes of `range`. Blocking: call it from a thread outside the runtime.
    pub fn get(&self, range: Range<u64>) -> Result<Bytes, object_store::Error> {
        self.runtime
            .block_on(self.store.get_range(&self.key, range))
    }

    /// The bytes of `ranges` (near ones fetched in one request). Blocking.
    pub fn get_ranges(&self, ranges: &[Range<u64>]) -> Result<Vec<Bytes>, object_store::Error> {
        self.runtime
            .block_on(self.store.get_ranges(&self.key, ranges))
    }

    pub fn size(&self) -> u64 {
        self.size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_names_its_hour_node_and_file() {
        assert_eq!(
            hour_node_file("p/dataset=w/date=2026-12-01/hour=07/node=node-2/part-1-9-0.parquet"),
            Some((7, "node-2", "part-1-9-0.parquet"))
        );
        assert_eq!(
            hour_node_file("p/dataset=w/date=2026-12-01/hour=07/part-1-9-0.parquet"),
            None
        );
    }
}
