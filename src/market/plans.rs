//! Plans: how a dataset is sold. `free` (optionally only `delay` late, or only per-sensor
//! aggregates over an `aggregate` window), `monthly` (a flat price per month, real time), or
//! `metered` (a price per 1000 readings delivered, real time). Prices are in minor units of
//! an ISO 4217 currency (øre for DKK). A provider prices its own datasets; a withdrawn plan
//! takes no new subscribers while existing subscriptions run on.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;

use super::accounts::valid_id;
use super::error::Error;
use super::ids::random_alnum;
use super::store::Store;
use crate::model::{Micros, now_micros};

/// The longest delay or aggregation window a free plan may have.
pub const MAX_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PlanKind {
    Free,
    Monthly,
    Metered,
}

impl PlanKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PlanKind::Free => "free",
            PlanKind::Monthly => "monthly",
            PlanKind::Metered => "metered",
        }
    }

    fn parse(s: &str) -> Option<PlanKind> {
        match s {
            "free" => Some(PlanKind::Free),
            "monthly" => Some(PlanKind::Monthly),
            "metered" => Some(PlanKind::Metered),
            _ => None,
        }
    }

    pub fn is_paid(self) -> bool {
        self != PlanKind::Free
    }
}

mod opt_duration {
    use std::time::Duration;

    use serde::Serializer;

    pub(super) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Plan {
    pub id: String,
    pub dataset: String,
    pub name: String,
    pub kind: PlanKind,
    /// ISO 4217 code; empty for free plans.
    pub currency: String,
    /// Monthly price (monthly plans).
    pub price_minor: i64,
    /// Price per 1000 readings delivered (metered plans).
    pub per_1000_minor: i64,
    /// Free plans: readings are delivered this late.
    #[serde(with = "opt_duration")]
    #[schema(value_type = Option<String>, example = "15m")]
    pub delay: Option<Duration>,
    /// Free plans: only per-sensor aggregates over windows this long.
    #[serde(with = "opt_duration")]
    #[schema(value_type = Option<String>, example = "15m")]
    pub aggregate: Option<Duration>,
    /// How far back history queries reach (none: as far as the lake goes).
    #[serde(with = "opt_duration")]
    #[schema(value_type = Option<String>, example = "90d")]
    pub history: Option<Duration>,
    pub active: bool,
    pub created_at: Micros,
}

/// A plan as a provider asks for it.
#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPlan {
    #[serde(default)]
    pub id: Option<String>,
    pub name: String,
    pub kind: PlanKind,
    #[serde(default)]
    pub currency: Option<String>,
    #[serde(default)]
    pub price_minor: Option<i64>,
    #[serde(default)]
    pub per_1000_minor: Option<i64>,
    /// e.g. `"15m"`.
    #[serde(default)]
    pub delay: Option<String>,
    #[serde(default)]
    pub aggregate: Option<String>,
    /// How far back history queries reach, e.g. `"24h"`, `"90d"` (default: as far as the
    /// lake goes).
    #[serde(default)]
    pub history: Option<String>,
}

/// The longest history term a plan may state (ten years: "as far as the lake goes" is the
/// term left out).
const MAX_HISTORY: Duration = Duration::from_secs(10 * 366 * 24 * 3600);

fn history_term(text: &Option<String>, p: &mut Vec<String>) -> Option<Duration> {
    let text = text.as_ref()?;
    match humantime::parse_duration(text) {
        Ok(d) if d >= Duration::from_secs(1) && d <= MAX_HISTORY => Some(d),
        Ok(_) => {
            p.push(format!(
                "history: `{text}` must be at least 1s and at most 10 years (leave it out for no limit)"
            ));
            None
        }
        Err(e) => {
            p.push(format!("history: `{text}` is not a duration ({e})"));
            None
        }
    }
}

fn window(field: &str, text: &Option<String>, p: &mut Vec<String>) -> Option<Duration> {
    let text = text.as_ref()?;
    match humantime::parse_duration(text) {
        Ok(d) if !d.is_zero() && d <= MAX_WINDOW => Some(d),
        Ok(_) => {
            p.push(format!(
                "{field}: `{text}` must be above 0 and at most 7 days"
            ));
            None
        }
        Err(e) => {
            p.push(format!("{field}: `{text}` is not a duration ({e})"));
            None
        }
    }
}

impl NewPlan {
    /// The plan this asks for, for `dataset`, or every problem with it.
    pub fn build(self, dataset: &str) -> Result<Plan, Vec<String>> {
        let mut p = Vec::new();
        if let Some(id) = &self.id
            && !valid_id(id)
        {
            p.push(format!(
                "id: `{id}` must be 1-64 of a-z, 0-9, - and _, starting with a letter or digit"
            ));
        }
        if self.name.trim().is_empty() || self.name.len() > 100 {
            p.push("name: must be 1-100 characters".into());
        }
        let delay = window("delay", &self.delay, &mut p);
        let aggregate = window("aggregate", &self.aggregate, &mut p);
        let history = history_term(&self.history, &mut p);
        if let (Some(h), Some(d)) = (history, delay)
            && h <= d
        {
            p.push(format!(
                "history: `{}` must reach further back than the delay `{}` (or the plan sees no history)",
                humantime::format_duration(h),
                humantime::format_duration(d)
            ));
        }
        let currency = self.currency.clone().unwrap_or_default();
        let price = self.price_minor.unwrap_or(0);
        let per_1000 = self.per_1000_minor.unwrap_or(0);
        let currency_ok = currency.len() == 3 && currency.bytes().all(|b| b.is_ascii_uppercase());
        match self.kind {
            PlanKind::Free => {
                if price != 0 || per_1000 != 0 {
                    p.push("a free plan has no price".into());
                }
            }
            PlanKind::Monthly | PlanKind::Metered => {
                if !currency_ok {
                    p.push(format!(
                        "currency: `{currency}` must be an ISO 4217 code such as DKK or EUR"
                    ));
                }
                if self.delay.is_some() || self.aggregate.is_some() {
                    p.push("a paid plan is real time: no delay or aggregate".into());
                }
                let (own, own_name, other, other_name) = if self.kind == PlanKind::Monthly {
                    (price, "price_minor", per_1000, "per_1000_minor")
                } else {
                    (per_1000, "per_1000_minor", price, "price_minor")
                };
                if own <= 0 {
                    p.push(format!(
                        "{own_name}: a {} plan needs a price above 0 (in minor units)",
                        self.kind.as_str()
                    ));
                }
                if own > MAX_PRICE_MINOR {
                    p.push(format!(
                        "{own_name}: at most {MAX_PRICE_MINOR} minor units (ten billion in major units)"
                    ));
                }
                if other != 0 {
                    p.push(format!(
                        "{other_name}: not part of a {} plan",
                        self.kind.as_str()
                    ));
                }
            }
        }
        if !p.is_empty() {
            return Err(p);
        }
        Ok(Plan {
            id: self
                .id
                .unwrap_or_else(|| format!("plan_{}", random_alnum(12).to_ascii_lowercase())),
            dataset: dataset.to_string(),
            name: self.name.trim().to_string(),
            kind: self.kind,
            currency: if self.kind == PlanKind::Free {
                String::new()
            } else {
                currency
            },
            price_minor: price,
            per_1000_minor: per_1000,
            delay,
            aggregate,
            history,
            active: true,
            created_at: now_micros(),
        })
    }
}

fn micros_to_window(us: i64) -> Option<Duration> {
    (us > 0).then(|| Duration::from_micros(us as u64))
}

fn window_to_micros(d: Option<Duration>) -> i64 {
    d.map_or(0, |d| d.as_micros() as i64)
}

/// The highest price a plan may ask, in minor units: far above any real price, far below
/// where sums of a month's invoices could overflow.
pub const MAX_PRICE_MINOR: i64 = 1_000_000_000_000;

pub(crate) const PLAN_COLUMNS: &str = "id, dataset, name, kind, currency, price_minor, \
     per_1000_minor, delay_us, aggregate_us, active, created_at, history_us";

pub(crate) fn plan_from_row(row: &AnyRow, at: usize) -> Result<Plan, sqlx::Error> {
    let kind: String = row.try_get(at + 3)?;
    Ok(Plan {
        id: row.try_get(at)?,
        dataset: row.try_get(at + 1)?,
        name: row.try_get(at + 2)?,
        kind: PlanKind::parse(&kind).ok_or_else(|| {
            sqlx::Error::Decode(format!("unknown plan kind `{kind}` in database").into())
        })?,
        currency: row.try_get(at + 4)?,
        price_minor: row.try_get(at + 5)?,
        per_1000_minor: row.try_get(at + 6)?,
        delay: micros_to_window(row.try_get(at + 7)?),
        aggregate: micros_to_window(row.try_get(at + 8)?),
        active: row.try_get::<i64, _>(at + 9)? != 0,
        created_at: row.try_get(at + 10)?,
        history: micros_to_window(row.try_get(at + 11)?),
    })
}

impl Store {
    /// Adds a plan to a dataset on offer.
    pub async fn create_plan(&self, dataset: &str, new: NewPlan) -> Result<Plan, Error> {
        if self.catalog_dataset(dataset).await?.is_none() {
            return Err(Error::NotFound(format!("no dataset `{dataset}`")));
        }
        let plan = new
            .build(dataset)
            .map_err(|p| Error::Invalid(p.join("; ")))?;
        let done = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO plans ({PLAN_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 1, $10, $11)
             ON CONFLICT (id) DO NOTHING"
        )))
        .bind(&plan.id)
        .bind(&plan.dataset)
        .bind(&plan.name)
        .bind(plan.kind.as_str())
        .bind(&plan.currency)
        .bind(plan.price_minor)
        .bind(plan.per_1000_minor)
        .bind(window_to_micros(plan.delay))
        .bind(window_to_micros(plan.aggregate))
        .bind(plan.created_at)
        .bind(window_to_micros(plan.history))
        .execute(self.pool())
        .await?;
        if done.rows_affected() == 0 {
            return Err(Error::Conflict(format!("plan `{}` exists", plan.id)));
        }
        Ok(plan)
    }

    pub async fn plan(&self, id: &str) -> Result<Option<Plan>, Error> {
        Ok(sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {PLAN_COLUMNS} FROM plans WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(self.pool())
        .await?
        .map(|row| plan_from_row(&row, 0))
        .transpose()?)
    }

    /// A dataset's plans, oldest first: those on offer, or all.
    pub async fn plans_of(&self, dataset: &str, all: bool) -> Result<Vec<Plan>, Error> {
        let filter = if all { "" } else { " AND active = 1" };
        Ok(sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {PLAN_COLUMNS} FROM plans WHERE dataset = $1{filter} ORDER BY created_at, id"
        )))
        .bind(dataset)
        .fetch_all(self.pool())
        .await?
        .iter()
        .map(|row| plan_from_row(row, 0))
        .collect::<Result<_, _>>()?)
    }

    /// Every plan on offer, by dataset, oldest first.
    pub async fn offered_plans(&self) -> Result<Vec<Plan>, Error> {
        Ok(sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {PLAN_COLUMNS} FROM plans WHERE active = 1 ORDER BY dataset, created_at, id"
        )))
        .fetch_all(self.pool())
        .await?
        .iter()
        .map(|row| plan_from_row(row, 0))
        .collect::<Result<_, _>>()?)
    }

    /// Takes a plan off offer. `Ok(false)` if it was not on offer.
    pub async fn withdraw_plan(&self, id: &str) -> Result<bool, Error> {
        let done = sqlx::query("UPDATE plans SET active = 0 WHERE id = $1 AND active = 1")
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected() == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(kind: PlanKind) -> NewPlan {
        NewPlan {
            id: None,
            name: "Real time".into(),
            kind,
            currency: None,
            price_minor: None,
            per_1000_minor: None,
            delay: None,
            aggregate: None,
            history: None,
        }
    }

    #[test]
    fn plans_are_checked_by_kind() {
        let free = NewPlan {
            delay: Some("15m".into()),
            ..plan(PlanKind::Free)
        }
        .build("weather")
        .unwrap();
        assert_eq!(free.delay, Some(Duration::from_secs(900)));
        assert_eq!(free.currency, "");
        let monthly = NewPlan {
            currency: Some("DKK".into()),
            price_minor: Some(49_900),
            ..plan(PlanKind::Monthly)
        }
        .build("weather")
        .unwrap();
        assert_eq!(monthly.price_minor, 49_900);

        let problems = NewPlan {
            currency: Some("dkk".into()),
            per_1000_minor: Some(5),
            delay: Some("1h".into()),
            ..plan(PlanKind::Monthly)
        }
        .build("weather")
        .unwrap_err()
        .join("; ");
        for needle in ["currency:", "price_minor:", "per_1000_minor:", "real time"] {
            assert!(problems.contains(needle), "{problems}");
        }
        let problems = NewPlan {
            price_minor: Some(100),
            aggregate: Some("30d".into()),
            history: None,
            delay: Some("soon".into()),
            ..plan(PlanKind::Free)
        }
        .build("weather")
        .unwrap_err()
        .join("; ");
        for needle in ["no price", "aggregate:", "delay:"] {
            assert!(problems.contains(needle), "{problems}");
        }
        let problems = NewPlan {
            currency: Some("DKK".into()),
            price_minor: Some(i64::MAX),
            ..plan(PlanKind::Monthly)
        }
        .build("weather")
        .unwrap_err()
        .join("; ");
        assert!(problems.contains("at most"), "{problems}");
        assert!(
            NewPlan {
                currency: Some("EUR".into()),
                per_1000_minor: Some(0),
                ..plan(PlanKind::Metered)
            }
            .build("weather")
            .is_err()
        );
    }
}
