//! Paying through Stripe, against `localstripe` (a Stripe API server from PyPI that
//! `scripts/test.sh` installs): citygate creates the customer, plan, SetupIntent and
//! subscription there and receives its signed webhooks. Then webhook forgery: tampered,
//! wrongly signed, stale, replayed and out-of-order events grant and extend nothing.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use citygate::market::payments::stripe::sign;
use serde_json::{Value, json};

use crate::harness::*;

const SECRET_KEY: &str = "sk_test_citygate";
const WEBHOOK_SECRET: &str = "whsec_citygate_new";
const OLD_WEBHOOK_SECRET: &str = "whsec_citygate_old";

struct LocalStripe {
    child: Child,
    base: String,
    client: reqwest::Client,
}

impl Drop for LocalStripe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl LocalStripe {
    async fn start() -> LocalStripe {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = python()
            // Its state is kept in memory alone (it would load /tmp/localstripe.pickle).
            .args([
                "-m",
                "localstripe",
                "--from-scratch",
                "--port",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("localstripe starts (scripts/test.sh installs it)");
        let stripe = LocalStripe {
            child,
            base: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::new(),
        };
        let started = Instant::now();
        loop {
            if let Ok(r) = stripe
                .client
                .get(format!("{}/v1/customers", stripe.base))
                .bearer_auth(SECRET_KEY)
                .send()
                .await
                && r.status().is_success()
            {
                return stripe;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "localstripe did not start on port {port} (pip install localstripe)"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn post(&self, path: &str, form: &[(&str, &str)], key: Option<&str>) -> Value {
        let mut req = self.client.post(format!("{}{path}", self.base)).form(form);
        if let Some(key) = key {
            req = req.bearer_auth(key);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        assert!(status.is_success(), "{path}: {status} {text}");
        body
    }

    async fn get(&self, path: &str) -> Value {
        self.client
            .get(format!("{}{path}", self.base))
            .bearer_auth(SECRET_KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

async fn gateway_on(stripe: &LocalStripe) -> Gateway {
    let base = stripe.base.clone();
    let gw = Gateway::start_with(move |c| {
        c.payments.provider = citygate::config::PaymentProviderKind::Stripe;
        c.payments.stripe.api_base = base;
        c.payments.stripe.secret_key.0 = SECRET_KEY.into();
        c.payments.stripe.webhook_secrets = vec![
            citygate::config::Secret(OLD_WEBHOOK_SECRET.into()),
            citygate::config::Secret(WEBHOOK_SECRET.into()),
        ];
    })
    .await;
    // Stripe's side of the webhook endpoint: where to send events and the signing secret.
    stripe
        .post(
            "/_config/webhooks/citygate",
            &[
                ("url", &gw.url("/v1/payments/webhook")),
                ("secret", WEBHOOK_SECRET),
            ],
            None,
        )
        .await;
    gw
}

/// The subscriber's client confirms the SetupIntent with Stripe, as Stripe.js would.
async fn confirm_card(stripe: &LocalStripe, checkout: &Value, number: &str) -> reqwest::Response {
    let id = checkout["id"].as_str().unwrap();
    stripe
        .client
        .post(format!("{}/v1/setup_intents/{id}/confirm", stripe.base))
        .form(&[
            ("key", "pk_test_citygate"),
            ("client_secret", checkout["client_secret"].as_str().unwrap()),
            ("payment_method_data[type]", "card"),
            ("payment_method_data[card][number]", number),
            ("payment_method_data[card][exp_month]", "12"),
            ("payment_method_data[card][exp_year]", "2034"),
            ("payment_method_data[card][cvc]", "123"),
        ])
        .send()
        .await
        .unwrap()
}

async fn wait_for_status(gw: &Gateway, key: &str, id: &str, status: &str) -> Value {
    let started = Instant::now();
    loop {
        let (_, sub) = gw.get_as(&format!("/v1/subscriptions/{id}"), key).await;
        if sub["status"] == status {
            return sub;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "subscription {id} never became {status}: {sub}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Points Stripe's webhook for citygate nowhere: payments are made, but citygate never hears.
async fn silence_webhooks(stripe: &LocalStripe) {
    stripe
        .post(
            "/_config/webhooks/citygate",
            &[
                ("url", "http://127.0.0.1:9/nowhere"),
                ("secret", WEBHOOK_SECRET),
            ],
            None,
        )
        .await;
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Posts `event` to citygate's webhook signed with `secret` at `t`.
async fn deliver(gw: &Gateway, event: &Value, secret: &str, t: i64) -> (u16, Value) {
    let body = serde_json::to_vec(event).unwrap();
    post_webhook(gw, &body, Some(sign(secret, t, &body))).await
}

async fn post_webhook(gw: &Gateway, body: &[u8], signature: Option<String>) -> (u16, Value) {
    let mut req = gw
        .client
        .post(gw.url("/v1/payments/webhook"))
        .header("content-type", "application/json")
        .body(body.to_vec());
    if let Some(sig) = signature {
        req = req.header("stripe-signature", sig);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn invoice_event(id: &str, invoice: &str, stripe_sub: &str, start: i64, end: i64) -> Value {
    json!({
        "id": id,
        "object": "event",
        "type": "invoice.payment_succeeded",
        "created": unix_now(),
        "data": {"object": {
            "id": invoice,
            "object": "invoice",
            "subscription": stripe_sub,
            "amount_paid": 49_900,
            "currency": "dkk",
            "status": "paid",
            "lines": {"object": "list", "data": [{"period": {"start": start, "end": end}}]},
        }}
    })
}

#[tokio::test]
async fn a_subscriber_pays_through_stripe_and_forged_webhooks_grant_nothing() {
    let stripe = LocalStripe::start().await;
    let gw = gateway_on(&stripe).await;
    let provider = gw.provider_key("copenhagen").await;
    let (status, body) = gw
        .post_as(
            "/v1/catalog/traffic-counts/plans",
            &provider,
            json!({"id": "traffic-live", "name": "Live", "kind": "monthly",
                   "currency": "DKK", "price_minor": 49_900}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (alice_id, alice) = gw.account("subscriber", "Mobility Lab", "research").await;

    // Subscribing opens a checkout at Stripe.
    let (status, created) = gw
        .post_as("/v1/subscriptions", &alice, json!({"plan": "traffic-live"}))
        .await;
    assert_eq!(status, 201, "{created}");
    let sub_id = created["subscription"]["id"].as_str().unwrap().to_string();
    assert_eq!(created["subscription"]["status"], "pending_payment");
    assert_eq!(created["subscription"]["payment_provider"], "stripe");
    let checkout = &created["checkout"];
    assert!(
        checkout["id"].as_str().unwrap().starts_with("seti_"),
        "{created}"
    );
    assert_eq!(checkout["status"], "requires_payment_method");
    let plan = stripe.get("/v1/plans/citygate_traffic-live").await;
    assert_eq!(
        (plan["amount"].clone(), plan["currency"].clone()),
        (json!(49_900), json!("dkk"))
    );
    let customers = stripe.get("/v1/customers").await;
    assert_eq!(
        customers["data"][0]["metadata"]["citygate_account"],
        alice_id.as_str(),
        "{customers}"
    );
    // The checkout can be fetched again by its subscriber alone.
    let (status, again) = gw
        .get_as(&format!("/v1/subscriptions/{sub_id}/checkout"), &alice)
        .await;
    assert_eq!((status, again["id"].clone()), (200, checkout["id"].clone()));

    // Completing before the card is confirmed is refused; a declined card is told so.
    let complete = format!("/v1/subscriptions/{sub_id}/checkout/complete");
    let (status, body) = gw.post_as(&complete, &alice, json!({})).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(gw.get_as("/v1/access/traffic-counts", &alice).await.0, 404);

    let confirmed = confirm_card(&stripe, checkout, "4242424242424242").await;
    assert!(confirmed.status().is_success());
    let (status, body) = gw.post_as(&complete, &alice, json!({})).await;
    assert_eq!(status, 202, "{body}");
    let stripe_sub = body["payment_ref"].as_str().unwrap().to_string();
    assert!(stripe_sub.starts_with("sub_"), "{body}");
    assert_eq!(gw.post_as(&complete, &alice, json!({})).await.0, 409);

    // Stripe charges the first month and says so in a signed webhook: active.
    let active = wait_for_status(&gw, &alice, &sub_id, "active").await;
    let period_end = active["period_end"].as_i64().unwrap();
    let stripe_side = stripe.get(&format!("/v1/subscriptions/{stripe_sub}")).await;
    assert_eq!(
        period_end,
        stripe_side["current_period_end"].as_i64().unwrap() * 1_000_000
    );
    let (_, grant) = gw.get_as("/v1/access/traffic-counts", &alice).await;
    assert_eq!(grant["plan"], "traffic-live");
    assert_eq!(grant["expires_at"].as_i64().unwrap(), period_end);
    let (_, payments) = gw
        .get_as(&format!("/v1/subscriptions/{sub_id}/payments"), &alice)
        .await;
    assert_eq!(payments[0]["amount_minor"], 49_900);
    assert_eq!(payments[0]["currency"], "DKK");
    assert!(
        payments[0]["reference"]
            .as_str()
            .unwrap()
            .starts_with("in_")
    );

    // --- Forgery. Bob's subscription is pending; forged payments must not activate it.
    let (_, bob) = gw.account("subscriber", "Taxi Co", "mobility").await;
    let (_, bob_sub) = gw
        .post_as("/v1/subscriptions", &bob, json!({"plan": "traffic-live"}))
        .await;
    let bob_sub_id = bob_sub["subscription"]["id"].as_str().unwrap().to_string();
    let bob_checkout = bob_sub["checkout"].clone();
    assert!(
        confirm_card(&stripe, &bob_checkout, "4242424242424242")
            .await
            .status()
            .is_success()
    );
    // Bob's Stripe subscription exists (so events about it resolve), but its real payment
    // webhook is disabled by pointing Stripe's webhook elsewhere first.
    silence_webhooks(&stripe).await;
    let (status, body) = gw
        .post_as(
            &format!("/v1/subscriptions/{bob_sub_id}/checkout/complete"),
            &bob,
            json!({}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let bob_stripe_sub = body["payment_ref"].as_str().unwrap().to_string();
    let now = unix_now();
    let forged = invoice_event(
        "evt_forged_1",
        "in_forged_1",
        &bob_stripe_sub,
        now,
        now + 86_400 * 30,
    );
    let body = serde_json::to_vec(&forged).unwrap();
    let signed = sign(WEBHOOK_SECRET, now, &body);
    // No signature; a wrong secret; a tampered body; a stale timestamp; a future one.
    assert_eq!(post_webhook(&gw, &body, None).await.0, 400);
    assert_eq!(deliver(&gw, &forged, "whsec_guessed", now).await.0, 400);
    let mut tampered = forged.clone();
    tampered["data"]["object"]["amount_paid"] = json!(1);
    let tampered = serde_json::to_vec(&tampered).unwrap();
    assert_eq!(
        post_webhook(&gw, &tampered, Some(signed.clone())).await.0,
        400
    );
    // Twice the tolerance (300 s) either way: a second's edge would make the test depend on
    // the clock's steps between the test's `now` and the gateway's.
    assert_eq!(
        deliver(&gw, &forged, WEBHOOK_SECRET, now - 600).await.0,
        400
    );
    assert_eq!(
        deliver(&gw, &forged, WEBHOOK_SECRET, now + 600).await.0,
        400
    );
    assert_eq!(
        post_webhook(&gw, &body, Some(format!("t={now},v1=not-hex")))
            .await
            .0,
        400
    );
    assert_eq!(gw.get_as("/v1/access/traffic-counts", &bob).await.0, 404);
    let (_, bob_now) = gw
        .get_as(&format!("/v1/subscriptions/{bob_sub_id}"), &bob)
        .await;
    assert_eq!(bob_now["status"], "pending_payment");
    assert_eq!(
        gw.get_as(&format!("/v1/subscriptions/{bob_sub_id}/payments"), &bob)
            .await
            .1,
        json!([])
    );

    // --- Genuine events (signed with the secret being rotated out: still accepted), once.
    let next_start = period_end / 1_000_000;
    let next_end = next_start + 86_400 * 30;
    let renewal = invoice_event(
        "evt_renewal",
        "in_renewal",
        &stripe_sub,
        next_start,
        next_end,
    );
    let (status, answer) = deliver(&gw, &renewal, OLD_WEBHOOK_SECRET, unix_now()).await;
    assert_eq!(
        (status, answer["result"].clone()),
        (200, json!("applied")),
        "{answer}"
    );
    let extended = gw
        .get_as(&format!("/v1/subscriptions/{sub_id}"), &alice)
        .await
        .1;
    assert_eq!(
        extended["period_end"].as_i64().unwrap(),
        next_end * 1_000_000
    );
    // The same event again (a replay, freshly signed): nothing.
    let (status, answer) = deliver(&gw, &renewal, WEBHOOK_SECRET, unix_now()).await;
    assert_eq!((status, answer["result"].clone()), (200, json!("replayed")));
    // The same invoice under another event id: recorded once.
    let mut dup = renewal.clone();
    dup["id"] = json!("evt_renewal_dup");
    let (_, answer) = deliver(&gw, &dup, WEBHOOK_SECRET, unix_now()).await;
    assert_eq!(answer["result"], "ignored", "{answer}");
    let (_, payments) = gw
        .get_as(&format!("/v1/subscriptions/{sub_id}/payments"), &alice)
        .await;
    assert_eq!(payments.as_array().unwrap().len(), 2, "{payments}");

    // Out of order: an older period's payment arriving late moves nothing back; a failure
    // of an already-paid period leaves it active.
    let late = invoice_event(
        "evt_late",
        "in_late",
        &stripe_sub,
        next_start - 86_400 * 60,
        next_start - 86_400 * 30,
    );
    assert_eq!(deliver(&gw, &late, WEBHOOK_SECRET, unix_now()).await.0, 200);
    let mut failed = invoice_event(
        "evt_failed_old",
        "in_late",
        &stripe_sub,
        next_start - 86_400 * 60,
        next_start - 86_400 * 30,
    );
    failed["type"] = json!("invoice.payment_failed");
    assert_eq!(
        deliver(&gw, &failed, WEBHOOK_SECRET, unix_now()).await.0,
        200
    );
    let after = gw
        .get_as(&format!("/v1/subscriptions/{sub_id}"), &alice)
        .await
        .1;
    assert_eq!(after["status"], "active");
    assert_eq!(after["period_end"].as_i64().unwrap(), next_end * 1_000_000);

    // Stripe ends the subscription; a payment arriving after that grants nothing.
    let deleted = json!({
        "id": "evt_deleted", "type": "customer.subscription.deleted", "created": unix_now(),
        "data": {"object": {"id": stripe_sub, "object": "subscription", "status": "canceled"}}
    });
    let (status, answer) = deliver(&gw, &deleted, WEBHOOK_SECRET, unix_now()).await;
    assert_eq!((status, answer["result"].clone()), (200, json!("applied")));
    assert_eq!(gw.get_as("/v1/access/traffic-counts", &alice).await.0, 404);
    let zombie = invoice_event(
        "evt_zombie",
        "in_zombie",
        &stripe_sub,
        next_end,
        next_end + 86_400 * 30,
    );
    deliver(&gw, &zombie, WEBHOOK_SECRET, unix_now()).await;
    assert_eq!(gw.get_as("/v1/access/traffic-counts", &alice).await.0, 404);
    let (_, ended) = gw
        .get_as(&format!("/v1/subscriptions/{sub_id}"), &alice)
        .await;
    assert_eq!(ended["status"], "cancelled");
}

#[tokio::test]
async fn cancelling_a_stripe_subscription_stops_its_renewal_at_stripe() {
    let stripe = LocalStripe::start().await;
    let gw = gateway_on(&stripe).await;
    let provider = gw.provider_key("copenhagen").await;
    gw.post_as(
        "/v1/catalog/traffic-counts/plans",
        &provider,
        json!({"id": "traffic-live", "name": "Live", "kind": "monthly",
               "currency": "DKK", "price_minor": 49_900}),
    )
    .await;
    let (_, alice) = gw.account("subscriber", "Mobility Lab", "research").await;
    let (_, created) = gw
        .post_as("/v1/subscriptions", &alice, json!({"plan": "traffic-live"}))
        .await;
    let sub_id = created["subscription"]["id"].as_str().unwrap().to_string();
    // A card Stripe declines: the checkout cannot complete.
    let declined = confirm_card(&stripe, &created["checkout"], "4000000000000002").await;
    assert_eq!(declined.status().as_u16(), 402);
    let complete = format!("/v1/subscriptions/{sub_id}/checkout/complete");
    assert_eq!(gw.post_as(&complete, &alice, json!({})).await.0, 409);

    // A new subscription, paid with a good card.
    assert_eq!(
        gw.delete_as(&format!("/v1/subscriptions/{sub_id}"), &alice)
            .await
            .1["status"],
        "cancelled"
    );
    let (_, created) = gw
        .post_as("/v1/subscriptions", &alice, json!({"plan": "traffic-live"}))
        .await;
    let sub_id = created["subscription"]["id"].as_str().unwrap().to_string();
    assert!(
        confirm_card(&stripe, &created["checkout"], "4242424242424242")
            .await
            .status()
            .is_success()
    );
    let (status, body) = gw
        .post_as(
            &format!("/v1/subscriptions/{sub_id}/checkout/complete"),
            &alice,
            json!({}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let stripe_sub = body["payment_ref"].as_str().unwrap().to_string();
    wait_for_status(&gw, &alice, &sub_id, "active").await;

    let (status, cancelled) = gw
        .delete_as(&format!("/v1/subscriptions/{sub_id}"), &alice)
        .await;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["status"], "active");
    assert_eq!(cancelled["cancel_at_period_end"], true);
    let at_stripe = stripe.get(&format!("/v1/subscriptions/{stripe_sub}")).await;
    assert_eq!(at_stripe["cancel_at_period_end"], true);
    assert_eq!(gw.get_as("/v1/access/traffic-counts", &alice).await.0, 200);
}

/// Two racing completions start one Stripe subscription (one 409), and cancelling a
/// subscription whose first payment has not come stops it at Stripe at once.
#[tokio::test]
async fn a_pending_checkout_completes_once_and_cancels_at_stripe() {
    let stripe = LocalStripe::start().await;
    let gw = gateway_on(&stripe).await;
    let provider = gw.provider_key("copenhagen").await;
    gw.post_as(
        "/v1/catalog/traffic-counts/plans",
        &provider,
        json!({"id": "traffic-live", "name": "Live", "kind": "monthly",
               "currency": "DKK", "price_minor": 49_900}),
    )
    .await;
    let (_, alice) = gw.account("subscriber", "Mobility Lab", "research").await;
    // Racing subscribes: one subscription, one 409.
    let subscribe = || gw.post_as("/v1/subscriptions", &alice, json!({"plan": "traffic-live"}));
    let (a, b) = tokio::join!(subscribe(), subscribe());
    let mut statuses = [a.0, b.0];
    statuses.sort();
    assert_eq!(statuses, [201, 409], "{} / {}", a.1, b.1);
    let created = if a.0 == 201 { a.1 } else { b.1 };
    let sub_id = created["subscription"]["id"].as_str().unwrap().to_string();
    assert!(
        confirm_card(&stripe, &created["checkout"], "4242424242424242")
            .await
            .status()
            .is_success()
    );
    // Stripe's payment webhook goes nowhere: the subscription stays pending.
    silence_webhooks(&stripe).await;
    let complete = format!("/v1/subscriptions/{sub_id}/checkout/complete");
    let (a, b) = tokio::join!(
        gw.post_as(&complete, &alice, json!({})),
        gw.post_as(&complete, &alice, json!({}))
    );
    let mut statuses = [a.0, b.0];
    statuses.sort();
    assert_eq!(statuses, [202, 409], "{} / {}", a.1, b.1);
    let stripe_sub = if a.0 == 202 { &a.1 } else { &b.1 }["payment_ref"]
        .as_str()
        .unwrap()
        .to_string();
    let all = stripe.get("/v1/subscriptions?status=all").await;
    assert_eq!(all["data"].as_array().unwrap().len(), 1, "{all}");

    let (status, cancelled) = gw
        .delete_as(&format!("/v1/subscriptions/{sub_id}"), &alice)
        .await;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["status"], "cancelled");
    let at_stripe = stripe.get(&format!("/v1/subscriptions/{stripe_sub}")).await;
    assert_eq!(at_stripe["status"], "canceled", "{at_stripe}");
}
