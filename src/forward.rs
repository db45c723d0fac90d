//! One request top to bottom: route → body → attempts with rotating keys → relay, and the one
//! INFO line that records it.

use std::io::Read;
use std::time::{Instant, SystemTime};

use log::{debug, info, warn};
use tiny_http::{Header, Request, Response};
use ureq::http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};

use crate::config::REJECTED_KEY_BENCH;
use crate::error::ProxyError;
use crate::headers::{connection_tokens, forward_request_header, is_hop_by_hop};
use crate::keys::{AttemptClass, BenchReason};
use crate::outcome::{Verdict, rate_limit_cooldown, verdict};
use crate::provider::{
    AuthStyle, CLIENT_CREDENTIAL_PARAM, ErrorShape, Provider, strip_query_param,
};
use crate::proxy::Proxy;
use crate::stream::{Framing, RelayBuffer, RelayError, reason_phrase, relay_body};
use crate::upstream::{self, CallFailure};

/// Largest error body from upstream kept to relay or to read a retry delay from.
const MAX_ERROR_BODY: u64 = 1024 * 1024;

/// What happened to a request, for its log line.
struct Report {
    status: u16,
    attempts: u32,
    key: Option<String>,
    note: &'static str,
}

/// What the client's request line and headers say about how to answer it.
struct ClientInfo {
    id: String,
    method: String,
    http10: bool,
    wants_close: bool,
}

/// How the request is answered, decided before the client connection is written to.
enum Answer {
    /// An error keyrelay writes itself.
    Error {
        error: ProxyError,
        shape: ErrorShape,
        attempts: u32,
    },
    /// An upstream answer, relayed as it streams in.
    Live {
        response: ureq::http::Response<ureq::Body>,
        attempts: u32,
        key: String,
    },
    /// An upstream answer already read (the last 401/403/5xx after every key failed).
    Saved {
        answer: SavedAnswer,
        attempts: u32,
        key: String,
    },
}

/// A complete upstream answer held in memory.
struct SavedAnswer {
    status: u16,
    headers: HeaderMap,
    body: Vec<u8>,
}

/// Handles one request completely, including its log line.
pub fn handle(proxy: &Proxy, mut request: Request, buffer: &mut RelayBuffer) {
    let started = Instant::now();
    let url = request.url().to_string();
    let (path, query) = url.split_once('?').unwrap_or((&url, ""));
    let client = client_info(proxy, &request);
    let answer = decide(proxy, &mut request, path, query, &client);
    let report = deliver(request, &client, answer, buffer);
    info!(
        "req={} {} {} status={} attempts={} key={} ms={}{}",
        client.id,
        client.method,
        path,
        report.status,
        report.attempts,
        report.key.as_deref().unwrap_or("-"),
        started.elapsed().as_millis(),
        report.note
    );
}

fn decide(
    proxy: &Proxy,
    request: &mut Request,
    path: &str,
    query: &str,
    client: &ClientInfo,
) -> Answer {
    let local = |error, shape| Answer::Error {
        error,
        shape,
        attempts: 0,
    };
    let trimmed = path.trim_start_matches('/');
    let (name, rest) = trimmed.split_once('/').unwrap_or((trimmed, ""));
    let Some(provider) = proxy.provider(name) else {
        let routes = proxy.routes();
        return local(ProxyError::NotFound { routes }, ErrorShape::OpenAi);
    };
    let shape = provider.shape;
    if provider.pool.is_empty() {
        let keys_var = provider.keys_var.clone();
        return local(ProxyError::NoKeys { keys_var }, shape);
    }
    let limit = proxy.limits.max_body_bytes;
    let declared = request_body_len(request);
    if declared.is_some_and(|len| len > limit) {
        return local(ProxyError::BodyTooLarge { limit }, shape);
    }
    let body = match read_body(request, limit, declared) {
        Ok(body) => body,
        Err(error) => return local(error, shape),
    };
    let query = strip_query_param(query, CLIENT_CREDENTIAL_PARAM);
    match UpstreamRequest::new(request, provider, rest, &query, client) {
        Some(upstream) => attempt(proxy, provider, &upstream, &body),
        None => local(ProxyError::BadRequest, shape),
    }
}

/// The declared body length, if the client sent Content-Length without chunking.
fn request_body_len(request: &Request) -> Option<u64> {
    let chunked = request
        .headers()
        .iter()
        .any(|h| h.field.equiv("transfer-encoding"));
    if chunked {
        return None;
    }
    request
        .headers()
        .iter()
        .find(|h| h.field.equiv("content-length"))
        .and_then(|h| h.value.as_str().trim().parse().ok())
}

fn client_info(proxy: &Proxy, request: &Request) -> ClientInfo {
    let header = |name: &'static str| {
        request
            .headers()
            .iter()
            .find(|h| h.field.equiv(name))
            .map(|h| h.value.as_str())
    };
    let http10 = request.http_version().0 == 1 && request.http_version().1 == 0;
    let connection = connection_tokens(header("connection"));
    let wants_close = if http10 {
        !connection.iter().any(|t| t == "keep-alive")
    } else {
        connection.iter().any(|t| t == "close")
    };
    ClientInfo {
        id: proxy.ids.for_request(header("x-request-id")),
        method: request.method().as_str().to_string(),
        http10,
        wants_close,
    }
}

fn read_body(
    request: &mut Request,
    limit: u64,
    declared: Option<u64>,
) -> Result<Vec<u8>, ProxyError> {
    let mut body = Vec::with_capacity(declared.unwrap_or(0).min(limit) as usize);
    request
        .as_reader()
        .take(limit + 1)
        .read_to_end(&mut body)
        .map_err(|_| ProxyError::BadBody)?;
    if body.len() as u64 > limit {
        return Err(ProxyError::BodyTooLarge { limit });
    }
    Ok(body)
}

/// The parts of the upstream request that are the same for every attempt.
struct UpstreamRequest {
    method: Method,
    url: String,
    headers: HeaderMap,
    has_body: bool,
}

impl UpstreamRequest {
    fn new(
        request: &Request,
        provider: &Provider,
        rest: &str,
        query: &str,
        client: &ClientInfo,
    ) -> Option<UpstreamRequest> {
        let method = Method::from_bytes(request.method().as_str().as_bytes()).ok()?;
        let connection = request
            .headers()
            .iter()
            .find(|h| h.field.equiv("connection"))
            .map(|h| h.value.as_str());
        let tokens = connection_tokens(connection);
        let mut headers = HeaderMap::with_capacity(request.headers().len() + 2);
        for Header { field, value } in request.headers() {
            if !forward_request_header(field.as_str().as_str(), &tokens) {
                continue;
            }
            let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(field.as_str().as_bytes()),
                HeaderValue::from_bytes(value.as_bytes()),
            ) else {
                continue;
            };
            headers.append(name, value);
        }
        if let Ok(id) = HeaderValue::from_str(&client.id) {
            headers.insert("x-request-id", id);
        }
        let has_body = request_body_len(request).is_some_and(|n| n > 0)
            || request
                .headers()
                .iter()
                .any(|h| h.field.equiv("transfer-encoding"))
            || !matches!(
                method,
                Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS
            );
        Some(UpstreamRequest {
            method,
            url: provider.upstream_url(rest, query),
            headers,
            has_body,
        })
    }

    /// The URI for one attempt; query-style providers carry the key in it.
    fn uri(&self, provider: &Provider, key: &str) -> Option<Uri> {
        match &provider.auth {
            AuthStyle::Query(param) => {
                let separator = if self.url.contains('?') { '&' } else { '?' };
                format!("{}{separator}{param}={key}", self.url).parse().ok()
            }
            _ => self.url.parse().ok(),
        }
    }

    /// The headers for one attempt, with the pool key injected.
    fn headers_with_key(&self, provider: &Provider, key: &str) -> HeaderMap {
        let mut headers = self.headers.clone();
        let injected = match &provider.auth {
            AuthStyle::Bearer => Some(("authorization".to_string(), format!("Bearer {key}"))),
            AuthStyle::Header(name) => Some((name.clone(), key.to_string())),
            AuthStyle::Query(_) => None,
        };
        if let Some((name, value)) = injected
            && let (Ok(name), Ok(mut value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(&value),
            )
        {
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        headers
    }
}

/// How the last failed attempt ended, to choose the answer when no key succeeds.
enum LastFailure {
    /// No attempt was made (every key benched) or the last one was a 429.
    RateLimited,
    /// The upstream could not be reached.
    Unreachable,
    /// A 401/403/5xx answer, kept to relay.
    Answer(SavedAnswer, String),
}

/// Tries the keys from this request's ticket on, each at most once, skipping benched ones.
fn attempt(proxy: &Proxy, provider: &Provider, upstream: &UpstreamRequest, body: &[u8]) -> Answer {
    let pool = &provider.pool;
    let model: Option<&str> = None;
    let mut attempts = 0;
    let mut last = LastFailure::RateLimited;
    for index in pool.attempt_order(pool.ticket()) {
        if !pool.is_ready(index, model, Instant::now()) {
            continue;
        }
        attempts += 1;
        let key = pool.key(index);
        let Some(uri) = upstream.uri(provider, key.secret()) else {
            return Answer::Error {
                error: ProxyError::BadRequest,
                shape: provider.shape,
                attempts,
            };
        };
        let headers = upstream.headers_with_key(provider, key.secret());
        let sent_body = upstream.has_body.then_some(body);
        let mut response =
            match upstream::call(&proxy.agent, &upstream.method, uri, &headers, sent_body) {
                Ok(response) => response,
                Err(CallFailure::TimedOut) => {
                    pool.record(index, AttemptClass::Unreachable);
                    let host = provider.host.clone();
                    let secs = proxy.limits.upstream_timeout.as_secs();
                    return Answer::Error {
                        error: ProxyError::Timeout { host, secs },
                        shape: provider.shape,
                        attempts,
                    };
                }
                Err(CallFailure::Unreachable(why)) => {
                    pool.record(index, AttemptClass::Unreachable);
                    debug!("{} key={} unreachable: {why}", provider.name, key);
                    last = LastFailure::Unreachable;
                    continue;
                }
            };
        let status = response.status().as_u16();
        match verdict(status) {
            Verdict::Relay => {
                pool.record(index, AttemptClass::Success);
                return Answer::Live {
                    response,
                    attempts,
                    key: key.mask(),
                };
            }
            Verdict::RateLimited => {
                pool.record(index, AttemptClass::RateLimited);
                let error_body = read_error_body(&mut response);
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok());
                let cooldown = rate_limit_cooldown(
                    retry_after,
                    &error_body,
                    SystemTime::now(),
                    proxy.limits.cooldown,
                );
                let reason = BenchReason::RateLimited;
                pool.bench(index, model, Instant::now() + cooldown, reason);
                warn!(
                    "{} key={} benched for {}s: {reason}",
                    provider.name,
                    key,
                    cooldown.as_secs_f64().ceil()
                );
                last = LastFailure::RateLimited;
            }
            Verdict::KeyRejected => {
                pool.record(index, AttemptClass::Rejected);
                let reason = BenchReason::Rejected(status);
                pool.bench(index, None, Instant::now() + REJECTED_KEY_BENCH, reason);
                warn!(
                    "{} key={} benched for {}s: {reason}; check that the key is valid",
                    provider.name,
                    key,
                    REJECTED_KEY_BENCH.as_secs()
                );
                last = LastFailure::Answer(save(response), key.mask());
            }
            Verdict::ServerError => {
                pool.record(index, AttemptClass::ServerError);
                debug!(
                    "{} key={} upstream answered {status}, trying the next key",
                    provider.name, key
                );
                last = LastFailure::Answer(save(response), key.mask());
            }
        }
    }
    match last {
        LastFailure::Answer(answer, key) => Answer::Saved {
            answer,
            attempts,
            key,
        },
        LastFailure::Unreachable => Answer::Error {
            error: ProxyError::Unreachable {
                host: provider.host.clone(),
            },
            shape: provider.shape,
            attempts,
        },
        LastFailure::RateLimited => {
            let wait = pool.wait_for_any(model, Instant::now());
            Answer::Error {
                error: ProxyError::Exhausted {
                    retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
                },
                shape: provider.shape,
                attempts,
            }
        }
    }
}

fn read_error_body(response: &mut ureq::http::Response<ureq::Body>) -> Vec<u8> {
    let mut body = Vec::new();
    // A body that fails half-way is still useful for what was read; the status says enough.
    let _ = response
        .body_mut()
        .as_reader()
        .take(MAX_ERROR_BODY)
        .read_to_end(&mut body);
    body
}

fn save(mut response: ureq::http::Response<ureq::Body>) -> SavedAnswer {
    let body = read_error_body(&mut response);
    SavedAnswer {
        status: response.status().as_u16(),
        headers: std::mem::take(response.headers_mut()),
        body,
    }
}

/// Writes the chosen answer to the client and reports how it went.
fn deliver(
    request: Request,
    client: &ClientInfo,
    answer: Answer,
    buffer: &mut RelayBuffer,
) -> Report {
    match answer {
        Answer::Error {
            error,
            shape,
            attempts,
        } => {
            let status = error.status();
            answer_error(request, client, &error, shape);
            Report {
                status,
                attempts,
                key: None,
                note: "",
            }
        }
        Answer::Saved {
            answer,
            attempts,
            key,
        } => {
            let framing = Framing::choose(
                no_body(&client.method, answer.status),
                Some(answer.body.len() as u64),
                client.http10,
            );
            let head = response_head(client, answer.status, &answer.headers, framing);
            let mut writer = request.into_writer();
            let result = relay_body(
                &mut writer,
                head,
                &mut answer.body.as_slice(),
                framing,
                buffer,
            );
            Report {
                status: answer.status,
                attempts,
                key: Some(key),
                note: relay_note(&result),
            }
        }
        Answer::Live {
            response,
            attempts,
            key,
        } => {
            let status = response.status().as_u16();
            let (parts, body) = response.into_parts();
            let length = parts
                .headers
                .get("content-length")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse().ok())
                .filter(|_| !parts.headers.contains_key("transfer-encoding"));
            let framing = Framing::choose(no_body(&client.method, status), length, client.http10);
            let head = response_head(client, status, &parts.headers, framing);
            let mut reader = body.into_reader();
            let mut writer = request.into_writer();
            let result = relay_body(&mut writer, head, &mut reader, framing, buffer);
            // Dropping an unfinished reader closes the upstream connection, which stops the
            // generation when the client has gone.
            drop(reader);
            Report {
                status,
                attempts,
                key: Some(key),
                note: relay_note(&result),
            }
        }
    }
}

fn relay_note(result: &Result<u64, RelayError>) -> &'static str {
    match result {
        Ok(_) => "",
        Err(RelayError::ClientGone(_)) => " aborted=client-gone",
        Err(RelayError::Upstream(_)) => " aborted=upstream-failed",
    }
}

/// Responses that never carry a body, whatever their headers say.
fn no_body(method: &str, status: u16) -> bool {
    method.eq_ignore_ascii_case("HEAD") || status == 204 || status == 304 || status < 200
}

/// The status line and headers sent to the client, ending with the blank line.
fn response_head(
    client: &ClientInfo,
    status: u16,
    headers: &HeaderMap,
    framing: Framing,
) -> Vec<u8> {
    let mut head = Vec::with_capacity(512);
    let version = if client.http10 {
        "HTTP/1.0"
    } else {
        "HTTP/1.1"
    };
    head.extend_from_slice(format!("{version} {status} {}\r\n", reason_phrase(status)).as_bytes());
    let tokens = connection_tokens(headers.get("connection").and_then(|v| v.to_str().ok()));
    for (name, value) in headers {
        let name = name.as_str();
        // A HEAD or 304 answer keeps the length of the body it describes.
        let described_length = framing == Framing::None && name == "content-length";
        if is_hop_by_hop(name, &tokens) && !described_length {
            continue;
        }
        let name = if name == "x-request-id" {
            "x-upstream-request-id"
        } else {
            name
        };
        push_header(&mut head, name, value.as_bytes());
    }
    push_header(&mut head, "x-request-id", client.id.as_bytes());
    match framing {
        Framing::Length(n) => push_header(&mut head, "content-length", n.to_string().as_bytes()),
        Framing::Chunked => push_header(&mut head, "transfer-encoding", b"chunked"),
        Framing::UntilClose | Framing::None => {}
    }
    if client.wants_close || framing == Framing::UntilClose {
        push_header(&mut head, "connection", b"close");
    } else if client.http10 {
        push_header(&mut head, "connection", b"keep-alive");
    }
    head.extend_from_slice(b"\r\n");
    head
}

fn push_header(head: &mut Vec<u8>, name: &str, value: &[u8]) {
    head.extend_from_slice(name.as_bytes());
    head.extend_from_slice(b": ");
    head.extend_from_slice(value);
    head.extend_from_slice(b"\r\n");
}

fn answer_error(request: Request, client: &ClientInfo, error: &ProxyError, shape: ErrorShape) {
    let answer = error.answer(shape);
    let mut response = Response::from_data(answer.body)
        .with_status_code(answer.status)
        .with_header(header("content-type", "application/json"))
        .with_header(header("x-request-id", &client.id));
    for (name, value) in &answer.headers {
        response.add_header(header(name, value));
    }
    if matches!(error, ProxyError::BodyTooLarge { .. }) {
        // The unread body is still on the connection; it cannot carry another request.
        response.add_header(header("connection", "close"));
    }
    // Errors here mean the client left; there is nobody to tell.
    let _ = request.respond(response);
}

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("static header is valid")
}
