//! The connection guard: one thread per client connection that reads requests off the socket
//! before tiny_http sees them. It bounds the head, the body and the time a client may stall,
//! answers refusals itself, and hands tiny_http only well-formed requests with a plain
//! Content-Length body (tiny_http 0.12 trusts whatever it parses; see DESIGN.md).

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::bridge::Bridge;
use crate::chunked::ChunkedDecoder;
use crate::client_conn::{ClientConn, Registry};
use crate::error::ProxyError;
use crate::headers::connection_tokens;
use crate::http_head::{Head, parse_head};
use crate::provider::ErrorShape;
use crate::proxy::Proxy;

/// How often a blocked read wakes to check idle time and shutdown.
pub const TICK: Duration = Duration::from_millis(500);

/// How often it wakes while an answer is being written (a thousand open streams should not mean
/// two thousand wake-ups a second); idle time is only counted once the answer is done.
const BUSY_TICK: Duration = Duration::from_secs(5);

/// Header carrying the connection id from the guard to the worker.
pub const CONN_HEADER: &str = "x-keyrelay-conn";
/// Header carrying the client's HTTP version and close wish from the guard to the worker.
pub const CLIENT_HEADER: &str = "x-keyrelay-client";

/// Headers the guard never passes to tiny_http: framing it sets itself, hop-by-hop headers,
/// and its own internal headers (a client must not forge them).
const STRIPPED: [&str; 9] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "expect",
    "te",
    "trailer",
    "upgrade",
];

/// What every guard shares.
pub struct GuardContext {
    /// Links into tiny_http.
    pub bridge: Bridge,
    /// Set when the process is shutting down: idle connections close, requests get no successor.
    pub stopping: Arc<AtomicBool>,
    /// The proxy: its registry of connections, its limits (MAX_BODY_BYTES, and
    /// CLIENT_IDLE_TIMEOUT_SECS for idle connections and stalled requests), request ids, and the
    /// error shape of the provider a request is for.
    pub proxy: Arc<Proxy>,
}

impl GuardContext {
    /// Open connections.
    pub fn registry(&self) -> &Registry {
        &self.proxy.registry
    }

    fn idle_timeout(&self) -> Duration {
        self.proxy.limits.client_timeout
    }

    fn shape_for(&self, target: &str) -> ErrorShape {
        let name = target
            .trim_start_matches('/')
            .split(['/', '?'])
            .next()
            .unwrap_or("");
        self.proxy
            .providers()
            .iter()
            .find(|p| p.name == name)
            .map_or(ErrorShape::OpenAi, |p| p.shape)
    }
}

/// Why reading stopped.
enum Stop {
    /// The client closed, the connection idled out, or the process is stopping.
    Quiet,
    /// The client must be told why, then the connection closes.
    Refuse(ProxyError, ErrorShape),
}

/// Method and path of the request being refused, for the log line.
type RequestLine = Option<(String, String)>;

/// Serves one client connection until it closes.
pub fn serve(ctx: &GuardContext, conn: Arc<ClientConn>) {
    let mut guard = Guard {
        ctx,
        conn: &conn,
        buf: Vec::with_capacity(4096),
        last_progress: Instant::now(),
        head_started: None,
        tick: TICK,
    };
    let mut line: RequestLine = None;
    if let Stop::Refuse(error, shape) = guard.run(&mut line) {
        guard.refuse(&error, shape, line);
    }
    ctx.registry().guard_done(&conn);
}

struct Guard<'a> {
    ctx: &'a GuardContext,
    conn: &'a ClientConn,
    buf: Vec<u8>,
    last_progress: Instant,
    /// When the first byte of the head being read arrived: a head must be complete within
    /// the idle timeout, however slowly its bytes trickle in.
    head_started: Option<Instant>,
    /// The socket's current read timeout.
    tick: Duration,
}

impl Guard<'_> {
    fn run(&mut self, line: &mut RequestLine) -> Stop {
        loop {
            *line = None;
            let head = loop {
                match parse_head(&self.buf) {
                    Ok(Some(head)) => break head,
                    Ok(None) => {
                        if !self.buf.is_empty() {
                            let started = *self.head_started.get_or_insert_with(Instant::now);
                            if started.elapsed() > self.ctx.idle_timeout() {
                                return Stop::Refuse(ProxyError::ClientTimeout, ErrorShape::OpenAi);
                            }
                        }
                        if let Err(stop) = self.read_more() {
                            return stop;
                        }
                    }
                    Err(error) => {
                        let shape = ErrorShape::OpenAi;
                        return Stop::Refuse(ProxyError::Http(error), shape);
                    }
                }
            };
            self.head_started = None;
            // The refusal's error shape and log line are worked out only for a refusal.
            let ctx = self.ctx;
            let refuse = |line: &mut RequestLine, error| {
                let path = head.target.split('?').next().unwrap_or("");
                *line = Some((head.method.clone(), path.to_string()));
                Stop::Refuse(error, ctx.shape_for(&head.target))
            };
            let _receiving = self.ctx.registry().receiving();
            let body = match self.read_body(&head) {
                Ok(body) => body,
                Err(Stop::Refuse(error, _)) => return refuse(line, error),
                Err(stop) => return stop,
            };
            let close = head.close || self.ctx.stopping.load(Ordering::SeqCst);
            // A Content-Length body is sent straight from the read buffer, without a copy.
            let payload: &[u8] = match &body.decoded {
                Some(decoded) => decoded,
                None => &self.buf[head.len..head.len + body.consumed],
            };
            let forwarded = normalised_head(
                &self.buf[..head.len],
                &head,
                payload.len(),
                self.conn.id,
                close,
            );
            self.conn.wait_until_answered();
            self.ctx.registry().request_forwarded(self.conn);
            if let Err(err) = self.ctx.bridge.send(self.conn.id, &forwarded, payload) {
                log::error!("cannot hand a request to tiny_http: {err}");
                self.ctx.registry().request_done(self.conn);
                return refuse(line, ProxyError::Internal);
            }
            self.buf.drain(..head.len + body.consumed);
            if close {
                return Stop::Quiet;
            }
        }
    }

    /// Reads the body that follows `head` (which is at the start of `buf`), bounded.
    fn read_body(&mut self, head: &Head) -> Result<Body, Stop> {
        let limit = self.ctx.proxy.limits.max_body_bytes;
        let too_large = || Stop::Refuse(ProxyError::BodyTooLarge { limit }, ErrorShape::OpenAi);
        if head.chunked {
            self.continue_if_expected(head)?;
            let mut decoder = ChunkedDecoder::default();
            let mut bytes = Vec::new();
            // Framing bytes (size lines, extensions, trailers) count too, so a body of tiny
            // chunks with long extensions, or endless trailers, cannot run on unbounded.
            let raw_budget = limit.saturating_mul(2).saturating_add(64 * 1024);
            let mut raw_seen = 0u64;
            loop {
                let at = head.len;
                let malformed = |_| Stop::Refuse(ProxyError::BadBody, ErrorShape::OpenAi);
                let (used, done) = decoder
                    .decode(&self.buf[at..], &mut bytes)
                    .map_err(malformed)?;
                raw_seen += used as u64;
                if bytes.len() as u64 > limit || raw_seen > raw_budget {
                    return Err(too_large());
                }
                if done {
                    return Ok(Body {
                        decoded: Some(bytes),
                        consumed: used,
                    });
                }
                // Decoded bytes are kept in `bytes`; drop their raw form so the buffer holds
                // at most the head and one read.
                self.buf.drain(at..at + used);
                self.read_more()?;
            }
        }
        let length = head.content_length.unwrap_or(0);
        if length > limit {
            return Err(too_large());
        }
        let length = length as usize;
        if self.buf.len() - head.len < length {
            self.continue_if_expected(head)?;
        }
        while self.buf.len() - head.len < length {
            self.read_more()?;
        }
        Ok(Body {
            decoded: None,
            consumed: length,
        })
    }

    fn continue_if_expected(&mut self, head: &Head) -> Result<(), Stop> {
        if head.expect_continue && self.buf.len() == head.len {
            self.conn.wait_until_answered();
            (&self.conn.tcp)
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .map_err(|_| Stop::Quiet)?;
        }
        Ok(())
    }

    /// Reads more bytes into `buf`, waking every [`TICK`] to enforce the idle timeout and
    /// shutdown. A connection with a response in flight is never idle.
    fn read_more(&mut self) -> Result<(), Stop> {
        let start = self.buf.len();
        self.buf.resize(start + 16 * 1024, 0);
        let result = loop {
            match (&self.conn.tcp).read(&mut self.buf[start..]) {
                Ok(0) => break Err(Stop::Quiet),
                Ok(n) => {
                    self.last_progress = Instant::now();
                    break Ok(start + n);
                }
                Err(err) if is_timeout(&err) => {
                    if self.conn.in_flight() > 0 {
                        // An answer (often a long stream) is on its way: nothing to check until
                        // it ends, so wake rarely. New bytes from the client still wake at once.
                        self.last_progress = Instant::now();
                        self.set_tick(BUSY_TICK);
                        continue;
                    }
                    self.set_tick(TICK);
                    let idle = self.last_progress.elapsed() >= self.ctx.idle_timeout();
                    let head_late = self
                        .head_started
                        .is_some_and(|at| at.elapsed() > self.ctx.idle_timeout());
                    if start > 0 && (idle || head_late) {
                        break Err(Stop::Refuse(ProxyError::ClientTimeout, ErrorShape::OpenAi));
                    }
                    if start == 0 && (idle || self.ctx.stopping.load(Ordering::SeqCst)) {
                        break Err(Stop::Quiet);
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break Err(Stop::Quiet),
            }
        };
        match result {
            Ok(len) => {
                self.buf.truncate(len);
                Ok(())
            }
            Err(stop) => {
                self.buf.truncate(start);
                Err(stop)
            }
        }
    }

    /// Sets how often a blocked read wakes, when it changes.
    fn set_tick(&mut self, tick: Duration) {
        if self.tick != tick && self.conn.tcp.set_read_timeout(Some(tick)).is_ok() {
            self.tick = tick;
        }
    }

    /// Answers a refusal, then closes gently: stop writing, and read what the client still
    /// sends for a moment, so the answer is not lost to a reset.
    fn refuse(&mut self, error: &ProxyError, shape: ErrorShape, line: RequestLine) {
        let answer = error.answer(shape);
        let id = self.ctx.proxy.ids.next();
        let (method, path) = line.unwrap_or_else(|| ("-".into(), "-".into()));
        log::info!(
            "req={id} {method} {path} status={} attempts=0 key=- ms=0 refused=guard",
            answer.status
        );
        let mut response = format!(
            "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-request-id: {id}\r\nconnection: close\r\n",
            answer.status,
            crate::stream::reason_phrase(answer.status),
            answer.body.len()
        );
        for (name, value) in &answer.headers {
            response.push_str(&format!("{name}: {value}\r\n"));
        }
        response.push_str("\r\n");
        response.push_str(&answer.body);
        self.conn.wait_until_answered();
        let _ = (&self.conn.tcp).write_all(response.as_bytes());
        let _ = self.conn.tcp.shutdown(Shutdown::Write);
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut sink = [0u8; 16 * 1024];
        let mut drained = 0usize;
        while Instant::now() < deadline && drained < 4 * 1024 * 1024 {
            match (&self.conn.tcp).read(&mut sink) {
                Ok(0) => break,
                Ok(n) => drained += n,
                Err(err) if is_timeout(&err) => {}
                Err(_) => break,
            }
        }
        let _ = self.conn.tcp.shutdown(Shutdown::Both);
    }
}

/// A request body read off the client connection.
struct Body {
    /// The de-chunked payload of a chunked body; `None` when the payload is the `consumed`
    /// bytes after the head in the read buffer.
    decoded: Option<Vec<u8>>,
    /// Bytes it occupied on the connection after the head.
    consumed: usize,
}

fn is_timeout(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// The head tiny_http receives: HTTP/1.1, the client's end-to-end headers, a Content-Length
/// for the (de-chunked) body, and the internal headers that tell the worker whom to answer.
fn normalised_head(raw: &[u8], head: &Head, body_len: usize, conn_id: u64, close: bool) -> Vec<u8> {
    let text = |range: &std::ops::Range<usize>| String::from_utf8_lossy(&raw[range.clone()]);
    let listed: Vec<String> = head
        .headers
        .iter()
        .filter(|(name, _)| text(name).eq_ignore_ascii_case("connection"))
        .flat_map(|(_, value)| connection_tokens(Some(&text(value))))
        .collect();
    let mut out = Vec::with_capacity(head.len + 96);
    out.extend_from_slice(format!("{} {} HTTP/1.1\r\n", head.method, head.target).as_bytes());
    for (name, value) in &head.headers {
        let lower = text(name).to_ascii_lowercase();
        if STRIPPED.contains(&lower.as_str())
            || lower.starts_with("x-keyrelay-")
            || listed.contains(&lower)
        {
            continue;
        }
        out.extend_from_slice(&raw[name.clone()]);
        out.extend_from_slice(b": ");
        out.extend_from_slice(&raw[value.clone()]);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("content-length: {body_len}\r\n").as_bytes());
    out.extend_from_slice(format!("{CONN_HEADER}: {conn_id}\r\n").as_bytes());
    let version = if head.http10 { "1.0" } else { "1.1" };
    let close = if close { ";close" } else { "" };
    out.extend_from_slice(format!("{CLIENT_HEADER}: {version}{close}\r\n\r\n").as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalised_heads_drop_framing_and_forged_internal_headers() {
        let raw = b"POST /openai/v1/x HTTP/1.0\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nTransfer-Encoding: chunked\r\nX-Keyrelay-Conn: 999\r\nExpect: 100-continue\r\nAuthorization: Bearer c\r\n\r\n";
        let head = parse_head(raw).unwrap().unwrap();
        let out = String::from_utf8(normalised_head(raw, &head, 5, 7, false)).unwrap();
        assert!(out.starts_with("POST /openai/v1/x HTTP/1.1\r\n"), "{out}");
        assert!(out.contains("Authorization: Bearer c\r\n"));
        assert!(out.contains("x-keyrelay-conn: 7\r\n"));
        assert!(out.ends_with("x-keyrelay-client: 1.0\r\n\r\n"), "{out}");
        assert!(out.contains("content-length: 5\r\n"));
        for gone in ["X-Hop", "Transfer-Encoding", "999", "Expect", "Connection"] {
            assert!(!out.contains(gone), "{gone} in {out}");
        }
    }
}
