//! The marketplace's one error: the few kinds a caller acts on. The HTTP API maps each kind
//! to one status in one place (`api::error`); the CLI prints it.
//!
//! The payment providers and Stripe's signature check keep their own small errors inside
//! [`super::payments`] (the provider's answer is matched on there, e.g. a 404 of an object
//! already gone); they become one of these kinds where they leave it.

use super::payments::PaymentError;
use super::payments::stripe::SignatureError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is wrong: a bad value, a plan that does not fit, a key out of scope.
    #[error("{0}")]
    Invalid(String),
    /// No such object, or one the caller may not see.
    #[error("{0}")]
    NotFound(String),
    /// The object is not in a state that allows this (an id taken, a subscription not
    /// awaiting payment).
    #[error("{0}")]
    Conflict(String),
    /// The payment provider declined the payment itself.
    #[error("{0}")]
    PaymentRequired(String),
    /// The payment provider refused otherwise, or could not be reached.
    #[error("{0}")]
    PaymentProvider(String),
    /// A payment webhook that is not signed by the provider or that cannot be read.
    #[error("webhook refused: {0}")]
    Webhook(String),
    /// A dataset was stored but could not start taking readings.
    #[error("cannot start the dataset: {0}")]
    DatasetStart(String),
    /// What the database holds cannot be read back (a stored spec of another version).
    #[error("stored {0}")]
    Corrupt(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("cannot create {path}: {source}")]
    Directory {
        path: String,
        source: std::io::Error,
    },
}

impl From<PaymentError> for Error {
    fn from(e: PaymentError) -> Self {
        match e {
            PaymentError::Refused {
                status: 402,
                message,
            } => Error::PaymentRequired(message),
            PaymentError::Refused {
                status: 409,
                message,
            } => Error::Conflict(message),
            PaymentError::Refused { status, message } => Error::PaymentProvider(format!(
                "the payment provider refused ({status}): {message}"
            )),
            e @ PaymentError::Unreachable(_) => Error::PaymentProvider(e.to_string()),
            PaymentError::Database(e) => Error::Database(e),
        }
    }
}

impl From<SignatureError> for Error {
    fn from(e: SignatureError) -> Self {
        Error::Webhook(e.to_string())
    }
}

/// `Error::NotFound` saying "no {what} `{id}`".
pub(crate) fn not_found(what: &str, id: &str) -> Error {
    Error::NotFound(format!("no {what} `{id}`"))
}
