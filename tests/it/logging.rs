//! Logging: one INFO line per request with status, attempts and the masked key; WARN on benching;
//! start-up lines; and no key, client credential or `key=` value anywhere in the log or replies.

use std::time::Duration;

use crate::support::http::{Reply, Req, get, send};
use crate::support::mock::{Mock, Reply as MockReply};
use crate::support::proxy::{proxy, proxy_to};
use crate::support::{closed_port, mask};

const LIMITED: &str = "sk-log-limited-key-0001";
const REVOKED: &str = "sk-log-revoked-key-0002";
const GOOD: &str = "sk-log-good-key-0003";
const GEMINI_LONG: &str = "AIza-log-gemini-key-0004";
const GEMINI_SHORT: &str = "gk-short9";

fn script(r: &crate::support::mock::Recorded) -> MockReply {
    match r.key() {
        LIMITED => {
            MockReply::json(429, r#"{"error":{"message":"rate"}}"#).header("Retry-After", "30")
        }
        REVOKED => MockReply::json(401, r#"{"error":{"message":"revoked"}}"#),
        _ => MockReply::ok_json(),
    }
}

#[test]
fn request_line_names_status_attempts_and_masked_key() {
    let mock = Mock::start(script);
    let proxy = proxy_to(&mock.url(), &[LIMITED, GOOD], &[]).start();
    for _ in 0..2 {
        assert_eq!(get(proxy.port, "/openai/v1/models?limit=1").status, 200);
    }
    let lines = proxy.request_lines(2);
    assert_eq!(lines.len(), 2, "one line per request: {lines:#?}");
    let good = format!("key={}", mask(GOOD));
    assert!(
        lines
            .iter()
            .any(|l| l.contains("status=200") && l.contains("attempts=2") && l.contains(&good)),
        "no line for the rotated request: {lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("status=200") && l.contains("attempts=1") && l.contains(&good)),
        "no line for the direct request: {lines:#?}"
    );
    assert!(lines.iter().all(|l| l.contains("INFO")), "{lines:#?}");
    assert!(
        proxy.wait_log(Duration::from_secs(5), |all| {
            all.iter()
                .any(|l| l.contains("WARN") && l.contains(&mask(LIMITED)))
        }),
        "no WARN naming the benched key:\n{}",
        proxy.log_text()
    );
}

#[test]
fn short_keys_are_masked_as_stars() {
    let mock = Mock::ok();
    let proxy = proxy_to(&mock.url(), &[], &[GEMINI_SHORT]).start();
    assert_eq!(get(proxy.port, "/gemini/v1beta/models").status, 200);
    let lines = proxy.request_lines(1);
    assert!(lines[0].contains("key=***"), "{lines:#?}");
    assert!(!proxy.log_text().contains(GEMINI_SHORT));
}

#[test]
fn startup_lines_name_version_address_and_upstreams() {
    let mock = Mock::ok();
    let proxy = proxy_to(&mock.url(), &[GOOD], &[GEMINI_LONG]).start();
    let log = proxy.log_text();
    assert!(log.contains(env!("CARGO_PKG_VERSION")), "{log}");
    assert!(log.contains(&format!("127.0.0.1:{}", proxy.port)), "{log}");
    assert!(log.contains(&mock.url()), "base URL missing: {log}");
    assert!(!log.contains(GOOD) && !log.contains(GEMINI_LONG), "{log}");
}

#[test]
fn no_secret_appears_in_any_log_line_or_reply() {
    let mock = Mock::start(script);
    let dead = format!("http://127.0.0.1:{}", closed_port());
    let proxy = proxy()
        .env("LOG_LEVEL", "debug")
        .env("OPENAI_BASE_URL", &mock.url())
        .env("OPENAI_API_KEYS", &[LIMITED, REVOKED, GOOD].join(","))
        .env("GEMINI_BASE_URL", &dead)
        .env("GEMINI_API_KEYS", &[GEMINI_LONG, GEMINI_SHORT].join(","))
        .start();
    let client_secrets = [
        "sk-client-bearer-secret-9001",
        "client-x-api-key-secret-9002",
        "client-goog-key-secret-9003",
        "client-query-secret-9004",
    ];
    let with_creds = |req: Req| {
        req.header("Authorization", &format!("Bearer {}", client_secrets[0]))
            .header("x-api-key", client_secrets[1])
            .header("x-goog-api-key", client_secrets[2])
    };
    let query = format!("key={}", client_secrets[3]);
    let mut replies: Vec<Reply> = Vec::new();
    replies.push(send(
        proxy.port,
        &with_creds(Req::get(&format!("/nowhere?{query}"))),
    ));
    for i in 0..4 {
        let path = format!("/openai/v1/chat/completions?a={i}&{query}");
        replies.push(send(
            proxy.port,
            &with_creds(Req::post(&path, b"{\"messages\":[]}")),
        ));
    }
    replies.push(send(
        proxy.port,
        &with_creds(Req::get(&format!("/gemini/v1beta/models?{query}&alt=sse"))),
    ));
    assert!(
        replies[1..5].iter().all(|r| r.status == 200),
        "{replies:#?}"
    );
    assert_eq!(replies[5].status, 502, "{:?}", replies[5]);
    assert!(mock.keys().iter().any(|k| k == LIMITED) && mock.keys().iter().any(|k| k == REVOKED));
    proxy.request_lines(5);
    let mut everything = proxy.log_text();
    for r in &replies {
        for (n, v) in &r.headers {
            everything.push_str(&format!("\n{n}: {v}"));
        }
        everything.push('\n');
        everything.push_str(&String::from_utf8_lossy(&r.body));
    }
    let pool = [LIMITED, REVOKED, GOOD, GEMINI_LONG, GEMINI_SHORT];
    for secret in pool.iter().chain(&client_secrets) {
        assert!(
            !everything.contains(secret),
            "{secret} leaked:\n{everything}"
        );
    }
    assert!(
        proxy.log_text().contains(&mask(REVOKED)),
        "{}",
        proxy.log_text()
    );
}

#[test]
fn log_format_json_writes_one_object_per_line_with_the_request_fields_and_no_key() {
    let mock = Mock::start(script);
    let proxy = proxy_to(&mock.url(), &[LIMITED, REVOKED, GOOD], &[])
        .env("LOG_FORMAT", "json")
        .start();
    for _ in 0..3 {
        get(proxy.port, "/openai/v1/models");
    }
    let done = proxy.wait_log(Duration::from_secs(5), |lines| {
        lines.iter().filter(|l| l.contains(r#""req":"#)).count() >= 3
    });
    assert!(done, "{}", proxy.log_text());
    let lines = proxy.log();
    for line in &lines {
        assert!(
            line.starts_with(r#"{"time":""#)
                && line.ends_with('}')
                && line.contains(r#","level":""#),
            "not a JSON object line: {line}"
        );
        for key in [LIMITED, REVOKED, GOOD] {
            assert!(!line.contains(key), "a key in the log: {line}");
        }
    }
    let request = lines
        .iter()
        .find(|l| l.contains(r#""status":200"#))
        .expect("a request line with status 200");
    for member in [
        r#""level":"INFO""#,
        r#""method":"GET""#,
        r#""path":"/openai/v1/models""#,
        r#""queued_ms":"#,
        r#""attempts":"#,
        r#""ms":"#,
    ] {
        assert!(request.contains(member), "{member} missing: {request}");
    }
    let good = format!(r#""key":"{}""#, mask(GOOD));
    assert!(request.contains(&good), "{request}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains(r#""level":"WARN""#) && l.contains("benched")),
        "the bench WARN line is JSON too"
    );
}
