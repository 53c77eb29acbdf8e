//! Metering: readings and bytes delivered per subscription and hour, and apart from them
//! the rows (readings or buckets) and bytes history queries returned.
//!
//! Delivery paths call [`UsageRecorder::record`] for every reading they send, history
//! queries [`UsageRecorder::record_query`] for every answer (a counter bump under a mutex,
//! no I/O). The recorder writes what it counted to `usage_hours` every
//! `[market] usage_flush_interval` and at shutdown, as batches with an id: a batch's id is
//! stored in `usage_flushes` in the same transaction as its counts, so a flush retried after
//! an error whose outcome was unknown (a lost commit reply) adds nothing twice. A batch that
//! could not be written stays queued, under its id, for the next flush.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use serde::Serialize;
use sqlx::Row;

use super::error::Error;
use super::ids::random_alnum;
use super::store::Store;
use crate::model::{Micros, now_micros};

const HOUR: Micros = 3_600_000_000;

/// Counts of one subscription in one hour.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub readings: i64,
    pub bytes: i64,
    pub query_rows: i64,
    pub query_bytes: i64,
}

/// A batch to write, in key order: nodes sharing a database lock the rows they add to in one
/// order, so two flushing at once wait for each other instead of deadlocking.
type Pending = BTreeMap<(String, Micros), Counts>;
/// What is being counted: by subscription, then by hour (looked up without allocating).
type Counting = HashMap<String, HashMap<Micros, Counts>>;

/// Counts deliveries in memory and writes them in idempotent batches.
#[derive(Debug)]
pub struct UsageRecorder {
    store: Store,
    counting: Mutex<Counting>,
    /// Batches taken from `counting` that are not known to be written, with their ids.
    unwritten: tokio::sync::Mutex<Vec<(String, Pending)>>,
}

impl UsageRecorder {
    pub fn new(store: Store) -> UsageRecorder {
        UsageRecorder {
            store,
            counting: Mutex::new(HashMap::new()),
            unwritten: tokio::sync::Mutex::new(Vec::new()),
        }
    }

    /// Counts `readings` readings of `bytes` bytes delivered under `subscription` now.
    pub fn record(&self, subscription: &str, readings: u64, bytes: u64) {
        self.record_at(subscription, readings, bytes, now_micros());
    }

    /// [`UsageRecorder::record`] at time `at` (µs).
    pub fn record_at(&self, subscription: &str, readings: u64, bytes: u64, at: Micros) {
        self.count(subscription, at, |c| {
            c.readings = c.readings.saturating_add(readings as i64);
            c.bytes = c.bytes.saturating_add(bytes as i64);
        });
    }

    /// Counts `rows` rows of `bytes` bytes a history query returned under `subscription`
    /// now (kept apart from live deliveries).
    pub fn record_query(&self, subscription: &str, rows: u64, bytes: u64) {
        self.count(subscription, now_micros(), |c| {
            c.query_rows = c.query_rows.saturating_add(rows as i64);
            c.query_bytes = c.query_bytes.saturating_add(bytes as i64);
        });
    }

    fn count(&self, subscription: &str, at: Micros, add: impl FnOnce(&mut Counts)) {
        let hour = at - at.rem_euclid(HOUR);
        let mut counting = self.counting.lock().unwrap_or_else(|e| e.into_inner());
        let hours = match counting.get_mut(subscription) {
            Some(hours) => hours,
            None => counting.entry(subscription.to_string()).or_default(),
        };
        add(hours.entry(hour).or_default());
    }

    /// Writes everything counted so far. On error what was not written stays queued.
    pub async fn flush(&self) -> Result<(), Error> {
        let mut unwritten = self.unwritten.lock().await;
        let taken: Pending =
            std::mem::take(&mut *self.counting.lock().unwrap_or_else(|e| e.into_inner()))
                .into_iter()
                .flat_map(|(sub, hours)| {
                    hours
                        .into_iter()
                        .map(move |(hour, c)| ((sub.clone(), hour), c))
                })
                .collect();
        if !taken.is_empty() {
            unwritten.push((format!("usage_{}", random_alnum(20)), taken));
        }
        while let Some((id, batch)) = unwritten.first() {
            self.store.write_usage(id, batch).await?;
            unwritten.remove(0);
        }
        Ok(())
    }
}

/// Usage in one hour, of one subscription or summed over a dataset.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct UsageRow {
    /// The subscription (subscriber view) or `None` (per-dataset totals).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscription: Option<String>,
    pub dataset: String,
    /// Start of the hour, µs since the epoch.
    pub hour: Micros,
    /// Readings delivered live.
    pub readings: i64,
    pub bytes: i64,
    /// Rows (readings or buckets) history queries returned.
    pub query_rows: i64,
    pub query_bytes: i64,
}

/// Whose usage a query sums.
#[derive(Debug)]
pub enum UsageScope<'a> {
    /// An account's subscriptions, one row per subscription and hour.
    Subscriber(&'a str),
    /// A provider's datasets, one row per dataset and hour.
    Provider(&'a str),
    /// Every dataset, one row per dataset and hour.
    All,
}

impl Store {
    /// Adds batch `id`'s counts, once: a batch already written does nothing.
    pub async fn write_usage(
        &self,
        id: &str,
        batch: &BTreeMap<(String, Micros), Counts>,
    ) -> Result<(), Error> {
        let mut tx = self.pool().begin().await?;
        let first = sqlx::query(
            "INSERT INTO usage_flushes (id, flushed_at) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
        )
        .bind(id)
        .bind(now_micros())
        .execute(&mut *tx)
        .await?;
        if first.rows_affected() == 0 {
            return Ok(());
        }
        for ((subscription, hour), c) in batch {
            sqlx::query(
                "INSERT INTO usage_hours (subscription, hour, readings, bytes, query_rows, query_bytes)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (subscription, hour) DO UPDATE SET
                     readings = usage_hours.readings + excluded.readings,
                     bytes = usage_hours.bytes + excluded.bytes,
                     query_rows = usage_hours.query_rows + excluded.query_rows,
                     query_bytes = usage_hours.query_bytes + excluded.query_bytes",
            )
            .bind(subscription)
            .bind(*hour)
            .bind(c.readings)
            .bind(c.bytes)
            .bind(c.query_rows)
            .bind(c.query_bytes)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Usage in hours starting in `[from, to)`, oldest first.
    pub async fn usage(
        &self,
        scope: UsageScope<'_>,
        from: Micros,
        to: Micros,
    ) -> Result<Vec<UsageRow>, Error> {
        let (sql, who) = match scope {
            UsageScope::Subscriber(account) => (
                "SELECT u.subscription, s.dataset, u.hour, u.readings, u.bytes, u.query_rows,
                        u.query_bytes
                 FROM usage_hours u JOIN subscriptions s ON s.id = u.subscription
                 WHERE u.hour >= $1 AND u.hour < $2 AND s.account = $3
                 ORDER BY u.hour, u.subscription",
                Some(account),
            ),
            UsageScope::Provider(provider) => (
                "SELECT NULL, s.dataset, u.hour, CAST(SUM(u.readings) AS BIGINT), CAST(SUM(u.bytes) AS BIGINT),
                        CAST(SUM(u.query_rows) AS BIGINT), CAST(SUM(u.query_bytes) AS BIGINT)
                 FROM usage_hours u JOIN subscriptions s ON s.id = u.subscription
                 JOIN datasets d ON d.id = s.dataset
                 WHERE u.hour >= $1 AND u.hour < $2 AND d.provider = $3
                 GROUP BY s.dataset, u.hour ORDER BY u.hour, s.dataset",
                Some(provider),
            ),
            UsageScope::All => (
                "SELECT NULL, s.dataset, u.hour, CAST(SUM(u.readings) AS BIGINT), CAST(SUM(u.bytes) AS BIGINT),
                        CAST(SUM(u.query_rows) AS BIGINT), CAST(SUM(u.query_bytes) AS BIGINT)
                 FROM usage_hours u JOIN subscriptions s ON s.id = u.subscription
                 WHERE u.hour >= $1 AND u.hour < $2
                 GROUP BY s.dataset, u.hour ORDER BY u.hour, s.dataset",
                None,
            ),
        };
        let mut query = sqlx::query(sql).bind(from).bind(to);
        if let Some(who) = who {
            query = query.bind(who);
        }
        Ok(query
            .fetch_all(self.pool())
            .await?
            .iter()
            .map(|row| {
                Ok(UsageRow {
                    subscription: row.try_get(0)?,
                    dataset: row.try_get(1)?,
                    hour: row.try_get(2)?,
                    readings: row.try_get(3)?,
                    bytes: row.try_get(4)?,
                    query_rows: row.try_get(5)?,
                    query_bytes: row.try_get(6)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()?)
    }
}
