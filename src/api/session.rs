//! Browser sessions for the web console. A browser signs in once with its API key
//! (`POST /v1/sessions`) and gets a short-lived session cookie (`HttpOnly`,
//! `SameSite=Strict`, `Secure` when the gateway is reached over https) and a CSRF token, so
//! the long-lived key never goes into a URL, a page or a log line. A request that carries
//! the cookie and no `Authorization` acts as the key ([`resolve`]); every state-changing one
//! must also carry the token in `X-CSRF-Token`. Signing out (`DELETE
//! /v1/sessions/current`) ends the session on the server. The key itself is checked on every
//! request, so a revoked key's sessions stop with it. Sessions live in this process's
//! memory (at most [`MAX_SESSIONS`], for [`TTL`] each): a restart signs everyone out.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

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

/// The session cookie's name.
pub(crate) const COOKIE: &str = "cg_session";
/// The header a signed-in browser sends its CSRF token in.
pub(crate) const CSRF_HEADER: &str = "x-csrf-token";
/// How long a session lasts from sign-in.
pub(crate) const TTL: Duration = Duration::from_secs(8 * 3600);
/// Sessions held at once; past it (after dropping expired ones) sign-in answers 503.
pub(crate) const MAX_SESSIONS: usize = 100_000;

/// The open sessions, by the SHA-256 of their cookie value.
#[derive(Default)]
pub struct Sessions {
    open: Mutex<HashMap<[u8; 32], Session>>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.open.lock().map_or(0, |m| m.len());
        f.debug_struct("Sessions").field("open", &n).finish()
    }
}

#[derive(Clone)]
struct Session {
    /// The key the browser signed in with (kept here, never sent back).
    secret: String,
    csrf: String,
    expires: Instant,
}

/// A request [`resolve`] let in on a session cookie.
#[derive(Clone, Copy, Debug)]
struct SignedIn;

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Equal, in time that does not depend on where they differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

impl Sessions {
    /// A new session for `secret`: (cookie value, CSRF token).
    fn open(&self, secret: String) -> Result<(String, String), ApiError> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if open.len() >= MAX_SESSIONS {
            open.retain(|_, s| s.expires > now);
        }
        if open.len() >= MAX_SESSIONS {
            return Err(ApiError::Unavailable {
                message: "too many browser sessions are open; try again later".into(),
                retry_after: 60,
            });
        }
        let (token, csrf) = (random_token(), random_token());
        open.insert(
            digest(&token),
            Session {
                secret,
                csrf: csrf.clone(),
                expires: now + TTL,
            },
        );
        Ok((token, csrf))
    }

    /// The live session of a cookie value (an expired one is forgotten).
    fn find(&self, token: &str) -> Option<Session> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let id = digest(token);
        match open.get(&id) {
            Some(s) if s.expires > Instant::now() => Some(s.clone()),
            Some(_) => {
                open.remove(&id);
                None
            }
            None => None,
        }
    }

    /// Ends a session; `false` if there was none.
    fn close(&self, token: &str) -> bool {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.remove(&digest(token)).is_some()
    }
}

/// The session cookie's value in a request.
fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == COOKIE && !value.is_empty()).then(|| value.to_string())
        })
}

/// Lets a request with a live session cookie (and no `Authorization`) act as its key;
/// a state-changing one without the session's CSRF token is refused (403).
pub(crate) async fn resolve(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    if request.headers().contains_key(header::AUTHORIZATION) {
        return next.run(request).await;
    }
    let Some(session) = cookie(request.headers()).and_then(|t| state.sessions.find(&t)) else {
        return next.run(request).await;
    };
    if !request.method().is_safe() {
        let token = request
            .headers()
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok());
        if !token.is_some_and(|t| same(t, &session.csrf)) {
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
    next.run(request).await
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
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
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
    let (token, csrf) = state.sessions.open(secret)?;
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
    let token = cookie(&headers).ok_or(ApiError::Unauthorized)?;
    if !state.sessions.close(&token) {
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

    #[test]
    fn sessions_open_find_and_close_by_their_cookie() {
        let sessions = Sessions::default();
        let (token, csrf) = sessions.open("cg_secret".into()).unwrap();
        assert_ne!(token, csrf);
        assert_eq!(sessions.find(&token).unwrap().secret, "cg_secret");
        assert!(sessions.find("forged").is_none());
        assert!(sessions.close(&token));
        assert!(sessions.find(&token).is_none());
        assert!(!sessions.close(&token));
    }

    #[test]
    fn the_cookie_is_found_among_others_and_tokens_compare_whole() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; cg_session=abc; b=2"),
        );
        assert_eq!(cookie(&h).as_deref(), Some("abc"));
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "ab"));
    }
}
