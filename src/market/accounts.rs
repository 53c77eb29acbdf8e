//! Accounts: who is behind keys. An `admin` runs the marketplace, a `provider` (the city, a
//! utility, a company) publishes datasets, a `subscriber` buys access. Each has an
//! organisation name and a sector, which is what providers learn about who uses their data.

use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;

use super::error::Error;
use super::ids::random_alnum;
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

fn account_from_row(row: &AnyRow) -> Result<Account, Error> {
    let role: String = row.try_get(1)?;
    Ok(Account {
        id: row.try_get(0)?,
        role: Role::parse(&role)
            .ok_or_else(|| Error::Invalid(format!("unknown role `{role}` in database")))?,
        name: row.try_get(2)?,
        sector: row.try_get(3)?,
        email: row.try_get(4)?,
        created_at: row.try_get(5)?,
    })
}

const ACCOUNT_COLUMNS: &str = "id, role, name, sector, email, created_at";

impl Store {
    /// Creates an account. An id already taken is an error.
    pub async fn create_account(&self, new: NewAccount) -> Result<Account, Error> {
        let problems = new.problems();
        if !problems.is_empty() {
            return Err(Error::Invalid(problems.join("; ")));
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
            return Err(Error::Invalid(format!(
                "id: account `{}` exists",
                account.id
            )));
        }
        Ok(account)
    }

    pub async fn account(&self, id: &str) -> Result<Option<Account>, Error> {
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

    pub async fn list_accounts(&self) -> Result<Vec<Account>, Error> {
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
    pub async fn ensure_provider(&self, id: &str, name: &str) -> Result<(), Error> {
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
            Some(a) => Err(Error::Invalid(format!(
                "provider `{id}` of the config is a {} account in the database",
                a.role.as_str()
            ))),
            None => Err(Error::NotFound(format!("account `{id}` vanished"))),
        }
    }
}
