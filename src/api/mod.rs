//! The HTTP API: one router for intake, datasets and operations; the error type; key
//! extraction; the accept loop.

pub mod accounts;
pub mod auth;
pub mod body;
pub mod catalog;
pub mod datasets;
pub mod error;
pub mod live;
pub mod market;
pub mod ops;
pub mod server;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{delete, get, post};

use crate::config::HttpConfig;
use crate::ingest;
use crate::market::catalog::Catalog;
use crate::market::{Keyring, Market};
use crate::pipeline::Pipeline;
use crate::telemetry::Metrics;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub pipeline: Arc<Pipeline>,
    pub catalog: Arc<Catalog>,
    pub keyring: Arc<Keyring>,
    pub market: Arc<Market>,
    pub feed: Arc<crate::feed::session::Context>,
    pub metrics: Arc<Metrics>,
    pub http: Arc<HttpConfig>,
    /// Places for upgraded WebSockets (`http.max_connections` of them): once upgraded a
    /// socket is no longer one of the HTTP server's counted connections.
    pub websockets: Arc<tokio::sync::Semaphore>,
    /// `[market] max_datasets_per_provider`.
    pub max_datasets_per_provider: usize,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route(
            "/v1/datasets/{id}/readings",
            post(ingest::http::post_readings),
        )
        .route("/api/v2/write", post(ingest::http::influx_v2_write))
        .route("/write", post(ingest::http::influx_v1_write))
        .route("/v1/me", get(accounts::me))
        .route(
            "/v1/accounts",
            get(accounts::list_accounts).post(accounts::create_account),
        )
        .route("/v1/accounts/{id}", get(accounts::show_account))
        .route(
            "/v1/keys",
            get(accounts::list_keys).post(accounts::create_key),
        )
        .route("/v1/keys/{id}", delete(accounts::revoke_key))
        .route("/v1/keys/{id}/rotate", post(accounts::rotate_key))
        .route("/v1/catalog", get(catalog::list).post(catalog::create))
        .route("/v1/catalog.jsonld", get(catalog::jsonld))
        .route(
            "/v1/catalog/{id}",
            get(catalog::show).patch(catalog::update),
        )
        .route(
            "/v1/catalog/{id}/plans",
            get(market::list_plans).post(market::create_plan),
        )
        .route("/v1/plans/{id}", delete(market::withdraw_plan))
        .route(
            "/v1/subscriptions",
            get(market::list_subscriptions).post(market::subscribe),
        )
        .route(
            "/v1/subscriptions/{id}",
            get(market::show_subscription).delete(market::cancel_subscription),
        )
        .route(
            "/v1/subscriptions/{id}/checkout",
            get(market::show_checkout),
        )
        .route(
            "/v1/subscriptions/{id}/checkout/complete",
            post(market::complete_checkout),
        )
        .route(
            "/v1/subscriptions/{id}/payments",
            get(market::list_payments).post(market::record_payment),
        )
        .route("/v1/payments/webhook", post(market::webhook))
        .route("/v1/access/{dataset}", get(market::access))
        .route("/v1/usage", get(market::usage))
        .route("/v1/invoices", get(market::list_invoices))
        .route("/v1/invoices/generate", post(market::generate_invoices))
        .route("/v1/invoices/{id}", get(market::show_invoice))
        .route("/v1/invoices/{id}/pay", post(market::pay_invoice))
        .route("/v1/statements", get(market::statement))
        .route("/v1/datasets", get(datasets::list))
        .route("/v1/datasets/{id}", get(datasets::show))
        .route("/v1/datasets/{id}/rejects", get(datasets::rejects))
        .route("/v1/datasets/{id}/live", get(live::sse))
        .route("/v1/live/ws", get(live::ws))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/ping", get(ops::ping).head(ops::ping))
        .route("/health", get(ops::health))
        .route("/metrics", get(ops::metrics))
        .fallback(ops::not_found)
        // Intake reads bodies itself under `max_body`; this covers any extractor-based route.
        .layer(DefaultBodyLimit::max(state.http.max_body.as_usize()))
        .layer(middleware::from_fn_with_state(state.clone(), body::bounded))
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .with_state(state)
}

/// Counts every answered request by route template and status.
async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let started = Instant::now();
    let response = next.run(request).await;
    state.metrics.http_request(
        &route,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}
