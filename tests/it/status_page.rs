//! The status page in a real browser (issue 13, part 1): headless Chromium loads /status from a
//! keyrelay with cooling and benched keys; the rendered DOM has a row per key, the countdown,
//! and no full key; a phone-sized screenshot is saved under target/ for people to look at.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    headless(
        &profile.0,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=412,900",
            &url,
        ],
    );
    let size = std::fs::metadata(&shot).map_or(0, |m| m.len());
    assert!(size > 1000, "no screenshot at {}", shot.display());
    eprintln!("screenshot: {}", shot.display());
    // Anything but a browser still gets JSON.
    assert!(
        get(proxy.port, "/status")
            .text()
            .starts_with("{\"status\":\"ok\"")
    );
}
