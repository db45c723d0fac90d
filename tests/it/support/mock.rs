//! Mock upstream: a tiny_http server on 127.0.0.1:0 that records every request and answers from a
//! script (a closure over the recorded request), including slow, streamed and endless replies.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Handler threads: enough to hold a couple of slow streams and still answer other requests.
const HANDLERS: usize = 8;

/// One request as the mock upstream received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    /// Request target as received: path and query, byte for byte.
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The credential it carried: `Authorization: Bearer <k>`, else `x-goog-api-key: <k>`.
    pub key: Option<String>,
}

impl Recorded {
    /// First value of a header, case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn key(&self) -> &str {
        self.key.as_deref().unwrap_or("")
    }
}

/// How the mock answers one request.
#[derive(Clone, Debug)]
pub enum Reply {
    /// Status, headers and a body sent with Content-Length, after `delay`.
    Full {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        delay: Duration,
    },
    /// Server-Sent Events: one chunk per event, flushed, `gap` between events.
    Sse { events: Vec<Vec<u8>>, gap: Duration },
    /// `len` bytes of [`pattern_byte`] generated on the fly, never buffered whole.
    Huge { len: u64 },
    /// A chunked stream that never ends; a failed write is reported to [`Mock::wait_write_failure`].
    Endless,
    /// A chunked answer of this content type written piece by piece, each after its pause;
    /// then the clean end, or (`break_off`) a garbled chunk size, as a broken upstream sends.
    Chunks {
        content_type: String,
        pieces: Vec<(Duration, Vec<u8>)>,
        break_off: bool,
    },
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply::Full {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            delay: Duration::ZERO,
        }
    }

    /// 200 with the body `{"ok":true}`.
    pub fn ok_json() -> Reply {
        Reply::json(200, r#"{"ok":true}"#)
    }

    pub fn json(status: u16, body: &str) -> Reply {
        Reply::status(status)
            .header("content-type", "application/json")
            .body(body.as_bytes())
    }

    pub fn header(mut self, name: &str, value: &str) -> Reply {
        if let Reply::Full { headers, .. } = &mut self {
            headers.push((name.to_string(), value.to_string()));
        }
        self
    }

    pub fn body(mut self, bytes: &[u8]) -> Reply {
        if let Reply::Full { body, .. } = &mut self {
            *body = bytes.to_vec();
        }
        self
    }

    pub fn delay(mut self, d: Duration) -> Reply {
        if let Reply::Full { delay, .. } = &mut self {
            *delay = d;
        }
        self
    }
}

/// Byte `i` of the large-download pattern (period 251, a prime, so chunk boundaries never align).
pub fn pattern_byte(i: u64) -> u8 {
    (i % 251) as u8
}

type Script = dyn Fn(&Recorded) -> Reply + Send + Sync;

struct State {
    script: Box<Script>,
    close: bool,
    recorded: Mutex<Vec<Recorded>>,
    stop: AtomicBool,
    write_failed_tx: Mutex<Sender<()>>,
}

/// A running mock upstream; stops its handler threads on drop.
pub struct Mock {
    pub port: u16,
    state: Arc<State>,
    write_failed_rx: Mutex<Receiver<()>>,
}

impl Mock {
    /// Starts a mock answering every request with `script(&request)`, keeping connections alive.
    pub fn start(script: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) -> Mock {
        Mock::launch(false, script)
    }

    /// Like [`Mock::start`], but every reply carries `Connection: close`. Needed for concurrent
    /// tests: tiny_http's connection pool can queue a new connection behind idle keep-alive ones
    /// (its idle-thread count goes stale in a burst), stalling it until one of them closes.
    pub fn start_closing(script: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) -> Mock {
        Mock::launch(true, script)
    }

    fn launch(close: bool, script: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) -> Mock {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("bind mock upstream"));
        let port = server
            .server_addr()
            .to_ip()
            .expect("mock listens on IP")
            .port();
        let (tx, rx) = channel();
        let state = Arc::new(State {
            script: Box::new(script),
            close,
            recorded: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            write_failed_tx: Mutex::new(tx),
        });
        for _ in 0..HANDLERS {
            let server = Arc::clone(&server);
            let state = Arc::clone(&state);
            thread::spawn(move || serve(&server, &state));
        }
        Mock {
            port,
            state,
            write_failed_rx: Mutex::new(rx),
        }
    }

    /// A mock that answers 200 `{"ok":true}` to everything.
    pub fn ok() -> Mock {
        Mock::start(|_| Reply::ok_json())
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.recorded.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.state.recorded.lock().unwrap().len()
    }

    /// Keys carried by the recorded requests, in arrival order.
    pub fn keys(&self) -> Vec<String> {
        self.requests()
            .iter()
            .map(|r| r.key().to_string())
            .collect()
    }

    /// The most recent request; panics if none arrived.
    pub fn last(&self) -> Recorded {
        self.requests().pop().expect("the mock received no request")
    }

    /// Waits until a streamed write to the proxy failed (the proxy closed the connection).
    pub fn wait_write_failure(&self, timeout: Duration) -> bool {
        self.write_failed_rx
            .lock()
            .unwrap()
            .recv_timeout(timeout)
            .is_ok()
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
    }
}

fn serve(server: &tiny_http::Server, state: &State) {
    while !state.stop.load(Ordering::SeqCst) {
        match server.recv_timeout(Duration::from_millis(100)) {
            Ok(Some(request)) => handle(request, state),
            Ok(None) => {}
            Err(_) => return,
        }
    }
}

fn handle(mut request: tiny_http::Request, state: &State) {
    let mut body = Vec::new();
    if request.as_reader().read_to_end(&mut body).is_err() {
        return;
    }
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
    let recorded = Recorded {
        method: request.method().as_str().to_string(),
        url: request.url().to_string(),
        key: extract_key(&headers),
        headers,
        body,
    };
    let reply = (state.script)(&recorded);
    let head_request = recorded.method == "HEAD";
    state.recorded.lock().unwrap().push(recorded);
    let mut w = request.into_writer();
    let result = match reply {
        Reply::Full {
            status,
            headers,
            body,
            delay,
        } => {
            wait_or_stop(delay, state);
            let mut headers = headers;
            if state.close {
                headers.push(("Connection".into(), "close".into()));
            }
            write_full(&mut w, status, &headers, &body, head_request)
        }
        Reply::Sse { events, gap } => write_sse(&mut w, &events, gap, state),
        Reply::Chunks {
            content_type,
            pieces,
            break_off,
        } => write_chunks(&mut w, &content_type, &pieces, break_off, state),
        Reply::Huge { len } => write_huge(&mut w, len),
        Reply::Endless => {
            if write_endless(&mut w, state).is_err() {
                let _ = state.write_failed_tx.lock().unwrap().send(());
            }
            Ok(())
        }
    };
    // A proxy that went away mid-reply is expected in several tests.
    let _ = result;
}

fn extract_key(headers: &[(String, String)]) -> Option<String> {
    let find = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    if let Some(auth) = find("authorization") {
        return Some(auth.strip_prefix("Bearer ").unwrap_or(&auth).to_string());
    }
    find("x-goog-api-key")
}

/// Sleeps up to `d`, in short slices so a dropped mock releases its threads quickly.
fn wait_or_stop(d: Duration, state: &State) {
    let deadline = Instant::now() + d;
    while Instant::now() < deadline && !state.stop.load(Ordering::SeqCst) {
        thread::sleep(Duration::from_millis(10).min(deadline - Instant::now()));
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

fn write_head(w: &mut dyn Write, status: u16, headers: &[(String, String)]) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    w.write_all(head.as_bytes())
}

fn write_full(
    w: &mut dyn Write,
    status: u16,
    headers: &[(String, String)],
    body: &[u8],
    head_request: bool,
) -> std::io::Result<()> {
    let mut all = headers.to_vec();
    let no_body = status == 204 || status == 304;
    if !no_body {
        all.push(("Content-Length".into(), body.len().to_string()));
    }
    write_head(w, status, &all)?;
    if !no_body && !head_request {
        w.write_all(body)?;
    }
    w.flush()
}

fn write_chunk(w: &mut dyn Write, data: &[u8]) -> std::io::Result<()> {
    w.write_all(format!("{:x}\r\n", data.len()).as_bytes())?;
    w.write_all(data)?;
    w.write_all(b"\r\n")?;
    w.flush()
}

fn chunked_head(content_type: &str) -> Vec<(String, String)> {
    vec![
        ("Content-Type".into(), content_type.into()),
        ("Transfer-Encoding".into(), "chunked".into()),
        ("Cache-Control".into(), "no-cache".into()),
    ]
}

fn write_sse(
    w: &mut dyn Write,
    events: &[Vec<u8>],
    gap: Duration,
    state: &State,
) -> std::io::Result<()> {
    write_head(w, 200, &chunked_head("text/event-stream"))?;
    w.flush()?;
    for (i, event) in events.iter().enumerate() {
        if i > 0 {
            wait_or_stop(gap, state);
        }
        write_chunk(w, event)?;
    }
    w.write_all(b"0\r\n\r\n")?;
    w.flush()
}

fn write_chunks(
    w: &mut dyn Write,
    content_type: &str,
    pieces: &[(Duration, Vec<u8>)],
    break_off: bool,
    state: &State,
) -> std::io::Result<()> {
    write_head(w, 200, &chunked_head(content_type))?;
    w.flush()?;
    for (pause, piece) in pieces {
        wait_or_stop(*pause, state);
        write_chunk(w, piece)?;
    }
    if break_off {
        // Apart from the last piece, so the reader gets that piece before the garbage.
        wait_or_stop(Duration::from_millis(100), state);
    }
    w.write_all(if break_off { b"zz\r\n" } else { b"0\r\n\r\n" })?;
    w.flush()
}

fn write_huge(w: &mut dyn Write, len: u64) -> std::io::Result<()> {
    let headers = vec![
        ("Content-Type".into(), "application/octet-stream".into()),
        ("Content-Length".into(), len.to_string()),
    ];
    write_head(w, 200, &headers)?;
    // 251 * 256 bytes: a whole number of pattern periods, so every slice starts at phase 0.
    let block: Vec<u8> = (0..251 * 256).map(pattern_byte).collect();
    let mut left = len;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        w.write_all(&block[..n])?;
        left -= n as u64;
    }
    w.flush()
}

/// Writes a tick every 20 ms until a write fails, the mock stops, or 60 s pass.
fn write_endless(w: &mut dyn Write, state: &State) -> std::io::Result<()> {
    write_head(w, 200, &chunked_head("text/event-stream"))?;
    w.flush()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut n = 0u64;
    while Instant::now() < deadline && !state.stop.load(Ordering::SeqCst) {
        write_chunk(
            w,
            format!("data: tick {n} {}\n\n", "x".repeat(512)).as_bytes(),
        )?;
        n += 1;
        thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}
