//! Timestamps: RFC 3339 strings and epoch numbers in a stated precision, to [`Micros`].
//!
//! Our own RFC 3339 parser: devices send the one fixed shape, and a hand-written parser costs
//! a fraction of a general date library on the decode hot path.

use crate::model::Micros;

/// The unit of epoch timestamps in a request (`?precision=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    Nanos,
    Micros,
    Millis,
    Seconds,
}

impl Precision {
    /// Parses InfluxDB v2 (`ns`, `us`, `ms`, `s`) and v1 (`n`, `u`, `ms`, `s`) spellings.
    pub fn parse(text: &str) -> Option<Precision> {
        match text {
            "ns" | "n" => Some(Precision::Nanos),
            "us" | "u" | "µs" => Some(Precision::Micros),
            "ms" => Some(Precision::Millis),
            "s" => Some(Precision::Seconds),
            _ => None,
        }
    }

    /// An integer epoch value in this precision, in µs; `None` on overflow.
    #[inline]
    pub fn int_to_micros(self, value: i64) -> Option<Micros> {
        match self {
            Precision::Nanos => Some(value.div_euclid(1000)),
            Precision::Micros => Some(value),
            Precision::Millis => value.checked_mul(1000),
            Precision::Seconds => value.checked_mul(1_000_000),
        }
    }

    /// A fractional epoch value in this precision, in µs; `None` if not finite or out of range.
    #[inline]
    pub fn float_to_micros(self, value: f64) -> Option<Micros> {
        let factor = match self {
            Precision::Nanos => 1e-3,
            Precision::Micros => 1.0,
            Precision::Millis => 1e3,
            Precision::Seconds => 1e6,
        };
        let micros = (value * factor).floor();
        // i64::MAX as f64 rounds up to 2^63, so compare against the bound exclusively.
        if micros.is_finite() && micros >= -(2f64.powi(63)) && micros < 2f64.powi(63) {
            Some(micros as i64)
        } else {
            None
        }
    }
}

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

const DAY: Micros = 86_400_000_000;

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

/// The calendar month `YYYY-MM` (UTC) of `t`.
pub fn month_of(t: Micros) -> String {
    let (y, m, _) = civil_from_days(t.div_euclid(DAY));
    format!("{y:04}-{m:02}")
}

#[inline]
fn digits(b: &[u8], at: usize, n: usize) -> Option<u32> {
    let mut v = 0u32;
    for &c in b.get(at..at + n)? {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + (c - b'0') as u32;
    }
    Some(v)
}

/// Parses an RFC 3339 date-time (`2026-11-26T10:00:00Z`, `…T10:00:00.123+01:00`) to µs.
/// Fractions beyond microseconds are truncated. `None` if it is not RFC 3339.
pub fn parse_rfc3339(text: &str) -> Option<Micros> {
    let b = text.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    if !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let year = digits(b, 0, 4)? as i64;
    let month = digits(b, 5, 2)?;
    let day = digits(b, 8, 2)?;
    let hour = digits(b, 11, 2)?;
    let minute = digits(b, 14, 2)?;
    let second = digits(b, 17, 2)?;
    if !(1..=12).contains(&month)
        || day == 0
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut i = 19;
    let mut micros_frac = 0i64;
    if b[i] == b'.' {
        i += 1;
        let start = i;
        let mut scale = 100_000i64;
        while i < b.len() && b[i].is_ascii_digit() {
            micros_frac += (b[i] - b'0') as i64 * scale;
            scale /= 10;
            i += 1;
        }
        if i == start {
            return None;
        }
    }
    let offset_secs: i64 = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
            let oh = digits(b, i + 1, 2)? as i64;
            let om = digits(b, i + 4, 2)? as i64;
            if oh > 23 || om > 59 {
                return None;
            }
            let off = oh * 3600 + om * 60;
            if *sign == b'-' { -off } else { off }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs =
        days * 86_400 + hour as i64 * 3600 + minute as i64 * 60 + second as i64 - offset_secs;
    Some(secs * 1_000_000 + micros_frac)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
    use proptest::prelude::*;

    #[test]
    fn parses_common_shapes() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("1970-01-01T00:00:01.5Z"), Some(1_500_000));
        assert_eq!(
            parse_rfc3339("2026-11-26T10:00:00+01:00"),
            Some(
                Utc.with_ymd_and_hms(2026, 11, 26, 9, 0, 0)
                    .unwrap()
                    .timestamp_micros()
            )
        );
        assert_eq!(
            parse_rfc3339("2024-02-29T23:59:59.123456789-00:30"),
            Some(
                Utc.with_ymd_and_hms(2024, 3, 1, 0, 29, 59)
                    .unwrap()
                    .timestamp_micros()
                    + 123_456
            )
        );
        assert_eq!(parse_rfc3339("1969-12-31T23:59:59Z"), Some(-1_000_000));
    }

    #[test]
    fn rejects_what_is_not_rfc3339() {
        for bad in [
            "",
            "2026-11-26",
            "2026-11-26T10:00:00",
            "2026-13-01T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2026-11-26T24:00:00Z",
            "2026-11-26T10:00:00.Z",
            "2026-11-26T10:00:00+0100",
            "2026-11-26T10:00:00Zjunk",
            "2026/11/26T10:00:00Z",
            "２０２６-11-26T10:00:00Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn precisions() {
        assert_eq!(Precision::parse("ns"), Some(Precision::Nanos));
        assert_eq!(Precision::parse("u"), Some(Precision::Micros));
        assert_eq!(Precision::parse("h"), None);
        assert_eq!(Precision::Nanos.int_to_micros(-1), Some(-1));
        assert_eq!(Precision::Seconds.int_to_micros(2), Some(2_000_000));
        assert_eq!(Precision::Seconds.int_to_micros(i64::MAX), None);
        assert_eq!(Precision::Millis.float_to_micros(1.5), Some(1500));
        assert_eq!(Precision::Seconds.float_to_micros(f64::NAN), None);
        assert_eq!(Precision::Seconds.float_to_micros(1e300), None);
    }

    #[test]
    fn civil_dates_round_trip() {
        for days in [-719_468, -1, 0, 1, 59, 60, 10_957, 20_418, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_783), (2026, 11, 26));
    }

    proptest! {
        #[test]
        fn agrees_with_chrono(secs in -62_000_000_000i64..253_000_000_000, micros in 0i64..1_000_000, off_min in -1439i32..1439) {
            let utc = DateTime::from_timestamp(secs, (micros * 1000) as u32).unwrap();
            let offset = chrono::FixedOffset::east_opt(off_min * 60).unwrap();
            let text = utc.with_timezone(&offset).to_rfc3339_opts(SecondsFormat::Micros, true);
            prop_assert_eq!(parse_rfc3339(&text), Some(utc.timestamp_micros()), "{}", text);
        }
    }

    #[test]
    fn formats_and_parses_back() {
        for text in [
            "2026-11-26T08:15:00Z",
            "1970-01-01T00:00:00Z",
            "2028-02-29T23:59:59Z",
        ] {
            assert_eq!(format_rfc3339(parse_rfc3339(text).unwrap()), text);
        }
        // Below a second is cut, as the exports show whole seconds.
        assert_eq!(format_rfc3339(1_500_000), "1970-01-01T00:00:01Z");
        assert_eq!(
            month_of(parse_rfc3339("2026-12-31T23:59:59Z").unwrap()),
            "2026-12"
        );
        let (start, end) = month_bounds("2028-02").unwrap();
        assert_eq!(format_rfc3339(start), "2028-02-01T00:00:00Z");
        assert_eq!(format_rfc3339(end), "2028-03-01T00:00:00Z");
        assert_eq!(month_bounds("2026-13"), None);
        let jan31 = parse_rfc3339("2026-01-31T10:00:00Z").unwrap();
        assert_eq!(format_rfc3339(add_months(jan31, 1)), "2026-02-28T10:00:00Z");
    }
}
