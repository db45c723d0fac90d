//! JSON helpers for tests that talk to the providers' APIs through keyrelay: posting JSON,
//! reading /status and /metrics, and the file-then-use flow.

use serde_json::{Value, json};

use super::http::{Reply, Req, get, send};
use super::mask;

pub fn post_json(port: u16, path: &str, body: &Value) -> Reply {
    send(
        port,
        &Req::post(path, body.to_string().as_bytes()).header("content-type", "application/json"),
    )
}

pub fn parsed(reply: &Reply) -> Value {
    serde_json::from_slice(&reply.body)
        .unwrap_or_else(|_| panic!("not JSON ({}): {}", reply.status, reply.text()))
}

pub fn status(port: u16) -> Value {
    parsed(&get(port, "/status"))
}

pub fn provider<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no provider {name}: {status}"))
}

/// Every key of `name` is ready (nothing benched, nothing disabled).
pub fn all_ready(port: u16, name: &str) -> bool {
    let status = status(port);
    provider(&status, name)["keys"]
        .as_array()
        .unwrap()
        .iter()
        .all(|k| k["state"] == "ready" && k["cooldowns"].as_array().unwrap().is_empty())
}

/// The key (of `keys`) whose mask is in the answer's text ("answer from <mask>").
pub fn served_by<'a>(reply: &Reply, keys: &[&'a str]) -> &'a str {
    let text = reply.text();
    keys.iter()
        .find(|k| text.contains(&mask(k)))
        .unwrap_or_else(|| panic!("no key named in {} {text}", reply.status))
}

pub fn metric(port: u16, line_start: &str) -> u64 {
    let text = get(port, "/metrics").text();
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {line_start} in\n{text}"))
}

pub fn upload_openai_file(port: u16) -> String {
    let reply = send(
        port,
        &Req::post(
            "/openai/v1/files",
            b"--boundary\r\n{\"a\":1}\r\n--boundary--\r\n",
        )
        .header("content-type", "multipart/form-data; boundary=boundary"),
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
    parsed(&reply)["id"].as_str().unwrap().to_string()
}

pub fn chat_with_file(file: &str, question: &str) -> Value {
    json!({"model": "gpt-4o", "messages": [{"role": "user", "content": [
        {"type": "file", "file": {"file_id": file}},
        {"type": "text", "text": question}
    ]}]})
}
