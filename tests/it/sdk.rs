//! The official Python SDKs through keyrelay (issue 19): openai's files and Responses chains,
//! google-genai's resumable upload with its file and cached content, anthropic's Files API,
//! each driven by a script in scripts/sdk/ against the stateful stand-in, where every object
//! belongs to the key that made it. The SDKs' own requests must all succeed, and every use of
//! an object must reach its owner at once (one attempt, `pin=resource`). They need the SDKs
//! pinned in scripts/sdk/requirements.txt, installed into target/sdk-venv by
//! scripts/sdk/venv.sh (which .ci/run calls): ignored by plain `cargo test`.
//!
//! The scripts run with a cleared environment, a base URL on 127.0.0.1, no SDK retries, short
//! timeouts, and every proxy variable pointing at a closed local port (127.0.0.1 exempt), so
//! a request meant for the internet fails at once instead of leaving the machine.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::mock::{Mock, Reply};
use crate::support::proxy::{Proxy, TempDir, proxy_to};
use crate::support::stateful::Stateful;
use crate::support::{closed_port, mask};

const OPENAI_KEYS: [&str; 3] = [
    "sk-sdk-openai-key-000001",
    "sk-sdk-openai-key-000002",
    "sk-sdk-openai-key-000003",
];
const GEMINI_KEYS: [&str; 3] = [
    "AIzaSdk-gemini-key-0001",
    "AIzaSdk-gemini-key-0002",
    "AIzaSdk-gemini-key-0003",
];
const ANTHROPIC_KEYS: [&str; 3] = [
    "sk-ant-sdk-key-00000001",
    "sk-ant-sdk-key-00000002",
    "sk-ant-sdk-key-00000003",
];

/// Longest a script may run; it is killed after that. Each SDK request has a 20 s timeout of
/// its own (scripts/sdk/common.py).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(60);

/// keyrelay with three keys for each of openai, gemini and anthropic, all on the stand-in.
fn start(stand_in: &Stateful) -> Proxy {
    proxy_to(&stand_in.url(), &OPENAI_KEYS, &GEMINI_KEYS)
        .env("PROVIDERS", "anthropic")
        .env("ANTHROPIC_BASE_URL", &stand_in.url())
        .env("ANTHROPIC_API_KEYS", &ANTHROPIC_KEYS.join(","))
        .start()
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The venv's Python; a clear panic when scripts/sdk/venv.sh has not made it.
fn python() -> PathBuf {
    let python = repo().join("target/sdk-venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `bash scripts/sdk/venv.sh` (it installs the SDKs pinned in \
         scripts/sdk/requirements.txt; .ci/run does it), or run plain `cargo test`, which skips \
         these tests",
        python.display()
    );
    python
}

/// What a script printed.
struct Script {
    stdout: String,
    stderr: String,
}

impl Script {
    /// The ids the flow made (`ID <id>` lines), in order.
    fn ids(&self) -> Vec<String> {
        self.lines("ID ")
    }

    /// The answers' texts (`ANSWER <step>: <text>` lines), in order.
    fn answers(&self) -> Vec<String> {
        self.lines("ANSWER ")
    }

    fn lines(&self, prefix: &str) -> Vec<String> {
        self.stdout
            .lines()
            .filter_map(|l| l.strip_prefix(prefix))
            .map(str::to_string)
            .collect()
    }
}

fn drain(mut r: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = channel();
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        let _ = tx.send(String::from_utf8_lossy(&buf).into_owned());
    });
    rx
}

/// Runs scripts/sdk/`name` against `proxy` (then `args`) and asserts it succeeded; kills it
/// after [`SCRIPT_TIMEOUT`].
fn run_script(name: &str, proxy: &Proxy, args: &[&str]) -> Script {
    let python = python();
    let home = TempDir::new();
    let nowhere = format!("http://127.0.0.1:{}", closed_port());
    let url = format!("http://127.0.0.1:{}", proxy.port);
    let mut child = Command::new(&python)
        .arg(repo().join("scripts/sdk").join(name))
        .arg(&url)
        .args(args)
        .env_clear()
        .env("HOME", &home.0)
        .env("TMPDIR", &home.0)
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("HTTP_PROXY", &nowhere)
        .env("HTTPS_PROXY", &nowhere)
        .env("ALL_PROXY", &nowhere)
        .env("NO_PROXY", "127.0.0.1,localhost")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", python.display()));
    let stdout = drain(child.stdout.take().expect("piped stdout"));
    let stderr = drain(child.stderr.take().expect("piped stderr"));
    let deadline = Instant::now() + SCRIPT_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the script") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(20));
    };
    let script = Script {
        stdout: stdout
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_default(),
        stderr: stderr
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_default(),
    };
    let report = || {
        format!(
            "stdout:\n{}\nstderr:\n{}\nkeyrelay's log:\n{}",
            script.stdout,
            script.stderr,
            proxy.log_text()
        )
    };
    match status {
        None => panic!("{name} still ran after {SCRIPT_TIMEOUT:?}; {}", report()),
        Some(status) => assert!(status.success(), "{name} failed ({status}); {}", report()),
    }
    script
}

/// The pool key (of `keys`) whose mask the stand-in wrote into `answer` ("answer from <mask>").
fn answered_by<'a>(answer: &str, keys: &[&'a str]) -> &'a str {
    keys.iter()
        .find(|k| answer.contains(&mask(k)))
        .unwrap_or_else(|| panic!("no key named in {answer:?}"))
}

/// Asserts that keyrelay's request lines for `path_part` all went to `owner` in one attempt,
/// and that at least `pinned` of the first `total` lines were chosen by affinity
/// (`pin=resource`).
fn assert_log(proxy: &Proxy, total: usize, path_part: &str, owner: &str, pinned: usize) {
    let lines = proxy.request_lines(total);
    let ours: Vec<&String> = lines.iter().filter(|l| l.contains(path_part)).collect();
    for line in &ours {
        assert!(
            line.contains("status=200")
                && line.contains("attempts=1")
                && line.contains(&format!("key={}", mask(owner))),
            "not straight to the owner {}: {line}\n{lines:#?}",
            mask(owner)
        );
    }
    let pins = lines.iter().filter(|l| l.contains("pin=resource")).count();
    assert!(
        pins >= pinned,
        "{pins} pinned, expected {pinned}: {lines:#?}"
    );
}

/// Asserts that no key but `owner` saw any request.
fn assert_only_owner(stand_in: &Stateful, keys: &[&str], owner: &str) {
    for key in keys.iter().filter(|k| **k != owner) {
        assert!(
            stand_in.calls(key).is_empty(),
            "{} (not the owner) got {:?}",
            mask(key),
            stand_in.calls(key)
        );
    }
}

#[test]
#[ignore = "needs the Python SDKs; .ci/run installs them (scripts/sdk/venv.sh)"]
fn openai_sdk_file_uses_all_reach_the_key_that_uploaded_it() {
    let stand_in = Stateful::start();
    let proxy = start(&stand_in);
    let script = run_script("openai_files.py", &proxy, &[]);
    let ids = script.ids();
    assert_eq!(ids.len(), 1, "{}", script.stdout);
    let owner = stand_in.owner(&ids[0]).expect("the stand-in made the file");
    let answers = script.answers();
    assert_eq!(answers.len(), 6, "{}", script.stdout);
    for answer in &answers {
        assert_eq!(answered_by(answer, &OPENAI_KEYS), owner, "{answer}");
    }
    let chats = stand_in
        .calls(&owner)
        .iter()
        .filter(|c| *c == "POST /v1/chat/completions")
        .count();
    assert_eq!(chats, 6, "{:?}", stand_in.calls(&owner));
    assert_only_owner(&stand_in, &OPENAI_KEYS, &owner);
    assert_log(&proxy, 7, "/openai/v1/chat/completions", &owner, 6);
}

#[test]
#[ignore = "needs the Python SDKs; .ci/run installs them (scripts/sdk/venv.sh)"]
fn openai_sdk_response_chain_streamed_and_whole_stays_on_its_key() {
    let stand_in = Stateful::start();
    let proxy = start(&stand_in);
    let script = run_script("openai_responses.py", &proxy, &[]);
    let ids = script.ids();
    assert_eq!(ids.len(), 6, "{}", script.stdout);
    let owner = stand_in
        .owner(&ids[0])
        .expect("the stand-in made the response");
    for id in &ids {
        assert_eq!(stand_in.owner(id).as_deref(), Some(owner.as_str()), "{id}");
    }
    for answer in script.answers() {
        assert_eq!(answered_by(&answer, &OPENAI_KEYS), owner, "{answer}");
    }
    assert_eq!(
        stand_in.calls(&owner).len(),
        6,
        "{:?}",
        stand_in.calls(&owner)
    );
    assert_only_owner(&stand_in, &OPENAI_KEYS, &owner);
    // The first turn names nothing; the five after it name their previous response.
    assert_log(&proxy, 6, "/openai/v1/responses", &owner, 5);
}

#[test]
#[ignore = "needs the Python SDKs; .ci/run installs them (scripts/sdk/venv.sh)"]
fn gemini_sdk_upload_file_and_cache_stay_on_the_key_that_started_the_upload() {
    // google-genai's own default API version (v1 in 3.6.1).
    gemini_upload_flow(None, &[]);
}

#[test]
#[ignore = "needs the Python SDKs; .ci/run installs them (scripts/sdk/venv.sh)"]
fn gemini_sdk_upload_works_with_access_tokens() {
    // google-genai sends the upload's bytes with no credential at all: the upload id keyrelay
    // handed back must be enough, as it is at Google. v1beta, the REST docs' version.
    gemini_upload_flow(Some(CLIENT_TOKEN), &["v1beta"]);
}

/// The token the scripts send as their API key (scripts/sdk/common.py, CLIENT_KEY).
const CLIENT_TOKEN: &str = "client-key-keyrelay-strips";

fn gemini_upload_flow(token: Option<&str>, args: &[&str]) {
    let stand_in = Stateful::start();
    let mut builder = proxy_to(&stand_in.url(), &OPENAI_KEYS, &GEMINI_KEYS);
    if let Some(token) = token {
        builder = builder.env("PROXY_API_KEYS", token);
    }
    let proxy = builder.start();
    let script = run_script("gemini_upload.py", &proxy, args);
    let ids = script.ids();
    assert_eq!(ids.len(), 2, "{}", script.stdout);
    assert!(
        ids[0].starts_with("files/") && ids[1].starts_with("cachedContents/"),
        "{ids:?}"
    );
    let owner = stand_in.owner(&ids[0]).expect("the stand-in made the file");
    assert_eq!(stand_in.owner(&ids[1]).as_deref(), Some(owner.as_str()));
    let answers = script.answers();
    assert_eq!(answers.len(), 6, "{}", script.stdout);
    for answer in &answers {
        assert_eq!(answered_by(answer, &GEMINI_KEYS), owner, "{answer}");
    }
    // The start, then the bytes at the URL keyrelay handed back: both with the owner's key.
    let calls = stand_in.calls(&owner);
    assert_eq!(
        calls
            .iter()
            .filter(|c| c.starts_with("POST /upload/") && c.ends_with("/files"))
            .count(),
        2,
        "{calls:?}"
    );
    let bytes = stand_in
        .mock
        .requests()
        .into_iter()
        .find(|r| r.url.contains("upload_id="))
        .expect("the bytes reached the stand-in");
    assert_eq!(bytes.body, b"The answer is 42.\n");
    assert_only_owner(&stand_in, &GEMINI_KEYS, &owner);
    // The start; then pinned: the bytes, three uses of the file, the cache's creation, three
    // uses of the cache.
    assert_log(&proxy, 9, "/gemini/", &owner, 8);
}

#[test]
#[ignore = "needs the Python SDKs; .ci/run installs them (scripts/sdk/venv.sh)"]
fn anthropic_sdk_file_uses_all_reach_the_key_that_uploaded_it() {
    let stand_in = Stateful::start();
    let proxy = start(&stand_in);
    let script = run_script("anthropic_files.py", &proxy, &[]);
    let ids = script.ids();
    assert_eq!(ids.len(), 1, "{}", script.stdout);
    let owner = stand_in.owner(&ids[0]).expect("the stand-in made the file");
    let answers = script.answers();
    assert_eq!(answers.len(), 3, "{}", script.stdout);
    for answer in &answers {
        assert_eq!(answered_by(answer, &ANTHROPIC_KEYS), owner, "{answer}");
    }
    assert_only_owner(&stand_in, &ANTHROPIC_KEYS, &owner);
    assert_log(&proxy, 4, "/anthropic/v1/messages", &owner, 3);
}

/// A stream in `provider`'s own shape that the upstream breaks off after two events.
fn breaking_stream(provider: &str) -> Reply {
    let events: &[&str] = match provider {
        "openai" => &[
            r#"data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1796000000,"model":"gpt-4o","choices":[{"index":0,"delta":{"role":"assistant","content":"Hel"},"finish_reason":null}]}"#,
            r#"data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1796000000,"model":"gpt-4o","choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":null}]}"#,
        ],
        "anthropic" => &[
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":3,\"output_tokens\":1}}}",
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}",
        ],
        _ => &[
            r#"data: {"candidates":[{"content":{"parts":[{"text":"Hel"}],"role":"model"},"index":0}],"modelVersion":"gemini-2.5-flash"}"#,
            r#"data: {"candidates":[{"content":{"parts":[{"text":"lo"}],"role":"model"},"index":0}],"modelVersion":"gemini-2.5-flash"}"#,
        ],
    };
    Reply::Chunks {
        content_type: "text/event-stream".to_string(),
        pieces: events
            .iter()
            .map(|e| (Duration::from_millis(20), format!("{e}\n\n").into_bytes()))
            .collect(),
        break_off: true,
    }
}

#[test]
#[ignore = "needs the Python SDKs; .ci/run installs them (scripts/sdk/venv.sh)"]
fn a_broken_stream_makes_every_sdk_raise_keyrelays_message() {
    let mock = Mock::start(|r| {
        let provider = if r.url.contains("/messages") {
            "anthropic"
        } else if r.url.contains("generate") {
            "gemini"
        } else {
            "openai"
        };
        breaking_stream(provider)
    });
    let proxy = proxy_to(&mock.url(), &OPENAI_KEYS, &GEMINI_KEYS)
        .env("PROVIDERS", "anthropic")
        .env("ANTHROPIC_BASE_URL", &mock.url())
        .env("ANTHROPIC_API_KEYS", &ANTHROPIC_KEYS.join(","))
        .start();
    for provider in ["openai", "anthropic", "gemini"] {
        let script = run_script("broken_stream.py", &proxy, &[provider]);
        let raised = script.lines("RAISED ");
        assert_eq!(raised.len(), 1, "{provider}: {}", script.stdout);
        // google-genai 3.6.1 raises too (errors.ServerError 502 UNAVAILABLE with the message),
        // after yielding the chunks that came before.
        println!("{provider}: {}", raised[0]);
        assert!(raised[0].contains("broke off this stream"), "{}", raised[0]);
        assert_eq!(
            script.lines("CHUNKS "),
            ["2"],
            "{provider}: {}",
            script.stdout
        );
    }
}
