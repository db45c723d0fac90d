//! Routing: provider prefixes onto base URLs (with a path), every method, query forwarding with
//! `key=` removed, 503 for a provider without keys, 404 listing the routes for anything else.

use crate::support::http::{Req, get, send};
use crate::support::mock::{Mock, Reply};
use crate::support::proxy::{proxy, proxy_to};

const OPENAI_KEY: &str = "sk-route-openai-0001";
const GEMINI_KEY: &str = "AIza-route-gemini-0001";

#[test]
fn every_method_on_both_providers_reaches_the_base_url_path() {
    let mock = Mock::start(|r| {
        Reply::json(200, &format!(r#"{{"method":"{}"}}"#, r.method)).header("x-upstream", "mock")
    });
    let base = format!("{}/api", mock.url());
    let proxy = proxy_to(&base, &[OPENAI_KEY], &[GEMINI_KEY]).start();
    let cases = [
        (
            "openai",
            "/openai/v1/chat/completions",
            "/api/v1/chat/completions",
        ),
        (
            "gemini",
            "/gemini/v1beta/models/gemini-pro:generateContent",
            "/api/v1beta/models/gemini-pro:generateContent",
        ),
    ];
    for (provider, path, upstream_path) in cases {
        for method in ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"] {
            let before = mock.count();
            let body: &[u8] = if matches!(method, "POST" | "PUT" | "PATCH") {
                b"{\"x\":1}"
            } else {
                b""
            };
            let reply = send(proxy.port, &Req::new(method, path).body(body));
            let what = format!("{method} {path}");
            assert_eq!(reply.status, 200, "{what}: {reply:?}");
            assert_eq!(reply.header("x-upstream"), Some("mock"), "{what}");
            assert_eq!(mock.count(), before + 1, "{what}: one upstream request");
            let got = mock.last();
            assert_eq!(got.method, method, "{what}");
            assert_eq!(got.url, upstream_path, "{what}");
            assert_eq!(got.body, body, "{what}");
            let expected_key = if provider == "openai" {
                OPENAI_KEY
            } else {
                GEMINI_KEY
            };
            assert_eq!(got.key(), expected_key, "{what}");
            if method == "HEAD" {
                assert!(reply.raw_rest.is_empty(), "{what}: HEAD got body bytes");
            } else {
                assert_eq!(
                    reply.text(),
                    format!(r#"{{"method":"{method}"}}"#),
                    "{what}"
                );
            }
        }
    }
}

#[test]
fn query_is_forwarded_byte_for_byte_without_key() {
    let mock = Mock::ok();
    let proxy = proxy_to(&mock.url(), &[OPENAI_KEY], &[GEMINI_KEY]).start();
    let cases = [
        ("/gemini/v1/m?alt=sse&key=abc&x=%2F", "/v1/m?alt=sse&x=%2F"),
        (
            "/openai/v1/m?q=a+b%20c&empty=&flag",
            "/v1/m?q=a+b%20c&empty=&flag",
        ),
        ("/gemini/v1/m?key=abc&alt=sse", "/v1/m?alt=sse"),
        ("/openai/v1/m?a=1&key=zz", "/v1/m?a=1"),
        ("/gemini/v1/m?monkey=1&key=2", "/v1/m?monkey=1"),
        ("/openai/v1/m?x=%E2%9C%93&y=%zz", "/v1/m?x=%E2%9C%93&y=%zz"),
        ("/openai/v1/m", "/v1/m"),
    ];
    for (path, upstream) in cases {
        let reply = get(proxy.port, path);
        assert_eq!(reply.status, 200, "{path}: {reply:?}");
        assert_eq!(mock.last().url, upstream, "{path}");
    }
    // A lone key= may leave an empty `?`, but never the key.
    let reply = get(proxy.port, "/gemini/v1/m?key=lonely-secret");
    assert_eq!(reply.status, 200);
    let url = mock.last().url;
    assert!(url == "/v1/m" || url == "/v1/m?", "got {url}");
}

#[test]
fn provider_without_keys_answers_503_naming_the_variable() {
    let mock = Mock::ok();
    let cases = [
        ("/gemini/v1/models", "GEMINI_API_KEYS", "OPENAI_API_KEYS"),
        ("/openai/v1/models", "OPENAI_API_KEYS", "GEMINI_API_KEYS"),
    ];
    for (path, missing, present) in cases {
        let proxy = proxy_to(&mock.url(), &[], &[])
            .env(present, "present-key-0123456789")
            .start();
        let reply = get(proxy.port, path);
        assert_eq!(reply.status, 503, "{path}: {reply:?}");
        assert!(
            reply.json_text().contains(missing),
            "{path}: {}",
            reply.text()
        );
    }
    assert_eq!(mock.count(), 0, "nothing may reach the upstream");
}

#[test]
fn unknown_paths_answer_404_listing_the_routes() {
    let mock = Mock::ok();
    let proxy = proxy_to(&mock.url(), &[OPENAI_KEY], &[GEMINI_KEY]).start();
    for path in [
        "/v1/chat/completions",
        "/anthropic/v1/messages",
        "/openaix/v1/models",
        "/favicon.ico",
    ] {
        let reply = get(proxy.port, path);
        assert_eq!(reply.status, 404, "{path}: {reply:?}");
        let text = reply.json_text();
        assert!(
            text.contains("/openai/") && text.contains("/gemini/"),
            "{path}: {text}"
        );
    }
    assert_eq!(mock.count(), 0, "nothing may reach the upstream");
}

#[test]
fn base_url_with_trailing_slash_does_not_double_it() {
    let mock = Mock::ok();
    let base = format!("{}/api/", mock.url());
    let proxy = proxy()
        .env("OPENAI_BASE_URL", &base)
        .env("OPENAI_API_KEYS", OPENAI_KEY)
        .env("GEMINI_BASE_URL", &mock.url())
        .start();
    let reply = get(proxy.port, "/openai/v1/models");
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(mock.last().url, "/api/v1/models");
}
