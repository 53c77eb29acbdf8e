//! The catalog: every dataset the marketplace offers, with its provider, licence, schema and
//! update frequency.
//!
//! Datasets declared in the config file are synced into the database at every start (the
//! file is their source of truth: one removed from the file is withdrawn from the catalog).
//! Providers create further datasets over the API; those live in the database alone, are
//! added to the running pipeline at once, and come back on every start. A provider edits the
//! descriptive metadata of its API datasets (title, description, publisher, licence,
//! attribution, update frequency, keywords); a schema does not change under its buyers, so a
//! new schema is a new dataset.

use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;

use super::accounts::{Account, Role};
use super::error::Error;
use super::plans::Plan;
use super::store::Store;
use crate::config::validate::dataset_problems;
use crate::config::{Config, DatasetConfig};
use crate::model::{Micros, now_micros};

/// Where a dataset was declared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    Config,
    Api,
}

/// A dataset as the catalog stores it.
#[derive(Clone, Debug)]
pub struct StoredDataset {
    pub spec: DatasetConfig,
    pub origin: Origin,
    pub created_at: Micros,
    pub updated_at: Micros,
}

/// A change to a dataset's descriptive metadata; absent fields stay.
#[derive(Clone, Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DatasetPatch {
    pub title: Option<String>,
    pub description: Option<String>,
    pub publisher: Option<String>,
    pub licence: Option<String>,
    pub attribution: Option<String>,
    pub update_frequency: Option<String>,
    pub keywords: Option<Vec<String>>,
}

fn stored_from_row(row: &AnyRow) -> Result<StoredDataset, Error> {
    let spec: String = row.try_get(0)?;
    let origin: String = row.try_get(1)?;
    Ok(StoredDataset {
        spec: serde_json::from_str(&spec)
            .map_err(|e| Error::Invalid(format!("stored dataset spec: {e}")))?,
        origin: if origin == "api" {
            Origin::Api
        } else {
            Origin::Config
        },
        created_at: row.try_get(2)?,
        updated_at: row.try_get(3)?,
    })
}

const DATASET_COLUMNS: &str = "spec, origin, created_at, updated_at";

impl Store {
    /// Brings the config's datasets into the catalog (their provider accounts must exist),
    /// withdraws config datasets no longer declared, and returns every dataset in the
    /// catalog: the config's, then those created over the API, by id.
    pub async fn sync_catalog(&self, config: &Config) -> Result<Vec<DatasetConfig>, Error> {
        let now = now_micros();
        let mut tx = self.pool().begin().await?;
        for ds in &config.datasets {
            let spec = serde_json::to_string(ds).expect("a dataset spec serializes");
            let row = sqlx::query("SELECT origin, provider FROM datasets WHERE id = $1")
                .bind(&ds.id)
                .fetch_optional(&mut *tx)
                .await?;
            match row {
                Some(row) => {
                    let origin: String = row.try_get(0)?;
                    if origin == "api" {
                        let provider: String = row.try_get(1)?;
                        return Err(Error::Conflict(format!(
                            "dataset `{}` of the config was created over the API by `{provider}`; rename one of them",
                            ds.id
                        )));
                    }
                    sqlx::query(
                        "UPDATE datasets SET provider = $1, spec = $2, updated_at = $3,
                             withdrawn_at = NULL
                         WHERE id = $4 AND (spec <> $2 OR provider <> $1 OR withdrawn_at IS NOT NULL)",
                    )
                    .bind(&ds.provider)
                    .bind(&spec)
                    .bind(now)
                    .bind(&ds.id)
                    .execute(&mut *tx)
                    .await?;
                }
                None => {
                    sqlx::query(
                        "INSERT INTO datasets (id, provider, origin, spec, created_at, updated_at)
                         VALUES ($1, $2, 'config', $3, $4, $4)",
                    )
                    .bind(&ds.id)
                    .bind(&ds.provider)
                    .bind(&spec)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                }
            }
        }
        let declared: Vec<&str> = config.datasets.iter().map(|d| d.id.as_str()).collect();
        let config_rows =
            sqlx::query("SELECT id FROM datasets WHERE origin = 'config' AND withdrawn_at IS NULL")
                .fetch_all(&mut *tx)
                .await?;
        for row in config_rows {
            let id: String = row.try_get(0)?;
            if !declared.contains(&id.as_str()) {
                sqlx::query("UPDATE datasets SET withdrawn_at = $1 WHERE id = $2")
                    .bind(now)
                    .bind(&id)
                    .execute(&mut *tx)
                    .await?;
                tracing::warn!(dataset = %id, "dataset no longer in the config: withdrawn from the catalog");
            }
        }
        tx.commit().await?;
        let mut all = config.datasets.clone();
        all.extend(
            self.catalog()
                .await?
                .into_iter()
                .filter(|d| d.origin == Origin::Api)
                .map(|d| d.spec),
        );
        Ok(all)
    }

    /// Every dataset on offer (not withdrawn), by id.
    pub async fn catalog(&self) -> Result<Vec<StoredDataset>, Error> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {DATASET_COLUMNS} FROM datasets WHERE withdrawn_at IS NULL ORDER BY id"
        )))
        .fetch_all(self.pool())
        .await?
        .iter()
        .map(stored_from_row)
        .collect()
    }

    /// One dataset on offer.
    pub async fn catalog_dataset(&self, id: &str) -> Result<Option<StoredDataset>, Error> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {DATASET_COLUMNS} FROM datasets WHERE id = $1 AND withdrawn_at IS NULL"
        )))
        .bind(id)
        .fetch_optional(self.pool())
        .await?
        .as_ref()
        .map(stored_from_row)
        .transpose()
    }

    /// Stores a dataset a provider declared over the API. Every problem is reported; an id
    /// ever used (even by a withdrawn dataset) is refused.
    ///
    /// `limit`: the most datasets on offer the provider may have (its config ones included).
    /// The count and the insert are one statement; on PostgreSQL, creates racing each other
    /// may still pass it by one each (READ COMMITTED), which bounds what a provider gets.
    pub async fn create_dataset(
        &self,
        spec: DatasetConfig,
        limit: Option<usize>,
    ) -> Result<StoredDataset, Error> {
        let problems = dataset_problems("dataset", &spec);
        if !problems.is_empty() {
            return Err(Error::Invalid(problems.join("; ")));
        }
        match self.account(&spec.provider).await? {
            Some(a) if a.role == Role::Provider => {}
            _ => {
                return Err(Error::Invalid(format!(
                    "dataset.provider: `{}` is not a provider account",
                    spec.provider
                )));
            }
        }
        let now = now_micros();
        let json = serde_json::to_string(&spec).expect("a dataset spec serializes");
        let limit = limit.map_or(i64::MAX, |l| i64::try_from(l).unwrap_or(i64::MAX));
        let done = sqlx::query(
            "INSERT INTO datasets (id, provider, origin, spec, created_at, updated_at)
             SELECT $1, $2, 'api', $3, $4, $4
             WHERE (SELECT COUNT(*) FROM datasets WHERE provider = $2 AND withdrawn_at IS NULL) < $5
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(&spec.id)
        .bind(&spec.provider)
        .bind(&json)
        .bind(now)
        .bind(limit)
        .execute(self.pool())
        .await?;
        let id_used = || async {
            sqlx::query("SELECT 1 FROM datasets WHERE id = $1")
                .bind(&spec.id)
                .fetch_optional(self.pool())
                .await
                .map(|row| row.is_some())
        };
        if done.rows_affected() == 0 && !id_used().await? {
            return Err(Error::Conflict(format!(
                "provider `{}` has {limit} datasets, the most it may publish \
                 ([market] max_datasets_per_provider)",
                spec.provider
            )));
        }
        if done.rows_affected() == 0 {
            return Err(Error::Conflict(format!(
                "dataset `{}` exists (or existed); choose another id",
                spec.id
            )));
        }
        Ok(StoredDataset {
            spec,
            origin: Origin::Api,
            created_at: now,
            updated_at: now,
        })
    }

    /// Applies `patch` to an API dataset's metadata.
    pub async fn update_dataset(
        &self,
        id: &str,
        patch: DatasetPatch,
    ) -> Result<StoredDataset, Error> {
        let mut stored = self
            .catalog_dataset(id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("no dataset `{id}`")))?;
        if stored.origin == Origin::Config {
            return Err(Error::Conflict(format!(
                "dataset `{id}` is declared in the config file; change it there"
            )));
        }
        let spec = &mut stored.spec;
        let DatasetPatch {
            title,
            description,
            publisher,
            licence,
            attribution,
            update_frequency,
            keywords,
        } = patch;
        macro_rules! set {
            ($($field:ident),*) => { $(if let Some(v) = $field { spec.$field = v; })* };
        }
        set!(
            title,
            description,
            publisher,
            licence,
            attribution,
            update_frequency,
            keywords
        );
        let problems = dataset_problems("dataset", spec);
        if !problems.is_empty() {
            return Err(Error::Invalid(problems.join("; ")));
        }
        stored.updated_at = now_micros();
        sqlx::query("UPDATE datasets SET spec = $1, updated_at = $2 WHERE id = $3")
            .bind(serde_json::to_string(&stored.spec).expect("a dataset spec serializes"))
            .bind(stored.updated_at)
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(stored)
    }
}

/// Starts taking readings for a dataset just stored: what the running gateway does when a
/// dataset joins (`App` gives it).
pub type StartDataset = Box<dyn Fn(&DatasetConfig) -> Result<(), String> + Send + Sync>;

/// The catalog as the running gateway uses it: the store, and how a new dataset starts.
pub struct Catalog {
    store: Store,
    start: StartDataset,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl Catalog {
    pub fn new(store: Store, start: StartDataset) -> Catalog {
        Catalog { store, start }
    }

    /// Creates a dataset and starts taking readings for it.
    pub async fn create(
        &self,
        spec: DatasetConfig,
        limit: Option<usize>,
    ) -> Result<StoredDataset, Error> {
        let stored = self.store.create_dataset(spec, limit).await?;
        (self.start)(&stored.spec).map_err(Error::DatasetStart)?;
        self.store
            .announce(super::changes::Change::Dataset(stored.spec.id.clone()));
        tracing::info!(dataset = %stored.spec.id, provider = %stored.spec.provider, "dataset created");
        Ok(stored)
    }
}

/// What the catalog routes read and change.
impl Catalog {
    pub async fn account(&self, id: &str) -> Result<Option<Account>, Error> {
        self.store.account(id).await
    }
    /// One dataset on offer.
    pub async fn catalog_dataset(&self, id: &str) -> Result<Option<StoredDataset>, Error> {
        self.store.catalog_dataset(id).await
    }
    /// Every dataset on offer (not withdrawn), by id.
    pub async fn catalog(&self) -> Result<Vec<StoredDataset>, Error> {
        self.store.catalog().await
    }
    /// Every plan on offer, by dataset, oldest first.
    pub async fn offered_plans(&self) -> Result<Vec<Plan>, Error> {
        self.store.offered_plans().await
    }
    /// A dataset's plans, oldest first: those on offer, or all.
    pub async fn plans_of(&self, dataset: &str, all: bool) -> Result<Vec<Plan>, Error> {
        self.store.plans_of(dataset, all).await
    }
    /// Applies `patch` to an API dataset's metadata.
    pub async fn update_dataset(
        &self,
        id: &str,
        patch: DatasetPatch,
    ) -> Result<StoredDataset, Error> {
        self.store.update_dataset(id, patch).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_CONFIG;
    use crate::market::store::tests::fresh_store;

    fn config() -> Config {
        Config::from_toml(DEFAULT_CONFIG, "default", &[]).unwrap()
    }

    async fn synced() -> (Store, Option<tempfile::TempDir>, Config) {
        let (store, dir) = fresh_store().await;
        let config = config();
        for ds in &config.datasets {
            store
                .ensure_provider(&ds.provider, &ds.publisher)
                .await
                .unwrap();
        }
        store.sync_catalog(&config).await.unwrap();
        (store, dir, config)
    }

    fn api_dataset(id: &str) -> DatasetConfig {
        let mut spec = config().datasets[0].clone();
        spec.id = id.into();
        spec.title = "Bike counts".into();
        spec
    }

    #[tokio::test]
    async fn config_datasets_sync_and_withdraw() {
        let (store, _dir, mut config) = synced().await;
        let ids: Vec<String> = store
            .catalog()
            .await
            .unwrap()
            .iter()
            .map(|d| d.spec.id.clone())
            .collect();
        assert_eq!(
            ids,
            ["air-quality", "energy-meters", "traffic-counts", "weather"]
        );
        let weather = store.catalog_dataset("weather").await.unwrap().unwrap();
        assert_eq!(weather.origin, Origin::Config);

        // Editing the file edits the catalog; removing a dataset withdraws it.
        config.datasets.retain(|d| d.id != "air-quality");
        config.datasets[0].title = "Energy, renamed".into();
        let all = store.sync_catalog(&config).await.unwrap();
        assert_eq!(all.len(), 3);
        assert!(
            store
                .catalog_dataset("air-quality")
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(
            store
                .catalog_dataset(&config.datasets[0].id)
                .await
                .unwrap()
                .unwrap()
                .spec
                .title,
            "Energy, renamed"
        );
        // Config datasets are edited in the file, not over the API.
        let err = store
            .update_dataset(
                "weather",
                DatasetPatch {
                    title: Some("x".into()),
                    ..Default::default()
                },
            )
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Conflict(_)), "{err}");
    }

    #[tokio::test]
    async fn api_datasets_are_validated_unique_and_editable() {
        let (store, _dir, config) = synced().await;
        let created = store
            .create_dataset(api_dataset("bike-counts"), None)
            .await
            .unwrap();
        assert_eq!(created.origin, Origin::Api);
        assert!(matches!(
            store.create_dataset(api_dataset("bike-counts"), None).await,
            Err(Error::Conflict(_))
        ));
        assert!(matches!(
            store
                .create_dataset(api_dataset("traffic-counts"), None)
                .await,
            Err(Error::Conflict(_))
        ));
        let mut bad = api_dataset("Bad Id");
        bad.fields.clear();
        bad.update_frequency = "sometimes".into();
        let err = store
            .create_dataset(bad, None)
            .await
            .unwrap_err()
            .to_string();
        for needle in ["dataset.id", "dataset.fields", "dataset.update_frequency"] {
            assert!(err.contains(needle), "{err}");
        }
        let mut foreign = api_dataset("bikes-2");
        foreign.provider = "nobody".into();
        assert!(store.create_dataset(foreign, None).await.is_err());

        let edited = store
            .update_dataset(
                "bike-counts",
                DatasetPatch {
                    description: Some("Counted at 40 stations".into()),
                    keywords: Some(vec!["bicycles".into(), "mobility".into()]),
                    update_frequency: Some("hourly".into()),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(edited.spec.description, "Counted at 40 stations");
        assert!(edited.updated_at >= created.updated_at);
        assert!(
            store
                .update_dataset(
                    "bike-counts",
                    DatasetPatch {
                        licence: Some(" ".into()),
                        ..Default::default()
                    }
                )
                .await
                .is_err()
        );
        // API datasets come back on the next start, after the config's.
        let all = store.sync_catalog(&config).await.unwrap();
        assert_eq!(all.last().unwrap().id, "bike-counts");
        assert_eq!(all.last().unwrap().keywords, ["bicycles", "mobility"]);
        // A config dataset may not take an API dataset's id.
        let mut clash = config.clone();
        clash.datasets.push(api_dataset("bike-counts"));
        assert!(matches!(
            store.sync_catalog(&clash).await,
            Err(Error::Conflict(_))
        ));
    }
}
