//! The status page in a real browser (issue 13, part 1): headless Chromium loads /status from a
//! keyrelay with cooling and benched keys; the rendered DOM has a row per key, the countdown,
//! and no full key; a phone-sized screenshot is saved under target/ for people to look at.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::api::post_json;
use crate::support::http::get;
use crate::support::mock::{Mock, Reply};
use crate::support::proxy::{TempDir, proxy_to};

const COOLING: &str = "sk-page-cooling-000001";
const REVOKED: &str = "sk-page-revoked-000002";
const GOOD: &str = "sk-page-good-000000003";

fn chromium() -> PathBuf {
    [
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        "/usr/bin/google-chrome",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
    .expect("chromium is not installed (apt-get install chromium; .ci/run does)")
}

/// Runs headless Chromium with `args` and a throwaway profile; its stdout. Killed after 60 s.
/// A screenshot of `url` in a window of `size` (`width,height`), for people, into the target
/// dir as `name`; checked to be an image of some size.
fn screenshot(profile: &Path, url: &str, name: &str, size: &str) {
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_file(&shot);
    let window = format!("--window-size={size}");
    headless(
        profile,
        &[&format!("--screenshot={}", shot.display()), &window, url],
    );
    let bytes = std::fs::metadata(&shot).map_or(0, |m| m.len());
    assert!(bytes > 1000, "no screenshot at {}", shot.display());
    eprintln!("screenshot: {}", shot.display());
}

fn headless(profile: &Path, args: &[&str]) -> String {
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium did not finish in 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().expect("chromium output");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
#[ignore = "needs chromium: `bash .ci/run` installs it and runs the ignored tests too"]
fn the_status_page_shows_every_key_with_its_countdown_and_no_full_key() {
    let mock = Mock::start(|r| match r.key() {
        COOLING => Reply::json(429, "{}").header("retry-after", "900"),
        REVOKED => Reply::json(401, "{}"),
        _ => Reply::ok_json(),
    });
    let proxy = proxy_to(&mock.url(), &[COOLING, REVOKED, GOOD], &[]).start();
    for _ in 0..3 {
        assert_eq!(get(proxy.port, "/openai/v1/models").status, 200);
    }
    let url = format!("http://127.0.0.1:{}/status", proxy.port);
    let profile = TempDir::new();
    let dom = headless(&profile.0, &["--dump-dom", &url]);
    assert!(dom.contains("<table"), "not the HTML page: {dom}");
    let rows = dom.matches("<tr><td>").count();
    assert_eq!(rows, 3, "a row per key: {dom}");
    for state in ["cooling", "benched_invalid", "ready"] {
        assert!(dom.contains(&format!(">{state}")), "{state} missing: {dom}");
    }
    assert!(
        dom.contains("frees in 14m") || dom.contains("frees in 15m"),
        "no countdown: {dom}"
    );
    for key in [COOLING, REVOKED, GOOD] {
        assert!(!dom.contains(key), "a full key in the DOM: {key}");
    }
    for top in ["in flight", "queued", "workers busy", "up "] {
        assert!(dom.contains(top), "{top} missing from the header");
    }
    // For people: what a phone shows.
    screenshot(&profile.0, &url, "status-page.png", "412,900");
    // Anything but a browser still gets JSON.
    assert!(
        get(proxy.port, "/status")
            .text()
            .starts_with("{\"status\":\"ok\"")
    );
}

#[test]
#[ignore = "needs chromium: `bash .ci/run` installs it and runs the ignored tests too"]
fn the_status_page_charts_the_last_hour_and_loads_nothing_from_outside() {
    const LIMITED: &str = "sk-page-limited-00001";
    let mock = Mock::start(|r| match r.key() {
        LIMITED => Reply::json(429, "{}").header("retry-after", "900"),
        _ => Reply::json(
            200,
            r#"{"id":"chatcmpl-1","object":"chat.completion","choices":[],"usage":{"prompt_tokens":1000,"completion_tokens":50,"prompt_tokens_details":{"cached_tokens":800}}}"#,
        ),
    });
    let proxy = proxy_to(&mock.url(), &[LIMITED, GOOD], &[])
        .env("OPENAI_KEY_LIMITS", "gpt-4o=50/min")
        .start();
    let chat =
        serde_json::json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]});
    for _ in 0..5 {
        let reply = post_json(proxy.port, "/openai/v1/chat/completions", &chat);
        assert_eq!(reply.status, 200);
    }
    let url = format!("http://127.0.0.1:{}/status", proxy.port);
    let profile = TempDir::new();
    let dom = headless(&profile.0, &["--dump-dom", &url]);
    for chart in ["requests per minute", "tokens per minute"] {
        assert!(
            dom.contains(&format!("data-chart=\"{chart}\"")),
            "{chart} missing: {dom}"
        );
    }
    // The bars hold the traffic just sent (in one minute's bar, or two if a minute turned):
    // 5 served, 1 answered 429 (the limited key, benched after its first), 5 x 800 cached
    // input tokens.
    let total = |series: &str| -> u64 {
        let marker = format!("data-series=\"{series}\" data-value=\"");
        dom.match_indices(&marker)
            .map(|(at, _)| {
                let rest = &dom[at + marker.len()..];
                rest[..rest.find('"').unwrap()].parse::<u64>().unwrap()
            })
            .sum()
    };
    assert_eq!(total("ok"), 5, "{dom}");
    assert_eq!(total("429"), 1, "{dom}");
    assert_eq!(total("cached input"), 4000, "{dom}");
    assert!(
        dom.contains("data-attempts=\"5\""),
        "the served key's sparkline: {dom}"
    );
    assert!(
        dom.contains("data-limited=\"1\""),
        "the limited key's sparkline: {dom}"
    );
    assert!(
        dom.contains("data-window=\"50/min\" data-used=\"5\""),
        "the limit window: {dom}"
    );
    // Self-contained: nothing loads from anywhere else.
    for outside in [
        "src=\"http",
        "href=\"http",
        "url(",
        "<script",
        "<link",
        "@import",
    ] {
        assert!(!dom.contains(outside), "{outside} in the page");
    }
    screenshot(&profile.0, &url, "status-page-charts.png", "412,1400");
}
