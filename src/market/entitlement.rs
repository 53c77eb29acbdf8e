//! The one entitlement check every delivery path calls: may this key have this dataset now,
//! and on what terms?
//!
//! Admins may have every dataset; a provider its own; a subscriber what an active
//! subscription gives it (a free plan's delay or aggregation included), within its key's
//! dataset limits; a device key nothing. Answers are cached in memory per account and
//! dataset; every change to subscriptions, plans or the catalog invalidates the cache (a
//! generation counter keeps a lookup that raced an invalidation from being cached), and
//! times (period ends, key expiry) are checked at every call, so a cached answer never
//! outlives the access it describes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use super::error::Error;
use super::keys::{ApiKey, KeyKind};
use super::plans::Plan;
use super::store::Store;
use super::subscriptions::Subscription;
use crate::model::Micros;

/// What a key may have of a dataset.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Grant {
    pub dataset: String,
    /// The subscription behind it (none for providers and admins).
    pub subscription: Option<String>,
    pub plan: Option<String>,
    /// Readings are delivered this late (a free plan's delay).
    #[serde(with = "humantime_serde_micros")]
    #[schema(value_type = String, example = "15m")]
    pub delay: Duration,
    /// Only per-sensor aggregates over windows this long.
    pub aggregate: Option<String>,
    /// When the access ends, if it does (period end, or the key's expiry).
    pub expires_at: Option<Micros>,
    /// How far back history queries reach (none: as far as the lake goes).
    #[serde(with = "humantime_serde_opt")]
    #[schema(value_type = Option<String>, example = "90d")]
    pub history: Option<Duration>,
}

mod humantime_serde_opt {
    use std::time::Duration;

    use serde::Serializer;

    pub(super) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }
}

mod humantime_serde_micros {
    use std::time::Duration;

    use serde::Serializer;

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}

/// What the cache keeps per (account, dataset): the dataset's provider (`None`: no such
/// dataset on offer) and the account's subscriptions to it that were active.
#[derive(Debug, Clone)]
struct Facts {
    provider: Option<String>,
    subscriptions: Arc<Vec<(Subscription, Plan)>>,
}

#[derive(Debug)]
pub(crate) struct Entitlements {
    store: Store,
    cache: Mutex<HashMap<(String, String), Facts>>,
    /// "No such dataset" answers, apart: dataset ids are the client's to invent, and a
    /// flood of them must not push out the answers real subscribers need.
    unknown: Mutex<HashMap<(String, String), ()>>,
    generation: AtomicU64,
}

/// Cached answers at most; past this the cache starts over.
const CACHE_MAX: usize = 100_000;
/// Cached "no such dataset" answers at most; past this only they start over.
const UNKNOWN_MAX: usize = 10_000;

impl Entitlements {
    pub(crate) fn new(store: Store) -> Entitlements {
        Entitlements {
            store,
            cache: Mutex::new(HashMap::new()),
            unknown: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
        }
    }

    /// How many answers are cached: (known datasets, unknown ones).
    #[cfg(test)]
    pub(crate) fn cached(&self) -> (usize, usize) {
        (
            self.cache.lock().unwrap_or_else(|e| e.into_inner()).len(),
            self.unknown.lock().unwrap_or_else(|e| e.into_inner()).len(),
        )
    }

    /// Forgets every cached answer, here and on every node sharing the database: called
    /// after any change to subscriptions, plans or the catalog.
    pub(crate) fn invalidate(&self) {
        self.forget();
        self.store.announce(super::changes::Change::Entitlements);
    }

    /// Forgets every cached answer here (another node's change, told).
    pub(crate) fn forget(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.unknown
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    async fn facts(&self, account: &str, dataset: &str) -> Result<Facts, Error> {
        let key = (account.to_string(), dataset.to_string());
        if let Some(f) = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(f.clone());
        }
        if self
            .unknown
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&key)
        {
            return Ok(Facts {
                provider: None,
                subscriptions: Arc::new(Vec::new()),
            });
        }
        let generation = self.generation.load(Ordering::SeqCst);
        let provider = self
            .store
            .catalog_dataset(dataset)
            .await?
            .map(|d| d.spec.provider);
        let subscriptions = if provider.is_some() {
            self.store.grants_of(account, dataset).await?
        } else {
            Vec::new()
        };
        let facts = Facts {
            provider,
            subscriptions: Arc::new(subscriptions),
        };
        if facts.provider.is_none() {
            let mut unknown = self.unknown.lock().unwrap_or_else(|e| e.into_inner());
            if self.generation.load(Ordering::SeqCst) == generation {
                if unknown.len() >= UNKNOWN_MAX {
                    unknown.clear();
                }
                unknown.insert(key, ());
            }
            return Ok(facts);
        }
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if self.generation.load(Ordering::SeqCst) == generation {
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
            cache.insert(key, facts.clone());
        }
        Ok(facts)
    }

    /// May `key` have `dataset` at `now`, and on what terms? `None`: no (and callers answer
    /// 404, as if the dataset did not exist).
    pub(crate) async fn entitlement(
        &self,
        key: &ApiKey,
        dataset: &str,
        now: Micros,
    ) -> Result<Option<Grant>, Error> {
        if !key.is_live(now)
            || key.kind == KeyKind::Device
            || !crate::model::is_valid_dataset_id(dataset)
        {
            return Ok(None);
        }
        let facts = self.facts(&key.account, dataset).await?;
        let Some(provider) = facts.provider else {
            return Ok(None);
        };
        let unlimited = |expires_at| Grant {
            dataset: dataset.to_string(),
            subscription: None,
            plan: None,
            delay: Duration::ZERO,
            aggregate: None,
            expires_at,
            history: None,
        };
        match key.kind {
            KeyKind::Admin => return Ok(Some(unlimited(key.expires_at))),
            KeyKind::Provider if key.account == provider => {
                return Ok(Some(unlimited(key.expires_at)));
            }
            KeyKind::Subscriber => {}
            _ => return Ok(None),
        }
        if !key.datasets.is_empty() && !key.datasets.iter().any(|d| d == dataset) {
            return Ok(None);
        }
        // The best of the active subscriptions: raw readings before aggregates, then the
        // least delayed (paid plans are raw and real time), then the one whose history
        // reaches furthest back, then the one that runs longest.
        let best = facts
            .subscriptions
            .iter()
            .filter(|(s, _)| s.grants(now))
            .min_by_key(|(s, p)| {
                (
                    p.aggregate.is_some(),
                    p.delay.unwrap_or_default(),
                    std::cmp::Reverse(p.history.unwrap_or(Duration::MAX)),
                    std::cmp::Reverse(s.period_end.unwrap_or(i64::MAX)),
                )
            });
        Ok(best.map(|(s, p)| {
            let ends = [s.period_end, key.expires_at].into_iter().flatten().min();
            Grant {
                dataset: dataset.to_string(),
                subscription: Some(s.id.clone()),
                plan: Some(p.id.clone()),
                delay: p.delay.unwrap_or_default(),
                aggregate: p
                    .aggregate
                    .map(|a| humantime::format_duration(a).to_string()),
                expires_at: ends,
                history: p.history,
            }
        }))
    }
}
