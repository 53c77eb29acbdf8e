//! Buckets in local time (`aggregate?tz=Europe/Copenhagen`): a day bucket runs from one
//! local midnight to the next (23 or 25 hours across a daylight-saving change), and shorter
//! buckets that divide a day start at local midnight and are cut at the next.

use chrono::{DateTime, Days, LocalResult, NaiveDate, TimeZone};
use chrono_tz::Tz;

use crate::model::Micros;

pub(crate) const DAY: Micros = 86_400_000_000;

/// Whether `every` makes local buckets: whole days, or a length that divides a day.
pub(crate) fn fits(every: Micros) -> bool {
    every > 0
        && if every >= DAY {
            every % DAY == 0
        } else {
            DAY % every == 0
        }
}

/// The bucket of length `every` (see [`fits`]) in `tz` that holds `t`: `[start, end)`.
/// `None`: `t` is past the calendar's reach.
pub(crate) fn bucket(tz: Tz, every: Micros, t: Micros) -> Option<(Micros, Micros)> {
    let day = local_day(tz, t)?;
    if every >= DAY {
        let days = every / DAY;
        let first = day - day.rem_euclid(days);
        Some((midnight(tz, first)?, midnight(tz, first + days)?))
    } else {
        let (start_of_day, end_of_day) = (midnight(tz, day)?, midnight(tz, day + 1)?);
        let start = start_of_day + (t - start_of_day) / every * every;
        Some((start, (start + every).min(end_of_day)))
    }
}

fn epoch() -> NaiveDate {
    NaiveDate::from_ymd_opt(1970, 1, 1).expect("a valid date")
}

/// The local date of `t` in `tz`, as days since 1970-01-01.
fn local_day(tz: Tz, t: Micros) -> Option<i64> {
    let local = DateTime::from_timestamp_micros(t)?.with_timezone(&tz);
    Some((local.date_naive() - epoch()).num_days())
}

/// The first instant of local date `day` (days since 1970-01-01) in `tz`: midnight, or
/// the first whole hour after it where a clock change skips midnight.
fn midnight(tz: Tz, day: i64) -> Option<Micros> {
    let date = if day >= 0 {
        epoch().checked_add_days(Days::new(day as u64))?
    } else {
        epoch().checked_sub_days(Days::new(day.unsigned_abs()))?
    };
    (0..24).find_map(
        |hour| match tz.from_local_datetime(&date.and_hms_opt(hour, 0, 0)?) {
            LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => Some(t.timestamp_micros()),
            LocalResult::None => None,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Micros = 3_600_000_000;

    fn at(text: &str) -> Micros {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .timestamp_micros()
    }

    #[test]
    fn a_copenhagen_day_runs_from_local_midnight_to_local_midnight() {
        let tz: Tz = "Europe/Copenhagen".parse().unwrap();
        // Winter: UTC+1.
        let (s, e) = bucket(tz, DAY, at("2026-11-30T12:00:00Z")).unwrap();
        assert_eq!(
            (s, e),
            (at("2026-11-29T23:00:00Z"), at("2026-11-30T23:00:00Z"))
        );
        // Just after local midnight belongs to the new day.
        let (s, _) = bucket(tz, DAY, at("2026-11-29T23:00:00Z")).unwrap();
        assert_eq!(s, at("2026-11-29T23:00:00Z"));
        // The spring change makes a 23-hour day, the autumn one a 25-hour day.
        let (s, e) = bucket(tz, DAY, at("2026-03-29T10:00:00Z")).unwrap();
        assert_eq!(e - s, 23 * HOUR);
        let (s, e) = bucket(tz, DAY, at("2026-10-25T10:00:00Z")).unwrap();
        assert_eq!(e - s, 25 * HOUR);
    }

    #[test]
    fn shorter_buckets_start_at_local_midnight_and_weeks_count_local_days() {
        let tz: Tz = "Asia/Kolkata".parse().unwrap(); // UTC+5:30
        let (s, e) = bucket(tz, HOUR, at("2026-11-30T10:10:00Z")).unwrap();
        assert_eq!(
            (s, e),
            (at("2026-11-30T09:30:00Z"), at("2026-11-30T10:30:00Z"))
        );
        let tz: Tz = "Europe/Copenhagen".parse().unwrap();
        let (s, e) = bucket(tz, 7 * DAY, at("2026-11-30T12:00:00Z")).unwrap();
        assert_eq!(e - s, 7 * DAY);
        assert!(s <= at("2026-11-30T12:00:00Z") && at("2026-11-30T12:00:00Z") < e);
        assert!(
            fits(15 * 60_000_000) && fits(2 * DAY) && !fits(7 * 60_000_000) && !fits(DAY + HOUR)
        );
    }
}
