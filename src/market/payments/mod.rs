//! Payment providers: the seam between subscriptions and money.
//!
//! A provider starts the payment of a paid subscription (a checkout the subscriber is sent
//! to) and tells the provider when a subscriber cancels. Confirmations come back another
//! way: as signed webhooks ([`stripe`]) or as an admin's record ([`manual`]); both end in
//! [`Store::apply_payment`](super::store::Store::apply_payment).

pub(crate) mod manual;
pub mod stripe;

use super::accounts::Account;
use super::plans::Plan;
use super::store::Store;
use super::subscriptions::Subscription;
use crate::config::{PaymentProviderKind, PaymentsConfig};
use stripe::Stripe;

/// What a checkout needs to know.
#[derive(Debug)]
pub struct CheckoutRequest<'a> {
    pub subscription: &'a Subscription,
    pub plan: &'a Plan,
    pub account: &'a Account,
    pub dataset_title: &'a str,
    /// This gateway's public base URL (links back to it).
    pub base_url: &'a str,
}

/// Where and how the subscriber pays.
#[derive(Clone, Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Checkout {
    /// The provider's id for the subscription, when the checkout already made one.
    #[serde(skip)]
    pub payment_ref: Option<String>,
    /// The provider's id of the checkout itself (a Stripe SetupIntent).
    #[serde(rename = "id", skip_serializing_if = "Option::is_none")]
    pub checkout_ref: Option<String>,
    pub url: String,
    /// What the subscriber's client confirms the payment method with (Stripe.js).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
    /// The provider's state of the checkout.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PaymentError {
    #[error("the payment provider answered {status}: {message}")]
    Refused { status: u16, message: String },
    #[error("the payment provider is unreachable: {0}")]
    Unreachable(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

/// The configured payment provider. Cancelling costs nothing with the manual one: there is
/// no charge to stop.
#[derive(Debug)]
pub enum Payments {
    Manual,
    Stripe(Stripe),
}

impl Payments {
    pub fn new(config: &PaymentsConfig) -> Result<Payments, PaymentError> {
        Ok(match config.provider {
            PaymentProviderKind::Manual => Payments::Manual,
            PaymentProviderKind::Stripe => Payments::Stripe(Stripe::new(&config.stripe)?),
        })
    }

    /// `manual` or `stripe`: stored with each subscription it handles.
    pub fn name(&self) -> &'static str {
        match self {
            Payments::Manual => "manual",
            Payments::Stripe(_) => "stripe",
        }
    }

    /// Starts paying for a pending subscription.
    pub async fn checkout(
        &self,
        store: &Store,
        req: CheckoutRequest<'_>,
    ) -> Result<Checkout, PaymentError> {
        match self {
            Payments::Manual => Ok(manual::checkout(req.subscription, req.base_url)),
            Payments::Stripe(stripe) => stripe.checkout(store, req).await,
        }
    }

    /// The checkout of a pending subscription, again (the subscriber lost it).
    pub async fn resume_checkout(
        &self,
        sub: &Subscription,
        base_url: &str,
    ) -> Result<Checkout, PaymentError> {
        match self {
            Payments::Manual => Ok(manual::checkout(sub, base_url)),
            Payments::Stripe(stripe) => stripe.resume_checkout(sub, base_url).await,
        }
    }

    /// The subscriber finished the checkout: start charging. Returns the provider's id for
    /// the subscription; its payments confirm it later.
    pub async fn complete_checkout(
        &self,
        sub: &Subscription,
        plan: &Plan,
    ) -> Result<String, PaymentError> {
        match self {
            Payments::Manual => manual::complete_checkout(),
            Payments::Stripe(stripe) => stripe.complete_checkout(sub, plan).await,
        }
    }

    /// The subscriber cancelled: stop renewing after the current period.
    pub async fn cancel_at_period_end(&self, payment_ref: &str) -> Result<(), PaymentError> {
        match self {
            Payments::Manual => Ok(()),
            Payments::Stripe(stripe) => stripe.cancel_at_period_end(payment_ref).await,
        }
    }

    /// The subscriber cancelled a subscription not running on paid time (awaiting its
    /// first payment, or past due): stop charging at once.
    pub async fn cancel_now(&self, payment_ref: &str) -> Result<(), PaymentError> {
        match self {
            Payments::Manual => Ok(()),
            Payments::Stripe(stripe) => stripe.cancel_now(payment_ref).await,
        }
    }

    /// The Stripe provider, for verifying its webhooks.
    pub fn stripe(&self) -> Option<&Stripe> {
        match self {
            Payments::Manual => None,
            Payments::Stripe(stripe) => Some(stripe),
        }
    }
}
