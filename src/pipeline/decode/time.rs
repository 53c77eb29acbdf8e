//! Timestamps: RFC 3339 strings and epoch numbers in a stated precision, to [`Micros`].
//!
//! Our own RFC 3339 parser: devices send the one fixed shape, and a hand-written parser costs
//! a fraction of a general date library on the decode hot path.

use crate::calendar::{days_from_civil, days_in_month, digits};
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
    use crate::calendar::{add_months, format_rfc3339, month_bounds, month_of};
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
