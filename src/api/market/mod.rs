//! Plans, subscriptions, payments, entitlements, usage, invoices and statements over HTTP.
//!
//! | route | who | what |
//! |---|---|---|
//! | `GET /v1/catalog/{id}/plans` | anyone (`?all=true`: its provider, admin) | plans on offer |
//! | `POST /v1/catalog/{id}/plans` | its provider, admin | price the dataset |
//! | `DELETE /v1/plans/{id}` | its provider, admin | withdraw a plan (subscriptions run on) |
//! | `POST /v1/subscriptions` | subscriber | `{plan}`: free → active; paid → checkout |
//! | `GET /v1/subscriptions` | subscriber: own; provider: to its datasets; admin: all | |
//! | `GET /v1/subscriptions/{id}` | its subscriber, the dataset's provider, admin | |
//! | `DELETE /v1/subscriptions/{id}` | its subscriber, admin | cancel (paid: at period end) |
//! | `GET /v1/subscriptions/{id}/checkout` | its subscriber | the pending checkout again |
//! | `POST /v1/subscriptions/{id}/checkout/complete` | its subscriber | payment method confirmed: start charging |
//! | `GET /v1/subscriptions/{id}/payments` | its subscriber, the provider, admin | payments received |
//! | `POST /v1/subscriptions/{id}/payments` | admin | record a payment (manual provider): one more month |
//! | `POST /v1/payments/webhook` | Stripe (signed) | payment events |
//! | `GET /v1/access/{dataset}` | any key | the key's grant for a dataset, or 404 |
//! | `GET /v1/usage?from=&to=` | subscriber: per subscription; provider: per own dataset; admin: all | hourly |
//! | `POST /v1/invoices/generate` | admin | `{period: "YYYY-MM"}` |
//! | `GET /v1/invoices?period=&format=csv` | subscriber: own; admin: all | |
//! | `GET /v1/invoices/{id}?format=csv` | its subscriber, admin | |
//! | `POST /v1/invoices/{id}/pay` | admin | mark an open invoice paid |
//! | `GET /v1/statements?period=` | provider: own (admin: `&provider=`) | revenue, fee, payout, subscribers |
//!
//! Objects a key may not see answer 404, as if they did not exist.

mod access;
mod billing;
mod plans;
mod subscriptions;

// Globs, so the hidden `__path_*` items `#[utoipa::path]` puts next to each handler come along
// and `api::mod` can name every handler as `market::<handler>`.
pub(crate) use access::*;
pub(crate) use billing::*;
pub(crate) use plans::*;
pub(crate) use subscriptions::*;
