//! Beyond two providers: named providers (Anthropic-style header keys, query keys), per-model
//! and per-day cooldowns, SIGHUP reload (with a stream in flight, and a refused bad file), and
//! WAIT_FOR_KEY_SECS.

use std::io::Read;
use std::time::{Duration, Instant, SystemTime};

use keyrelay::utc::{format_rfc3339, next_pacific_midnight};

use crate::support::http::{Conn, Req, body_reader, get, send};
use crate::support::mask;
use crate::support::mock::{Mock, Reply};
use crate::support::proxy::{TempDir, proxy, proxy_to, write_env};

const K1: &str = "sk-provider-key-one-0001";
const K2: &str = "sk-provider-key-two-0002";
const K3: &str = "sk-provider-key-three-003";

#[test]
fn anthropic_style_provider_gets_its_header_key_and_its_error_shape() {
    let mock = Mock::start(|r| match r.header("x-api-key") {
        Some(K2) => Reply::json(429, r#"{"type":"error"}"#).header("retry-after", "30"),
        _ => Reply::ok_json(),
    });
    let proxy = proxy()
        .env("PROVIDERS", "anthropic")
        .env("ANTHROPIC_BASE_URL", &mock.url())
        .env("ANTHROPIC_API_KEYS", &format!("{K1},{K2}"))
        .start();
    let req = Req::post(
        "/anthropic/v1/messages",
        br#"{"model":"claude-x","max_tokens":5}"#,
    )
    .header("x-api-key", "client-own-key")
    .header("anthropic-version", "2023-06-01")
    .header("anthropic-beta", "tools-2024-04-04")
    .header("Authorization", "Bearer client-bearer");
    let reply = send(proxy.port, &req);
    assert_eq!(reply.status, 200, "{}", reply.text());
    let seen = mock.last();
    assert_eq!(seen.url, "/v1/messages");
    assert_eq!(
        seen.header("x-api-key"),
        Some(K1),
        "pool key injected as x-api-key"
    );
    assert_eq!(seen.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(seen.header("anthropic-beta"), Some("tools-2024-04-04"));
    assert_eq!(
        seen.header("authorization"),
        None,
        "client credentials stripped"
    );

    // The next ticket lands on K2, which answers 429: the request moves on to K1.
    let second = send(proxy.port, &req);
    assert_eq!(second.status, 200, "K2 429s, K1 answers: {}", second.text());
    let mock_all_429 = Mock::start(|_| Reply::json(429, "{}").header("retry-after", "30"));
    let limited = crate::support::proxy::proxy()
        .env("PROVIDERS", "anthropic")
        .env("ANTHROPIC_BASE_URL", &mock_all_429.url())
        .env("ANTHROPIC_API_KEYS", K1)
        .start();
    let reply = send(limited.port, &req);
    assert_eq!(reply.status, 429);
    let body = reply.text();
    assert!(
        body.starts_with(r#"{"type":"error","error":{"type":"rate_limit_error""#),
        "Anthropic error shape: {body}"
    );
    assert!(reply.header("retry-after").is_some());
}

#[test]
fn query_auth_provider_carries_the_key_in_its_parameter() {
    let mock = Mock::ok();
    let proxy = proxy()
        .env("PROVIDERS", "acme-ai")
        .env("ACME_AI_BASE_URL", &format!("{}/api", mock.url()))
        .env("ACME_AI_AUTH", "query:api_key")
        .env("ACME_AI_API_KEYS", K1)
        .start();
    let reply = get(
        proxy.port,
        "/acme-ai/v2/complete?x=1&api_key=client&key=other&y=%2F",
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
    let seen = mock.last();
    assert_eq!(seen.url, format!("/api/v2/complete?x=1&y=%2F&api_key={K1}"));
    // The 404 for an unknown route lists the new provider.
    let unknown = get(proxy.port, "/nope/x");
    assert_eq!(unknown.status, 404);
    assert!(unknown.text().contains("/acme-ai/*"), "{}", unknown.text());
}

#[test]
fn a_429_benches_the_key_only_for_that_model() {
    let mock = Mock::start(|r| {
        if String::from_utf8_lossy(&r.body).contains("gpt-big") {
            Reply::json(429, r#"{"error":{"message":"rate limited"}}"#).header("retry-after", "30")
        } else {
            Reply::ok_json()
        }
    });
    let proxy = proxy_to(&mock.url(), &[K1], &[]).start();
    let big = Req::post(
        "/openai/v1/chat/completions",
        br#"{"model":"gpt-big","messages":[]}"#,
    );
    let small = Req::post(
        "/openai/v1/chat/completions",
        br#"{"model":"gpt-small","messages":[]}"#,
    );
    assert_eq!(send(proxy.port, &big).status, 429);
    assert_eq!(mock.count(), 1);
    let reply = send(proxy.port, &small);
    assert_eq!(reply.status, 200, "the key still serves other models");
    assert_eq!(mock.last().key(), K1);
    let before = mock.count();
    let again = send(proxy.port, &big);
    assert_eq!(again.status, 429);
    assert!(
        again.retry_after() >= 28,
        "{:?}",
        again.header("retry-after")
    );
    assert_eq!(
        mock.count(),
        before,
        "benched for gpt-big: no upstream call"
    );
    let status = get(proxy.port, "/status").text();
    assert!(status.contains(r#""model":"gpt-big""#), "{status}");
    assert!(
        status.contains(r#""state":"ready""#),
        "the key as a whole is ready: {status}"
    );
}

#[test]
fn gemini_per_day_quota_benches_the_model_until_pacific_midnight() {
    let daily = r#"{"error":{"code":429,"message":"quota","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaId":"GenerateRequestsPerDayPerProjectPerModel-FreeTier"}]}]}}"#;
    let mock = Mock::start(move |r| {
        if r.url.contains("gemini-pro") {
            Reply::json(429, daily)
        } else {
            Reply::ok_json()
        }
    });
    let proxy = proxy_to(&mock.url(), &[], &[K1]).start();
    let before = next_pacific_midnight(SystemTime::now());
    let reply = send(
        proxy.port,
        &Req::post("/gemini/v1beta/models/gemini-pro:generateContent", b"{}"),
    );
    let after = next_pacific_midnight(SystemTime::now());
    assert_eq!(reply.status, 429);
    assert!(
        reply.text().contains("RESOURCE_EXHAUSTED"),
        "Gemini shape: {}",
        reply.text()
    );
    let status = get(proxy.port, "/status").text();
    let expected = [format_rfc3339(before), format_rfc3339(after)];
    assert!(
        expected
            .iter()
            .any(|t| status.contains(&format!(r#""model":"gemini-pro","until":"{t}""#))),
        "expected a gemini-pro cooldown until {expected:?}: {status}"
    );
    let other = send(
        proxy.port,
        &Req::post("/gemini/v1beta/models/gemini-flash:generateContent", b"{}"),
    );
    assert_eq!(other.status, 200, "other models keep the key");
}

#[test]
fn sighup_reload_swaps_keys_while_a_stream_finishes_and_keeps_cooldowns() {
    let mock = Mock::start(|r| {
        if r.url.contains("stream") {
            Reply::Sse {
                events: (1..=5)
                    .map(|n| format!("data: {n}\n\n").into_bytes())
                    .collect(),
                gap: Duration::from_millis(300),
            }
        } else if r.key() == K3 {
            Reply::json(429, "{}").header("retry-after", "300")
        } else {
            Reply::ok_json()
        }
    });
    let dir = TempDir::new();
    let env_path = write_env(&dir, &format!("OPENAI_API_KEYS={K1},{K3}\n"));
    let proxy = proxy()
        .env("OPENAI_BASE_URL", &mock.url())
        .env("ENV_FILE", &env_path)
        .start();
    // Bench K3 (two requests certainly reach it once).
    for _ in 0..2 {
        assert_eq!(get(proxy.port, "/openai/v1/models").status, 200);
    }
    // A stream in flight on K1 (or K3-then-K1).
    let mut conn = Conn::open(proxy.port);
    conn.write(&Req::post("/openai/v1/stream", b"{}").to_bytes(proxy.port));
    let head = conn.read_head();
    assert_eq!(head.status, 200);
    let mut body = body_reader(&head, &mut conn.reader, false);
    let mut first = [0u8; 9];
    body.read_exact(&mut first).expect("first event");
    write_env(&dir, &format!("OPENAI_API_KEYS={K3},{K2}\n"));
    proxy.signal("HUP");
    assert!(
        proxy.wait_log(Duration::from_secs(5), |lines| lines
            .iter()
            .any(|l| l.contains(&format!("keys removed: {}", mask(K1))))),
        "{}",
        proxy.log_text()
    );
    let log = proxy.log_text();
    assert!(log.contains(&format!("keys added: {}", mask(K2))), "{log}");
    assert!(!log.contains(K2) && !log.contains(K1), "masks only: {log}");
    let mut rest = Vec::new();
    body.read_to_end(&mut rest).expect("rest of the stream");
    let all = [&first[..], &rest].concat();
    assert_eq!(
        String::from_utf8_lossy(&all),
        "data: 1\n\ndata: 2\n\ndata: 3\n\ndata: 4\n\ndata: 5\n\n",
        "the stream in flight finished with what it had"
    );
    let before = mock.count();
    for _ in 0..4 {
        assert_eq!(get(proxy.port, "/openai/v1/models").status, 200);
    }
    let later = &mock.keys()[before..];
    assert_eq!(
        later,
        vec![K2.to_string(); 4],
        "K1 gone, K3 still cooling: {later:?}"
    );
}

#[test]
fn a_bad_env_file_on_reload_is_refused_and_the_running_keys_kept() {
    let mock = Mock::ok();
    let dir = TempDir::new();
    let env_path = write_env(&dir, &format!("OPENAI_API_KEYS={K1}\n"));
    let proxy = proxy()
        .env("OPENAI_BASE_URL", &mock.url())
        .env("ENV_FILE", &env_path)
        .start();
    write_env(&dir, "OPENAI_API_KEYS=\"unterminated\nPORT=abc\n");
    proxy.signal("HUP");
    assert!(
        proxy.wait_log(Duration::from_secs(5), |lines| lines
            .iter()
            .any(|l| l.contains("reload refused"))),
        "{}",
        proxy.log_text()
    );
    assert_eq!(get(proxy.port, "/openai/v1/models").status, 200);
    assert_eq!(mock.last().key(), K1);
}

#[test]
fn wait_for_key_holds_the_request_until_a_key_frees() {
    /// How long the upstream's one 429 benches K1; the bounds below leave seconds of slack, so
    /// only a proxy that does not wait (or waits for ever) misses them.
    const BENCH: Duration = Duration::from_secs(3);
    // The upstream refuses the first request it sees, then accepts everything.
    let limited_once = || {
        let refused = std::sync::atomic::AtomicBool::new(false);
        Mock::start(move |_| {
            if refused.swap(true, std::sync::atomic::Ordering::SeqCst) {
                Reply::ok_json()
            } else {
                Reply::json(429, "{}").header("retry-after", "3")
            }
        })
    };
    let mock = limited_once();
    let waiting = proxy_to(&mock.url(), &[K1], &[])
        .env("WAIT_FOR_KEY_SECS", "10")
        .start();
    let sent = Instant::now();
    let reply = get(waiting.port, "/openai/v1/models");
    let took = sent.elapsed();
    assert_eq!(reply.status, 200, "held, then sent: {}", reply.text());
    assert_eq!(mock.count(), 2, "one 429, then the same request again");
    assert!(
        took >= BENCH - Duration::from_millis(500),
        "answered after {took:?}: sent again before the key could free"
    );
    // Without WAIT_FOR_KEY_SECS the same situation answers 429 at once.
    let mock = limited_once();
    let impatient = proxy_to(&mock.url(), &[K1], &[]).start();
    let sent = Instant::now();
    assert_eq!(get(impatient.port, "/openai/v1/models").status, 429);
    assert!(sent.elapsed() < BENCH, "the 429 was not at once");
    assert_eq!(mock.count(), 1);
}
