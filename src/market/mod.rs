//! The marketplace: accounts, API keys, and (as the marketplace issue lands) the catalog,
//! plans, subscriptions, payments, metering and invoices, on SQLite or PostgreSQL.

pub mod accounts;
pub mod catalog;
pub mod keys;
pub mod schema;
pub mod store;
#[doc(hidden)]
pub mod testdb;

pub use accounts::{Account, NewAccount, Role};
pub use keys::{ApiKey, KeyKind, Keyring};
pub use store::{Backend, Store, StoreError};
