use super::*;
use crate::config::DEFAULT_CONFIG;
use crate::market::accounts::{NewAccount, Role};
use crate::market::keys::{KeyKind, KeySpec};
use crate::market::store::tests::fresh_store;
use crate::market::usage::{Counts, UsageScope};

const DAY: Micros = 86_400_000_000;

async fn market() -> (Market, Option<tempfile::TempDir>) {
    let (store, dir) = fresh_store().await;
    let config = Config::from_toml(DEFAULT_CONFIG, "default", &[]).unwrap();
    for ds in &config.datasets {
        store
            .ensure_provider(&ds.provider, &ds.publisher)
            .await
            .unwrap();
    }
    store.sync_catalog(&config).await.unwrap();
    (Market::new(store, &config).unwrap(), dir)
}

fn plan(id: &str, kind: PlanKind) -> NewPlan {
    NewPlan {
        id: Some(id.into()),
        name: id.into(),
        kind,
        currency: kind.is_paid().then(|| "DKK".into()),
        price_minor: (kind == PlanKind::Monthly).then_some(10_000),
        per_1000_minor: (kind == PlanKind::Metered).then_some(40),
        delay: None,
        aggregate: None,
        history: None,
    }
}

async fn key(m: &Market, kind: KeyKind, account: &str, datasets: &[&str]) -> ApiKey {
    m.store
        .create_key_with(KeySpec {
            kind,
            account: account.into(),
            label: String::new(),
            datasets: datasets.iter().map(|d| d.to_string()).collect(),
            expires_at: None,
        })
        .await
        .unwrap()
        .key
}

async fn subscriber(m: &Market, name: &str) -> Account {
    m.store
        .create_account(NewAccount {
            id: None,
            role: Role::Subscriber,
            name: name.into(),
            sector: "research".into(),
            email: None,
        })
        .await
        .unwrap()
}

#[tokio::test]
async fn invented_dataset_ids_do_not_push_out_real_answers() {
    let (m, _dir) = market().await;
    let alice = subscriber(&m, "Alice").await;
    let alice_key = key(&m, KeyKind::Subscriber, &alice.id, &[]).await;
    let now = crate::model::now_micros();
    assert_eq!(
        m.entitlement(&alice_key, "traffic-counts", now)
            .await
            .unwrap(),
        None
    );
    assert_eq!(m.entitlements.cached(), (1, 0));
    for i in 0..12_000 {
        let invented = format!("no-such-{i}");
        assert_eq!(
            m.entitlement(&alice_key, &invented, now).await.unwrap(),
            None
        );
    }
    // Not even an id: answered without a lookup, and not remembered.
    assert_eq!(m.entitlement(&alice_key, "../x", now).await.unwrap(), None);
    let (known, unknown) = m.entitlements.cached();
    assert_eq!(known, 1, "the real answer is still cached");
    assert!(unknown <= 10_000, "{unknown}");
}

#[tokio::test]
async fn the_entitlement_answers_every_case() {
    let (m, _dir) = market().await;
    let now = crate::model::now_micros();
    let traffic = "traffic-counts";
    for new in [
        NewPlan {
            delay: Some("15m".into()),
            ..plan("delayed", PlanKind::Free)
        },
        NewPlan {
            aggregate: Some("15m".into()),
            history: None,
            ..plan("aggregated", PlanKind::Free)
        },
        plan("live", PlanKind::Monthly),
    ] {
        m.create_plan(traffic, new).await.unwrap();
    }
    let alice = subscriber(&m, "Alice").await;
    let alice_key = key(&m, KeyKind::Subscriber, &alice.id, &[]).await;

    // Admin: everything; a provider: its own; a device key: nothing to read.
    let admin_secret = m.store.bootstrap_admin(None).await.unwrap().unwrap();
    let admin = m.store.key_by_secret(&admin_secret).await.unwrap().unwrap();
    let own = key(&m, KeyKind::Provider, "copenhagen", &[]).await;
    let device = key(&m, KeyKind::Device, "copenhagen", &[traffic]).await;
    assert!(
        m.entitlement(&admin, "energy-meters", now)
            .await
            .unwrap()
            .is_some()
    );
    assert!(m.entitlement(&own, traffic, now).await.unwrap().is_some());
    assert!(
        m.entitlement(&own, "energy-meters", now)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        m.entitlement(&device, traffic, now)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        m.entitlement(&admin, "no-such", now)
            .await
            .unwrap()
            .is_none()
    );

    // No subscription: nothing (and the "nothing" is cached, then invalidated).
    assert_eq!(m.entitlement(&alice_key, traffic, now).await.unwrap(), None);
    let (agg, _) = m.subscribe(&alice, "aggregated", "", now).await.unwrap();
    let g = m
        .entitlement(&alice_key, traffic, now)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(g.aggregate.as_deref(), Some("15m"));
    assert_eq!(g.subscription.as_deref(), Some(agg.id.as_str()));
    // Delayed raw readings beat aggregates; paid real time beats both once paid.
    m.subscribe(&alice, "delayed", "", now).await.unwrap();
    let g = m
        .entitlement(&alice_key, traffic, now)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (g.plan.as_deref(), g.delay),
        (Some("delayed"), Duration::from_secs(900))
    );
    let (live, checkout) = m.subscribe(&alice, "live", "http://gw", now).await.unwrap();
    assert_eq!(live.status, Status::PendingPayment);
    assert_eq!(
        checkout.unwrap().url,
        format!("http://gw/v1/subscriptions/{}", live.id)
    );
    assert_eq!(
        m.entitlement(&alice_key, traffic, now)
            .await
            .unwrap()
            .unwrap()
            .plan
            .as_deref(),
        Some("delayed"),
        "unpaid gives nothing"
    );
    let (applied, paid) = m.record_payment(&live, None, now).await.unwrap();
    assert_eq!(applied, Applied::Extended);
    let end = paid.period_end.unwrap();
    let g = m
        .entitlement(&alice_key, traffic, now)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (g.plan.as_deref(), g.delay, g.expires_at),
        (Some("live"), Duration::ZERO, Some(end))
    );
    // Past the paid period: back to the free plan's terms.
    let g = m
        .entitlement(&alice_key, traffic, end)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(g.plan.as_deref(), Some("delayed"));
    // A second payment runs from the end of the first.
    let (_, renewed) = m.record_payment(&paid, None, now).await.unwrap();
    assert_eq!(
        renewed.period_end,
        Some(crate::calendar::add_months(end, 1))
    );

    // A key limited to other datasets, an expired key, a revoked key: nothing.
    let limited = key(&m, KeyKind::Subscriber, &alice.id, &["weather"]).await;
    assert!(
        m.entitlement(&limited, traffic, now)
            .await
            .unwrap()
            .is_none()
    );
    let mut expiring = alice_key.clone();
    expiring.expires_at = Some(now + DAY);
    let g = m
        .entitlement(&expiring, traffic, now)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(g.expires_at, Some(now + DAY), "the key ends first");
    assert!(
        m.entitlement(&expiring, traffic, now + DAY)
            .await
            .unwrap()
            .is_none()
    );
    m.store.revoke_key(&alice_key.id).await.unwrap();
    let revoked = m.store.key(&alice_key.id).await.unwrap().unwrap();
    assert!(
        m.entitlement(&revoked, traffic, now)
            .await
            .unwrap()
            .is_none()
    );

    // Another subscriber has none of Alice's access.
    let bob = subscriber(&m, "Bob").await;
    let bob_key = key(&m, KeyKind::Subscriber, &bob.id, &[]).await;
    assert!(
        m.entitlement(&bob_key, traffic, now)
            .await
            .unwrap()
            .is_none()
    );

    // Cancelling a free plan ends it at once.
    let delayed = m
        .store
        .subscriptions_of(&alice.id)
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.plan == "delayed")
        .unwrap();
    assert_eq!(
        m.cancel(&delayed, now).await.unwrap().status,
        Status::Cancelled
    );
    let fresh = key(&m, KeyKind::Subscriber, &alice.id, &[]).await;
    let later = crate::calendar::add_months(end, 2);
    let g = m
        .entitlement(&fresh, traffic, later)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(g.plan.as_deref(), Some("aggregated"));
}

#[tokio::test]
async fn a_usage_batch_is_counted_once_however_often_it_is_written() {
    let (m, _dir) = market().await;
    m.create_plan("weather", plan("metered", PlanKind::Metered))
        .await
        .unwrap();
    let alice = subscriber(&m, "Alice").await;
    let (sub, _) = m.subscribe(&alice, "metered", "", 0).await.unwrap();
    let hour = 3_600_000_000 * 500_000;
    let mut batch = std::collections::BTreeMap::new();
    batch.insert(
        (sub.id.clone(), hour),
        Counts {
            readings: 7,
            bytes: 700,
            ..Counts::default()
        },
    );
    // A flush retried after its commit's answer was lost writes the same batch again.
    m.store.write_usage("batch-1", &batch).await.unwrap();
    m.store.write_usage("batch-1", &batch).await.unwrap();
    m.store.write_usage("batch-2", &batch).await.unwrap();
    let rows = m
        .store
        .usage(UsageScope::Subscriber(&alice.id), hour, hour + 1)
        .await
        .unwrap();
    assert_eq!((rows[0].readings, rows[0].bytes), (14, 1400));

    // The recorder sums in memory by hour and writes on flush.
    let usage = m.usage();
    usage.record_at(&sub.id, 1, 10, hour + 5);
    usage.record_at(&sub.id, 2, 20, hour + 3_599_999_999);
    usage.record_at(&sub.id, 4, 40, hour + 3_600_000_000);
    usage.flush().await.unwrap();
    usage.flush().await.unwrap();
    let rows = m
        .store
        .usage(
            UsageScope::Subscriber(&alice.id),
            hour,
            hour + 2 * 3_600_000_000,
        )
        .await
        .unwrap();
    let got: Vec<(Micros, i64)> = rows.iter().map(|r| (r.hour, r.readings)).collect();
    assert_eq!(got, [(hour, 17), (hour + 3_600_000_000, 4)]);
}
