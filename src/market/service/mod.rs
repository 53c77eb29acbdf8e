//! The marketplace as one service: plans, subscriptions, payments, entitlements and
//! metering over the store, with the entitlement cache invalidated on every change.
//!
//! HTTP handlers and the CLI call this; the feed and query paths call
//! [`Market::entitlement`] and [`UsageRecorder::record`].

use std::time::Duration;

use serde_json::Value;

use super::accounts::Account;
use super::catalog::StoredDataset;
use super::entitlement::{Entitlements, Grant};
use super::error::{Error, not_found};
use super::ids::random_alnum;
use super::invoices::{Invoice, Statement};
use super::keys::ApiKey;
use super::payments::stripe::Stripe;
use super::payments::{Checkout, CheckoutRequest, Payments};
use super::plans::{NewPlan, Plan, PlanKind};
use super::store::Store;
use super::subscriptions::{Applied, Payment, Status, Subscription, is_checkout_claim};
use super::usage::{UsageRecorder, UsageRow, UsageScope};
use crate::calendar::add_months;
use crate::config::{Config, MarketConfig};
use crate::model::{Micros, now_micros};

/// `Ok` for a subscription whose checkout is still open.
fn awaiting_payment(sub: &Subscription) -> Result<(), Error> {
    if sub.status == Status::PendingPayment {
        Ok(())
    } else {
        Err(Error::Conflict(format!(
            "subscription `{}` is {}, not awaiting payment",
            sub.id,
            sub.status.as_str()
        )))
    }
}

/// What a webhook did, for the log and the response.
#[derive(Debug, PartialEq, Eq)]
pub enum WebhookOutcome {
    Applied(&'static str),
    Replayed,
    Ignored(&'static str),
}

#[derive(Debug)]
pub struct Market {
    store: Store,
    entitlements: Entitlements,
    usage: UsageRecorder,
    payments: Payments,
    config: MarketConfig,
}

impl Market {
    pub fn new(store: Store, config: &Config) -> Result<Market, Error> {
        let payments = Payments::new(&config.payments)?;
        Ok(Market {
            entitlements: Entitlements::new(store.clone()),
            usage: UsageRecorder::new(store.clone()),
            store,
            payments,
            config: config.market.clone(),
        })
    }

    /// The usage recorder every delivery path counts into.
    pub fn usage(&self) -> &UsageRecorder {
        &self.usage
    }

    pub fn platform_fee_percent(&self) -> f64 {
        self.config.platform_fee_percent
    }

    pub fn usage_flush_interval(&self) -> Duration {
        self.config.usage_flush_interval
    }

    /// May `key` have `dataset` at `now`, and on what terms? See [`Entitlements`].
    pub async fn entitlement(
        &self,
        key: &ApiKey,
        dataset: &str,
        now: Micros,
    ) -> Result<Option<Grant>, Error> {
        self.entitlements.entitlement(key, dataset, now).await
    }

    /// Forgets cached entitlements: after any change outside this service (the catalog).
    pub fn invalidate(&self) {
        self.entitlements.invalidate();
    }

    /// Forgets cached entitlements here only: another node's change, told.
    pub fn forget_entitlements(&self) {
        self.entitlements.forget();
    }

    pub async fn create_plan(&self, dataset: &str, new: NewPlan) -> Result<Plan, Error> {
        let plan = self.store.create_plan(dataset, new).await?;
        self.entitlements.invalidate();
        Ok(plan)
    }

    pub async fn withdraw_plan(&self, id: &str) -> Result<bool, Error> {
        let done = self.store.withdraw_plan(id).await?;
        self.entitlements.invalidate();
        Ok(done)
    }

    /// Subscribes `account` to plan `plan_id`: a free plan at once, a paid one pending its
    /// checkout (returned). A checkout the payment provider refuses cancels the subscription.
    pub async fn subscribe(
        &self,
        account: &Account,
        plan_id: &str,
        base_url: &str,
        now: Micros,
    ) -> Result<(Subscription, Option<Checkout>), Error> {
        let plan = self
            .store
            .plan(plan_id)
            .await?
            .ok_or_else(|| not_found("plan", plan_id))?;
        let dataset = self
            .store
            .catalog_dataset(&plan.dataset)
            .await?
            .ok_or_else(|| not_found("plan", plan_id))?;
        let sub = self
            .store
            .create_subscription(&account.id, &plan, self.payments.name(), now)
            .await?;
        if !plan.kind.is_paid() {
            self.entitlements.invalidate();
            return Ok((sub, None));
        }
        let checkout = self
            .payments
            .checkout(
                &self.store,
                CheckoutRequest {
                    subscription: &sub,
                    plan: &plan,
                    account,
                    dataset_title: &dataset.spec.title,
                    base_url,
                },
            )
            .await;
        match checkout {
            Ok(checkout) => {
                self.store
                    .set_checkout(
                        &sub.id,
                        &checkout.url,
                        checkout.checkout_ref.as_deref(),
                        checkout.payment_ref.as_deref(),
                        now,
                    )
                    .await?;
                let sub = self
                    .store
                    .subscription(&sub.id)
                    .await?
                    .ok_or_else(|| not_found("subscription", &sub.id))?;
                Ok((sub, Some(checkout)))
            }
            Err(e) => {
                self.store.cancel_subscription(&sub.id, now).await?;
                Err(e.into())
            }
        }
    }

    /// A pending subscription's checkout, again.
    pub async fn checkout(&self, sub: &Subscription, base_url: &str) -> Result<Checkout, Error> {
        awaiting_payment(sub)?;
        Ok(self.payments.resume_checkout(sub, base_url).await?)
    }

    /// The subscriber finished its checkout: the payment provider starts charging; the
    /// subscription turns active when the payment is confirmed.
    pub async fn complete_checkout(
        &self,
        sub: &Subscription,
        now: Micros,
    ) -> Result<Subscription, Error> {
        awaiting_payment(sub)?;
        if let Some(existing) = &sub.payment_ref
            && !is_checkout_claim(existing)
        {
            return Err(Error::Conflict(format!(
                "the checkout is complete (payment provider's subscription `{existing}`); \
                 waiting for the payment's confirmation"
            )));
        }
        let plan = self
            .store
            .plan(&sub.plan)
            .await?
            .ok_or_else(|| not_found("plan", &sub.plan))?;
        // One completion at a time: a racing second call must not start a second
        // subscription at the payment provider.
        let Some(claim) = self.store.claim_checkout(&sub.id, now).await? else {
            return Err(Error::Conflict(
                "the checkout is being completed or is complete; waiting for the payment's \
                 confirmation"
                    .into(),
            ));
        };
        let payment_ref = match self.payments.complete_checkout(sub, &plan).await {
            Ok(payment_ref) => payment_ref,
            Err(e) => {
                self.store.release_checkout(&sub.id, &claim).await?;
                return Err(e.into());
            }
        };
        if !self
            .store
            .set_payment_ref(&sub.id, &claim, &payment_ref, now_micros())
            .await?
        {
            // Cancelled while the payment provider was starting it: stop it there too.
            self.payments.cancel_now(&payment_ref).await?;
            return Err(Error::Conflict(
                "the subscription was cancelled while its checkout completed; nothing is charged"
                    .into(),
            ));
        }
        self.store
            .subscription(&sub.id)
            .await?
            .ok_or_else(|| not_found("subscription", &sub.id))
    }

    /// Cancels: a paid, running subscription at its period end (the payment provider stops
    /// renewing it), anything else at once, and then the payment provider stops charging at
    /// once too (a checkout completed but not yet paid, a payment past due).
    pub async fn cancel(&self, sub: &Subscription, now: Micros) -> Result<Subscription, Error> {
        // (A checkout being completed is cancelled by its completer, which finds its claim
        // gone.)
        if let Some(payment_ref) = &sub.payment_ref
            && !is_checkout_claim(payment_ref)
            && sub.payment_provider == self.payments.name()
        {
            match sub.status_at(now) {
                Status::Active if sub.period_end.is_some() => {
                    if !sub.cancel_at_period_end {
                        self.payments.cancel_at_period_end(payment_ref).await?;
                    }
                }
                Status::Cancelled | Status::Expired => {}
                _ => self.payments.cancel_now(payment_ref).await?,
            }
        }
        let sub = self.store.cancel_subscription(&sub.id, now).await?;
        self.entitlements.invalidate();
        Ok(sub)
    }

    /// An admin records a payment received outside any processor (manual provider): the
    /// subscription runs a month from its current period end (or from now). `reference`
    /// (a bank transfer's id) makes recording the same payment twice do nothing.
    pub async fn record_payment(
        &self,
        sub: &Subscription,
        reference: Option<String>,
        now: Micros,
    ) -> Result<(Applied, Subscription), Error> {
        let plan = self
            .store
            .plan(&sub.plan)
            .await?
            .ok_or_else(|| not_found("plan", &sub.plan))?;
        if !plan.kind.is_paid() {
            return Err(Error::Conflict("a free plan takes no payments".into()));
        }
        if matches!(sub.status, Status::Cancelled | Status::Expired) {
            return Err(Error::Conflict(format!(
                "subscription `{}` is {}",
                sub.id,
                sub.status.as_str()
            )));
        }
        let start = sub.period_end.map_or(now, |end| end.max(now));
        let payment = Payment {
            subscription: sub.id.clone(),
            provider: "manual".into(),
            reference: reference
                .unwrap_or_else(|| format!("manual_{}", random_alnum(16).to_ascii_lowercase())),
            amount_minor: if plan.kind == PlanKind::Monthly {
                plan.price_minor
            } else {
                0
            },
            currency: plan.currency.clone(),
            period_start: start,
            period_end: add_months(start, 1),
            paid_at: now,
        };
        let mut tx = self.store.pool().begin().await?;
        let applied = Store::apply_payment(&mut tx, &payment, now).await?;
        tx.commit().await?;
        self.entitlements.invalidate();
        let sub = self
            .store
            .subscription(&sub.id)
            .await?
            .ok_or_else(|| not_found("subscription", &sub.id))?;
        Ok((applied, sub))
    }

    /// Stores what time changed (periods that ran out); returns how many changed.
    pub async fn sweep(&self, now: Micros) -> Result<u64, Error> {
        let changed = self.store.sweep_subscriptions(now).await?;
        if changed > 0 {
            self.entitlements.invalidate();
        }
        Ok(changed)
    }

    /// A Stripe webhook: verified, then applied once.
    pub async fn stripe_webhook(
        &self,
        signature: Option<&str>,
        body: &[u8],
        now: Micros,
    ) -> Result<WebhookOutcome, Error> {
        let Some(stripe) = self.payments.stripe() else {
            return Err(Error::Webhook(
                "this gateway does not take payments through Stripe".into(),
            ));
        };
        stripe.verify(signature, body)?;
        let event: Value = serde_json::from_slice(body)
            .map_err(|e| Error::Webhook(format!("not a JSON event: {e}")))?;
        let (Some(id), Some(kind)) = (event["id"].as_str(), event["type"].as_str()) else {
            return Err(Error::Webhook("an event has an id and a type".into()));
        };
        let object = &event["data"]["object"];
        // Which citygate subscription the event is about (looked up before the transaction:
        // it may ask Stripe).
        let stripe_sub = match kind {
            "invoice.payment_succeeded" | "invoice.paid" | "invoice.payment_failed" => {
                object["subscription"]
                    .as_str()
                    .or_else(|| object["parent"]["subscription_details"]["subscription"].as_str())
            }
            "customer.subscription.deleted" => object["id"].as_str(),
            _ => None,
        };
        let target = match stripe_sub {
            Some(stripe_sub) => self.subscription_for(stripe, stripe_sub).await?,
            None => None,
        };

        let mut tx = self.store.pool().begin().await?;
        let first = sqlx::query(
            "INSERT INTO payment_events (id, provider, kind, received_at) VALUES ($1, 'stripe', $2, $3)
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(id)
        .bind(kind)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if first.rows_affected() == 0 {
            return Ok(WebhookOutcome::Replayed);
        }
        let outcome = match (kind, target) {
            (_, None) => WebhookOutcome::Ignored("not about a citygate subscription"),
            ("invoice.payment_succeeded" | "invoice.paid", Some(sub)) => {
                let payment = invoice_payment(&sub.id, object, now)?;
                match Store::apply_payment(&mut tx, &payment, now).await? {
                    Applied::Extended => {
                        WebhookOutcome::Applied("subscription paid until period end")
                    }
                    Applied::Duplicate => WebhookOutcome::Ignored("invoice already recorded"),
                    Applied::Ignored => WebhookOutcome::Ignored("subscription has ended"),
                }
            }
            ("invoice.payment_failed", Some(sub)) => {
                let period_end = invoice_period(object).map(|(_, end)| end).unwrap_or(now);
                Store::payment_failed(&mut tx, &sub.id, period_end, now).await?;
                WebhookOutcome::Applied("payment failed: past due")
            }
            ("customer.subscription.deleted", Some(sub)) => {
                Store::subscription_ended(&mut tx, &sub.id, now).await?;
                WebhookOutcome::Applied("subscription ended")
            }
            _ => WebhookOutcome::Ignored("event type not used"),
        };
        tx.commit().await?;
        self.entitlements.invalidate();
        Ok(outcome)
    }

    async fn subscription_for(
        &self,
        stripe: &Stripe,
        stripe_sub: &str,
    ) -> Result<Option<Subscription>, Error> {
        if let Some(sub) = self.store.subscription_by_ref("stripe", stripe_sub).await? {
            return Ok(Some(sub));
        }
        // The event may come before the checkout stored the reference: ask Stripe whose it is.
        let Some(id) = stripe.subscription_metadata(stripe_sub).await? else {
            return Ok(None);
        };
        let sub = self.store.subscription(&id).await?;
        // A checkout being completed holds a claim, not yet the reference: it is this one.
        Ok(sub.filter(|s| {
            s.payment_provider == "stripe"
                && s.payment_ref
                    .as_deref()
                    .is_none_or(|r| r == stripe_sub || is_checkout_claim(r))
        }))
    }
}

fn secs(v: &Value) -> Option<Micros> {
    v.as_i64().map(|s| s * 1_000_000)
}

/// The period an invoice pays: its subscription line's, else the invoice's.
fn invoice_period(invoice: &Value) -> Option<(Micros, Micros)> {
    let line = &invoice["lines"]["data"][0]["period"];
    match (secs(&line["start"]), secs(&line["end"])) {
        (Some(s), Some(e)) if e > s => Some((s, e)),
        _ => match (secs(&invoice["period_start"]), secs(&invoice["period_end"])) {
            (Some(s), Some(e)) if e > s => Some((s, e)),
            _ => None,
        },
    }
}

fn invoice_payment(subscription: &str, invoice: &Value, now: Micros) -> Result<Payment, Error> {
    let reference = invoice["id"]
        .as_str()
        .ok_or_else(|| Error::Webhook("an invoice without an id".into()))?;
    let (period_start, period_end) = invoice_period(invoice)
        .ok_or_else(|| Error::Webhook(format!("invoice `{reference}` has no period")))?;
    Ok(Payment {
        subscription: subscription.to_string(),
        provider: "stripe".into(),
        reference: reference.to_string(),
        amount_minor: invoice["amount_paid"].as_i64().unwrap_or(0),
        currency: invoice["currency"]
            .as_str()
            .unwrap_or_default()
            .to_ascii_uppercase(),
        period_start,
        period_end,
        paid_at: secs(&invoice["status_transitions"]["paid_at"]).unwrap_or(now),
    })
}

/// What the market routes read, through the market like every change.
impl Market {
    pub async fn account(&self, id: &str) -> Result<Option<Account>, Error> {
        self.store.account(id).await
    }
    pub async fn all_subscriptions(&self) -> Result<Vec<Subscription>, Error> {
        self.store.all_subscriptions().await
    }
    /// One dataset on offer.
    pub async fn catalog_dataset(&self, id: &str) -> Result<Option<StoredDataset>, Error> {
        self.store.catalog_dataset(id).await
    }
    /// Writes the invoices of `period`: one per subscriber and currency with lines. Paid
    /// invoices stay as they are; open ones are recomputed. Returns the period's invoices.
    pub async fn generate_invoices(
        &self,
        period: &str,
        now: Micros,
    ) -> Result<Vec<Invoice>, Error> {
        self.store.generate_invoices(period, now).await
    }
    pub async fn invoice(&self, id: &str) -> Result<Option<Invoice>, Error> {
        self.store.invoice(id).await
    }
    pub async fn invoices_in(&self, period: &str) -> Result<Vec<Invoice>, Error> {
        self.store.invoices_in(period).await
    }
    /// An account's invoices, newest period first.
    pub async fn invoices_of(&self, account: &str) -> Result<Vec<Invoice>, Error> {
        self.store.invoices_of(account).await
    }
    /// Marks an open invoice paid (the manual provider's record of money received).
    /// `Ok(false)`: it was already paid.
    pub async fn pay_invoice(&self, id: &str, now: Micros) -> Result<bool, Error> {
        self.store.pay_invoice(id, now).await
    }
    /// Payments of a subscription, oldest first.
    pub async fn payments_of(&self, subscription: &str) -> Result<Vec<Payment>, Error> {
        self.store.payments_of(subscription).await
    }
    pub async fn plan(&self, id: &str) -> Result<Option<Plan>, Error> {
        self.store.plan(id).await
    }
    /// A dataset's plans, oldest first: those on offer, or all.
    pub async fn plans_of(&self, dataset: &str, all: bool) -> Result<Vec<Plan>, Error> {
        self.store.plans_of(dataset, all).await
    }
    /// Provider `provider`'s statement for `period`.
    pub async fn statement(
        &self,
        provider: &str,
        period: &str,
        fee_percent: f64,
    ) -> Result<Statement, Error> {
        self.store.statement(provider, period, fee_percent).await
    }
    pub async fn subscription(&self, id: &str) -> Result<Option<Subscription>, Error> {
        self.store.subscription(id).await
    }
    /// Subscriptions of an account, newest first.
    pub async fn subscriptions_of(&self, account: &str) -> Result<Vec<Subscription>, Error> {
        self.store.subscriptions_of(account).await
    }
    /// Subscriptions to the datasets of provider `provider`, newest first.
    pub async fn subscriptions_to(&self, provider: &str) -> Result<Vec<Subscription>, Error> {
        self.store.subscriptions_to(provider).await
    }

    /// Usage in hours starting in `[from, to)`, oldest first, with what is still counted in
    /// memory written first.
    pub async fn usage_rows(
        &self,
        scope: UsageScope<'_>,
        from: Micros,
        to: Micros,
    ) -> Result<Vec<UsageRow>, Error> {
        self.usage.flush().await?;
        self.store.usage(scope, from, to).await
    }
}

#[cfg(test)]
mod tests;
