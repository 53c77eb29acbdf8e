//! Throwaway PostgreSQL databases for tests: the suite runs once on SQLite and once on
//! PostgreSQL (`CITYGATE_TEST_POSTGRES=postgres://user@host:port/postgres`, set by
//! `scripts/test.sh`), each test in a database of its own. Built only into tests: the unit
//! tests' `market::testdb` and the integration tests' `testdb` (`tests/it/main.rs`) are this
//! file.

use rand::Rng;
use sqlx::Connection;

/// Creates an empty database on the server behind `admin_url`; returns its URL.
pub(crate) async fn create_database(admin_url: &str) -> String {
    let name: String = format!(
        "cg_test_{}",
        rand::rng()
            .sample_iter(rand::distr::Alphanumeric)
            .take(16)
            .map(|b| char::from(b).to_ascii_lowercase())
            .collect::<String>()
    );
    let mut conn = sqlx::PgConnection::connect(admin_url)
        .await
        .unwrap_or_else(|e| panic!("connecting to the test PostgreSQL at {admin_url}: {e}"));
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("CREATE DATABASE");
    let _ = conn.close().await;
    let mut url = reqwest::Url::parse(admin_url).expect("a postgres:// URL");
    url.set_path(&name);
    url.to_string()
}
