//! Headroom-aware rotation (issue 12, part 1): keys that say on a success that they have
//! nothing left are skipped until their window resets, so the upstream never has to answer 429.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::support::http::get;
use crate::support::mock::{Mock, Reply};
use crate::support::proxy::proxy_to;

/// Keys with their request budgets in one window: 12 requests in all.
const BUDGETS: [(&str, u64); 4] = [
    ("sk-headroom-key-000001", 1),
    ("sk-headroom-key-000002", 2),
    ("sk-headroom-key-000003", 4),
    ("sk-headroom-key-000004", 5),
];

/// An upstream that gives each key its budget per (long) window, says what is left on every
/// success the way OpenAI does, and answers 429 past it. Returns the mock and its 429 count.
fn rationed() -> (Mock, Arc<Mutex<u64>>) {
    let used: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let refused = Arc::new(Mutex::new(0u64));
    let counted = Arc::clone(&refused);
    let mock = Mock::start(move |r| {
        let budget = BUDGETS
            .iter()
            .find(|(key, _)| *key == r.key())
            .map_or(0, |(_, b)| *b);
        let mut used = used.lock().unwrap();
        let spent = used.entry(r.key().to_string()).or_default();
        if *spent >= budget {
            *counted.lock().unwrap() += 1;
            return Reply::json(429, "{}").header("retry-after", "600");
        }
        *spent += 1;
        Reply::ok_json()
            .header("x-ratelimit-limit-requests", &budget.to_string())
            .header(
                "x-ratelimit-remaining-requests",
                &(budget - *spent).to_string(),
            )
            .header("x-ratelimit-reset-requests", "10m0s")
    });
    (mock, refused)
}

fn keys() -> Vec<&'static str> {
    BUDGETS.iter().map(|(k, _)| *k).collect()
}

#[test]
fn keys_with_no_headroom_left_are_skipped_before_their_429() {
    let (mock, refused) = rationed();
    let proxy = proxy_to(&mock.url(), &keys(), &[]).start();
    for i in 0..12 {
        let reply = get(proxy.port, "/openai/v1/models");
        assert_eq!(reply.status, 200, "request {i}: {}", reply.text());
    }
    assert_eq!(
        *refused.lock().unwrap(),
        0,
        "the upstream had to answer 429"
    );
    assert_eq!(mock.count(), 12);
    let status = get(proxy.port, "/status").text();
    assert!(
        status.contains(r#""headroom":{"requests_remaining":0,"tokens_remaining":null,"resets":"#),
        "{status}"
    );
    assert!(
        !status.contains(r#""headroom":null"#),
        "a key reported nothing: {status}"
    );
}

#[test]
fn with_headroom_off_the_same_load_earns_429s() {
    let (mock, refused) = rationed();
    let proxy = proxy_to(&mock.url(), &keys(), &[])
        .env("HEADROOM", "off")
        .start();
    for _ in 0..12 {
        get(proxy.port, "/openai/v1/models");
    }
    assert!(
        *refused.lock().unwrap() > 0,
        "round robin alone never ran into a budget"
    );
}
