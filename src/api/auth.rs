//! Finding the API key of a request: `Authorization: Bearer <key>`, `Token <key>` (the
//! InfluxDB form), `Basic` (password, or user when the password is empty), or a query
//! parameter where a protocol needs one (InfluxDB v1 `p=`).

use std::sync::Arc;

use axum::http::{HeaderMap, header};
use base64::Engine;

use super::AppState;
use super::error::ApiError;
use crate::market::ApiKey;

/// The secret a request presents, if any.
pub(crate) fn presented_secret(headers: &HeaderMap, query_secret: Option<&str>) -> Option<String> {
    if let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let (scheme, rest) = value.trim().split_once(' ').unwrap_or((value, ""));
        let rest = rest.trim();
        if scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("token") {
            return Some(rest.to_string());
        }
        if scheme.eq_ignore_ascii_case("basic") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(rest)
                .ok()?;
            let text = String::from_utf8(decoded).ok()?;
            let (user, password) = text.split_once(':').unwrap_or((&text, ""));
            return Some(if password.is_empty() { user } else { password }.to_string());
        }
        return None;
    }
    query_secret.filter(|s| !s.is_empty()).map(str::to_string)
}

/// The live key of the request, or 401.
pub(crate) async fn require_key(
    state: &AppState,
    headers: &HeaderMap,
    query_secret: Option<&str>,
) -> Result<Arc<ApiKey>, ApiError> {
    Ok(require_key_with_secret(state, headers, query_secret)
        .await?
        .1)
}

/// [`require_key`] and the secret it was presented with (live feeds check it again as
/// time passes).
pub(crate) async fn require_key_with_secret(
    state: &AppState,
    headers: &HeaderMap,
    query_secret: Option<&str>,
) -> Result<(String, Arc<ApiKey>), ApiError> {
    let secret = presented_secret(headers, query_secret).ok_or(ApiError::Unauthorized)?;
    let key = state
        .keyring
        .authenticate(&secret)
        .await?
        .ok_or(ApiError::Unauthorized)?;
    Ok((secret, key))
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn with_auth(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn schemes() {
        assert_eq!(
            presented_secret(&with_auth("Bearer cg_x"), None).as_deref(),
            Some("cg_x")
        );
        assert_eq!(
            presented_secret(&with_auth("Token cg_y"), None).as_deref(),
            Some("cg_y")
        );
        assert_eq!(
            presented_secret(&with_auth("token  cg_y "), None).as_deref(),
            Some("cg_y")
        );
        // "user:cg_z" and "cg_w:" in base64
        assert_eq!(
            presented_secret(&with_auth("Basic dXNlcjpjZ196"), None).as_deref(),
            Some("cg_z")
        );
        assert_eq!(
            presented_secret(&with_auth("Basic Y2dfdzo="), None).as_deref(),
            Some("cg_w")
        );
        assert_eq!(
            presented_secret(&with_auth("Digest abc"), Some("cg_q")),
            None
        );
        assert_eq!(
            presented_secret(&HeaderMap::new(), Some("cg_q")).as_deref(),
            Some("cg_q")
        );
        assert_eq!(presented_secret(&HeaderMap::new(), None), None);
    }
}
