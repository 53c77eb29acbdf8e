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
    // Operation ids are unique, as OpenAPI requires.
    let mut ids: Vec<&str> = paths
        .values()
        .flat_map(|item| item.as_object().unwrap().values())
        .map(|op| op["operationId"].as_str().unwrap())
        .collect();
    ids.sort();
    let before = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), before, "duplicate operation ids");
    // HEAD /ping (Influx clients probe it) is answered as GET is.
    let head = gw.client.head(gw.url("/ping")).send().await.unwrap();
    assert_eq!(head.status(), 204);
    // Keyed operations name the bearer scheme; public ones do not.
    assert!(doc["paths"]["/v1/me"]["get"]["security"].is_array());
    assert!(doc["paths"]["/v1/catalog"]["get"]["security"].is_null());
}

/// NUL in a URL or in a JSON string is refused with 400 on both databases (PostgreSQL cannot
/// store it; schemathesis found `?account=%00` answered 500 there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_characters_are_refused_not_a_server_error() {
    let gw = Gateway::start().await;
    for path in [
        "/v1/keys?account=%00",
        "/v1/accounts/a%00b",
        "/v1/catalog/%00",
        "/v1/subscriptions/%00",
    ] {
        let (status, body) = gw.get_as(path, &gw.admin_key).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body["message"].as_str().unwrap().contains("NUL"), "{body}");
    }
    let (status, body) = gw
        .post_as(
            "/v1/accounts",
            &gw.admin_key,
            serde_json::json!({"name": "Nul\u{0}Lab", "role": "subscriber", "sector": "research"}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_json", "{body}");
    // Everything else still answers.
    let (status, _) = gw.get_as("/v1/keys", &gw.admin_key).await;
    assert_eq!(status, 200);
}

/// schemathesis (PyPI) generates requests from the document, with the keys of every role,
/// and checks every answer: never a server error, and status, content type and body as the
/// document says. Key revocation and rotation run last, with a key of their own, so the
/// other runs keep their keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_answer_off_the_document() {
    let gw = Gateway::start().await;
    let provider = gw.provider_key("copenhagen").await;
    let (_, subscriber) = gw.account("subscriber", "Fuzz Lab", "research").await;
    let device = gw.device_key(&[TRAFFIC]).await;
    let (_, throwaway_admin) = gw.account("admin", "Second Admin", "public").await;
    let schema = gw.url("/v1/openapi.json");
    let key_changes = ["revoke_key", "rotate_key"];
    let mut runs: Vec<(&str, &str, bool)> = vec![
        ("admin", &gw.admin_key, false),
        ("provider", &provider, false),
        ("subscriber", &subscriber, false),
        ("device", &device, false),
    ];
    runs.push(("key changes", &throwaway_admin, true));
    // More examples for a longer hunt: CITYGATE_SCHEMATHESIS_EXAMPLES=200.
    let examples =
        std::env::var("CITYGATE_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "15".to_string());
    for (role, key, only_key_changes) in runs {
        let mut cmd = python();
        cmd.args(["-m", "schemathesis.cli", "run", &schema])
            .args([
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,\
                 response_schema_conformance",
            ])
            .args(["--phases", "coverage,fuzzing"])
            // One worker: Python 3.11's AST is not thread safe, and hypothesis uses it.
            .args([
                "--max-examples",
                &examples,
                "--workers",
                "1",
                "--request-timeout",
                "10",
            ])
            .args(["--no-color", "--suppress-health-check", "all"])
            .args(["--generation-database", "none"])
            .args(["-H", &format!("Authorization: Bearer {key}")]);
        for op in key_changes {
            let flag = if only_key_changes {
                "--include-operation-id"
            } else {
                "--exclude-operation-id"
            };
            cmd.args([flag, op]);
        }
        let out = tokio::task::spawn_blocking(move || cmd.output())
            .await
            .unwrap()
            .expect("schemathesis runs (scripts/test.sh installs it)");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "schemathesis with the {role} key:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("passed"), "{role}: {text}");
    }
}
