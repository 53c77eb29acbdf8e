//! The calendar in UTC: civil dates and day counts, months (subscription periods, invoice
//! months), RFC 3339 formatting. Pure functions, shared by the decoders, the Parquet
//! partitions and the marketplace.

use crate::model::Micros;

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = month as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The proleptic Gregorian date `(year, month, day)` of a day count since 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

pub fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        _ => 28,
    }
}

/// One day in µs.
pub const DAY: Micros = 86_400_000_000;

/// `t` moved by `n` calendar months, the day clamped to the month's length (Jan 31 + 1 month
/// is Feb 28 or 29), the time of day kept: how subscription periods run.
pub fn add_months(t: Micros, n: i64) -> Micros {
    let days = t.div_euclid(DAY);
    let time_of_day = t.rem_euclid(DAY);
    let (y, m, d) = civil_from_days(days);
    let months = y * 12 + (m as i64 - 1) + n;
    let (y, m) = (months.div_euclid(12), months.rem_euclid(12) as u32 + 1);
    let d = d.min(days_in_month(y, m));
    days_from_civil(y, m, d) * DAY + time_of_day
}

/// The first and the end (exclusive) of calendar month `YYYY-MM` (UTC), in µs.
pub fn month_bounds(period: &str) -> Option<(Micros, Micros)> {
    let b = period.as_bytes();
    if b.len() != 7 || b[4] != b'-' {
        return None;
    }
    let year = digits(b, 0, 4)? as i64;
    let month = digits(b, 5, 2)?;
    if !(1..=12).contains(&month) {
        return None;
    }
    let start = days_from_civil(year, month, 1) * DAY;
    Some((start, add_months(start, 1)))
}

/// `t` as RFC 3339 in UTC to the second: `2026-11-26T08:15:00Z`.
pub fn format_rfc3339(t: Micros) -> String {
    let (y, m, d) = civil_from_days(t.div_euclid(DAY));
    let secs = t.rem_euclid(DAY) / 1_000_000;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// `t` as RFC 3339 in UTC to the microsecond, the fraction only when there is one:
/// `2026-11-26T08:15:00Z`, `2026-11-26T08:15:00.250000Z`.
pub fn format_rfc3339_micros(t: Micros) -> String {
    let mut text = format_rfc3339(t);
    let fraction = t.rem_euclid(1_000_000);
    if fraction != 0 {
        text.pop();
        text.push_str(&format!(".{fraction:06}Z"));
    }
    text
}

/// The calendar month `YYYY-MM` (UTC) of `t`.
pub fn month_of(t: Micros) -> String {
    let (y, m, _) = civil_from_days(t.div_euclid(DAY));
    format!("{y:04}-{m:02}")
}

/// `n` ASCII digits of `b` from `at` as a number; `None` if any is not a digit.
#[inline]
pub(crate) fn digits(b: &[u8], at: usize, n: usize) -> Option<u32> {
    let mut v = 0u32;
    for &c in b.get(at..at + n)? {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + (c - b'0') as u32;
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_round_trip() {
        for days in [-719_468, -1, 0, 1, 59, 60, 10_957, 20_418, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_783), (2026, 11, 26));
    }
}
