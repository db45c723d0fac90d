//! `keyrelay --probe` against the mock: one line per key with its verdict, keys masked, and an
//! exit status that says whether every provider has a usable key.

use crate::support::mock::{Mock, Reply};
use crate::support::proxy::proxy;

const OK: &str = "sk-probe-ok-000000001";
const REVOKED: &str = "sk-probe-revoked-0002";
const LIMITED: &str = "sk-probe-limited-0003";
const SPENT: &str = "sk-probe-spent-000004";
const GEMINI_OK: &str = "AIza-probe-ok-0000005";
const GEMINI_DEAD: &str = "AIza-probe-dead-00006";

const API_KEY_INVALID: &str = r#"{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID","domain":"googleapis.com"}]}}"#;

/// Answers each key as its name says; records what was asked.
fn upstream() -> Mock {
    Mock::start(|r| match r.key() {
        OK | GEMINI_OK => Reply::ok_json(),
        REVOKED => Reply::json(401, r#"{"error":{"code":"invalid_api_key"}}"#),
        LIMITED => Reply::json(429, "{}").header("retry-after", "30"),
        SPENT => Reply::json(
            429,
            r#"{"error":{"type":"insufficient_quota","code":"insufficient_quota"}}"#,
        ),
        GEMINI_DEAD => Reply::json(400, API_KEY_INVALID),
        _ => Reply::json(418, "{}"),
    })
}

fn mask(key: &str) -> String {
    format!("{}...{}", &key[..4], &key[key.len() - 4..])
}

/// The output line for `key`.
fn line_for<'a>(stdout: &'a str, key: &str) -> &'a str {
    stdout
        .lines()
        .find(|l| l.contains(&mask(key)))
        .unwrap_or_else(|| panic!("no line for {}:\n{stdout}", mask(key)))
}

#[test]
fn every_key_gets_a_verdict_and_the_exit_status_says_whether_each_provider_can_serve() {
    let mock = upstream();
    let out = proxy()
        .env("OPENAI_BASE_URL", &mock.url())
        .env("OPENAI_API_KEYS", &[OK, REVOKED, LIMITED, SPENT].join(","))
        .env("GEMINI_BASE_URL", &mock.url())
        .env("GEMINI_API_KEYS", &[GEMINI_OK, GEMINI_DEAD].join(","))
        .run(&["--probe"]);
    let stdout = &out.stdout;
    assert!(out.status.success(), "{stdout}\n{}", out.stderr);
    for (key, verdict) in [
        (OK, " ok "),
        (REVOKED, " invalid "),
        (LIMITED, " rate_limited (cooldown 30 s) "),
        (SPENT, " quota_exhausted "),
        (GEMINI_OK, " ok "),
        (GEMINI_DEAD, " invalid "),
    ] {
        let line = line_for(stdout, key);
        assert!(line.contains(verdict), "{key}: {line}");
        assert!(line.trim_end().ends_with(" ms"), "latency missing: {line}");
    }
    for key in [OK, REVOKED, LIMITED, SPENT, GEMINI_OK, GEMINI_DEAD] {
        assert!(
            !stdout.contains(key) && !out.stderr.contains(key),
            "{key} printed in full"
        );
    }
    assert!(
        stdout.contains("every provider has a usable key"),
        "{stdout}"
    );
    // One request per key, on each shape's cheap listing.
    let requests = mock.requests();
    assert_eq!(requests.len(), 6);
    for r in &requests {
        let expected = if r.key().starts_with("AIza") {
            "/v1beta/models?pageSize=1"
        } else {
            "/v1/models"
        };
        assert_eq!((r.method.as_str(), r.url.as_str()), ("GET", expected));
    }
}

#[test]
fn a_provider_without_a_usable_key_fails_the_probe() {
    let mock = upstream();
    // Nothing listens on port 1 of the loopback: connecting is refused at once.
    let out = proxy()
        .env("OPENAI_BASE_URL", &mock.url())
        .env("OPENAI_API_KEYS", &[REVOKED, SPENT].join(","))
        .env("OPENAI_PROBE_PATH", "/v1/models?limit=1")
        .env("GEMINI_BASE_URL", "http://127.0.0.1:1")
        .env("GEMINI_API_KEYS", GEMINI_OK)
        .env("CONNECT_TIMEOUT_SECS", "2")
        .run(&["--probe"]);
    let stdout = &out.stdout;
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{}", out.stderr);
    assert!(
        line_for(stdout, GEMINI_OK).contains(" unreachable "),
        "{stdout}"
    );
    assert!(
        stdout.contains("no usable key for openai, gemini"),
        "{stdout}"
    );
    assert!(
        mock.requests()
            .iter()
            .all(|r| r.url == "/v1/models?limit=1"),
        "<NAME>_PROBE_PATH not used: {:?}",
        mock.requests()
            .iter()
            .map(|r| r.url.clone())
            .collect::<Vec<_>>()
    );
}
