//! Day buckets in local time (`aggregate?every=1d&tz=Europe/Copenhagen`): a bucket runs from
//! one local midnight to the next (23 or 25 hours across a daylight-saving change), and
//! `every=7d` counts seven local days from 1970-01-01. Where a clock change skips midnight
//! (or a whole day, as Samoa's in 2011), a day starts at its first instant. Buckets shorter
//! than a day stay aligned to the epoch: `tz` takes whole days only.

use chrono::{DateTime, Days, LocalResult, NaiveDate, TimeZone};
use chrono_tz::Tz;

use crate::model::Micros;

pub(crate) const DAY: Micros = 86_400_000_000;

/// Whether `every` makes local buckets: whole days.
pub(crate) fn fits(every: Micros) -> bool {
    every >= DAY && every % DAY == 0
}

/// The bucket of `every` (whole days) in `tz` that holds `t`: `[start, end)`. `None`: `t`
/// is past the calendar's reach.
pub(crate) fn bucket(tz: Tz, every: Micros, t: Micros) -> Option<(Micros, Micros)> {
    let day = local_day(tz, t)?;
    let days = (every / DAY).max(1);
    let first = day - day.rem_euclid(days);
    Some((first_instant(tz, first)?, first_instant(tz, first + days)?))
}

fn epoch() -> NaiveDate {
    NaiveDate::from_ymd_opt(1970, 1, 1).expect("a valid date")
}

/// The local date of `t` in `tz`, as days since 1970-01-01.
fn local_day(tz: Tz, t: Micros) -> Option<i64> {
    let local = DateTime::from_timestamp_micros(t)?.with_timezone(&tz);
    Some((local.date_naive() - epoch()).num_days())
}

/// The first instant of local date `day` (days since 1970-01-01) in `tz`: its midnight,
/// or, where a clock change skips midnight (or the day), the first instant whose local
/// date is `day` or later.
fn first_instant(tz: Tz, day: i64) -> Option<Micros> {
    let date = if day >= 0 {
        epoch().checked_add_days(Days::new(day as u64))?
    } else {
        epoch().checked_sub_days(Days::new(day.unsigned_abs()))?
    };
    let midnight = date.and_hms_opt(0, 0, 0)?;
    if let LocalResult::Single(t) | LocalResult::Ambiguous(t, _) = tz.from_local_datetime(&midnight)
    {
        return Some(t.timestamp_micros());
    }
    // In a gap. Offsets are within a day of UTC, so the day starts within two days of
    // midnight read as UTC; local dates move forward across a gap.
    let guess = midnight.and_utc().timestamp_micros();
    let (mut before, mut after) = (guess - 2 * DAY, guess + 2 * DAY);
    while after - before > 1 {
        let mid = before + (after - before) / 2;
        if local_day(tz, mid)? >= day {
            after = mid;
        } else {
            before = mid;
        }
    }
    Some(after)
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
        let (s, e) = bucket(tz, 7 * DAY, at("2026-11-30T12:00:00Z")).unwrap();
        assert_eq!(e - s, 7 * DAY);
        assert!(s <= at("2026-11-30T12:00:00Z") && at("2026-11-30T12:00:00Z") < e);
        assert!(fits(DAY) && fits(2 * DAY) && !fits(HOUR) && !fits(DAY + HOUR));
    }

    /// Hour by hour across a change, every instant is in its bucket and buckets follow
    /// each other without overlap or gap.
    fn buckets_tile(zone: &str, from: &str, hours: i64) {
        let tz: Tz = zone.parse().unwrap();
        let mut last: Option<(Micros, Micros)> = None;
        for h in 0..hours {
            let t = at(from) + h * HOUR / 4;
            let b = bucket(tz, DAY, t).unwrap();
            assert!(b.0 <= t && t < b.1, "{zone}: {t} outside {b:?}");
            if let Some(prev) = last
                && prev != b
            {
                assert_eq!(prev.1, b.0, "{zone}: {prev:?} then {b:?}");
            }
            last = Some(b);
        }
    }

    #[test]
    fn a_skipped_midnight_or_a_skipped_day_still_tiles_the_time() {
        // Samoa skipped 30 December 2011; Kathmandu's clocks went from 00:00 to 00:15 on
        // 1 January 1986; Copenhagen's spring and autumn changes.
        buckets_tile("Pacific/Apia", "2011-12-27T00:00:00Z", 4 * 24 * 5);
        buckets_tile("Asia/Kathmandu", "1985-12-30T00:00:00Z", 4 * 24 * 4);
        buckets_tile("Europe/Copenhagen", "2026-03-28T00:00:00Z", 4 * 24 * 3);
        buckets_tile("Europe/Copenhagen", "2026-10-24T00:00:00Z", 4 * 24 * 3);
    }
}
