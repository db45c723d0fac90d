//! One request top to bottom, in a worker: read its body, route it (keyrelay's own pages,
//! access tokens, provider), hand it to the attempts (attempt.rs), write the answer
//! (respond.rs), and record it in one INFO line and the metrics.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::attempt::{Request, UpstreamRequest, attempt};
use super::body::{BodyError, read_body};
use super::incoming::Incoming;
use crate::admin;
use crate::error::ProxyError;
use crate::keys::affinity::{BodySurvey, Dialect, Kind, ResourcePin, UPLOAD_PREFIX};
use crate::listen::{Conn, Head};
use crate::metrics::route_label;
use crate::provider::{ErrorShape, Provider, shape_for, split_route};
use crate::proxy::{Proxy, routes};
use crate::request_log::RequestLog;
use crate::respond::answer::Answer;
use crate::respond::stream::RelayBuffer;
use crate::respond::{ClientInfo, deliver};

/// How far a request's handling got, for the worker to finish up after a panic.
#[derive(Debug, Default)]
pub struct Progress {
    /// The first byte of the answer may have been written: a failure can only close.
    pub started: bool,
}

/// What becomes of the connection after an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// It can carry the next request.
    KeepAlive,
    /// It closes now (the client asked, the answer was cut short or ended by closing).
    Close,
    /// The request was refused with its body unread: shut the write side and linger.
    Linger,
}

/// Handles the request whose `head` starts `conn.buf`, answering on `conn`, and logs it.
/// `queued_at` is when its head was complete, `queued` how long it waited for this worker.
pub(crate) fn handle(
    proxy: &Proxy,
    conn: &mut Conn,
    head: &Head,
    (queued_at, queued): (Instant, Duration),
    stopping: &AtomicBool,
    buffer: &mut RelayBuffer,
    progress: &mut Progress,
) -> After {
    let mut incoming = Incoming::from_head(&conn.buf, head);
    incoming.body = match read_body(
        conn,
        head,
        proxy.limits.max_body_bytes,
        proxy.limits.client_timeout,
    ) {
        Ok(body) => Ok(body),
        Err(BodyError::Gone) => return After::Close,
        Err(BodyError::Refuse(error)) => Err(error),
    };
    // Refused with its body unread: the connection cannot carry another request.
    let refused = incoming.body.is_err();
    let path = head.path();
    #[cfg(debug_assertions)]
    test_hooks::maybe_panic(path);
    let client = ClientInfo {
        id: proxy.ids.for_request(incoming.header("x-request-id")),
        method: incoming.method().to_string(),
        http10: head.http10,
        // Read now, after the body: a shutdown that began meanwhile closes after this answer.
        wants_close: head.close || stopping.load(Ordering::Relaxed) || refused,
    };
    let providers = proxy.providers();
    let (answer, pin) = match &incoming.body {
        // A body that could not be read is answered first, whatever the route.
        Err(error) => (
            Answer::Error {
                error: error.clone(),
                shape: shape_for(&providers, path),
                attempts: 0,
            },
            None,
        ),
        Ok(_) => {
            let loopback = || conn.tcp.peer_addr().is_ok_and(|a| a.ip().is_loopback());
            let query = head.query();
            decide(
                proxy, &providers, &incoming, path, query, &client.id, loopback,
            )
        }
    };
    progress.started = true;
    let mut out = conn.writer(proxy.limits.client_timeout);
    let report = deliver(&mut out, &client, answer, buffer);
    let (name, rest) = split_route(path);
    let provider_label = match (
        providers.iter().any(|p| p.name == name),
        admin::is_own(path),
    ) {
        (true, _) => name,
        (false, true) => "keyrelay",
        (false, false) => "none",
    };
    let elapsed = queued_at.elapsed();
    proxy
        .metrics
        .record(provider_label, &route_label(rest), report.status, elapsed);
    RequestLog {
        id: &client.id,
        method: &client.method,
        path,
        status: report.status,
        attempts: report.attempts,
        key: report.key.as_deref(),
        elapsed,
        queued,
        note: report.note,
        pin: pin.map(Kind::label),
        tokens: report.tokens,
    }
    .write();
    if refused {
        After::Linger
    } else if client.wants_close || report.ends_with_close || !report.note.is_empty() {
        After::Close
    } else {
        After::KeepAlive
    }
}

/// Answers a request whose handler panicked before writing anything.
pub fn answer_internal_error(conn: &Conn) {
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

/// Whether the request sends bytes to a Gemini resumable upload that keyrelay itself started
/// for a client that had a token: google-genai sends those bytes to the rewritten upload URL
/// with no credential at all, and the upload id keyrelay handed out (Google's unguessable
/// session id, bound to the key that started the upload) is the capability, as it is at Google.
fn is_upload_session(provider: &Provider, method: &str, rest: &str, query: &str) -> bool {
    let affinity = &provider.affinity;
    // Exactly the upload endpoint, for sending bytes: no other path, no dot segments.
    if affinity.dialect != Dialect::Gemini
        || !matches!(method, "POST" | "PUT")
        || !matches!(rest, "upload/v1beta/files" | "upload/v1/files")
    {
        return false;
    }
    let Some(id) = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("upload_id="))
        .filter(|id| !id.is_empty())
    else {
        return false;
    };
    let session = [format!("{UPLOAD_PREFIX}{id}")];
    let pin = affinity.resource_pin(&session, provider.pool.keys(), Instant::now());
    pin != ResourcePin::None
}

fn decide(
    proxy: &Proxy,
    providers: &[Provider],
    incoming: &Incoming,
    path: &str,
    query: &str,
    request_id: &str,
    loopback: impl FnOnce() -> bool,
) -> (Answer, Option<Kind>) {
    let local = |error, shape| {
        let answer = Answer::Error {
            error,
            shape,
            attempts: 0,
        };
        (answer, None)
    };
    let headers = || incoming.headers();
    let method = incoming.method();
    match admin::answer_for(proxy, method, path, headers(), query, loopback) {
        Some(Ok(page)) => return (Answer::Page(page), None),
        Some(Err(error)) => return local(error, ErrorShape::OpenAi),
        None => {}
    }
    let (name, rest) = split_route(path);
    let Some(provider) = providers.iter().find(|p| p.name == name) else {
        let routes = routes(providers);
        return local(ProxyError::NotFound { routes }, ErrorShape::OpenAi);
    };
    let shape = provider.shape;
    if !proxy.access.allows(headers(), query)
        && !is_upload_session(provider, incoming.method(), rest, query)
    {
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
    let survey = BodySurvey::of(provider.affinity.dialect, body);
    let model = provider.model_of(rest, &survey);
    let Some(upstream) = UpstreamRequest::new(incoming, provider, rest, &query, request_id) else {
        return local(ProxyError::BadRequest, shape);
    };
    let request = Request {
        upstream: &upstream,
        body,
        survey: &survey,
        model: model.as_deref(),
        rest,
        query: &query,
    };
    let chosen = attempt(proxy, provider, &request);
    (chosen.answer, chosen.pin)
}
