//! What an upstream answer means for the key that got it: relay it, or bench the key and try the
//! next one, and for how long. Pure functions of the status, headers, body and `now`.

use std::time::{Duration, SystemTime};

use ureq::http::HeaderMap;

use crate::json;
use crate::utc::{next_pacific_midnight, parse_http_date};

/// What to do with one upstream answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Pass it to the client as it is.
    Relay,
    /// 429: bench the key for a while and try the next.
    RateLimited,
    /// 401 / 403, or Gemini's 400 with `API_KEY_INVALID`: the key is probably revoked; bench
    /// it for long and try the next.
    KeyRejected,
    /// OpenAI's 429 `insufficient_quota`, or 402: the key's balance is spent, which no
    /// cooldown clears; bench it for long and try the next.
    QuotaExhausted,
    /// 500 / 502 / 503 / 504: try the next key without benching this one.
    ServerError,
}

/// Whether [`verdict`] needs the error body of an answer with `status` (400 and 429 answers are
/// told apart by it); other statuses are classified by the status alone.
pub fn needs_body(status: u16) -> bool {
    matches!(status, 400 | 429)
}

/// Classifies an upstream answer: its status, and for the statuses [`needs_body`] names, its
/// error body (pass an empty one otherwise). The proxy and `--probe` both decide here.
pub fn verdict(status: u16, body: &[u8]) -> Verdict {
    match status {
        429 if is_spent_balance(body) => Verdict::QuotaExhausted,
        429 => Verdict::RateLimited,
        402 => Verdict::QuotaExhausted,
        400 if is_invalid_key(body) => Verdict::KeyRejected,
        401 | 403 => Verdict::KeyRejected,
        500 | 502 | 503 | 504 => Verdict::ServerError,
        _ => Verdict::Relay,
    }
}

/// Google's answer to an invalid or revoked key: a 400 whose `ErrorInfo` detail has
/// `"reason": "API_KEY_INVALID"` (an ordinary 400 is the request's fault, not the key's).
fn is_invalid_key(body: &[u8]) -> bool {
    json::string_fields(body, "reason").contains(&"API_KEY_INVALID")
}

/// OpenAI's answer to a key whose billing quota is used up: a 429 with error `code` or `type`
/// `insufficient_quota` (a rate limit says `rate_limit_exceeded`).
fn is_spent_balance(body: &[u8]) -> bool {
    ["code", "type"]
        .iter()
        .any(|field| json::string_fields(body, field).contains(&"insufficient_quota"))
}

/// The longest cooldown keyrelay honours from an upstream hint; a larger one is clamped so a
/// garbled header cannot bench a key for years.
pub const MAX_COOLDOWN: Duration = Duration::from_secs(48 * 3600);

/// How long a 429 answer with `headers` and `body` benches its key, as of now (see
/// [`rate_limit_cooldown`]).
pub(crate) fn cooldown_of(headers: &HeaderMap, body: &[u8], default: Duration) -> Duration {
    let retry_after = headers.get("retry-after").and_then(|v| v.to_str().ok());
    rate_limit_cooldown(retry_after, body, SystemTime::now(), default)
}

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
pub(crate) fn seconds(secs: f64) -> Option<Duration> {
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(1e9)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn verdicts() {
        let invalid_key = br#"{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID","domain":"googleapis.com"}]}}"#;
        let bad_request = br#"{"error":{"code":400,"message":"Invalid JSON payload","status":"INVALID_ARGUMENT"}}"#;
        let spent = br#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#;
        let limited = br#"{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}"#;
        let cases: [(u16, &[u8], Verdict); 14] = [
            (200, b"", Verdict::Relay),
            (400, b"", Verdict::Relay),
            (400, bad_request, Verdict::Relay),
            (400, invalid_key, Verdict::KeyRejected),
            (404, b"", Verdict::Relay),
            (429, b"", Verdict::RateLimited),
            (429, limited, Verdict::RateLimited),
            (429, spent, Verdict::QuotaExhausted),
            (402, b"", Verdict::QuotaExhausted),
            (401, b"", Verdict::KeyRejected),
            (403, b"", Verdict::KeyRejected),
            (500, b"", Verdict::ServerError),
            (503, b"", Verdict::ServerError),
            (501, b"", Verdict::Relay),
        ];
        for (status, body, expected) in cases {
            assert_eq!(verdict(status, body), expected, "{status} {body:?}");
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
