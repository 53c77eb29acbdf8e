//! The web console's browser sessions, kept in the database so that every node sharing it
//! knows a session whichever node opened it (`api::session` holds the cookie, the CSRF
//! check and the sealing; this is the table).

use sqlx::Row;

use super::error::Error;
use super::store::Store;
use crate::model::Micros;

/// A session as stored.
#[derive(Debug, Clone)]
pub(crate) struct StoredSession {
    /// The key's secret, sealed under the cookie (hex).
    pub(crate) sealed: String,
    /// The SHA-256 of the CSRF token (hex).
    pub(crate) csrf_hash: String,
}

/// What opening a session needs besides its id.
#[derive(Debug)]
pub(crate) struct NewSession<'a> {
    pub(crate) key_id: &'a str,
    pub(crate) sealed: &'a str,
    pub(crate) csrf_hash: &'a str,
    pub(crate) now: Micros,
    pub(crate) expires_at: Micros,
    /// Sessions one key holds at most: its oldest end first.
    pub(crate) per_key: usize,
    /// Sessions held at most.
    pub(crate) max: usize,
}

impl Store {
    /// Stores session `id`; `false` when `max` sessions are open already (after the
    /// expired ones are dropped).
    pub(crate) async fn open_session(&self, id: &str, s: NewSession<'_>) -> Result<bool, Error> {
        let mut tx = self.pool().begin().await?;
        sqlx::query("DELETE FROM browser_sessions WHERE expires_at <= $1")
            .bind(s.now)
            .execute(&mut *tx)
            .await?;
        let of_key: Vec<String> = sqlx::query(
            "SELECT id FROM browser_sessions WHERE key_id = $1 ORDER BY created_at DESC, id DESC",
        )
        .bind(s.key_id)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?;
        for oldest in of_key.iter().skip(s.per_key.saturating_sub(1)) {
            sqlx::query("DELETE FROM browser_sessions WHERE id = $1")
                .bind(oldest)
                .execute(&mut *tx)
                .await?;
        }
        let open: i64 = sqlx::query("SELECT COUNT(*) FROM browser_sessions")
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
        if open >= i64::try_from(s.max).unwrap_or(i64::MAX) {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO browser_sessions (id, key_id, sealed, csrf_hash, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(id)
        .bind(s.key_id)
        .bind(s.sealed)
        .bind(s.csrf_hash)
        .bind(s.now)
        .bind(s.expires_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// The live session `id`, if there is one.
    pub(crate) async fn find_session(
        &self,
        id: &str,
        now: Micros,
    ) -> Result<Option<StoredSession>, Error> {
        let row = sqlx::query(
            "SELECT sealed, csrf_hash FROM browser_sessions WHERE id = $1 AND expires_at > $2",
        )
        .bind(id)
        .bind(now)
        .fetch_optional(self.pool())
        .await?;
        row.map(|r| {
            Ok(StoredSession {
                sealed: r.try_get(0)?,
                csrf_hash: r.try_get(1)?,
            })
        })
        .transpose()
    }

    /// Ends session `id`; `false` if there was none.
    pub(crate) async fn close_session(&self, id: &str) -> Result<bool, Error> {
        let done = sqlx::query("DELETE FROM browser_sessions WHERE id = $1")
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected() > 0)
    }
}
