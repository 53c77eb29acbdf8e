//! Key tests: secrets stored as hashes, kinds matching account roles, expiry and rotation,
//! the bootstrap administrator, and device scopes checked against the config.

use std::time::Duration;

use sqlx::Row;

use super::*;
use crate::config::DEFAULT_CONFIG;
use crate::market::accounts::{NewAccount, Role};
use crate::market::store::tests::store_with_provider as store;

#[tokio::test]
async fn keys_are_created_found_by_secret_and_revoked() {
    let (store, _dir) = store().await;
    let new = store
        .create_key(
            KeyKind::Device,
            "copenhagen",
            &["weather".into(), "air-quality".into()],
        )
        .await
        .unwrap();
    assert!(looks_like_secret(&new.secret), "{}", new.secret);
    let found = store.key_by_secret(&new.secret).await.unwrap().unwrap();
    assert_eq!(found.id, new.key.id);
    assert_eq!(found.datasets, vec!["air-quality", "weather"]);
    assert!(found.may_write("weather"));
    assert!(!found.may_write("traffic-counts"));

    let raw: String = sqlx::query("SELECT secret_hash FROM keys")
        .fetch_one(store.pool())
        .await
        .unwrap()
        .get(0);
    assert_eq!(raw.len(), 64, "only the hash is stored");
    assert!(!raw.contains(&new.secret[3..]));

    assert!(store.revoke_key(&new.key.id).await.unwrap());
    assert!(
        !store.revoke_key(&new.key.id).await.unwrap(),
        "already revoked"
    );
    assert!(store.key_by_secret(&new.secret).await.unwrap().is_none());
    let listed = store.list_keys().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].revoked_at.is_some());
}

#[tokio::test]
async fn a_key_kind_must_match_its_accounts_role() {
    let (store, _dir) = store().await;
    let sub = store
        .create_account(NewAccount {
            id: None,
            role: Role::Subscriber,
            name: "Mobility Lab".into(),
            sector: "research".into(),
            email: None,
        })
        .await
        .unwrap();
    assert!(sub.id.starts_with("acc_"));
    for (kind, account) in [
        (KeyKind::Device, sub.id.as_str()),
        (KeyKind::Provider, sub.id.as_str()),
        (KeyKind::Admin, "copenhagen"),
        (KeyKind::Subscriber, "copenhagen"),
    ] {
        let err = store
            .create_key(kind, account, &["weather".into()])
            .await
            .err()
            .unwrap_or_else(|| panic!("{kind:?} for {account} was created"));
        assert!(err.to_string().contains("account"), "{err}");
    }
    assert!(
        store
            .create_key(KeyKind::Device, "copenhagen", &[])
            .await
            .is_err()
    );
    assert!(
        store
            .create_key(KeyKind::Subscriber, "nobody", &[])
            .await
            .is_err()
    );
    let key = store
        .create_key(KeyKind::Subscriber, &sub.id, &["weather".into()])
        .await
        .unwrap();
    assert_eq!(key.key.datasets, ["weather"]);
    assert!(!key.key.may_write("weather"), "subscribers never write");
}

#[tokio::test]
async fn expired_keys_stop_working_and_rotation_overlaps() {
    let (store, _dir) = store().await;
    let soon = store
        .create_key_with(KeySpec {
            kind: KeyKind::Provider,
            account: "copenhagen".into(),
            label: "ci".into(),
            datasets: vec![],
            expires_at: Some(now_micros() + 300_000),
        })
        .await
        .unwrap();
    assert!(store.key_by_secret(&soon.secret).await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        store.key_by_secret(&soon.secret).await.unwrap().is_none(),
        "expired"
    );
    assert!(
        store
            .rotate_key(&soon.key.id, Duration::from_secs(60))
            .await
            .is_err(),
        "an expired key cannot be rotated"
    );

    let old = store
        .create_key(KeyKind::Device, "copenhagen", &["weather".into()])
        .await
        .unwrap();
    let new = store
        .rotate_key(&old.key.id, Duration::from_millis(300))
        .await
        .unwrap();
    assert_ne!(new.secret, old.secret);
    assert_eq!(new.key.datasets, ["weather"]);
    assert_eq!(new.key.kind, KeyKind::Device);
    let old_now = store.key(&old.key.id).await.unwrap().unwrap();
    assert_eq!(old_now.replaced_by.as_deref(), Some(new.key.id.as_ref()));
    assert!(
        store.key_by_secret(&old.secret).await.unwrap().is_some(),
        "the old key works during the overlap"
    );
    assert!(
        store
            .rotate_key(&old.key.id, Duration::from_secs(60))
            .await
            .is_err(),
        "a key is rotated once"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(store.key_by_secret(&old.secret).await.unwrap().is_none());
    assert!(store.key_by_secret(&new.secret).await.unwrap().is_some());
}

#[tokio::test]
async fn the_first_start_creates_one_admin_and_honours_a_given_key() {
    let (store, _dir) = store().await;
    let first = store.bootstrap_admin(None).await.unwrap().unwrap();
    let admin = store.key_by_secret(&first).await.unwrap().unwrap();
    assert_eq!(admin.kind, KeyKind::Admin);
    assert!(admin.is_admin());
    assert!(
        store.bootstrap_admin(None).await.unwrap().is_none(),
        "shown once: the next start makes none"
    );
    let chosen = new_secret();
    assert!(
        store
            .bootstrap_admin(Some(&chosen))
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .key_by_secret(&chosen)
            .await
            .unwrap()
            .unwrap()
            .is_admin()
    );
    // Idempotent on the next start.
    store.bootstrap_admin(Some(&chosen)).await.unwrap();
    assert_eq!(
        store.list_keys().await.unwrap().len(),
        2,
        "the given key is stored once"
    );
    assert!(store.bootstrap_admin(Some("cg_short")).await.is_err());
    let device = store
        .create_key(KeyKind::Device, "copenhagen", &["weather".into()])
        .await
        .unwrap();
    assert!(
        store.bootstrap_admin(Some(&device.secret)).await.is_err(),
        "a device key is no admin key"
    );
}

#[test]
fn device_scope_is_checked_against_config() {
    let config = crate::config::Config::from_toml(DEFAULT_CONFIG, "default", &[]).unwrap();
    let config = &config.datasets;
    assert!(check_device_scope(config, "copenhagen", &["weather".into()]).is_ok());
    let err = check_device_scope(
        config,
        "copenhagen",
        &["energy-meters".into(), "nope".into()],
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("belongs to provider `copenhagen-energy`"),
        "{err}"
    );
    assert!(err.contains("`nope` does not exist"), "{err}");
    assert!(check_device_scope(config, "copenhagen", &[]).is_err());
}
