//! Plans, subscriptions, payments, entitlements, usage, invoices and statements over HTTP.
//!
//! | route | who | what |
//! |---|---|---|
//! | `GET /v1/catalog/{id}/plans` | anyone (`?all=true`: its provider, admin) | plans on offer |
//! | `POST /v1/catalog/{id}/plans` | its provider, admin | price the dataset |
//! | `DELETE /v1/plans/{id}` | its provider, admin | withdraw a plan (subscriptions run on) |
//! | `POST /v1/subscriptions` | subscriber | `{plan}`: free → active; paid → checkout |
//! | `GET /v1/subscriptions` | subscriber: own; provider: to its datasets; admin: all | |
//! | `GET /v1/subscriptions/{id}` | its subscriber, the dataset's provider, admin | |
//! | `DELETE /v1/subscriptions/{id}` | its subscriber, admin | cancel (paid: at period end) |
//! | `GET /v1/subscriptions/{id}/checkout` | its subscriber | the pending checkout again |
//! | `POST /v1/subscriptions/{id}/checkout/complete` | its subscriber | payment method confirmed: start charging |
//! | `GET /v1/subscriptions/{id}/payments` | its subscriber, the provider, admin | payments received |
//! | `POST /v1/subscriptions/{id}/payments` | admin | record a payment (manual provider): one more month |
//! | `POST /v1/payments/webhook` | Stripe (signed) | payment events |
//! | `GET /v1/access/{dataset}` | any key | the key's grant for a dataset, or 404 |
//! | `GET /v1/usage?from=&to=` | subscriber: per subscription; provider: per own dataset; admin: all | hourly |
//! | `POST /v1/invoices/generate` | admin | `{period: "YYYY-MM"}` |
//! | `GET /v1/invoices?period=&format=csv` | subscriber: own; admin: all | |
//! | `GET /v1/invoices/{id}?format=csv` | its subscriber, admin | |
//! | `POST /v1/invoices/{id}/pay` | admin | mark an open invoice paid |
//! | `GET /v1/statements?period=` | provider: own (admin: `&provider=`) | revenue, fee, payout, subscribers |
//!
//! Objects a key may not see answer 404, as if they did not exist.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::AppState;
use super::auth::require_key;
use super::catalog::base_url;
use super::error::{ApiError, ApiJson};
use crate::market::invoices::{Invoice, invoices_csv};
use crate::market::payments::Checkout;
use crate::market::plans::{NewPlan, Plan};
use crate::market::service::WebhookOutcome;
use crate::market::subscriptions::{Payment, Subscription};
use crate::market::usage::{UsageRow, UsageScope};
use crate::market::{ApiKey, Grant, KeyKind};
use crate::model::{Micros, now_micros};
use crate::pipeline::decode::time::parse_rfc3339;

// ---------------------------------------------------------------------------------------
// Plans

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct PlansQuery {
    #[serde(default)]
    all: bool,
}

/// `GET /v1/catalog/{id}/plans`
#[utoipa::path(get, path = "/v1/catalog/{id}/plans", tag = "market",
    params(("id" = String, Path, description = "the dataset"), PlansQuery),
    responses((status = 200,
        description = "the plans on offer (`all`: withdrawn ones too, for its provider)",
        body = Vec<Plan>),
              crate::api::error::Refused))]
pub(crate) async fn list_plans(
    State(state): State<AppState>,
    Path(dataset): Path<String>,
    Query(q): Query<PlansQuery>,
    headers: HeaderMap,
) -> Result<Json<Vec<Plan>>, ApiError> {
    let store = &state.market;
    let d = store
        .catalog_dataset(&dataset)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no dataset `{dataset}`")))?;
    let all = if q.all {
        let key = require_key(&state, &headers, None).await?;
        if !key.may_administer(&d.spec.provider) {
            return Err(ApiError::NotFound(format!("no dataset `{dataset}`")));
        }
        true
    } else {
        false
    };
    Ok(Json(store.plans_of(&dataset, all).await?))
}

/// `POST /v1/catalog/{id}/plans`
#[utoipa::path(post, path = "/v1/catalog/{id}/plans", tag = "market", security(("bearer" = [])),
    params(("id" = String, Path, description = "the dataset")), request_body = NewPlan,
    responses((status = 201, description = "the plan", body = Plan),
              crate::api::error::Refused))]
pub(crate) async fn create_plan(
    State(state): State<AppState>,
    Path(dataset): Path<String>,
    headers: HeaderMap,
    ApiJson(new): ApiJson<NewPlan>,
) -> Result<(StatusCode, Json<Plan>), ApiError> {
    let key = require_key(&state, &headers, None).await?;
    let d = state
        .market
        .catalog_dataset(&dataset)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no dataset `{dataset}`")))?;
    if !key.may_administer(&d.spec.provider) {
        return Err(ApiError::NotFound(format!("no dataset `{dataset}`")));
    }
    let plan = state
        .market
        .create_plan(&dataset, new)
        .await
        .map_err(ApiError::invalid_as("invalid_plan"))?;
    Ok((StatusCode::CREATED, Json(plan)))
}

/// `DELETE /v1/plans/{id}`
#[utoipa::path(delete, path = "/v1/plans/{id}", tag = "market", security(("bearer" = [])),
    params(("id" = String, Path, description = "the plan")),
    responses((status = 200, description = "the plan, withdrawn (running subscriptions go on)",
        body = Plan),
              crate::api::error::Refused))]
pub(crate) async fn withdraw_plan(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Plan>, ApiError> {
    let key = require_key(&state, &headers, None).await?;
    let store = &state.market;
    let not_found = || ApiError::NotFound(format!("no plan `{id}`"));
    let plan = store.plan(&id).await?.ok_or_else(not_found)?;
    let owner = store
        .catalog_dataset(&plan.dataset)
        .await?
        .ok_or_else(not_found)?
        .spec
        .provider;
    if !key.may_administer(&owner) {
        return Err(not_found());
    }
    state.market.withdraw_plan(&id).await?;
    Ok(Json(store.plan(&id).await?.ok_or_else(not_found)?))
}

// ---------------------------------------------------------------------------------------
// Subscriptions

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

// ---------------------------------------------------------------------------------------
// Entitlement

/// `GET /v1/access/{dataset}`: what this key may have of a dataset, or 404.
#[utoipa::path(get, path = "/v1/access/{dataset}", tag = "market", security(("bearer" = [])),
    params(("dataset" = String, Path, description = "the dataset")),
    responses((status = 200, description = "what this key may have of the dataset", body = Grant),
              crate::api::error::Refused))]
pub(crate) async fn access(
    State(state): State<AppState>,
    Path(dataset): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Grant>, ApiError> {
    let key = require_key(&state, &headers, None).await?;
    state
        .market
        .entitlement(&key, &dataset, now_micros())
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no dataset `{dataset}` for this key")))
}

// ---------------------------------------------------------------------------------------
// Usage, invoices, statements

/// A time in a query: RFC 3339 (`2026-11-01T00:00:00Z`) or a date (`2026-11-01`, UTC).
fn parse_time(field: &str, text: &str) -> Result<Micros, ApiError> {
    let parsed = if text.len() == 10 {
        parse_rfc3339(&format!("{text}T00:00:00Z"))
    } else {
        parse_rfc3339(text)
    };
    parsed.ok_or_else(|| {
        ApiError::bad_request(
            "invalid_time",
            format!("{field}: `{text}` is not a date or an RFC 3339 time"),
        )
    })
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct UsageQuery {
    from: Option<String>,
    to: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct UsageReport {
    from: Micros,
    to: Micros,
    rows: Vec<UsageRow>,
    total_readings: i64,
    total_bytes: i64,
}

/// `GET /v1/usage?from=&to=` (default: the last 31 days)
#[utoipa::path(get, path = "/v1/usage", tag = "market", security(("bearer" = [])),
    params(UsageQuery),
    responses((status = 200, description = "hourly usage", body = UsageReport),
              crate::api::error::Refused))]
pub(crate) async fn usage(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<UsageQuery>,
) -> Result<Json<UsageReport>, ApiError> {
    let key = require_key(&state, &headers, None).await?;
    let now = now_micros();
    let to =
        q.to.as_deref()
            .map_or(Ok(now + 3_600_000_000), |t| parse_time("to", t))?;
    let from = q
        .from
        .as_deref()
        .map_or(Ok(to - 31 * 86_400_000_000), |t| parse_time("from", t))?;
    if from >= to {
        return Err(ApiError::bad_request(
            "invalid_time",
            "from must be before to",
        ));
    }
    let scope = match key.kind {
        KeyKind::Admin if key.is_admin() => UsageScope::All,
        KeyKind::Subscriber => UsageScope::Subscriber(&key.account),
        KeyKind::Provider => UsageScope::Provider(&key.account),
        _ => return Err(ApiError::Forbidden("a device key has no usage".into())),
    };
    let rows = state.market.usage_rows(scope, from, to).await?;
    Ok(Json(UsageReport {
        from,
        to,
        total_readings: rows.iter().map(|r| r.readings).sum(),
        total_bytes: rows.iter().map(|r| r.bytes).sum(),
        rows,
    }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct GenerateBody {
    period: String,
}

/// `POST /v1/invoices/generate` (admin)
#[utoipa::path(post, path = "/v1/invoices/generate", tag = "market", security(("bearer" = [])),
    request_body = GenerateBody,
    responses((status = 200, description = "the period's invoices", body = Vec<Invoice>),
              crate::api::error::Refused))]
pub(crate) async fn generate_invoices(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<GenerateBody>,
) -> Result<Json<Vec<Invoice>>, ApiError> {
    let key = require_key(&state, &headers, None).await?;
    if !key.is_admin() {
        return Err(ApiError::Forbidden(
            "invoices are generated by an admin".into(),
        ));
    }
    // Usage counted in memory belongs on the invoices too.
    state.market.usage().flush().await?;
    Ok(Json(
        state
            .market
            .generate_invoices(&body.period, now_micros())
            .await
            .map_err(ApiError::invalid_as("invalid_period"))?,
    ))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct InvoicesQuery {
    period: Option<String>,
    format: Option<String>,
}

fn invoices_response(invoices: Vec<Invoice>, format: Option<&str>) -> Result<Response, ApiError> {
    match format {
        None | Some("json") => Ok(Json(invoices).into_response()),
        Some("csv") => Ok((
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            invoices_csv(&invoices),
        )
            .into_response()),
        Some(other) => Err(ApiError::bad_request(
            "invalid_format",
            format!("format: `{other}` is not json or csv"),
        )),
    }
}

/// `GET /v1/invoices`
#[utoipa::path(get, path = "/v1/invoices", tag = "market", security(("bearer" = [])),
    params(InvoicesQuery),
    responses((status = 200, description = "invoices (JSON, or CSV with `format=csv`)", content(
                (Vec<Invoice> = "application/json"), (String = "text/csv; charset=utf-8"))),
              crate::api::error::Refused))]
pub(crate) async fn list_invoices(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<InvoicesQuery>,
) -> Result<Response, ApiError> {
    let key = require_key(&state, &headers, None).await?;
    let store = &state.market;
    let mut invoices = match key.kind {
        KeyKind::Admin if key.is_admin() => match &q.period {
            Some(p) => store.invoices_in(p).await?,
            None => {
                return Err(ApiError::bad_request(
                    "invalid_period",
                    "period: an admin lists one period at a time (?period=YYYY-MM)",
                ));
            }
        },
        KeyKind::Subscriber => store.invoices_of(&key.account).await?,
        _ => Vec::new(),
    };
    if let Some(p) = &q.period {
        invoices.retain(|i| &i.period == p);
    }
    invoices_response(invoices, q.format.as_deref())
}

async fn visible_invoice(state: &AppState, key: &ApiKey, id: &str) -> Result<Invoice, ApiError> {
    let not_found = || ApiError::NotFound(format!("no invoice `{id}`"));
    let invoice = state.market.invoice(id).await?.ok_or_else(not_found)?;
    let allowed =
        key.is_admin() || (key.kind == KeyKind::Subscriber && invoice.account == key.account);
    if allowed {
        Ok(invoice)
    } else {
        Err(not_found())
    }
}

/// `GET /v1/invoices/{id}`
#[utoipa::path(get, path = "/v1/invoices/{id}", tag = "market", security(("bearer" = [])),
    params(("id" = String, Path, description = "the invoice"), InvoicesQuery),
    responses((status = 200, description = "the invoice (JSON, or CSV with `format=csv`)", content(
                (Invoice = "application/json"), (String = "text/csv; charset=utf-8"))),
              crate::api::error::Refused))]
pub(crate) async fn show_invoice(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(q): Query<InvoicesQuery>,
) -> Result<Response, ApiError> {
    let key = require_key(&state, &headers, None).await?;
    let invoice = visible_invoice(&state, &key, &id).await?;
    match q.format.as_deref() {
        None | Some("json") => Ok(Json(invoice).into_response()),
        format => invoices_response(vec![invoice], format),
    }
}

/// `POST /v1/invoices/{id}/pay` (admin)
#[utoipa::path(post, path = "/v1/invoices/{id}/pay", tag = "market", security(("bearer" = [])),
    params(("id" = String, Path, description = "the invoice")),
    responses((status = 200, description = "marked paid", body = Invoice),
              crate::api::error::Refused))]
pub(crate) async fn pay_invoice(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Invoice>, ApiError> {
    let key = require_key(&state, &headers, None).await?;
    if !key.is_admin() {
        return Err(ApiError::NotFound(format!("no invoice `{id}`")));
    }
    visible_invoice(&state, &key, &id).await?;
    if !state.market.pay_invoice(&id, now_micros()).await? {
        return Err(ApiError::Conflict(format!(
            "invoice `{id}` is paid already"
        )));
    }
    Ok(Json(visible_invoice(&state, &key, &id).await?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct StatementQuery {
    period: String,
    provider: Option<String>,
}

/// `GET /v1/statements?period=YYYY-MM`
#[utoipa::path(get, path = "/v1/statements", tag = "market", security(("bearer" = [])),
    params(StatementQuery),
    responses((status = 200, description = "a provider's monthly statement",
        body = crate::market::invoices::Statement),
              crate::api::error::Refused))]
pub(crate) async fn statement(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<StatementQuery>,
) -> Result<Json<crate::market::invoices::Statement>, ApiError> {
    let key = require_key(&state, &headers, None).await?;
    let provider = match key.kind {
        KeyKind::Admin if key.is_admin() => q.provider.clone().ok_or_else(|| {
            ApiError::bad_request("invalid_provider", "provider: an admin names the provider")
        })?,
        KeyKind::Provider => {
            if q.provider.as_ref().is_some_and(|p| p != &key.account) {
                return Err(ApiError::NotFound("no such statement".into()));
            }
            key.account.clone()
        }
        _ => return Err(ApiError::Forbidden("statements are for providers".into())),
    };
    state.market.usage().flush().await?;
    Ok(Json(
        state
            .market
            .statement(&provider, &q.period, state.market.platform_fee_percent())
            .await
            .map_err(ApiError::invalid_as("invalid_period"))?,
    ))
}
