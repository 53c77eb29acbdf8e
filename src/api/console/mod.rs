//! The web console: a storefront and dashboards in the browser, served by this binary from
//! assets built into it (`index.html`, the ES modules `app.js` imports, `app.css`: no build step, no other server,
//! nothing from the internet). The page runs no inline script and loads nothing from
//! elsewhere (a strict Content-Security-Policy says so to the browser); it signs in through
//! [`super::session`] and does everything else through the documented API.

use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::ApiError;
use crate::config::ConsoleConfig;

const INDEX: &str = include_str!("index.html");

/// The console's files under `/console/`: name, content type, text. The scripts are ES
/// modules that import each other by these names.
const FILES: &[(&str, &str, &str)] = &[
    ("app.js", JS, include_str!("app.js")),
    ("ui.js", JS, include_str!("ui.js")),
    ("chart.js", JS, include_str!("chart.js")),
    ("catalog.js", JS, include_str!("catalog.js")),
    ("account.js", JS, include_str!("account.js")),
    ("provider.js", JS, include_str!("provider.js")),
    ("admin.js", JS, include_str!("admin.js")),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("app.css"),
    ),
];
const JS: &str = "text/javascript; charset=utf-8";

/// What the console's pages may load and run: only this origin's own files (and, when a
/// map tile server is configured, images from it).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; \
     frame-ancestors 'none'";

/// The console as configured: its page and its Content-Security-Policy.
#[derive(Debug)]
pub struct Console {
    index: String,
    csp: HeaderValue,
}

impl Default for Console {
    /// The console with no tile server: everything from this origin.
    fn default() -> Self {
        Console::new(&ConsoleConfig::default())
    }
}

impl Console {
    /// The page tells its scripts about the map tiles in a `<meta>` element (no inline
    /// script); the policy lets images come from the tile server's origin, nothing more.
    pub(crate) fn new(config: &ConsoleConfig) -> Console {
        let tiles = &config.map_tiles;
        if tiles.is_empty() {
            return Console {
                index: INDEX.to_string(),
                csp: HeaderValue::from_static(CSP),
            };
        }
        // Checked by the config: `https://host/…` of plain URL characters.
        let origin_end = tiles["https://".len()..]
            .find('/')
            .map_or(tiles.len(), |i| i + "https://".len());
        let csp = CSP.replace(
            "img-src 'self' data:",
            &format!("img-src 'self' data: {}", &tiles[..origin_end]),
        );
        let meta = format!(
            "<meta name=\"citygate-map-tiles\" content=\"{}\" data-attribution=\"{}\">\n",
            html_attribute(tiles),
            html_attribute(&config.map_attribution)
        );
        Console {
            index: INDEX.replacen("<title>", &format!("{meta}<title>"), 1),
            csp: HeaderValue::from_str(&csp).unwrap_or(HeaderValue::from_static(CSP)),
        }
    }
}

/// `text` as the value of a double-quoted HTML attribute.
fn html_attribute(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn asset(
    console: &Console,
    content_type: &'static str,
    body: impl Into<axum::body::Body>,
) -> Response {
    let mut response = ([(header::CONTENT_TYPE, content_type)], body.into()).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, console.csp.clone());
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // Versioned with the binary: a browser asks again after an upgrade.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// `GET /`
#[utoipa::path(get, path = "/", tag = "console",
    responses((status = 200, description = "the web console's page",
               body = String, content_type = "text/html")))]
pub(crate) async fn index(State(state): State<AppState>) -> Response {
    asset(
        &state.console,
        "text/html; charset=utf-8",
        state.console.index.clone(),
    )
}

/// `GET /console/{file}`
#[utoipa::path(get, path = "/console/{file}", tag = "console",
    params(("file" = String, Path, description = "`app.js` (and the modules it imports) or `app.css`")),
    responses((status = 200, description = "a file of the web console",
               content((String = "text/javascript"), (String = "text/css"))),
              crate::api::error::Refused))]
pub(crate) async fn file(
    State(state): State<AppState>,
    Path(file): Path<String>,
) -> Result<Response, ApiError> {
    match FILES.iter().find(|(name, ..)| *name == file) {
        Some(&(_, content_type, body)) => Ok(asset(&state.console, content_type, body)),
        None => Err(ApiError::NotFound(format!(
            "the console has no file `{file}`"
        ))),
    }
}
