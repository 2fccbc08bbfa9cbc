//! UTC calendar time without a date library: what timestamps (RFC 3339) and day-partitioned
//! paths need.

use std::time::{SystemTime, UNIX_EPOCH};

/// A UTC instant split into calendar fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Utc {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    pub millis: u32,
}

impl Utc {
    pub fn of(t: SystemTime) -> Utc {
        let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = since.as_secs();
        let (days, rem) = (secs / 86_400, secs % 86_400);
        let (year, month, day) = civil_from_days(days as i64);
        Utc {
            year,
            month,
            day,
            hour: (rem / 3600) as u32,
            minute: (rem % 3600 / 60) as u32,
            second: (rem % 60) as u32,
            millis: since.subsec_millis(),
        }
    }

    pub fn now() -> Utc {
        Utc::of(SystemTime::now())
    }

    /// `2026-12-03T09:27:25Z`.
    pub fn rfc3339_seconds(&self) -> String {
        let Utc { year, month, day, hour, minute, second, .. } = self;
        format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}Z")
    }

    /// `2026-12-03T09:27:25.883Z`.
    pub fn rfc3339_millis(&self) -> String {
        let Utc { year, month, day, hour, minute, second, millis } = self;
        format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{millis:03}Z")
    }
}

/// Gregorian date of a day count since 1970-01-01 (Howard Hinnant's days-to-civil algorithm).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(20_784), (2026, 11, 27));
    }

    #[test]
    fn rfc3339() {
        let t = UNIX_EPOCH + Duration::from_millis(1_796_290_045_883);
        assert_eq!(Utc::of(t).rfc3339_millis(), "2026-12-03T09:27:25.883Z");
        assert_eq!(Utc::of(t).rfc3339_seconds(), "2026-12-03T09:27:25Z");
    }
}
