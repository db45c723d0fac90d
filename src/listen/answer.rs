//! Answers the listener writes itself, without a worker: keyrelay's own pages (so health
//! checks never wait behind proxied requests), refusals of bad heads, and the 503 for a request
//! that waited too long for a worker. Each is rendered whole into bytes and logged.

use std::time::{Duration, Instant};

use super::conn::{AfterWrite, Conn};
use super::head::Head;
use crate::admin;
use crate::error::ProxyError;
use crate::provider::ErrorShape;
use crate::provider::shape_for;
use crate::proxy::Proxy;
use crate::request_log::RequestLog;
use crate::respond::answer::Answer;
use crate::respond::stream::RelayBuffer;
use crate::respond::{ClientInfo, deliver};

/// A rendered answer and what follows it.
pub struct Own {
    /// Status line, headers and body.
    pub bytes: Vec<u8>,
    /// Keep reading, or close after it.
    pub then: AfterWrite,
}

/// True for a request the listener answers itself: one of keyrelay's pages, without a body.
pub fn is_own_page(head: &Head) -> bool {
    admin::is_own(head.path()) && !head.chunked && head.content_length.unwrap_or(0) == 0
}

/// Renders one of keyrelay's own answers (see [`admin::answer_for`]) to the request `head`
/// at the start of `conn`'s buffer, and logs it.
pub fn page(
    proxy: &Proxy,
    conn: &Conn,
    head: &Head,
    stopping: bool,
    scratch: &mut RelayBuffer,
) -> Own {
    let started = Instant::now();
    let buf = &conn.buf;
    let loopback = || conn.tcp.peer_addr().is_ok_and(|a| a.ip().is_loopback());
    let own = admin::answer_for(
        proxy,
        &head.method,
        head.path(),
        head.header_pairs(buf),
        head.query(),
        loopback,
    )
    .expect("is_own_page checked it");
    let answer = match own {
        Ok(page) => Answer::Page(page),
        Err(error) => Answer::Error {
            error,
            shape: ErrorShape::OpenAi,
            attempts: 0,
        },
    };
    let client = ClientInfo {
        id: proxy.ids.for_request(head.header(buf, "x-request-id")),
        method: head.method.clone(),
        http10: head.http10,
        wants_close: head.close || stopping,
    };
    let mut bytes = Vec::with_capacity(1024);
    let report = deliver(&mut bytes, &client, answer, scratch);
    proxy
        .metrics
        .record("keyrelay", "", report.status, started.elapsed());
    RequestLog {
        id: &client.id,
        method: &client.method,
        path: head.path(),
        status: report.status,
        attempts: 0,
        key: None,
        elapsed: started.elapsed(),
        queued: Duration::ZERO,
        note: "",
        pin: None,
        tokens: None,
    }
    .write();
    let then = if client.wants_close {
        AfterWrite::Linger
    } else {
        AfterWrite::Continue
    };
    Own { bytes, then }
}

/// Renders a refusal that closes the connection, logged with the request line when there is
/// one (`request` is the connection's buffer and the parsed head) and the time it `waited` for
/// a worker. `scratch` is the caller's relay buffer, reused.
pub fn refusal(
    proxy: &Proxy,
    error: &ProxyError,
    request: Option<(&[u8], &Head)>,
    waited: Duration,
    scratch: &mut RelayBuffer,
) -> Own {
    let shape = request.map_or(ErrorShape::OpenAi, |(_, head)| {
        shape_for(&proxy.providers(), head.path())
    });
    let id = match request {
        Some((buf, head)) => proxy.ids.for_request(head.header(buf, "x-request-id")),
        None => proxy.ids.next(),
    };
    let client = ClientInfo {
        id,
        method: request.map_or("-".into(), |(_, head)| head.method.clone()),
        http10: request.is_some_and(|(_, head)| head.http10),
        wants_close: true,
    };
    let answer = Answer::Error {
        error: error.clone(),
        shape,
        attempts: 0,
    };
    let mut bytes = Vec::with_capacity(512);
    let report = deliver(&mut bytes, &client, answer, scratch);
    RequestLog {
        id: &client.id,
        method: &client.method,
        path: request.map_or("-", |(_, head)| head.path()),
        status: report.status,
        attempts: 0,
        key: None,
        elapsed: waited,
        queued: waited,
        note: " refused=listener",
        pin: None,
        tokens: None,
    }
    .write();
    Own {
        bytes,
        then: AfterWrite::Linger,
    }
}

/// Logs a queued request (`head`, parsed from `buf`) dropped because its client left before a
/// worker took it, or as one took it.
pub fn log_gone_while_queued(proxy: &Proxy, buf: &[u8], head: &Head, waited: Duration) {
    RequestLog {
        id: &proxy.ids.for_request(head.header(buf, "x-request-id")),
        method: &head.method,
        path: head.path(),
        status: 499,
        attempts: 0,
        key: None,
        elapsed: waited,
        queued: waited,
        note: " aborted=client-gone",
        pin: None,
        tokens: None,
    }
    .write();
}
