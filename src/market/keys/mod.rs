//! API keys: random secrets shown once, stored only as SHA-256, looked up by hash.
//!
//! A secret is `cg_` followed by 43 characters of `[A-Za-z0-9]` (256 bits). Its public id
//! (`key_…`) is what lists, logs and rate limits use; the secret itself is never logged.
//! Every key belongs to an account and has a kind matching the account's role: `admin`,
//! `provider`, `subscriber`, or `device` (a provider's key that writes readings to named
//! datasets). A key may expire; rotating one issues a successor with the same scope and lets
//! the old one live on for an overlap. Revocation and expiry take effect within
//! [`KEY_CACHE_TTL`](super::keyring::KEY_CACHE_TTL) everywhere, the lifetime of a cached lookup.

use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::accounts::Role;
use super::error::Error;
use super::ids::random_alnum;
use crate::config::DatasetConfig;
use crate::model::{Micros, now_micros};

mod db;
#[cfg(test)]
mod tests;

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
