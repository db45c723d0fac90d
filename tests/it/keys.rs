//! Keys: pool key injection per provider, stripping of client credentials and hop-by-hop headers,
//! forwarding of end-to-end headers, round-robin spread (sequential and concurrent).

use std::collections::HashMap;
use std::thread;

use crate::support::http::{Req, get, send};
use crate::support::mock::{Mock, Reply};
use crate::support::proxy::proxy_to;

const POOL_OPENAI: &str = "sk-pool-openai-key-7777";
const POOL_GEMINI: &str = "AIza-pool-gemini-key-8888";

fn with_client_credentials(req: Req) -> Req {
    req.header("Authorization", "Bearer sk-client-own-secret-1111")
        .header("x-api-key", "client-x-api-key-2222")
        .header("x-goog-api-key", "client-goog-key-3333")
}

#[test]
fn openai_gets_bearer_pool_key_and_client_credentials_are_stripped() {
    let mock = Mock::ok();
    let proxy = proxy_to(&mock.url(), &[POOL_OPENAI], &[POOL_GEMINI]).start();
    let req = with_client_credentials(Req::post(
        "/openai/v1/chat/completions?key=client-query-key-4444&stream=true",
        b"{}",
    ))
    .header("Content-Type", "application/json")
    .header("OpenAI-Organization", "org-test-123")
    .header("X-Foo", "bar baz")
    .header("Keep-Alive", "timeout=5")
    .header("Proxy-Authorization", "Basic cHJveHk6c2VjcmV0")
    .header("TE", "trailers");
    let reply = send(proxy.port, &req);
    assert_eq!(reply.status, 200, "{reply:?}");
    let got = mock.last();
    let authorizations: Vec<_> = got
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("authorization"))
        .collect();
    assert_eq!(
        authorizations.len(),
        1,
        "exactly one Authorization: {:?}",
        got.headers
    );
    assert_eq!(
        got.header("authorization"),
        Some(format!("Bearer {POOL_OPENAI}").as_str())
    );
    for stripped in [
        "x-api-key",
        "x-goog-api-key",
        "keep-alive",
        "proxy-authorization",
        "te",
    ] {
        assert_eq!(
            got.header(stripped),
            None,
            "{stripped} must not be forwarded: {:?}",
            got.headers
        );
    }
    assert_eq!(got.url, "/v1/chat/completions?stream=true");
    assert_eq!(got.header("content-type"), Some("application/json"));
    assert_eq!(got.header("openai-organization"), Some("org-test-123"));
    assert_eq!(got.header("x-foo"), Some("bar baz"));
    let host = format!("127.0.0.1:{}", mock.port);
    assert_eq!(
        got.header("host"),
        Some(host.as_str()),
        "Host must name the upstream"
    );
}

#[test]
fn gemini_gets_goog_header_pool_key_and_client_credentials_are_stripped() {
    let mock = Mock::ok();
    let proxy = proxy_to(&mock.url(), &[POOL_OPENAI], &[POOL_GEMINI]).start();
    let req = with_client_credentials(Req::post(
        "/gemini/v1beta/models/gemini-pro:streamGenerateContent?alt=sse&key=client-query-key-5555",
        b"{\"contents\":[]}",
    ))
    .header("Content-Type", "application/json")
    .header("x-goog-api-client", "genai-py/1.0");
    let reply = send(proxy.port, &req);
    assert_eq!(reply.status, 200, "{reply:?}");
    let got = mock.last();
    assert_eq!(got.header("x-goog-api-key"), Some(POOL_GEMINI));
    let goog: Vec<_> = got
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("x-goog-api-key"))
        .collect();
    assert_eq!(
        goog.len(),
        1,
        "exactly one x-goog-api-key: {:?}",
        got.headers
    );
    assert_eq!(got.header("authorization"), None, "{:?}", got.headers);
    assert_eq!(got.header("x-api-key"), None, "{:?}", got.headers);
    assert_eq!(
        got.url,
        "/v1beta/models/gemini-pro:streamGenerateContent?alt=sse"
    );
    assert_eq!(got.header("x-goog-api-client"), Some("genai-py/1.0"));
    assert_eq!(got.body, b"{\"contents\":[]}");
}

/// Asserts `seen` walks `keys` in cycle order and uses each key equally often.
fn assert_round_robin(seen: &[String], keys: &[&str]) {
    let index = |k: &str| {
        keys.iter()
            .position(|p| *p == k)
            .unwrap_or_else(|| panic!("unknown key {k}"))
    };
    for pair in seen.windows(2) {
        let (a, b) = (index(&pair[0]), index(&pair[1]));
        assert_eq!((a + 1) % keys.len(), b, "not round robin: {seen:?}");
    }
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for k in seen {
        *counts.entry(k.as_str()).or_default() += 1;
    }
    for k in keys {
        assert_eq!(
            counts.get(k).copied().unwrap_or(0),
            seen.len() / keys.len(),
            "{k} in {seen:?}"
        );
    }
}

#[test]
fn sequential_requests_rotate_keys_round_robin() {
    let mock = Mock::ok();
    let openai = [
        "sk-rr-key-one-000001",
        "sk-rr-key-two-000002",
        "sk-rr-key-three-0003",
    ];
    let gemini = ["AIza-rr-gem-one-0001", "AIza-rr-gem-two-0002"];
    let proxy = proxy_to(&mock.url(), &openai, &gemini).start();
    for _ in 0..30 {
        assert_eq!(get(proxy.port, "/openai/v1/models").status, 200);
    }
    assert_round_robin(&mock.keys(), &openai);
    let before = mock.count();
    for _ in 0..10 {
        assert_eq!(get(proxy.port, "/gemini/v1beta/models").status, 200);
    }
    assert_round_robin(&mock.keys()[before..], &gemini);
}

#[test]
fn duplicate_and_blank_keys_are_dropped_from_the_pool() {
    let mock = Mock::ok();
    let proxy = proxy_to(&mock.url(), &[], &[])
        .env(
            "OPENAI_API_KEYS",
            " sk-dup-key-alpha-0001 , ,sk-dup-key-beta-0002,sk-dup-key-alpha-0001,",
        )
        .start();
    for _ in 0..6 {
        assert_eq!(get(proxy.port, "/openai/v1/models").status, 200);
    }
    assert_round_robin(
        &mock.keys(),
        &["sk-dup-key-alpha-0001", "sk-dup-key-beta-0002"],
    );
}

#[test]
fn concurrent_requests_never_see_a_429_while_a_good_key_remains() {
    // `bad` always answers 429: each request must fall through to `good` itself.
    let mock = Mock::start_closing(|r| {
        if r.key() == "sk-concurrent-bad-0001" {
            Reply::json(429, r#"{"error":{"message":"rate limited"}}"#).header("retry-after", "1")
        } else {
            Reply::ok_json()
        }
    });
    let proxy = proxy_to(
        &mock.url(),
        &["sk-concurrent-bad-0001", "sk-concurrent-good-002"],
        &[],
    )
    .env("WORKERS", "8")
    .start();
    let port = proxy.port;
    let handles: Vec<_> = (0..6)
        .map(|_| {
            thread::spawn(move || {
                (0..8)
                    .map(|_| get(port, "/openai/v1/models").status)
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for h in handles {
        let statuses = h.join().expect("client thread");
        assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    }
    assert!(
        mock.keys()
            .iter()
            .filter(|k| *k == "sk-concurrent-good-002")
            .count()
            == 48
    );
}
