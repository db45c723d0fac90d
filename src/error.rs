//! Errors keyrelay answers itself, each mapped in one table to a status and a JSON body in the
//! provider's own error shape, with a message that says what to do.

use std::fmt;

use crate::head_error::HeadError;
use crate::json::quote;
use crate::provider::ErrorShape;

/// An answer keyrelay writes instead of relaying one from upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyError {
    /// No route matches the path.
    NotFound {
        /// The routes that exist, e.g. `/openai/*`.
        routes: Vec<String>,
    },
    /// PROXY_API_KEYS is set and the request carries none of its tokens.
    Unauthorized,
    /// The provider exists but has no keys.
    NoKeys {
        /// The variable to set.
        keys_var: String,
    },
    /// The request body is over MAX_BODY_BYTES.
    BodyTooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// The request body could not be read.
    BadBody,
    /// The method, path or a header cannot be sent upstream as it is.
    BadRequest,
    /// Every key is cooling down or failed with 429.
    Exhausted {
        /// Whole seconds until the earliest key frees, at least 1.
        retry_after_secs: u64,
    },
    /// The upstream could not be reached with any key.
    Unreachable {
        /// Upstream host (never a URL with a query).
        host: String,
    },
    /// The upstream broke the connection or answered garbage after the request was sent.
    UpstreamFailed {
        /// Upstream host.
        host: String,
    },
    /// The upstream did not answer in time after the request was sent.
    Timeout {
        /// Upstream host.
        host: String,
        /// The limit that ran out.
        secs: u64,
    },
    /// The upstream's TLS certificate is not trusted.
    Untrusted {
        /// Upstream host.
        host: String,
        /// What rustls said about it.
        why: String,
    },
    /// The client's request is not acceptable HTTP (see [`HeadError`]).
    Http(HeadError),
    /// The client stalled in the middle of a request.
    ClientTimeout,
    /// Every worker stayed busy for QUEUE_TIMEOUT_SECS while the request waited.
    Overloaded {
        /// WORKERS.
        workers: usize,
        /// How long it waited.
        waited_secs: u64,
    },
    /// A steering request from a non-loopback client while no access token is configured.
    LoopbackOnly,
    /// A path under keyrelay's own pages that names nothing.
    NoSuchAdminPath {
        /// The path asked for.
        path: String,
    },
    /// The method is not one the path accepts.
    MethodNotAllowed {
        /// The one it accepts.
        allow: &'static str,
    },
    /// The request names an object owned by a key that is cooling down; no other key can
    /// use the object.
    OwnerCooling {
        /// The object, e.g. `file-abc`.
        resource: String,
        /// The owning key's mask.
        key: String,
        /// Whole seconds until that key frees, at least 1.
        retry_after_secs: u64,
    },
    /// The request names an object owned by a key that is out of rotation (disabled, invalid,
    /// spent, or without access to the model).
    OwnerUnavailable {
        /// The object.
        resource: String,
        /// The owning key's mask.
        key: String,
        /// Why the key is out.
        why: String,
    },
    /// The request names objects owned by two different keys.
    OwnersDiffer {
        /// One object and its key's mask.
        first: (String, String),
        /// Another object and its key's mask.
        second: (String, String),
    },
    /// A bug: keyrelay failed while handling this request.
    Internal,
}

impl From<HeadError> for ProxyError {
    fn from(error: HeadError) -> ProxyError {
        ProxyError::Http(error)
    }
}

/// The parts of an error answer.
pub struct ErrorAnswer {
    /// HTTP status.
    pub status: u16,
    /// Extra headers (e.g. Retry-After).
    pub headers: Vec<(&'static str, String)>,
    /// JSON body.
    pub body: String,
}

impl ProxyError {
    /// Status, the code word used in bodies, and the message.
    fn parts(&self) -> (u16, &'static str, String) {
        match self {
            ProxyError::NotFound { routes } => (
                404,
                "not_found",
                format!(
                    "No route for this path. keyrelay serves {}; point your SDK's base URL at one of them.",
                    routes.join(", ")
                ),
            ),
            ProxyError::Unauthorized => (
                401,
                "invalid_proxy_token",
                "Missing or invalid keyrelay access token: use one of the tokens in PROXY_API_KEYS as your SDK's API key (Authorization: Bearer, x-goog-api-key, x-api-key or ?key=).".to_string(),
            ),
            ProxyError::NoKeys { keys_var } => (
                503,
                "no_keys",
                format!("No API keys configured for this provider: set {keys_var} and restart keyrelay."),
            ),
            ProxyError::BodyTooLarge { limit } => (
                413,
                "request_too_large",
                format!("Request body is larger than {limit} bytes; send a smaller body or raise MAX_BODY_BYTES."),
            ),
            ProxyError::BadBody => (
                400,
                "invalid_request_body",
                "The request body could not be read (connection closed or malformed chunked encoding); send it again.".to_string(),
            ),
            ProxyError::BadRequest => (
                400,
                "invalid_request",
                "The request's method, path or headers cannot be forwarded (invalid characters); fix the request and retry.".to_string(),
            ),
            ProxyError::Exhausted { retry_after_secs } => (
                429,
                "rate_limit_exceeded",
                format!("All API keys for this provider are rate limited or unavailable; retry after {retry_after_secs} s or add keys."),
            ),
            ProxyError::Unreachable { host } => (
                502,
                "upstream_unreachable",
                format!("Could not reach the upstream {host} with any key; check its base URL and the network, then retry."),
            ),
            ProxyError::UpstreamFailed { host } => (
                502,
                "upstream_failed",
                format!("The upstream {host} closed the connection or sent an invalid answer after receiving the request; it was not retried with another key because it may have been processed. Retry if that is safe."),
            ),
            ProxyError::Timeout { host, secs } => (
                504,
                "upstream_timeout",
                format!("The upstream {host} sent nothing for {secs} s; retry, or raise UPSTREAM_TIMEOUT_SECS for slow models."),
            ),
            ProxyError::Untrusted { host, why } => (
                502,
                "upstream_certificate_untrusted",
                format!("The upstream {host} presented a TLS certificate keyrelay does not trust ({why}). If it is signed by your own or your company's CA (a TLS-inspecting proxy, a self-hosted upstream), put that CA's PEM certificate in UPSTREAM_CA_FILE and reload keyrelay (SIGHUP)."),
            ),
            ProxyError::Http(error) => (error.status(), "invalid_http_request", error.message()),
            ProxyError::ClientTimeout => (
                408,
                "request_timeout",
                "The request was not completed in time (CLIENT_IDLE_TIMEOUT_SECS); send it again without pausing.".to_string(),
            ),
            ProxyError::Overloaded { workers, waited_secs } => (
                503,
                "overloaded",
                format!("keyrelay is at capacity: all {workers} workers stayed busy while this request waited {waited_secs} s (QUEUE_TIMEOUT_SECS). Retry shortly; if this repeats, raise WORKERS."),
            ),
            ProxyError::LoopbackOnly => (
                403,
                "loopback_only",
                "Steering the key pool is allowed from this machine only while PROXY_API_KEYS is unset; send the request from 127.0.0.1, or set PROXY_API_KEYS and send a token.".to_string(),
            ),
            ProxyError::NoSuchAdminPath { path } => (
                404,
                "not_found",
                format!("Nothing at {path}: use POST /status/keys/<provider>/<position>/reset, /disable or /enable, with a position that GET /status shows."),
            ),
            ProxyError::MethodNotAllowed { allow } => (
                405,
                "method_not_allowed",
                format!("This path accepts {allow} only."),
            ),
            ProxyError::OwnerCooling { resource, key, retry_after_secs } => (
                429,
                "rate_limit_exceeded",
                format!("{resource} belongs to the account of key {key}, which is rate limited; no other key can use it. Retry after {retry_after_secs} s."),
            ),
            ProxyError::OwnerUnavailable { resource, key, why } => (
                503,
                "owner_key_unavailable",
                format!("{resource} belongs to the account of key {key}, which is out of rotation ({why}); no other key can use it. Fix or re-enable that key (GET /status shows it), or create the object again."),
            ),
            ProxyError::OwnersDiffer { first, second } => (
                409,
                "objects_of_different_keys",
                format!("This request names {} (owned by the account of key {}) and {} (owned by the account of key {}); one request can only use objects of one account. Use objects created through the same key, or create them again.", first.0, first.1, second.0, second.1),
            ),
            ProxyError::Internal => (
                500,
                "internal_error",
                "keyrelay failed while handling this request; retry, and report it if it repeats.".to_string(),
            ),
        }
    }

    /// The HTTP status of this error.
    pub fn status(&self) -> u16 {
        self.parts().0
    }

    /// Renders the answer in `shape`.
    pub fn answer(&self, shape: ErrorShape) -> ErrorAnswer {
        let (status, code, message) = self.parts();
        let mut headers = Vec::new();
        match self {
            ProxyError::Exhausted { retry_after_secs }
            | ProxyError::OwnerCooling {
                retry_after_secs, ..
            } => {
                headers.push(("retry-after", retry_after_secs.to_string()));
            }
            ProxyError::Overloaded { .. } => headers.push(("retry-after", "1".to_string())),
            ProxyError::MethodNotAllowed { allow } => headers.push(("allow", allow.to_string())),
            _ => {}
        }
        ErrorAnswer {
            status,
            headers,
            body: render(shape, status, code, &message),
        }
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.parts().2)
    }
}

/// The last event of a Server-Sent Events answer whose upstream broke off after it started
/// (reset, silence past UPSTREAM_TIMEOUT_SECS, a truncated body), in the provider's own
/// streaming error shape, so its SDK raises an error that says so instead of taking a cut
/// answer for a whole one.
pub fn broken_stream_event(shape: ErrorShape, host: &str) -> String {
    let message = format!(
        "The upstream {host} broke off this stream after it had started (connection reset, no data for UPSTREAM_TIMEOUT_SECS, or a truncated body); the answer is incomplete. Retry the request."
    );
    let body = render(shape, 502, "upstream_stream_broken", &message);
    match shape {
        // Anthropic streams name their events; its SDKs raise on `event: error`.
        ErrorShape::Anthropic => format!("event: error\ndata: {body}\n\n"),
        ErrorShape::OpenAi | ErrorShape::Gemini => format!("data: {body}\n\n"),
    }
}

/// A JSON error body in `shape`.
pub fn render(shape: ErrorShape, status: u16, code: &str, message: &str) -> String {
    let message = quote(message);
    match shape {
        ErrorShape::OpenAi => format!(
            r#"{{"error":{{"message":{message},"type":{},"code":{}}}}}"#,
            quote(openai_type(status)),
            quote(code)
        ),
        ErrorShape::Gemini => format!(
            r#"{{"error":{{"code":{status},"message":{message},"status":{}}}}}"#,
            quote(google_status(status))
        ),
        ErrorShape::Anthropic => format!(
            r#"{{"type":"error","error":{{"type":{},"message":{message}}}}}"#,
            quote(anthropic_type(status))
        ),
    }
}

fn openai_type(status: u16) -> &'static str {
    match status {
        429 => "rate_limit_error",
        401 | 403 => "authentication_error",
        400..=499 => "invalid_request_error",
        _ => "server_error",
    }
}

fn google_status(status: u16) -> &'static str {
    match status {
        400 | 413 | 417 | 431 | 505 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        408 => "DEADLINE_EXCEEDED",
        409 => "FAILED_PRECONDITION",
        429 => "RESOURCE_EXHAUSTED",
        502 | 503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "INTERNAL",
    }
}

fn anthropic_type(status: u16) -> &'static str {
    match status {
        400 | 409 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        _ => "api_error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let cases: Vec<(ProxyError, u16)> = vec![
            (
                ProxyError::NotFound {
                    routes: vec!["/openai/*".into()],
                },
                404,
            ),
            (
                ProxyError::NoKeys {
                    keys_var: "GEMINI_API_KEYS".into(),
                },
                503,
            ),
            (ProxyError::BodyTooLarge { limit: 10 }, 413),
            (ProxyError::BadBody, 400),
            (ProxyError::Unauthorized, 401),
            (ProxyError::BadRequest, 400),
            (
                ProxyError::Exhausted {
                    retry_after_secs: 7,
                },
                429,
            ),
            (ProxyError::Unreachable { host: "h".into() }, 502),
            (ProxyError::UpstreamFailed { host: "h".into() }, 502),
            (
                ProxyError::Timeout {
                    host: "h".into(),
                    secs: 3,
                },
                504,
            ),
            (ProxyError::Http(HeadError::TooLarge), 431),
            (ProxyError::Http(HeadError::Version), 505),
            (ProxyError::ClientTimeout, 408),
            (ProxyError::Internal, 500),
            (
                ProxyError::OwnerCooling {
                    resource: "file-a".into(),
                    key: "sk-1...0001".into(),
                    retry_after_secs: 3,
                },
                429,
            ),
            (
                ProxyError::OwnerUnavailable {
                    resource: "file-a".into(),
                    key: "sk-1...0001".into(),
                    why: "disabled".into(),
                },
                503,
            ),
            (
                ProxyError::OwnersDiffer {
                    first: ("file-a".into(), "k1".into()),
                    second: ("file-b".into(), "k2".into()),
                },
                409,
            ),
        ];
        for (error, status) in cases {
            for shape in [
                ErrorShape::OpenAi,
                ErrorShape::Gemini,
                ErrorShape::Anthropic,
            ] {
                let answer = error.answer(shape);
                assert_eq!(answer.status, status);
                assert!(answer.body.starts_with('{') && answer.body.ends_with('}'));
                assert!(answer.body.contains("\"error\""));
            }
        }
    }

    #[test]
    fn shapes() {
        let e = ProxyError::Exhausted {
            retry_after_secs: 7,
        };
        let openai = e.answer(ErrorShape::OpenAi);
        assert!(
            openai
                .body
                .contains(r#""type":"rate_limit_error","code":"rate_limit_exceeded""#)
        );
        assert_eq!(openai.headers, vec![("retry-after", "7".to_string())]);
        let gemini = e.answer(ErrorShape::Gemini).body;
        assert!(gemini.contains(r#""code":429"#) && gemini.contains("RESOURCE_EXHAUSTED"));
        let anthropic = e.answer(ErrorShape::Anthropic).body;
        assert!(anthropic.starts_with(r#"{"type":"error","error":{"type":"rate_limit_error""#));
    }
}
