//! The manual provider: no payment processor. The subscriber pays by the means the
//! marketplace states (a bank transfer, an invoice); an admin records the payment
//! (`POST /v1/subscriptions/{id}/payments`), which runs the subscription for a month.

use super::{Checkout, PaymentError};
use crate::market::subscriptions::Subscription;

/// The manual "checkout": the subscription's own page, which says what is owed.
pub(super) fn checkout(sub: &Subscription, base_url: &str) -> Checkout {
    Checkout {
        payment_ref: None,
        checkout_ref: None,
        url: format!("{base_url}/v1/subscriptions/{}", sub.id),
        client_secret: None,
        status: Some("awaiting_payment".into()),
    }
}

/// There is no checkout to complete: an admin records each payment.
pub(super) fn complete_checkout() -> Result<String, PaymentError> {
    Err(PaymentError::Refused {
        status: 409,
        message: "payments are recorded by an admin here (manual provider)".into(),
    })
}
