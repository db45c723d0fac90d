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
    /// An answer about the key itself: 401; Gemini's `API_KEY_INVALID` (400 or 403), a key
    /// reported as leaked, `CONSUMER_SUSPENDED`, `API_KEY_SERVICE_BLOCKED`. Bench it for long
    /// and try the next.
    KeyRejected,
    /// OpenAI's 429 `insufficient_quota`, or 402: the key's balance is spent, which no
    /// cooldown clears; bench it for long and try the next.
    QuotaExhausted,
    /// 500 / 502 / 503 / 504: try the next key without benching this one.
    ServerError,
    /// This key's account has no such object (a file, stored response, cached content another
    /// account owns): try the next key, bench nothing.
    NotOwned,
    /// This key's account cannot use the model (`model_not_found`, or a 403 about model
    /// access): try the next key; if another key then serves the model, bench this (key,
    /// model) for long.
    NoAccess,
    /// A 403 keyrelay does not recognise: try the next key; only if another key then serves
    /// the same request is this one benched, and briefly. One such answer never empties a pool.
    Forbidden,
    /// A 403 about where the request comes from (OpenAI's
    /// `unsupported_country_region_territory`): the same for every key, so relay it.
    RegionBlocked,
}

/// Whether [`verdict`] needs the error body of an answer with `status` (these statuses are
/// told apart by it); other statuses are classified by the status alone.
pub fn needs_body(status: u16) -> bool {
    matches!(status, 400 | 403 | 404 | 429)
}

/// Classifies an upstream answer: its status, and for the statuses [`needs_body`] names, its
/// error body (pass an empty one otherwise). `names_ids` says whether the request named an
/// object id (a 404 then means this account does not have it). The proxy and `--probe` both
/// decide here.
pub fn verdict(status: u16, body: &[u8], names_ids: bool) -> Verdict {
    match status {
        429 if is_spent_balance(body) => Verdict::QuotaExhausted,
        429 => Verdict::RateLimited,
        402 => Verdict::QuotaExhausted,
        401 => Verdict::KeyRejected,
        400 | 403 if is_invalid_key(body) => Verdict::KeyRejected,
        403 if message_says(body, "reported as leaked") => Verdict::KeyRejected,
        400 if has_code(body, "previous_response_not_found") => Verdict::NotOwned,
        403 if has_code(body, "unsupported_country_region_territory") => Verdict::RegionBlocked,
        403 | 404 if is_model_access(body) => Verdict::NoAccess,
        403 if is_object_denied(body) => Verdict::NotOwned,
        403 => Verdict::Forbidden,
        404 if names_ids => Verdict::NotOwned,
        500 | 502 | 503 | 504 => Verdict::ServerError,
        _ => Verdict::Relay,
    }
}

/// Google's reasons that are about the key: invalid or revoked, blocked for this API, its
/// project suspended.
const KEY_REASONS: [&str; 3] = [
    "API_KEY_INVALID",
    "API_KEY_SERVICE_BLOCKED",
    "CONSUMER_SUSPENDED",
];

/// An answer about the key itself: one of Google's [`KEY_REASONS`] (an ordinary 400 is the
/// request's fault, not the key's).
fn is_invalid_key(body: &[u8]) -> bool {
    json::string_fields(body, "reason")
        .iter()
        .any(|reason| KEY_REASONS.contains(reason))
}

/// Whether the error's own `message` says `words`. Only the message is read: text elsewhere in
/// an error body can echo what the client sent.
fn message_says(body: &[u8], words: &str) -> bool {
    json::string_fields(body, "message")
        .iter()
        .any(|message| message.contains(words))
}

/// An error `code` (or OpenAI `type`) equal to `code`.
fn has_code(body: &[u8], code: &str) -> bool {
    ["code", "type"]
        .iter()
        .any(|field| json::string_fields(body, field).contains(&code))
}

/// OpenAI's `model_not_found` ("does not exist or you do not have access to it"), or a 403
/// saying the project or key has no access to the model.
fn is_model_access(body: &[u8]) -> bool {
    has_code(body, "model_not_found")
        || message_says(body, "does not have access to model")
        || message_says(body, "do not have access to model")
}

/// Gemini's answer for a file, cached content or tuned model another project owns: "You do not
/// have permission to access the File … or it may not exist", "CachedContent not found (or
/// permission denied)".
fn is_object_denied(body: &[u8]) -> bool {
    message_says(body, "or it may not exist")
        || message_says(body, "not found (or permission denied)")
}

/// OpenAI's answer to a key whose billing quota is used up: a 429 with error `code` or `type`
/// `insufficient_quota` (a rate limit says `rate_limit_exceeded`).
fn is_spent_balance(body: &[u8]) -> bool {
    has_code(body, "insufficient_quota")
}

/// The longest cooldown keyrelay honours from an upstream hint; a larger one is clamped so a
/// garbled header cannot bench a key for years.
pub const MAX_COOLDOWN: Duration = Duration::from_secs(48 * 3600);

/// The shortest cooldown a 429 gives.
pub const MIN_COOLDOWN: Duration = Duration::from_secs(1);

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
        // `Retry-After: 0` (or a date gone by) still benches the key a moment: a key that
        // answered 429 is not asked again at once.
        .max(MIN_COOLDOWN)
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
        let cases: [(u16, &[u8], Verdict); 22] = [
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
            (403, b"", Verdict::Forbidden),
            (500, b"", Verdict::ServerError),
            (503, b"", Verdict::ServerError),
            (501, b"", Verdict::Relay),
            (403, br#"{"error":{"code":403,"message":"You do not have permission to access the File abc or it may not exist.","status":"PERMISSION_DENIED"}}"#, Verdict::NotOwned),
            (403, br#"{"error":{"code":403,"message":"CachedContent not found (or permission denied)","status":"PERMISSION_DENIED"}}"#, Verdict::NotOwned),
            (403, br#"{"error":{"code":403,"message":"Your API key was reported as leaked. Please use another API key.","status":"PERMISSION_DENIED"}}"#, Verdict::KeyRejected),
            (403, br#"{"error":{"code":403,"status":"PERMISSION_DENIED","details":[{"reason":"CONSUMER_SUSPENDED"}]}}"#, Verdict::KeyRejected),
            (403, br#"{"error":{"code":"unsupported_country_region_territory","message":"Country, region, or territory not supported","param":null,"type":"request_forbidden"}}"#, Verdict::RegionBlocked),
            (404, br#"{"error":{"message":"The model `gpt-x` does not exist or you do not have access to it.","type":"invalid_request_error","param":null,"code":"model_not_found"}}"#, Verdict::NoAccess),
            (400, br#"{"error":{"message":"Previous response with id 'resp_1' not found.","type":"invalid_request_error","param":"previous_response_id","code":"previous_response_not_found"}}"#, Verdict::NotOwned),
            (404, br#"{"error":{"message":"No such File object: file-1","type":"invalid_request_error","param":"id","code":null}}"#, Verdict::Relay),
        ];
        for (status, body, expected) in cases {
            assert_eq!(verdict(status, body, false), expected, "{status} {body:?}");
        }
        let no_file = br#"{"error":{"message":"No such File object: file-1","type":"invalid_request_error","param":"id","code":null}}"#;
        assert_eq!(verdict(404, no_file, true), Verdict::NotOwned);
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
