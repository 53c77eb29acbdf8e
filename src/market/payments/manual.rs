//! The manual provider: no payment processor. The subscriber pays by the means the
//! marketplace states (a bank transfer, an invoice); an admin records the payment
//! (`POST /v1/subscriptions/{id}/payments`), which runs the subscription for a month.

use futures_util::future::BoxFuture;

use super::{Checkout, CheckoutRequest, PaymentError, PaymentProvider};
use crate::market::plans::Plan;
use crate::market::store::Store;
use crate::market::subscriptions::Subscription;

pub struct Manual;

/// The manual "checkout": the subscription's own page, which says what is owed.
fn manual_checkout(sub: &Subscription, base_url: &str) -> Checkout {
    Checkout {
        payment_ref: None,
        checkout_ref: None,
        url: format!("{base_url}/v1/subscriptions/{}", sub.id),
        client_secret: None,
        status: Some("awaiting_payment".into()),
    }
}

impl PaymentProvider for Manual {
    fn name(&self) -> &'static str {
        "manual"
    }

    fn checkout<'a>(
        &'a self,
        _store: &'a Store,
        req: CheckoutRequest<'a>,
    ) -> BoxFuture<'a, Result<Checkout, PaymentError>> {
        Box::pin(async move { Ok(manual_checkout(req.subscription, req.base_url)) })
    }

    fn resume_checkout<'a>(
        &'a self,
        sub: &'a Subscription,
        base_url: &'a str,
    ) -> BoxFuture<'a, Result<Checkout, PaymentError>> {
        Box::pin(async move { Ok(manual_checkout(sub, base_url)) })
    }

    fn complete_checkout<'a>(
        &'a self,
        _sub: &'a Subscription,
        _plan: &'a Plan,
    ) -> BoxFuture<'a, Result<String, PaymentError>> {
        Box::pin(async {
            Err(PaymentError::Refused {
                status: 409,
                message: "payments are recorded by an admin here (manual provider)".into(),
            })
        })
    }

    fn cancel_at_period_end<'a>(
        &'a self,
        _payment_ref: &'a str,
    ) -> BoxFuture<'a, Result<(), PaymentError>> {
        Box::pin(async { Ok(()) })
    }

    fn cancel_now<'a>(&'a self, _payment_ref: &'a str) -> BoxFuture<'a, Result<(), PaymentError>> {
        Box::pin(async { Ok(()) })
    }
}
