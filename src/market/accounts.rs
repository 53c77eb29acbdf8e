//! Accounts: who is behind keys. An `admin` runs the marketplace, a `provider` (the city, a
//! utility, a company) publishes datasets, a `subscriber` buys access. Each has an
//! organisation name and a sector, which is what providers learn about who uses their data.

use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;

use super::keys::{KeyError, KeyKind, KeySpec, NewKey, looks_like_secret, random_alnum};
use super::store::Store;
use crate::model::{Micros, now_micros};

/// The id of the account the first start creates.
pub const ADMIN_ACCOUNT: &str = "admin";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Provider,
    Subscriber,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Provider => "provider",
            Role::Subscriber => "subscriber",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "provider" => Some(Role::Provider),
            "subscriber" => Some(Role::Subscriber),
            _ => None,
        }
    }

    /// The kind of the key an account of this role is given first.
    pub fn key_kind(self) -> KeyKind {
        match self {
            Role::Admin => KeyKind::Admin,
            Role::Provider => KeyKind::Provider,
            Role::Subscriber => KeyKind::Subscriber,
        }
    }
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Account {
    pub id: String,
    pub role: Role,
    /// Organisation name.
    pub name: String,
    /// e.g. `mobility`, `energy`, `research`, `public`.
    pub sector: String,
    pub email: Option<String>,
    pub created_at: Micros,
}

/// A new account as asked for; the id is generated unless given.
#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
pub struct NewAccount {
    #[serde(default)]
    pub id: Option<String>,
    pub role: Role,
    pub name: String,
    pub sector: String,
    #[serde(default)]
    pub email: Option<String>,
}

/// Whether `s` may be an id (accounts, datasets, plans): 1–64 of `[a-z0-9_-]`, starting
/// with a letter or digit.
pub fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

impl NewAccount {
    /// Every problem with this account, each naming its field.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if let Some(id) = &self.id
            && !valid_id(id)
        {
            p.push(format!(
                "id: `{id}` must be 1-64 of a-z, 0-9, - and _, starting with a letter or digit"
            ));
        }
        if self.name.trim().is_empty() || self.name.len() > 200 {
            p.push("name: must be 1-200 characters".into());
        }
        let sector_ok = !self.sector.is_empty()
            && self.sector.len() <= 32
            && self
                .sector
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'-');
        if !sector_ok {
            p.push(format!(
                "sector: `{}` must be 1-32 of a-z and - (e.g. mobility, energy, research, public)",
                self.sector
            ));
        }
        if let Some(email) = &self.email
            && (!email.contains('@') || email.len() > 254)
        {
            p.push(format!("email: `{email}` is not an e-mail address"));
        }
        p
    }
}

fn account_from_row(row: &AnyRow) -> Result<Account, KeyError> {
    let role: String = row.try_get(1)?;
    Ok(Account {
        id: row.try_get(0)?,
        role: Role::parse(&role)
            .ok_or_else(|| KeyError::Invalid(format!("unknown role `{role}` in database")))?,
        name: row.try_get(2)?,
        sector: row.try_get(3)?,
        email: row.try_get(4)?,
        created_at: row.try_get(5)?,
    })
}

const ACCOUNT_COLUMNS: &str = "id, role, name, sector, email, created_at";

impl Store {
    /// Creates an account. An id already taken is an error.
    pub async fn create_account(&self, new: NewAccount) -> Result<Account, KeyError> {
        let problems = new.problems();
        if !problems.is_empty() {
            return Err(KeyError::Invalid(problems.join("; ")));
        }
        let account = Account {
            id: new
                .id
                .unwrap_or_else(|| format!("acc_{}", random_alnum(12).to_ascii_lowercase())),
            role: new.role,
            name: new.name.trim().to_string(),
            sector: new.sector,
            email: new.email,
            created_at: now_micros(),
        };
        let done = sqlx::query(
            "INSERT INTO accounts (id, role, name, sector, email, created_at)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING",
        )
        .bind(&account.id)
        .bind(account.role.as_str())
        .bind(&account.name)
        .bind(&account.sector)
        .bind(&account.email)
        .bind(account.created_at)
        .execute(self.pool())
        .await?;
        if done.rows_affected() == 0 {
            return Err(KeyError::Invalid(format!(
                "id: account `{}` exists",
                account.id
            )));
        }
        Ok(account)
    }

    /// Creates an account and its first key (of the kind its role uses).
    pub async fn create_account_with_key(
        &self,
        new: NewAccount,
    ) -> Result<(Account, NewKey), KeyError> {
        let account = self.create_account(new).await?;
        let key = self
            .create_key_with(KeySpec {
                kind: account.role.key_kind(),
                account: account.id.clone(),
                label: "first key".into(),
                datasets: Vec::new(),
                expires_at: None,
            })
            .await?;
        Ok((account, key))
    }

    pub async fn account(&self, id: &str) -> Result<Option<Account>, KeyError> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(self.pool())
        .await?
        .as_ref()
        .map(account_from_row)
        .transpose()
    }

    pub async fn list_accounts(&self) -> Result<Vec<Account>, KeyError> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ACCOUNT_COLUMNS} FROM accounts ORDER BY created_at, id"
        )))
        .fetch_all(self.pool())
        .await?
        .iter()
        .map(account_from_row)
        .collect()
    }

    /// Makes sure provider account `id` exists (datasets in the config name their provider).
    /// An existing account of another role is an error.
    pub async fn ensure_provider(&self, id: &str, name: &str) -> Result<(), KeyError> {
        sqlx::query(
            "INSERT INTO accounts (id, role, name, sector, created_at)
             VALUES ($1, 'provider', $2, 'public', $3) ON CONFLICT (id) DO NOTHING",
        )
        .bind(id)
        .bind(name)
        .bind(now_micros())
        .execute(self.pool())
        .await?;
        match self.account(id).await? {
            Some(a) if a.role == Role::Provider => Ok(()),
            Some(a) => Err(KeyError::Invalid(format!(
                "provider `{id}` of the config is a {} account in the database",
                a.role.as_str()
            ))),
            None => Err(KeyError::NotFound(format!("account `{id}` vanished"))),
        }
    }

    /// The first start's administrator. With `given` (the operator's `CITYGATE_ADMIN_KEY`),
    /// makes sure that secret is a live admin key; otherwise, when no admin account exists
    /// yet, creates one with a fresh key. Returns a secret to show once, if one was made.
    pub async fn bootstrap_admin(&self, given: Option<&str>) -> Result<Option<String>, KeyError> {
        if let Some(secret) = given
            && !looks_like_secret(secret)
        {
            return Err(KeyError::Invalid(
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
                    return Err(KeyError::Invalid(
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
