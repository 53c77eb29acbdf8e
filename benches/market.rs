//! The marketplace's hot paths: what every delivery and every webhook pays.
//!
//! - entitlement: a subscriber key's grant for a dataset, answered from the cache (every
//!   live session asks again every `[feed] recheck`);
//! - usage: counting one delivered reading (every reading a subscriber receives);
//! - webhook signature: verifying a Stripe-Signature over a 2 KiB event.
//!
//! Run: `cargo bench --bench market`. Figures are in BENCHMARKS.md.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};

use citygate::config::{Config, DEFAULT_CONFIG};
use citygate::market::accounts::{NewAccount, Role};
use citygate::market::keys::KeyKind;
use citygate::market::payments::stripe::{sign, verify_signature};
use citygate::market::plans::{NewPlan, PlanKind};
use citygate::market::{Market, Store};
use citygate::model::now_micros;

fn bench_market(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (market, key, subscription) = rt.block_on(async {
        let config = Config::from_toml(DEFAULT_CONFIG, "default", &[]).unwrap();
        let store = Store::open(&dir.path().join("citygate.db")).await.unwrap();
        for ds in &config.datasets {
            store
                .ensure_provider(&ds.provider, &ds.publisher)
                .await
                .unwrap();
        }
        store.sync_catalog(&config).await.unwrap();
        let market = Market::new(store.clone(), &config).unwrap();
        market
            .create_plan(
                "traffic-counts",
                NewPlan {
                    id: Some("open".into()),
                    name: "Open".into(),
                    kind: PlanKind::Free,
                    currency: None,
                    price_minor: None,
                    per_1000_minor: None,
                    delay: None,
                    aggregate: None,
                    history: None,
                },
            )
            .await
            .unwrap();
        let account = store
            .create_account(NewAccount {
                id: None,
                role: Role::Subscriber,
                name: "Lab".into(),
                sector: "research".into(),
                email: None,
            })
            .await
            .unwrap();
        let (sub, _) = market
            .subscribe(&account, "open", "", now_micros())
            .await
            .unwrap();
        let key = store
            .create_key(KeyKind::Subscriber, &account.id, &[])
            .await
            .unwrap()
            .key;
        (market, key, sub.id)
    });

    c.bench_function("entitlement/cached", |b| {
        b.iter(|| {
            rt.block_on(market.entitlement(black_box(&key), "traffic-counts", now_micros()))
                .unwrap()
                .unwrap()
        })
    });
    c.bench_function("usage/record", |b| {
        b.iter(|| market.usage().record(black_box(&subscription), 1, 180))
    });
    let body = vec![b'x'; 2048];
    let secrets = vec!["whsec_old".to_string(), "whsec_new".to_string()];
    let t = now_micros() / 1_000_000;
    let header = sign("whsec_new", t, &body);
    c.bench_function("webhook/verify_signature", |b| {
        b.iter(|| {
            verify_signature(
                Some(black_box(&header)),
                black_box(&body),
                &secrets,
                Duration::from_secs(300),
                t,
            )
            .unwrap()
        })
    });
}

criterion_group!(benches, bench_market);
criterion_main!(benches);
