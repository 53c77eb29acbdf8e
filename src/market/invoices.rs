//! Invoices for subscribers and statements for providers, per calendar month (UTC).
//!
//! Both come from the same lines, so they always agree: for a period `YYYY-MM`,
//! - a **flat** line per payment received in the month (a monthly plan's fee, already
//!   settled through the payment provider; a metered plan's zero-fee periods make none), and
//! - a **metered** line per metered subscription with deliveries in the month: readings ×
//!   the plan's price per 1000, rounded half up to a minor unit, due on the invoice, and
//! - a **queried** line per metered subscription whose history queries returned rows in the
//!   month: rows × the same price, kept apart from the deliveries.
//!
//! An invoice gathers a subscriber's lines of one currency; `total` is everything billed,
//! `due` what is still to pay (the metered part). Generating a period again recomputes its
//! open invoices and leaves paid ones alone. A provider's statement sums the lines of its
//! datasets: revenue per dataset, the platform's fee (`[market] platform_fee_percent`), the
//! payout, and who subscribes, by sector and plan.

use std::collections::BTreeMap;

use serde::Serialize;
use sqlx::Row;

use super::error::Error;
use super::ids::random_alnum;
use super::store::Store;
use crate::calendar::{format_rfc3339, month_bounds};
use crate::model::Micros;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LineKind {
    Flat,
    /// Readings delivered live under a metered plan.
    Metered,
    /// Rows history queries returned under a metered plan, at the same price.
    Queried,
}

impl LineKind {
    fn as_str(self) -> &'static str {
        match self {
            LineKind::Flat => "flat",
            LineKind::Metered => "metered",
            LineKind::Queried => "queried",
        }
    }

    fn parse(text: &str) -> LineKind {
        match text {
            "metered" => LineKind::Metered,
            "queried" => LineKind::Queried,
            _ => LineKind::Flat,
        }
    }
}

/// One billed item of a period.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Line {
    pub subscription: String,
    #[serde(skip)]
    pub account: String,
    pub dataset: String,
    #[serde(skip)]
    pub provider: String,
    pub plan: String,
    pub kind: LineKind,
    pub description: String,
    /// 1 for a flat fee; readings for a metered line.
    pub quantity: i64,
    /// The fee, or the price per 1000 readings.
    pub unit_minor: i64,
    pub amount_minor: i64,
    #[serde(skip)]
    pub currency: String,
    /// Already paid through the payment provider.
    pub settled: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum InvoiceStatus {
    Open,
    Paid,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Invoice {
    pub id: String,
    pub account: String,
    pub period: String,
    pub currency: String,
    pub total_minor: i64,
    pub due_minor: i64,
    pub status: InvoiceStatus,
    pub created_at: Micros,
    pub paid_at: Option<Micros>,
    pub lines: Vec<Line>,
}

/// A provider's revenue from one dataset in one currency.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct DatasetRevenue {
    pub dataset: String,
    pub currency: String,
    pub flat_minor: i64,
    pub metered_minor: i64,
    /// Metered history queries.
    pub queried_minor: i64,
    pub revenue_minor: i64,
    pub readings: i64,
    /// Rows history queries returned under metered plans.
    pub query_rows: i64,
}

/// How many accounts of a sector subscribe under a plan.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct SubscriberCount {
    pub dataset: String,
    pub plan: String,
    pub plan_name: String,
    pub sector: String,
    pub subscribers: i64,
}

/// Totals in one currency.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Payout {
    pub currency: String,
    pub revenue_minor: i64,
    pub platform_fee_minor: i64,
    pub payout_minor: i64,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Statement {
    pub provider: String,
    pub period: String,
    pub platform_fee_percent: f64,
    pub datasets: Vec<DatasetRevenue>,
    pub totals: Vec<Payout>,
    pub subscribers: Vec<SubscriberCount>,
}

/// `readings` at `per_1000` minor units per 1000 readings, rounded half up.
pub(crate) fn metered_amount(readings: i64, per_1000: i64) -> i64 {
    let amount = (readings as i128 * per_1000 as i128 + 500) / 1000;
    amount.clamp(0, i64::MAX as i128) as i64
}

/// `amount × percent / 100`, rounded half up to a minor unit.
pub(crate) fn fee_of(amount: i64, percent: f64) -> i64 {
    (amount as f64 * percent / 100.0).round() as i64
}

/// `YYYY-MM-DD` (UTC) of `t`.
fn date(t: Micros) -> String {
    format_rfc3339(t)[..10].to_string()
}

fn period_of(period: &str) -> Result<(Micros, Micros), Error> {
    month_bounds(period)
        .ok_or_else(|| Error::Invalid(format!("period: `{period}` is not a month like 2026-11")))
}

const INVOICE_COLUMNS: &str =
    "id, account, period, currency, total_minor, due_minor, status, created_at, paid_at";

fn invoice_from_row(row: &sqlx::any::AnyRow) -> Result<Invoice, sqlx::Error> {
    let status: String = row.try_get(6)?;
    Ok(Invoice {
        id: row.try_get(0)?,
        account: row.try_get(1)?,
        period: row.try_get(2)?,
        currency: row.try_get(3)?,
        total_minor: row.try_get(4)?,
        due_minor: row.try_get(5)?,
        status: if status == "paid" {
            InvoiceStatus::Paid
        } else {
            InvoiceStatus::Open
        },
        created_at: row.try_get(7)?,
        paid_at: row.try_get(8)?,
        lines: Vec::new(),
    })
}

/// The PostgreSQL advisory lock invoice generation holds (an arbitrary number of its own).
const INVOICE_LOCK: i64 = 0x6369_7479_696e_7663;

impl Store {
    /// Every billed line of `period` (`YYYY-MM`).
    pub async fn period_lines(&self, period: &str) -> Result<Vec<Line>, Error> {
        let (start, end) = period_of(period)?;
        let mut lines = Vec::new();
        let flat = sqlx::query(
            "SELECT p.subscription, s.account, s.dataset, d.provider, s.plan, pl.name,
                    p.amount_minor, p.currency, p.period_start, p.period_end
             FROM payments p JOIN subscriptions s ON s.id = p.subscription
             JOIN datasets d ON d.id = s.dataset JOIN plans pl ON pl.id = s.plan
             WHERE p.paid_at >= $1 AND p.paid_at < $2 AND p.amount_minor > 0
             ORDER BY p.paid_at, p.reference",
        )
        .bind(start)
        .bind(end)
        .fetch_all(self.pool())
        .await?;
        for row in &flat {
            let name: String = row.try_get(5)?;
            let dataset: String = row.try_get(2)?;
            let amount: i64 = row.try_get(6)?;
            lines.push(Line {
                subscription: row.try_get(0)?,
                account: row.try_get(1)?,
                provider: row.try_get(3)?,
                plan: row.try_get(4)?,
                kind: LineKind::Flat,
                description: format!(
                    "{name} ({dataset}), {} to {}",
                    date(row.try_get(8)?),
                    date(row.try_get(9)?)
                ),
                dataset,
                quantity: 1,
                unit_minor: amount,
                amount_minor: amount,
                currency: row.try_get(7)?,
                settled: true,
            });
        }
        let metered = sqlx::query(
            "SELECT s.id, s.account, s.dataset, d.provider, s.plan, pl.name, pl.currency,
                    pl.per_1000_minor, CAST(SUM(u.readings) AS BIGINT),
                    CAST(SUM(u.query_rows) AS BIGINT)
             FROM usage_hours u JOIN subscriptions s ON s.id = u.subscription
             JOIN plans pl ON pl.id = s.plan JOIN datasets d ON d.id = s.dataset
             WHERE pl.kind = 'metered' AND u.hour >= $1 AND u.hour < $2
             GROUP BY s.id, s.account, s.dataset, d.provider, s.plan, pl.name, pl.currency,
                      pl.per_1000_minor
             ORDER BY s.id",
        )
        .bind(start)
        .bind(end)
        .fetch_all(self.pool())
        .await?;
        for row in &metered {
            let name: String = row.try_get(5)?;
            let dataset: String = row.try_get(2)?;
            let per_1000: i64 = row.try_get(7)?;
            let readings: i64 = row.try_get(8)?;
            let query_rows: i64 = row.try_get(9)?;
            let line = |kind, quantity: i64, what: &str| -> Result<Line, sqlx::Error> {
                Ok(Line {
                    subscription: row.try_get(0)?,
                    account: row.try_get(1)?,
                    provider: row.try_get(3)?,
                    plan: row.try_get(4)?,
                    kind,
                    description: format!("{name} ({dataset}), {quantity} {what}"),
                    dataset: dataset.clone(),
                    quantity,
                    unit_minor: per_1000,
                    amount_minor: metered_amount(quantity, per_1000),
                    currency: row.try_get(6)?,
                    settled: false,
                })
            };
            if readings > 0 || query_rows == 0 {
                lines.push(line(LineKind::Metered, readings, "readings delivered")?);
            }
            if query_rows > 0 {
                lines.push(line(
                    LineKind::Queried,
                    query_rows,
                    "rows returned by history queries",
                )?);
            }
        }
        Ok(lines)
    }

    /// Writes the invoices of `period`: one per subscriber and currency with lines. Paid
    /// invoices stay as they are; open ones are recomputed. Returns the period's invoices.
    pub async fn generate_invoices(
        &self,
        period: &str,
        now: Micros,
    ) -> Result<Vec<Invoice>, Error> {
        let mut tx = self.pool().begin().await?;
        // Nodes sharing a PostgreSQL database generate one after the other: the second
        // finds the first one's invoices and recomputes them under the same ids, so a run on
        // two nodes at once leaves one set. (SQLite has one node.)
        if self.backend() == super::store::Backend::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(INVOICE_LOCK)
                .execute(&mut *tx)
                .await?;
        }
        let mut groups: BTreeMap<(String, String), Vec<Line>> = BTreeMap::new();
        for line in self.period_lines(period).await? {
            groups
                .entry((line.account.clone(), line.currency.clone()))
                .or_default()
                .push(line);
        }
        for ((account, currency), lines) in groups {
            let existing = sqlx::query(
                "SELECT id, status FROM invoices WHERE account = $1 AND period = $2 AND currency = $3",
            )
            .bind(&account)
            .bind(period)
            .bind(&currency)
            .fetch_optional(&mut *tx)
            .await?;
            let id = match existing {
                Some(row) if row.try_get::<String, _>(1)? == "paid" => continue,
                Some(row) => {
                    let id: String = row.try_get(0)?;
                    sqlx::query("DELETE FROM invoice_lines WHERE invoice = $1")
                        .bind(&id)
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query("DELETE FROM invoices WHERE id = $1")
                        .bind(&id)
                        .execute(&mut *tx)
                        .await?;
                    id
                }
                None => format!("inv_{}", random_alnum(14).to_ascii_lowercase()),
            };
            // Sums saturate: prices are capped far below where they could meet, but money
            // must never wrap round.
            let total: i64 = lines
                .iter()
                .fold(0i64, |t, l| t.saturating_add(l.amount_minor));
            let due: i64 = lines
                .iter()
                .filter(|l| !l.settled)
                .fold(0i64, |t, l| t.saturating_add(l.amount_minor));
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO invoices ({INVOICE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
            )))
            .bind(&id)
            .bind(&account)
            .bind(period)
            .bind(&currency)
            .bind(total)
            .bind(due)
            .bind(if due == 0 { "paid" } else { "open" })
            .bind(now)
            .bind((due == 0).then_some(now))
            .execute(&mut *tx)
            .await?;
            for (n, l) in lines.iter().enumerate() {
                sqlx::query(
                    "INSERT INTO invoice_lines (invoice, line, subscription, dataset, plan, kind,
                         description, quantity, unit_minor, amount_minor, settled)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                )
                .bind(&id)
                .bind(n as i64 + 1)
                .bind(&l.subscription)
                .bind(&l.dataset)
                .bind(&l.plan)
                .bind(l.kind.as_str())
                .bind(&l.description)
                .bind(l.quantity)
                .bind(l.unit_minor)
                .bind(l.amount_minor)
                .bind(i64::from(l.settled))
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        self.invoices_where("period = $1", period).await
    }

    /// An account's invoices, newest period first.
    pub async fn invoices_of(&self, account: &str) -> Result<Vec<Invoice>, Error> {
        self.invoices_where("account = $1", account).await
    }

    pub async fn invoices_in(&self, period: &str) -> Result<Vec<Invoice>, Error> {
        self.invoices_where("period = $1", period).await
    }

    pub async fn invoice(&self, id: &str) -> Result<Option<Invoice>, Error> {
        Ok(self.invoices_where("id = $1", id).await?.into_iter().next())
    }

    async fn invoices_where(&self, filter: &str, arg: &str) -> Result<Vec<Invoice>, Error> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {INVOICE_COLUMNS} FROM invoices WHERE {filter}
             ORDER BY period DESC, account, currency"
        )))
        .bind(arg)
        .fetch_all(self.pool())
        .await?;
        let mut invoices = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut invoice = invoice_from_row(row)?;
            let lines = sqlx::query(
                "SELECT subscription, dataset, plan, kind, description, quantity, unit_minor,
                        amount_minor, settled
                 FROM invoice_lines WHERE invoice = $1 ORDER BY line",
            )
            .bind(&invoice.id)
            .fetch_all(self.pool())
            .await?;
            for l in &lines {
                let kind: String = l.try_get(3)?;
                invoice.lines.push(Line {
                    subscription: l.try_get(0)?,
                    account: invoice.account.clone(),
                    dataset: l.try_get(1)?,
                    provider: String::new(),
                    plan: l.try_get(2)?,
                    kind: LineKind::parse(&kind),
                    description: l.try_get(4)?,
                    quantity: l.try_get(5)?,
                    unit_minor: l.try_get(6)?,
                    amount_minor: l.try_get(7)?,
                    currency: invoice.currency.clone(),
                    settled: l.try_get::<i64, _>(8)? != 0,
                });
            }
            invoices.push(invoice);
        }
        Ok(invoices)
    }

    /// Marks an open invoice paid (the manual provider's record of money received).
    /// `Ok(false)`: it was already paid.
    pub async fn pay_invoice(&self, id: &str, now: Micros) -> Result<bool, Error> {
        let done = sqlx::query(
            "UPDATE invoices SET status = 'paid', paid_at = $1 WHERE id = $2 AND status = 'open'",
        )
        .bind(now)
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Provider `provider`'s statement for `period`.
    pub async fn statement(
        &self,
        provider: &str,
        period: &str,
        fee_percent: f64,
    ) -> Result<Statement, Error> {
        let (start, end) = period_of(period)?;
        let mut per_dataset: BTreeMap<(String, String), DatasetRevenue> = BTreeMap::new();
        for l in self.period_lines(period).await? {
            if l.provider != provider {
                continue;
            }
            let r = per_dataset
                .entry((l.dataset.clone(), l.currency.clone()))
                .or_insert_with(|| DatasetRevenue {
                    dataset: l.dataset.clone(),
                    currency: l.currency.clone(),
                    flat_minor: 0,
                    metered_minor: 0,
                    queried_minor: 0,
                    revenue_minor: 0,
                    readings: 0,
                    query_rows: 0,
                });
            match l.kind {
                LineKind::Flat => r.flat_minor = r.flat_minor.saturating_add(l.amount_minor),
                LineKind::Metered => {
                    r.metered_minor = r.metered_minor.saturating_add(l.amount_minor);
                    r.readings = r.readings.saturating_add(l.quantity);
                }
                LineKind::Queried => {
                    r.queried_minor = r.queried_minor.saturating_add(l.amount_minor);
                    r.query_rows = r.query_rows.saturating_add(l.quantity);
                }
            }
            r.revenue_minor = r.revenue_minor.saturating_add(l.amount_minor);
        }
        let mut totals: BTreeMap<String, i64> = BTreeMap::new();
        for r in per_dataset.values() {
            let total = totals.entry(r.currency.clone()).or_default();
            *total = total.saturating_add(r.revenue_minor);
        }
        let totals = totals
            .into_iter()
            .map(|(currency, revenue)| {
                let fee = fee_of(revenue, fee_percent);
                Payout {
                    currency,
                    revenue_minor: revenue,
                    platform_fee_minor: fee,
                    payout_minor: revenue - fee,
                }
            })
            .collect();
        // Who subscribed during the period: subscriptions begun before its end that were
        // still live, or changed, after its start.
        let subscribers = sqlx::query(
            "SELECT s.dataset, s.plan, pl.name, a.sector, COUNT(DISTINCT s.account)
             FROM subscriptions s JOIN plans pl ON pl.id = s.plan
             JOIN datasets d ON d.id = s.dataset JOIN accounts a ON a.id = s.account
             WHERE d.provider = $1 AND s.created_at < $2
               AND (s.status IN ('active', 'past_due') OR s.updated_at >= $3)
               AND s.status <> 'pending_payment'
             GROUP BY s.dataset, s.plan, pl.name, a.sector
             ORDER BY s.dataset, s.plan, a.sector",
        )
        .bind(provider)
        .bind(end)
        .bind(start)
        .fetch_all(self.pool())
        .await?
        .iter()
        .map(|row| {
            Ok(SubscriberCount {
                dataset: row.try_get(0)?,
                plan: row.try_get(1)?,
                plan_name: row.try_get(2)?,
                sector: row.try_get(3)?,
                subscribers: row.try_get(4)?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()?;
        Ok(Statement {
            provider: provider.to_string(),
            period: period.to_string(),
            platform_fee_percent: fee_percent,
            datasets: per_dataset.into_values().collect(),
            totals,
            subscribers,
        })
    }
}

/// A CSV field: quoted when it holds a comma, quote or line break.
/// One CSV cell (RFC 4180). A text cell that a spreadsheet would read as a formula (it
/// begins with `=`, `+`, `-`, `@`, a tab or a carriage return) is prefixed with `'`, as
/// OWASP advises: descriptions and names come from providers and subscribers. Numbers are
/// written as they are.
fn csv_field(s: &str) -> String {
    let formula = s.starts_with(['=', '+', '-', '@', '\t', '\r']) && s.parse::<f64>().is_err();
    let s = if formula {
        format!("'{s}")
    } else {
        s.to_string()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

/// Invoices as CSV, one row per line (RFC 4180).
pub(crate) fn invoices_csv(invoices: &[Invoice]) -> String {
    let mut out = String::from(
        "invoice,period,account,currency,status,line,subscription,dataset,plan,kind,description,quantity,unit_minor,amount_minor,settled\r\n",
    );
    for inv in invoices {
        for (n, l) in inv.lines.iter().enumerate() {
            let fields = [
                inv.id.clone(),
                inv.period.clone(),
                inv.account.clone(),
                inv.currency.clone(),
                format!("{:?}", inv.status).to_lowercase(),
                (n + 1).to_string(),
                l.subscription.clone(),
                l.dataset.clone(),
                l.plan.clone(),
                l.kind.as_str().to_string(),
                l.description.clone(),
                l.quantity.to_string(),
                l.unit_minor.to_string(),
                l.amount_minor.to_string(),
                l.settled.to_string(),
            ];
            let row: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
            out.push_str(&row.join(","));
            out.push_str("\r\n");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_round_half_up() {
        assert_eq!(metered_amount(12_345, 40), 494); // 493.8
        assert_eq!(metered_amount(1_500, 1), 2); // 1.5
        assert_eq!(metered_amount(1_499, 1), 1);
        assert_eq!(metered_amount(0, 40), 0);
        assert_eq!(fee_of(49_900, 10.0), 4_990);
        assert_eq!(fee_of(995, 12.5), 124); // 124.375
    }

    #[test]
    fn csv_quotes_what_needs_it() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a, b"), "\"a, b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        // Formulas are defused; negative numbers stay numbers.
        assert_eq!(csv_field("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(csv_field("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(csv_field("+1 555"), "'+1 555");
        assert_eq!(csv_field("-120"), "-120");
        assert_eq!(metered_amount(i64::MAX, i64::MAX), i64::MAX);
    }
}
