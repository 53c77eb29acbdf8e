//! Changes one node makes that every node's caches must see at once, when several nodes
//! share one PostgreSQL database: a dataset published (the others start taking readings for
//! it), a key revoked (the others stop trusting their cached lookups), a subscription, plan
//! or catalog change (the others forget their cached entitlements). The node that made the
//! change announces it with `NOTIFY citygate_changes`; every node follows the channel
//! ([`follow`]) and, whenever it (re)connects, looks at everything again, since what was
//! announced while it was away is gone. On SQLite there is one node and nothing to tell.

use std::future::Future;
use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio_util::sync::CancellationToken;

use super::store::{Backend, Store};

/// The PostgreSQL channel.
pub const CHANNEL: &str = "citygate_changes";

/// One announced change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A dataset was published.
    Dataset(String),
    /// A key was revoked.
    Key,
    /// Subscriptions, plans or the catalog changed.
    Entitlements,
}

impl Change {
    fn payload(&self) -> String {
        match self {
            Change::Dataset(id) => format!("dataset:{id}"),
            Change::Key => "key".into(),
            Change::Entitlements => "entitlements".into(),
        }
    }

    fn parse(payload: &str) -> Option<Change> {
        match payload.split_once(':') {
            Some(("dataset", id)) => Some(Change::Dataset(id.to_string())),
            None if payload == "key" => Some(Change::Key),
            None if payload == "entitlements" => Some(Change::Entitlements),
            _ => None,
        }
    }
}

impl Store {
    /// Tells the other nodes (PostgreSQL only), in the background: the change is committed
    /// already, and a node that misses the word looks at everything again when it
    /// reconnects.
    pub(crate) fn announce(&self, change: Change) {
        if self.backend() != Backend::Postgres {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let pool = self.pool().clone();
        runtime.spawn(async move {
            let payload = change.payload();
            if let Err(e) = sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANNEL)
                .bind(&payload)
                .execute(&pool)
                .await
            {
                tracing::warn!(error = %e, change = %payload, "could not tell the other nodes of a change");
            }
        });
    }
}

/// Follows the channel on the database at `url` until `closing`, calling `apply` with each
/// change, and with `None` (look at everything again) whenever it (re)connects.
pub async fn follow<F, Fut>(url: String, closing: CancellationToken, apply: F)
where
    F: Fn(Option<Change>) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut backoff = Duration::from_millis(250);
    loop {
        let listener = async {
            let mut listener = PgListener::connect(&url).await?;
            listener.listen(CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let mut listener = tokio::select! {
            _ = closing.cancelled() => return,
            made = listener => match made {
                Ok(listener) => listener,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "cannot follow the other nodes' changes");
                    tokio::select! {
                        _ = closing.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    continue;
                }
            },
        };
        backoff = Duration::from_millis(250);
        apply(None).await;
        loop {
            let next = tokio::select! {
                _ = closing.cancelled() => return,
                next = listener.try_recv() => next,
            };
            match next {
                Ok(Some(notification)) => {
                    if let Some(change) = Change::parse(notification.payload()) {
                        apply(Some(change)).await;
                    }
                }
                // The connection was lost; the next call makes a new one and listens
                // again. What was said meanwhile is gone: look at everything.
                Ok(None) => apply(None).await,
                Err(e) => {
                    tracing::warn!(error = %e, "lost the other nodes' changes; reconnecting");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_read_back_as_announced() {
        for change in [
            Change::Dataset("harbour-noise".into()),
            Change::Key,
            Change::Entitlements,
        ] {
            assert_eq!(Change::parse(&change.payload()), Some(change));
        }
        assert_eq!(Change::parse("nonsense"), None);
    }
}
