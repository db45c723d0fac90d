//! One upstream call through the shared agent, and the mapping of its errors to what the retry
//! loop needs to know.

use std::io;

use ureq::http::{self, HeaderMap, Method, Response, Uri};
use ureq::{Agent, Body, Timeout};

use crate::agent::egress::Egress;

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
    /// The upstream's TLS certificate is not one keyrelay trusts: the same for every key.
    Untrusted(String),
}

/// Sends one request, through `egress` when the key has one (else as the environment says).
/// `body` is `None` for body-less requests.
pub fn call(
    agent: &Agent,
    method: &Method,
    uri: Uri,
    headers: HeaderMap,
    body: Option<&[u8]>,
    egress: Option<&Egress>,
) -> Result<Response<Body>, CallFailure> {
    let result = match body {
        Some(bytes) => agent.run(routed(agent, request(method, uri, headers, bytes), egress)),
        None => agent.run(routed(agent, request(method, uri, headers, ()), egress)),
    };
    result.map_err(|err| match egress {
        Some(egress) if egress.proxy.is_some() => classify_via_proxy(&err),
        _ => classify(&err),
    })
}

/// `request` set to leave through `egress` (`direct` overrides the environment's proxy too).
fn routed<B: ureq::AsSendBody>(
    agent: &Agent,
    request: http::Request<B>,
    egress: Option<&Egress>,
) -> http::Request<B> {
    match egress {
        Some(egress) => agent
            .configure_request(request)
            .proxy(egress.proxy.clone())
            .build(),
        None => request,
    }
}

/// Errors of a request through a proxy: the proxy refusing the CONNECT, or a SOCKS handshake
/// that failed, happen before anything reached the upstream.
fn classify_via_proxy(err: &ureq::Error) -> CallFailure {
    use ureq::Error as E;
    match err {
        E::ConnectProxyFailed(_) => {
            CallFailure::Unreachable("the proxy refused the CONNECT".into())
        }
        E::Io(io)
            if matches!(
                io.kind(),
                io::ErrorKind::Other
                    | io::ErrorKind::InvalidData
                    | io::ErrorKind::InvalidInput
                    | io::ErrorKind::PermissionDenied
            ) =>
        {
            CallFailure::Unreachable("the SOCKS proxy refused".into())
        }
        _ => classify(err),
    }
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
        E::Rustls(rustls::Error::InvalidCertificate(why)) => {
            CallFailure::Untrusted(format!("{why:?}"))
        }
        E::Rustls(_) => CallFailure::Unreachable("TLS handshake failed".into()),
        E::Protocol(_) => CallFailure::Failed("malformed upstream answer".into()),
        // Other variants can carry the URL; a URL may hold a key for query-auth providers.
        _ => CallFailure::Failed("request failed".into()),
    }
}
