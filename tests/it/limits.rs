//! Local limits per key and model (issue 22, part 2): a key that used its allowance is skipped
//! before the upstream says 429; all keys at their limits get a 429 whose Retry-After fits the
//! window; a bad rule stops start-up naming the variable.

use crate::support::api::{self, provider};
use crate::support::http::get;
use crate::support::mock::{Mock, Reply};
use crate::support::proxy::{proxy, proxy_to};

const A: &str = "sk-limits-key-00000001";
const B: &str = "sk-limits-key-00000002";

fn chat(port: u16, model: &str) -> crate::support::http::Reply {
    let body = serde_json::json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
    api::post_json(port, "/openai/v1/chat/completions", &body)
}

#[test]
fn a_key_at_its_limit_is_skipped_before_any_429_and_all_at_limit_get_a_fitting_retry_after() {
    let mock = Mock::start(|_| Reply::ok_json());
    let proxy = proxy_to(&mock.url(), &[A, B], &[])
        .env("OPENAI_KEY_LIMITS", "gpt-4o=2/min; *=100/min")
        .start();
    for _ in 0..4 {
        assert_eq!(chat(proxy.port, "gpt-4o").status, 200);
    }
    let keys = mock.keys();
    assert_eq!(keys.iter().filter(|k| *k == A).count(), 2, "{keys:?}");
    assert_eq!(keys.iter().filter(|k| *k == B).count(), 2, "{keys:?}");
    let reply = chat(proxy.port, "gpt-4o");
    assert_eq!(reply.status, 429, "{}", reply.text());
    let retry = reply.retry_after();
    assert!(
        (1..=60).contains(&retry),
        "Retry-After {retry} does not fit a minute"
    );
    assert_eq!(
        mock.count(),
        4,
        "the upstream never saw a request past the limits"
    );
    // Another model has its own allowance.
    assert_eq!(chat(proxy.port, "gpt-4o-mini").status, 200);
    let status = api::status(proxy.port);
    let limits = &provider(&status, "openai")["keys"][0]["limits"];
    let gpt = limits
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["model"] == "gpt-4o")
        .unwrap_or_else(|| panic!("{status}"));
    assert_eq!(gpt["windows"][0]["limit"], "2/min");
    assert_eq!(gpt["windows"][0]["used"], 2);
    assert!(gpt["windows"][0]["frees_in_secs"].as_f64().unwrap() > 0.0);
    assert_eq!(get(proxy.port, "/health").status, 200);
}

#[test]
fn a_bad_rule_stops_start_up_naming_the_variable() {
    let out = proxy()
        .env("GEMINI_API_KEYS", A)
        .env("GEMINI_KEY_LIMITS", "gemini-2.5-pro=5/hour")
        .run(&["--check"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        out.stderr.contains("GEMINI_KEY_LIMITS") && out.stderr.contains("5/hour"),
        "{}",
        out.stderr
    );
}
