//! Payment providers: the seam between subscriptions and money.
//!
//! A provider starts the payment of a paid subscription (a checkout the subscriber is sent
//! to) and tells the provider when a subscriber cancels. Confirmations come back another
//! way: as signed webhooks ([`stripe`]) or as an admin's record ([`manual`]); both end in
//! [`Store::apply_payment`](super::store::Store::apply_payment).

pub mod manual;
pub mod stripe;

use futures_util::future::BoxFuture;

use super::accounts::Account;
use super::plans::Plan;
use super::store::Store;
use super::subscriptions::Subscription;

/// What a checkout needs to know.
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
    #[error("{0}")]
    Store(String),
}

pub trait PaymentProvider: Send + Sync {
    /// `manual` or `stripe`: stored with each subscription it handles.
    fn name(&self) -> &'static str;

    /// Starts paying for a pending subscription.
    fn checkout<'a>(
        &'a self,
        store: &'a Store,
        req: CheckoutRequest<'a>,
    ) -> BoxFuture<'a, Result<Checkout, PaymentError>>;

    /// The checkout of a pending subscription, again (the subscriber lost it).
    fn resume_checkout<'a>(
        &'a self,
        sub: &'a Subscription,
        base_url: &'a str,
    ) -> BoxFuture<'a, Result<Checkout, PaymentError>>;

    /// The subscriber finished the checkout: start charging. Returns the provider's id for
    /// the subscription; its payments confirm it later.
    fn complete_checkout<'a>(
        &'a self,
        sub: &'a Subscription,
        plan: &'a Plan,
    ) -> BoxFuture<'a, Result<String, PaymentError>>;

    /// The subscriber cancelled: stop renewing after the current period.
    fn cancel_at_period_end<'a>(
        &'a self,
        payment_ref: &'a str,
    ) -> BoxFuture<'a, Result<(), PaymentError>>;

    /// The subscriber cancelled a subscription not running on paid time (awaiting its
    /// first payment, or past due): stop charging at once.
    fn cancel_now<'a>(&'a self, payment_ref: &'a str) -> BoxFuture<'a, Result<(), PaymentError>>;

    /// The Stripe provider, for verifying its webhooks.
    fn as_stripe(&self) -> Option<&stripe::Stripe> {
        None
    }
}
