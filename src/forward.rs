//! One request top to bottom: route → body → attempts with rotating keys → relay, and the one
//! INFO line that records it.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::thread;
use std::time::{Instant, SystemTime};

use log::{debug, info, warn};
use tiny_http::Request;
use ureq::http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};

use crate::admin::{self, Page, Rendered};
use crate::client_conn::ClientConn;
use crate::guard::CLIENT_HEADER;
use crate::metrics::route_label;

use crate::config::REJECTED_KEY_BENCH;
use crate::error::ProxyError;
use crate::headers::{connection_tokens, forward_request_header, is_hop_by_hop};
use crate::keys::{AttemptClass, BenchReason};
use crate::outcome::{Verdict, rate_limit_cooldown, verdict};
use crate::provider::{AuthStyle, ErrorShape, Provider};
use crate::proxy::{Proxy, routes};
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
    /// The answer ends when the connection closes (HTTP/1.0 without a length).
    ends_with_close: bool,
}

/// What the client's request line and headers say about how to answer it.
struct ClientInfo {
    id: String,
    method: String,
    http10: bool,
    wants_close: bool,
}

/// A request taken out of tiny_http: released at once so tiny_http can parse the next request
/// on the same internal link while this one waits for the upstream.
struct Incoming {
    method: String,
    url: String,
    headers: Vec<(String, String)>,
    body: Result<Vec<u8>, ProxyError>,
}

impl Incoming {
    fn take(mut request: Request, limit: u64) -> Incoming {
        let headers: Vec<(String, String)> = request
            .headers()
            .iter()
            .map(|h| {
                (
                    h.field.as_str().as_str().to_string(),
                    h.value.as_str().to_string(),
                )
            })
            .collect();
        let declared = headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, value)| value.trim().parse::<u64>().ok());
        let body = match declared {
            Some(len) if len > limit => Err(ProxyError::BodyTooLarge { limit }),
            _ => read_body(&mut request, limit, declared),
        };
        let incoming = Incoming {
            method: request.method().as_str().to_string(),
            url: request.url().to_string(),
            headers,
            body,
        };
        // Nothing is ever written through tiny_http: the answer goes straight to the client.
        drop(request.into_writer());
        incoming
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
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
    /// One of keyrelay's own pages.
    Page(Rendered),
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

/// How far a request's handling got, for the worker to finish up after a panic.
#[derive(Debug, Default)]
pub struct Progress {
    /// The first byte of the answer may have been written: a failure can only close.
    pub started: bool,
    /// The answer is complete and counted as done.
    pub answered: bool,
}

/// Handles one request completely, answering on `conn`, and logs it. `started` turns true once
/// the first byte of the answer may have been written (after that, a failure can only close
/// the connection).
pub fn handle(
    proxy: &Proxy,
    request: Request,
    conn: &ClientConn,
    buffer: &mut RelayBuffer,
    progress: &mut Progress,
) {
    let started_at = Instant::now();
    let incoming = Incoming::take(request, proxy.limits.max_body_bytes);
    let (path, query) = incoming.url.split_once('?').unwrap_or((&incoming.url, ""));
    #[cfg(debug_assertions)]
    test_hooks::maybe_panic(path);
    let client = client_info(proxy, &incoming);
    let providers = proxy.providers();
    let answer = decide(proxy, &providers, &incoming, path, query, &client.id);
    progress.started = true;
    let mut out = conn.writer(proxy.limits.client_timeout);
    let report = deliver(&mut out, &client, answer, buffer);
    // A connection whose answer was cut short, or that the answer ends by closing, cannot
    // carry another request.
    if client.wants_close || report.ends_with_close || !report.note.is_empty() {
        let _ = conn.tcp.shutdown(Shutdown::Both);
    }
    // Counted as answered before the bookkeeping below, so the guard can hand on the client's
    // next request at once.
    proxy.registry.request_done(conn);
    progress.answered = true;
    let (name, rest) = split_route(path);
    let provider_label = match (providers.iter().any(|p| p.name == name), Page::at(path)) {
        (true, _) => name,
        (false, Some(_)) => "keyrelay",
        (false, None) => "none",
    };
    proxy.metrics.record(
        provider_label,
        &route_label(rest),
        report.status,
        started_at.elapsed(),
    );
    info!(
        "req={} {} {} status={} attempts={} key={} ms={}{}",
        client.id,
        client.method,
        path,
        report.status,
        report.attempts,
        report.key.as_deref().unwrap_or("-"),
        started_at.elapsed().as_millis(),
        report.note
    );
}

/// Answers a request whose handler panicked before writing anything.
pub fn answer_internal_error(conn: &ClientConn) {
    let client = ClientInfo {
        id: "-".to_string(),
        method: "-".to_string(),
        http10: false,
        wants_close: true,
    };
    let answer = Answer::Error {
        error: ProxyError::Internal,
        shape: ErrorShape::OpenAi,
        attempts: 0,
    };
    let mut out = &conn.tcp;
    deliver(&mut out, &client, answer, &mut RelayBuffer::default());
    let _ = conn.tcp.shutdown(Shutdown::Both);
}

#[cfg(debug_assertions)]
mod test_hooks {
    /// Debug builds only, and only with KEYRELAY_TEST_HOOKS set: a path that makes the handler
    /// panic, so tests can prove a panic costs one request and nothing else.
    pub fn maybe_panic(path: &str) {
        if path.ends_with("/__keyrelay_test_panic")
            && std::env::var_os("KEYRELAY_TEST_HOOKS").is_some()
        {
            panic!("test hook: forced panic");
        }
    }
}

fn decide(
    proxy: &Proxy,
    providers: &[Provider],
    incoming: &Incoming,
    path: &str,
    query: &str,
    request_id: &str,
) -> Answer {
    let local = |error, shape| Answer::Error {
        error,
        shape,
        attempts: 0,
    };
    let headers = || {
        incoming
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
    };
    if let Some(page) = Page::at(path) {
        if page.needs_token() && !proxy.access.allows(headers(), query) {
            return local(ProxyError::Unauthorized, ErrorShape::OpenAi);
        }
        return Answer::Page(admin::render(proxy, page));
    }
    let (name, rest) = split_route(path);
    let Some(provider) = providers.iter().find(|p| p.name == name) else {
        let routes = routes(providers);
        return local(ProxyError::NotFound { routes }, ErrorShape::OpenAi);
    };
    let shape = provider.shape;
    if !proxy.access.allows(headers(), query) {
        return local(ProxyError::Unauthorized, shape);
    }
    if provider.pool.is_empty() {
        let keys_var = provider.keys_var.clone();
        return local(ProxyError::NoKeys { keys_var }, shape);
    }
    let body = match &incoming.body {
        Ok(body) => body,
        Err(error) => return local(error.clone(), shape),
    };
    let query = provider.strip_credentials(query);
    let model = provider.model_of(rest, body);
    match UpstreamRequest::new(incoming, provider, rest, &query, request_id) {
        Some(upstream) => attempt(proxy, provider, &upstream, body, model.as_deref()),
        None => local(ProxyError::BadRequest, shape),
    }
}

/// `/openai/v1/x` → (`openai`, `v1/x`).
fn split_route(path: &str) -> (&str, &str) {
    let trimmed = path.trim_start_matches('/');
    trimmed.split_once('/').unwrap_or((trimmed, ""))
}

fn client_info(proxy: &Proxy, incoming: &Incoming) -> ClientInfo {
    // The guard states the client's version and close wish; it removed the client's own
    // Connection header before tiny_http could act on it.
    let flags = incoming.header(CLIENT_HEADER).unwrap_or("1.1");
    let http10 = flags.starts_with("1.0");
    ClientInfo {
        id: proxy.ids.for_request(incoming.header("x-request-id")),
        method: incoming.method.clone(),
        http10,
        wants_close: flags.contains("close"),
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
        incoming: &Incoming,
        provider: &Provider,
        rest: &str,
        query: &str,
        request_id: &str,
    ) -> Option<UpstreamRequest> {
        let method = Method::from_bytes(incoming.method.as_bytes()).ok()?;
        let tokens = connection_tokens(incoming.header("connection"));
        let mut headers = HeaderMap::with_capacity(incoming.headers.len() + 2);
        for (name, value) in &incoming.headers {
            if !forward_request_header(name, &tokens) || provider.is_credential_header(name) {
                continue;
            }
            let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_bytes(value.as_bytes()),
            ) else {
                continue;
            };
            headers.append(name, value);
        }
        if let Ok(id) = HeaderValue::from_str(request_id) {
            headers.insert("x-request-id", id);
        }
        let has_body = incoming.body.as_ref().is_ok_and(|b| !b.is_empty())
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
                format!("{}{separator}{param}={}", self.url, percent_encode(key))
                    .parse()
                    .ok()
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
    Answer(Box<SavedAnswer>, String),
}

/// Tries the keys, and when every key is cooling and one frees within WAIT_FOR_KEY_SECS, waits
/// for it and tries again.
fn attempt(
    proxy: &Proxy,
    provider: &Provider,
    upstream: &UpstreamRequest,
    body: &[u8],
    model: Option<&str>,
) -> Answer {
    let pool = &provider.pool;
    let deadline = Instant::now() + proxy.limits.wait_for_key;
    let mut attempts = 0;
    loop {
        let last = match try_round(proxy, provider, upstream, body, model, &mut attempts) {
            Ok(answer) => return answer,
            Err(last) => last,
        };
        let error = match last {
            LastFailure::Answer(answer, key) => {
                return Answer::Saved {
                    answer: *answer,
                    attempts,
                    key,
                };
            }
            LastFailure::Unreachable => ProxyError::Unreachable {
                host: provider.host.clone(),
            },
            LastFailure::RateLimited => {
                let wait = pool.wait_for_any(model, Instant::now());
                if !wait.is_zero() && Instant::now() + wait <= deadline {
                    debug!(
                        "{}: every key is cooling; holding the request {} ms for the first to free",
                        provider.name,
                        wait.as_millis()
                    );
                    thread::sleep(wait);
                    continue;
                }
                ProxyError::Exhausted {
                    retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
                }
            }
        };
        return Answer::Error {
            error,
            shape: provider.shape,
            attempts,
        };
    }
}

/// One pass over the keys from a fresh ticket, each at most once, skipping benched ones.
/// `Ok` is the final answer (relay, or a timeout); `Err` says how the last failure went.
fn try_round(
    proxy: &Proxy,
    provider: &Provider,
    upstream: &UpstreamRequest,
    body: &[u8],
    model: Option<&str>,
    attempts: &mut u32,
) -> Result<Answer, LastFailure> {
    let pool = &provider.pool;
    let mut last = LastFailure::RateLimited;
    for index in pool.attempt_order(pool.ticket()) {
        if !pool.is_ready(index, model, Instant::now()) {
            continue;
        }
        *attempts += 1;
        let key = pool.key(index);
        let Some(uri) = upstream.uri(provider, key.secret()) else {
            return Ok(Answer::Error {
                error: ProxyError::BadRequest,
                shape: provider.shape,
                attempts: *attempts,
            });
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
                    return Ok(Answer::Error {
                        error: ProxyError::Timeout { host, secs },
                        shape: provider.shape,
                        attempts: *attempts,
                    });
                }
                Err(CallFailure::Failed(why)) => {
                    pool.record(index, AttemptClass::Unreachable);
                    debug!(
                        "{} key={} upstream failed after the request was sent: {why}",
                        provider.name, key
                    );
                    return Ok(Answer::Error {
                        error: ProxyError::UpstreamFailed {
                            host: provider.host.clone(),
                        },
                        shape: provider.shape,
                        attempts: *attempts,
                    });
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
                return Ok(Answer::Live {
                    response,
                    attempts: *attempts,
                    key: key.mask(),
                });
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
                    "{} key={} benched for {}s{}: {reason}",
                    provider.name,
                    key,
                    cooldown.as_secs_f64().ceil(),
                    model.map(|m| format!(" for model {m}")).unwrap_or_default()
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
                last = LastFailure::Answer(Box::new(save(response)), key.mask());
            }
            Verdict::ServerError => {
                pool.record(index, AttemptClass::ServerError);
                debug!(
                    "{} key={} upstream answered {status}, trying the next key",
                    provider.name, key
                );
                last = LastFailure::Answer(Box::new(save(response)), key.mask());
            }
        }
    }
    Err(last)
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
    out: &mut dyn Write,
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
            let rendered = error.answer(shape);
            let mut headers = HeaderMap::new();
            headers.insert("content-type", HeaderValue::from_static("application/json"));
            for (name, value) in &rendered.headers {
                if let Ok(value) = HeaderValue::from_str(value) {
                    headers.insert(*name, value);
                }
            }
            let saved = SavedAnswer {
                status: rendered.status,
                headers,
                body: rendered.body.into_bytes(),
            };
            let (status, note) = write_saved(out, client, &saved, buffer);
            Report {
                status,
                attempts,
                key: None,
                note,
                ends_with_close: false,
            }
        }
        Answer::Page(page) => {
            let mut headers = HeaderMap::new();
            headers.insert("content-type", HeaderValue::from_static(page.content_type));
            headers.insert("cache-control", HeaderValue::from_static("no-store"));
            let saved = SavedAnswer {
                status: 200,
                headers,
                body: page.body.into_bytes(),
            };
            let (status, note) = write_saved(out, client, &saved, buffer);
            Report {
                status,
                attempts: 0,
                key: None,
                note,
                ends_with_close: false,
            }
        }
        Answer::Saved {
            answer,
            attempts,
            key,
        } => {
            let (status, note) = write_saved(out, client, &answer, buffer);
            Report {
                status,
                attempts,
                key: Some(key),
                note,
                ends_with_close: false,
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
            let result = relay_body(out, head, &mut reader, framing, buffer);
            // Dropping an unfinished reader closes the upstream connection, which stops the
            // generation when the client has gone.
            drop(reader);
            Report {
                status,
                attempts,
                key: Some(key),
                note: relay_note(&result),
                ends_with_close: framing == Framing::UntilClose,
            }
        }
    }
}

fn write_saved(
    out: &mut dyn Write,
    client: &ClientInfo,
    answer: &SavedAnswer,
    buffer: &mut RelayBuffer,
) -> (u16, &'static str) {
    let framing = Framing::choose(
        no_body(&client.method, answer.status),
        Some(answer.body.len() as u64),
        client.http10,
    );
    let head = response_head(client, answer.status, &answer.headers, framing);
    let result = relay_body(out, head, &mut answer.body.as_slice(), framing, buffer);
    (answer.status, relay_note(&result))
}

fn relay_note(result: &Result<u64, RelayError>) -> &'static str {
    match result {
        Ok(_) => "",
        Err(RelayError::ClientGone(_)) => " aborted=client-gone",
        Err(RelayError::Upstream(_)) => " aborted=upstream-failed",
    }
}

/// A key as a query value: unreserved characters as they are, everything else %XX.
fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
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
