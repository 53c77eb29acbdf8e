//! API keys: random secrets shown once, stored only as SHA-256, looked up by hash.
//!
//! A secret is `cg_` followed by 43 characters of `[A-Za-z0-9]` (256 bits). Its public id
//! (`key_…`) is what lists, logs and rate limits use; the secret itself is never logged.
//! Kinds today: `device` (writes readings to named datasets) and `provider` (reads its own
//! datasets' rejects). The marketplace issue adds subscriber and admin keys.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use rand::distr::Alphanumeric;
use sha2::{Digest, Sha256};
use sqlx::Row;

use super::store::{Store, StoreError};
use crate::config::Config;
use crate::model::{Micros, now_micros};

pub const SECRET_PREFIX: &str = "cg_";
const SECRET_RANDOM_LEN: usize = 43;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyKind {
    Device,
    Provider,
}

impl KeyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Device => "device",
            KeyKind::Provider => "provider",
        }
    }

    fn parse(s: &str) -> Option<KeyKind> {
        match s {
            "device" => Some(KeyKind::Device),
            "provider" => Some(KeyKind::Provider),
            _ => None,
        }
    }
}

/// A stored key (never the secret).
#[derive(Clone, Debug, serde::Serialize)]
pub struct ApiKey {
    pub id: Arc<str>,
    pub kind: KeyKind,
    /// The provider account the key belongs to.
    pub owner: String,
    /// Datasets a device key may write (empty for other kinds).
    pub datasets: Vec<String>,
    pub created_at: Micros,
    pub revoked_at: Option<Micros>,
}

impl ApiKey {
    pub fn may_write(&self, dataset: &str) -> bool {
        self.kind == KeyKind::Device
            && self.revoked_at.is_none()
            && self.datasets.iter().any(|d| d == dataset)
    }

    /// Whether the key may read provider-only views (rejects) of a dataset owned by `owner`.
    pub fn may_administer(&self, dataset_owner: &str) -> bool {
        self.kind == KeyKind::Provider && self.revoked_at.is_none() && self.owner == dataset_owner
    }
}

/// A new key: its record and the secret, which exists only here.
pub struct NewKey {
    pub key: ApiKey,
    pub secret: String,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Invalid(String),
}

impl From<sqlx::Error> for KeyError {
    fn from(e: sqlx::Error) -> Self {
        KeyError::Store(StoreError::Db(e))
    }
}

fn hash_hex(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

fn random_alnum(n: usize) -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(n)
        .map(char::from)
        .collect()
}

/// Whether `text` has the shape of a citygate secret (checked before any lookup).
pub fn looks_like_secret(text: &str) -> bool {
    text.len() == SECRET_PREFIX.len() + SECRET_RANDOM_LEN
        && text.starts_with(SECRET_PREFIX)
        && text[SECRET_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric())
}

/// Checks that `provider` may mint a device key for `datasets`: each exists in `config` and
/// is owned by `provider`. Every problem is reported.
pub fn check_device_scope(
    config: &Config,
    provider: &str,
    datasets: &[String],
) -> Result<(), KeyError> {
    if provider.trim().is_empty() {
        return Err(KeyError::Invalid("--provider must not be empty".into()));
    }
    if datasets.is_empty() {
        return Err(KeyError::Invalid(
            "a device key needs at least one dataset".into(),
        ));
    }
    let known = config.datasets_by_id();
    let mut problems = Vec::new();
    for id in datasets {
        match known.get(id.as_str()) {
            None => problems.push(format!(
                "dataset `{id}` does not exist (known: {})",
                known.keys().copied().collect::<Vec<_>>().join(", ")
            )),
            Some(ds) if ds.provider != provider => problems.push(format!(
                "dataset `{id}` belongs to provider `{}`, not `{provider}`",
                ds.provider
            )),
            Some(_) => {}
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(KeyError::Invalid(problems.join("; ")))
    }
}

impl Store {
    /// Creates a key. The secret is returned once and not stored.
    pub async fn create_key(
        &self,
        kind: KeyKind,
        owner: &str,
        datasets: &[String],
    ) -> Result<NewKey, KeyError> {
        let secret = format!("{SECRET_PREFIX}{}", random_alnum(SECRET_RANDOM_LEN));
        let key = ApiKey {
            id: format!("key_{}", random_alnum(12).to_ascii_lowercase()).into(),
            kind,
            owner: owner.to_string(),
            datasets: datasets.to_vec(),
            created_at: now_micros(),
            revoked_at: None,
        };
        let mut tx = self.pool().begin().await?;
        sqlx::query(
            "INSERT INTO api_keys (id, kind, owner, secret_hash, created_at) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(key.id.as_ref())
        .bind(kind.as_str())
        .bind(owner)
        .bind(hash_hex(&secret))
        .bind(key.created_at)
        .execute(&mut *tx)
        .await?;
        for ds in datasets {
            sqlx::query("INSERT INTO api_key_datasets (key_id, dataset) VALUES (?, ?)")
                .bind(key.id.as_ref())
                .bind(ds)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(NewKey { key, secret })
    }

    /// All keys, oldest first.
    pub async fn list_keys(&self) -> Result<Vec<ApiKey>, KeyError> {
        let rows = sqlx::query(
            "SELECT k.id, k.kind, k.owner, k.created_at, k.revoked_at,
                    COALESCE(GROUP_CONCAT(d.dataset, ','), '')
             FROM api_keys k LEFT JOIN api_key_datasets d ON d.key_id = k.id
             GROUP BY k.id ORDER BY k.created_at, k.id",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(key_from_row).collect()
    }

    /// Revokes a key by id. `Ok(false)` if no such key, or it was already revoked.
    pub async fn revoke_key(&self, id: &str) -> Result<bool, KeyError> {
        let done =
            sqlx::query("UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL")
                .bind(now_micros())
                .bind(id)
                .execute(self.pool())
                .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The live (unrevoked) key whose secret is `secret`.
    pub async fn key_by_secret(&self, secret: &str) -> Result<Option<ApiKey>, KeyError> {
        let row = sqlx::query(
            "SELECT k.id, k.kind, k.owner, k.created_at, k.revoked_at,
                    COALESCE(GROUP_CONCAT(d.dataset, ','), '')
             FROM api_keys k LEFT JOIN api_key_datasets d ON d.key_id = k.id
             WHERE k.secret_hash = ? AND k.revoked_at IS NULL
             GROUP BY k.id",
        )
        .bind(hash_hex(secret))
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(key_from_row).transpose()
    }
}

fn key_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<ApiKey, KeyError> {
    let kind: String = row.try_get(1)?;
    let datasets: String = row.try_get(5)?;
    let mut datasets: Vec<String> = datasets
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    datasets.sort();
    Ok(ApiKey {
        id: row.try_get::<String, _>(0)?.into(),
        kind: KeyKind::parse(&kind)
            .ok_or_else(|| KeyError::Invalid(format!("unknown key kind `{kind}` in database")))?,
        owner: row.try_get(2)?,
        created_at: row.try_get(3)?,
        revoked_at: row.try_get(4)?,
        datasets,
    })
}

/// How long a looked-up key (or a miss) is trusted before the database is asked again:
/// the bound on how long a revoked key keeps working.
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(1);
const KEY_CACHE_MAX: usize = 100_000;

struct Cached {
    key: Option<Arc<ApiKey>>,
    fetched: Instant,
}

/// Authenticates secrets, with a short-lived cache in front of the database so a busy
/// device costs one query per second, not one per request.
pub struct Keyring {
    store: Store,
    cache: Mutex<HashMap<[u8; 32], Cached>>,
}

impl Keyring {
    pub fn new(store: Store) -> Keyring {
        Keyring {
            store,
            cache: Mutex::new(HashMap::new()),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The live key for `secret`, or `None` if there is none.
    pub async fn authenticate(&self, secret: &str) -> Result<Option<Arc<ApiKey>>, KeyError> {
        if !looks_like_secret(secret) {
            return Ok(None);
        }
        let digest: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(hit) = cache.get(&digest)
                && hit.fetched.elapsed() < KEY_CACHE_TTL
            {
                return Ok(hit.key.clone());
            }
        }
        let key = self.store.key_by_secret(secret).await?.map(Arc::new);
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= KEY_CACHE_MAX {
            cache.retain(|_, c| c.fetched.elapsed() < KEY_CACHE_TTL);
            if cache.len() >= KEY_CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(
            digest,
            Cached {
                key: key.clone(),
                fetched: Instant::now(),
            },
        );
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_CONFIG;

    async fn store() -> (Store, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db/citygate.db"))
            .await
            .unwrap();
        (store, dir)
    }

    #[tokio::test]
    async fn keys_are_created_found_by_secret_and_revoked() {
        let (store, _dir) = store().await;
        let new = store
            .create_key(
                KeyKind::Device,
                "copenhagen",
                &["weather".into(), "air-quality".into()],
            )
            .await
            .unwrap();
        assert!(looks_like_secret(&new.secret), "{}", new.secret);
        let found = store.key_by_secret(&new.secret).await.unwrap().unwrap();
        assert_eq!(found.id, new.key.id);
        assert_eq!(found.datasets, vec!["air-quality", "weather"]);
        assert!(found.may_write("weather"));
        assert!(!found.may_write("traffic-counts"));

        let raw: String = sqlx::query("SELECT secret_hash FROM api_keys")
            .fetch_one(store.pool())
            .await
            .unwrap()
            .get(0);
        assert_eq!(raw.len(), 64, "only the hash is stored");
        assert!(!raw.contains(&new.secret[3..]));

        assert!(store.revoke_key(&new.key.id).await.unwrap());
        assert!(
            !store.revoke_key(&new.key.id).await.unwrap(),
            "already revoked"
        );
        assert!(store.key_by_secret(&new.secret).await.unwrap().is_none());
        let listed = store.list_keys().await.unwrap();
        assert_eq!(listed.len(), 1);
        assert!(listed[0].revoked_at.is_some());
    }

    #[tokio::test]
    async fn keyring_rejects_garbage_without_lookup_and_sees_revocation_within_ttl() {
        let (store, _dir) = store().await;
        let keyring = Keyring::new(store.clone());
        assert!(keyring.authenticate("nope").await.unwrap().is_none());
        let new = store
            .create_key(KeyKind::Device, "copenhagen", &["weather".into()])
            .await
            .unwrap();
        assert!(keyring.authenticate(&new.secret).await.unwrap().is_some());
        store.revoke_key(&new.key.id).await.unwrap();
        tokio::time::sleep(KEY_CACHE_TTL + Duration::from_millis(50)).await;
        assert!(keyring.authenticate(&new.secret).await.unwrap().is_none());
    }

    #[test]
    fn device_scope_is_checked_against_config() {
        let config = Config::from_toml(DEFAULT_CONFIG, "default", &[]).unwrap();
        assert!(check_device_scope(&config, "copenhagen", &["weather".into()]).is_ok());
        let err = check_device_scope(
            &config,
            "copenhagen",
            &["energy-meters".into(), "nope".into()],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("belongs to provider `copenhagen-energy`"),
            "{err}"
        );
        assert!(err.contains("`nope` does not exist"), "{err}");
        assert!(check_device_scope(&config, "copenhagen", &[]).is_err());
    }
}
