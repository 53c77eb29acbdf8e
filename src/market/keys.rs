//! API keys: random secrets shown once, stored only as SHA-256, looked up by hash.
//!
//! A secret is `cg_` followed by 43 characters of `[A-Za-z0-9]` (256 bits). Its public id
//! (`key_…`) is what lists, logs and rate limits use; the secret itself is never logged.
//! Every key belongs to an account and has a kind matching the account's role: `admin`,
//! `provider`, `subscriber`, or `device` (a provider's key that writes readings to named
//! datasets). A key may expire; rotating one issues a successor with the same scope and lets
//! the old one live on for an overlap. Revocation and expiry take effect within
//! [`KEY_CACHE_TTL`](super::keyring::KEY_CACHE_TTL) everywhere, the lifetime of a cached lookup.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use sqlx::Row;
use sqlx::any::AnyRow;

use super::accounts::{ADMIN_ACCOUNT, Account, NewAccount, Role};
use super::error::Error;
use super::ids::random_alnum;
use super::store::Store;
use crate::config::DatasetConfig;
use crate::model::{Micros, now_micros};

pub const SECRET_PREFIX: &str = "cg_";
const SECRET_RANDOM_LEN: usize = 43;

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum KeyKind {
    Admin,
    Provider,
    Subscriber,
    Device,
}

impl KeyKind {
    /// The kind of the key an account of `role` is given first.
    pub fn first_of(role: Role) -> KeyKind {
        match role {
            Role::Admin => KeyKind::Admin,
            Role::Provider => KeyKind::Provider,
            Role::Subscriber => KeyKind::Subscriber,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Admin => "admin",
            KeyKind::Provider => "provider",
            KeyKind::Subscriber => "subscriber",
            KeyKind::Device => "device",
        }
    }

    pub fn parse(s: &str) -> Option<KeyKind> {
        match s {
            "admin" => Some(KeyKind::Admin),
            "provider" => Some(KeyKind::Provider),
            "subscriber" => Some(KeyKind::Subscriber),
            "device" => Some(KeyKind::Device),
            _ => None,
        }
    }

    /// The account role a key of this kind belongs to.
    pub fn role(self) -> Role {
        match self {
            KeyKind::Admin => Role::Admin,
            KeyKind::Provider | KeyKind::Device => Role::Provider,
            KeyKind::Subscriber => Role::Subscriber,
        }
    }
}

/// A stored key (never the secret).
#[derive(Clone, Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ApiKey {
    #[schema(value_type = String)]
    pub id: Arc<str>,
    pub kind: KeyKind,
    /// The account the key belongs to (for a device key: the provider owning its datasets).
    pub account: String,
    pub label: String,
    /// Datasets a device key may write; for a subscriber key, the datasets it is limited to
    /// (empty: every dataset the account is entitled to).
    pub datasets: Vec<String>,
    pub created_at: Micros,
    pub expires_at: Option<Micros>,
    pub revoked_at: Option<Micros>,
    /// The key that replaced this one when it was rotated.
    pub replaced_by: Option<String>,
}

impl ApiKey {
    /// Neither revoked nor expired at `now`.
    pub fn is_live(&self, now: Micros) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|t| now < t)
    }

    pub fn may_write(&self, dataset: &str) -> bool {
        self.kind == KeyKind::Device
            && self.is_live(now_micros())
            && self.datasets.iter().any(|d| d == dataset)
    }

    /// Whether the key may manage a dataset owned by provider account `dataset_owner`
    /// (read its rejects, edit it, price it): that provider's key, or an admin's.
    pub fn may_administer(&self, dataset_owner: &str) -> bool {
        self.is_live(now_micros())
            && match self.kind {
                KeyKind::Admin => true,
                KeyKind::Provider => self.account == dataset_owner,
                _ => false,
            }
    }

    pub fn is_admin(&self) -> bool {
        self.kind == KeyKind::Admin && self.is_live(now_micros())
    }
}

/// What a new key is.
#[derive(Clone, Debug)]
pub struct KeySpec {
    pub kind: KeyKind,
    pub account: String,
    pub label: String,
    pub datasets: Vec<String>,
    pub expires_at: Option<Micros>,
}

/// A new key: its record and the secret, which exists only here.
pub struct NewKey {
    pub key: ApiKey,
    pub secret: String,
}

/// Without the secret.
impl std::fmt::Debug for NewKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewKey")
            .field("key", &self.key)
            .finish_non_exhaustive()
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

#[cfg(test)]
pub(crate) fn tests_hash(secret: &str) -> String {
    hash_hex(secret)
}

/// A fresh random secret.
pub fn new_secret() -> String {
    format!("{SECRET_PREFIX}{}", random_alnum(SECRET_RANDOM_LEN))
}

/// Whether `text` has the shape of a citygate secret (checked before any lookup).
pub fn looks_like_secret(text: &str) -> bool {
    text.len() == SECRET_PREFIX.len() + SECRET_RANDOM_LEN
        && text.starts_with(SECRET_PREFIX)
        && text[SECRET_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric())
}

/// Checks that `provider` may mint a device key for `datasets`: each is in `catalog` and is
/// owned by `provider`. Every problem is reported.
pub fn check_device_scope(
    catalog: &[DatasetConfig],
    provider: &str,
    datasets: &[String],
) -> Result<(), Error> {
    if provider.trim().is_empty() {
        return Err(Error::Invalid("--provider must not be empty".into()));
    }
    if datasets.is_empty() {
        return Err(Error::Invalid(
            "a device key needs at least one dataset".into(),
        ));
    }
    let known: std::collections::BTreeMap<&str, &DatasetConfig> =
        catalog.iter().map(|d| (d.id.as_str(), d)).collect();
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
        Err(Error::Invalid(problems.join("; ")))
    }
}

const KEY_COLUMNS: &str =
    "id, kind, account, label, created_at, expires_at, revoked_at, replaced_by";

impl Store {
    /// Creates a key of `kind` for `account` (convenience for [`Store::create_key_with`]).
    pub async fn create_key(
        &self,
        kind: KeyKind,
        account: &str,
        datasets: &[String],
    ) -> Result<NewKey, Error> {
        self.create_key_with(KeySpec {
            kind,
            account: account.to_string(),
            label: String::new(),
            datasets: datasets.to_vec(),
            expires_at: None,
        })
        .await
    }

    /// Creates a key. The account must exist with the role the kind needs; a device key
    /// needs datasets. The secret is returned once and not stored.
    pub async fn create_key_with(&self, spec: KeySpec) -> Result<NewKey, Error> {
        self.create_key_given(spec, &new_secret()).await
    }

    /// Creates a key whose secret the operator chose (`CITYGATE_ADMIN_KEY`).
    pub async fn create_key_given(&self, spec: KeySpec, secret: &str) -> Result<NewKey, Error> {
        if !looks_like_secret(secret) {
            return Err(Error::Invalid(format!(
                "a key secret is `{SECRET_PREFIX}` and {SECRET_RANDOM_LEN} letters or digits"
            )));
        }
        let account = self
            .account(&spec.account)
            .await?
            .ok_or_else(|| Error::Invalid(format!("no account `{}`", spec.account)))?;
        if account.role != spec.kind.role() {
            return Err(Error::Invalid(format!(
                "a {} key belongs to a {} account; `{}` is a {} account",
                spec.kind.as_str(),
                spec.kind.role().as_str(),
                account.id,
                account.role.as_str()
            )));
        }
        if spec.kind == KeyKind::Device && spec.datasets.is_empty() {
            return Err(Error::Invalid(
                "a device key needs at least one dataset".into(),
            ));
        }
        if matches!(spec.kind, KeyKind::Admin | KeyKind::Provider) && !spec.datasets.is_empty() {
            return Err(Error::Invalid(format!(
                "a {} key is not limited to datasets",
                spec.kind.as_str()
            )));
        }
        let mut datasets = spec.datasets.clone();
        datasets.sort();
        datasets.dedup();
        let key = ApiKey {
            id: format!("key_{}", random_alnum(12).to_ascii_lowercase()).into(),
            kind: spec.kind,
            account: spec.account,
            label: spec.label,
            datasets,
            created_at: now_micros(),
            expires_at: spec.expires_at,
            revoked_at: None,
            replaced_by: None,
        };
        let mut tx = self.pool().begin().await?;
        insert_key(&mut tx, &key, &hash_hex(secret)).await?;
        tx.commit().await?;
        Ok(NewKey {
            key,
            secret: secret.to_string(),
        })
    }

    /// Keys, oldest first: all, or one account's.
    pub async fn list_keys(&self) -> Result<Vec<ApiKey>, Error> {
        self.keys_where(None).await
    }

    pub async fn account_keys(&self, account: &str) -> Result<Vec<ApiKey>, Error> {
        self.keys_where(Some(account)).await
    }

    async fn keys_where(&self, account: Option<&str>) -> Result<Vec<ApiKey>, Error> {
        let rows = match account {
            Some(account) => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {KEY_COLUMNS} FROM keys WHERE account = $1 ORDER BY created_at, id"
                )))
                .bind(account)
                .fetch_all(self.pool())
                .await?
            }
            None => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {KEY_COLUMNS} FROM keys ORDER BY created_at, id"
                )))
                .fetch_all(self.pool())
                .await?
            }
        };
        let mut datasets = self.key_datasets(account).await?;
        rows.iter()
            .map(|row| key_from_row(row, &mut datasets))
            .collect()
    }

    /// Dataset scopes by key id (of one account's keys, or all).
    async fn key_datasets(
        &self,
        account: Option<&str>,
    ) -> Result<HashMap<String, Vec<String>>, Error> {
        let rows = match account {
            Some(account) => {
                sqlx::query(
                    "SELECT d.key_id, d.dataset FROM key_datasets d
                     JOIN keys k ON k.id = d.key_id WHERE k.account = $1",
                )
                .bind(account)
                .fetch_all(self.pool())
                .await?
            }
            None => {
                sqlx::query("SELECT key_id, dataset FROM key_datasets")
                    .fetch_all(self.pool())
                    .await?
            }
        };
        let mut out: HashMap<String, Vec<String>> = HashMap::new();
        for row in rows {
            out.entry(row.try_get(0)?)
                .or_default()
                .push(row.try_get(1)?);
        }
        Ok(out)
    }

    pub async fn key(&self, id: &str) -> Result<Option<ApiKey>, Error> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {KEY_COLUMNS} FROM keys WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(self.pool())
        .await?;
        self.complete_key(row).await
    }

    async fn complete_key(&self, row: Option<AnyRow>) -> Result<Option<ApiKey>, Error> {
        let Some(row) = row else {
            return Ok(None);
        };
        let id: String = row.try_get(0)?;
        let datasets: Vec<String> =
            sqlx::query("SELECT dataset FROM key_datasets WHERE key_id = $1 ORDER BY dataset")
                .bind(&id)
                .fetch_all(self.pool())
                .await?
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<_, _>>()?;
        let mut scopes = HashMap::from([(id, datasets)]);
        key_from_row(&row, &mut scopes).map(Some)
    }

    /// Revokes a key by id. `Ok(false)` if no such key, or it was already revoked.
    pub async fn revoke_key(&self, id: &str) -> Result<bool, Error> {
        let done =
            sqlx::query("UPDATE keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
                .bind(now_micros())
                .bind(id)
                .execute(self.pool())
                .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Rotates a live key: a successor with the same kind, account, label, scope and expiry,
    /// while the old key keeps working for `overlap` (or until its own expiry, if sooner).
    pub async fn rotate_key(&self, id: &str, overlap: Duration) -> Result<NewKey, Error> {
        let now = now_micros();
        let old = self
            .key(id)
            .await?
            .filter(|k| k.is_live(now))
            .ok_or_else(|| Error::NotFound(format!("no live key `{id}`")))?;
        let secret = new_secret();
        let key = ApiKey {
            id: format!("key_{}", random_alnum(12).to_ascii_lowercase()).into(),
            created_at: now,
            revoked_at: None,
            replaced_by: None,
            ..old.clone()
        };
        let overlap_end = now.saturating_add(overlap.as_micros().min(i64::MAX as u128) as i64);
        let old_end = old.expires_at.map_or(overlap_end, |t| t.min(overlap_end));
        let mut tx = self.pool().begin().await?;
        insert_key(&mut tx, &key, &hash_hex(&secret)).await?;
        let done = sqlx::query(
            "UPDATE keys SET expires_at = $1, replaced_by = $2
             WHERE id = $3 AND revoked_at IS NULL AND replaced_by IS NULL",
        )
        .bind(old_end)
        .bind(key.id.as_ref())
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Err(Error::NotFound(format!(
                "key `{id}` was rotated or revoked meanwhile"
            )));
        }
        tx.commit().await?;
        Ok(NewKey { key, secret })
    }

    /// The live (unrevoked, unexpired) key whose secret is `secret`: one query, the hot
    /// path of every authentication that misses the cache.
    pub async fn key_by_secret(&self, secret: &str) -> Result<Option<ApiKey>, Error> {
        let rows = sqlx::query(
            "SELECT k.id, k.kind, k.account, k.label, k.created_at, k.expires_at, k.revoked_at,
                    k.replaced_by, d.dataset
             FROM keys k LEFT JOIN key_datasets d ON d.key_id = k.id
             WHERE k.secret_hash = $1 AND k.revoked_at IS NULL",
        )
        .bind(hash_hex(secret))
        .fetch_all(self.pool())
        .await?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let mut datasets = Vec::new();
        for row in &rows {
            if let Some(ds) = row.try_get::<Option<String>, _>(8)? {
                datasets.push(ds);
            }
        }
        let id: String = first.try_get(0)?;
        let mut scopes = HashMap::from([(id, datasets)]);
        Ok(Some(key_from_row(first, &mut scopes)?).filter(|k| k.is_live(now_micros())))
    }

    /// Whether a key with this secret exists (live or not).
    pub async fn secret_exists(&self, secret: &str) -> Result<bool, Error> {
        Ok(sqlx::query("SELECT id FROM keys WHERE secret_hash = $1")
            .bind(hash_hex(secret))
            .fetch_optional(self.pool())
            .await?
            .is_some())
    }
}

async fn insert_key(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    key: &ApiKey,
    secret_hash: &str,
) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO keys (id, kind, account, label, secret_hash, created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(key.id.as_ref())
    .bind(key.kind.as_str())
    .bind(&key.account)
    .bind(&key.label)
    .bind(secret_hash)
    .bind(key.created_at)
    .bind(key.expires_at)
    .execute(&mut **tx)
    .await?;
    for ds in &key.datasets {
        sqlx::query("INSERT INTO key_datasets (key_id, dataset) VALUES ($1, $2)")
            .bind(key.id.as_ref())
            .bind(ds)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

fn key_from_row(row: &AnyRow, scopes: &mut HashMap<String, Vec<String>>) -> Result<ApiKey, Error> {
    let id: String = row.try_get(0)?;
    let kind: String = row.try_get(1)?;
    let mut datasets = scopes.remove(&id).unwrap_or_default();
    datasets.sort();
    Ok(ApiKey {
        kind: KeyKind::parse(&kind)
            .ok_or_else(|| Error::Invalid(format!("unknown key kind `{kind}` in database")))?,
        account: row.try_get(2)?,
        label: row.try_get(3)?,
        created_at: row.try_get(4)?,
        expires_at: row.try_get(5)?,
        revoked_at: row.try_get(6)?,
        replaced_by: row.try_get(7)?,
        datasets,
        id: id.into(),
    })
}

/// Accounts with their first keys.
impl Store {
    /// Creates an account and its first key (of the kind its role uses).
    pub async fn create_account_with_key(
        &self,
        new: NewAccount,
    ) -> Result<(Account, NewKey), Error> {
        let account = self.create_account(new).await?;
        let key = self
            .create_key_with(KeySpec {
                kind: KeyKind::first_of(account.role),
                account: account.id.clone(),
                label: "first key".into(),
                datasets: Vec::new(),
                expires_at: None,
            })
            .await?;
        Ok((account, key))
    }

    /// The first start's administrator. With `given` (the operator's `CITYGATE_ADMIN_KEY`),
    /// makes sure that secret is a live admin key; otherwise, when no admin account exists
    /// yet, creates one with a fresh key. Returns a secret to show once, if one was made.
    pub async fn bootstrap_admin(&self, given: Option<&str>) -> Result<Option<String>, Error> {
        if let Some(secret) = given
            && !looks_like_secret(secret)
        {
            return Err(Error::Invalid(
                "CITYGATE_ADMIN_KEY: a key secret is `cg_` and 43 letters or digits".into(),
            ));
        }
        let first_admin: Option<String> = sqlx::query(
            "SELECT id FROM accounts WHERE role = 'admin' ORDER BY created_at, id LIMIT 1",
        )
        .fetch_optional(self.pool())
        .await?
        .map(|row| row.try_get(0))
        .transpose()?;
        let has_admin = first_admin.is_some();
        let admin_id = match first_admin {
            Some(id) => id,
            None => {
                self.create_account(NewAccount {
                    id: Some(ADMIN_ACCOUNT.into()),
                    role: Role::Admin,
                    name: "Administrator".into(),
                    sector: "public".into(),
                    email: None,
                })
                .await?
                .id
            }
        };
        let spec = KeySpec {
            kind: KeyKind::Admin,
            account: admin_id,
            label: "bootstrap".into(),
            datasets: Vec::new(),
            expires_at: None,
        };
        match given {
            Some(secret) => {
                if !self.secret_exists(secret).await? {
                    self.create_key_given(spec, secret).await?;
                } else if !self
                    .key_by_secret(secret)
                    .await?
                    .is_some_and(|k| k.kind == KeyKind::Admin)
                {
                    return Err(Error::Invalid(
                        "CITYGATE_ADMIN_KEY names a key that is not a live admin key".into(),
                    ));
                }
                Ok(None)
            }
            None if !has_admin => Ok(Some(self.create_key_with(spec).await?.secret)),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_CONFIG;
    use crate::market::accounts::{NewAccount, Role};
    use crate::market::store::tests::store_with_provider as store;

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

        let raw: String = sqlx::query("SELECT secret_hash FROM keys")
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
    async fn a_key_kind_must_match_its_accounts_role() {
        let (store, _dir) = store().await;
        let sub = store
            .create_account(NewAccount {
                id: None,
                role: Role::Subscriber,
                name: "Mobility Lab".into(),
                sector: "research".into(),
                email: None,
            })
            .await
            .unwrap();
        assert!(sub.id.starts_with("acc_"));
        for (kind, account) in [
            (KeyKind::Device, sub.id.as_str()),
            (KeyKind::Provider, sub.id.as_str()),
            (KeyKind::Admin, "copenhagen"),
            (KeyKind::Subscriber, "copenhagen"),
        ] {
            let err = store
                .create_key(kind, account, &["weather".into()])
                .await
                .err()
                .unwrap_or_else(|| panic!("{kind:?} for {account} was created"));
            assert!(err.to_string().contains("account"), "{err}");
        }
        assert!(
            store
                .create_key(KeyKind::Device, "copenhagen", &[])
                .await
                .is_err()
        );
        assert!(
            store
                .create_key(KeyKind::Subscriber, "nobody", &[])
                .await
                .is_err()
        );
        let key = store
            .create_key(KeyKind::Subscriber, &sub.id, &["weather".into()])
            .await
            .unwrap();
        assert_eq!(key.key.datasets, ["weather"]);
        assert!(!key.key.may_write("weather"), "subscribers never write");
    }

    #[tokio::test]
    async fn expired_keys_stop_working_and_rotation_overlaps() {
        let (store, _dir) = store().await;
        let soon = store
            .create_key_with(KeySpec {
                kind: KeyKind::Provider,
                account: "copenhagen".into(),
                label: "ci".into(),
                datasets: vec![],
                expires_at: Some(now_micros() + 300_000),
            })
            .await
            .unwrap();
        assert!(store.key_by_secret(&soon.secret).await.unwrap().is_some());
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(
            store.key_by_secret(&soon.secret).await.unwrap().is_none(),
            "expired"
        );
        assert!(
            store
                .rotate_key(&soon.key.id, Duration::from_secs(60))
                .await
                .is_err(),
            "an expired key cannot be rotated"
        );

        let old = store
            .create_key(KeyKind::Device, "copenhagen", &["weather".into()])
            .await
            .unwrap();
        let new = store
            .rotate_key(&old.key.id, Duration::from_millis(300))
            .await
            .unwrap();
        assert_ne!(new.secret, old.secret);
        assert_eq!(new.key.datasets, ["weather"]);
        assert_eq!(new.key.kind, KeyKind::Device);
        let old_now = store.key(&old.key.id).await.unwrap().unwrap();
        assert_eq!(old_now.replaced_by.as_deref(), Some(new.key.id.as_ref()));
        assert!(
            store.key_by_secret(&old.secret).await.unwrap().is_some(),
            "the old key works during the overlap"
        );
        assert!(
            store
                .rotate_key(&old.key.id, Duration::from_secs(60))
                .await
                .is_err(),
            "a key is rotated once"
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(store.key_by_secret(&old.secret).await.unwrap().is_none());
        assert!(store.key_by_secret(&new.secret).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn the_first_start_creates_one_admin_and_honours_a_given_key() {
        let (store, _dir) = store().await;
        let first = store.bootstrap_admin(None).await.unwrap().unwrap();
        let admin = store.key_by_secret(&first).await.unwrap().unwrap();
        assert_eq!(admin.kind, KeyKind::Admin);
        assert!(admin.is_admin());
        assert!(
            store.bootstrap_admin(None).await.unwrap().is_none(),
            "shown once: the next start makes none"
        );
        let chosen = new_secret();
        assert!(
            store
                .bootstrap_admin(Some(&chosen))
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            store
                .key_by_secret(&chosen)
                .await
                .unwrap()
                .unwrap()
                .is_admin()
        );
        // Idempotent on the next start.
        store.bootstrap_admin(Some(&chosen)).await.unwrap();
        assert_eq!(
            store.list_keys().await.unwrap().len(),
            2,
            "the given key is stored once"
        );
        assert!(store.bootstrap_admin(Some("cg_short")).await.is_err());
        let device = store
            .create_key(KeyKind::Device, "copenhagen", &["weather".into()])
            .await
            .unwrap();
        assert!(
            store.bootstrap_admin(Some(&device.secret)).await.is_err(),
            "a device key is no admin key"
        );
    }

    #[test]
    fn device_scope_is_checked_against_config() {
        let config = crate::config::Config::from_toml(DEFAULT_CONFIG, "default", &[]).unwrap();
        let config = &config.datasets;
        assert!(check_device_scope(config, "copenhagen", &["weather".into()]).is_ok());
        let err = check_device_scope(
            config,
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
        assert!(check_device_scope(config, "copenhagen", &[]).is_err());
    }
}
