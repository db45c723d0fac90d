//! Token usage per key and model (issue 22, part 1): read from every provider's answers,
//! streamed and not, as they are relayed, and shown on /status, /metrics and the log line.

use std::time::Duration;

use serde_json::Value;

use crate::support::api::{self, provider};
use crate::support::http::{Req, get, send};
use crate::support::mask;
use crate::support::mock::{Mock, Recorded, Reply};
use crate::support::proxy::{TempDir, proxy_to};

const KEY: &str = "sk-usage-key-000000001";

fn sse(events: &[&str]) -> Reply {
    Reply::Sse {
        events: events
            .iter()
            .map(|e| format!("{e}\n\n").into_bytes())
            .collect(),
        gap: Duration::from_millis(5),
    }
}

/// Realistic answers, each with its provider's usage.
fn answer(request: &Recorded) -> Reply {
    let stream = String::from_utf8_lossy(&request.body).contains("\"stream\":true")
        || request.url.contains("alt=sse");
    match (request.url.split('?').next().unwrap_or(""), stream) {
        ("/v1/chat/completions", false) => Reply::json(
            200,
            r#"{"id":"chatcmpl-1","object":"chat.completion","model":"gpt-4o","choices":[{"index":0,"message":{"role":"assistant","content":"Hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":100,"completion_tokens":20,"total_tokens":120,"prompt_tokens_details":{"cached_tokens":64},"completion_tokens_details":{"reasoning_tokens":5}}}"#,
        ),
        ("/v1/chat/completions", true) => sse(&[
            r#"data: {"id":"chatcmpl-2","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"Hi"}}],"usage":null}"#,
            r#"data: {"id":"chatcmpl-2","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":50,"completion_tokens":10,"total_tokens":60,"prompt_tokens_details":{"cached_tokens":0}}}"#,
            "data: [DONE]",
        ]),
        ("/v1/responses", true) => sse(&[
            r#"event: response.created
data: {"type":"response.created","response":{"id":"resp_0123456789abcdef","status":"in_progress","usage":null}}"#,
            r#"event: response.completed
data: {"type":"response.completed","response":{"id":"resp_0123456789abcdef","status":"completed","usage":{"input_tokens":300,"input_tokens_details":{"cached_tokens":256},"output_tokens":30,"output_tokens_details":{"reasoning_tokens":20},"total_tokens":330}}}"#,
        ]),
        ("/v1/embeddings", _) => Reply::json(
            200,
            r#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.1,0.2]}],"model":"text-embedding-3-small","usage":{"prompt_tokens":8,"total_tokens":8}}"#,
        ),
        ("/v1/messages", false) => Reply::json(
            200,
            r#"{"id":"msg_1","type":"message","role":"assistant","content":[{"type":"text","text":"Hi"}],"model":"claude-sonnet-4-5","stop_reason":"end_turn","usage":{"input_tokens":20,"cache_creation_input_tokens":0,"cache_read_input_tokens":1800,"output_tokens":40}}"#,
        ),
        ("/v1/messages", true) => sse(&[
            r#"event: message_start
data: {"type":"message_start","message":{"id":"msg_2","type":"message","role":"assistant","content":[],"model":"claude-sonnet-4-5","usage":{"input_tokens":10,"cache_creation_input_tokens":100,"cache_read_input_tokens":0,"output_tokens":1}}}"#,
            r#"event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}"#,
            r#"event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":25}}"#,
            r#"event: message_stop
data: {"type":"message_stop"}"#,
        ]),
        (path, false) if path.contains(":generateContent") => Reply::json(
            200,
            r#"{"candidates":[{"content":{"parts":[{"text":"Hi"}],"role":"model"},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":200,"cachedContentTokenCount":128,"candidatesTokenCount":12,"thoughtsTokenCount":8,"totalTokenCount":220}}"#,
        ),
        (path, true) if path.contains(":streamGenerateContent") => sse(&[
            r#"data: {"candidates":[{"content":{"parts":[{"text":"H"}],"role":"model"}}],"usageMetadata":{"promptTokenCount":70,"totalTokenCount":70}}"#,
            r#"data: {"candidates":[{"content":{"parts":[{"text":"i"}],"role":"model"},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":70,"candidatesTokenCount":4,"totalTokenCount":74}}"#,
        ]),
        _ => Reply::ok_json(),
    }
}

fn spent(status: &Value, provider_name: &str, model: &str) -> Value {
    provider(status, provider_name)["keys"][0]["usage"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["model"] == model)
        .unwrap_or_else(|| panic!("no usage for {model}: {status}"))
        .clone()
}

fn post(port: u16, path: &str, body: &str) {
    let reply = send(
        port,
        &Req::post(path, body.as_bytes()).header("content-type", "application/json"),
    );
    assert_eq!(reply.status, 200, "{path}: {}", reply.text());
}

#[test]
fn usage_from_every_shape_streamed_and_not_reaches_status_metrics_and_the_log() {
    let mock = Mock::start(answer);
    let dir = TempDir::new();
    let state = dir.0.join("state");
    let builder = proxy_to(&mock.url(), &[KEY], &[KEY])
        .env("PROVIDERS", "anthropic")
        .env("ANTHROPIC_BASE_URL", &mock.url())
        .env("ANTHROPIC_API_KEYS", KEY)
        .env("STATE_FILE", state.to_str().unwrap());
    let mut proxy = builder.start();
    let port = proxy.port;
    post(
        port,
        "/openai/v1/chat/completions",
        r#"{"model":"gpt-4o","messages":[{"role":"user","content":"a"}]}"#,
    );
    post(
        port,
        "/openai/v1/chat/completions",
        r#"{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"b"}]}"#,
    );
    post(
        port,
        "/openai/v1/responses",
        r#"{"model":"o4-mini","stream":true,"input":"c"}"#,
    );
    post(
        port,
        "/openai/v1/embeddings",
        r#"{"model":"text-embedding-3-small","input":"d"}"#,
    );
    post(
        port,
        "/anthropic/v1/messages",
        r#"{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":"e"}]}"#,
    );
    post(
        port,
        "/anthropic/v1/messages",
        r#"{"model":"claude-sonnet-4-5","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"f"}]}"#,
    );
    post(
        port,
        "/gemini/v1beta/models/gemini-2.5-flash:generateContent",
        r#"{"contents":[{"parts":[{"text":"g"}]}]}"#,
    );
    post(
        port,
        "/gemini/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
        r#"{"contents":[{"parts":[{"text":"h"}]}]}"#,
    );

    let status = api::status(port);
    let gpt = spent(&status, "openai", "gpt-4o");
    assert_eq!(
        (
            gpt["answers"].as_u64(),
            gpt["input"].as_u64(),
            gpt["cached"].as_u64(),
            gpt["output"].as_u64(),
            gpt["reasoning"].as_u64()
        ),
        (Some(2), Some(150), Some(64), Some(30), Some(5)),
        "{gpt}"
    );
    let responses = spent(&status, "openai", "o4-mini");
    assert_eq!(
        (
            responses["input"].as_u64(),
            responses["cached"].as_u64(),
            responses["output"].as_u64()
        ),
        (Some(300), Some(256), Some(30))
    );
    assert_eq!(
        spent(&status, "openai", "text-embedding-3-small")["input"],
        8
    );
    let claude = spent(&status, "anthropic", "claude-sonnet-4-5");
    // 20 + 1800 cached, and 10 + 100 written to the cache; output 40 and 25.
    assert_eq!(
        (
            claude["input"].as_u64(),
            claude["cached"].as_u64(),
            claude["output"].as_u64()
        ),
        (Some(1930), Some(1800), Some(65)),
        "{claude}"
    );
    let gemini = spent(&status, "gemini", "gemini-2.5-flash");
    assert_eq!(
        (
            gemini["input"].as_u64(),
            gemini["cached"].as_u64(),
            gemini["output"].as_u64()
        ),
        (Some(270), Some(128), Some(24)),
        "{gemini}"
    );
    assert!((gemini["cached_share"].as_f64().unwrap() - 128.0 / 270.0).abs() < 0.01);
    // Attempts are named for what they count.
    assert_eq!(provider(&status, "openai")["keys"][0]["attempts"], 4);

    let metrics = get(port, "/metrics").text();
    let line = format!(
        r#"keyrelay_tokens_total{{provider="anthropic",key="{}",model="claude-sonnet-4-5",kind="cached"}} 1800"#,
        mask(KEY)
    );
    assert!(metrics.contains(&line), "{metrics}");

    let lines = proxy.request_lines_with(8, " POST ");
    assert_eq!(lines.len(), 8, "{lines:#?}");
    assert!(
        lines[0].contains("tokens_in=100 tokens_cached=64 tokens_out=20"),
        "{lines:#?}"
    );
    assert!(lines.iter().all(|l| l.contains("tokens_in=")), "{lines:#?}");

    // The counters survive a restart (STATE_FILE).
    proxy.signal("TERM");
    assert!(proxy.wait_exit(Duration::from_secs(10)).is_some());
    let again = builder.start();
    let status = api::status(again.port);
    assert_eq!(
        spent(&status, "anthropic", "claude-sonnet-4-5")["cached"],
        1800
    );
}
