//! The keys table: creating, listing, looking up, revoking and rotating keys, an account
//! with its first key, and the first start's administrator. Only secret hashes are stored.

use std::collections::HashMap;
use std::time::Duration;

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{
    ApiKey, KeyKind, KeySpec, NewKey, SECRET_PREFIX, SECRET_RANDOM_LEN, hash_hex,
    looks_like_secret, new_secret,
};
use crate::market::accounts::{ADMIN_ACCOUNT, Account, NewAccount, Role};
use crate::market::error::Error;
use crate::market::ids::random_alnum;
use crate::market::store::Store;
use crate::model::now_micros;

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
