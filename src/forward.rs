//! One request top to bottom: take it out of tiny_http, route it (keyrelay's own pages, access
//! tokens, provider), hand it to the attempts (attempt.rs), write the answer (respond.rs), and
//! record it in one INFO line and the metrics.

use std::io::Read;
use std::net::Shutdown;
use std::time::Instant;

use log::info;
use tiny_http::Request;

use crate::admin::{self, Page};
use crate::attempt::{Answer, UpstreamRequest, attempt};
use crate::client_conn::ClientConn;
use crate::error::ProxyError;
use crate::guard::CLIENT_HEADER;
use crate::metrics::route_label;
use crate::provider::{ErrorShape, Provider};
use crate::proxy::{Proxy, routes};
use crate::respond::{ClientInfo, deliver};
use crate::stream::RelayBuffer;

/// A request taken out of tiny_http: released at once so tiny_http can parse the next request
/// on the same internal link while this one waits for the upstream.
pub(crate) struct Incoming {
    pub(crate) method: String,
    pub(crate) url: String,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Result<Vec<u8>, ProxyError>,
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

    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
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
