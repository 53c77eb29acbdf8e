//! The marketplace: accounts and API keys, the catalog, plans, subscriptions, payments,
//! the entitlement check, metering, invoices and provider statements, on SQLite or
//! PostgreSQL. [`service::Market`] ties them together for the API and the delivery paths.
//!
//! The HTTP handlers reach the database only through three services over one [`Store`]:
//! [`Market`] (plans, subscriptions, payments, usage, invoices), [`Keyring`] (accounts and
//! keys, with the cache of authenticated keys) and [`catalog::Catalog`] (datasets). Every
//! failure is one [`Error`], of the few kinds a caller acts on.

pub mod accounts;
pub mod catalog;
pub mod changes;
pub(crate) mod entitlement;
pub(crate) mod error;
mod ids;
pub(crate) mod invoices;
pub mod keyring;
pub mod keys;
pub mod payments;
pub mod plans;
pub(crate) mod schema;
pub(crate) mod service;
pub(crate) mod sessions;
pub(crate) mod store;
pub mod subscriptions;
#[cfg(test)]
pub(crate) mod testdb;
pub(crate) mod usage;

pub use accounts::{Account, NewAccount, Role};
pub use entitlement::Grant;
pub use error::Error;
pub use keyring::Keyring;
pub use keys::{ApiKey, KeyKind};
pub use service::Market;
pub use store::{Backend, Store};
