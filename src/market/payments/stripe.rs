//! Stripe: subscribers pay by card through Stripe; Stripe's signed webhooks confirm each
//! paid period.
//!
//! The flow is Stripe's "collect a payment method, then subscribe" (Stripe Elements):
//! 1. On subscribe, citygate makes sure the account has a Stripe Customer and the plan a
//!    Stripe Plan (`citygate_{plan}`, monthly; a metered plan's Stripe price is 0: its usage
//!    is billed on citygate's invoices), and creates a SetupIntent. The subscriber gets its
//!    `client_secret` and confirms it with Stripe (Stripe.js in a browser; any HTTP client).
//! 2. `POST /v1/subscriptions/{id}/checkout/complete`: citygate checks the SetupIntent
//!    succeeded, makes its card the customer's default and creates the Stripe Subscription
//!    (metadata `citygate_subscription`). Stripe charges the first period.
//! 3. `invoice.payment_succeeded` (or `invoice.paid`) activates the subscription until the
//!    invoice's period end, and each renewal extends it; `invoice.payment_failed` makes it
//!    past due; `customer.subscription.deleted` ends it.
//!
//! Stripe's hosted Checkout Sessions would replace steps 1–2 with a redirect; this flow is
//! used instead because it is what the Stripe-API server the tests run against
//! (`localstripe`) implements, and it needs no browser redirect for API-only subscribers.
//!
//! Webhooks are verified before they are parsed: `Stripe-Signature: t=…,v1=…[,v1=…]`,
//! HMAC-SHA256 over `{t}.{raw body}` with any configured signing secret, compared in constant
//! time, `t` within the tolerance.

use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use sqlx::Row;

use super::{Checkout, CheckoutRequest, PaymentError};
use crate::config::StripeConfig;
use crate::market::plans::{Plan, PlanKind};
use crate::market::store::Store;
use crate::market::subscriptions::Subscription;

pub struct Stripe {
    client: reqwest::Client,
    api_base: String,
    secret_key: String,
    webhook_secrets: Vec<String>,
    tolerance: Duration,
}

/// Without the secrets.
impl std::fmt::Debug for Stripe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stripe")
            .field("api_base", &self.api_base)
            .field("webhook_secrets", &self.webhook_secrets.len())
            .field("tolerance", &self.tolerance)
            .finish_non_exhaustive()
    }
}

/// Why a webhook was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("no Stripe-Signature header")]
    Missing,
    #[error("the Stripe-Signature header has no timestamp or no v1 signature")]
    Malformed,
    #[error("the signature's timestamp is outside the tolerance (replayed or clock skew)")]
    Stale,
    #[error("no signature matches a configured signing secret")]
    Mismatch,
}

/// `v1` signatures one `Stripe-Signature` header may carry: Stripe sends one per signing
/// secret in force (two while a secret is rolled).
pub const MAX_SIGNATURES: usize = 8;

/// Checks a `Stripe-Signature` header over `body` at unix time `now` against `secrets`.
///
/// The work is bounded whatever the header holds: only well-formed entries (`v1=` and 64
/// hex digits) count, at most [`MAX_SIGNATURES`] of them, and the body is hashed once per
/// secret, not once per signature.
pub fn verify_signature(
    header: Option<&str>,
    body: &[u8],
    secrets: &[String],
    tolerance: Duration,
    now: i64,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let mut timestamp = None;
    let mut signatures: Vec<[u8; 32]> = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = t.parse::<i64>().ok(),
            Some(("v1", sig)) => {
                let sig = hex_decode_32(sig).ok_or(SignatureError::Malformed)?;
                if signatures.len() == MAX_SIGNATURES {
                    return Err(SignatureError::Malformed);
                }
                signatures.push(sig);
            }
            _ => {}
        }
    }
    let t = timestamp.ok_or(SignatureError::Malformed)?;
    if signatures.is_empty() {
        return Err(SignatureError::Malformed);
    }
    if now.abs_diff(t) > tolerance.as_secs() {
        return Err(SignatureError::Stale);
    }
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
            .expect("HMAC takes keys of any length");
        mac.update(t.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        for sig in &signatures {
            // A clone of the finished state costs no rehash; `verify_slice` compares in
            // constant time.
            if mac.clone().verify_slice(sig).is_ok() {
                return Ok(());
            }
        }
    }
    Err(SignatureError::Mismatch)
}

/// 64 hex digits (an HMAC-SHA256) as bytes; anything else is `None`.
fn hex_decode_32(s: &str) -> Option<[u8; 32]> {
    let s = s.as_bytes();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        let digit = |c: u8| (c as char).to_digit(16);
        out[i] = u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).ok()?;
    }
    Some(out)
}

/// A signature as Stripe makes it: for tests and for tools that replay events.
pub fn sign(secret: &str, t: i64, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let sig: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("t={t},v1={sig}")
}

type Form = Vec<(String, String)>;

fn form(pairs: &[(&str, &str)]) -> Form {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl Stripe {
    pub fn new(config: &StripeConfig) -> Result<Stripe, PaymentError> {
        let client = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .build()
            .map_err(|e| PaymentError::Unreachable(e.to_string()))?;
        Ok(Stripe {
            client,
            api_base: config.api_base.trim_end_matches('/').to_string(),
            secret_key: config.secret_key.0.clone(),
            webhook_secrets: config.webhook_secrets.iter().map(|s| s.0.clone()).collect(),
            tolerance: config.webhook_tolerance,
        })
    }

    pub fn verify(&self, header: Option<&str>, body: &[u8]) -> Result<(), SignatureError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        verify_signature(header, body, &self.webhook_secrets, self.tolerance, now)
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        params: &Form,
    ) -> Result<Value, PaymentError> {
        self.call_once(method, path, params, None).await
    }

    /// [`Stripe::call`] with an `Idempotency-Key`: Stripe answers a repeat of the same key
    /// with the first answer instead of doing it again.
    async fn call_once(
        &self,
        method: reqwest::Method,
        path: &str,
        params: &Form,
        idempotency_key: Option<&str>,
    ) -> Result<Value, PaymentError> {
        let url = format!("{}{path}", self.api_base);
        let mut request = self
            .client
            .request(method.clone(), &url)
            .bearer_auth(&self.secret_key);
        if let Some(key) = idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        if method == reqwest::Method::GET {
            request = request.query(params);
        } else {
            request = request.form(params);
        }
        let response = request
            .send()
            .await
            .map_err(|e| PaymentError::Unreachable(e.to_string()))?;
        let status = response.status().as_u16();
        let body: Value = response
            .json()
            .await
            .map_err(|e| PaymentError::Unreachable(format!("unreadable answer: {e}")))?;
        if (200..300).contains(&status) {
            Ok(body)
        } else {
            Err(PaymentError::Refused {
                status,
                message: body["error"]["message"]
                    .as_str()
                    .unwrap_or("no message")
                    .to_string(),
            })
        }
    }

    async fn post(&self, path: &str, params: Form) -> Result<Value, PaymentError> {
        self.call(reqwest::Method::POST, path, &params).await
    }

    async fn get(&self, path: &str) -> Result<Value, PaymentError> {
        self.call(reqwest::Method::GET, path, &Vec::new()).await
    }

    /// The account's Stripe Customer, created on first use.
    async fn customer(
        &self,
        store: &Store,
        req: &CheckoutRequest<'_>,
    ) -> Result<String, PaymentError> {
        let account = req.account;
        let stored = sqlx::query(
            "SELECT reference FROM payment_customers WHERE provider = 'stripe' AND account = $1",
        )
        .bind(&account.id)
        .fetch_optional(store.pool())
        .await
        .map_err(PaymentError::Database)?;
        if let Some(row) = stored {
            return row.try_get::<String, _>(0).map_err(PaymentError::Database);
        }
        let mut params = form(&[
            ("name", &account.name),
            ("metadata[citygate_account]", &account.id),
        ]);
        if let Some(email) = &account.email {
            params.push(("email".into(), email.clone()));
        }
        let created = self.post("/v1/customers", params).await?;
        let id = created["id"]
            .as_str()
            .ok_or_else(|| PaymentError::Unreachable("a customer without an id".into()))?
            .to_string();
        // Two checkouts racing: the first stored customer wins; the other is left unused.
        sqlx::query(
            "INSERT INTO payment_customers (provider, account, reference) VALUES ('stripe', $1, $2)
             ON CONFLICT (provider, account) DO NOTHING",
        )
        .bind(&account.id)
        .bind(&id)
        .execute(store.pool())
        .await
        .map_err(PaymentError::Database)?;
        let row = sqlx::query(
            "SELECT reference FROM payment_customers WHERE provider = 'stripe' AND account = $1",
        )
        .bind(&account.id)
        .fetch_one(store.pool())
        .await
        .map_err(PaymentError::Database)?;
        row.try_get(0).map_err(PaymentError::Database)
    }

    /// The plan's Stripe Plan `citygate_{plan}`, created on first use.
    async fn stripe_plan(&self, plan: &Plan, title: &str) -> Result<String, PaymentError> {
        let id = format!("citygate_{}", plan.id);
        match self.get(&format!("/v1/plans/{id}")).await {
            Ok(_) => return Ok(id),
            Err(PaymentError::Refused { status: 404, .. }) => {}
            Err(e) => return Err(e),
        }
        let amount = match plan.kind {
            PlanKind::Monthly => plan.price_minor,
            _ => 0,
        };
        let product = format!("{title}: {}", plan.name);
        self.post(
            "/v1/plans",
            form(&[
                ("id", &id),
                ("amount", &amount.to_string()),
                ("currency", &plan.currency.to_ascii_lowercase()),
                ("interval", "month"),
                ("nickname", &plan.name),
                ("product[name]", &product),
                ("metadata[citygate_plan]", &plan.id),
            ]),
        )
        .await?;
        Ok(id)
    }

    /// The citygate subscription a Stripe subscription was made for.
    pub async fn subscription_metadata(
        &self,
        stripe_sub: &str,
    ) -> Result<Option<String>, PaymentError> {
        let sub = self.get(&format!("/v1/subscriptions/{stripe_sub}")).await?;
        Ok(sub["metadata"]["citygate_subscription"]
            .as_str()
            .map(str::to_string))
    }
}

fn setup_intent_checkout(intent: &Value, url: String) -> Result<Checkout, PaymentError> {
    let id = intent["id"]
        .as_str()
        .ok_or_else(|| PaymentError::Unreachable("a SetupIntent without an id".into()))?;
    Ok(Checkout {
        payment_ref: None,
        checkout_ref: Some(id.to_string()),
        url,
        client_secret: intent["client_secret"].as_str().map(str::to_string),
        status: intent["status"].as_str().map(str::to_string),
    })
}

impl Stripe {
    pub(crate) async fn checkout(
        &self,
        store: &Store,
        req: CheckoutRequest<'_>,
    ) -> Result<Checkout, PaymentError> {
        let customer = self.customer(store, &req).await?;
        self.stripe_plan(req.plan, req.dataset_title).await?;
        let intent = self
            .post(
                "/v1/setup_intents",
                form(&[
                    ("customer", &customer),
                    ("usage", "off_session"),
                    ("metadata[citygate_subscription]", &req.subscription.id),
                ]),
            )
            .await?;
        setup_intent_checkout(
            &intent,
            format!(
                "{}/v1/subscriptions/{}/checkout",
                req.base_url, req.subscription.id
            ),
        )
    }

    pub(crate) async fn resume_checkout(
        &self,
        sub: &Subscription,
        base_url: &str,
    ) -> Result<Checkout, PaymentError> {
        let Some(intent) = &sub.checkout_ref else {
            return Err(PaymentError::Refused {
                status: 409,
                message: "this subscription has no checkout".into(),
            });
        };
        let intent = self.get(&format!("/v1/setup_intents/{intent}")).await?;
        setup_intent_checkout(
            &intent,
            format!("{base_url}/v1/subscriptions/{}/checkout", sub.id),
        )
    }

    pub(crate) async fn complete_checkout(
        &self,
        sub: &Subscription,
        plan: &Plan,
    ) -> Result<String, PaymentError> {
        let Some(intent_id) = &sub.checkout_ref else {
            return Err(PaymentError::Refused {
                status: 409,
                message: "this subscription has no checkout".into(),
            });
        };
        let intent = self.get(&format!("/v1/setup_intents/{intent_id}")).await?;
        if intent["status"] != "succeeded" {
            return Err(PaymentError::Refused {
                status: 409,
                message: format!(
                    "the SetupIntent is `{}`: confirm it with Stripe (client_secret) first",
                    intent["status"].as_str().unwrap_or("unknown")
                ),
            });
        }
        let (Some(customer), Some(method)) = (
            intent["customer"].as_str(),
            intent["payment_method"].as_str(),
        ) else {
            return Err(PaymentError::Unreachable(
                "a succeeded SetupIntent without customer or payment method".into(),
            ));
        };
        self.post(
            &format!("/v1/payment_methods/{method}/attach"),
            form(&[("customer", customer)]),
        )
        .await?;
        self.post(
            &format!("/v1/customers/{customer}"),
            form(&[("invoice_settings[default_payment_method]", method)]),
        )
        .await?;
        // One Stripe subscription per citygate subscription, however often this runs (a
        // completion retried after a crash or a lost answer gets the same one back).
        let created = self
            .call_once(
                reqwest::Method::POST,
                "/v1/subscriptions",
                &form(&[
                    ("customer", customer),
                    ("items[0][plan]", &format!("citygate_{}", plan.id)),
                    ("metadata[citygate_subscription]", &sub.id),
                ]),
                Some(&format!("citygate-complete-{}", sub.id)),
            )
            .await?;
        created["id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| PaymentError::Unreachable("a subscription without an id".into()))
    }

    pub(crate) async fn cancel_at_period_end(&self, payment_ref: &str) -> Result<(), PaymentError> {
        self.post(
            &format!("/v1/subscriptions/{payment_ref}"),
            form(&[("cancel_at_period_end", "true")]),
        )
        .await
        .map(|_| ())
    }

    pub(crate) async fn cancel_now(&self, payment_ref: &str) -> Result<(), PaymentError> {
        let path = format!("/v1/subscriptions/{payment_ref}");
        match self.call(reqwest::Method::DELETE, &path, &Vec::new()).await {
            Ok(_) => Ok(()),
            // Already gone at Stripe: what cancelling wants.
            Err(PaymentError::Refused { status: 404, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_790_000_000;

    fn secrets() -> Vec<String> {
        vec!["whsec_old".into(), "whsec_new".into()]
    }

    #[test]
    fn a_header_of_many_or_malformed_entries_is_refused_before_any_hashing() {
        let body = br#"{"id":"evt_1"}"#;
        let tol = Duration::from_secs(300);
        // The attack seen: 50 000 short entries. Refused as malformed at the first one.
        let flood = format!("t={NOW},{}", vec!["v1=00"; 50_000].join(","));
        assert_eq!(
            verify_signature(Some(&flood), body, &secrets(), tol, NOW),
            Err(SignatureError::Malformed)
        );
        // Well-formed, but more than a header ever needs.
        let good = sign("whsec_new", NOW, body);
        let sig = good.split("v1=").nth(1).unwrap();
        let many = format!(
            "t={NOW},{}",
            vec![format!("v1={sig}"); MAX_SIGNATURES + 1].join(",")
        );
        assert_eq!(
            verify_signature(Some(&many), body, &secrets(), tol, NOW),
            Err(SignatureError::Malformed)
        );
        let enough = format!(
            "t={NOW},{}",
            vec![format!("v1={sig}"); MAX_SIGNATURES].join(",")
        );
        assert_eq!(
            verify_signature(Some(&enough), body, &secrets(), tol, NOW),
            Ok(())
        );
        // Upper-case hex and other schemes (`v0`) are fine; non-hex is not.
        let upper = format!("t={NOW},v0=abc,v1={}", sig.to_ascii_uppercase());
        assert_eq!(
            verify_signature(Some(&upper), body, &secrets(), tol, NOW),
            Ok(())
        );
        let bad = format!("t={NOW},v1={}", "g".repeat(64));
        assert_eq!(
            verify_signature(Some(&bad), body, &secrets(), tol, NOW),
            Err(SignatureError::Malformed)
        );
    }

    #[test]
    fn signatures_are_checked_before_anything_else() {
        let body = br#"{"id":"evt_1","type":"invoice.paid"}"#;
        let tol = Duration::from_secs(300);
        let good = sign("whsec_new", NOW, body);
        assert_eq!(
            verify_signature(Some(&good), body, &secrets(), tol, NOW),
            Ok(())
        );
        // Tampered body.
        assert_eq!(
            verify_signature(Some(&good), br#"{"id":"evt_2"}"#, &secrets(), tol, NOW),
            Err(SignatureError::Mismatch)
        );
        // Wrong secret.
        let wrong = sign("whsec_other", NOW, body);
        assert_eq!(
            verify_signature(Some(&wrong), body, &secrets(), tol, NOW),
            Err(SignatureError::Mismatch)
        );
        // Stale, and from the future.
        let old = sign("whsec_new", NOW - 301, body);
        assert_eq!(
            verify_signature(Some(&old), body, &secrets(), tol, NOW),
            Err(SignatureError::Stale)
        );
        let future = sign("whsec_new", NOW + 301, body);
        assert_eq!(
            verify_signature(Some(&future), body, &secrets(), tol, NOW),
            Err(SignatureError::Stale)
        );
        // Several v1 values while a secret rotates: any match is enough.
        let rotated = format!(
            "{},v1={}",
            sign("whsec_other", NOW, body),
            sign("whsec_old", NOW, body).split("v1=").nth(1).unwrap()
        );
        assert_eq!(
            verify_signature(Some(&rotated), body, &secrets(), tol, NOW),
            Ok(())
        );
        assert_eq!(
            verify_signature(None, body, &secrets(), tol, NOW),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            verify_signature(Some("v1=abcd"), body, &secrets(), tol, NOW),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify_signature(Some(&format!("t={NOW},v1=zz")), body, &secrets(), tol, NOW),
            Err(SignatureError::Malformed)
        );
        // No secret configured: nothing is accepted.
        assert_eq!(
            verify_signature(Some(&good), body, &[String::new()], tol, NOW),
            Err(SignatureError::Mismatch)
        );
    }
}
