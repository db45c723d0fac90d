//! Keys own things (issue 19): objects go to the key that created them, conversations stay on
//! their key while it can serve, and no answer about one object, one model or one region
//! benches a healthy key. Against the stateful stand-in, where every object belongs to the key
//! that created it.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::api::{
    self as api, all_ready, chat_with_file, metric, parsed, post_json, provider, served_by, status,
    upload_openai_file,
};
use crate::support::http::{Req, get, send};
use crate::support::mask;
use crate::support::proxy::{Proxy, TempDir, proxy_to};
use crate::support::stateful::Stateful;

const A: &str = "sk-affinity-key-0000001";
const B: &str = "sk-affinity-key-0000002";
const C: &str = "sk-affinity-key-0000003";
const KEYS: [&str; 3] = [A, B, C];
const G1: &str = "AIzaAffinity-gemini-01";
const G2: &str = "AIzaAffinity-gemini-02";
const G3: &str = "AIzaAffinity-gemini-03";
const GEMINI_KEYS: [&str; 3] = [G1, G2, G3];

fn start(stand_in: &Stateful) -> Proxy {
    proxy_to(&stand_in.url(), &KEYS, &GEMINI_KEYS).start()
}

#[test]
fn a_file_goes_with_every_use_to_the_key_that_created_it() {
    let stand_in = Stateful::start();
    let proxy = start(&stand_in);
    let file = upload_openai_file(proxy.port);
    let owner = stand_in.owner(&file).expect("the stand-in knows the file");
    for turn in 0..6 {
        let reply = post_json(
            proxy.port,
            "/openai/v1/chat/completions",
            &chat_with_file(&file, &format!("question {turn}")),
        );
        assert_eq!(reply.status, 200, "use {turn}: {}", reply.text());
        assert_eq!(served_by(&reply, &KEYS), owner);
    }
    let content = get(proxy.port, &format!("/openai/v1/files/{file}/content"));
    assert_eq!(content.status, 200, "{}", content.text());
    // Each use went straight to the owner: no trial, no 404 on the way.
    for key in KEYS.iter().filter(|k| **k != owner) {
        assert!(
            stand_in
                .calls(key)
                .iter()
                .all(|c| !c.contains("chat") && !c.contains(&file)),
            "{key} got {:?}",
            stand_in.calls(key)
        );
    }
    let status = api::status(proxy.port);
    assert!(
        provider(&status, "openai")["learned_ids"].as_u64().unwrap() >= 1,
        "{status}"
    );
    assert_eq!(
        metric(
            proxy.port,
            r#"keyrelay_affinity_total{provider="openai",kind="resource",outcome="hit"}"#
        ),
        7
    );
    let lines = proxy.request_lines(8);
    assert!(
        lines.iter().filter(|l| l.contains("pin=resource")).count() >= 7,
        "{lines:#?}"
    );
    // Deleting the file forgets it.
    let deleted = send(
        proxy.port,
        &Req::new("DELETE", &format!("/openai/v1/files/{file}")),
    );
    assert_eq!(deleted.status, 200, "{}", deleted.text());
    let status = api::status(proxy.port);
    assert_eq!(provider(&status, "openai")["learned_ids"], 0, "{status}");
}

#[test]
fn a_response_chain_stays_on_its_key_streamed_or_not() {
    let stand_in = Stateful::start();
    let proxy = start(&stand_in);
    let first = post_json(
        proxy.port,
        "/openai/v1/responses",
        &json!({"model": "gpt-4o", "input": "Remember 7."}),
    );
    assert_eq!(first.status, 200, "{}", first.text());
    let mut previous = parsed(&first)["id"].as_str().unwrap().to_string();
    let owner = stand_in.owner(&previous).unwrap();
    for turn in 0..4 {
        let stream = turn % 2 == 1;
        let reply = post_json(
            proxy.port,
            "/openai/v1/responses",
            &json!({"model": "gpt-4o", "previous_response_id": previous, "input": format!("turn {turn}"), "stream": stream}),
        );
        assert_eq!(reply.status, 200, "turn {turn}: {}", reply.text());
        let text = reply.text();
        assert!(
            text.contains(&mask(&owner)),
            "turn {turn} left the chain's key: {text}"
        );
        // The new response id: in the body, or in the stream's first event.
        let at = text.find("\"id\":\"resp_").expect("a response id") + 6;
        previous = text[at..].split('"').next().unwrap().to_string();
        assert_eq!(stand_in.owner(&previous).as_deref(), Some(owner.as_str()));
    }
    assert!(all_ready(proxy.port, "openai"));
}

#[test]
fn a_batch_and_its_output_file_follow_their_key() {
    let stand_in = Stateful::start();
    let proxy = start(&stand_in);
    let input = upload_openai_file(proxy.port);
    let owner = stand_in.owner(&input).unwrap();
    let batch = post_json(
        proxy.port,
        "/openai/v1/batches",
        &json!({"input_file_id": input, "endpoint": "/v1/chat/completions", "completion_window": "24h"}),
    );
    assert_eq!(batch.status, 200, "{}", batch.text());
    let batch_id = parsed(&batch)["id"].as_str().unwrap().to_string();
    for _ in 0..3 {
        let polled = get(proxy.port, &format!("/openai/v1/batches/{batch_id}"));
        assert_eq!(polled.status, 200, "{}", polled.text());
        let output = parsed(&polled)["output_file_id"]
            .as_str()
            .unwrap()
            .to_string();
        let content = get(proxy.port, &format!("/openai/v1/files/{output}/content"));
        assert_eq!(content.status, 200, "{}", content.text());
        assert_eq!(stand_in.owner(&output).as_deref(), Some(owner.as_str()));
    }
    let others: usize = KEYS
        .iter()
        .filter(|k| **k != owner)
        .map(|k| stand_in.calls(k).len())
        .sum();
    assert_eq!(others, 0, "another key was asked");
}

#[test]
fn a_gemini_upload_comes_back_through_keyrelay_and_its_file_and_cache_stay_on_its_key() {
    let stand_in = Stateful::start();
    let proxy = start(&stand_in);
    let port = proxy.port;
    let started = send(
        port,
        &Req::post(
            "/gemini/upload/v1beta/files",
            br#"{"file":{"display_name":"notes.txt"}}"#,
        )
        .header("x-goog-upload-protocol", "resumable")
        .header("x-goog-upload-command", "start")
        .header("x-goog-upload-header-content-type", "text/plain")
        .header("content-type", "application/json"),
    );
    assert_eq!(started.status, 200, "{}", started.text());
    let upload_url = started
        .header("x-goog-upload-url")
        .expect("an upload URL")
        .to_string();
    let expected = format!("http://127.0.0.1:{port}/gemini/upload/v1beta/files?upload_id=");
    assert!(upload_url.starts_with(&expected), "{upload_url}");
    let path = upload_url.trim_start_matches(&format!("http://127.0.0.1:{port}"));
    // The bytes, sent a few times in a row so rotation would have moved them: each goes to
    // the key that started the upload.
    let finished = send(
        port,
        &Req::post(path, b"hello world")
            .header("x-goog-upload-command", "upload, finalize")
            .header("x-goog-upload-offset", "0"),
    );
    assert_eq!(finished.status, 200, "{}", finished.text());
    let file = parsed(&finished)["file"].clone();
    let (name, uri) = (
        file["name"].as_str().unwrap(),
        file["uri"].as_str().unwrap(),
    );
    let owner = stand_in.owner(name).unwrap();
    let generate = |body: Value| {
        post_json(
            port,
            "/gemini/v1beta/models/gemini-2.5-flash:generateContent",
            &body,
        )
    };
    for turn in 0..4 {
        let reply = generate(json!({"contents": [{"role": "user", "parts": [
            {"fileData": {"fileUri": uri, "mimeType": "text/plain"}},
            {"text": format!("summarise {turn}")}
        ]}]}));
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(served_by(&reply, &GEMINI_KEYS), owner);
    }
    let cache = post_json(
        port,
        "/gemini/v1beta/cachedContents",
        &json!({"model": "models/gemini-2.5-flash", "contents": [{"role": "user", "parts": [{"fileData": {"fileUri": uri}}]}]}),
    );
    assert_eq!(cache.status, 200, "{}", cache.text());
    let cache_name = parsed(&cache)["name"].as_str().unwrap().to_string();
    for turn in 0..3 {
        let reply = generate(
            json!({"cachedContent": cache_name, "contents": [{"role": "user", "parts": [{"text": format!("q{turn}")}]}]}),
        );
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(served_by(&reply, &GEMINI_KEYS), owner);
    }
    let got = get(port, &format!("/gemini/v1beta/{name}"));
    assert_eq!(got.status, 200, "{}", got.text());
    assert!(all_ready(port, "gemini"), "{}", status(port));
}

#[test]
fn an_object_made_elsewhere_is_found_by_trying_keys_and_nothing_is_benched() {
    let stand_in = Stateful::start();
    let file = "file-MadeBeforeKeyrelay01";
    stand_in.give(C, file);
    let gemini_file = "files/madebefore01";
    stand_in.give(G2, gemini_file);
    let proxy = start(&stand_in);
    let port = proxy.port;
    let first = post_json(
        port,
        "/openai/v1/chat/completions",
        &chat_with_file(file, "a"),
    );
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(served_by(&first, &KEYS), C);
    for turn in 0..3 {
        let again = post_json(
            port,
            "/openai/v1/chat/completions",
            &chat_with_file(file, &turn.to_string()),
        );
        assert_eq!(served_by(&again, &KEYS), C);
    }
    let reply = post_json(
        port,
        "/gemini/v1beta/models/gemini-2.5-flash:generateContent",
        &json!({"contents": [{"parts": [{"fileData": {"fileUri": format!("{}/v1beta/{gemini_file}", stand_in.url())}}]}]}),
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(served_by(&reply, &GEMINI_KEYS), G2);
    // The 404s and 403s on the way benched nothing.
    assert!(
        all_ready(port, "openai") && all_ready(port, "gemini"),
        "{}",
        status(port)
    );
    assert!(
        metric(
            port,
            r#"keyrelay_affinity_total{provider="openai",kind="resource",outcome="discovered"}"#
        ) >= 1
    );
    let lines = proxy.request_lines(5);
    assert!(
        lines[1..4].iter().all(|l| l.contains("attempts=1")),
        "{lines:#?}"
    );
    // An id that no key has: every key says so, and the last answer is relayed.
    let missing = post_json(
        port,
        "/openai/v1/chat/completions",
        &chat_with_file("file-NoSuchFileAnywhere", "a"),
    );
    assert_eq!(missing.status, 404, "{}", missing.text());
    assert!(
        missing.text().contains("No such File object"),
        "{}",
        missing.text()
    );
    assert!(all_ready(port, "openai"));
}

#[test]
fn an_owner_that_is_cooling_gets_a_429_with_its_retry_after_and_no_other_key_is_tried() {
    let stand_in = Stateful::start();
    let proxy = start(&stand_in);
    let port = proxy.port;
    let file = upload_openai_file(port);
    let owner = stand_in.owner(&file).unwrap();
    stand_in.limit(&owner, 40);
    let before = stand_in.mock.count();
    for _ in 0..2 {
        let reply = post_json(
            port,
            "/openai/v1/chat/completions",
            &chat_with_file(&file, "q"),
        );
        assert_eq!(reply.status, 429, "{}", reply.text());
        let retry = reply.retry_after();
        assert!((35..=40).contains(&retry), "Retry-After {retry}");
        let text = reply.json_text();
        assert!(
            text.contains(&file) && text.contains(&mask(&owner)),
            "{text}"
        );
    }
    assert_eq!(stand_in.mock.count() - before, 1, "only the owner, once");
    // Plain traffic still flows over the other keys.
    stand_in.unlimit(&owner);
    assert_eq!(
        post_json(
            port,
            "/openai/v1/chat/completions",
            &json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
        )
        .status,
        200
    );
    // A disabled owner: a clear error naming the object and the key.
    let position = KEYS.iter().position(|k| *k == owner).unwrap() + 1;
    let reset = send(
        port,
        &Req::post(&format!("/status/keys/openai/{position}/reset"), b""),
    );
    assert_eq!(reset.status, 200);
    let disabled = send(
        port,
        &Req::post(&format!("/status/keys/openai/{position}/disable"), b""),
    );
    assert_eq!(disabled.status, 200);
    let reply = post_json(
        port,
        "/openai/v1/chat/completions",
        &chat_with_file(&file, "q"),
    );
    assert_eq!(reply.status, 503, "{}", reply.text());
    let text = reply.json_text();
    assert!(
        text.contains(&file) && text.contains(&mask(&owner)) && text.contains("disabled"),
        "{text}"
    );
    assert!(!text.contains(&owner), "the key itself is never shown");
}

#[test]
fn an_owner_that_frees_within_wait_for_key_is_waited_for() {
    let stand_in = Stateful::start();
    let proxy = proxy_to(&stand_in.url(), &KEYS, &[])
        .env("WAIT_FOR_KEY_SECS", "10")
        .start();
    let file = upload_openai_file(proxy.port);
    let owner = stand_in.owner(&file).unwrap();
    stand_in.limit(&owner, 1);
    let unlimit = {
        let world = std::sync::Arc::clone(&stand_in.world);
        let owner = owner.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            world.lock().unwrap().limited.remove(&owner);
        })
    };
    let reply = post_json(
        proxy.port,
        "/openai/v1/chat/completions",
        &chat_with_file(&file, "q"),
    );
    unlimit.join().unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(served_by(&reply, &KEYS), owner);
}

#[test]
fn ids_of_two_keys_in_one_request_get_a_clear_409() {
    let stand_in = Stateful::start();
    let proxy = start(&stand_in);
    let port = proxy.port;
    let mut files = Vec::new();
    while files.len() < 2 {
        let file = upload_openai_file(port);
        let owner = stand_in.owner(&file).unwrap();
        if files.iter().all(|(_, o): &(String, String)| *o != owner) {
            files.push((file, owner));
        }
    }
    let before = stand_in.mock.count();
    let body = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": [
        {"type": "file", "file": {"file_id": files[0].0}},
        {"type": "file", "file": {"file_id": files[1].0}}
    ]}]});
    let reply = post_json(port, "/openai/v1/chat/completions", &body);
    assert_eq!(reply.status, 409, "{}", reply.text());
    let text = reply.json_text();
    for (file, owner) in &files {
        assert!(
            text.contains(file.as_str()) && text.contains(&mask(owner)),
            "{text}"
        );
    }
    assert_eq!(stand_in.mock.count(), before, "nothing was sent upstream");
}

#[test]
fn learned_ids_survive_a_restart_with_state_file() {
    let stand_in = Stateful::start();
    let dir = TempDir::new();
    let state = dir.0.join("state");
    let builder = proxy_to(&stand_in.url(), &KEYS, &[]).env("STATE_FILE", state.to_str().unwrap());
    let mut first = builder.start();
    let file = upload_openai_file(first.port);
    let owner = stand_in.owner(&file).unwrap();
    first.signal("TERM");
    assert!(
        first
            .wait_exit(Duration::from_secs(10))
            .is_some_and(|s| s.success())
    );
    let text = std::fs::read_to_string(&state).expect("state file");
    assert!(text.contains(&file), "{text}");
    for key in KEYS {
        assert!(!text.contains(key), "the state file names a key");
    }
    let second = builder.start();
    for turn in 0..3 {
        let reply = post_json(
            second.port,
            "/openai/v1/chat/completions",
            &chat_with_file(&file, &turn.to_string()),
        );
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(served_by(&reply, &KEYS), owner);
    }
    let lines = second.request_lines(3);
    assert!(
        lines
            .iter()
            .all(|l| l.contains("attempts=1") && l.contains("pin=resource")),
        "{lines:#?}"
    );
}

fn turn_body(name: &str, later: &[&str]) -> Value {
    let mut messages = vec![
        json!({"role": "system", "content": "You are terse."}),
        json!({"role": "user", "content": format!("Hello, I am {name}.")}),
    ];
    for (i, text) in later.iter().enumerate() {
        let role = if i % 2 == 0 { "assistant" } else { "user" };
        messages.push(json!({"role": role, "content": text}));
    }
    json!({"model": "gpt-4o", "messages": messages})
}

#[test]
fn a_conversation_stays_on_its_key_and_moves_when_that_key_is_limited() {
    let stand_in = Stateful::start();
    let proxy = start(&stand_in);
    let port = proxy.port;
    let first = post_json(port, "/openai/v1/chat/completions", &turn_body("Ada", &[]));
    let home = served_by(&first, &KEYS);
    let mut history: Vec<String> = Vec::new();
    for turn in 0..6 {
        history.push(format!("answer {turn}"));
        history.push(format!("question {turn}"));
        let refs: Vec<&str> = history.iter().map(String::as_str).collect();
        let reply = post_json(
            port,
            "/openai/v1/chat/completions",
            &turn_body("Ada", &refs),
        );
        assert_eq!(reply.status, 200);
        assert_eq!(served_by(&reply, &KEYS), home, "turn {turn}");
        assert!(
            reply.text().contains("\"cached_tokens\":")
                && !reply.text().contains("\"cached_tokens\":0"),
            "turn {turn} found no cache: {}",
            reply.text()
        );
    }
    assert_eq!(
        metric(
            port,
            r#"keyrelay_affinity_total{provider="openai",kind="session",outcome="hit"}"#
        ),
        6
    );
    stand_in.limit(home, 60);
    history.push("answer 6".into());
    history.push("question 6".into());
    let refs: Vec<&str> = history.iter().map(String::as_str).collect();
    let moved = post_json(
        port,
        "/openai/v1/chat/completions",
        &turn_body("Ada", &refs),
    );
    assert_eq!(
        moved.status, 200,
        "affinity never turns an answerable request into a 429"
    );
    let new_home = served_by(&moved, &KEYS);
    assert_ne!(new_home, home);
    stand_in.unlimit(home);
    history.push("answer 7".into());
    history.push("question 7".into());
    let refs: Vec<&str> = history.iter().map(String::as_str).collect();
    let after = post_json(
        port,
        "/openai/v1/chat/completions",
        &turn_body("Ada", &refs),
    );
    assert_eq!(
        served_by(&after, &KEYS),
        new_home,
        "the conversation moved with it"
    );
    assert_eq!(
        metric(
            port,
            r#"keyrelay_affinity_total{provider="openai",kind="session",outcome="moved"}"#
        ),
        1
    );
    // The first turn, six pinned, the moved one and the one after it.
    let lines = proxy.request_lines_with(9, "/chat/completions");
    assert_eq!(lines.len(), 9, "{lines:#?}");
    assert_eq!(
        lines.iter().filter(|l| l.contains("pin=session")).count(),
        7,
        "{lines:#?}"
    );
}

#[test]
fn first_turns_and_identical_requests_still_spread_and_session_affinity_can_be_turned_off() {
    let stand_in = Stateful::start();
    let proxy = start(&stand_in);
    let mut counts = [0; 3];
    for _ in 0..9 {
        let reply = post_json(
            proxy.port,
            "/openai/v1/chat/completions",
            &turn_body("Same", &[]),
        );
        counts[KEYS
            .iter()
            .position(|k| *k == served_by(&reply, &KEYS))
            .unwrap()] += 1;
    }
    assert_eq!(counts, [3, 3, 3], "identical first turns rotate");
    drop(proxy);
    let off = proxy_to(&stand_in.url(), &KEYS, &[])
        .env("SESSION_AFFINITY", "off")
        .start();
    let mut served = Vec::new();
    for turn in 0..6 {
        let later = ["answer", "question"].repeat(turn + 1);
        let reply = post_json(
            off.port,
            "/openai/v1/chat/completions",
            &turn_body("Off", &later),
        );
        served.push(served_by(&reply, &KEYS));
    }
    let distinct: std::collections::HashSet<_> = served.iter().collect();
    assert_eq!(distinct.len(), 3, "plain round robin when off: {served:?}");
}

/// A pinned later turn takes no round-robin ticket: with 3 keys, new conversations go to the
/// keys in turn however many later turns of other conversations come in between (taking one
/// per turn, 0, 1, 2, ... later turns would shift the next new conversation by as many keys, and
/// new conversations would pile up on some keys: the prompt-cache bench saw 1.36x a fair share).
#[test]
fn later_turns_do_not_move_the_round_robin_for_new_conversations() {
    let stand_in = Stateful::start();
    let proxy = start(&stand_in);
    let mut homes = Vec::new();
    for (conversation, later_turns) in ["Ana", "Bo", "Cy", "Di", "Ed", "Flo"]
        .iter()
        .zip([1, 2, 0, 1, 2, 1])
    {
        let first = post_json(
            proxy.port,
            "/openai/v1/chat/completions",
            &turn_body(conversation, &[]),
        );
        let home = served_by(&first, &KEYS);
        homes.push(home);
        let mut history: Vec<String> = Vec::new();
        for turn in 0..later_turns {
            history.push(format!("answer {turn}"));
            history.push(format!("question {turn}"));
            let refs: Vec<&str> = history.iter().map(String::as_str).collect();
            let reply = post_json(
                proxy.port,
                "/openai/v1/chat/completions",
                &turn_body(conversation, &refs),
            );
            assert_eq!(
                served_by(&reply, &KEYS),
                home,
                "{conversation}, turn {turn}"
            );
        }
    }
    let order: Vec<usize> = homes
        .iter()
        .map(|home| KEYS.iter().position(|k| k == home).unwrap())
        .collect();
    let start = order[0];
    let round_robin: Vec<usize> = (0..6).map(|i| (start + i) % 3).collect();
    assert_eq!(
        order, round_robin,
        "new conversations take the keys in turn"
    );
}

#[test]
fn no_403_about_an_object_a_region_or_something_unknown_benches_a_healthy_key_for_long() {
    let stand_in = Stateful::start();
    let proxy = proxy_to(&stand_in.url(), &KEYS, &[])
        .env("COOLDOWN_SECS", "60")
        .start();
    let port = proxy.port;
    let plain = || {
        post_json(
            port,
            "/openai/v1/chat/completions",
            &json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}),
        )
    };
    // A region block: the same for every key; relayed, nothing benched, one WARN.
    let region = r#"{"error":{"code":"unsupported_country_region_territory","message":"Country, region, or territory not supported","param":null,"type":"request_forbidden"}}"#;
    for key in KEYS {
        stand_in.forbid(key, region);
    }
    let reply = plain();
    assert_eq!(reply.status, 403, "{}", reply.text());
    assert!(
        reply
            .text()
            .contains("unsupported_country_region_territory")
    );
    assert!(all_ready(port, "openai"));
    assert!(proxy.wait_log(Duration::from_secs(5), |lines| {
        lines
            .iter()
            .any(|l| l.contains("WARN") && l.contains("region"))
    }));
    // An unknown 403 from every key: relayed, nothing benched.
    let unknown = r#"{"error":{"message":"Forbidden","type":"invalid_request_error","param":null,"code":null}}"#;
    for key in KEYS {
        stand_in.forbid(key, unknown);
    }
    assert_eq!(plain().status, 403);
    assert!(all_ready(port, "openai"), "{}", status(port));
    // An unknown 403 from one key while the others serve: that key sits out briefly (a
    // cooldown, never the 30-minute bench of an invalid key).
    stand_in.world.lock().unwrap().forbidden.clear();
    stand_in.forbid(A, unknown);
    for _ in 0..3 {
        assert_eq!(plain().status, 200);
    }
    let status = api::status(port);
    let key_a = &provider(&status, "openai")["keys"][0];
    assert_eq!(key_a["state"], "cooling", "{status}");
    // A leaked key is about the key: benched as invalid.
    stand_in.world.lock().unwrap().forbidden.clear();
    let leaked = r#"{"error":{"code":403,"message":"Your API key was reported as leaked. Please use another API key.","status":"PERMISSION_DENIED"}}"#;
    stand_in.forbid(B, leaked);
    let reset = send(port, &Req::post("/status/keys/openai/1/reset", b""));
    assert_eq!(reset.status, 200);
    for _ in 0..3 {
        assert_eq!(plain().status, 200);
    }
    let status = api::status(port);
    assert_eq!(
        provider(&status, "openai")["keys"][1]["state"],
        "benched_invalid",
        "{status}"
    );
}

#[test]
fn a_model_one_key_cannot_use_benches_that_key_for_that_model_only() {
    let stand_in = Stateful::start();
    stand_in.deny_model(A, "gpt-special");
    let proxy = start(&stand_in);
    let port = proxy.port;
    let ask = |model: &str| {
        post_json(
            port,
            "/openai/v1/chat/completions",
            &json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}),
        )
    };
    for _ in 0..6 {
        let reply = ask("gpt-special");
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_ne!(served_by(&reply, &KEYS), A);
    }
    let status = api::status(port);
    let key_a = &provider(&status, "openai")["keys"][0];
    assert_eq!(key_a["no_access"], json!(["gpt-special"]), "{status}");
    assert_eq!(key_a["state"], "ready", "other models still go to it");
    let calls_to_a = stand_in.calls(A).len();
    assert_eq!(
        calls_to_a, 1,
        "A was asked once, then skipped for that model"
    );
    let mut other = Vec::new();
    for _ in 0..3 {
        other.push(served_by(&ask("gpt-4o"), &KEYS));
    }
    assert!(other.contains(&A), "{other:?}");
    // A model no key can use: the last answer is relayed and nothing is benched.
    for key in KEYS {
        stand_in.deny_model(key, "gpt-nobody");
    }
    let reply = ask("gpt-nobody");
    assert_eq!(reply.status, 404, "{}", reply.text());
    assert!(reply.text().contains("model_not_found"));
    let status = api::status(port);
    for key in provider(&status, "openai")["keys"].as_array().unwrap() {
        assert!(
            !key["no_access"].to_string().contains("gpt-nobody"),
            "{status}"
        );
    }
}

// ---- Regressions from the review of issue 19 ----

#[test]
fn an_owner_answering_429_with_retry_after_zero_gets_a_429_not_a_loop() {
    let stand_in = Stateful::start();
    let proxy = start(&stand_in);
    let file = upload_openai_file(proxy.port);
    let owner = stand_in.owner(&file).unwrap();
    stand_in.limit(&owner, 0);
    let before = stand_in.mock.count();
    let reply = post_json(
        proxy.port,
        "/openai/v1/chat/completions",
        &chat_with_file(&file, "q"),
    );
    assert_eq!(reply.status, 429, "{}", reply.text());
    assert!(reply.retry_after() >= 1);
    assert_eq!(
        stand_in.mock.count() - before,
        1,
        "the owner was asked once"
    );
}

#[test]
fn tool_and_schema_names_that_look_like_ids_pin_nothing() {
    let stand_in = Stateful::start();
    let proxy = proxy_to(&stand_in.url(), &KEYS, &[])
        .env("PROVIDERS", "anthropic")
        .env("ANTHROPIC_BASE_URL", &stand_in.url())
        .env("ANTHROPIC_API_KEYS", &KEYS.join(","))
        .start();
    let body = json!({"model": "claude-x", "max_tokens": 16,
        "tools": [{"name": "file_read", "input_schema": {"type": "object"}}, {"name": "msgbatch_status", "input_schema": {"type": "object"}}],
        "messages": [{"role": "user", "content": "read it"}]});
    let mut served = std::collections::HashSet::new();
    for _ in 0..6 {
        let reply = post_json(proxy.port, "/anthropic/v1/messages", &body);
        assert_eq!(reply.status, 200, "{}", reply.text());
        served.insert(served_by(&reply, &KEYS));
    }
    assert_eq!(served.len(), 3, "tool names pinned requests to {served:?}");
    let lines = proxy.request_lines(6);
    assert!(
        !lines.iter().any(|l| l.contains("pin=resource")),
        "{lines:#?}"
    );
}

#[test]
fn looking_for_an_object_while_its_owner_cools_answers_429_not_no_such_object() {
    let stand_in = Stateful::start();
    let file = "file-MadeElsewhere0042";
    stand_in.give(C, file);
    stand_in.limit(C, 30);
    let proxy = start(&stand_in);
    for _ in 0..2 {
        let reply = post_json(
            proxy.port,
            "/openai/v1/chat/completions",
            &chat_with_file(file, "q"),
        );
        assert_eq!(reply.status, 429, "{}", reply.text());
    }
}

#[test]
fn a_deleted_object_gets_its_owners_not_found_even_with_one_key() {
    let stand_in = Stateful::start();
    let proxy = proxy_to(&stand_in.url(), &[A], &[]).start();
    let file = upload_openai_file(proxy.port);
    stand_in.world.lock().unwrap().owners.remove(&file);
    let reply = get(proxy.port, &format!("/openai/v1/files/{file}"));
    assert_eq!(reply.status, 404, "{}", reply.text());
    assert!(
        reply.text().contains("No such File object"),
        "{}",
        reply.text()
    );
}

#[test]
fn an_upload_session_opens_the_upload_endpoint_only() {
    let stand_in = Stateful::start();
    let proxy = proxy_to(&stand_in.url(), &[], &GEMINI_KEYS)
        .env("PROXY_API_KEYS", "tok-upload-client-01")
        .start();
    let started = send(
        proxy.port,
        &Req::post("/gemini/upload/v1beta/files", br#"{"file":{}}"#)
            .header("x-goog-api-key", "tok-upload-client-01")
            .header("x-goog-upload-protocol", "resumable")
            .header("x-goog-upload-command", "start"),
    );
    assert_eq!(started.status, 200, "{}", started.text());
    let url = started.header("x-goog-upload-url").unwrap().to_string();
    let query = url.split_once('?').unwrap().1.to_string();
    for path in [
        format!("/gemini/upload/../v1beta/models/m:generateContent?{query}"),
        format!("/gemini/upload/%2e%2e/v1beta/models/m:generateContent?{query}"),
        format!("/gemini/v1beta/models/m:generateContent?{query}"),
    ] {
        let reply = send(proxy.port, &Req::post(&path, b"{}"));
        assert_eq!(reply.status, 401, "{path}: {}", reply.text());
    }
    let get_it = send(
        proxy.port,
        &Req::get(&format!("/gemini/upload/v1beta/files?{query}")),
    );
    assert_eq!(get_it.status, 401, "only POST and PUT send bytes");
    let bytes = send(
        proxy.port,
        &Req::post(&format!("/gemini/upload/v1beta/files?{query}"), b"data")
            .header("x-goog-upload-command", "upload, finalize"),
    );
    assert_eq!(bytes.status, 200, "{}", bytes.text());
}
