//! UTC calendar arithmetic without a date crate: HTTP dates in (`Retry-After`), RFC 3339
//! timestamps out (/status), and the next midnight in a fixed-offset zone (daily quotas).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Parses an HTTP date in any of the three forms RFC 9110 §5.6.7 requires a recipient to
/// accept: IMF-fixdate `Sun, 06 Nov 1994 08:49:37 GMT`, RFC 850 `Sunday, 06-Nov-94 08:49:37 GMT`
/// (two-digit years 70–99 are 19xx, 00–69 20xx) and asctime `Sun Nov  6 08:49:37 1994`.
pub fn parse_http_date(value: &str) -> Option<SystemTime> {
    let fields: Vec<&str> = value.split_whitespace().collect();
    let (day, month, year, clock) = match fields.as_slice() {
        [weekday, day, month, year, clock, "GMT"] if weekday.ends_with(',') => {
            (*day, *month, year.parse().ok()?, *clock)
        }
        [weekday, date, clock, "GMT"] if weekday.ends_with(',') => {
            let mut parts = date.split('-');
            let (day, month, yy) = (parts.next()?, parts.next()?, parts.next()?);
            if parts.next().is_some() || yy.len() != 2 {
                return None;
            }
            let yy: u64 = yy.parse().ok()?;
            (
                day,
                month,
                if yy >= 70 { 1900 + yy } else { 2000 + yy },
                *clock,
            )
        }
        [_weekday, month, day, clock, year] => (*day, *month, year.parse().ok()?, *clock),
        _ => return None,
    };
    let day: u64 = day.parse().ok()?;
    let month = MONTHS.iter().position(|m| *m == month)? as u64 + 1;
    let mut clock = clock.split(':').map(|p| p.parse::<u64>().ok());
    let (hour, minute, second) = (clock.next()??, clock.next()??, clock.next()??);
    if clock.next().is_some()
        || year > 9999
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let days = days_from_civil(year, month, day)?;
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second;
    UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(year: u64, month: u64, day: u64) -> Option<u64> {
    if year < 1970 {
        return None;
    }
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe).checked_sub(719_468)
}

/// The civil date (year, month, day) of a day count since 1970-01-01 (Hinnant's inverse).
pub fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// `2026-11-24T22:57:19Z` for a time, to the second.
pub fn format_rfc3339(time: SystemTime) -> String {
    let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (year, month, day) = civil_from_days(secs / 86_400);
    let rest = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// `format_rfc3339` with milliseconds: `2024-06-01T12:00:30.125Z`.
pub fn format_rfc3339_millis(time: SystemTime) -> String {
    let millis = time
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_millis());
    let whole = format_rfc3339(time);
    format!("{}.{millis:03}Z", whole.trim_end_matches('Z'))
}

/// Parses an RFC 3339 UTC timestamp such as `2024-06-01T12:00:30Z` or `…30.25Z` (fractions
/// dropped), or with a numeric offset such as `+02:00`.
pub fn parse_rfc3339(value: &str) -> Option<SystemTime> {
    let value = value.trim();
    let (date, time) = value.split_once(['T', 't'])?;
    let mut ymd = date.split('-').map(|p| p.parse::<u64>().ok());
    let (year, month, day) = (ymd.next()??, ymd.next()??, ymd.next()??);
    let (clock, offset_secs): (&str, i64) = if let Some(clock) = time.strip_suffix(['Z', 'z']) {
        (clock, 0)
    } else {
        let at = time.rfind(['+', '-'])?;
        let (clock, zone) = time.split_at(at);
        let sign = if zone.starts_with('-') { -1 } else { 1 };
        let (h, m) = zone[1..].split_once(':')?;
        (
            clock,
            sign * (h.parse::<i64>().ok()? * 3600 + m.parse::<i64>().ok()? * 60),
        )
    };
    let clock = clock.split('.').next()?;
    let mut hms = clock.split(':').map(|p| p.parse::<u64>().ok());
    let (hour, minute, second) = (hms.next()??, hms.next()??, hms.next()??);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let local =
        (days_from_civil(year, month, day)? * 86_400 + hour * 3600 + minute * 60 + second) as i64;
    let secs = u64::try_from(local - offset_secs).ok()?;
    UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

/// US Pacific time's offset from UTC in seconds at `time`: -7 h from the second Sunday of March
/// 02:00 PST to the first Sunday of November 02:00 PDT, -8 h otherwise.
pub fn pacific_offset_secs(time: SystemTime) -> i64 {
    let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (year, _, _) = civil_from_days(secs / 86_400);
    let sunday_on_or_after = |month, day| {
        let days = days_from_civil(year, month, day).unwrap_or(0);
        days + (7 - (days + 4) % 7) % 7
    };
    let dst_start = sunday_on_or_after(3, 8) * 86_400 + 10 * 3600;
    let dst_end = sunday_on_or_after(11, 1) * 86_400 + 9 * 3600;
    if (dst_start..dst_end).contains(&secs) {
        -7 * 3600
    } else {
        -8 * 3600
    }
}

/// The next midnight in US Pacific time after `now` (when Google's per-day quotas reset).
pub fn next_pacific_midnight(now: SystemTime) -> SystemTime {
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let offset = pacific_offset_secs(now);
    let local = secs + offset;
    let next_local_midnight = (local.div_euclid(86_400) + 1) * 86_400;
    // Midnight is never inside a daylight-saving jump (they happen at 02:00), so the offset in
    // force at that midnight is the one just before it.
    let guess = next_local_midnight - offset;
    let at = UNIX_EPOCH + Duration::from_secs((guess - 1).max(0) as u64);
    let exact = next_local_midnight - pacific_offset_secs(at);
    UNIX_EPOCH + Duration::from_secs(exact.max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_days() {
        assert_eq!(days_from_civil(1970, 1, 1), Some(0));
        assert_eq!(days_from_civil(2000, 3, 1), Some(11_017));
        assert_eq!(days_from_civil(2026, 11, 24), Some(20_781));
    }

    #[test]
    fn pacific_midnights() {
        let at = |text: &str| parse_http_date(text).unwrap();
        let cases = [
            // Winter (PST, UTC-8): local midnight is 08:00 UTC.
            ("Tue, 24 Nov 2026 22:57:19 GMT", "2026-11-25T08:00:00Z"),
            ("Tue, 24 Nov 2026 07:59:59 GMT", "2026-11-24T08:00:00Z"),
            ("Tue, 24 Nov 2026 08:00:00 GMT", "2026-11-25T08:00:00Z"),
            // Summer (PDT, UTC-7): 07:00 UTC.
            ("Wed, 15 Jul 2026 12:00:00 GMT", "2026-07-16T07:00:00Z"),
            // The day DST starts (Sun 8 Mar 2026): midnight before the jump is still PST.
            ("Sat, 07 Mar 2026 20:00:00 GMT", "2026-03-08T08:00:00Z"),
            ("Sun, 08 Mar 2026 12:00:00 GMT", "2026-03-09T07:00:00Z"),
            // The day DST ends (Sun 1 Nov 2026): midnight before it is still PDT.
            ("Sat, 31 Oct 2026 20:00:00 GMT", "2026-11-01T07:00:00Z"),
            ("Sun, 01 Nov 2026 12:00:00 GMT", "2026-11-02T08:00:00Z"),
        ];
        for (now, expected) in cases {
            assert_eq!(
                format_rfc3339(next_pacific_midnight(at(now))),
                expected,
                "{now}"
            );
        }
    }

    #[test]
    fn round_trips() {
        for days in [0u64, 59, 60, 365, 11_016, 11_017, 20_781, 40_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), Some(days));
        }
        let t = UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(format_rfc3339(t), "1994-11-06T08:49:37Z");
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"), Some(t));
        assert_eq!(parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT"), Some(t));
        assert_eq!(parse_rfc3339("1994-11-06T08:49:37Z"), Some(t));
        assert_eq!(parse_rfc3339("1994-11-06T08:49:37.5Z"), Some(t));
        assert_eq!(parse_rfc3339("1994-11-06T10:49:37+02:00"), Some(t));
        assert_eq!(parse_rfc3339("1994-11-06 08:49:37Z"), None);
        assert_eq!(parse_http_date("Sun Nov  6 08:49:37 1994"), Some(t));
        assert_eq!(parse_http_date("Sun Nov 6 08:49:37 1994"), Some(t));
        let in_2030 = parse_http_date("Tuesday, 01-Jan-30 00:00:00 GMT").unwrap();
        assert_eq!(
            in_2030,
            parse_http_date("Tue, 01 Jan 2030 00:00:00 GMT").unwrap()
        );
        for bad in [
            "Sunday, 06-Nov-1994 08:49:37 GMT",
            "Sun Nov  6 08:49:37",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 32 Nov 1994 08:49:37 GMT",
            "Sun Nov  6 25:49:37 1994",
            "",
        ] {
            assert_eq!(parse_http_date(bad), None, "{bad}");
        }
    }
}
