//! The HTTP API: one router for intake, datasets and operations; the error type; key
//! extraction; the accept loop.

pub(crate) mod accounts;
pub(crate) mod auth;
pub(crate) mod body;
pub(crate) mod catalog;
pub(crate) mod console;
pub(crate) mod datasets;
pub(crate) mod error;
pub(crate) mod intake;
pub(crate) mod live;
pub(crate) mod market;
pub(crate) mod ops;
pub(crate) mod query;
pub(crate) mod server;
pub mod session;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::config::HttpConfig;
use crate::market::catalog::Catalog;
use crate::market::{Keyring, Market};
use crate::pipeline::Pipeline;
use crate::telemetry::Metrics;

/// What every handler can reach.
#[derive(Debug, Clone)]
pub struct AppState {
    pub pipeline: Arc<Pipeline>,
    /// Every dataset (the same registry the pipeline writes to).
    pub registry: Arc<crate::registry::Registry>,
    pub catalog: Arc<Catalog>,
    pub keyring: Arc<Keyring>,
    pub market: Arc<Market>,
    pub feed: Arc<crate::feed::session::FeedService>,
    /// History queries: the hot store and the lake.
    pub query: Arc<crate::query::QueryService>,
    pub metrics: Arc<Metrics>,
    pub http: Arc<HttpConfig>,
    /// Places for upgraded WebSockets (`http.max_connections` of them): once upgraded a
    /// socket is no longer one of the HTTP server's counted connections.
    pub websockets: Arc<tokio::sync::Semaphore>,
    /// `[market] max_datasets_per_provider`.
    pub max_datasets_per_provider: usize,
    /// Browser sessions of the web console.
    pub sessions: Arc<session::Sessions>,
    /// The web console's page and policy, as configured.
    pub console: Arc<console::Console>,
}

/// The API's OpenAPI description; the paths come from the handlers themselves.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "citygate",
        description = "City sensor data: intake (HTTP, InfluxDB line protocol), the marketplace \
                       (catalog, accounts, keys, plans, subscriptions, payments, usage, invoices), \
                       live feeds and operations. Keys go in `Authorization: Bearer <key>` (or \
                       `Token <key>`). Every error answers `{\"error\": code, \"message\": …}`."
    ),
    modifiers(&BearerAuth),
    components(schemas(error::ErrorSchema)),
    tags(
        (name = "intake", description = "Devices and Telegraf write readings"),
        (name = "datasets", description = "Schemas and rejects"),
        (name = "accounts", description = "Accounts and API keys"),
        (name = "catalog", description = "Datasets on offer"),
        (name = "console", description = "The web console (HTML, script and style)"),
        (name = "market", description = "Plans, subscriptions, payments, usage, invoices"),
        (name = "live", description = "Live feeds"),
        (name = "query", description = "History: raw readings, latest values, time buckets"),
        (name = "ops", description = "Health, metrics and this document")
    )
)]
struct ApiDoc;

/// The `bearer` security scheme every keyed operation names.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An API key: `cg_…`"))
                    .build(),
            ),
        );
    }
}

/// Every route, each registered together with its OpenAPI operation (`routes!`), so the
/// document cannot leave one out. No route is added to the router any other way.
fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(<ApiDoc as utoipa::OpenApi>::openapi())
        .routes(routes!(intake::post_readings))
        .routes(routes!(intake::influx_v2_write))
        .routes(routes!(intake::influx_v1_write))
        .routes(routes!(accounts::me))
        .routes(routes!(accounts::list_accounts, accounts::create_account))
        .routes(routes!(accounts::show_account))
        .routes(routes!(accounts::list_keys, accounts::create_key))
        .routes(routes!(accounts::revoke_key))
        .routes(routes!(accounts::rotate_key))
        .routes(routes!(session::open))
        .routes(routes!(session::close))
        .routes(routes!(catalog::list, catalog::create))
        .routes(routes!(catalog::jsonld))
        .routes(routes!(catalog::show, catalog::update))
        .routes(routes!(catalog::sensors))
        .routes(routes!(market::list_plans, market::create_plan))
        .routes(routes!(market::withdraw_plan))
        .routes(routes!(market::list_subscriptions, market::subscribe))
        .routes(routes!(
            market::show_subscription,
            market::cancel_subscription
        ))
        .routes(routes!(market::show_checkout))
        .routes(routes!(market::complete_checkout))
        .routes(routes!(market::list_payments, market::record_payment))
        .routes(routes!(market::webhook))
        .routes(routes!(market::access))
        .routes(routes!(market::usage))
        .routes(routes!(market::list_invoices))
        .routes(routes!(market::generate_invoices))
        .routes(routes!(market::show_invoice))
        .routes(routes!(market::pay_invoice))
        .routes(routes!(market::statement))
        .routes(routes!(datasets::list))
        .routes(routes!(datasets::show))
        .routes(routes!(datasets::rejects))
        .routes(routes!(datasets::quality))
        .routes(routes!(live::sse))
        .routes(routes!(live::ws))
        .routes(routes!(query::history))
        .routes(routes!(query::latest))
        .routes(routes!(query::aggregate))
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::readyz))
        .routes(routes!(ops::ping))
        .routes(routes!(ops::health))
        .routes(routes!(ops::metrics))
        .routes(routes!(ops::openapi))
        .routes(routes!(console::index))
        .routes(routes!(console::file))
}

/// The OpenAPI document of every route, as JSON (made once).
pub fn openapi_json() -> &'static str {
    static DOC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DOC.get_or_init(|| {
        let (_, doc) = api().split_for_parts();
        doc.to_json().unwrap_or_else(|e| {
            tracing::error!(error = %e, "the OpenAPI document does not serialise");
            "{}".into()
        })
    })
}

pub fn router(state: AppState) -> Router {
    let (routes, _) = api().split_for_parts();
    routes
        .fallback(ops::not_found)
        // Intake reads bodies itself under `max_body`; this covers any extractor-based route.
        .layer(DefaultBodyLimit::max(state.http.max_body.as_usize()))
        .layer(middleware::from_fn_with_state(state.clone(), body::bounded))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            session::resolve,
        ))
        .layer(middleware::from_fn(error::refuse_nul))
        .layer(middleware::from_fn(error::house_errors))
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

#[cfg(test)]
mod tests {
    /// Routes are added only through `api()`'s `routes!`, which puts each in the OpenAPI
    /// document: a route added to the router directly would be served and not described.
    #[test]
    fn no_route_bypasses_the_document() {
        let source = include_str!("mod.rs");
        let code = source.split("#[cfg(test)]").next().unwrap();
        for method in ["route", "nest", "merge"] {
            let call = format!(".{method}(");
            assert!(
                !code.contains(&call),
                "`{call}` in src/api/mod.rs: register routes with routes!"
            );
        }
    }
}
