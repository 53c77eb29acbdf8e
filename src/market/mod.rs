//! The marketplace: the database and API keys today; catalog, accounts, plans,
//! subscriptions, payments and metering as the marketplace issue lands.

pub mod keys;
pub mod store;

pub use keys::{ApiKey, KeyKind, Keyring};
pub use store::{Store, StoreError};
