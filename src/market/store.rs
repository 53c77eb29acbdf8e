//! The marketplace database: SQLite under `data_dir` by default, PostgreSQL when `[database]
//! url` names one. One code path for both, through sqlx's `Any` driver: the SQL here is the
//! common subset (`$1` placeholders, `BIGINT` times in µs, `TEXT` ids, `ON CONFLICT`, no
//! vendor functions), and every table is created by the migrations in [`super::schema`],
//! applied in order on open and recorded in `schema_migrations`.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{AnyPool, ConnectOptions, Row};

use super::error::Error;
use super::schema::MIGRATIONS;
use crate::config::DatabaseLocation;
use crate::model::now_micros;

/// Which database a store talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A handle on the database (cheap to clone).
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

impl Store {
    /// Opens (creating if needed) the SQLite database at `path` and migrates it.
    pub async fn open(path: &Path) -> Result<Store, Error> {
        Store::connect(&DatabaseLocation::Sqlite(path.to_path_buf()), 4).await
    }

    /// Connects to the database at `location`, creating a SQLite file if needed, and
    /// migrates it.
    pub async fn connect(
        location: &DatabaseLocation,
        max_connections: u32,
    ) -> Result<Store, Error> {
        sqlx::any::install_default_drivers();
        let (url, backend) = match location {
            DatabaseLocation::Sqlite(path) => {
                if let Some(dir) = path.parent()
                    && !dir.as_os_str().is_empty()
                {
                    std::fs::create_dir_all(dir).map_err(|source| Error::Directory {
                        path: dir.display().to_string(),
                        source,
                    })?;
                }
                let options = SqliteConnectOptions::from_str("sqlite://")?
                    .filename(path)
                    .create_if_missing(true);
                (options.to_url_lossy().to_string(), Backend::Sqlite)
            }
            DatabaseLocation::Postgres(url) => (url.clone(), Backend::Postgres),
        };
        let options = AnyConnectOptions::from_str(&url)?.disable_statement_logging();
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        if backend == Backend::Sqlite {
            // Persistent for the file: readers do not block the writer. Full sync (the
            // default) makes every commit durable.
            sqlx::query("PRAGMA journal_mode = WAL")
                .execute(&pool)
                .await?;
        }
        let store = Store { pool, backend };
        store.migrate().await?;
        Ok(store)
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    async fn migrate(&self) -> Result<(), Error> {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version BIGINT PRIMARY KEY,
                applied_at BIGINT NOT NULL
            )",
        )
        .execute(&self.pool)
        .await?;
        let applied: Vec<i64> = sqlx::query("SELECT version FROM schema_migrations")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|row| row.get::<i64, _>(0))
            .collect();
        for (version, sql) in MIGRATIONS {
            if applied.contains(version) {
                continue;
            }
            let mut tx = self.pool.begin().await?;
            sqlx::raw_sql(sqlx::AssertSqlSafe(*sql))
                .execute(&mut *tx)
                .await?;
            // Two starts racing on an empty database: the loser's insert fails on the key
            // and its transaction rolls back.
            sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)")
                .bind(*version)
                .bind(now_micros())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            tracing::info!(version, "database migrated");
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A fresh store for a unit test: SQLite in a temp dir, or a new PostgreSQL database
    /// when `CITYGATE_TEST_POSTGRES` names a server (`postgres://user@host:port/postgres`).
    pub(crate) async fn fresh_store() -> (Store, Option<tempfile::TempDir>) {
        match std::env::var("CITYGATE_TEST_POSTGRES") {
            Ok(admin_url) if !admin_url.is_empty() => {
                let url = crate::market::testdb::create_database(&admin_url).await;
                (
                    Store::connect(&DatabaseLocation::Postgres(url), 4)
                        .await
                        .unwrap(),
                    None,
                )
            }
            _ => {
                let dir = tempfile::tempdir().unwrap();
                let store = Store::open(&dir.path().join("db/citygate.db"))
                    .await
                    .unwrap();
                (store, Some(dir))
            }
        }
    }

    /// [`fresh_store`] with the provider account `copenhagen`, which device keys need.
    pub(crate) async fn store_with_provider() -> (Store, Option<tempfile::TempDir>) {
        let (store, dir) = fresh_store().await;
        store.ensure_provider("copenhagen", "City").await.unwrap();
        (store, dir)
    }

    #[tokio::test]
    async fn keys_of_the_first_schema_carry_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("citygate.db");
        {
            // A database as the first release left it: version 1 and one device key.
            let options = SqliteConnectOptions::from_str("sqlite://")
                .unwrap()
                .filename(&path)
                .create_if_missing(true);
            let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
            sqlx::raw_sql(
                "CREATE TABLE schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL);
                 INSERT INTO schema_migrations VALUES (1, 0);",
            )
            .execute(&pool)
            .await
            .unwrap();
            sqlx::raw_sql(sqlx::AssertSqlSafe(MIGRATIONS[0].1))
                .execute(&pool)
                .await
                .unwrap();
            sqlx::query(
                "INSERT INTO api_keys VALUES ('key_old', 'device', 'copenhagen', $1, 5, NULL)",
            )
            .bind(crate::market::keys::tests_hash(OLD_SECRET))
            .execute(&pool)
            .await
            .unwrap();
            sqlx::query("INSERT INTO api_key_datasets VALUES ('key_old', 'weather')")
                .execute(&pool)
                .await
                .unwrap();
            pool.close().await;
        }
        let store = Store::open(&path).await.unwrap();
        let key = store.key_by_secret(OLD_SECRET).await.unwrap().unwrap();
        assert_eq!(&*key.id, "key_old");
        assert_eq!(key.account, "copenhagen");
        assert!(key.may_write("weather"));
        let account = store.account("copenhagen").await.unwrap().unwrap();
        assert_eq!(account.role, crate::market::Role::Provider);
    }

    const OLD_SECRET: &str = "cg_0123456789012345678901234567890123456789abc";

    #[tokio::test]
    async fn migrations_apply_once_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("citygate.db");
        let store = Store::open(&path).await.unwrap();
        assert_eq!(store.backend(), Backend::Sqlite);
        drop(store);
        let store = Store::open(&path).await.unwrap();
        let versions: Vec<i64> =
            sqlx::query("SELECT version FROM schema_migrations ORDER BY version")
                .fetch_all(store.pool())
                .await
                .unwrap()
                .iter()
                .map(|r| r.get::<i64, _>(0))
                .collect();
        let expected: Vec<i64> = MIGRATIONS.iter().map(|(v, _)| *v).collect();
        assert_eq!(versions, expected);
    }
}
