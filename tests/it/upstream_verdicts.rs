//! How upstream answers are judged and what reaches the client: Gemini's `API_KEY_INVALID` 400,
//! spent balances (429 `insufficient_quota`, 402), the per-model cooldown's top-level `"model"`,
//! pool keys masked in relayed bodies and `Location`, base-URL passwords kept out of every
//! message, blank `PROXY_API_KEYS`, client `key=` stripped by its decoded name, and an
//! unrequested `101 Switching Protocols`.

use std::io::{BufRead, ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc::{Receiver, channel};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use keyrelay::utc::parse_rfc3339;

use crate::support::http::{Conn, Head, Req, body_reader, get, read_until_closed, send};
use crate::support::mask;
use crate::support::mock::{Mock, Reply};
use crate::support::proxy::{TempDir, proxy, proxy_to, write_env};

const GEMINI_FLASH: &str = "/gemini/v1beta/models/gemini-2.0-flash:generateContent";
const CHAT: &str = "/openai/v1/chat/completions";

const GEMINI_KEY_INVALID: &str = r#"{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID","domain":"googleapis.com","metadata":{"service":"generativelanguage.googleapis.com"}}]}}"#;
const GEMINI_BAD_PAYLOAD: &str =
    r#"{"error":{"code":400,"message":"Invalid JSON payload","status":"INVALID_ARGUMENT"}}"#;
const OPENAI_INSUFFICIENT_QUOTA: &str = r#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#;
const OPENAI_PAYMENT_REQUIRED: &str =
    r#"{"error":{"message":"Payment required","type":"billing","code":"payment_required"}}"#;
const OPENAI_RATE_LIMITED: &str = r#"{"error":{"message":"Rate limit reached for requests","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#;

/// The /status entry of the key shown as `mask`: from its `"key"` member to the next key's
/// `{"position":` (or the end), so a field search finds that key's own members first.
fn key_entry(port: u16, mask: &str) -> String {
    let status = get(port, "/status").text();
    let needle = format!(r#""key":"{mask}""#);
    let at = status
        .find(&needle)
        .unwrap_or_else(|| panic!("no key {mask} in /status: {status}"));
    let rest = &status[at..];
    let end = rest.find(r#"{"position":"#).unwrap_or(rest.len());
    rest[..end].to_string()
}

/// The first string member `name` in `entry`; `None` when absent or not a string (e.g. null).
fn string_field(entry: &str, name: &str) -> Option<String> {
    let marker = format!(r#""{name}":""#);
    let at = entry.find(&marker)? + marker.len();
    entry[at..].split('"').next().map(str::to_string)
}

/// The first numeric member `name` in `entry`.
fn number_field(entry: &str, name: &str) -> Option<u64> {
    let marker = format!(r#""{name}":"#);
    let at = entry.find(&marker)? + marker.len();
    let digits: String = entry[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

fn state_of(port: u16, key: &str) -> String {
    let entry = key_entry(port, &mask(key));
    string_field(&entry, "state").unwrap_or_else(|| panic!("no state in {entry}"))
}

/// Waits for a WARN line holding every one of `parts`.
fn wait_warn(proxy: &crate::support::proxy::Proxy, parts: &[&str]) -> bool {
    proxy.wait_log(Duration::from_secs(5), |lines| {
        lines
            .iter()
            .any(|l| l.contains("WARN") && parts.iter().all(|p| l.contains(p)))
    })
}

fn assert_content_length_matches(reply: &crate::support::http::Reply, what: &str) {
    let declared: usize = reply
        .header("content-length")
        .unwrap_or_else(|| panic!("{what}: no Content-Length: {reply:?}"))
        .parse()
        .unwrap_or_else(|_| panic!("{what}: Content-Length not a number: {reply:?}"));
    assert_eq!(declared, reply.body.len(), "{what}: {reply:?}");
    assert_eq!(
        reply.raw_rest.len(),
        declared,
        "{what}: bytes after the head differ from Content-Length"
    );
}

#[test]
fn gemini_api_key_invalid_benches_the_key_and_an_ordinary_400_is_relayed() {
    const KEYS: [&str; 4] = [
        "AIza-verdict-gem-key-0001",
        "AIza-verdict-gem-key-0002",
        "AIza-verdict-gem-key-0003",
        "AIza-verdict-gem-key-0004",
    ];
    const DEAD: &str = KEYS[2];
    let mock = Mock::start(|r| {
        if r.key() == DEAD {
            Reply::json(400, GEMINI_KEY_INVALID)
        } else if String::from_utf8_lossy(&r.body).contains("broken") {
            Reply::json(400, GEMINI_BAD_PAYLOAD)
        } else {
            Reply::json(200, r#"{"candidates":[]}"#)
        }
    });
    let proxy = proxy_to(&mock.url(), &[], &KEYS).start();
    let good = Req::post(GEMINI_FLASH, br#"{"contents":[{"parts":[{"text":"hi"}]}]}"#);
    for i in 0..8 {
        let reply = send(proxy.port, &good);
        assert_eq!(reply.status, 200, "request {i}: {reply:?}");
    }
    let keys = mock.keys();
    let dead_uses = keys.iter().filter(|k| *k == DEAD).count();
    assert_eq!(
        dead_uses, 1,
        "the dead key is tried once, then benched: {keys:?}"
    );
    assert!(
        wait_warn(&proxy, &[&mask(DEAD), "rejected"]),
        "no WARN line with {} and \"rejected\"; log:\n{}",
        mask(DEAD),
        proxy.log_text()
    );
    assert_eq!(state_of(proxy.port, DEAD), "benched_invalid");

    // An ordinary 400 is the client's problem: relayed as is, no retry, the key stays ready.
    let before = mock.count();
    let reply = send(
        proxy.port,
        &Req::post(GEMINI_FLASH, br#"{"contents": broken"#),
    );
    assert_eq!(reply.status, 400, "{reply:?}");
    assert_eq!(reply.text(), GEMINI_BAD_PAYLOAD);
    assert_eq!(mock.count(), before + 1, "an ordinary 400 is not retried");
    let used = mock.last().key().to_string();
    assert_ne!(used, DEAD);
    assert_eq!(state_of(proxy.port, &used), "ready");
    let log = proxy.log_text();
    assert!(KEYS.iter().all(|k| !log.contains(k)), "masks only: {log}");
}

#[test]
fn a_spent_balance_benches_the_key_for_an_hour_as_quota_exhausted() {
    const QUOTA: &str = "sk-verdict-quota-key-0001";
    const PAYMENT: &str = "sk-verdict-quota-key-0002";
    const GOOD: [&str; 2] = ["sk-verdict-quota-key-0003", "sk-verdict-quota-key-0004"];
    let mock = Mock::start(|r| match r.key() {
        QUOTA => Reply::json(429, OPENAI_INSUFFICIENT_QUOTA),
        PAYMENT => Reply::json(402, OPENAI_PAYMENT_REQUIRED),
        _ => Reply::ok_json(),
    });
    let proxy = proxy_to(&mock.url(), &[QUOTA, PAYMENT, GOOD[0], GOOD[1]], &[]).start();
    let chat = Req::post(
        CHAT,
        br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#,
    );
    for i in 0..8 {
        let reply = send(proxy.port, &chat);
        assert_eq!(reply.status, 200, "request {i}: {reply:?}");
    }
    let keys = mock.keys();
    for spent in [QUOTA, PAYMENT] {
        let uses = keys.iter().filter(|k| *k == spent).count();
        assert_eq!(uses, 1, "{spent} tried once, then benched: {keys:?}");
        assert!(
            wait_warn(&proxy, &[&mask(spent), "quota_exhausted"]),
            "no WARN line with {} and \"quota_exhausted\"; log:\n{}",
            mask(spent),
            proxy.log_text()
        );
    }
    let now = SystemTime::now();
    for spent in [QUOTA, PAYMENT] {
        let entry = key_entry(proxy.port, &mask(spent));
        assert_eq!(
            string_field(&entry, "state").as_deref(),
            Some("benched_quota"),
            "{entry}"
        );
        let until = string_field(&entry, "until").unwrap_or_else(|| panic!("no until: {entry}"));
        let until = parse_rfc3339(&until).unwrap_or_else(|| panic!("until {until:?} not RFC 3339"));
        let ahead = until
            .duration_since(now)
            .unwrap_or_else(|_| panic!("until is in the past: {entry}"));
        assert!(
            (Duration::from_secs(50 * 60)..=Duration::from_secs(70 * 60)).contains(&ahead),
            "benched for {ahead:?}, expected about an hour: {entry}"
        );
        assert_eq!(number_field(&entry, "quota_exhausted"), Some(1), "{entry}");
    }
    let metrics = get(proxy.port, "/metrics").text();
    for spent in [QUOTA, PAYMENT] {
        let line = format!(
            r#"keyrelay_upstream_attempts_total{{provider="openai",key="{}",outcome="quota_exhausted"}} 1"#,
            mask(spent)
        );
        assert!(
            metrics.lines().any(|l| l == line),
            "no line {line}:\n{metrics}"
        );
    }

    // A plain rate limit is a cooldown, not a spent balance.
    const LIMITED: &str = "sk-verdict-limit-key-0005";
    const OTHER: &str = "sk-verdict-limit-key-0006";
    let mock = Mock::start(|r| match r.key() {
        LIMITED => Reply::json(429, OPENAI_RATE_LIMITED),
        _ => Reply::ok_json(),
    });
    let proxy = proxy_to(&mock.url(), &[LIMITED, OTHER], &[]).start();
    for _ in 0..2 {
        assert_eq!(get(proxy.port, "/openai/v1/models").status, 200);
    }
    assert!(
        mock.keys().iter().any(|k| k == LIMITED),
        "{:?}",
        mock.keys()
    );
    let entry = key_entry(proxy.port, &mask(LIMITED));
    assert_eq!(
        string_field(&entry, "state").as_deref(),
        Some("cooling"),
        "{entry}"
    );
    assert_eq!(number_field(&entry, "quota_exhausted"), Some(0), "{entry}");
}

#[test]
fn the_per_model_cooldown_reads_the_top_level_model() {
    const KEY: &str = "sk-ant-verdict-key-0001";
    let mock = Mock::start(|_| {
        Reply::json(
            429,
            r#"{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}"#,
        )
        .header("retry-after", "30")
    });
    let proxy = proxy()
        .env("PROVIDERS", "anthropic")
        .env("ANTHROPIC_BASE_URL", &mock.url())
        .env("ANTHROPIC_API_KEYS", KEY)
        .start();
    let body = br#"{"messages":[{"role":"user","content":[{"type":"tool_result","content":{"model":"gpt-3.5"}}]}],"model":"claude-x","max_tokens":5}"#;
    let reply = send(
        proxy.port,
        &Req::post("/anthropic/v1/messages", body).header("anthropic-version", "2023-06-01"),
    );
    assert_eq!(reply.status, 429, "{reply:?}");
    assert_eq!(mock.count(), 1);
    let entry = key_entry(proxy.port, &mask(KEY));
    assert!(
        entry.contains(r#""cooldowns":[{"model":"claude-x","#),
        "cooldown for claude-x expected: {entry}"
    );
    let status = get(proxy.port, "/status").text();
    assert!(!status.contains("gpt-3.5"), "nested model used: {status}");
}

#[test]
fn a_pool_key_quoted_by_the_upstream_never_reaches_the_client() {
    const KEY: &str = "sk-proj-verdict-secret-9a7b";
    let mock = Mock::start(|r| {
        if r.url.starts_with("/v1/missing") {
            Reply::json(
                404,
                &format!(
                    r#"{{"error":{{"message":"No such model for key {KEY}","code":"model_not_found"}}}}"#
                ),
            )
        } else if r.url.starts_with("/v1/redirect") {
            Reply::status(302).header(
                "Location",
                &format!("https://example.invalid/next?key={KEY}"),
            )
        } else {
            Reply::json(
                401,
                &format!(
                    r#"{{"error":{{"message":"Incorrect API key provided: {KEY}. You can find your API key at https://platform.openai.com/account/api-keys.","code":"invalid_api_key"}}}}"#
                ),
            )
        }
    });
    let proxy = proxy_to(&mock.url(), &[KEY], &[]).start();
    let masked = mask(KEY);

    // Relayed answers first: the 401 below benches the only key.
    let missing = get(proxy.port, "/openai/v1/missing");
    assert_eq!(missing.status, 404, "{missing:?}");
    assert!(!missing.text().contains(KEY), "{}", missing.text());
    assert!(missing.text().contains(&masked), "{}", missing.text());
    assert_content_length_matches(&missing, "404");

    let redirect = get(proxy.port, "/openai/v1/redirect");
    assert_eq!(redirect.status, 302, "{redirect:?}");
    assert_eq!(
        redirect.header("location"),
        Some(format!("https://example.invalid/next?key={masked}").as_str()),
        "{redirect:?}"
    );

    let rejected = send(
        proxy.port,
        &Req::post(CHAT, br#"{"model":"gpt-4o-mini","messages":[]}"#),
    );
    assert_eq!(rejected.status, 401, "{rejected:?}");
    assert!(!rejected.text().contains(KEY), "{}", rejected.text());
    assert!(rejected.text().contains(&masked), "{}", rejected.text());
    assert_content_length_matches(&rejected, "401");
    assert_eq!(mock.count(), 3, "each request reached the upstream once");
}

#[test]
fn a_refused_base_url_never_prints_its_password() {
    const KEY: &str = "sk-verdict-userinfo-0001";
    const URL: &str = "https://user:hunter2@api.example.com";
    let out = proxy()
        .env("OPENAI_API_KEYS", KEY)
        .env("OPENAI_BASE_URL", URL)
        .run(&["--check"]);
    assert_eq!(out.status.code(), Some(2), "stderr: {}", out.stderr);
    assert!(out.stderr.contains("OPENAI_BASE_URL"), "{}", out.stderr);
    assert!(!out.stderr.contains("hunter2"), "stderr: {}", out.stderr);
    assert!(!out.stdout.contains("hunter2"), "stdout: {}", out.stdout);

    // The same URL arriving by a SIGHUP reload.
    let mock = Mock::ok();
    let dir = TempDir::new();
    let env_path = write_env(
        &dir,
        &format!("OPENAI_API_KEYS={KEY}\nOPENAI_BASE_URL={}\n", mock.url()),
    );
    let proxy = proxy().env("ENV_FILE", &env_path).start();
    assert_eq!(get(proxy.port, "/openai/v1/models").status, 200);
    write_env(
        &dir,
        &format!("OPENAI_API_KEYS={KEY}\nOPENAI_BASE_URL={URL}\n"),
    );
    proxy.signal("HUP");
    assert!(
        proxy.wait_log(Duration::from_secs(5), |lines| lines
            .iter()
            .any(|l| l.contains("reload refused"))),
        "{}",
        proxy.log_text()
    );
    let lines = proxy.log();
    assert!(
        lines.iter().all(|l| !l.contains("hunter2")),
        "{}",
        proxy.log_text()
    );
    assert_eq!(get(proxy.port, "/openai/v1/models").status, 200);
    assert_eq!(mock.count(), 2, "the running base URL is kept");
}

#[test]
fn blank_proxy_api_keys_refuse_start_up_and_check_counts_tokens() {
    const KEY: &str = "sk-verdict-tokens-0001";
    for blank in [" ", ","] {
        for args in [&[][..], &["--check"][..]] {
            let out = proxy()
                .env("OPENAI_API_KEYS", KEY)
                .env("PROXY_API_KEYS", blank)
                .run(args);
            assert_eq!(
                out.status.code(),
                Some(2),
                "PROXY_API_KEYS={blank:?} {args:?}: stderr {}",
                out.stderr
            );
            assert!(
                out.stderr.contains("PROXY_API_KEYS"),
                "PROXY_API_KEYS={blank:?} {args:?}: {}",
                out.stderr
            );
        }
    }
    let on = proxy()
        .env("OPENAI_API_KEYS", KEY)
        .env("PROXY_API_KEYS", "t1,t2")
        .run(&["--check"]);
    assert_eq!(on.status.code(), Some(0), "stderr: {}", on.stderr);
    assert!(
        on.stdout
            .lines()
            .any(|l| l.trim() == "access control on: 2 PROXY_API_KEYS token(s) configured"),
        "{}",
        on.stdout
    );
    let off = proxy().env("OPENAI_API_KEYS", KEY).run(&["--check"]);
    assert_eq!(off.status.code(), Some(0), "stderr: {}", off.stderr);
    assert!(off.stdout.contains("access control off"), "{}", off.stdout);
}

#[test]
fn a_client_key_in_the_query_is_removed_by_its_decoded_name() {
    const KEY: &str = "AIza-verdict-query-0001";
    let mock = Mock::ok();
    let proxy = proxy_to(&mock.url(), &[], &[KEY]).start();
    for query in [
        "%6Bey=client-token&pageSize=1",
        "k%65y=client-token&pageSize=1",
    ] {
        let reply = get(proxy.port, &format!("/gemini/v1beta/models?{query}"));
        assert_eq!(reply.status, 200, "{query}: {reply:?}");
        let seen = mock.last();
        assert_eq!(seen.url, "/v1beta/models?pageSize=1", "{query}");
        assert_eq!(seen.header("x-goog-api-key"), Some(KEY), "{query}");
        assert!(
            seen.headers
                .iter()
                .all(|(_, v)| !v.contains("client-token")),
            "{query}: {:?}",
            seen.headers
        );
    }
    assert_eq!(mock.count(), 2);
}

/// Bytes the raw upstream writes after its 101 head, as if the protocol had switched.
const AFTER_SWITCH: &str = "RAW-UPGRADED-BYTES";

/// A raw TCP upstream on 127.0.0.1 answering each connection (at most 4, within 30 s) with a
/// `101 Switching Protocols` and a few bytes of the "new protocol"; sends each request head.
fn switching_upstream() -> (u16, Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind raw upstream");
    let port = listener.local_addr().expect("local addr").port();
    listener.set_nonblocking(true).expect("non-blocking");
    let (tx, rx) = channel();
    thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut served = 0;
        while served < 4 && Instant::now() < deadline {
            match listener.accept() {
                Ok((stream, _)) => {
                    served += 1;
                    let _ = tx.send(answer_switching(stream));
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    thread::sleep(Duration::from_millis(10));
                }
                Err(_) => return,
            }
        }
    });
    (port, rx)
}

fn answer_switching(mut stream: TcpStream) -> String {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n{AFTER_SWITCH}"
    );
    let _ = stream.write_all(answer.as_bytes());
    let _ = stream.flush();
    // Hold the connection until the proxy drops it (bounded by the read timeout).
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
    String::from_utf8_lossy(&head).into_owned()
}

#[test]
fn an_unrequested_switch_of_protocols_answers_502() {
    const KEY: &str = "sk-verdict-switch-key-0001";
    let (upstream_port, heads) = switching_upstream();
    let proxy = proxy_to(&format!("http://127.0.0.1:{upstream_port}"), &[KEY], &[]).start();
    let mut conn = Conn::open(proxy.port);
    conn.write(
        &Req::get("/openai/v1/models")
            .header("Connection", "keep-alive")
            .to_bytes(proxy.port),
    );
    // Read the head by hand: the shared reader skips 1xx heads, which would hide a relayed 101.
    let mut status_line = String::new();
    conn.reader
        .read_line(&mut status_line)
        .expect("a status line");
    assert!(
        status_line.starts_with("HTTP/1.1 502 "),
        "expected 502, got {status_line:?}"
    );
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        conn.reader.read_line(&mut line).expect("a header line");
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (n, v) = line.split_once(':').unwrap_or((line, ""));
        headers.push((n.trim().to_string(), v.trim().to_string()));
    }
    let head = Head {
        status: 502,
        headers,
    };
    assert!(head.header("upgrade").is_none(), "{head:?}");
    assert!(
        !head
            .header("connection")
            .unwrap_or("")
            .to_ascii_lowercase()
            .contains("upgrade"),
        "{head:?}"
    );
    let mut body = Vec::new();
    body_reader(&head, &mut conn.reader, false)
        .read_to_end(&mut body)
        .expect("the 502 body");
    let body = String::from_utf8_lossy(&body).into_owned();
    let ct = head.header("content-type").unwrap_or("");
    assert!(ct.contains("json"), "content-type {ct:?}");
    for field in [r#"{"error":{"#, r#""message":"#, r#""type":"#] {
        assert!(
            body.contains(field),
            "OpenAI error shape, {field} missing: {body}"
        );
    }
    assert!(!body.contains(AFTER_SWITCH), "{body}");
    let seen = heads
        .recv_timeout(Duration::from_secs(10))
        .expect("the upstream received the request");
    assert!(seen.starts_with("GET /v1/models "), "{seen:?}");

    // The connection is still plain HTTP (or closed), never a tunnel to the upstream.
    let mut after = conn.reader.buffer().to_vec();
    let stream = conn.reader.get_mut();
    let _ = stream.write_all(&Req::get("/health").to_bytes(proxy.port));
    let (rest, closed) = read_until_closed(stream, Instant::now() + Duration::from_secs(10));
    after.extend_from_slice(&rest);
    let after = String::from_utf8_lossy(&after).into_owned();
    assert!(
        !after.contains(AFTER_SWITCH),
        "upstream bytes relayed: {after:?}"
    );
    if after.is_empty() {
        assert!(closed, "no answer to the next request and no close");
    } else {
        assert!(
            after.starts_with("HTTP/1.1 200 ") && after.contains(r#""status":"ok""#),
            "the next request on the connection: {after:?}"
        );
    }
}
