//! Operations: client access tokens in every place SDKs put keys, the refusal to run open on a
//! public address, /health /status /metrics, request ids end to end, and LOG_FILE.

use std::time::Duration;

use crate::support::http::{Req, get, send};
use crate::support::mock::Mock;
use crate::support::proxy::{TempDir, proxy_to};
use crate::support::{mask, wait_until};

const KEY: &str = "sk-ops-pool-key-000000001";
const TOKEN: &str = "tok-client-secret-0001";

#[test]
fn tokens_are_required_where_sdks_put_keys_and_never_forwarded() {
    let mock = Mock::ok();
    let proxy = proxy_to(&mock.url(), &[KEY], &[KEY])
        .env("PROXY_API_KEYS", &format!("other-token-xyz,{TOKEN}"))
        .start();
    let openai = "/openai/v1/models";
    let missing = get(proxy.port, openai);
    assert_eq!(missing.status, 401);
    assert!(
        missing.text().contains("PROXY_API_KEYS"),
        "{}",
        missing.text()
    );
    let gemini = get(proxy.port, "/gemini/v1beta/models");
    assert_eq!(gemini.status, 401);
    assert!(
        gemini.text().contains(r#""status":"UNAUTHENTICATED""#),
        "Gemini shape: {}",
        gemini.text()
    );
    let wrong = send(
        proxy.port,
        &Req::get(openai).header("Authorization", "Bearer tok-client-secret-0002"),
    );
    assert_eq!(wrong.status, 401);
    assert_eq!(
        mock.count(),
        0,
        "nothing reached the upstream without a token"
    );

    let placements = [
        Req::get(openai).header("Authorization", &format!("Bearer {TOKEN}")),
        Req::get(openai).header("x-api-key", TOKEN),
        Req::get("/gemini/v1beta/models").header("x-goog-api-key", TOKEN),
        Req::get(&format!("/gemini/v1beta/models?key={TOKEN}&alt=sse")),
    ];
    for req in placements {
        let reply = send(proxy.port, &req);
        assert_eq!(reply.status, 200, "{req:?}: {}", reply.text());
        let seen = mock.last();
        assert_eq!(
            seen.key(),
            KEY,
            "the pool key, not the token, goes upstream"
        );
        let everything = format!("{} {:?}", seen.url, seen.headers);
        assert!(!everything.contains(TOKEN), "token forwarded: {everything}");
    }
    assert_eq!(
        get(proxy.port, "/health").status,
        200,
        "/health needs no token"
    );
    assert_eq!(get(proxy.port, "/healthz").status, 200);
    assert_eq!(get(proxy.port, "/status").status, 401);
    assert_eq!(get(proxy.port, "/metrics").status, 401);
    let status = send(proxy.port, &Req::get("/status").header("x-api-key", TOKEN));
    assert_eq!(status.status, 200);
    assert!(!proxy.log_text().contains(TOKEN), "token in the log");
}

#[test]
fn a_public_host_without_tokens_is_refused_unless_explicitly_allowed() {
    let base = proxy_to("http://127.0.0.1:9", &[KEY], &[]).env("HOST", "0.0.0.0");
    let refused = base.run(&["--check"]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        refused.stderr.contains("PROXY_API_KEYS")
            && refused.stderr.contains("ALLOW_UNAUTHENTICATED"),
        "{}",
        refused.stderr
    );
    let allowed = base
        .clone()
        .env("ALLOW_UNAUTHENTICATED", "true")
        .run(&["--check"]);
    assert_eq!(allowed.status.code(), Some(0), "{}", allowed.stderr);
    let with_tokens = base.env("PROXY_API_KEYS", TOKEN).run(&["--check"]);
    assert_eq!(with_tokens.status.code(), Some(0), "{}", with_tokens.stderr);
}

#[test]
fn status_and_metrics_count_requests_and_show_only_masks() {
    let mock = Mock::start(|r| {
        if r.key() == "sk-ops-limited-key-0002" {
            crate::support::mock::Reply::json(429, "{}").header("retry-after", "120")
        } else {
            crate::support::mock::Reply::ok_json()
        }
    });
    let limited = "sk-ops-limited-key-0002";
    let proxy = proxy_to(&mock.url(), &[KEY, limited], &[]).start();
    for _ in 0..4 {
        assert_eq!(get(proxy.port, "/openai/v1/chat/completions").status, 200);
    }
    let status = get(proxy.port, "/status");
    assert_eq!(status.header("content-type"), Some("application/json"));
    let text = status.text();
    for secret in [KEY, limited] {
        assert!(!text.contains(secret), "full key in /status: {text}");
        assert!(text.contains(&mask(secret)), "{text}");
    }
    assert!(
        text.contains(r#""state":"cooling""#) && text.contains(r#""rate_limited":1"#),
        "{text}"
    );
    assert!(text.contains(r#""successes":4"#), "{text}");
    let metrics = get(proxy.port, "/metrics").text();
    assert!(
        !metrics.contains(KEY) && !metrics.contains(limited),
        "full key in /metrics"
    );
    let expect = [
        r#"keyrelay_requests_total{provider="openai",route="v1/chat/completions",status="2xx"} 4"#
            .to_string(),
        format!(
            r#"keyrelay_upstream_attempts_total{{provider="openai",key="{}",outcome="rate_limited"}} 1"#,
            mask(limited)
        ),
        format!(
            r#"keyrelay_upstream_attempts_total{{provider="openai",key="{}",outcome="success"}} 4"#,
            mask(KEY)
        ),
        r#"keyrelay_keys{provider="openai",state="cooling"} 1"#.to_string(),
        r#"keyrelay_request_duration_seconds_count{provider="openai"} 4"#.to_string(),
        "keyrelay_in_flight_requests".to_string(),
        "keyrelay_workers_busy".to_string(),
    ];
    for line in expect {
        assert!(metrics.contains(&line), "missing {line} in:\n{metrics}");
    }
}

#[test]
fn request_ids_are_kept_or_made_and_travel_to_the_upstream_and_the_log() {
    let mock = Mock::ok();
    let proxy = proxy_to(&mock.url(), &[KEY], &[]).start();
    let mine = send(
        proxy.port,
        &Req::get("/openai/v1/models").header("X-Request-Id", "trace-42.a:b"),
    );
    assert_eq!(mine.header("x-request-id"), Some("trace-42.a:b"));
    assert_eq!(mock.last().header("x-request-id"), Some("trace-42.a:b"));
    let forged = send(
        proxy.port,
        &Req::get("/openai/v1/models").header("X-Request-Id", "forged id\" status=200 <x>"),
    );
    let made = forged.header("x-request-id").expect("an id").to_string();
    assert!(made.starts_with("kr-"), "{made}");
    assert_eq!(mock.last().header("x-request-id"), Some(made.as_str()));
    let none = get(proxy.port, "/nope");
    let other = none
        .header("x-request-id")
        .expect("every answer has an id")
        .to_string();
    assert_ne!(other, made);
    let lines = proxy.request_lines(3);
    assert!(
        lines.iter().any(|l| l.contains("req=trace-42.a:b")),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.contains(&format!("req={made}"))),
        "{lines:?}"
    );
}

#[test]
fn log_file_receives_the_same_lines() {
    let mock = Mock::ok();
    let dir = TempDir::new();
    let path = dir.0.join("keyrelay.log");
    std::fs::write(&path, "existing line\n").expect("seed log file");
    let proxy = proxy_to(&mock.url(), &[KEY], &[])
        .env("LOG_FILE", &path.display().to_string())
        .start();
    assert_eq!(get(proxy.port, "/openai/v1/models").status, 200);
    proxy.request_lines(1);
    // The file is written just after stderr, where request_lines saw the line.
    let read = || std::fs::read_to_string(&path).expect("read log file");
    wait_until(Duration::from_secs(5), || read().contains("status=200"));
    let text = read();
    assert!(
        text.starts_with("existing line\n"),
        "appended, not truncated"
    );
    assert!(text.contains("listening on http://127.0.0.1:"), "{text}");
    assert!(text.contains("GET /openai/v1/models status=200"), "{text}");
    assert!(!text.contains(KEY), "full key in the log file");
}
