//! Rotation: 429 cooldowns (Retry-After seconds and HTTP date, Gemini retryDelay, default), the
//! exhaustion answer, 401/403 benching, 5xx retry without benching, other statuses relayed as is.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use crate::support::http::get;
use crate::support::mock::{Mock, Reply};
use crate::support::proxy::proxy_to;
use crate::support::{http_date, mask, squash, wait_until};

const A: &str = "sk-rotate-key-aaaa-0001";
const B: &str = "sk-rotate-key-bbbb-0002";
const C: &str = "sk-rotate-key-cccc-0003";
const OPENAI: &str = "/openai/v1/chat/completions";
const GEMINI: &str = "/gemini/v1beta/models/gemini-pro:generateContent";

fn gemini_429(delay: &str) -> Reply {
    let body = format!(
        r#"{{"error":{{"code":429,"message":"Resource has been exhausted","status":"RESOURCE_EXHAUSTED","details":[{{"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[]}},{{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"{delay}"}}]}}}}"#
    );
    Reply::json(429, &body)
}

/// A mock where key `bad` answers with `bad_reply` and every other key with 200.
fn mock_with_bad(bad: &'static str, bad_reply: Reply) -> Mock {
    Mock::start(move |r| {
        if r.key() == bad {
            bad_reply.clone()
        } else {
            Reply::json(200, &format!(r#"{{"served_by":"{}"}}"#, r.key()))
        }
    })
}

/// After one request that hit `bad` first, later requests must skip it.
fn assert_benched_then_skipped(mock: &Mock, port: u16, path: &str, bad: &str, good: &str) {
    // Whichever key the first ticket picks, two requests certainly reach `bad` once.
    for _ in 0..2 {
        let reply = get(port, path);
        assert_eq!(reply.status, 200, "{reply:?}");
        assert!(reply.text().contains(good), "{}", reply.text());
    }
    let keys = mock.keys();
    let bad_uses = keys.iter().filter(|k| *k == bad).count();
    assert_eq!(bad_uses, 1, "bad key tried exactly once so far: {keys:?}");
    let pos = keys.iter().position(|k| k == bad).expect("bad key tried");
    assert_eq!(
        keys.get(pos + 1).map(String::as_str),
        Some(good),
        "retried with the next key: {keys:?}"
    );
    let before = mock.count();
    for _ in 0..5 {
        assert_eq!(get(port, path).status, 200);
    }
    let later = &mock.keys()[before..];
    assert_eq!(
        later,
        vec![good.to_string(); 5],
        "benched key must be skipped"
    );
}

#[test]
fn retry_after_seconds_benches_the_key() {
    let mock = mock_with_bad(
        A,
        Reply::json(429, r#"{"error":{"message":"slow down"}}"#).header("Retry-After", "30"),
    );
    let proxy = proxy_to(&mock.url(), &[A, B], &[])
        .env("COOLDOWN_SECS", "1")
        .start();
    assert_benched_then_skipped(&mock, proxy.port, OPENAI, A, B);
}

#[test]
fn retry_after_http_date_benches_the_key() {
    let date = http_date(SystemTime::now() + Duration::from_secs(120));
    let mock = mock_with_bad(A, Reply::json(429, "{}").header("Retry-After", &date));
    let proxy = proxy_to(&mock.url(), &[A, B], &[])
        .env("COOLDOWN_SECS", "1")
        .start();
    assert_benched_then_skipped(&mock, proxy.port, OPENAI, A, B);
}

#[test]
fn gemini_retry_delay_benches_the_key() {
    let mock = mock_with_bad(A, gemini_429("37s"));
    let proxy = proxy_to(&mock.url(), &[], &[A, B])
        .env("COOLDOWN_SECS", "1")
        .start();
    assert_benched_then_skipped(&mock, proxy.port, GEMINI, A, B);
}

#[test]
fn benched_key_returns_after_its_cooldown() {
    let first = AtomicUsize::new(0);
    let mock = Mock::start(move |r| {
        if r.key() == A && first.fetch_add(1, Ordering::SeqCst) == 0 {
            Reply::json(429, "{}").header("Retry-After", "1")
        } else {
            Reply::ok_json()
        }
    });
    let proxy = proxy_to(&mock.url(), &[A, B], &[])
        .env("COOLDOWN_SECS", "60")
        .start();
    for _ in 0..2 {
        assert_eq!(get(proxy.port, OPENAI).status, 200);
    }
    let after_429 = mock.count();
    let used_again = wait_until(Duration::from_secs(10), || {
        assert_eq!(get(proxy.port, OPENAI).status, 200);
        mock.keys()[after_429..].iter().any(|k| k == A)
    });
    assert!(
        used_again,
        "key A never used again after Retry-After: 1; keys {:?}",
        mock.keys()
    );
}

/// Table: (keys' 429 replies, COOLDOWN_SECS, accepted Retry-After range) for the exhaustion answer.
#[test]
fn exhaustion_answers_429_with_retry_after_until_the_earliest_key() {
    let cases: Vec<(&str, Reply, Reply, &str, std::ops::RangeInclusive<u64>)> = vec![
        (
            "retry-after seconds",
            Reply::json(429, "{}").header("Retry-After", "30"),
            Reply::json(429, "{}").header("Retry-After", "100"),
            "5",
            25..=30,
        ),
        (
            "retry-after http date",
            Reply::json(429, "{}").header(
                "Retry-After",
                &http_date(SystemTime::now() + Duration::from_secs(30)),
            ),
            Reply::json(429, "{}").header(
                "Retry-After",
                &http_date(SystemTime::now() + Duration::from_secs(90)),
            ),
            "5",
            25..=30,
        ),
        (
            "default cooldown",
            Reply::json(429, "{}"),
            Reply::json(429, "{}"),
            "40",
            35..=40,
        ),
        (
            "gemini retryDelay",
            gemini_429("37s"),
            gemini_429("50s"),
            "5",
            32..=37,
        ),
    ];
    for (name, reply_a, reply_b, cooldown, range) in cases {
        let mock = Mock::start(move |r| {
            if r.key() == A {
                reply_a.clone()
            } else {
                reply_b.clone()
            }
        });
        let gemini = name.starts_with("gemini");
        let (openai_keys, gemini_keys, path) = if gemini {
            (vec![], vec![A, B], GEMINI)
        } else {
            (vec![A, B], vec![], OPENAI)
        };
        let proxy = proxy_to(&mock.url(), &openai_keys, &gemini_keys)
            .env("COOLDOWN_SECS", cooldown)
            .start();
        let reply = get(proxy.port, path);
        assert_eq!(reply.status, 429, "{name}: {reply:?}");
        let mut keys = mock.keys();
        keys.sort();
        assert_eq!(
            keys,
            vec![A.to_string(), B.to_string()],
            "{name}: each key tried once"
        );
        assert!(
            range.contains(&reply.retry_after()),
            "{name}: Retry-After {}",
            reply.retry_after()
        );
        let body = squash(&reply.json_text());
        if gemini {
            assert!(
                body.contains(r#""code":429"#) && body.contains(r#""status":"RESOURCE_EXHAUSTED""#),
                "{name}: {body}"
            );
            assert!(body.contains(r#""message":"#), "{name}: {body}");
        } else {
            for field in [r#"{"error":{"#, r#""message":"#, r#""type":"#, r#""code":"#] {
                assert!(body.contains(field), "{name}: {field} missing in {body}");
            }
        }
        // Everything is benched now: answered without touching the upstream.
        let again = get(proxy.port, path);
        assert_eq!(again.status, 429, "{name}");
        let ra = again.retry_after();
        assert!(
            ra >= 1 && ra <= *range.end() && ra + 5 >= *range.start(),
            "{name}: second Retry-After {ra}"
        );
        assert_eq!(mock.count(), 2, "{name}: benched keys are not tried");
    }
}

#[test]
fn unauthorized_and_forbidden_keys_are_benched_with_a_warning() {
    for status in [401u16, 403] {
        let mock = mock_with_bad(
            A,
            Reply::json(status, r#"{"error":{"message":"invalid api key"}}"#),
        );
        let proxy = proxy_to(&mock.url(), &[A, B], &[])
            .env("COOLDOWN_SECS", "1")
            .start();
        assert_benched_then_skipped(&mock, proxy.port, OPENAI, A, B);
        let warned = proxy.wait_log(Duration::from_secs(5), |lines| {
            lines
                .iter()
                .any(|l| l.contains("WARN") && l.contains(&mask(A)))
        });
        assert!(
            warned,
            "{status}: no WARN naming {}; log:\n{}",
            mask(A),
            proxy.log_text()
        );
    }
}

#[test]
fn server_errors_move_to_the_next_key_without_benching() {
    for status in [500u16, 502, 503, 504] {
        let mock = mock_with_bad(A, Reply::json(status, r#"{"error":"upstream trouble"}"#));
        let proxy = proxy_to(&mock.url(), &[A, B], &[]).start();
        for _ in 0..6 {
            let reply = get(proxy.port, OPENAI);
            assert_eq!(reply.status, 200, "{status}: {reply:?}");
            assert!(reply.text().contains(B), "{status}: {}", reply.text());
        }
        let keys = mock.keys();
        let a_uses = keys.iter().filter(|k| *k == A).count();
        assert!(
            a_uses >= 2,
            "{status}: A must not be benched, it was tried {a_uses} times: {keys:?}"
        );
        for (i, k) in keys.iter().enumerate() {
            if k == A {
                assert_eq!(
                    keys.get(i + 1).map(String::as_str),
                    Some(B),
                    "{status}: {keys:?}"
                );
            }
        }
    }
}

#[test]
fn last_server_error_or_auth_failure_is_relayed_when_every_key_fails() {
    for status in [401u16, 403, 500, 503] {
        let mock = Mock::start(move |r| {
            Reply::json(status, &format!(r#"{{"failed_key":"{}"}}"#, mask(r.key())))
        });
        let proxy = proxy_to(&mock.url(), &[A, B, C], &[]).start();
        let reply = get(proxy.port, OPENAI);
        let keys = mock.keys();
        let mut distinct = keys.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(
            (keys.len(), distinct.len()),
            (3, 3),
            "{status}: each key once: {keys:?}"
        );
        assert_eq!(reply.status, status, "{status}: {reply:?}");
        let last = keys.last().expect("a request");
        assert_eq!(
            reply.text(),
            format!(r#"{{"failed_key":"{}"}}"#, mask(last)),
            "{status}"
        );
    }
}

#[test]
fn client_errors_are_relayed_without_retry() {
    for status in [400u16, 404, 422] {
        let body = format!(r#"{{"error":{{"message":"bad request {status}"}}}}"#);
        let mock = Mock::start({
            let body = body.clone();
            move |_| Reply::json(status, &body).header("x-ratelimit-remaining-requests", "7")
        });
        let proxy = proxy_to(&mock.url(), &[A, B], &[]).start();
        let reply = get(proxy.port, OPENAI);
        assert_eq!(reply.status, status, "{reply:?}");
        assert_eq!(reply.text(), body);
        assert_eq!(reply.header("x-ratelimit-remaining-requests"), Some("7"));
        assert_eq!(mock.count(), 1, "{status}: must not be retried");
    }
}
