//! What affinity costs a request, measured alone (issue 19): the one pass over the body (its
//! ids and top-level members) with the id scan of the path and query, the conversation
//! fingerprint from those members, and the table look-ups, for the c64 bench's chat body
//! and for a 200 KB conversation; and the memory a learned id takes.
//!
//! `cargo run --release --example affinity-cost`

use std::hint::black_box;
use std::time::{Duration, Instant};

use keyrelay::keys::ApiKey;
use keyrelay::keys::affinity::{Affinity, BodySurvey, Dialect, conversation};

/// Runs `f` `n` times and returns the mean time per run.
fn per_run(n: u32, mut f: impl FnMut()) -> Duration {
    for _ in 0..n / 10 {
        f();
    }
    let started = Instant::now();
    for _ in 0..n {
        f();
    }
    started.elapsed() / n
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let keys: Vec<ApiKey> = (0..4)
        .map(|i| ApiKey::new(format!("sk-cost-key-{i:08}")))
        .collect();
    let affinity = Affinity::new(Dialect::OpenAi, Duration::from_secs(3600));
    // The c64 bench's body (scripts/bench.sh): one user message.
    let small = br#"{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Write one sentence about the sea. Keep it short, plain and friendly; no lists, no markdown, no emoji, and nothing about boats or fish, please. Thank you very much for your help with this small task today."}],"temperature":0.2,"max_tokens":64,"stream":false}"#;
    // A later turn of a long conversation: 40 turns of ~5 KB each.
    let mut big =
        String::from(r#"{"model":"gpt-4o","messages":[{"role":"system","content":"Be brief."}"#);
    for turn in 0..40 {
        let role = if turn % 2 == 0 { "user" } else { "assistant" };
        let text = format!("turn {turn} ").repeat(600);
        big.push_str(&format!(r#",{{"role":"{role}","content":"{text}"}}"#));
    }
    big.push_str("]}");
    let big = big.into_bytes();
    println!("body                 body pass + ids   fingerprint   look-ups (ids + session)");
    for (name, body) in [
        ("c64 chat (435 B)", &small[..]),
        ("conversation (200 KB)", &big[..]),
    ] {
        let scan = per_run(20_000, || {
            let survey = BodySurvey::of(Dialect::OpenAi, black_box(body));
            black_box(Dialect::OpenAi.request_ids("v1/chat/completions", "", &survey.ids));
            black_box(survey);
        });
        let survey = BodySurvey::of(Dialect::OpenAi, body);
        let fingerprint = per_run(20_000, || {
            black_box(conversation(
                Dialect::OpenAi,
                Some("gpt-4o"),
                black_box(&survey),
                std::iter::empty(),
            ));
        });
        let now = Instant::now();
        let found =
            conversation(Dialect::OpenAi, Some("gpt-4o"), &survey, std::iter::empty()).unwrap();
        let lookups = per_run(200_000, || {
            black_box(affinity.resource_pin(&[], &keys, now));
            black_box(affinity.session_owner(found.key, now));
            affinity.record_session(found.key, keys[0].id(), now);
        });
        println!(
            "{name:<20} {:>14.2} us {:>10.2} us {:>14.2} us",
            scan.as_secs_f64() * 1e6,
            fingerprint.as_secs_f64() * 1e6,
            lookups.as_secs_f64() * 1e6
        );
    }
    let before = rss_kib();
    let now = Instant::now();
    let n = 200_000u64;
    for i in 0..n {
        let id = format!("file-{:024x}", i * 2_654_435_761);
        affinity.learn([id.as_str()], keys[(i % 4) as usize].id(), now);
    }
    let after = rss_kib();
    println!(
        "{n} learned ids (file-<24 hex>): {} KiB more RSS, {:.0} bytes per id",
        after - before,
        (after - before) as f64 * 1024.0 / n as f64
    );
    let before = rss_kib();
    for i in 0..100_000u64 {
        affinity.record_session(i * 0x9E37_79B9_7F4A_7C15, keys[(i % 4) as usize].id(), now);
    }
    let after = rss_kib();
    println!(
        "100000 conversations: {} KiB more RSS, {:.0} bytes per conversation",
        after - before,
        (after - before) as f64 * 1024.0 / 100_000.0
    );
}
