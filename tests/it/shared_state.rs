//! Many instances, one pool (issue 20): key state shared through a real Redis. A bench, a
//! disable, a learned file and a conversation's key made on one instance hold on the others; a
//! lost or frozen Redis degrades service and never stops it. Needs redis-server (.ci/run
//! installs it); one test also needs nginx.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::api::{
    self as api, chat_with_file, parsed, post_json, provider, served_by, upload_openai_file,
};
use crate::support::http::{Req, get, key_state, send};
use crate::support::mock::{Mock, Reply};
use crate::support::nginx::start_nginx;
use crate::support::proxy::{Proxy, ProxyBuilder, proxy_to};
use crate::support::redis::Redis;
use crate::support::stateful::Stateful;
use crate::support::wait_until;

const K1: &str = "sk-shared-key-00000001";
const K2: &str = "sk-shared-key-00000002";
const K3: &str = "sk-shared-key-00000003";
const KEYS: [&str; 3] = [K1, K2, K3];

/// An instance on `redis`, once it says the store is up.
fn instance(redis: &Redis, upstream: &str) -> Proxy {
    on_redis(proxy_to(upstream, &KEYS, &[]), redis)
}

/// `builder`'s instance on `redis`, once it says the store is up.
fn on_redis(builder: ProxyBuilder, redis: &Redis) -> Proxy {
    let proxy = builder.env("SHARED_STATE_URL", &redis.url()).start();
    assert!(
        wait_until(Duration::from_secs(10), || shared_up(proxy.port)),
        "shared state never came up: {}",
        proxy.log_text()
    );
    proxy
}

fn shared_up(port: u16) -> bool {
    api::status(port)["shared_state"]["state"] == "up"
}

fn chat(port: u16) -> crate::support::http::Reply {
    post_json(
        port,
        "/openai/v1/chat/completions",
        &json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}),
    )
}

#[test]
#[ignore = "needs redis-server: `bash .ci/run` installs it and runs the ignored tests too"]
fn a_429_on_one_instance_benches_the_key_on_the_others() {
    let redis = Redis::start();
    let mock = Mock::start(|r| {
        match r.key() {
        K1 => Reply::json(429, r#"{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}"#)
            .header("retry-after", "60"),
        _ => Reply::ok_json(),
    }
    });
    let a = instance(&redis, &mock.url());
    let b = instance(&redis, &mock.url());
    // A's first ticket starts at K1: one 429, then K2 serves.
    assert_eq!(get(a.port, "/openai/v1/models").status, 200);
    let started = Instant::now();
    assert!(
        wait_until(Duration::from_secs(5), || key_state(b.port, 1) == "cooling"),
        "B never heard of A's bench: {}",
        get(b.port, "/status").text()
    );
    let heard = started.elapsed();
    for _ in 0..9 {
        assert_eq!(get(b.port, "/openai/v1/models").status, 200);
    }
    let k1_uses = mock.keys().iter().filter(|k| *k == K1).count();
    assert_eq!(
        k1_uses,
        1,
        "only A's first attempt used K1: {:?}",
        mock.keys()
    );
    assert!(heard < Duration::from_secs(2), "took {heard:?}");
}

#[test]
#[ignore = "needs redis-server: `bash .ci/run` installs it and runs the ignored tests too"]
fn a_disable_through_one_instance_holds_on_the_other() {
    let redis = Redis::start();
    let mock = Mock::ok();
    let a = instance(&redis, &mock.url());
    let b = instance(&redis, &mock.url());
    let done = send(a.port, &Req::post("/status/keys/openai/2/disable", b""));
    assert_eq!(done.status, 200, "{}", done.text());
    assert!(wait_until(Duration::from_secs(5), || key_state(b.port, 2)
        == "disabled"));
    let before = mock.count();
    for _ in 0..6 {
        assert_eq!(get(b.port, "/openai/v1/models").status, 200);
    }
    assert!(
        mock.keys()[before..].iter().all(|k| k != K2),
        "{:?}",
        mock.keys()
    );
    assert_eq!(
        send(a.port, &Req::post("/status/keys/openai/2/enable", b"")).status,
        200
    );
    assert!(wait_until(Duration::from_secs(5), || key_state(b.port, 2) == "ready"));
    // A third instance started now reads the state from the store.
    let disabled = send(b.port, &Req::post("/status/keys/openai/3/disable", b""));
    assert_eq!(disabled.status, 200);
    assert!(wait_until(Duration::from_secs(5), || key_state(a.port, 3)
        == "disabled"));
    let c = instance(&redis, &mock.url());
    assert_eq!(key_state(c.port, 3), "disabled");
    // No key text ever reaches Redis.
    let keys = redis.command("KEYS *");
    for key in KEYS {
        assert!(!keys.contains(key), "{keys}");
    }
}

#[test]
#[ignore = "needs redis-server: `bash .ci/run` installs it and runs the ignored tests too"]
fn a_file_uploaded_through_one_instance_is_used_through_the_other_without_trial() {
    let redis = Redis::start();
    let stand_in = Stateful::start();
    let a = instance(&redis, &stand_in.url());
    let b = instance(&redis, &stand_in.url());
    for round in 0..5 {
        let file = upload_openai_file(a.port);
        let owner = stand_in.owner(&file).unwrap();
        // At once, no waiting: the id was written before the upload's answer was relayed.
        let reply = post_json(
            b.port,
            "/openai/v1/chat/completions",
            &chat_with_file(&file, "q"),
        );
        assert_eq!(reply.status, 200, "round {round}: {}", reply.text());
        assert_eq!(served_by(&reply, &KEYS), owner, "round {round}");
    }
    let lines = b.request_lines_with(5, "/chat/completions");
    assert_eq!(lines.len(), 5, "{lines:#?}");
    assert!(
        lines
            .iter()
            .all(|l| l.contains("attempts=1") && l.contains("pin=resource")),
        "{lines:#?}"
    );
}

fn turn(name: &str, later: usize) -> Value {
    let mut messages = vec![json!({"role": "user", "content": format!("I am {name}.")})];
    for i in 0..later {
        let role = if i % 2 == 0 { "assistant" } else { "user" };
        messages.push(json!({"role": role, "content": format!("message {i}")}));
    }
    json!({"model": "gpt-4o", "messages": messages})
}

#[test]
#[ignore = "needs redis-server: `bash .ci/run` installs it and runs the ignored tests too"]
fn a_conversation_started_on_one_instance_keeps_its_key_on_the_other() {
    let redis = Redis::start();
    let stand_in = Stateful::start();
    let a = instance(&redis, &stand_in.url());
    let b = instance(&redis, &stand_in.url());
    for name in ["Ada", "Bob", "Cy"] {
        let first = post_json(a.port, "/openai/v1/chat/completions", &turn(name, 0));
        let home = served_by(&first, &KEYS);
        let expected = provider(&api::status(a.port), "openai")["live_sessions"].clone();
        assert!(wait_until(Duration::from_secs(5), || {
            provider(&api::status(b.port), "openai")["live_sessions"] == expected
        }));
        for later in [2, 4, 6] {
            let port = if later == 4 { a.port } else { b.port };
            let reply = post_json(port, "/openai/v1/chat/completions", &turn(name, later));
            assert_eq!(served_by(&reply, &KEYS), home, "{name} turn {later}");
        }
    }
}

#[test]
#[ignore = "needs redis-server: `bash .ci/run` installs it and runs the ignored tests too"]
fn a_lost_redis_stops_nothing_and_state_flows_again_when_it_returns() {
    let mut redis = Redis::start();
    let stand_in = Stateful::start();
    let a = instance(&redis, &stand_in.url());
    let b = instance(&redis, &stand_in.url());
    let file = upload_openai_file(a.port);
    redis.kill();
    for port in [a.port, b.port] {
        assert!(
            wait_until(Duration::from_secs(5), || !shared_up(port)),
            "/status never said down"
        );
        assert_eq!(get(port, "/health").status, 200);
        for _ in 0..4 {
            assert_eq!(chat(port).status, 200);
        }
        let used = post_json(
            port,
            "/openai/v1/chat/completions",
            &chat_with_file(&file, "q"),
        );
        assert_eq!(used.status, 200, "{}", used.text());
    }
    let status = api::status(a.port);
    assert_eq!(status["shared_state"]["state"], "down", "{status}");
    assert!(status["shared_state"]["since"].is_string());
    assert!(
        a.wait_log(Duration::from_secs(5), |lines| lines
            .iter()
            .any(|l| l.contains("WARN") && l.contains("shared state"))),
        "{}",
        a.log_text()
    );
    // Back, empty: the instances fill it again, and changes flow again.
    redis.restart();
    for port in [a.port, b.port] {
        assert!(wait_until(Duration::from_secs(15), || shared_up(port)));
    }
    assert!(
        wait_until(Duration::from_secs(5), || redis
            .command(&format!("EXISTS keyrelay:i:openai:{file}"))
            .contains(":1")),
        "the store was not filled again"
    );
    let disabled = send(a.port, &Req::post("/status/keys/openai/1/disable", b""));
    assert_eq!(disabled.status, 200);
    assert!(wait_until(Duration::from_secs(5), || key_state(b.port, 1)
        == "disabled"));
    // The WARN line is rate limited: one, not one per attempt.
    let warnings = a
        .log()
        .iter()
        .filter(|l| l.contains("WARN") && l.contains("shared state"))
        .count();
    assert!(warnings <= 2, "{}", a.log_text());
}

#[test]
#[ignore = "needs redis-server: `bash .ci/run` installs it and runs the ignored tests too"]
fn a_frozen_redis_adds_at_most_a_little_to_any_request() {
    let redis = Redis::start();
    let stand_in = Stateful::start();
    let a = instance(&redis, &stand_in.url());
    let file = upload_openai_file(a.port);
    redis.freeze();
    let mut slowest = Duration::ZERO;
    for round in 0..20 {
        let started = Instant::now();
        let reply = match round % 3 {
            0 => chat(a.port),
            1 => post_json(
                a.port,
                "/openai/v1/chat/completions",
                &chat_with_file(&file, "q"),
            ),
            // An upload reveals a new id, which is written before its answer is relayed.
            _ => {
                let id = upload_openai_file(a.port);
                assert!(id.starts_with("file-"));
                get(a.port, "/health")
            }
        };
        assert_eq!(reply.status, 200, "round {round}: {}", reply.text());
        slowest = slowest.max(started.elapsed());
    }
    // Generous: the store's timeout is 20 ms, and a busy 2-core machine adds its own delays.
    assert!(
        slowest < Duration::from_secs(1),
        "slowest request {slowest:?}"
    );
    assert!(wait_until(Duration::from_secs(5), || !shared_up(a.port)));
    redis.thaw();
    assert!(wait_until(Duration::from_secs(15), || shared_up(a.port)));
}

#[test]
#[ignore = "needs redis-server and nginx: `bash .ci/run` installs them and runs the ignored tests too"]
fn behind_nginx_the_file_flow_works_whichever_instance_each_request_lands_on() {
    let redis = Redis::start();
    let stand_in = Stateful::start();
    let a = instance(&redis, &stand_in.url());
    let b = instance(&redis, &stand_in.url());
    let site = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/nginx-instances.conf"
    ))
    .expect("read deploy/nginx-instances.conf");
    assert!(site.contains("server 127.0.0.1:3001;") && site.contains("server 127.0.0.1:3002;"));
    let site = site
        .replace(
            "server 127.0.0.1:3001;",
            &format!("server 127.0.0.1:{};", a.port),
        )
        .replace(
            "server 127.0.0.1:3002;",
            &format!("server 127.0.0.1:{};", b.port),
        );
    let nginx = start_nginx(&site);
    for round in 0..6 {
        let file = upload_openai_file(nginx.port);
        let owner = stand_in.owner(&file).unwrap();
        for use_ in 0..3 {
            let reply = post_json(
                nginx.port,
                "/openai/v1/chat/completions",
                &chat_with_file(&file, "q"),
            );
            assert_eq!(
                reply.status,
                200,
                "round {round} use {use_}: {}",
                reply.text()
            );
            assert_eq!(served_by(&reply, &KEYS), owner);
        }
        let content = get(nginx.port, &format!("/openai/v1/files/{file}/content"));
        assert_eq!(content.status, 200, "{}", content.text());
    }
    // Both instances took part, and nothing was found by trial.
    for instance in [&a, &b] {
        let lines = instance.log();
        assert!(
            lines.iter().any(|l| l.contains("status=200")),
            "an instance got nothing"
        );
        assert!(
            !lines.iter().any(|l| l.contains("found by trying keys")),
            "{}",
            instance.log_text()
        );
    }
    assert_eq!(parsed(&get(nginx.port, "/health"))["status"], "ok");
}

#[test]
#[ignore = "needs redis-server: `bash .ci/run` installs it and runs the ignored tests too"]
fn an_instance_that_restarts_with_an_old_state_file_does_not_undo_the_others() {
    let redis = Redis::start();
    let mock = Mock::ok();
    let dir = crate::support::proxy::TempDir::new();
    let state = dir.0.join("state");
    let with_file = proxy_to(&mock.url(), &KEYS, &[])
        .env("SHARED_STATE_URL", &redis.url())
        .env("STATE_FILE", state.to_str().unwrap());
    let mut a = with_file.start();
    assert!(wait_until(Duration::from_secs(10), || shared_up(a.port)));
    let b = instance(&redis, &mock.url());
    assert_eq!(
        send(a.port, &Req::post("/status/keys/openai/1/disable", b"")).status,
        200
    );
    assert!(wait_until(Duration::from_secs(5), || key_state(b.port, 1)
        == "disabled"));
    a.signal("TERM");
    assert!(a.wait_exit(Duration::from_secs(10)).is_some());
    assert_eq!(
        send(b.port, &Req::post("/status/keys/openai/1/enable", b"")).status,
        200
    );
    let a = with_file.start();
    assert!(wait_until(Duration::from_secs(10), || shared_up(a.port)));
    // A read the store (the word) instead of pushing its file's "disabled" over it.
    assert!(wait_until(Duration::from_secs(5), || key_state(a.port, 1) == "ready"));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(key_state(b.port, 1), "ready");
}

#[test]
#[ignore = "needs redis-server: `bash .ci/run` installs it and runs the ignored tests too"]
fn two_instances_together_stay_within_a_keys_limit() {
    let redis = Redis::start();
    let mock = Mock::ok();
    let limited = |redis: &Redis| {
        let builder = proxy_to(&mock.url(), &[K1], &[]).env("OPENAI_KEY_LIMITS", "*=2/min");
        on_redis(builder, redis)
    };
    let (a, b) = (limited(&redis), limited(&redis));
    assert_eq!(chat(a.port).status, 200);
    assert_eq!(chat(b.port).status, 200);
    // Each instance has counted one; together they have used the key's two.
    let third = chat(b.port);
    assert_eq!(third.status, 429, "{}", third.text());
    assert!((1..=60).contains(&third.retry_after()));
    assert_eq!(chat(a.port).status, 429);
    assert_eq!(mock.count(), 2, "the upstream saw two requests");
}
