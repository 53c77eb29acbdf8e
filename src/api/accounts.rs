//! Accounts and keys over HTTP.
//!
//! | route | who | what |
//! |---|---|---|
//! | `GET /v1/me` | any key | the key and its account |
//! | `POST /v1/accounts` | admin | create an account and its first key (secret shown once) |
//! | `GET /v1/accounts` | admin | every account |
//! | `GET /v1/accounts/{id}` | admin, or the account's own keys | one account |
//! | `GET /v1/keys` | admin, provider, subscriber | own keys (admin: `?account=`, or all) |
//! | `POST /v1/keys` | admin, provider, subscriber | a new key (secret shown once) |
//! | `POST /v1/keys/{id}/rotate` | the key's account, admin | successor; the old key lives `overlap` |
//! | `DELETE /v1/keys/{id}` | the key's account, admin | revoke (effective within 1 s) |
//!
//! A key never makes or manages one that reaches further than itself: a key limited to
//! some datasets makes keys limited to (some of) those, an expiring key makes keys that
//! expire no later (both are inherited when the request does not say), and it may rotate or
//! revoke only itself and keys within its own reach, never the account's wider keys.
//! What a key may not see answers 404, as if it did not exist.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::auth::require_key;
use super::error::{ApiError, ApiJson};
use crate::market::keys::{KeySpec, NewKey};
use crate::market::{Account, ApiKey, KeyKind, NewAccount};
use crate::model::now_micros;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Me {
    key: ApiKey,
    account: Account,
}

/// `GET /v1/me`
#[utoipa::path(get, path = "/v1/me", tag = "accounts", security(("bearer" = [])),
    responses((status = 200, description = "the key and its account", body = Me),
              crate::api::error::Refused))]
pub(crate) async fn me(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Me>, ApiError> {
    let key = require_key(&state, &headers, None).await?;
    let mut account = state
        .keyring
        .account(&key.account)
        .await?
        .ok_or(ApiError::Unauthorized)?;
    // A device key sits in a field device: it learns its account, not the people behind it.
    if key.kind == KeyKind::Device {
        account.email = None;
    }
    Ok(Json(Me {
        key: (*key).clone(),
        account,
    }))
}

/// A key as created: its record and its secret, shown this once.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct CreatedKey {
    key: ApiKey,
    secret: String,
}

impl From<NewKey> for CreatedKey {
    fn from(new: NewKey) -> Self {
        CreatedKey {
            key: new.key,
            secret: new.secret,
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct CreatedAccount {
    account: Account,
    key: CreatedKey,
}

/// `POST /v1/accounts` (admin)
#[utoipa::path(post, path = "/v1/accounts", tag = "accounts", security(("bearer" = [])),
    request_body = NewAccount,
    responses((status = 201, description = "the account and its first key (secret shown once)",
               body = CreatedAccount),
              crate::api::error::Refused))]
pub(crate) async fn create_account(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(new): ApiJson<NewAccount>,
) -> Result<(StatusCode, Json<CreatedAccount>), ApiError> {
    let key = require_key(&state, &headers, None).await?;
    if !key.is_admin() {
        return Err(ApiError::Forbidden(
            "only an admin key may create accounts".into(),
        ));
    }
    let (account, first) = state.keyring.create_account_with_key(new).await?;
    tracing::info!(account = %account.id, role = account.role.as_str(), by = %key.id, "account created");
    Ok((
        StatusCode::CREATED,
        Json(CreatedAccount {
            account,
            key: first.into(),
        }),
    ))
}

/// `GET /v1/accounts` (admin)
#[utoipa::path(get, path = "/v1/accounts", tag = "accounts", security(("bearer" = [])),
    responses((status = 200, description = "every account", body = Vec<Account>),
              crate::api::error::Refused))]
pub(crate) async fn list_accounts(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Vec<Account>>, ApiError> {
    let key = require_key(&state, &headers, None).await?;
    if !key.is_admin() {
        return Err(ApiError::Forbidden(
            "only an admin key may list accounts".into(),
        ));
    }
    Ok(Json(state.keyring.list_accounts().await?))
}

/// `GET /v1/accounts/{id}`
#[utoipa::path(get, path = "/v1/accounts/{id}", tag = "accounts", security(("bearer" = [])),
    params(("id" = String, Path, description = "the account")),
    responses((status = 200, description = "the account", body = Account),
              crate::api::error::Refused))]
pub(crate) async fn show_account(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Account>, ApiError> {
    let key = require_key(&state, &headers, None).await?;
    let not_found = || ApiError::NotFound(format!("no account `{id}`"));
    if !key.is_admin() && key.account != id {
        return Err(not_found());
    }
    let mut account = state.keyring.account(&id).await?.ok_or_else(not_found)?;
    // As at /v1/me: a device key learns its account, not the people behind it.
    if key.kind == KeyKind::Device {
        account.email = None;
    }
    Ok(Json(account))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct KeysQuery {
    /// Admin only: the keys of this account.
    account: Option<String>,
}

/// A key that manages keys: admin, provider or subscriber (device keys only write readings).
fn manager(key: &ApiKey) -> Result<(), ApiError> {
    if key.kind == KeyKind::Device || !key.is_live(now_micros()) {
        return Err(ApiError::Forbidden(
            "a device key only writes readings; use a provider key".into(),
        ));
    }
    Ok(())
}

/// `GET /v1/keys`
#[utoipa::path(get, path = "/v1/keys", tag = "accounts", security(("bearer" = [])),
    params(KeysQuery),
    responses((status = 200, description = "keys (never their secrets)", body = Vec<ApiKey>),
              crate::api::error::Refused))]
pub(crate) async fn list_keys(
    State(state): State<AppState>,
    Query(q): Query<KeysQuery>,
    headers: HeaderMap,
) -> Result<Json<Vec<ApiKey>>, ApiError> {
    let key = require_key(&state, &headers, None).await?;
    manager(&key)?;
    let store = &state.keyring;
    let keys = match (key.is_admin(), q.account) {
        (true, None) => store.list_keys().await?,
        (true, Some(account)) => store.account_keys(&account).await?,
        (false, Some(account)) if account != key.account => Vec::new(),
        (false, _) => store.account_keys(&key.account).await?,
    };
    Ok(Json(keys))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(crate) struct NewKeyRequest {
    /// Default: the caller's account. Only an admin names another.
    account: Option<String>,
    /// Default: the kind the account's role uses.
    kind: Option<KeyKind>,
    #[serde(default)]
    label: String,
    #[serde(default)]
    datasets: Vec<String>,
    /// e.g. `"90d"`; default: no expiry.
    expires_in: Option<String>,
}

fn parse_duration(field: &str, text: &str) -> Result<Duration, ApiError> {
    humantime::parse_duration(text)
        .map_err(|e| ApiError::bad_request("invalid_duration", format!("{field}: `{text}`: {e}")))
}

/// `POST /v1/keys`
#[utoipa::path(post, path = "/v1/keys", tag = "accounts", security(("bearer" = [])),
    request_body = NewKeyRequest,
    responses((status = 201, description = "the key and its secret, shown once", body = CreatedKey),
              crate::api::error::Refused))]
pub(crate) async fn create_key(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<NewKeyRequest>,
) -> Result<(StatusCode, Json<CreatedKey>), ApiError> {
    let key = require_key(&state, &headers, None).await?;
    manager(&key)?;
    let store = &state.keyring;
    let account_id = req.account.unwrap_or_else(|| key.account.clone());
    if !key.is_admin() && account_id != key.account {
        return Err(ApiError::NotFound(format!("no account `{account_id}`")));
    }
    let account = store
        .account(&account_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no account `{account_id}`")))?;
    let kind = req.kind.unwrap_or(KeyKind::first_of(account.role));
    if kind == KeyKind::Device {
        // A device key writes to its provider's own datasets.
        let mut problems = Vec::new();
        for id in &req.datasets {
            match state.registry.get(id) {
                Some(p) if p.dataset.provider == account.id => {}
                _ => problems.push(format!("`{id}` is not a dataset of `{}`", account.id)),
            }
        }
        if !problems.is_empty() {
            return Err(ApiError::bad_request("invalid_key", problems.join("; ")));
        }
    }
    let mut expires_at = match &req.expires_in {
        Some(text) => {
            let d = parse_duration("expires_in", text)?;
            Some(now_micros().saturating_add(d.as_micros().min(i64::MAX as u128) as i64))
        }
        None => None,
    };
    let mut datasets = req.datasets;
    if !key.is_admin() {
        // What the request leaves open, the new key inherits from the one making it.
        if expires_at.is_none() {
            expires_at = key.expires_at;
        }
        if datasets.is_empty() && kind != KeyKind::Device {
            datasets = key.datasets.clone();
        }
        if !within(&datasets, expires_at, &key) {
            return Err(ApiError::Forbidden(format!(
                "key {} may not make a key that reaches further than itself \
                 (datasets {:?}, expiry {})",
                key.id,
                key.datasets,
                key.expires_at.map_or("never".into(), |t| t.to_string())
            )));
        }
    }
    let new = store
        .create_key_with(KeySpec {
            kind,
            account: account.id,
            label: req.label,
            datasets,
            expires_at,
        })
        .await?;
    tracing::info!(key = %new.key.id, kind = kind.as_str(), account = %new.key.account, by = %key.id, "key created");
    Ok((StatusCode::CREATED, Json(new.into())))
}

/// Whether a key of `datasets` expiring at `expires_at` reaches no further than `maker`:
/// no dataset `maker` is not limited to, and no later expiry. (An empty list is every
/// dataset of the account; a device key's list names what it writes, which a provider key
/// covers whole.)
fn within(datasets: &[String], expires_at: Option<crate::model::Micros>, maker: &ApiKey) -> bool {
    let datasets_ok = maker.datasets.is_empty()
        || (!datasets.is_empty() && datasets.iter().all(|d| maker.datasets.contains(d)));
    let expiry_ok = match (maker.expires_at, expires_at) {
        (None, _) => true,
        (Some(limit), Some(t)) => t <= limit,
        (Some(_), None) => false,
    };
    datasets_ok && expiry_ok
}

/// The key `id` if the caller may manage it: any for an admin; otherwise a key of its own
/// account within the caller's own reach (itself included).
async fn own_key(state: &AppState, caller: &ApiKey, id: &str) -> Result<ApiKey, ApiError> {
    manager(caller)?;
    let not_found = || ApiError::NotFound(format!("no key `{id}`"));
    let target = state.keyring.key(id).await?.ok_or_else(not_found)?;
    let manages = caller.is_admin()
        || (target.account == caller.account
            && (target.id == caller.id || within(&target.datasets, target.expires_at, caller)));
    if manages {
        Ok(target)
    } else {
        Err(not_found())
    }
}

#[derive(Debug, Deserialize, Default, utoipa::ToSchema)]
pub(crate) struct RotateRequest {
    /// How long the old key keeps working, e.g. `"1h"` (default 24 h).
    overlap: Option<String>,
}

/// `POST /v1/keys/{id}/rotate`
#[utoipa::path(post, path = "/v1/keys/{id}/rotate", tag = "accounts", security(("bearer" = [])),
    params(("id" = String, Path, description = "the key")),
    request_body(content = Option<RotateRequest>, description = "optional: the overlap"),
    responses((status = 201, description = "the successor and its secret", body = CreatedKey),
              crate::api::error::Refused))]
pub(crate) async fn rotate_key(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<CreatedKey>), ApiError> {
    let caller = require_key(&state, &headers, None).await?;
    own_key(&state, &caller, &id).await?;
    // The body is optional: none means the default overlap.
    let req: RotateRequest = if body.is_empty() {
        RotateRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request("invalid_json", e.to_string()))?
    };
    let overlap = match &req.overlap {
        Some(text) => parse_duration("overlap", text)?,
        None => Duration::from_secs(24 * 3600),
    };
    let new = state.keyring.rotate_key(&id, overlap).await?;
    tracing::info!(old = %id, new = %new.key.id, by = %caller.id, "key rotated");
    Ok((StatusCode::CREATED, Json(new.into())))
}

/// `DELETE /v1/keys/{id}`
#[utoipa::path(delete, path = "/v1/keys/{id}", tag = "accounts", security(("bearer" = [])),
    params(("id" = String, Path, description = "the key")),
    responses((status = 204, description = "revoked (within a second everywhere)"),
              crate::api::error::Refused))]
pub(crate) async fn revoke_key(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let caller = require_key(&state, &headers, None).await?;
    own_key(&state, &caller, &id).await?;
    if state.keyring.revoke_key(&id).await? {
        tracing::info!(key = %id, by = %caller.id, "key revoked");
    }
    Ok(StatusCode::NO_CONTENT)
}
