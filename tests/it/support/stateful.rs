//! A stateful stand-in for OpenAI, Gemini and Anthropic in which every object belongs to the
//! key (the account) that created it, as the real APIs keep them: another key gets the answer
//! each provider gives for an object it does not have (OpenAI 404 `No such File object`, 400
//! `previous_response_not_found`; Gemini 403 PERMISSION_DENIED; Anthropic 404
//! `not_found_error`). A prompt cache per key reports cached tokens the way each provider does:
//! the longest earlier prompt on that key that is a prefix of this one. Routes are the
//! providers' own paths (keyrelay strips its route prefix).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde_json::{Value, json};

use super::mock::{Mock, Recorded, Reply};

/// Everything the stand-in keeps, per key.
#[derive(Default)]
pub struct World {
    /// Object id → the key that created it.
    pub owners: HashMap<String, String>,
    /// Per key: the prompts it has seen (as token lists), newest last.
    pub prompts: HashMap<String, Vec<Vec<String>>>,
    /// Keys whose account cannot use a model: (key, model).
    pub no_access: HashSet<(String, String)>,
    /// Keys that answer 429 with this Retry-After to everything.
    pub limited: HashMap<String, u64>,
    /// Keys whose every answer is a 403 of this body (region blocks and the like).
    pub forbidden: HashMap<String, String>,
    next: u64,
}

impl World {
    fn mint(&mut self, prefix: &str, key: &str) -> String {
        self.next += 1;
        let id = format!("{prefix}{:08x}{}", self.next * 7919, "AbCd");
        self.owners.insert(id.clone(), key.to_string());
        id
    }

    fn owns(&self, key: &str, id: &str) -> bool {
        self.owners.get(id).is_some_and(|owner| owner == key)
    }
}

/// A running stand-in.
pub struct Stateful {
    pub mock: Mock,
    pub world: Arc<Mutex<World>>,
}

impl Stateful {
    pub fn start() -> Stateful {
        let world = Arc::new(Mutex::new(World::default()));
        let base: Arc<OnceLock<String>> = Arc::new(OnceLock::new());
        let (w, b) = (Arc::clone(&world), Arc::clone(&base));
        let mock = Mock::start_closing(move |request| {
            let base = b.get().cloned().unwrap_or_default();
            answer(&mut w.lock().unwrap(), &base, request)
        });
        base.set(mock.url()).unwrap();
        Stateful { mock, world }
    }

    pub fn url(&self) -> String {
        self.mock.url()
    }

    /// The key that owns `id`.
    pub fn owner(&self, id: &str) -> Option<String> {
        self.world.lock().unwrap().owners.get(id).cloned()
    }

    /// Makes `id` belong to `key`, as if created before keyrelay ran.
    pub fn give(&self, key: &str, id: &str) {
        let mut world = self.world.lock().unwrap();
        world.owners.insert(id.to_string(), key.to_string());
    }

    pub fn deny_model(&self, key: &str, model: &str) {
        let mut world = self.world.lock().unwrap();
        world.no_access.insert((key.to_string(), model.to_string()));
    }

    pub fn limit(&self, key: &str, retry_after: u64) {
        self.world
            .lock()
            .unwrap()
            .limited
            .insert(key.to_string(), retry_after);
    }

    pub fn unlimit(&self, key: &str) {
        self.world.lock().unwrap().limited.remove(key);
    }

    pub fn forbid(&self, key: &str, body: &str) {
        self.world
            .lock()
            .unwrap()
            .forbidden
            .insert(key.to_string(), body.to_string());
    }

    /// Requests that reached the stand-in with `key`, by method and path (query left out).
    pub fn calls(&self, key: &str) -> Vec<String> {
        self.mock
            .requests()
            .iter()
            .filter(|r| key_of(r) == key)
            .map(|r| format!("{} {}", r.method, r.url.split('?').next().unwrap_or("")))
            .collect()
    }
}

/// The key a request carries, wherever its provider puts it.
pub fn key_of(request: &Recorded) -> String {
    request
        .key
        .clone()
        .or_else(|| request.header("x-api-key").map(str::to_string))
        .unwrap_or_default()
}

fn json_reply(status: u16, body: Value) -> Reply {
    Reply::json(status, &body.to_string())
}

fn openai_error(status: u16, message: &str, param: Value, code: Value) -> Reply {
    json_reply(
        status,
        json!({"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}),
    )
}

fn gemini_error(status: u16, message: &str, state: &str) -> Reply {
    json_reply(
        status,
        json!({"error": {"code": status, "message": message, "status": state}}),
    )
}

fn anthropic_error(status: u16, kind: &str, message: &str) -> Reply {
    json_reply(
        status,
        json!({"type": "error", "error": {"type": kind, "message": message}}),
    )
}

/// Every string in a JSON value, depth first.
fn strings(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) => out.push(s.clone()),
        Value::Array(items) => items.iter().for_each(|v| strings(v, out)),
        Value::Object(members) => members.values().for_each(|v| strings(v, out)),
        _ => {}
    }
}

/// The string values of every member named one of `names`, at any depth (arrays of strings
/// included): where the APIs read object ids from.
fn named(body: &Value, names: &[&str], out: &mut Vec<String>) {
    match body {
        Value::Array(items) => items.iter().for_each(|v| named(v, names, out)),
        Value::Object(members) => {
            for (name, value) in members {
                if names.contains(&name.as_str()) {
                    strings(value, out);
                } else {
                    named(value, names, out);
                }
            }
        }
        _ => {}
    }
}

/// The text of a prompt as tokens (words), in order: every string under `messages`, `input`,
/// `contents`, `system`, `instructions`, `systemInstruction`.
fn prompt_tokens(body: &Value) -> Vec<String> {
    let mut texts = Vec::new();
    for field in [
        "system",
        "instructions",
        "systemInstruction",
        "messages",
        "input",
        "contents",
    ] {
        if let Some(v) = body.get(field) {
            strings(v, &mut texts);
        }
    }
    texts
        .iter()
        .flat_map(|t| t.split_whitespace().map(str::to_string))
        .collect()
}

/// The cached share of this prompt on `key`: the longest earlier prompt on that key that is a
/// prefix of it (OpenAI's automatic caching, simplified to whole earlier prompts); then
/// remembers this one.
fn cached_tokens(world: &mut World, key: &str, tokens: &[String]) -> usize {
    let seen = world.prompts.entry(key.to_string()).or_default();
    let cached = seen
        .iter()
        .filter(|p| p.len() <= tokens.len() && tokens[..p.len()] == p[..])
        .map(Vec::len)
        .max()
        .unwrap_or(0);
    seen.push(tokens.to_vec());
    if seen.len() > 10_000 {
        seen.remove(0);
    }
    cached
}

fn answer(world: &mut World, base: &str, request: &Recorded) -> Reply {
    let key = key_of(request);
    if let Some(&retry) = world.limited.get(&key) {
        return json_reply(
            429,
            json!({"error": {"message": "Rate limit reached", "type": "requests", "param": null, "code": "rate_limit_exceeded"}}),
        )
        .header("retry-after", &retry.to_string());
    }
    if let Some(body) = world.forbidden.get(&key) {
        return Reply::json(403, body);
    }
    let (path, query) = request.url.split_once('?').unwrap_or((&request.url, ""));
    let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
    let method = request.method.as_str();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match (method, segments.as_slice()) {
        // ---------- Gemini ----------
        // google-genai asks for v1 by default, the REST docs show v1beta: both are served.
        ("POST", ["upload", "v1" | "v1beta", "files"]) => {
            gemini_upload(world, base, request, &key, query)
        }
        ("GET" | "DELETE", ["v1" | "v1beta", "files", name]) if !name.starts_with("file-") => {
            let id = format!("files/{name}");
            if !world.owns(&key, &id) {
                return gemini_error(
                    403,
                    &format!(
                        "You do not have permission to access the File {name} or it may not exist."
                    ),
                    "PERMISSION_DENIED",
                );
            }
            if method == "DELETE" {
                world.owners.remove(&id);
                return Reply::json(200, "{}");
            }
            json_reply(200, gemini_file(base, &id))
        }
        ("POST", ["v1" | "v1beta", "cachedContents"]) => {
            if let Some(denied) = gemini_denied(world, &key, &body) {
                return denied;
            }
            let id = world.mint("cachedContents/cc", &key);
            json_reply(
                200,
                json!({"name": id, "model": body.get("model"), "createTime": "2026-12-07T00:00:00Z", "expireTime": "2026-12-07T01:00:00Z", "usageMetadata": {"totalTokenCount": 4096}}),
            )
        }
        ("POST", ["v1" | "v1beta", "models", call]) if call.contains(":generateContent") => {
            if let Some(denied) = gemini_denied(world, &key, &body) {
                return denied;
            }
            let tokens = prompt_tokens(&body);
            let cached = cached_tokens(world, &key, &tokens);
            let cached = if body.get("cachedContent").is_some() {
                4096
            } else {
                cached
            };
            json_reply(
                200,
                json!({
                    "candidates": [{"content": {"parts": [{"text": format!("answer from {}", super::mask(&key))}], "role": "model"}, "finishReason": "STOP", "index": 0}],
                    "usageMetadata": {"promptTokenCount": tokens.len(), "candidatesTokenCount": 5, "totalTokenCount": tokens.len() + 5, "cachedContentTokenCount": cached},
                    "modelVersion": call.split(':').next().unwrap_or(""),
                    "responseId": "gemini-resp-1"
                }),
            )
        }
        // ---------- OpenAI ----------
        ("POST", ["v1", "files"]) if request.header("x-api-key").is_none() => {
            let id = world.mint("file-", &key);
            json_reply(
                200,
                json!({"id": id, "object": "file", "bytes": request.body.len(), "created_at": 1_796_000_000, "filename": "upload.jsonl", "purpose": "user_data", "status": "processed", "expires_at": null, "status_details": null}),
            )
        }
        ("GET" | "DELETE", ["v1", "files", id, rest @ ..]) if id.starts_with("file-") => {
            if !world.owns(&key, id) {
                return openai_error(
                    404,
                    &format!("No such File object: {id}"),
                    json!("id"),
                    Value::Null,
                );
            }
            match (method, rest) {
                ("DELETE", _) => {
                    world.owners.remove(*id);
                    json_reply(200, json!({"id": id, "object": "file", "deleted": true}))
                }
                (_, ["content"]) => Reply::status(200)
                    .header("content-type", "application/octet-stream")
                    .body(format!("content of {id}").as_bytes()),
                _ => json_reply(
                    200,
                    json!({"id": id, "object": "file", "bytes": 10, "created_at": 1_796_000_000, "filename": "upload.jsonl", "purpose": "user_data"}),
                ),
            }
        }
        ("POST", ["v1", "batches"]) => {
            let input = body["input_file_id"].as_str().unwrap_or("");
            if !world.owns(&key, input) {
                return openai_error(
                    404,
                    &format!("No such File object: {input}"),
                    json!("input_file_id"),
                    Value::Null,
                );
            }
            let id = world.mint("batch_", &key);
            let output = world.mint("file-", &key);
            json_reply(200, batch(&id, input, &output))
        }
        ("GET", ["v1", "batches", id]) => {
            if !world.owns(&key, id) {
                return openai_error(
                    404,
                    &format!("No batch found with id '{id}'."),
                    Value::Null,
                    Value::Null,
                );
            }
            let output = world
                .owners
                .iter()
                .filter(|(i, k)| i.starts_with("file-") && **k == key)
                .map(|(i, _)| i.clone())
                .max()
                .unwrap_or_default();
            json_reply(200, batch(id, "file-input", &output))
        }
        ("POST", ["v1", "chat", "completions"]) => openai_chat(world, &key, &body),
        ("POST", ["v1", "responses"]) => openai_response(world, &key, &body),
        ("GET", ["v1", "responses", id]) => {
            if !world.owns(&key, id) {
                return openai_error(
                    404,
                    &format!("Response with id '{id}' not found."),
                    Value::Null,
                    Value::Null,
                );
            }
            json_reply(200, response_object(id, "completed", "again", 1, 0))
        }
        // ---------- Anthropic ----------
        ("POST", ["v1", "files"]) => {
            let id = world.mint("file_011", &key);
            json_reply(
                200,
                json!({"id": id, "type": "file", "filename": "doc.txt", "mime_type": "text/plain", "size_bytes": request.body.len(), "created_at": "2026-12-07T00:00:00Z", "downloadable": false}),
            )
        }
        ("POST", ["v1", "messages"]) => anthropic_message(world, &key, &body),
        ("GET", ["v1", "models"]) => json_reply(200, json!({"object": "list", "data": []})),
        // Anything else is a route the stand-in does not know: say so, as the providers do,
        // so a test that drifts from the real paths fails loudly.
        _ => openai_error(
            404,
            &format!("Unknown request URL: {method} {path}"),
            Value::Null,
            json!("unknown_url"),
        ),
    }
}

fn batch(id: &str, input: &str, output: &str) -> Value {
    json!({"id": id, "object": "batch", "endpoint": "/v1/chat/completions", "input_file_id": input, "completion_window": "24h", "status": "completed", "output_file_id": output, "error_file_id": null, "created_at": 1_796_000_000, "request_counts": {"total": 1, "completed": 1, "failed": 0}})
}

fn model_denied(world: &World, key: &str, model: &str) -> bool {
    world
        .no_access
        .contains(&(key.to_string(), model.to_string()))
        || model.starts_with("ft:") && !world.owns(key, model)
}

fn openai_chat(world: &mut World, key: &str, body: &Value) -> Reply {
    let model = body["model"].as_str().unwrap_or("");
    if model_denied(world, key, model) {
        return openai_error(
            404,
            &format!("The model `{model}` does not exist or you do not have access to it."),
            Value::Null,
            json!("model_not_found"),
        );
    }
    let mut ids = Vec::new();
    named(body, &["file_id", "vector_store_ids"], &mut ids);
    if let Some(missing) = ids.iter().find(|s| !world.owns(key, s)) {
        return openai_error(
            404,
            &format!("No such File object: {missing}"),
            json!("file_id"),
            Value::Null,
        );
    }
    let tokens = prompt_tokens(body);
    let cached = cached_tokens(world, key, &tokens);
    json_reply(
        200,
        json!({
            "id": "chatcmpl-stand-in", "object": "chat.completion", "created": 1_796_000_000, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": format!("answer from {}", super::mask(key))}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": tokens.len(), "completion_tokens": 5, "total_tokens": tokens.len() + 5, "prompt_tokens_details": {"cached_tokens": cached}}
        }),
    )
}

fn response_object(id: &str, status: &str, text: &str, input: usize, cached: usize) -> Value {
    json!({
        "id": id, "object": "response", "created_at": 1_796_000_000, "status": status, "model": "gpt-4o",
        "output": [{"type": "message", "id": "msg_stand_in", "status": "completed", "role": "assistant", "content": [{"type": "output_text", "text": text, "annotations": []}]}],
        "parallel_tool_calls": true, "tool_choice": "auto", "tools": [], "previous_response_id": null,
        "usage": {"input_tokens": input, "input_tokens_details": {"cached_tokens": cached}, "output_tokens": 5, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": input + 5}
    })
}

fn openai_response(world: &mut World, key: &str, body: &Value) -> Reply {
    if let Some(previous) = body["previous_response_id"].as_str()
        && !world.owns(key, previous)
    {
        return openai_error(
            400,
            &format!("Previous response with id '{previous}' not found."),
            json!("previous_response_id"),
            json!("previous_response_not_found"),
        );
    }
    let tokens = prompt_tokens(body);
    let cached = cached_tokens(world, key, &tokens);
    let id = world.mint("resp_", key);
    let text = format!("answer from {}", super::mask(key));
    if body["stream"].as_bool() != Some(true) {
        return json_reply(
            200,
            response_object(&id, "completed", &text, tokens.len(), cached),
        );
    }
    let event = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n").into_bytes();
    let mut created = response_object(&id, "in_progress", "", tokens.len(), 0);
    created["output"] = json!([]);
    let events = vec![
        event(
            "response.created",
            json!({"type": "response.created", "sequence_number": 0, "response": created}),
        ),
        event(
            "response.output_text.delta",
            json!({"type": "response.output_text.delta", "sequence_number": 1, "item_id": "msg_stand_in", "output_index": 0, "content_index": 0, "delta": text}),
        ),
        event(
            "response.completed",
            json!({"type": "response.completed", "sequence_number": 2, "response": response_object(&id, "completed", &text, tokens.len(), cached)}),
        ),
    ];
    Reply::Sse {
        events,
        gap: Duration::from_millis(5),
    }
}

fn anthropic_message(world: &mut World, key: &str, body: &Value) -> Reply {
    let mut ids = Vec::new();
    named(body, &["file_id"], &mut ids);
    if let Some(missing) = ids.iter().find(|s| !world.owns(key, s)) {
        return anthropic_error(
            404,
            "not_found_error",
            &format!("File not found: {missing}"),
        );
    }
    let tokens = prompt_tokens(body);
    let cached = cached_tokens(world, key, &tokens);
    json_reply(
        200,
        json!({
            "id": "msg_stand_in", "type": "message", "role": "assistant", "model": body["model"],
            "content": [{"type": "text", "text": format!("answer from {}", super::mask(key))}],
            "stop_reason": "end_turn", "stop_sequence": null,
            "usage": {"input_tokens": tokens.len() - cached, "cache_read_input_tokens": cached, "cache_creation_input_tokens": 0, "output_tokens": 5}
        }),
    )
}

fn gemini_file(base: &str, id: &str) -> Value {
    json!({"file": {"name": id, "displayName": "upload.txt", "mimeType": "text/plain", "sizeBytes": "11", "createTime": "2026-12-07T00:00:00Z", "updateTime": "2026-12-07T00:00:00Z", "expirationTime": "2026-12-09T00:00:00Z", "sha256Hash": "aGFzaA==", "uri": format!("{base}/v1beta/{id}"), "state": "ACTIVE", "source": "UPLOADED"}})
}

/// Gemini's answer when a request uses a file or cached content another project owns.
fn gemini_denied(world: &World, key: &str, body: &Value) -> Option<Reply> {
    if let Some(cache) = body["cachedContent"].as_str()
        && !world.owns(key, cache)
    {
        return Some(gemini_error(
            403,
            "CachedContent not found (or permission denied)",
            "PERMISSION_DENIED",
        ));
    }
    let mut uris = Vec::new();
    named(body, &["fileUri", "file_uri"], &mut uris);
    for uri in &uris {
        let name = uri.rsplit('/').next().unwrap_or("");
        if !world.owns(key, &format!("files/{name}")) {
            return Some(gemini_error(
                403,
                &format!(
                    "You do not have permission to access the File {name} or it may not exist."
                ),
                "PERMISSION_DENIED",
            ));
        }
    }
    None
}

/// Gemini's resumable upload: `start` answers with the URL to send the bytes to; `upload,
/// finalize` there creates the file for the key that started the upload.
fn gemini_upload(
    world: &mut World,
    base: &str,
    request: &Recorded,
    key: &str,
    query: &str,
) -> Reply {
    let command = request.header("x-goog-upload-command").unwrap_or("");
    if command.contains("start") {
        let upload = world.mint("upload-", key);
        return Reply::status(200)
            .header(
                "x-goog-upload-url",
                &format!("{base}/upload/v1beta/files?upload_id={upload}&upload_protocol=resumable"),
            )
            .header("x-goog-upload-status", "active")
            .header("x-goog-upload-chunk-granularity", "8388608")
            .header("content-type", "text/plain; charset=utf-8");
    }
    let upload = query
        .split('&')
        .find_map(|p| p.strip_prefix("upload_id="))
        .unwrap_or("");
    if !world.owns(key, upload) {
        return gemini_error(
            400,
            "Failed to upload file: the upload session was not found.",
            "INVALID_ARGUMENT",
        );
    }
    let id = world.mint("files/f", key);
    Reply::json(200, &gemini_file(base, &id).to_string()).header("x-goog-upload-status", "final")
}
