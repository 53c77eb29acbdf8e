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
