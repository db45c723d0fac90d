//! The shared ureq agent and one upstream call: settings that make ureq a transparent relay
//! (no redirects, no decompression, statuses as answers) and the mapping of its errors to what
//! the retry loop needs to know.

use std::io;
use std::time::Duration;

use ureq::http::{self, HeaderMap, Method, Response, Uri};
use ureq::{Agent, Body, Timeout};

/// Per-connection read buffer, also the largest upstream response head accepted.
const INPUT_BUFFER: usize = 16 * 1024;
/// Per-connection write buffer: holds a whole request head, which the guard bounds to
/// [`MAX_HEAD_BYTES`](crate::listen::MAX_HEAD_BYTES), plus room for the injected key.
const OUTPUT_BUFFER: usize = crate::listen::MAX_HEAD_BYTES + 4 * 1024;

/// Builds the agent every worker shares (it holds the upstream connection pool).
pub fn agent(connect_timeout: Duration, upstream_timeout: Duration, workers: usize) -> Agent {
    let config = Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .allow_non_standard_methods(true)
        .user_agent(ureq::config::AutoHeaderValue::None)
        .accept(ureq::config::AutoHeaderValue::None)
        // Idle connections kept per upstream host: enough that a burst rarely reconnects (the
        // default of 3 opened thousands of connections under load), few enough that finding one
        // stays cheap (ureq searches its pool linearly on every request).
        .max_idle_connections(workers.clamp(8, 64))
        .max_idle_connections_per_host(workers.clamp(8, 64))
        // ureq's 128 KiB default buffers are allocated per pooled connection; LLM API heads are
        // a few KiB, and body bytes stream through the relay buffer anyway.
        .input_buffer_size(INPUT_BUFFER)
        .output_buffer_size(OUTPUT_BUFFER)
        .max_response_header_size(INPUT_BUFFER)
        .timeout_connect(Some(connect_timeout))
        .timeout_recv_response(Some(upstream_timeout))
        .timeout_send_body(Some(upstream_timeout))
        // Bounds silence on a stream, not its length: long generations keep flowing.
        .timeout_per_read(Some(upstream_timeout))
        .build();
    Agent::new_with_config(config)
}

/// Why an upstream call produced no answer.
#[derive(Debug)]
pub enum CallFailure {
    /// Nothing reached the upstream (refused, DNS, TLS handshake, connect timeout). Safe to try
    /// the next key.
    Unreachable(String),
    /// The connection broke or the answer was malformed after the request was sent. Not
    /// retried, for the same reason as a timeout.
    Failed(String),
    /// The request was sent and the upstream went silent. Not retried: the generation may be
    /// running, and billed.
    TimedOut,
}

/// Sends one request. `body` is `None` for body-less requests.
pub fn call(
    agent: &Agent,
    method: &Method,
    uri: Uri,
    headers: HeaderMap,
    body: Option<&[u8]>,
) -> Result<Response<Body>, CallFailure> {
    let result = match body {
        Some(bytes) => agent.run(request(method, uri, headers, bytes)),
        None => agent.run(request(method, uri, headers, ())),
    };
    result.map_err(|err| classify(&err))
}

fn request<B>(method: &Method, uri: Uri, headers: HeaderMap, body: B) -> http::Request<B> {
    let mut request = http::Request::new(body);
    *request.method_mut() = method.clone();
    *request.uri_mut() = uri;
    *request.headers_mut() = headers;
    request
}

fn classify(err: &ureq::Error) -> CallFailure {
    use ureq::Error as E;
    match err {
        E::Timeout(Timeout::Connect | Timeout::Resolve) => {
            CallFailure::Unreachable("connect timed out".into())
        }
        E::Timeout(_) => CallFailure::TimedOut,
        E::Io(io) if io.kind() == io::ErrorKind::TimedOut => CallFailure::TimedOut,
        E::Io(io)
            if matches!(
                io.kind(),
                io::ErrorKind::ConnectionRefused
                    | io::ErrorKind::AddrNotAvailable
                    | io::ErrorKind::NetworkUnreachable
                    | io::ErrorKind::HostUnreachable
            ) =>
        {
            CallFailure::Unreachable(io.kind().to_string())
        }
        // A reset or a garbled answer after the request went out: the upstream may be
        // generating (and billing) it, so no other key is tried.
        E::Io(io) => CallFailure::Failed(io.kind().to_string()),
        E::HostNotFound => CallFailure::Unreachable("host not found".into()),
        E::ConnectionFailed => CallFailure::Unreachable("connection failed".into()),
        E::Tls(reason) => CallFailure::Unreachable(format!("TLS: {reason}")),
        E::Rustls(_) => CallFailure::Unreachable("TLS handshake failed".into()),
        E::Protocol(_) => CallFailure::Failed("malformed upstream answer".into()),
        // Other variants can carry the URL; a URL may hold a key for query-auth providers.
        _ => CallFailure::Failed("request failed".into()),
    }
}
