//! The OpenAPI document: served, complete (every route the router has is in it, and every
//! operation in it is a route), and, with schemathesis, true: no answer a client can provoke
//! is a server error or differs from what the document says.

use serde_json::Value;

use crate::harness::*;

async fn document(gw: &Gateway) -> Value {
    let resp = gw
        .client
        .get(gw.url("/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    resp.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_in_the_document_is_served() {
    let gw = Gateway::start().await;
    let doc = document(&gw).await;
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    let paths = doc["paths"].as_object().unwrap();
    let mut operations = 0;
    for (path, item) in paths {
        // Path parameters become a name nothing has, so nothing is read, changed or streamed.
        let concrete = path
            .replace("{id}", "x-none")
            .replace("{dataset}", "x-none");
        for (method, _) in item.as_object().unwrap() {
            let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let mut req = gw
                .client
                .request(method.clone(), gw.url(&concrete))
                .bearer_auth(&gw.admin_key);
            if method == reqwest::Method::POST || method == reqwest::Method::PATCH {
                req = req.header("content-type", "application/json").body("{}");
            }
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let body = resp.text().await.unwrap_or_default();
            assert_ne!(status, 405, "{method} {path}: not routed");
            assert!(
                !(status == 404 && body.contains("no route")),
                "{method} {path}: answered by the fallback"
            );
            assert!(status < 500, "{method} {path}: {status} {body}");
            operations += 1;
        }
    }
    // Every route of the README's tables, intake to operations.
    assert!(operations >= 45, "{operations} operations");
    for path in [
        "/v1/datasets/{id}/readings",
        "/api/v2/write",
        "/write",
        "/v1/accounts",
        "/v1/keys/{id}/rotate",
        "/v1/catalog.jsonld",
        "/v1/subscriptions/{id}/checkout/complete",
        "/v1/payments/webhook",
        "/v1/datasets/{id}/live",
        "/v1/live/ws",
        "/metrics",
        "/v1/openapi.json",
    ] {
        assert!(paths.contains_key(path), "{path} missing");
    }
    // Keyed operations name the bearer scheme; public ones do not.
    assert!(doc["paths"]["/v1/me"]["get"]["security"].is_array());
    assert!(doc["paths"]["/v1/catalog"]["get"]["security"].is_null());
}
