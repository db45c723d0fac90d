//! What an upstream answer means for the key that got it: relay it, or bench the key and try the
//! next one, and for how long. Pure functions of the status, headers, body and `now`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::json;

/// What to do with one upstream answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Pass it to the client as it is.
    Relay,
    /// 429: bench the key for a while and try the next.
    RateLimited,
    /// 401 / 403: the key is probably revoked; bench it for long and try the next.
    KeyRejected,
    /// 500 / 502 / 503 / 504: try the next key without benching this one.
    ServerError,
}

/// Classifies an upstream status.
pub fn verdict(status: u16) -> Verdict {
    match status {
        429 => Verdict::RateLimited,
        401 | 403 => Verdict::KeyRejected,
        500 | 502 | 503 | 504 => Verdict::ServerError,
        _ => Verdict::Relay,
    }
}

/// The longest cooldown keyrelay honours from an upstream hint; a larger one is clamped so a
/// garbled header cannot bench a key for years.
pub const MAX_COOLDOWN: Duration = Duration::from_secs(48 * 3600);

/// How long a 429 benches the key: `Retry-After` (seconds or HTTP date), else Gemini's
/// `RetryInfo.retryDelay` in the error body, else `default`.
pub fn rate_limit_cooldown(
    retry_after: Option<&str>,
    body: &[u8],
    now: SystemTime,
    default: Duration,
) -> Duration {
    retry_after
        .and_then(|value| parse_retry_after(value, now))
        .or_else(|| gemini_retry_delay(body))
        .unwrap_or(default)
        .min(MAX_COOLDOWN)
}

/// Parses `Retry-After`: delay seconds (fractions accepted) or an IMF-fixdate.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(1e9)));
    }
    let at = parse_http_date(value)?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Gemini's `"retryDelay": "37s"` (also `"1.5s"`) from an error body's `details`.
pub fn gemini_retry_delay(body: &[u8]) -> Option<Duration> {
    json::string_fields(body, "retryDelay")
        .into_iter()
        .find_map(|delay| {
            let secs: f64 = delay.strip_suffix('s')?.parse().ok()?;
            (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(1e9)))
        })
}

/// Parses an IMF-fixdate such as `Sun, 06 Nov 1994 08:49:37 GMT`.
pub fn parse_http_date(value: &str) -> Option<SystemTime> {
    let (_, rest) = value.split_once(", ")?;
    let mut parts = rest.split(' ');
    let day: u64 = parts.next()?.parse().ok()?;
    let month_name = parts.next()?;
    let month = MONTHS.iter().position(|m| *m == month_name)? as u64 + 1;
    let year: u64 = parts.next()?.parse().ok()?;
    let mut clock = parts.next()?.split(':').map(|p| p.parse::<u64>().ok());
    let (hour, minute, second) = (clock.next()??, clock.next()??, clock.next()??);
    if parts.next()? != "GMT" || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts() {
        let cases = [
            (200, Verdict::Relay),
            (400, Verdict::Relay),
            (404, Verdict::Relay),
            (429, Verdict::RateLimited),
            (401, Verdict::KeyRejected),
            (403, Verdict::KeyRejected),
            (500, Verdict::ServerError),
            (503, Verdict::ServerError),
            (501, Verdict::Relay),
        ];
        for (status, expected) in cases {
            assert_eq!(verdict(status), expected, "{status}");
        }
    }

    #[test]
    fn retry_after_forms() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        let cases = [
            ("30", Some(30.0)),
            (" 1.5 ", Some(1.5)),
            ("Sun, 06 Nov 1994 08:50:17 GMT", Some(40.0)),
            ("Sun, 06 Nov 1994 08:49:00 GMT", Some(0.0)),
            ("soon", None),
            ("-3", None),
        ];
        for (value, expected) in cases {
            let got = parse_retry_after(value, now).map(|d| d.as_secs_f64());
            assert_eq!(got, expected, "{value}");
        }
    }

    #[test]
    fn gemini_body_delay_and_precedence() {
        let body = br#"{"error":{"code":429,"details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"37s"}]}}"#;
        let now = SystemTime::now();
        let default = Duration::from_secs(60);
        assert_eq!(
            rate_limit_cooldown(None, body, now, default),
            Duration::from_secs(37)
        );
        assert_eq!(
            rate_limit_cooldown(Some("5"), body, now, default),
            Duration::from_secs(5)
        );
        assert_eq!(rate_limit_cooldown(None, b"{}", now, default), default);
        assert_eq!(
            rate_limit_cooldown(Some("99999999"), b"", now, default),
            MAX_COOLDOWN
        );
    }

    #[test]
    fn civil_days() {
        assert_eq!(days_from_civil(1970, 1, 1), Some(0));
        assert_eq!(days_from_civil(2000, 3, 1), Some(11_017));
        assert_eq!(days_from_civil(2026, 11, 24), Some(20_781));
    }
}
