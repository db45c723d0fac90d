//! Headroom-aware rotation: what a successful answer's rate-limit headers say a key has left,
//! so a key with nothing left is skipped until its window resets instead of waiting for its
//! 429. Three dialects: OpenAI's (`x-ratelimit-remaining-requests` / `-reset-requests` with
//! durations such as `6m0s`, and the `-tokens` pair; Groq and others copy it), Anthropic's
//! (`anthropic-ratelimit-requests-remaining` / `-reset` as RFC 3339 times, and the `tokens`,
//! `input-tokens`, `output-tokens` variants) and OpenRouter's (`x-ratelimit-remaining` /
//! `x-ratelimit-reset` in Unix milliseconds). Pure: headers and `now` in. A malformed value is
//! ignored.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::outcome::seconds;
use crate::utc::parse_rfc3339;

/// One limit a key reported: how much is left and when the window resets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// Requests (or tokens) left in the window.
    pub remaining: u64,
    /// Time until the window resets, when given.
    pub reset: Option<Duration>,
}

/// What one answer's headers said about the key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Headroom {
    /// The request limit.
    pub requests: Option<Limit>,
    /// The tightest token limit.
    pub tokens: Option<Limit>,
}

impl Headroom {
    /// Reads the rate-limit headers through `header` (a case-insensitive lookup).
    pub fn from_headers<'a>(header: impl Fn(&str) -> Option<&'a str>, now: SystemTime) -> Headroom {
        let number = |name: &str| header(name).and_then(|v| v.trim().parse::<u64>().ok());
        // Static names: this runs on every successful answer.
        let openai = |remaining: &str, reset: &str| {
            Some(Limit {
                remaining: number(remaining)?,
                reset: header(reset).and_then(parse_go_duration),
            })
        };
        let anthropic = |remaining: &str, reset: &str| {
            Some(Limit {
                remaining: number(remaining)?,
                reset: header(reset)
                    .and_then(parse_rfc3339)
                    .map(|at| at.duration_since(now).unwrap_or(Duration::ZERO)),
            })
        };
        let openrouter = || {
            let remaining = number("x-ratelimit-remaining")?;
            let reset = number("x-ratelimit-reset").map(|ms| {
                (UNIX_EPOCH + Duration::from_millis(ms))
                    .duration_since(now)
                    .unwrap_or(Duration::ZERO)
            });
            Some(Limit { remaining, reset })
        };
        let tightest = |limits: [Option<Limit>; 2]| {
            limits
                .into_iter()
                .flatten()
                .min_by_key(|l| (l.remaining, l.reset))
        };
        let requests = openai(
            "x-ratelimit-remaining-requests",
            "x-ratelimit-reset-requests",
        )
        .or_else(|| {
            anthropic(
                "anthropic-ratelimit-requests-remaining",
                "anthropic-ratelimit-requests-reset",
            )
        })
        .or_else(openrouter);
        let tokens = tightest([
            openai("x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"),
            anthropic(
                "anthropic-ratelimit-tokens-remaining",
                "anthropic-ratelimit-tokens-reset",
            ),
        ])
        .or_else(|| {
            tightest([
                anthropic(
                    "anthropic-ratelimit-input-tokens-remaining",
                    "anthropic-ratelimit-input-tokens-reset",
                ),
                anthropic(
                    "anthropic-ratelimit-output-tokens-remaining",
                    "anthropic-ratelimit-output-tokens-reset",
                ),
            ])
        });
        Headroom { requests, tokens }
    }
    /// Whether the key reported anything at all.
    pub fn reported(&self) -> bool {
        self.requests.is_some() || self.tokens.is_some()
    }

    /// When a limit is used up: how long until its window resets (the longer of the two when
    /// both are). `None` while there is headroom, or when no reset time was given.
    pub fn exhausted_for(&self) -> Option<Duration> {
        [self.requests, self.tokens]
            .into_iter()
            .flatten()
            .filter(|l| l.remaining == 0)
            .filter_map(|l| l.reset)
            .max()
    }
}

/// A Go-style duration as OpenAI sends it: `1s`, `6m0s`, `20ms`, `1h2m3.5s`.
pub fn parse_go_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    let mut total = 0f64;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter(|&at| at > 0)?;
        let value: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            "us" | "µs" => 0.000_001,
            "ns" => 0.000_000_001,
            _ => return None,
        };
        total += value * scale;
        rest = &rest[unit_len..];
    }
    seconds(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headroom(pairs: &[(&str, &str)], now: SystemTime) -> Headroom {
        Headroom::from_headers(
            |name| {
                pairs
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case(name))
                    .map(|(_, v)| *v)
            },
            now,
        )
    }

    #[test]
    fn durations() {
        let cases = [
            ("1s", Some(1.0)),
            ("6m0s", Some(360.0)),
            ("20ms", Some(0.02)),
            ("1h2m3.5s", Some(3723.5)),
            ("0s", Some(0.0)),
            ("", None),
            ("5", None),
            ("5x", None),
            ("s", None),
        ];
        for (text, expected) in cases {
            assert_eq!(
                parse_go_duration(text).map(|d| d.as_secs_f64()),
                expected,
                "{text}"
            );
        }
    }

    #[test]
    fn dialects() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let openai = headroom(
            &[
                ("x-ratelimit-remaining-requests", "0"),
                ("x-ratelimit-reset-requests", "6m0s"),
                ("x-ratelimit-remaining-tokens", "1500"),
                ("x-ratelimit-reset-tokens", "20ms"),
            ],
            now,
        );
        assert_eq!(openai.exhausted_for(), Some(Duration::from_secs(360)));
        let anthropic = headroom(
            &[
                ("anthropic-ratelimit-requests-remaining", "7"),
                ("anthropic-ratelimit-input-tokens-remaining", "0"),
                (
                    "anthropic-ratelimit-input-tokens-reset",
                    "2023-11-14T22:13:50Z",
                ),
                ("anthropic-ratelimit-output-tokens-remaining", "90"),
            ],
            now,
        );
        assert_eq!(anthropic.requests.unwrap().remaining, 7);
        assert_eq!(anthropic.exhausted_for(), Some(Duration::from_secs(30)));
        let openrouter = headroom(
            &[
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset", "1700000012000"),
            ],
            now,
        );
        assert_eq!(openrouter.exhausted_for(), Some(Duration::from_secs(12)));
        let plenty = headroom(&[("x-ratelimit-remaining-requests", "99")], now);
        assert!(plenty.reported() && plenty.exhausted_for().is_none());
        let malformed = headroom(
            &[
                ("x-ratelimit-remaining-requests", "none"),
                ("x-ratelimit-reset-requests", "soon"),
            ],
            now,
        );
        assert!(!malformed.reported());
        assert!(!headroom(&[], now).reported());
    }
}
