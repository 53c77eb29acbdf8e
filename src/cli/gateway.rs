//! A running gateway's HTTP API as the command line uses it (`--api URL --api-key KEY`):
//! JSON in, JSON out, and a refusal as the API words it.

use anyhow::{Context, Result, bail};
use reqwest::Method;
use serde_json::Value;

pub(super) struct Gateway {
    base: reqwest::Url,
    key: String,
    client: reqwest::Client,
}

impl Gateway {
    pub(super) fn new(url: &str, key: &str) -> Result<Gateway> {
        let base = reqwest::Url::parse(url)
            .with_context(|| format!("--api `{url}`: expected a URL like http://127.0.0.1:8080"))?;
        if !matches!(base.scheme(), "http" | "https") {
            bail!("--api `{url}`: expected an http:// or https:// URL");
        }
        if key.is_empty() {
            bail!(
                "--api needs a key: --api-key KEY or CITYGATE_API_KEY (an admin key, or a provider key for its own keys and plans)"
            );
        }
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .context("building the HTTP client")?;
        Ok(Gateway {
            base,
            key: key.to_string(),
            client,
        })
    }

    /// Where the commands go, for the line that says so.
    pub(super) fn describe(&self) -> String {
        format!(
            "the gateway at {}",
            self.base.as_str().trim_end_matches('/')
        )
    }

    pub(super) async fn get(&self, path: &str) -> Result<Value> {
        self.call(Method::GET, path, None).await
    }

    pub(super) async fn post(&self, path: &str, body: Value) -> Result<Value> {
        self.call(Method::POST, path, Some(body)).await
    }

    pub(super) async fn delete(&self, path: &str) -> Result<Value> {
        self.call(Method::DELETE, path, None).await
    }

    /// One request; a 2xx answer's JSON (`null` when empty), or the API's refusal as the
    /// error (`404 not_found: no key `k_1``).
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value> {
        let url = self
            .base
            .join(path)
            .with_context(|| format!("{path}: not a path"))?;
        let mut request = self
            .client
            .request(method.clone(), url.clone())
            .bearer_auth(&self.key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("{method} {url}: is the gateway running there?"))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .with_context(|| format!("{method} {url}: reading the answer"))?;
        let value: Value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if status.is_success() {
            return Ok(value);
        }
        let message = value["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| value.to_string());
        let code = value["error"].as_str().unwrap_or("refused");
        bail!("{} {code}: {message}", status.as_u16())
    }
}

/// `s` as one segment of a URL path or a query value.
pub(super) fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
