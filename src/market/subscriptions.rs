//! Subscriptions: an account's access to a dataset under a plan.
//!
//! A free plan's subscription is `active` at once and has no end. A paid one starts
//! `pending_payment` with a checkout from the payment provider; each confirmed payment of a
//! period (a Stripe invoice, or an admin's record for the manual provider) is kept in
//! `payments` and makes the subscription `active` until that period's end. A period that
//! ends unpaid leaves it `past_due`; one that ends after the subscriber cancelled leaves it
//! `expired`. `cancelled` is final. Payment events may come twice or out of order: a payment
//! is kept once per reference, and a period end only ever moves forward.

use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::error::Error;
use super::ids::random_alnum;
use super::plans::{PLAN_COLUMNS, Plan, plan_from_row};
use super::store::Store;
use crate::model::Micros;

/// How the payment reference of a pending subscription begins while one call completes
/// its checkout (see [`Store::claim_checkout`]); never a payment provider's id.
const CHECKOUT_CLAIM: &str = "completing:";

/// A claim older than this is taken to be abandoned (the process died mid-completion), and
/// may be claimed again; the payment provider's idempotency key keeps the retry from
/// starting a second subscription there.
const CLAIM_STALE_AFTER: Micros = 5 * 60 * 1_000_000;

/// Whether a payment reference is a checkout claim rather than a payment provider's id.
pub fn is_checkout_claim(payment_ref: &str) -> bool {
    payment_ref.starts_with(CHECKOUT_CLAIM)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    PendingPayment,
    Active,
    PastDue,
    Cancelled,
    Expired,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::PendingPayment => "pending_payment",
            Status::Active => "active",
            Status::PastDue => "past_due",
            Status::Cancelled => "cancelled",
            Status::Expired => "expired",
        }
    }

    fn parse(s: &str) -> Option<Status> {
        match s {
            "pending_payment" => Some(Status::PendingPayment),
            "active" => Some(Status::Active),
            "past_due" => Some(Status::PastDue),
            "cancelled" => Some(Status::Cancelled),
            "expired" => Some(Status::Expired),
            _ => None,
        }
    }

    /// Still counts against "one subscription per plan".
    pub fn is_live(self) -> bool {
        matches!(
            self,
            Status::PendingPayment | Status::Active | Status::PastDue
        )
    }
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Subscription {
    pub id: String,
    pub account: String,
    pub plan: String,
    pub dataset: String,
    pub status: Status,
    pub payment_provider: String,
    /// The payment provider's id for it (a Stripe subscription id).
    pub payment_ref: Option<String>,
    /// Where the subscriber pays, while pending.
    pub checkout_url: Option<String>,
    /// The payment provider's id of the checkout (a Stripe SetupIntent).
    #[serde(skip)]
    pub checkout_ref: Option<String>,
    pub period_start: Option<Micros>,
    /// Paid until (exclusive); `None` for a free plan: no end.
    pub period_end: Option<Micros>,
    pub cancel_at_period_end: bool,
    pub created_at: Micros,
    pub updated_at: Micros,
}

impl Subscription {
    /// The status at `now`: an active subscription whose period has run out is past due
    /// (or expired, when it was cancelled at period end), even before the sweep stores it.
    pub fn status_at(&self, now: Micros) -> Status {
        match (self.status, self.period_end) {
            (Status::Active, Some(end)) if now >= end => {
                if self.cancel_at_period_end {
                    Status::Expired
                } else {
                    Status::PastDue
                }
            }
            (status, _) => status,
        }
    }

    /// Whether it gives access at `now`.
    pub fn grants(&self, now: Micros) -> bool {
        self.status_at(now) == Status::Active
    }

    /// This subscription as seen at `now` (the status worked out).
    pub fn at(mut self, now: Micros) -> Subscription {
        self.status = self.status_at(now);
        self
    }
}

/// A confirmed payment of one period of a subscription.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Payment {
    pub subscription: String,
    pub provider: String,
    /// The provider's id of what was paid (a Stripe invoice id); unique per provider.
    pub reference: String,
    pub amount_minor: i64,
    pub currency: String,
    pub period_start: Micros,
    pub period_end: Micros,
    pub paid_at: Micros,
}

/// What applying a payment did.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    /// Recorded; the subscription runs to the period end.
    Extended,
    /// Already recorded (a replay).
    Duplicate,
    /// Recorded, but the subscription was cancelled: no access follows.
    Ignored,
}

pub(crate) const SUB_COLUMNS: &str = "id, account, plan, dataset, status, payment_provider, \
     payment_ref, checkout_url, checkout_ref, period_start, period_end, cancel_at_period_end, \
     created_at, updated_at";

pub(crate) fn sub_from_row(row: &AnyRow) -> Result<Subscription, sqlx::Error> {
    let status: String = row.try_get(4)?;
    Ok(Subscription {
        id: row.try_get(0)?,
        account: row.try_get(1)?,
        plan: row.try_get(2)?,
        dataset: row.try_get(3)?,
        status: Status::parse(&status).ok_or_else(|| {
            sqlx::Error::Decode(format!("unknown subscription status `{status}`").into())
        })?,
        payment_provider: row.try_get(5)?,
        payment_ref: row.try_get(6)?,
        checkout_url: row.try_get(7)?,
        checkout_ref: row.try_get(8)?,
        period_start: row.try_get(9)?,
        period_end: row.try_get(10)?,
        cancel_at_period_end: row.try_get::<i64, _>(11)? != 0,
        created_at: row.try_get(12)?,
        updated_at: row.try_get(13)?,
    })
}

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
