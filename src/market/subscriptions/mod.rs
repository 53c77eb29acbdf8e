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

use crate::model::Micros;

mod db;

/// How the payment reference of a pending subscription begins while one call completes
/// its checkout (see [`Store::claim_checkout`](super::store::Store::claim_checkout)); never a
/// payment provider's id.
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
