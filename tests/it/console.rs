//! The web console's browser sessions: a key exchanged for an HttpOnly cookie and a CSRF
//! token; changes without the token refused; sign-out and revocation end the session.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{Gateway, now_ms};

/// A request with only the session cookie (and a CSRF token when given), as a browser.
async fn as_browser(
    gw: &Gateway,
    method: Method,
    path: &str,
    cookie: &str,
    csrf: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    as_browser_with(gw, method, path, cookie, csrf, body, &[]).await
}

async fn as_browser_with(
    gw: &Gateway,
    method: Method,
    path: &str,
    cookie: &str,
    csrf: Option<&str>,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let mut req = gw
        .client
        .request(method, gw.url(path))
        .header("cookie", format!("theme=dark; {cookie}"));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    if let Some(csrf) = csrf {
        req = req.header("x-csrf-token", csrf);
    }
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// The status of a sign-in with `key` (no cookie).
async fn sign_in_status(gw: &Gateway, key: &str) -> u16 {
    let resp = gw
        .client
        .post(gw.url("/v1/sessions"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    resp.status().as_u16()
}

/// Signs in with `key`: the `name=value` of the session cookie, its attributes, the body.
async fn sign_in(gw: &Gateway, key: &str, headers: &[(&str, &str)]) -> (String, String, Value) {
    let mut req = gw.client.post(gw.url("/v1/sessions")).bearer_auth(key);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let set = resp.headers()["set-cookie"].to_str().unwrap().to_string();
    let body: Value = resp.json().await.unwrap();
    let (pair, attributes) = set.split_once(';').unwrap();
    (pair.to_string(), attributes.to_string(), body)
}

#[tokio::test]
async fn a_browser_session_acts_as_its_key_and_changes_need_the_csrf_token() {
    let gw = Gateway::start().await;
    let (account, key) = gw.account("subscriber", "Mobility Lab", "research").await;
    let (cookie, attributes, opened) = sign_in(&gw, &key, &[]).await;
    assert!(cookie.starts_with("cg_session="), "{cookie}");
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=28800"] {
        assert!(attributes.contains(attribute), "{attributes}");
    }
    assert!(!attributes.contains("Secure"), "plain http: {attributes}");
    assert_eq!(opened["account"], account.as_str());
    let csrf = opened["csrf_token"].as_str().unwrap().to_string();
    // The session's value is neither the key nor the token.
    assert!(!cookie.contains(&key) && !cookie.ends_with(&csrf));

    // Reading: the cookie alone, from the gateway's own pages (a browser says so), and the
    // answer is kept by no shared cache.
    let resp = gw
        .client
        .get(gw.url("/v1/me"))
        .header("cookie", &cookie)
        .header("sec-fetch-site", "same-origin")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let me: Value = resp.json().await.unwrap();
    assert_eq!(me["account"]["id"], account.as_str());
    // A page of another origin, a sibling subdomain included, gets no session from it.
    for (name, value) in [
        ("sec-fetch-site", "same-site"),
        ("sec-fetch-site", "cross-site"),
        ("origin", "http://evil.example"),
    ] {
        let (status, _) = as_browser_with(
            &gw,
            Method::GET,
            "/v1/me",
            &cookie,
            None,
            None,
            &[(name, value)],
        )
        .await;
        assert_eq!(status, 401, "{name}: {value}");
    }
    // Two session cookies (one may be planted by a sibling host): neither counts.
    let (status, _) = as_browser(
        &gw,
        Method::GET,
        "/v1/me",
        &format!("{cookie}; cg_session=planted"),
        None,
        None,
    )
    .await;
    assert_eq!(status, 401);
    // Changing: refused without the token, or with another, done with it.
    for wrong in [None, Some("not-the-token")] {
        let (status, body) = as_browser(
            &gw,
            Method::POST,
            "/v1/keys",
            &cookie,
            wrong,
            Some(json!({})),
        )
        .await;
        assert_eq!(status, 403, "{body}");
        assert!(body["message"].as_str().unwrap().contains("X-CSRF-Token"));
    }
    let (status, created) = as_browser(
        &gw,
        Method::POST,
        "/v1/keys",
        &cookie,
        Some(&csrf),
        Some(json!({"label": "from the console"})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    // A forged or stale cookie is no key at all.
    let (status, _) = as_browser(&gw, Method::GET, "/v1/me", "cg_session=forged", None, None).await;
    assert_eq!(status, 401);
    // A session cannot open another: sign-in takes the key itself.
    let (status, body) = as_browser(
        &gw,
        Method::POST,
        "/v1/sessions",
        &cookie,
        Some(&csrf),
        None,
    )
    .await;
    assert_eq!(status, 400, "{body}");

    // Signing out needs the token too, then ends the session on the server.
    let (status, _) = as_browser(
        &gw,
        Method::DELETE,
        "/v1/sessions/current",
        &cookie,
        None,
        None,
    )
    .await;
    assert_eq!(status, 403);
    let resp = gw
        .client
        .delete(gw.url("/v1/sessions/current"))
        .header("cookie", &cookie)
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let cleared = resp.headers()["set-cookie"].to_str().unwrap();
    assert!(
        cleared.starts_with("cg_session=;") && cleared.contains("Max-Age=0"),
        "{cleared}"
    );
    let (status, _) = as_browser(&gw, Method::GET, "/v1/me", &cookie, None, None).await;
    assert_eq!(
        status, 401,
        "the cookie outlives the session only in the browser"
    );
    // Signing in again from a browser ends its earlier session.
    let (first, _, _) = sign_in(&gw, &key, &[]).await;
    let (second, _, _) = sign_in(&gw, &key, &[("cookie", first.as_str())]).await;
    let (status, _) = as_browser(&gw, Method::GET, "/v1/me", &first, None, None).await;
    assert_eq!(status, 401);
    let (status, _) = as_browser(&gw, Method::GET, "/v1/me", &second, None, None).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_revoked_keys_sessions_end_with_it_and_https_cookies_are_secure() {
    let gw = Gateway::start().await;
    let (_, key) = gw.account("subscriber", "Port Authority", "public").await;
    let https = [("x-forwarded-proto", "https")];
    let (cookie, attributes, _) = sign_in(&gw, &key, &https).await;
    assert!(attributes.contains("Secure"), "{attributes}");
    assert!(cookie.starts_with("__Host-cg_session="), "{cookie}");
    let (status, me) =
        as_browser_with(&gw, Method::GET, "/v1/me", &cookie, None, None, &https).await;
    assert_eq!(status, 200);
    let id = me["key"]["id"].as_str().unwrap();
    let (status, _) = gw.delete_as(&format!("/v1/keys/{id}"), &gw.admin_key).await;
    assert_eq!(status, 204);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, _) =
        as_browser_with(&gw, Method::GET, "/v1/me", &cookie, None, None, &https).await;
    assert_eq!(status, 401);
    // A device key does not sign in.
    let device = gw.device_key(&["traffic-counts"]).await;
    assert_eq!(sign_in_status(&gw, &device).await, 403);
    // And a revoked key cannot sign in.
    assert_eq!(sign_in_status(&gw, &key).await, 401);
}

#[tokio::test]
async fn the_console_is_served_from_the_binary_under_a_strict_policy() {
    let gw = Gateway::start().await;
    let page = gw.client.get(gw.url("/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    for rule in [
        "default-src 'none'",
        "script-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(rule), "{csp}");
    }
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{csp}"
    );
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert_eq!(page.headers()["x-content-type-options"], "nosniff");
    let html = page.text().await.unwrap();
    // No inline script: every <script> names its file, no handler attributes.
    assert!(html.contains(r#"<script type="module" src="/console/app.js"></script>"#));
    assert_eq!(html.matches("<script").count(), 1, "{html}");
    assert!(
        !html.contains(" onclick=") && !html.contains(" onload="),
        "{html}"
    );
    // app.js and every module it imports, followed from file to file, and the style sheet.
    let mut files = vec![
        ("app.css".to_string(), "text/css"),
        ("app.js".into(), "text/javascript"),
    ];
    let mut served = std::collections::BTreeSet::new();
    while let Some((file, kind)) = files.pop() {
        if !served.insert(file.clone()) {
            continue;
        }
        let resp = gw
            .client
            .get(gw.url(&format!("/console/{file}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{file}");
        assert!(
            resp.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with(kind)
        );
        let text = resp.text().await.unwrap();
        // Provider-supplied strings are only ever set as text.
        assert!(
            !text.contains("innerHTML") && !text.contains("outerHTML"),
            "{file}"
        );
        assert!(
            !text.contains("eval(") && !text.contains("document.write"),
            "{file}"
        );
        for import in text.split("from './").skip(1) {
            let name = import.split('\'').next().unwrap();
            files.push((name.to_string(), "text/javascript"));
        }
    }
    assert!(served.len() >= 7, "{served:?}");
    let resp = gw
        .client
        .get(gw.url("/console/secrets.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
}

/// The console in headless Chromium, then Firefox, as its four kinds of user use it: see
/// `tests/peers/console_browser.py` for the walk and what it checks on every page. One
/// browser at a time, each on a gateway of its own.
#[tokio::test]
async fn people_with_a_browser_subscribe_watch_publish_sell_and_settle() {
    for engine in ["chromium", "firefox"] {
        walk(engine).await;
    }
}

async fn walk(engine: &str) {
    // A provider's title made of HTML, to be shown as text.
    let gw = Gateway::start_with(|c| {
        let weather = c.datasets.iter_mut().find(|d| d.id == "weather").unwrap();
        weather.title = "<img src=x onerror=alert(1)>".into();
    })
    .await;
    let provider = gw.provider_key("copenhagen").await;
    crate::live::plan(&gw, &provider, crate::live::open_plan()).await;
    let (_, subscriber) = gw.account("subscriber", "Mobility Lab", "research").await;
    let device = gw.device_key(&["traffic-counts"]).await;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let args = [
        root.join("tests/peers/console_browser.py")
            .display()
            .to_string(),
        engine.to_string(),
        gw.url(""),
        root.join("target/console-screenshots")
            .join(engine)
            .display()
            .to_string(),
        subscriber,
        device,
        provider,
        gw.admin_key.clone(),
    ];
    let out =
        tokio::task::spawn_blocking(move || crate::harness::python().args(&args).output().unwrap())
            .await
            .unwrap();
    assert!(
        out.status.success(),
        "{engine}:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
    gw.stop().await;
}

#[tokio::test]
async fn a_configured_tile_server_is_named_in_the_page_and_allowed_images_only() {
    let gw = Gateway::start_with(|c| {
        c.console.map_tiles = "https://tiles.example/osm/{z}/{x}/{y}.png".into();
        c.console.map_attribution = "© \"OSM\" <b>contributors</b>".into();
    })
    .await;
    let page = gw.client.get(gw.url("/")).send().await.unwrap();
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("img-src 'self' data: https://tiles.example;"),
        "{csp}"
    );
    // Images only: scripts, styles and connections stay this origin's.
    assert!(csp.contains("script-src 'self';") && csp.contains("connect-src 'self';"));
    let html = page.text().await.unwrap();
    assert!(html.contains(
        r#"<meta name="citygate-map-tiles" content="https://tiles.example/osm/{z}/{x}/{y}.png" data-attribution="© &quot;OSM&quot; &lt;b&gt;contributors&lt;/b&gt;">"#
    ), "{html}");
    assert_eq!(html.matches("<script").count(), 1, "{html}");
}

#[tokio::test]
async fn anyone_sees_where_a_datasets_sensors_are_and_nothing_more() {
    let gw = Gateway::start().await;
    let device = gw.device_key(&["traffic-counts"]).await;
    let now = now_ms();
    let resp = gw
        .post_json(
            "traffic-counts",
            &device,
            serde_json::json!([
                {"sensor_id": "pos-1", "ts": now, "vehicle_count": 3, "lat": 55.676, "lon": 12.568},
                {"sensor_id": "pos-1", "ts": now + 1, "vehicle_count": 4, "lat": 55.677, "lon": 12.569},
                {"sensor_id": "pos-2", "ts": now, "vehicle_count": 5},
            ]),
        )
        .await;
    assert_eq!(resp.status(), 204);
    // No key: the catalog's map.
    let answer: Value = gw
        .client
        .get(gw.url("/v1/catalog/traffic-counts/sensors"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        answer["positions"],
        serde_json::json!([[12.569, 55.677]]),
        "{answer}"
    );
    assert_eq!(answer["complete"], true);
    let text = answer.to_string();
    assert!(
        !text.contains("pos-1") && !text.contains("vehicle_count"),
        "{text}"
    );
    let missing = gw
        .client
        .get(gw.url("/v1/catalog/no-such/sensors"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}
