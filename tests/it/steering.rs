//! Steering the key pool at run time (issue 12, part 3): reset, disable and enable a key by its
//! /status position, with the access rules, the log lines and the 404/405 answers.

use crate::support::http::{Req, get, key_state, send};
use crate::support::mock::{Mock, Reply};
use crate::support::proxy::proxy_to;

const K1: &str = "sk-steer-key-00000001";
const K2: &str = "sk-steer-key-00000002";

fn mask(key: &str) -> String {
    format!("{}...{}", &key[..4], &key[key.len() - 4..])
}

fn post(port: u16, path: &str) -> crate::support::http::Reply {
    send(port, &Req::post(path, b""))
}

#[test]
fn a_disabled_key_gets_no_traffic_until_enabled_and_reset_clears_a_bench() {
    let mock = Mock::start(|r| {
        if r.url.contains("limit") {
            Reply::json(429, "{}").header("retry-after", "600")
        } else {
            Reply::ok_json()
        }
    });
    let proxy = proxy_to(&mock.url(), &[K1, K2], &[]).start();
    let port = proxy.port;
    let done = post(port, "/status/keys/openai/1/disable");
    assert_eq!(done.status, 200, "{}", done.text());
    assert!(
        done.text().contains(&mask(K1)) && !done.text().contains(K1),
        "{}",
        done.text()
    );
    assert_eq!(key_state(port, 1), "disabled");
    for _ in 0..6 {
        assert_eq!(get(port, "/openai/v1/models").status, 200);
    }
    assert!(mock.keys().iter().all(|k| k == K2), "{:?}", mock.keys());
    assert_eq!(post(port, "/status/keys/openai/1/enable").status, 200);
    assert_eq!(key_state(port, 1), "ready");
    for _ in 0..4 {
        get(port, "/openai/v1/models");
    }
    assert!(
        mock.keys().iter().any(|k| k == K1),
        "K1 never used after enable"
    );
    // A 429 with a long Retry-After benches each key; reset puts one back at once.
    assert_eq!(get(port, "/openai/v1/limit").status, 429);
    assert_eq!(key_state(port, 2), "cooling");
    assert_eq!(post(port, "/status/keys/openai/2/reset").status, 200);
    assert_eq!(key_state(port, 2), "ready");
    // The log is read from the process's stderr as it comes: wait for the lines.
    let logged = proxy.wait_log(std::time::Duration::from_secs(5), |lines| {
        ["disable", "enable", "reset"].iter().all(|action| {
            lines
                .iter()
                .any(|l| l.contains("steer: openai key=") && l.ends_with(action))
        })
    });
    assert!(
        logged,
        "a steering action was not logged:\n{}",
        proxy.log_text()
    );
    let lines = proxy.log();
    assert!(lines.iter().all(|l| !l.contains(K1) && !l.contains(K2)));
}

#[test]
fn other_methods_and_paths_under_status_keys_answer_json_errors() {
    let mock = Mock::ok();
    let proxy = proxy_to(&mock.url(), &[K1], &[]).start();
    let port = proxy.port;
    let wrong_method = get(port, "/status/keys/openai/1/disable");
    assert_eq!(wrong_method.status, 405, "{}", wrong_method.text());
    assert_eq!(wrong_method.header("allow"), Some("POST"));
    assert!(wrong_method.json_text().contains("\"error\""));
    for path in [
        "/status/keys",
        "/status/keys/openai/1/explode",
        "/status/keys/openai/2/reset",
        "/status/keys/openai/0/reset",
        "/status/keys/nosuch/1/reset",
        "/status/keys/openai/1/reset/more",
    ] {
        let reply = post(port, path);
        assert_eq!(reply.status, 404, "{path}: {}", reply.text());
        assert!(reply.json_text().contains("not_found"), "{path}");
    }
    assert_eq!(key_state(port, 1), "ready");
}

#[test]
fn with_access_tokens_steering_needs_one() {
    let mock = Mock::ok();
    let proxy = proxy_to(&mock.url(), &[K1], &[])
        .env("PROXY_API_KEYS", "steer-token-1")
        .start();
    let port = proxy.port;
    let refused = post(port, "/status/keys/openai/1/disable");
    assert_eq!(refused.status, 401, "{}", refused.text());
    let allowed = send(
        port,
        &Req::post("/status/keys/openai/1/disable", b"")
            .header("authorization", "Bearer steer-token-1"),
    );
    assert_eq!(allowed.status, 200, "{}", allowed.text());
}
