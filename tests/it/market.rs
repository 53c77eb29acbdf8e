//! The marketplace over HTTP: accounts, keys and who may see what.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::*;

#[tokio::test]
async fn admin_creates_accounts_whose_keys_manage_their_own_keys() {
    let gw = Gateway::start().await;
    let admin = gw.admin_key.clone();

    let (status, me) = gw.get_as("/v1/me", &admin).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["account"]["role"], "admin");
    assert_eq!(me["key"]["kind"], "admin");
    assert!(me["key"].get("secret").is_none() && !me.to_string().contains(&admin));

    let (sub_id, sub) = gw.account("subscriber", "Mobility Lab", "research").await;
    let (status, me) = gw.get_as("/v1/me", &sub).await;
    assert_eq!(status, 200);
    assert_eq!(me["account"]["id"], sub_id.as_str());
    assert_eq!(me["account"]["sector"], "research");

    // Bad input: every problem named; ids are unique.
    let (status, body) = gw
        .post_as(
            "/v1/accounts",
            &admin,
            json!({"role": "subscriber", "name": "", "sector": "Big Data!", "email": "nope"}),
        )
        .await;
    assert_eq!(status, 400);
    let msg = body["message"].as_str().unwrap();
    for field in ["name:", "sector:", "email:"] {
        assert!(msg.contains(field), "{msg}");
    }
    let (status, _) = gw
        .post_as(
            "/v1/accounts",
            &admin,
            json!({"id": "copenhagen", "role": "provider", "name": "X", "sector": "public"}),
        )
        .await;
    assert_eq!(status, 400, "the config's provider account exists");

    // Only an admin creates or lists accounts; others' accounts are not there at all.
    let (status, _) = gw
        .post_as(
            "/v1/accounts",
            &sub,
            json!({"role": "admin", "name": "Me", "sector": "public"}),
        )
        .await;
    assert_eq!(status, 403);
    assert_eq!(gw.get_as("/v1/accounts", &sub).await.0, 403);
    assert_eq!(gw.get_as("/v1/accounts/copenhagen", &sub).await.0, 404);
    assert_eq!(
        gw.get_as(&format!("/v1/accounts/{sub_id}"), &sub).await.0,
        200
    );
    let (status, all) = gw.get_as("/v1/accounts", &admin).await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    for id in ["admin", "copenhagen", "copenhagen-energy", sub_id.as_str()] {
        assert!(ids.contains(&id), "{ids:?}");
    }
    assert_eq!(gw.get_as("/v1/me", "cg_nope").await.0, 401);

    // A provider mints a device key for its own dataset, not for another provider's.
    let provider = gw.provider_key("copenhagen").await;
    let (status, created) = gw
        .post_as(
            "/v1/keys",
            &provider,
            json!({"kind": "device", "label": "loop 7", "datasets": [TRAFFIC]}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let device = created["secret"].as_str().unwrap().to_string();
    let device_id = created["key"]["id"].as_str().unwrap().to_string();
    assert_eq!(
        gw.post_json(
            TRAFFIC,
            &device,
            json!({"sensor_id": "a", "vehicle_count": 3})
        )
        .await
        .status(),
        204
    );
    let (status, body) = gw
        .post_as(
            "/v1/keys",
            &provider,
            json!({"kind": "device", "datasets": ["energy-meters"]}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    // A device key manages nothing; a subscriber cannot mint device keys.
    assert_eq!(gw.get_as("/v1/keys", &device).await.0, 403);
    let (status, _) = gw
        .post_as(
            "/v1/keys",
            &sub,
            json!({"kind": "device", "datasets": [TRAFFIC]}),
        )
        .await;
    assert_eq!(status, 400);
    // Nobody reaches another account's keys.
    assert_eq!(
        gw.delete_as(&format!("/v1/keys/{device_id}"), &sub).await.0,
        404
    );
    let (_, sub_keys) = gw.get_as("/v1/keys", &sub).await;
    assert_eq!(sub_keys.as_array().unwrap().len(), 1);
    let (_, provider_keys) = gw.get_as("/v1/keys", &provider).await;
    assert!(
        provider_keys
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k["account"] == "copenhagen")
    );
    let (_, other) = gw
        .get_as(&format!("/v1/keys?account={sub_id}"), &provider)
        .await;
    assert_eq!(other, json!([]));

    // Revocation by the owner: the key stops working within a second.
    assert_eq!(
        gw.delete_as(&format!("/v1/keys/{device_id}"), &provider)
            .await
            .0,
        204
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        gw.post_json(
            TRAFFIC,
            &device,
            json!({"sensor_id": "a", "vehicle_count": 3})
        )
        .await
        .status(),
        401
    );
}

#[tokio::test]
async fn keys_rotate_with_overlap_and_expire() {
    let gw = Gateway::start().await;
    let (_, sub) = gw.account("subscriber", "Energy Analytics", "energy").await;
    let (_, me) = gw.get_as("/v1/me", &sub).await;
    let old_id = me["key"]["id"].as_str().unwrap().to_string();

    let (status, rotated) = gw
        .post_as(
            &format!("/v1/keys/{old_id}/rotate"),
            &sub,
            json!({"overlap": "1500ms"}),
        )
        .await;
    assert_eq!(status, 201, "{rotated}");
    let new = rotated["secret"].as_str().unwrap().to_string();
    assert_eq!(gw.get_as("/v1/me", &new).await.0, 200);
    assert_eq!(gw.get_as("/v1/me", &sub).await.0, 200, "overlap");
    let (status, _) = gw
        .post_as(&format!("/v1/keys/{old_id}/rotate"), &new, json!({}))
        .await;
    assert_eq!(status, 404, "a rotated key is not rotated twice");
    tokio::time::sleep(Duration::from_millis(2700)).await;
    assert_eq!(gw.get_as("/v1/me", &sub).await.0, 401, "overlap over");
    assert_eq!(gw.get_as("/v1/me", &new).await.0, 200);

    let (status, short) = gw
        .post_as(
            "/v1/keys",
            &new,
            json!({"label": "temporary", "expires_in": "1s"}),
        )
        .await;
    assert_eq!(status, 201);
    let short = short["secret"].as_str().unwrap();
    assert_eq!(gw.get_as("/v1/me", short).await.0, 200);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(gw.get_as("/v1/me", short).await.0, 401, "expired");
    let (status, body) = gw
        .post_as("/v1/keys", &new, json!({"expires_in": "soon"}))
        .await;
    assert_eq!(status, 400);
    assert!(body["message"].as_str().unwrap().contains("expires_in"));
    let listed: Value = gw.get_as("/v1/keys", &new).await.1;
    assert_eq!(listed.as_array().unwrap().len(), 3);
}

fn bike_counts() -> Value {
    json!({
        "id": "bike-counts",
        "title": "Bicycle counts",
        "description": "Bicycles counted per hour at 40 stations.",
        "licence": "CC-BY-4.0",
        "attribution": "Contains data from Copenhagen bicycle counters",
        "update_frequency": "hourly",
        "keywords": ["bicycles", "mobility"],
        "rate_limit": {"per_second": 1000, "burst": 1000},
        "fields": [
            {"name": "bikes", "type": "int", "unit": "count", "min": 0, "required": true},
            {"name": "direction", "type": "string", "max_length": 16}
        ]
    })
}

#[tokio::test]
async fn the_catalog_is_public_paginated_and_shows_live_quality() {
    let gw = Gateway::start().await;
    let (status, page) = gw.get_as("/v1/catalog", "").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["total"], 4);
    let ids: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["air-quality", "energy-meters", "traffic-counts", "weather"]
    );
    let (_, second) = gw.get_as("/v1/catalog?page=2&per_page=3", "").await;
    assert_eq!(second["items"].as_array().unwrap().len(), 1);
    assert_eq!(second["items"][0]["id"], "weather");
    assert_eq!(gw.get_as("/v1/catalog?per_page=0", "").await.0, 400);
    assert_eq!(gw.get_as("/v1/catalog?per_page=201", "").await.0, 400);
    assert_eq!(gw.get_as("/v1/catalog/nope", "").await.0, 404);

    let (_, traffic) = gw.get_as(&format!("/v1/catalog/{TRAFFIC}"), "").await;
    assert_eq!(traffic["licence"], "CC-BY-4.0");
    assert_eq!(traffic["origin"], "config");
    assert_eq!(traffic["fields"][0]["name"], "vehicle_count");
    assert_eq!(traffic["quality"]["readings_last_hour"], 0);
    assert_eq!(traffic["quality"]["last_reading_at"], Value::Null);

    let key = gw.device_key(&[TRAFFIC]).await;
    let resp = gw
        .post_json(
            TRAFFIC,
            &key,
            json!([
                {"sensor_id": "tc-1", "vehicle_count": 4},
                {"sensor_id": "tc-2", "vehicle_count": 5},
                {"sensor_id": "tc-1", "vehicle_count": 6},
                {"sensor_id": "tc-3", "vehicle_count": -1}
            ]),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let (_, traffic) = gw.get_as(&format!("/v1/catalog/{TRAFFIC}"), "").await;
    let q = &traffic["quality"];
    assert_eq!(q["readings_last_hour"], 3, "{q}");
    assert_eq!(q["active_sensors_last_hour"], 2);
    assert_eq!(q["rejected_last_hour"], 1);
    assert_eq!(q["reject_rate"], 0.25);
    assert!(q["last_reading_at"].as_i64().unwrap() > 1_700_000_000_000_000);
}

#[tokio::test]
async fn providers_publish_datasets_that_take_readings_at_once_and_after_a_restart() {
    let gw = Gateway::start().await;
    let provider = gw.provider_key("copenhagen").await;
    let (_, sub) = gw.account("subscriber", "Mobility Lab", "research").await;

    // Who may publish, and what a bad declaration is told.
    assert_eq!(gw.post_as("/v1/catalog", &sub, bike_counts()).await.0, 403);
    let mut foreign = bike_counts();
    foreign["provider"] = json!("copenhagen-energy");
    assert_eq!(gw.post_as("/v1/catalog", &provider, foreign).await.0, 403);
    let mut bad = bike_counts();
    bad["fields"][0]["type"] = json!("integer");
    let (status, body) = gw.post_as("/v1/catalog", &provider, bad).await;
    assert_eq!(status, 400);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("dataset.fields[0].type"),
        "{body}"
    );
    let mut bad = bike_counts();
    bad["update_frequency"] = json!("sometimes");
    bad["id"] = json!("Bike Counts");
    let (status, body) = gw.post_as("/v1/catalog", &provider, bad).await;
    assert_eq!(status, 400);
    let msg = body["message"].as_str().unwrap();
    assert!(
        msg.contains("dataset.id") && msg.contains("update_frequency"),
        "{msg}"
    );

    let (status, created) = gw.post_as("/v1/catalog", &provider, bike_counts()).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["provider"], "copenhagen");
    assert_eq!(created["origin"], "api");
    assert_eq!(
        created["publisher"],
        "City of Copenhagen, Technical and Environmental Administration"
    );
    assert_eq!(
        gw.post_as("/v1/catalog", &provider, bike_counts()).await.0,
        409
    );
    assert_eq!(gw.get_as("/v1/catalog", "").await.1["total"], 5);

    // Readings for it are taken at once, by a device key minted for it.
    let (status, device) = gw
        .post_as(
            "/v1/keys",
            &provider,
            json!({"kind": "device", "datasets": ["bike-counts"]}),
        )
        .await;
    assert_eq!(status, 201, "{device}");
    let device = device["secret"].as_str().unwrap().to_string();
    let resp = gw
        .post_json(
            "bike-counts",
            &device,
            json!([{"sensor_id": "st-1", "bikes": 12, "direction": "north"}, {"sensor_id": "st-2", "bikes": -3}]),
        )
        .await;
    assert_eq!(resp.status(), 200);

    // Edits: the owner edits metadata; a config dataset is edited in the file; others see
    // nothing to edit.
    let (status, edited) = gw
        .call(
            reqwest::Method::PATCH,
            "/v1/catalog/bike-counts",
            &provider,
            Some(json!({"description": "Hourly counts, 40 stations", "keywords": ["bicycles"]})),
        )
        .await;
    assert_eq!(status, 200, "{edited}");
    assert_eq!(edited["description"], "Hourly counts, 40 stations");
    let energy = gw.provider_key("copenhagen-energy").await;
    let patch = Some(json!({"title": "Mine now"}));
    assert_eq!(
        gw.call(
            reqwest::Method::PATCH,
            "/v1/catalog/bike-counts",
            &energy,
            patch.clone()
        )
        .await
        .0,
        404
    );
    assert_eq!(
        gw.call(
            reqwest::Method::PATCH,
            "/v1/catalog/weather",
            &provider,
            patch.clone()
        )
        .await
        .0,
        409
    );
    assert_eq!(
        gw.call(
            reqwest::Method::PATCH,
            "/v1/catalog/bike-counts",
            &provider,
            Some(json!({"fields": []}))
        )
        .await
        .0,
        400,
        "the schema is not editable"
    );

    // After a restart the dataset is still offered and still takes readings.
    let gw = gw.restart().await;
    let (_, page) = gw.get_as("/v1/catalog/bike-counts", "").await;
    assert_eq!(page["description"], "Hourly counts, 40 stations");
    let resp = gw
        .post_json(
            "bike-counts",
            &device,
            json!({"sensor_id": "st-3", "bikes": 7}),
        )
        .await;
    assert_eq!(resp.status(), 204);
    let dir = gw.stop().await;
    assert_eq!(
        row_count(dir.path(), "bike-counts"),
        2,
        "both accepted readings in Parquet"
    );
}

/// Two nodes on one PostgreSQL database (the suite's PostgreSQL pass; on SQLite there is one
/// node per database and nothing to share: `None`).
async fn two_nodes_on_one_database() -> Option<(Gateway, Gateway)> {
    if crate::harness::test_postgres().is_none() {
        eprintln!(
            "two nodes share a database only on PostgreSQL: CITYGATE_TEST_POSTGRES is not set"
        );
        return None;
    }
    let a = Gateway::start().await;
    let shared = crate::harness::database_url_for(a.dir.path()).unwrap();
    let b = Gateway::start_with(|c| c.database.url.0 = shared).await;
    Some((a, b))
}

/// What one node changes, the other sees within a second, told by LISTEN/NOTIFY.
#[tokio::test]
async fn two_nodes_on_one_database_see_each_others_changes_at_once() {
    let Some((a, b)) = two_nodes_on_one_database().await else {
        return;
    };
    let provider = a.provider_key("copenhagen").await;

    // A dataset published on node A takes readings on node B.
    let (status, body) = a
        .post_as(
            "/v1/catalog",
            &provider,
            json!({"id": "harbour-noise", "title": "Harbour noise", "licence": "CC0-1.0",
                   "fields": [{"name": "level_db", "type": "float"}]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, made) = a
        .post_as(
            "/v1/keys",
            &provider,
            json!({"kind": "device", "datasets": ["harbour-noise"]}),
        )
        .await;
    assert_eq!(status, 201, "{made}");
    let device = made["secret"].as_str().unwrap().to_string();
    let started = std::time::Instant::now();
    loop {
        let resp = b
            .post_json(
                "harbour-noise",
                &device,
                json!([{"sensor_id": "quay-1", "level_db": 61.5}]),
            )
            .await;
        if resp.status() == 204 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "node B still answers {} a second after node A published",
            resp.status()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A browser signed in on node A is signed in on node B (behind one load balancer), and
    // signing out on node B ends it on node A.
    let (_, browser) = a.account("subscriber", "Harbour Co", "logistics").await;
    let resp = a
        .client
        .post(a.url("/v1/sessions"))
        .bearer_auth(&browser)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let cookie = resp.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let csrf = resp.json::<serde_json::Value>().await.unwrap()["csrf_token"]
        .as_str()
        .unwrap()
        .to_string();
    let me = |gw: &Gateway| {
        gw.client
            .get(gw.url("/v1/me"))
            .header("cookie", cookie.clone())
            .send()
    };
    assert_eq!(me(&b).await.unwrap().status(), 200);
    let out = b
        .client
        .delete(b.url("/v1/sessions/current"))
        .header("cookie", &cookie)
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 204);
    assert_eq!(me(&a).await.unwrap().status(), 401);

    // A subscription cancelled on node A ends node B's cached entitlement.
    let (_, subscriber) = a.account("subscriber", "Mobility Lab", "research").await;
    crate::live::plan(&a, &provider, crate::live::open_plan()).await;
    let id = crate::live::subscribe(&a, &subscriber, "open").await;
    let (status, _) = b.get_as("/v1/access/traffic-counts", &subscriber).await;
    assert_eq!(status, 200, "node B grants it (and caches that)");

    // A key revoked on node A ends its live feed on node B within a second.
    let (status, second) = a
        .post_as("/v1/keys", &subscriber, json!({"kind": "subscriber"}))
        .await;
    assert_eq!(status, 201, "{second}");
    let (status, feed) = crate::live::Sse::open(
        &b,
        crate::live::LIVE,
        second["secret"].as_str().unwrap(),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let mut feed = feed.unwrap();
    let (status, _) = a
        .delete_as(
            &format!("/v1/keys/{}", second["key"]["id"].as_str().unwrap()),
            &subscriber,
        )
        .await;
    assert_eq!(status, 204);
    let revoked = std::time::Instant::now();
    let end = feed
        .next(Duration::from_secs(3))
        .await
        .expect("an end event");
    assert_eq!(end.event, "end");
    assert_eq!(end.json()["reason"], "key_revoked");
    assert!(
        revoked.elapsed() < Duration::from_secs(1),
        "node B ended the session {:?} after node A revoked its key",
        revoked.elapsed()
    );
    let (status, _) = a
        .delete_as(&format!("/v1/subscriptions/{id}"), &subscriber)
        .await;
    assert_eq!(status, 200);
    let started = std::time::Instant::now();
    loop {
        let (status, _) = b.get_as("/v1/access/traffic-counts", &subscriber).await;
        if status == 404 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "node B still grants a subscription node A cancelled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn two_nodes_meter_once_each_and_invoice_one_set() {
    let Some((a, b)) = two_nodes_on_one_database().await else {
        return;
    };
    let provider = a.provider_key("copenhagen").await;
    let (status, body) = a
        .post_as(
            "/v1/catalog/traffic-counts/plans",
            &provider,
            json!({"id": "metered", "name": "Pay per use", "kind": "metered",
                   "currency": "DKK", "per_1000_minor": 40}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let mut subscriptions = Vec::new();
    for name in ["Mobility Lab", "Harbour Co", "Bike Share"] {
        let (_, key) = a.account("subscriber", name, "research").await;
        let id = crate::live::subscribe(&a, &key, "metered").await;
        let (status, _) = a
            .post_as(
                &format!("/v1/subscriptions/{id}/payments"),
                &a.admin_key,
                json!({}),
            )
            .await;
        assert_eq!(status, 201);
        subscriptions.push((key, id));
    }

    // Both nodes deliver to every subscriber and flush at the same moment.
    for (_, id) in &subscriptions {
        a.app().market().usage().record(id, 1_000, 100_000);
        b.app().market().usage().record(id, 234, 23_400);
    }
    let (flushed_a, flushed_b) = tokio::join!(
        a.app().market().usage().flush(),
        b.app().market().usage().flush()
    );
    flushed_a.unwrap();
    flushed_b.unwrap();
    for (key, _) in &subscriptions {
        let (status, usage) = b.get_as("/v1/usage", key).await;
        assert_eq!(status, 200, "{usage}");
        assert_eq!(usage["total_readings"], 1_234, "{usage}");
        assert_eq!(usage["total_bytes"], 123_400, "{usage}");
    }

    // Invoices generated on both nodes at once: one set, the same on both.
    let period = citygate::calendar::month_of(citygate::model::now_micros());
    let body = json!({"period": period});
    let ((status_a, made_a), (status_b, made_b)) = tokio::join!(
        a.post_as("/v1/invoices/generate", &a.admin_key, body.clone()),
        b.post_as("/v1/invoices/generate", &b.admin_key, body.clone())
    );
    assert_eq!((status_a, status_b), (200, 200), "{made_a} {made_b}");
    let ids = |made: &serde_json::Value| {
        let mut ids: Vec<String> = made
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap().to_string())
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(ids(&made_a).len(), 3, "{made_a}");
    assert_eq!(ids(&made_a), ids(&made_b), "one set of invoices");
    for (key, _) in &subscriptions {
        let (_, invoices) = a.get_as("/v1/invoices", key).await;
        let invoices = invoices.as_array().unwrap();
        assert_eq!(invoices.len(), 1, "{invoices:?}");
        assert_eq!(invoices[0]["lines"][0]["quantity"], 1_234, "{invoices:?}");
    }
}
