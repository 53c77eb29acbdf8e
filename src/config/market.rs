//! The paid side's sections: the marketplace (`[market]`), how subscribers pay
//! (`[payments]`), and the live feeds they pay for (`[feed]`).

use std::time::Duration;

use serde::Deserialize;

use super::{Secret, units};

#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct MarketConfig {
    /// The marketplace's share of every payment, in percent (0-100): deducted from
    /// providers' revenue in their statements.
    pub platform_fee_percent: f64,
    /// Usage counted in memory is written to the database this often (and at shutdown).
    #[serde(with = "units::duration")]
    pub usage_flush_interval: Duration,
    /// Datasets one provider may publish over the API (its configured ones count too).
    pub max_datasets_per_provider: usize,
}

impl Default for MarketConfig {
    fn default() -> Self {
        MarketConfig {
            platform_fee_percent: 10.0,
            usage_flush_interval: Duration::from_secs(10),
            max_datasets_per_provider: 100,
        }
    }
}

/// Which payment provider takes subscribers' money.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PaymentProviderKind {
    /// No processor: an admin records payments (bank transfer, invoice).
    #[default]
    Manual,
    Stripe,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct PaymentsConfig {
    pub provider: PaymentProviderKind,
    pub stripe: StripeConfig,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct StripeConfig {
    /// The Stripe API, or a Stripe-compatible server (localstripe in tests).
    pub api_base: String,
    /// The secret API key (`sk_…`); better from `CITYGATE__PAYMENTS__STRIPE__SECRET_KEY`.
    pub secret_key: Secret,
    /// Webhook signing secrets (`whsec_…`): a signature by any of them is accepted, so a
    /// secret can be rotated by listing old and new for a while.
    pub webhook_secrets: Vec<Secret>,
    /// Signed webhooks older (or newer) than this are refused as replays.
    #[serde(with = "units::duration")]
    pub webhook_tolerance: Duration,
    #[serde(with = "units::duration")]
    pub request_timeout: Duration,
}

impl Default for StripeConfig {
    fn default() -> Self {
        StripeConfig {
            api_base: "https://api.stripe.com".into(),
            secret_key: Secret::default(),
            webhook_secrets: Vec::new(),
            webhook_tolerance: Duration::from_secs(300),
            request_timeout: Duration::from_secs(20),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct FeedConfig {
    /// Recent readings kept per dataset, so a reconnecting subscriber gets what it missed
    /// (`Last-Event-ID`)...
    #[serde(with = "units::duration")]
    pub replay_window: Duration,
    /// ...at most this many per dataset.
    pub replay_max: usize,
    /// Batches a session may fall behind before it is closed as a slow consumer.
    pub session_queue: usize,
    /// How often a session checks its key and entitlement again.
    #[serde(with = "units::duration")]
    pub recheck: Duration,
    /// A subscriber's connection is written at most once per this interval: a busy feed
    /// then costs one write per subscriber per interval instead of one per reading (a
    /// reading waits at most this long), a quiet one is written at once. 0: every reading is
    /// written at once.
    #[serde(with = "units::duration")]
    pub coalesce: Duration,
    /// SSE comments that keep idle connections open through proxies.
    #[serde(with = "units::duration")]
    pub heartbeat: Duration,
    /// Readings a delayed (free-tier) session may hold back at once (about 56 bytes each);
    /// a delay that would hold more ends the session (`delay_buffer_full`) rather than grow
    /// without bound. The default holds a 15-minute delay of a dataset taking 500/s.
    pub max_delayed: usize,
    /// Live sessions one account may run at once, whatever keys it uses (each SSE stream,
    /// WebSocket subscription and MQTT filter is one); past it: 429, a WebSocket error,
    /// MQTT 5 SUBACK `0x97`.
    pub max_sessions_per_account: usize,
}

impl Default for FeedConfig {
    fn default() -> Self {
        FeedConfig {
            replay_window: Duration::from_secs(15 * 60),
            replay_max: 100_000,
            session_queue: 1024,
            recheck: Duration::from_millis(250),
            coalesce: Duration::from_millis(1),
            heartbeat: Duration::from_secs(15),
            max_delayed: 500_000,
            max_sessions_per_account: 64,
        }
    }
}
