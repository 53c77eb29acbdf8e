//! The subscriptions and payments tables: subscribing, looking up, cancelling, applying
//! payment events, sweeping expired periods, and claiming a checkout for completion.

use sqlx::Row;

use super::{
    Applied, CHECKOUT_CLAIM, CLAIM_STALE_AFTER, Payment, SUB_COLUMNS, Status, Subscription,
    sub_from_row,
};
use crate::market::error::Error;
use crate::market::ids::random_alnum;
use crate::market::plans::{PLAN_COLUMNS, Plan, plan_from_row};
use crate::market::store::Store;
use crate::model::Micros;

/// Prefixes every subscription column with `s.` (for joins).
fn sub_columns_of(alias: &str) -> String {
    SUB_COLUMNS
        .split(", ")
        .map(|c| format!("{alias}.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Store {
    /// Subscribes `account` to `plan` at `now`: active at once when free, else pending
    /// payment through `provider`. One live subscription per account and plan.
    ///
    /// At most one live (pending, active or past due) subscription per account and plan: a
    /// unique index holds it, so racing requests get one subscription and one 409.
    pub async fn create_subscription(
        &self,
        account: &str,
        plan: &Plan,
        provider: &str,
        now: Micros,
    ) -> Result<Subscription, Error> {
        if !plan.active {
            return Err(Error::Conflict(format!(
                "plan `{}` is no longer offered",
                plan.id
            )));
        }
        // One statement, no read-then-write transaction: the unique index decides, so racing
        // subscribes neither both pass (PostgreSQL) nor deadlock on the write lock (SQLite).
        let free = !plan.kind.is_paid();
        let sub = Subscription {
            id: format!("sub_{}", random_alnum(14).to_ascii_lowercase()),
            account: account.to_string(),
            plan: plan.id.clone(),
            dataset: plan.dataset.clone(),
            status: if free {
                Status::Active
            } else {
                Status::PendingPayment
            },
            payment_provider: if free { "none".into() } else { provider.into() },
            payment_ref: None,
            checkout_url: None,
            checkout_ref: None,
            period_start: free.then_some(now),
            period_end: None,
            cancel_at_period_end: false,
            created_at: now,
            updated_at: now,
        };
        let inserted = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO subscriptions ({SUB_COLUMNS})
             VALUES ($1, $2, $3, $4, $5, $6, NULL, NULL, NULL, $7, NULL, 0, $8, $8)"
        )))
        .bind(&sub.id)
        .bind(&sub.account)
        .bind(&sub.plan)
        .bind(&sub.dataset)
        .bind(sub.status.as_str())
        .bind(&sub.payment_provider)
        .bind(sub.period_start)
        .bind(now)
        .execute(self.pool())
        .await;
        match inserted {
            Ok(_) => Ok(sub),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                let live = sqlx::query(
                    "SELECT id FROM subscriptions WHERE account = $1 AND plan = $2
                     AND status IN ('pending_payment', 'active', 'past_due')",
                )
                .bind(account)
                .bind(&plan.id)
                .fetch_optional(self.pool())
                .await?
                .map(|row| row.try_get::<String, _>(0))
                .transpose()?
                .unwrap_or_default();
                Err(Error::Conflict(format!(
                    "subscription `{live}` to plan `{}` exists; cancel it first",
                    plan.id
                )))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Stores where a pending subscription is paid: the checkout's page, the provider's id
    /// of the checkout and, when the checkout already made one, of the subscription.
    pub async fn set_checkout(
        &self,
        id: &str,
        url: &str,
        checkout_ref: Option<&str>,
        payment_ref: Option<&str>,
        now: Micros,
    ) -> Result<(), Error> {
        sqlx::query(
            "UPDATE subscriptions SET payment_ref = $1, checkout_url = $2, checkout_ref = $3,
                 updated_at = $4
             WHERE id = $5",
        )
        .bind(payment_ref)
        .bind(url)
        .bind(checkout_ref)
        .bind(now)
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    pub async fn subscription(&self, id: &str) -> Result<Option<Subscription>, Error> {
        Ok(sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {SUB_COLUMNS} FROM subscriptions WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(self.pool())
        .await?
        .as_ref()
        .map(sub_from_row)
        .transpose()?)
    }

    /// The subscription a payment provider knows as `payment_ref`.
    pub async fn subscription_by_ref(
        &self,
        provider: &str,
        payment_ref: &str,
    ) -> Result<Option<Subscription>, Error> {
        Ok(sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {SUB_COLUMNS} FROM subscriptions WHERE payment_provider = $1 AND payment_ref = $2"
        )))
        .bind(provider)
        .bind(payment_ref)
        .fetch_optional(self.pool())
        .await?
        .as_ref()
        .map(sub_from_row)
        .transpose()?)
    }

    /// Subscriptions of an account, newest first.
    pub async fn subscriptions_of(&self, account: &str) -> Result<Vec<Subscription>, Error> {
        self.subscriptions_where("account = $1", Some(account))
            .await
    }

    /// Subscriptions to the datasets of provider `provider`, newest first.
    pub async fn subscriptions_to(&self, provider: &str) -> Result<Vec<Subscription>, Error> {
        self.subscriptions_where(
            "dataset IN (SELECT id FROM datasets WHERE provider = $1)",
            Some(provider),
        )
        .await
    }

    pub async fn all_subscriptions(&self) -> Result<Vec<Subscription>, Error> {
        self.subscriptions_where("1 = 1", None).await
    }

    async fn subscriptions_where(
        &self,
        filter: &str,
        arg: Option<&str>,
    ) -> Result<Vec<Subscription>, Error> {
        let sql = format!(
            "SELECT {SUB_COLUMNS} FROM subscriptions WHERE {filter} ORDER BY created_at DESC, id"
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        if let Some(arg) = arg {
            query = query.bind(arg);
        }
        Ok(query
            .fetch_all(self.pool())
            .await?
            .iter()
            .map(sub_from_row)
            .collect::<Result<_, _>>()?)
    }

    /// The subscriptions of `account` to `dataset` that may grant access, with their plans.
    pub async fn grants_of(
        &self,
        account: &str,
        dataset: &str,
    ) -> Result<Vec<(Subscription, Plan)>, Error> {
        let sql = format!(
            "SELECT {}, {} FROM subscriptions s JOIN plans p ON p.id = s.plan
             WHERE s.account = $1 AND s.dataset = $2 AND s.status = 'active'",
            sub_columns_of("s"),
            PLAN_COLUMNS
                .split(", ")
                .map(|c| format!("p.{}", c.trim()))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(account)
            .bind(dataset)
            .fetch_all(self.pool())
            .await?;
        let columns = SUB_COLUMNS.split(", ").count();
        Ok(rows
            .iter()
            .map(|row| Ok((sub_from_row(row)?, plan_from_row(row, columns)?)))
            .collect::<Result<_, sqlx::Error>>()?)
    }

    /// Cancels: a free or unpaid subscription at once; a paid one at the end of its period
    /// (it stays active until then). Returns the subscription as it now is.
    pub async fn cancel_subscription(&self, id: &str, now: Micros) -> Result<Subscription, Error> {
        let sub = self
            .subscription(id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("no subscription `{id}`")))?;
        let status = sub.status_at(now);
        let (sql, at_end) = match status {
            Status::Cancelled | Status::Expired => return Ok(sub.at(now)),
            Status::Active if sub.period_end.is_some() => (
                "UPDATE subscriptions SET cancel_at_period_end = 1, updated_at = $1 WHERE id = $2",
                true,
            ),
            _ => (
                "UPDATE subscriptions SET status = 'cancelled', updated_at = $1 WHERE id = $2",
                false,
            ),
        };
        sqlx::query(sql)
            .bind(now)
            .bind(id)
            .execute(self.pool())
            .await?;
        let mut sub = sub;
        if at_end {
            sub.cancel_at_period_end = true;
        } else {
            sub.status = Status::Cancelled;
        }
        sub.updated_at = now;
        Ok(sub)
    }

    /// Records a confirmed payment and runs the subscription to the paid period's end, in
    /// `tx` (with the event that brought it). A payment already recorded does nothing.
    pub async fn apply_payment(
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        payment: &Payment,
        now: Micros,
    ) -> Result<Applied, Error> {
        let done = sqlx::query(
            "INSERT INTO payments (id, subscription, provider, reference, amount_minor, currency,
                                   period_start, period_end, paid_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (provider, reference) DO NOTHING",
        )
        .bind(format!("pay_{}", random_alnum(14).to_ascii_lowercase()))
        .bind(&payment.subscription)
        .bind(&payment.provider)
        .bind(&payment.reference)
        .bind(payment.amount_minor)
        .bind(&payment.currency)
        .bind(payment.period_start)
        .bind(payment.period_end)
        .bind(payment.paid_at)
        .execute(&mut **tx)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(Applied::Duplicate);
        }
        // Forward only: an older period's payment arriving late moves nothing back.
        let extended = sqlx::query(
            "UPDATE subscriptions SET
                 status = 'active',
                 period_start = CASE WHEN period_end IS NULL OR period_end < $1
                                     THEN $2 ELSE period_start END,
                 period_end = CASE WHEN period_end IS NULL OR period_end < $1
                                   THEN $1 ELSE period_end END,
                 checkout_url = NULL,
                 updated_at = $3
             WHERE id = $4 AND status NOT IN ('cancelled', 'expired')",
        )
        .bind(payment.period_end)
        .bind(payment.period_start)
        .bind(now)
        .bind(&payment.subscription)
        .execute(&mut **tx)
        .await?;
        Ok(if extended.rows_affected() == 1 {
            Applied::Extended
        } else {
            Applied::Ignored
        })
    }

    /// A payment for the period ending `period_end` failed: past due, unless that period
    /// is already paid (a late failure after a retry succeeded).
    pub async fn payment_failed(
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        subscription: &str,
        period_end: Micros,
        now: Micros,
    ) -> Result<(), Error> {
        sqlx::query(
            "UPDATE subscriptions SET status = 'past_due', updated_at = $1
             WHERE id = $2 AND status IN ('active', 'past_due')
               AND (period_end IS NULL OR period_end < $3)",
        )
        .bind(now)
        .bind(subscription)
        .bind(period_end)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// The payment provider ended the subscription: no access from `now` on.
    pub async fn subscription_ended(
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        subscription: &str,
        now: Micros,
    ) -> Result<(), Error> {
        sqlx::query(
            "UPDATE subscriptions SET
                 status = CASE WHEN cancel_at_period_end = 1 AND period_end IS NOT NULL
                                    AND period_end <= $1 THEN 'expired' ELSE 'cancelled' END,
                 period_end = CASE WHEN period_end IS NULL OR period_end > $1
                                   THEN $1 ELSE period_end END,
                 updated_at = $1
             WHERE id = $2 AND status NOT IN ('cancelled', 'expired')",
        )
        .bind(now)
        .bind(subscription)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Stores the statuses that time has changed (active past its period end becomes past
    /// due, or expired when cancelled at period end). Returns how many changed.
    pub async fn sweep_subscriptions(&self, now: Micros) -> Result<u64, Error> {
        let done = sqlx::query(
            "UPDATE subscriptions SET
                 status = CASE WHEN cancel_at_period_end = 1 THEN 'expired' ELSE 'past_due' END,
                 updated_at = $1
             WHERE status = 'active' AND period_end IS NOT NULL AND period_end <= $1",
        )
        .bind(now)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected())
    }

    /// Claims a pending subscription's checkout for completion: the claim, or `None` when
    /// another call holds it (or completed it). The claim is a placeholder payment reference,
    /// replaced by [`Store::set_payment_ref`] or given back by [`Store::release_checkout`].
    pub async fn claim_checkout(&self, id: &str, now: Micros) -> Result<Option<String>, Error> {
        let claim = format!("{CHECKOUT_CLAIM}{now}");
        let done = sqlx::query(
            "UPDATE subscriptions SET payment_ref = $1, updated_at = $2
             WHERE id = $3 AND status = 'pending_payment'
               AND (payment_ref IS NULL OR (payment_ref LIKE 'completing:%' AND updated_at < $4))",
        )
        .bind(&claim)
        .bind(now)
        .bind(id)
        .bind(now - CLAIM_STALE_AFTER)
        .execute(self.pool())
        .await?;
        Ok((done.rows_affected() == 1).then_some(claim))
    }

    /// Gives back a claim whose completion failed, so the subscriber can try again.
    pub async fn release_checkout(&self, id: &str, claim: &str) -> Result<(), Error> {
        sqlx::query(
            "UPDATE subscriptions SET payment_ref = NULL WHERE id = $1 AND payment_ref = $2",
        )
        .bind(id)
        .bind(claim)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Stores the payment provider's id of a subscription whose checkout `claim` completed.
    /// `false`: the claim is gone (the subscription was cancelled meanwhile, or the claim
    /// went stale and was taken again), and the caller must stop what it started.
    pub async fn set_payment_ref(
        &self,
        id: &str,
        claim: &str,
        payment_ref: &str,
        now: Micros,
    ) -> Result<bool, Error> {
        let done = sqlx::query(
            "UPDATE subscriptions SET payment_ref = $1, updated_at = $2
             WHERE id = $3 AND payment_ref = $4 AND status NOT IN ('cancelled', 'expired')",
        )
        .bind(payment_ref)
        .bind(now)
        .bind(id)
        .bind(claim)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Payments of a subscription, oldest first.
    pub async fn payments_of(&self, subscription: &str) -> Result<Vec<Payment>, Error> {
        Ok(sqlx::query(
            "SELECT subscription, provider, reference, amount_minor, currency, period_start,
                    period_end, paid_at
             FROM payments WHERE subscription = $1 ORDER BY paid_at, reference",
        )
        .bind(subscription)
        .fetch_all(self.pool())
        .await?
        .iter()
        .map(|row| {
            Ok(Payment {
                subscription: row.try_get(0)?,
                provider: row.try_get(1)?,
                reference: row.try_get(2)?,
                amount_minor: row.try_get(3)?,
                currency: row.try_get(4)?,
                period_start: row.try_get(5)?,
                period_end: row.try_get(6)?,
                paid_at: row.try_get(7)?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()?)
    }
}
