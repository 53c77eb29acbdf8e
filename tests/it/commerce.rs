//! The commercial loop over HTTP with the manual payment provider: plans, subscriptions,
//! payments, entitlements, usage, invoices and provider statements; and who may see what.

use serde_json::{Value, json};

use crate::harness::*;

const MONTH_US: i64 = 28 * 86_400_000_000;

/// Prices traffic-counts (provider `copenhagen`): a delayed free plan, a monthly plan and a
/// metered one.
async fn price_traffic(gw: &Gateway, provider: &str) {
    for plan in [
        json!({"id": "traffic-free", "name": "Free, 15 minutes late", "kind": "free", "delay": "15m"}),
        json!({"id": "traffic-live", "name": "Live", "kind": "monthly", "currency": "DKK", "price_minor": 49_900}),
        json!({"id": "traffic-metered", "name": "Pay per use", "kind": "metered", "currency": "DKK", "per_1000_minor": 40}),
    ] {
        let (status, body) = gw
            .post_as("/v1/catalog/traffic-counts/plans", provider, plan)
            .await;
        assert_eq!(status, 201, "{body}");
    }
}

fn current_period() -> String {
    citygate::calendar::month_of(citygate::model::now_micros())
}

#[tokio::test]
async fn a_provider_prices_a_subscriber_pays_usage_is_invoiced_and_stated() {
    let gw = Gateway::start().await;
    let provider = gw.provider_key("copenhagen").await;
    let (alice_id, alice) = gw.account("subscriber", "Mobility Lab", "research").await;
    let (bob_id, bob) = gw.account("subscriber", "Taxi Co", "mobility").await;

    // A bad plan is told every problem; a subscriber cannot price a dataset it does not own.
    let (status, body) = gw
        .post_as(
            "/v1/catalog/traffic-counts/plans",
            &provider,
            json!({"name": "x", "kind": "monthly", "currency": "dkk", "delay": "1h"}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let msg = body["message"].as_str().unwrap();
    for needle in ["currency", "price_minor", "real time"] {
        assert!(msg.contains(needle), "{msg}");
    }
    assert_eq!(
        gw.post_as(
            "/v1/catalog/traffic-counts/plans",
            &alice,
            json!({"name": "mine", "kind": "free"})
        )
        .await
        .0,
        404
    );
    price_traffic(&gw, &provider).await;
    let (_, item) = gw.get_as("/v1/catalog/traffic-counts", "").await;
    let offered: Vec<&str> = item["plans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(offered, ["traffic-free", "traffic-live", "traffic-metered"]);
    assert_eq!(item["plans"][0]["delay"], "15m");

    // Nothing before subscribing.
    assert_eq!(gw.get_as("/v1/access/traffic-counts", &alice).await.0, 404);
    // The provider and the admin may have their data without a plan.
    let (status, grant) = gw.get_as("/v1/access/traffic-counts", &provider).await;
    assert_eq!((status, grant["delay"].clone()), (200, json!("0s")));
    assert_eq!(gw.get_as("/v1/access/weather", &provider).await.0, 200);
    assert_eq!(
        gw.get_as("/v1/access/energy-meters", &provider).await.0,
        404
    );
    assert_eq!(
        gw.get_as("/v1/access/energy-meters", &gw.admin_key).await.0,
        200
    );

    // Free: active at once, 15 minutes late.
    let (status, free) = gw
        .post_as("/v1/subscriptions", &alice, json!({"plan": "traffic-free"}))
        .await;
    assert_eq!(status, 201, "{free}");
    assert_eq!(free["subscription"]["status"], "active");
    assert!(free.get("checkout").is_none());
    let free_id = free["subscription"]["id"].as_str().unwrap().to_string();
    let (status, grant) = gw.get_as("/v1/access/traffic-counts", &alice).await;
    assert_eq!(status, 200, "{grant}");
    assert_eq!(grant["delay"], "15m");
    assert_eq!(grant["subscription"], free_id.as_str());
    assert_eq!(grant["expires_at"], Value::Null);
    // One live subscription per plan.
    assert_eq!(
        gw.post_as("/v1/subscriptions", &alice, json!({"plan": "traffic-free"}))
            .await
            .0,
        409
    );

    // Monthly: pending until paid; the checkout says where to pay.
    let (status, live) = gw
        .post_as("/v1/subscriptions", &alice, json!({"plan": "traffic-live"}))
        .await;
    assert_eq!(status, 201, "{live}");
    assert_eq!(live["subscription"]["status"], "pending_payment");
    let live_id = live["subscription"]["id"].as_str().unwrap().to_string();
    assert!(
        live["checkout"]["url"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/v1/subscriptions/{live_id}")),
        "{live}"
    );
    assert_eq!(
        gw.get_as("/v1/access/traffic-counts", &alice).await.1["delay"],
        "15m",
        "unpaid: still the free plan's terms"
    );
    // Only an admin records a payment.
    let pay = format!("/v1/subscriptions/{live_id}/payments");
    assert_eq!(
        gw.post_as(&pay, &alice, json!({"reference": "x"})).await.0,
        404
    );
    let before = citygate::model::now_micros();
    let (status, paid) = gw
        .post_as(&pay, &gw.admin_key, json!({"reference": "bank-2026-001"}))
        .await;
    assert_eq!(status, 201, "{paid}");
    assert_eq!(paid["status"], "active");
    let period_end = paid["period_end"].as_i64().unwrap();
    assert!(period_end >= before + MONTH_US, "{paid}");
    // The same transfer recorded twice extends nothing.
    let (status, again) = gw
        .post_as(&pay, &gw.admin_key, json!({"reference": "bank-2026-001"}))
        .await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["period_end"].as_i64().unwrap(), period_end);
    let (_, grant) = gw.get_as("/v1/access/traffic-counts", &alice).await;
    assert_eq!(grant["delay"], "0s", "paid: real time");
    assert_eq!(grant["plan"], "traffic-live");
    assert_eq!(grant["expires_at"].as_i64().unwrap(), period_end);

    // Metered: activated by the admin (no fee), billed by use.
    let (_, metered) = gw
        .post_as(
            "/v1/subscriptions",
            &bob,
            json!({"plan": "traffic-metered"}),
        )
        .await;
    let metered_id = metered["subscription"]["id"].as_str().unwrap().to_string();
    let (status, _) = gw
        .post_as(
            &format!("/v1/subscriptions/{metered_id}/payments"),
            &gw.admin_key,
            json!({}),
        )
        .await;
    assert_eq!(status, 201);
    assert_eq!(gw.get_as("/v1/access/traffic-counts", &bob).await.0, 200);

    // Deliveries are metered (the feed paths call this for every reading they send).
    let usage = gw.app().market().usage();
    usage.record(&metered_id, 12_000, 1_200_000);
    usage.record(&metered_id, 345, 34_500);
    usage.record(&live_id, 1_000, 100_000);
    let (status, bob_usage) = gw.get_as("/v1/usage", &bob).await;
    assert_eq!(status, 200, "{bob_usage}");
    assert_eq!(bob_usage["total_readings"], 12_345);
    assert_eq!(bob_usage["total_bytes"], 1_234_500);
    assert_eq!(bob_usage["rows"][0]["subscription"], metered_id.as_str());
    let (_, alice_usage) = gw.get_as("/v1/usage", &alice).await;
    assert_eq!(alice_usage["total_readings"], 1_000);
    let (_, provider_usage) = gw.get_as("/v1/usage", &provider).await;
    assert_eq!(provider_usage["total_readings"], 13_345);
    assert_eq!(provider_usage["rows"][0]["dataset"], "traffic-counts");
    assert!(provider_usage["rows"][0].get("subscription").is_none());
    assert_eq!(gw.get_as("/v1/usage?from=yesterday", &bob).await.0, 400);

    // Invoices for this month: Alice's fee (settled), Bob's usage (due).
    let period = current_period();
    assert_eq!(
        gw.post_as("/v1/invoices/generate", &alice, json!({"period": period}))
            .await
            .0,
        403
    );
    let (status, invoices) = gw
        .post_as(
            "/v1/invoices/generate",
            &gw.admin_key,
            json!({"period": period}),
        )
        .await;
    assert_eq!(status, 200, "{invoices}");
    assert_eq!(invoices.as_array().unwrap().len(), 2, "{invoices}");
    let (_, alice_invoices) = gw.get_as("/v1/invoices", &alice).await;
    let inv = &alice_invoices[0];
    assert_eq!(inv["account"], alice_id.as_str());
    assert_eq!(inv["currency"], "DKK");
    assert_eq!(inv["total_minor"], 49_900);
    assert_eq!(inv["due_minor"], 0);
    assert_eq!(inv["status"], "paid");
    assert_eq!(inv["lines"][0]["kind"], "flat");
    let (_, bob_invoices) = gw.get_as("/v1/invoices", &bob).await;
    assert_eq!(bob_invoices.as_array().unwrap().len(), 1);
    let inv = &bob_invoices[0];
    assert_eq!(inv["account"], bob_id.as_str());
    // 12 345 readings at 0.40 DKK per 1000 = 4.938 DKK → 494 øre.
    assert_eq!(inv["total_minor"], 494);
    assert_eq!(inv["due_minor"], 494);
    assert_eq!(inv["status"], "open");
    assert_eq!(inv["lines"][0]["quantity"], 12_345);
    let bob_invoice = inv["id"].as_str().unwrap().to_string();
    let csv = gw
        .client
        .get(gw.url(&format!("/v1/invoices/{bob_invoice}?format=csv")))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert_eq!(csv.headers()["content-type"], "text/csv; charset=utf-8");
    let csv = csv.text().await.unwrap();
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows.len(), 2, "{csv}");
    assert!(rows[0].starts_with("invoice,period,account,currency"));
    assert!(
        rows[1].starts_with(&format!("{bob_invoice},{period},{bob_id},DKK,open,1,")),
        "{csv}"
    );
    assert!(rows[1].ends_with(",12345,40,494,false"), "{csv}");

    // The provider's statement: revenue, 10 % platform fee, payout, who subscribes.
    let (status, st) = gw
        .get_as(&format!("/v1/statements?period={period}"), &provider)
        .await;
    assert_eq!(status, 200, "{st}");
    assert_eq!(
        st["datasets"],
        json!([{"dataset": "traffic-counts", "currency": "DKK", "flat_minor": 49_900,
                "metered_minor": 494, "queried_minor": 0, "revenue_minor": 50_394,
                "readings": 12_345, "query_rows": 0}])
    );
    assert_eq!(
        st["totals"],
        json!([{"currency": "DKK", "revenue_minor": 50_394, "platform_fee_minor": 5_039,
                "payout_minor": 45_355}])
    );
    let subscribers: Vec<(String, String, i64)> = st["subscribers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["plan"].as_str().unwrap().to_string(),
                c["sector"].as_str().unwrap().to_string(),
                c["subscribers"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        subscribers,
        [
            ("traffic-free".into(), "research".into(), 1),
            ("traffic-live".into(), "research".into(), 1),
            ("traffic-metered".into(), "mobility".into(), 1),
        ]
    );
    // Another provider's statement has none of it.
    let energy = gw.provider_key("copenhagen-energy").await;
    let (_, other) = gw
        .get_as(&format!("/v1/statements?period={period}"), &energy)
        .await;
    assert_eq!(other["datasets"], json!([]));
    assert_eq!(other["subscribers"], json!([]));

    // The admin marks Bob's invoice paid; regenerating keeps it as it is.
    let (status, paid) = gw
        .post_as(
            &format!("/v1/invoices/{bob_invoice}/pay"),
            &gw.admin_key,
            json!({}),
        )
        .await;
    assert_eq!((status, paid["status"].clone()), (200, json!("paid")));
    usage.record(&metered_id, 1_000, 100);
    gw.post_as(
        "/v1/invoices/generate",
        &gw.admin_key,
        json!({"period": period}),
    )
    .await;
    let (_, again) = gw
        .get_as(&format!("/v1/invoices/{bob_invoice}"), &bob)
        .await;
    assert_eq!(
        (again["total_minor"].clone(), again["status"].clone()),
        (json!(494), json!("paid"))
    );

    // Cancelling a paid plan ends it at the period end; a free one at once.
    let (status, cancelled) = gw
        .delete_as(&format!("/v1/subscriptions/{live_id}"), &alice)
        .await;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["status"], "active");
    assert_eq!(cancelled["cancel_at_period_end"], true);
    let (_, cancelled) = gw
        .delete_as(&format!("/v1/subscriptions/{free_id}"), &alice)
        .await;
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(
        gw.get_as("/v1/access/traffic-counts", &alice).await.1["plan"],
        "traffic-live"
    );

    // Past the period end the paid access is gone, even before the sweep stores it.
    let market = gw.app().market();
    let key = gw
        .app()
        .store()
        .key_by_secret(&alice)
        .await
        .unwrap()
        .unwrap();
    assert!(
        market
            .entitlement(&key, "traffic-counts", period_end - 1)
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(
        market
            .entitlement(&key, "traffic-counts", period_end)
            .await
            .unwrap(),
        None
    );
    let later = period_end + 86_400_000_000;
    assert_eq!(market.sweep(later).await.unwrap(), 2, "Alice's and Bob's");
    let (_, subs) = gw.get_as("/v1/subscriptions", &alice).await;
    let statuses: Vec<(&str, &str)> = subs
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["plan"].as_str().unwrap(), s["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        statuses,
        [("traffic-live", "expired"), ("traffic-free", "cancelled")]
    );
    // The metered subscription was not cancelled: past due until paid again.
    let (_, bob_subs) = gw.get_as("/v1/subscriptions", &bob).await;
    assert_eq!(bob_subs[0]["status"], "past_due");

    // Withdrawing a plan takes it off offer; it takes no new subscribers.
    let (status, withdrawn) = gw.delete_as("/v1/plans/traffic-live", &provider).await;
    assert_eq!((status, withdrawn["active"].clone()), (200, json!(false)));
    assert_eq!(
        gw.post_as("/v1/subscriptions", &bob, json!({"plan": "traffic-live"}))
            .await
            .0,
        409
    );
}

#[tokio::test]
async fn revoking_a_key_or_expiring_a_plan_ends_access_within_a_second() {
    let gw = Gateway::start().await;
    let provider = gw.provider_key("copenhagen").await;
    price_traffic(&gw, &provider).await;
    let (_, alice) = gw.account("subscriber", "Mobility Lab", "research").await;
    let (status, _) = gw
        .post_as("/v1/subscriptions", &alice, json!({"plan": "traffic-free"}))
        .await;
    assert_eq!(status, 201);
    // A second key, limited to another dataset, does not reach traffic-counts.
    let (_, limited) = gw
        .post_as(
            "/v1/keys",
            &alice,
            json!({"kind": "subscriber", "datasets": ["weather"]}),
        )
        .await;
    let limited = limited["secret"].as_str().unwrap().to_string();
    assert_eq!(
        gw.get_as("/v1/access/traffic-counts", &limited).await.0,
        404
    );
    assert_eq!(gw.get_as("/v1/access/traffic-counts", &alice).await.0, 200);
    // Look-alike ids are other datasets: none exists.
    for id in [
        "Traffic-Counts",
        "traffic-counts%2F..",
        "traffic-counts%20",
        "traffic_counts",
    ] {
        assert_eq!(
            gw.get_as(&format!("/v1/access/{id}"), &alice).await.0,
            404,
            "{id}"
        );
    }

    let (_, me) = gw.get_as("/v1/me", &alice).await;
    let key_id = me["key"]["id"].as_str().unwrap().to_string();
    let (status, _) = gw.delete_as(&format!("/v1/keys/{key_id}"), &alice).await;
    assert_eq!(status, 204);
    let revoked = std::time::Instant::now();
    loop {
        let status = gw.get_as("/v1/access/traffic-counts", &alice).await.0;
        if status == 401 {
            break;
        }
        assert!(
            revoked.elapsed() < std::time::Duration::from_millis(1100),
            "a revoked key still had access after {:?}",
            revoked.elapsed()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Who may do what to whose object. Each row: method, path, body, and the expected status
/// for admin, the owning provider, another provider, the subscribing subscriber, another
/// subscriber, a device key, no key.
#[tokio::test]
async fn every_endpoint_answers_every_role_for_own_and_others_objects() {
    let gw = Gateway::start().await;
    let owner = gw.provider_key("copenhagen").await;
    let other_provider = gw.provider_key("copenhagen-energy").await;
    price_traffic(&gw, &owner).await;
    let (_, subscriber) = gw.account("subscriber", "Mobility Lab", "research").await;
    let (_, other_subscriber) = gw.account("subscriber", "Taxi Co", "mobility").await;
    let device = gw.device_key(&[TRAFFIC]).await;
    let (_, sub) = gw
        .post_as(
            "/v1/subscriptions",
            &subscriber,
            json!({"plan": "traffic-live"}),
        )
        .await;
    let sub = sub["subscription"]["id"].as_str().unwrap().to_string();
    // The other subscriber's own, free subscription, to check nobody else sees it.
    let (_, theirs) = gw
        .post_as(
            "/v1/subscriptions",
            &other_subscriber,
            json!({"plan": "traffic-free"}),
        )
        .await;
    let theirs = theirs["subscription"]["id"].as_str().unwrap().to_string();
    gw.app().market().usage().record(&sub, 10, 10);
    let period = current_period();
    gw.post_as(
        &format!("/v1/subscriptions/{sub}/payments"),
        &gw.admin_key,
        json!({"reference": "r-1"}),
    )
    .await;
    let (_, invoices) = gw
        .post_as(
            "/v1/invoices/generate",
            &gw.admin_key,
            json!({"period": period}),
        )
        .await;
    let invoice = invoices[0]["id"].as_str().unwrap().to_string();

    let keys = [
        ("admin", gw.admin_key.clone()),
        ("owner", owner.clone()),
        ("other provider", other_provider.clone()),
        ("subscriber", subscriber.clone()),
        ("other subscriber", other_subscriber.clone()),
        ("device", device.clone()),
        ("none", String::new()),
    ];
    let free_plan = json!({"name": "Another", "kind": "free"});
    #[rustfmt::skip]
    let matrix: Vec<(&str, String, Option<Value>, [u16; 7])> = vec![
        // method, path, body: admin, owner, other provider, subscriber, other subscriber, device, none
        ("GET", "/v1/catalog/traffic-counts/plans".into(), None, [200, 200, 200, 200, 200, 200, 200]),
        ("GET", "/v1/catalog/traffic-counts/plans?all=true".into(), None, [200, 200, 404, 404, 404, 404, 401]),
        ("POST", "/v1/catalog/traffic-counts/plans".into(), Some(free_plan), [201, 201, 404, 404, 404, 404, 401]),
        ("GET", format!("/v1/subscriptions/{sub}"), None, [200, 200, 404, 200, 404, 404, 401]),
        ("GET", format!("/v1/subscriptions/{theirs}"), None, [200, 200, 404, 404, 200, 404, 401]),
        ("GET", format!("/v1/subscriptions/{sub}/payments"), None, [200, 200, 404, 200, 404, 404, 401]),
        ("GET", format!("/v1/subscriptions/{sub}/checkout"), None, [404, 404, 404, 409, 404, 404, 401]),
        ("POST", format!("/v1/subscriptions/{sub}/checkout/complete"), None, [404, 404, 404, 409, 404, 404, 401]),
        ("POST", format!("/v1/subscriptions/{sub}/payments"), Some(json!({"reference": "r-1"})), [200, 404, 404, 404, 404, 404, 401]),
        ("POST", "/v1/subscriptions".into(), Some(json!({"plan": "traffic-metered"})), [403, 403, 403, 201, 201, 403, 401]),
        ("GET", "/v1/access/traffic-counts".into(), None, [200, 200, 404, 200, 200, 404, 401]),
        ("GET", "/v1/access/energy-meters".into(), None, [200, 404, 200, 404, 404, 404, 401]),
        ("GET", "/v1/usage".into(), None, [200, 200, 200, 200, 200, 403, 401]),
        ("GET", format!("/v1/invoices?period={period}"), None, [200, 200, 200, 200, 200, 200, 401]),
        ("GET", format!("/v1/invoices/{invoice}"), None, [200, 404, 404, 200, 404, 404, 401]),
        ("POST", format!("/v1/invoices/{invoice}/pay"), None, [409, 404, 404, 404, 404, 404, 401]),
        ("POST", "/v1/invoices/generate".into(), Some(json!({"period": period})), [200, 403, 403, 403, 403, 403, 401]),
        ("GET", format!("/v1/statements?period={period}"), None, [400, 200, 200, 403, 403, 403, 401]),
        ("GET", format!("/v1/statements?period={period}&provider=copenhagen"), None, [200, 200, 404, 403, 403, 403, 401]),
        ("DELETE", format!("/v1/subscriptions/{theirs}"), None, [200, 404, 404, 404, 200, 404, 401]),
        ("DELETE", "/v1/plans/traffic-free".into(), None, [200, 200, 404, 404, 404, 404, 401]),
    ];
    let mut wrong = Vec::new();
    for (method, path, body, expected) in &matrix {
        // Mutating rows run the permitted callers last, so a refusal is seen before the
        // change (every 2xx caller repeats the same change, which must stay allowed).
        let mut order: Vec<usize> = (0..keys.len()).collect();
        order.sort_by_key(|&i| (200..300).contains(&expected[i]));
        for i in order {
            let (role, key) = &keys[i];
            let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
            let (status, answer) = gw.call(method.clone(), path, key, body.clone()).await;
            if status != expected[i] {
                wrong.push(format!(
                    "{method} {path} as {role}: {status}, expected {} ({answer})",
                    expected[i]
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );

    // Listings hold only what each may see.
    let ids = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s["account"].as_str().unwrap().to_string())
            .collect()
    };
    let (_, mine) = gw.get_as("/v1/subscriptions", &subscriber).await;
    let me = gw.get_as("/v1/me", &subscriber).await.1["account"]["id"].clone();
    assert!(ids(&mine).iter().all(|a| json!(a) == me), "{mine}");
    let (_, none) = gw.get_as("/v1/subscriptions", &other_provider).await;
    assert_eq!(none, json!([]));
    let (_, all) = gw.get_as("/v1/subscriptions", &owner).await;
    assert_eq!(all.as_array().unwrap().len(), 4, "{all}");
    let (_, invoices) = gw.get_as("/v1/invoices", &other_subscriber).await;
    assert_eq!(invoices, json!([]));
    let (_, usage) = gw.get_as("/v1/usage", &other_subscriber).await;
    assert_eq!(usage["total_readings"], 0);
    let (_, usage) = gw.get_as("/v1/usage", &other_provider).await;
    assert_eq!(usage["total_readings"], 0);
}
