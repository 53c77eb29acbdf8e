//! Subscriptions over HTTP: subscribing, seeing and cancelling, the checkout of a paid one,
//! its payments (recorded by an admin or confirmed by the payment provider's webhook).

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::api::AppState;
use crate::api::auth::require_key;
use crate::api::catalog::base_url;
use crate::api::error::{ApiError, ApiJson};
use crate::market::payments::Checkout;
use crate::market::service::WebhookOutcome;
use crate::market::subscriptions::{Payment, Subscription};
use crate::market::{ApiKey, KeyKind};
use crate::model::now_micros;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SubscribeBody {
    plan: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Subscribed {
    subscription: Subscription,
    #[serde(skip_serializing_if = "Option::is_none")]
    checkout: Option<Checkout>,
}

/// `POST /v1/subscriptions`
#[utoipa::path(post, path = "/v1/subscriptions", tag = "market", security(("bearer" = [])),
    request_body = SubscribeBody,
    responses((status = 201, description = "the subscription; a paid one with its checkout",
        body = Subscribed),
              crate::api::error::Refused))]
pub(crate) async fn subscribe(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<SubscribeBody>,
) -> Result<(StatusCode, Json<Subscribed>), ApiError> {
    let key = require_key(&state, &headers, None).await?;
    if key.kind != KeyKind::Subscriber {
        return Err(ApiError::Forbidden(
            "subscriptions are taken with a subscriber's key".into(),
        ));
    }
    let store = &state.market;
    let plan = store
        .plan(&body.plan)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no plan `{}`", body.plan)))?;
    if !key.datasets.is_empty() && !key.datasets.contains(&plan.dataset) {
        return Err(ApiError::Forbidden(format!(
            "this key is limited to datasets {:?}",
            key.datasets
        )));
    }
    let account = store
        .account(&key.account)
        .await?
        .ok_or(ApiError::Unauthorized)?;
    let (subscription, checkout) = state
        .market
        .subscribe(&account, &plan.id, &base_url(&state), now_micros())
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(Subscribed {
            subscription,
            checkout,
        }),
    ))
}

/// May `key` see `sub`? Its subscriber, the dataset's provider, an admin.
async fn visible_subscription(
    state: &AppState,
    key: &ApiKey,
    id: &str,
    manage: bool,
) -> Result<Subscription, ApiError> {
    let store = &state.market;
    let not_found = || ApiError::NotFound(format!("no subscription `{id}`"));
    let sub = store.subscription(id).await?.ok_or_else(not_found)?;
    let allowed = match key.kind {
        KeyKind::Admin => key.is_admin(),
        KeyKind::Subscriber => sub.account == key.account,
        KeyKind::Provider if !manage => store
            .catalog_dataset(&sub.dataset)
            .await?
            .is_some_and(|d| key.may_administer(&d.spec.provider)),
        _ => false,
    };
    if allowed {
        Ok(sub.at(now_micros()))
    } else {
        Err(not_found())
    }
}

/// `GET /v1/subscriptions`
#[utoipa::path(get, path = "/v1/subscriptions", tag = "market", security(("bearer" = [])),
    responses((status = 200,
        description = "a subscriber's own; a provider's datasets'; an admin's all",
        body = Vec<Subscription>),
              crate::api::error::Refused))]
pub(crate) async fn list_subscriptions(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Vec<Subscription>>, ApiError> {
    let key = require_key(&state, &headers, None).await?;
    let store = &state.market;
    let subs = match key.kind {
        KeyKind::Admin if key.is_admin() => store.all_subscriptions().await?,
        KeyKind::Subscriber => store.subscriptions_of(&key.account).await?,
        KeyKind::Provider => store.subscriptions_to(&key.account).await?,
        _ => Vec::new(),
    };
    let now = now_micros();
    Ok(Json(subs.into_iter().map(|s| s.at(now)).collect()))
}

/// `GET /v1/subscriptions/{id}`
#[utoipa::path(get, path = "/v1/subscriptions/{id}", tag = "market", security(("bearer" = [])),
    params(("id" = String, Path, description = "the subscription")),
    responses((status = 200, description = "the subscription", body = Subscription),
              crate::api::error::Refused))]
pub(crate) async fn show_subscription(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Subscription>, ApiError> {
    let key = require_key(&state, &headers, None).await?;
    Ok(Json(visible_subscription(&state, &key, &id, false).await?))
}

/// `DELETE /v1/subscriptions/{id}`
#[utoipa::path(delete, path = "/v1/subscriptions/{id}", tag = "market", security(("bearer" = [])),
    params(("id" = String, Path, description = "the subscription")),
    responses((status = 200, description = "cancelled (a paid, running one at its period end)",
        body = Subscription),
              crate::api::error::Refused,
              (status = 502, description = "the payment provider failed",
                  body = crate::api::error::ErrorSchema)))]
pub(crate) async fn cancel_subscription(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Subscription>, ApiError> {
    let key = require_key(&state, &headers, None).await?;
    let sub = visible_subscription(&state, &key, &id, true).await?;
    let now = now_micros();
    Ok(Json(state.market.cancel(&sub, now).await?.at(now)))
}

/// The subscription's own subscriber, alone.
async fn own_subscription(
    state: &AppState,
    headers: &HeaderMap,
    id: &str,
) -> Result<Subscription, ApiError> {
    let key = require_key(state, headers, None).await?;
    if key.kind != KeyKind::Subscriber {
        return Err(ApiError::NotFound(format!("no subscription `{id}`")));
    }
    visible_subscription(state, &key, id, true).await
}

/// `GET /v1/subscriptions/{id}/checkout`
#[utoipa::path(get, path = "/v1/subscriptions/{id}/checkout", tag = "market",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "the subscription")),
    responses((status = 200, description = "where and how to pay", body = Checkout),
              crate::api::error::Refused,
              (status = 502, description = "the payment provider failed",
                  body = crate::api::error::ErrorSchema)))]
pub(crate) async fn show_checkout(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Checkout>, ApiError> {
    let sub = own_subscription(&state, &headers, &id).await?;
    Ok(Json(state.market.checkout(&sub, &base_url(&state)).await?))
}

/// `POST /v1/subscriptions/{id}/checkout/complete`
#[utoipa::path(post, path = "/v1/subscriptions/{id}/checkout/complete", tag = "market",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "the subscription")),
    responses((status = 202,
        description = "charging starts; active once the payment is confirmed", body = Subscription),
              crate::api::error::Refused,
              (status = 502, description = "the payment provider failed",
                  body = crate::api::error::ErrorSchema)))]
pub(crate) async fn complete_checkout(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<(StatusCode, Json<Subscription>), ApiError> {
    let sub = own_subscription(&state, &headers, &id).await?;
    let sub = state.market.complete_checkout(&sub, now_micros()).await?;
    // Accepted: the payment's confirmation (a webhook) makes it active.
    Ok((StatusCode::ACCEPTED, Json(sub)))
}

/// `GET /v1/subscriptions/{id}/payments`
#[utoipa::path(get, path = "/v1/subscriptions/{id}/payments", tag = "market",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "the subscription")),
    responses((status = 200, description = "payments, oldest first", body = Vec<Payment>),
              crate::api::error::Refused))]
pub(crate) async fn list_payments(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Vec<Payment>>, ApiError> {
    let key = require_key(&state, &headers, None).await?;
    let sub = visible_subscription(&state, &key, &id, false).await?;
    Ok(Json(state.market.payments_of(&sub.id).await?))
}

#[derive(Debug, Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RecordPayment {
    /// The payment's reference (a bank transfer id): recording it twice does nothing.
    #[serde(default)]
    reference: Option<String>,
}

/// `POST /v1/subscriptions/{id}/payments` (admin)
#[utoipa::path(post, path = "/v1/subscriptions/{id}/payments", tag = "market",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "the subscription")),
    request_body(content = Option<RecordPayment>,
        description = "optional: the payment's reference"),
    responses((status = 201, description = "recorded; the subscription runs a month more",
        body = Subscription),
              (status = 200, description = "this reference was recorded before: nothing done",
                  body = Subscription),
              crate::api::error::Refused))]
pub(crate) async fn record_payment(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<RecordPayment>,
) -> Result<(StatusCode, Json<Subscription>), ApiError> {
    let key = require_key(&state, &headers, None).await?;
    if !key.is_admin() {
        return Err(ApiError::NotFound(format!("no subscription `{id}`")));
    }
    let sub = visible_subscription(&state, &key, &id, true).await?;
    if let Some(r) = &body.reference
        && (r.is_empty() || r.len() > 200)
    {
        return Err(ApiError::bad_request(
            "invalid_payment",
            "reference: 1-200 characters",
        ));
    }
    let (applied, sub) = state
        .market
        .record_payment(&sub, body.reference, now_micros())
        .await?;
    let status = match applied {
        crate::market::subscriptions::Applied::Duplicate => StatusCode::OK,
        _ => StatusCode::CREATED,
    };
    Ok((status, Json(sub.at(now_micros()))))
}

/// `POST /v1/payments/webhook`: verified before it is parsed; applied once.
#[utoipa::path(post, path = "/v1/payments/webhook", tag = "market",
    params(("Stripe-Signature" = String, Header, description = "`t=…,v1=…`")),
    request_body(content = Object, description = "a Stripe event (at most 256 KiB)"),
    responses((status = 200,
        description = "`{received, result: applied|replayed|ignored, detail}`", body = Object),
              crate::api::error::Refused))]
pub(crate) async fn webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let signature = headers
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok());
    let outcome = state
        .market
        .stripe_webhook(signature, &body, now_micros())
        .await
        .inspect_err(|e| {
            if crate::telemetry::refusal_log_allowed() {
                tracing::warn!(error = %e, "payment webhook refused");
            }
        })?;
    let (result, detail) = match outcome {
        WebhookOutcome::Applied(what) => ("applied", what),
        WebhookOutcome::Replayed => ("replayed", "event seen before: nothing done"),
        WebhookOutcome::Ignored(why) => ("ignored", why),
    };
    tracing::info!(result, detail, "payment webhook");
    Ok(Json(
        json!({"received": true, "result": result, "detail": detail}),
    ))
}
