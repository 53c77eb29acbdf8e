//! Browser sessions for the web console. A browser signs in once with its API key
//! (`POST /v1/sessions`) and gets a short-lived session cookie (`HttpOnly`,
//! `SameSite=Strict`, `Secure` when the gateway is reached over https) and a CSRF token, so
//! the long-lived key never goes into a URL, a page or a log line. A request that carries
//! the cookie and no `Authorization` acts as the key ([`resolve`]); every state-changing one
//! must also carry the token in `X-CSRF-Token`. Signing out (`DELETE
//! /v1/sessions/current`) ends the session on the server. The key itself is checked on every
//! request, so a revoked key's sessions stop with it. Sessions live in the marketplace
//! database, so every node sharing it knows them and a restart keeps them (at most
//! [`MAX_SESSIONS`], [`PER_KEY`] of one key, for [`TTL`] each). The database holds the
//! SHA-256 of the cookie and of the CSRF token, and the key's secret sealed under the cookie:
//! without the browser's cookie a row opens nothing.
//!
//! The cookie counts only on the gateway's own pages: a request that a browser says came
//! from another origin (`Sec-Fetch-Site`, else `Origin`), a sibling subdomain included,
//! is served as if it had no cookie. Over https the cookie is `__Host-cg_session`, which no
//! other host can set; a request with two session cookies uses neither.

use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::AppState;
use super::auth::require_key_with_secret;
use super::error::ApiError;
use crate::market::Store;
use crate::market::sessions::NewSession;
use crate::model::{Micros, now_micros};

/// The session cookie's name over plain http...
pub(crate) const COOKIE: &str = "cg_session";
/// ...and over https (a `__Host-` cookie: set only by this host, for every path).
pub(crate) const SECURE_COOKIE: &str = "__Host-cg_session";
/// The header a signed-in browser sends its CSRF token in.
pub(crate) const CSRF_HEADER: &str = "x-csrf-token";
/// How long a session lasts from sign-in.
pub(crate) const TTL: Duration = Duration::from_secs(8 * 3600);
/// Sessions held at once; past it (after dropping expired ones) sign-in answers 503.
pub(crate) const MAX_SESSIONS: usize = 100_000;
/// Sessions one key holds at once; a new one ends its oldest.
pub(crate) const PER_KEY: usize = 10;

/// The open sessions, in the marketplace database (every node sharing it knows them).
#[derive(Debug, Clone)]
pub struct Sessions {
    store: Store,
}

/// A live session, as a request uses it.
#[derive(Clone)]
struct Session {
    /// The key the browser signed in with (unsealed with the cookie, never sent back).
    secret: String,
    /// The SHA-256 of the session's CSRF token.
    csrf_hash: [u8; 32],
}

/// A request [`resolve`] let in on a session cookie.
#[derive(Clone, Copy, Debug)]
struct SignedIn;

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    b64(&bytes)
}

/// Seals (or unseals: the same) `data` under the cookie `token`: XOR with SHA-256 blocks of
/// the token in counter mode. Each token is random and seals one secret, so what the
/// database holds tells nothing without the cookie, which only the browser has.
fn seal(token: &str, data: &[u8]) -> Vec<u8> {
    data.chunks(32)
        .enumerate()
        .flat_map(|(i, chunk)| {
            let block = Sha256::new()
                .chain_update(b"citygate browser session seal\0")
                .chain_update(token.as_bytes())
                .chain_update((i as u32).to_be_bytes())
                .finalize();
            chunk
                .iter()
                .zip(block)
                .map(|(a, b)| a ^ b)
                .collect::<Vec<u8>>()
        })
        .collect()
}

/// Equal, in time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What a database error means to a browser: try again.
fn unavailable(e: crate::market::Error) -> ApiError {
    tracing::error!(error = %e, "browser sessions: the database failed");
    ApiError::Unavailable {
        message: "sessions cannot be read right now; try again".into(),
        retry_after: 5,
    }
}

impl Sessions {
    pub fn new(store: Store) -> Sessions {
        Sessions { store }
    }

    /// A new session for key `key` (presented as `secret`): (cookie value, CSRF token).
    /// The key's oldest session ends past [`PER_KEY`].
    async fn open(&self, key: &str, secret: &str) -> Result<(String, String), ApiError> {
        let (token, csrf) = (random_token(), random_token());
        let now = now_micros();
        let opened = self
            .store
            .open_session(
                &b64(&digest(&token)),
                NewSession {
                    key_id: key,
                    sealed: &b64(&seal(&token, secret.as_bytes())),
                    csrf_hash: &b64(&digest(&csrf)),
                    now,
                    expires_at: now + TTL.as_micros() as Micros,
                    per_key: PER_KEY,
                    max: MAX_SESSIONS,
                },
            )
            .await
            .map_err(unavailable)?;
        if !opened {
            return Err(ApiError::Unavailable {
                message: "too many browser sessions are open; try again later".into(),
                retry_after: 60,
            });
        }
        Ok((token, csrf))
    }

    /// The live session of a cookie value (`None` also when the database cannot say: the
    /// request then goes on without it, and the key's own check answers).
    async fn find(&self, token: &str) -> Option<Session> {
        let stored = match self
            .store
            .find_session(&b64(&digest(token)), now_micros())
            .await
        {
            Ok(stored) => stored?,
            Err(e) => {
                tracing::error!(error = %e, "browser sessions: the database failed");
                return None;
            }
        };
        let sealed = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&stored.sealed)
            .ok()?;
        let csrf_hash = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&stored.csrf_hash)
            .ok()?
            .try_into()
            .ok()?;
        let secret = String::from_utf8(seal(token, &sealed)).ok()?;
        Some(Session { secret, csrf_hash })
    }

    /// Ends a session; `false` if there was none.
    async fn close(&self, token: &str) -> Result<bool, ApiError> {
        self.store
            .close_session(&b64(&digest(token)))
            .await
            .map_err(unavailable)
    }
}

/// The session cookie's value in a request: the one cookie named `name` (none when
/// there are two: one may be planted).
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    let mut values = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| {
            let (n, value) = pair.trim().split_once('=')?;
            (n == name && !value.is_empty()).then(|| value.to_string())
        });
    let first = values.next()?;
    values.next().is_none().then_some(first)
}

/// The session cookie's name for this request (`__Host-` over https).
fn cookie_name(state: &AppState, headers: &HeaderMap) -> &'static str {
    if over_https(state, headers) {
        SECURE_COOKIE
    } else {
        COOKIE
    }
}

/// Whether the browser says the request comes from the gateway's own pages (or from no
/// page: a typed address, a bookmark). Without `Sec-Fetch-Site` (older browsers, other
/// clients), an `Origin` must name this host.
fn same_origin(headers: &HeaderMap) -> bool {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = text("sec-fetch-site") {
        return site == "same-origin" || site == "none";
    }
    match (text("origin"), text("host")) {
        (None, _) => true,
        (Some(origin), Some(host)) => origin
            .split_once("://")
            .is_some_and(|(_, rest)| rest.eq_ignore_ascii_case(host)),
        (Some(_), None) => false,
    }
}

/// Lets a request with a live session cookie (and no `Authorization`) act as its key;
/// a state-changing one without the session's CSRF token is refused (403).
pub(crate) async fn resolve(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    if request.headers().contains_key(header::AUTHORIZATION) || !same_origin(request.headers()) {
        return next.run(request).await;
    }
    let name = cookie_name(&state, request.headers());
    let session = match cookie(request.headers(), name) {
        Some(token) => state.sessions.find(&token).await,
        None => None,
    };
    let Some(session) = session else {
        return next.run(request).await;
    };
    if !request.method().is_safe() {
        let token = request
            .headers()
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok());
        if !token.is_some_and(|t| same(&digest(t), &session.csrf_hash)) {
            return ApiError::Forbidden(
                "a signed-in browser sends its session's X-CSRF-Token with every change".into(),
            )
            .into_response();
        }
    }
    if let Ok(value) = HeaderValue::from_str(&format!("Bearer {}", session.secret)) {
        request.headers_mut().insert(header::AUTHORIZATION, value);
        request.extensions_mut().insert(SignedIn);
    }
    let mut response = next.run(request).await;
    // An answer to a cookie is no one else's: no shared cache keeps it.
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.append(header::VARY, HeaderValue::from_static("Cookie"));
    response
}

/// A session opened.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Opened {
    /// Send it as `X-CSRF-Token` with every state-changing request of this session.
    csrf_token: String,
    /// Seconds the session lasts.
    expires_in: u64,
    /// The key signed in with, and its account.
    key: String,
    account: String,
}

/// Whether the browser reached the gateway over https (directly, or as a proxy says).
fn over_https(state: &AppState, headers: &HeaderMap) -> bool {
    state.http.public_url.starts_with("https://")
        || headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|p| p.eq_ignore_ascii_case("https"))
}

fn set_cookie(value: &str, max_age: u64, secure: bool) -> HeaderValue {
    let (name, secure) = if secure {
        (SECURE_COOKIE, "; Secure")
    } else {
        (COOKIE, "")
    };
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
    ))
    .expect("a cookie of URL-safe characters")
}

/// `POST /v1/sessions`
#[utoipa::path(post, path = "/v1/sessions", tag = "accounts", security(("bearer" = [])),
    responses((status = 201,
        description = "signed in: the session cookie (`cg_session`, HttpOnly, SameSite=Strict) \
                       in `Set-Cookie`, and the CSRF token every change must carry",
        body = Opened),
              crate::api::error::Refused,
              (status = 503, description = "too many sessions open; retry after `Retry-After`",
               body = crate::api::error::ErrorSchema)))]
pub(crate) async fn open(
    State(state): State<AppState>,
    request: Request,
) -> Result<Response, ApiError> {
    if request.extensions().get::<SignedIn>().is_some() {
        return Err(ApiError::bad_request(
            "key_required",
            "sign in with the API key itself (Authorization: Bearer <key>), not a session",
        ));
    }
    let headers = request.headers();
    let (secret, key) = require_key_with_secret(&state, headers, None).await?;
    if key.kind == crate::market::KeyKind::Device {
        return Err(ApiError::Forbidden(
            "a device key writes readings; it does not sign in to the console".into(),
        ));
    }
    // Signing in again ends this browser's earlier session.
    if let Some(earlier) = cookie(headers, cookie_name(&state, headers)) {
        state.sessions.close(&earlier).await?;
    }
    let (token, csrf) = state.sessions.open(&key.id, &secret).await?;
    let body = Opened {
        csrf_token: csrf,
        expires_in: TTL.as_secs(),
        key: key.id.to_string(),
        account: key.account.clone(),
    };
    let mut response = (StatusCode::CREATED, axum::Json(body)).into_response();
    let h = response.headers_mut();
    h.insert(
        header::SET_COOKIE,
        set_cookie(&token, TTL.as_secs(), over_https(&state, headers)),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// `DELETE /v1/sessions/current`
#[utoipa::path(delete, path = "/v1/sessions/current", tag = "accounts",
    responses((status = 204, description = "signed out: the session ends on the server and its \
                                            cookie is cleared"),
              crate::api::error::Refused))]
pub(crate) async fn close(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let token = cookie(&headers, cookie_name(&state, &headers)).ok_or(ApiError::Unauthorized)?;
    if !state.sessions.close(&token).await? {
        return Err(ApiError::Unauthorized);
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        set_cookie("", 0, over_https(&state, &headers)),
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sessions_open_find_and_close_by_their_cookie_on_any_node() {
        let (store, _dir) = crate::market::store::tests::fresh_store().await;
        let sessions = Sessions::new(store.clone());
        // Another node on the same database.
        let other = Sessions::new(store.clone());
        let (token, csrf) = sessions.open("key_1", "cg_secret").await.unwrap();
        assert_ne!(token, csrf);
        let found = other.find(&token).await.unwrap();
        assert_eq!(found.secret, "cg_secret");
        assert_eq!(found.csrf_hash, digest(&csrf));
        assert!(sessions.find("forged").await.is_none());
        // The database holds neither the secret nor the cookie.
        let row = store
            .find_session(&b64(&digest(&token)), now_micros())
            .await
            .unwrap()
            .unwrap();
        assert!(!row.sealed.contains("cg_secret") && !row.sealed.contains(&token));
        assert!(other.close(&token).await.unwrap());
        assert!(sessions.find(&token).await.is_none());
        assert!(!sessions.close(&token).await.unwrap());
        // One key holds at most PER_KEY: the oldest end.
        let mut tokens = Vec::new();
        for _ in 0..PER_KEY + 2 {
            tokens.push(sessions.open("key_2", "cg_other").await.unwrap().0);
        }
        assert!(sessions.find(&tokens[0]).await.is_none());
        assert!(sessions.find(&tokens[1]).await.is_none());
        for t in &tokens[2..] {
            assert!(sessions.find(t).await.is_some());
        }
    }

    #[test]
    fn sealing_twice_gives_back_the_secret_and_another_cookie_does_not() {
        let secret = b"cg_0123456789abcdefghijklmnopqrstuvwxyz0123456789";
        let sealed = seal("cookie-a", secret);
        assert_ne!(&sealed[..], &secret[..]);
        assert_eq!(seal("cookie-a", &sealed), secret);
        assert_ne!(seal("cookie-b", &sealed), secret);
    }

    #[test]
    fn the_cookie_is_found_among_others_and_tokens_compare_whole() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; cg_session=abc; b=2"),
        );
        assert_eq!(cookie(&h, COOKIE).as_deref(), Some("abc"));
        h.append(
            header::COOKIE,
            HeaderValue::from_static("cg_session=planted"),
        );
        assert_eq!(cookie(&h, COOKIE), None, "two session cookies: neither");
        assert!(same(b"abc", b"abc") && !same(b"abc", b"abd") && !same(b"abc", b"ab"));
    }

    #[test]
    fn only_the_gateways_own_pages_use_the_cookie() {
        let with = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (name, value) in pairs {
                h.insert(*name, HeaderValue::from_static(value));
            }
            same_origin(&h)
        };
        assert!(with(&[]));
        assert!(with(&[("sec-fetch-site", "same-origin")]));
        assert!(with(&[("sec-fetch-site", "none")]));
        assert!(!with(&[("sec-fetch-site", "same-site")]));
        assert!(!with(&[("sec-fetch-site", "cross-site")]));
        assert!(with(&[("origin", "http://gw:8080"), ("host", "gw:8080")]));
        assert!(!with(&[
            ("origin", "http://evil.gw:8080"),
            ("host", "gw:8080")
        ]));
    }
}
