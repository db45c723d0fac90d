//! What an upstream answer means for the key that got it: relay it, or bench the key and try the
//! next one, and for how long. Pure functions of the status, headers, body and `now`.

use std::time::{Duration, SystemTime};

use crate::json;
use crate::utc::{next_pacific_midnight, parse_http_date};

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
/// `RetryInfo.retryDelay` in the error body, else until the next midnight US Pacific time for a
/// Gemini per-day quota, else `default`.
pub fn rate_limit_cooldown(
    retry_after: Option<&str>,
    body: &[u8],
    now: SystemTime,
    default: Duration,
) -> Duration {
    retry_after
        .and_then(|value| parse_retry_after(value, now))
        .or_else(|| gemini_retry_delay(body))
        .or_else(|| {
            is_daily_quota(body).then(|| {
                next_pacific_midnight(now)
                    .duration_since(now)
                    .unwrap_or(Duration::ZERO)
            })
        })
        .unwrap_or(default)
        .min(MAX_COOLDOWN)
}

/// Whether a Gemini 429 is about a per-day quota (a `QuotaFailure` violation whose `quotaId`
/// contains `PerDay`), which only resets at midnight Pacific time.
pub fn is_daily_quota(body: &[u8]) -> bool {
    json::string_fields(body, "quotaId")
        .iter()
        .any(|id| id.contains("PerDay"))
}

/// Parses `Retry-After`: delay seconds (fractions accepted) or an IMF-fixdate.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<f64>() {
        return seconds(secs);
    }
    let at = parse_http_date(value)?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Gemini's `"retryDelay": "37s"` (also `"1.5s"`) from an error body's `details`.
pub fn gemini_retry_delay(body: &[u8]) -> Option<Duration> {
    json::string_fields(body, "retryDelay")
        .into_iter()
        .find_map(|delay| seconds(delay.strip_suffix('s')?.parse().ok()?))
}

/// A delay given in (possibly fractional) seconds; negative or non-finite ones are no delay.
fn seconds(secs: f64) -> Option<Duration> {
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(1e9)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

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
    fn gemini_daily_quota_waits_for_pacific_midnight() {
        let daily = br#"{"error":{"code":429,"details":[{"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaMetric":"generativelanguage.googleapis.com/generate_content_free_tier_requests","quotaId":"GenerateRequestsPerDayPerProjectPerModel-FreeTier"}]}]}}"#;
        let per_minute =
            br#"{"error":{"details":[{"quotaId":"GenerateRequestsPerMinutePerProjectPerModel"}]}}"#;
        // Tue, 24 Nov 2026 22:00:00 GMT = 14:00 PST: ten hours to midnight.
        let now = UNIX_EPOCH + Duration::from_secs(1_795_557_600);
        let default = Duration::from_secs(60);
        assert!(is_daily_quota(daily) && !is_daily_quota(per_minute));
        assert_eq!(
            rate_limit_cooldown(None, daily, now, default),
            Duration::from_secs(10 * 3600)
        );
        assert_eq!(rate_limit_cooldown(None, per_minute, now, default), default);
        let with_retry_info = [&daily[..daily.len() - 3], br#",{"retryDelay":"20s"}]}}"#].concat();
        assert_eq!(
            rate_limit_cooldown(None, &with_retry_info, now, default),
            Duration::from_secs(20)
        );
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
}
