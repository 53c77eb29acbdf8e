//! The keyring: authenticates secrets with a short-lived cache in front of the database,
//! bounded so that invented secrets cost little and never push real keys out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::accounts::{Account, NewAccount};
use super::error::Error;
use super::keys::{ApiKey, looks_like_secret};
use super::keys::{KeySpec, NewKey};
use super::store::Store;
use crate::model::now_micros;

/// How long a looked-up key (or a miss) is trusted before the database is asked again:
/// the bound on how long a revoked key keeps working.
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(1);
/// Keys found, cached at most.
const KEY_CACHE_MAX: usize = 100_000;
/// Secrets not found, remembered at most (apart from keys found).
const MISS_CACHE_MAX: usize = 10_000;
/// Database lookups of secrets not known to the cache that may run at once.
const UNKNOWN_LOOKUPS: usize = 2;

#[derive(Debug)]
struct Cached {
    key: Option<Arc<ApiKey>>,
    fetched: Instant,
    /// Known, but to be looked up again before it is trusted (after a revocation here).
    stale: bool,
}

/// Authenticates secrets, with a short-lived cache in front of the database so a busy
/// device costs one query per second, not one per request.
///
/// Anyone can invent well-formed secrets, so what they cost is bounded apart from real
/// keys: misses live in a cache of their own (a flood of them never evicts a key found),
/// and lookups of secrets the cache has never seen take turns (at most
/// `UNKNOWN_LOOKUPS` at once), while a known key's refresh goes straight to the database.
#[derive(Debug)]
pub struct Keyring {
    store: Store,
    cache: Mutex<HashMap<[u8; 32], Cached>>,
    misses: Mutex<HashMap<[u8; 32], Instant>>,
    unknown: tokio::sync::Semaphore,
    /// Bumped by [`Keyring::clear`]: a lookup that raced it is not trusted from the cache.
    generation: std::sync::atomic::AtomicU64,
}

impl Keyring {
    pub fn new(store: Store) -> Keyring {
        Keyring {
            store,
            cache: Mutex::new(HashMap::new()),
            misses: Mutex::new(HashMap::new()),
            unknown: tokio::sync::Semaphore::new(UNKNOWN_LOOKUPS),
            generation: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Trusts no cached lookup any more: after a revocation in this process, so it takes
    /// effect at once here (other processes see it within [`KEY_CACHE_TTL`]). Known keys stay
    /// known (they are looked up again, but not behind lookups of invented secrets).
    pub fn clear(&self) {
        use std::sync::atomic::Ordering;
        self.generation.fetch_add(1, Ordering::SeqCst);
        for cached in self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values_mut()
        {
            cached.stale = true;
        }
        self.misses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// The live key for `secret`, or `None` if there is none.
    pub async fn authenticate(&self, secret: &str) -> Result<Option<Arc<ApiKey>>, Error> {
        if !looks_like_secret(secret) {
            return Ok(None);
        }
        let digest: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        let known = {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            match cache.get(&digest) {
                Some(hit) if !hit.stale && hit.fetched.elapsed() < KEY_CACHE_TTL => {
                    return Ok(hit.key.clone().filter(|k| k.is_live(now_micros())));
                }
                Some(_) => true,
                None => false,
            }
        };
        let _turn = if known {
            None
        } else {
            let missed = self
                .misses
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&digest)
                .is_some_and(|at| at.elapsed() < KEY_CACHE_TTL);
            if missed {
                return Ok(None);
            }
            // Never closed, so acquiring only waits.
            self.unknown.acquire().await.ok()
        };
        let generation = self.generation.load(std::sync::atomic::Ordering::SeqCst);
        let key = self.store.key_by_secret(secret).await?.map(Arc::new);
        // A revocation here while the lookup ran: the answer may predate it.
        let raced = self.generation.load(std::sync::atomic::Ordering::SeqCst) != generation;
        if key.is_none() {
            let mut misses = self.misses.lock().unwrap_or_else(|e| e.into_inner());
            if misses.len() >= MISS_CACHE_MAX {
                misses.retain(|_, at| at.elapsed() < KEY_CACHE_TTL);
                if misses.len() >= MISS_CACHE_MAX {
                    misses.clear();
                }
            }
            misses.insert(digest, Instant::now());
            self.cache
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&digest);
            return Ok(None);
        }
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= KEY_CACHE_MAX && !cache.contains_key(&digest) {
            cache.retain(|_, c| c.fetched.elapsed() < KEY_CACHE_TTL);
        }
        // Full of live keys: this one is looked up again next time rather than pushing
        // another out.
        if cache.len() < KEY_CACHE_MAX || cache.contains_key(&digest) {
            cache.insert(
                digest,
                Cached {
                    key: key.clone(),
                    fetched: Instant::now(),
                    stale: raced,
                },
            );
        }
        Ok(key)
    }
}

/// What the accounts and keys routes read and change, through the keyring so that a change
/// and the cache of authenticated keys cannot drift apart.
impl Keyring {
    pub async fn account(&self, id: &str) -> Result<Option<Account>, Error> {
        self.store.account(id).await
    }
    pub async fn account_keys(&self, account: &str) -> Result<Vec<ApiKey>, Error> {
        self.store.account_keys(account).await
    }
    /// Creates an account and its first key (of the kind its role uses).
    pub async fn create_account_with_key(
        &self,
        new: NewAccount,
    ) -> Result<(Account, NewKey), Error> {
        self.store.create_account_with_key(new).await
    }
    /// Creates a key. The account must exist with the role the kind needs; a device key
    /// needs datasets. The secret is returned once and not stored.
    pub async fn create_key_with(&self, spec: KeySpec) -> Result<NewKey, Error> {
        self.store.create_key_with(spec).await
    }
    pub async fn key(&self, id: &str) -> Result<Option<ApiKey>, Error> {
        self.store.key(id).await
    }
    pub async fn list_accounts(&self) -> Result<Vec<Account>, Error> {
        self.store.list_accounts().await
    }
    /// Keys, oldest first: all, or one account's.
    pub async fn list_keys(&self) -> Result<Vec<ApiKey>, Error> {
        self.store.list_keys().await
    }
    /// Rotates a live key: a successor with the same kind, account, label, scope and expiry,
    /// while the old key keeps working for `overlap` (or until its own expiry, if sooner).
    pub async fn rotate_key(&self, id: &str, overlap: Duration) -> Result<NewKey, Error> {
        self.store.rotate_key(id, overlap).await
    }

    /// Revokes a key at once, here and on every node sharing the database (told at once on
    /// PostgreSQL; within [`KEY_CACHE_TTL`] in any case). `false`
    /// when there was no live key `id`.
    pub async fn revoke_key(&self, id: &str) -> Result<bool, Error> {
        let revoked = self.store.revoke_key(id).await?;
        if revoked {
            self.clear();
            self.store.announce(super::changes::Change::Key);
        }
        Ok(revoked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::market::keys::{KeyKind, new_secret};
    use crate::market::store::tests::store_with_provider as store;

    #[tokio::test]
    async fn keyring_rejects_garbage_without_lookup_and_sees_revocation_within_ttl() {
        let (store, _dir) = store().await;
        let keyring = Keyring::new(store.clone());
        assert!(keyring.authenticate("nope").await.unwrap().is_none());
        let new = store
            .create_key(KeyKind::Device, "copenhagen", &["weather".into()])
            .await
            .unwrap();
        assert!(keyring.authenticate(&new.secret).await.unwrap().is_some());
        store.revoke_key(&new.key.id).await.unwrap();
        tokio::time::sleep(KEY_CACHE_TTL + Duration::from_millis(50)).await;
        assert!(keyring.authenticate(&new.secret).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn invented_secrets_never_push_a_real_key_out_of_the_cache() {
        let (store, _dir) = store().await;
        let keyring = Keyring::new(store.clone());
        let real = store
            .create_key(KeyKind::Device, "copenhagen", &["weather".into()])
            .await
            .unwrap();
        assert!(keyring.authenticate(&real.secret).await.unwrap().is_some());
        for _ in 0..MISS_CACHE_MAX + 500 {
            assert!(keyring.authenticate(&new_secret()).await.unwrap().is_none());
        }
        let digest: [u8; 32] = Sha256::digest(real.secret.as_bytes()).into();
        assert!(
            keyring.cache.lock().unwrap().contains_key(&digest),
            "the real key is still cached"
        );
        assert!(keyring.misses.lock().unwrap().len() <= MISS_CACHE_MAX);
        // A secret that missed once is answered from memory within the TTL.
        let invented = new_secret();
        assert!(keyring.authenticate(&invented).await.unwrap().is_none());
        let digest: [u8; 32] = Sha256::digest(invented.as_bytes()).into();
        assert!(keyring.misses.lock().unwrap().contains_key(&digest));
    }
}
