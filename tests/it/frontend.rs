//! The front end against the real binary: one epoll listener holding every idle or half-read
//! connection, a bounded queue (QUEUE_TIMEOUT_SECS, MAX_CONNECTIONS) and a fixed pool of WORKERS
//! threads. Idle and trickling clients cost no worker, admin pages never wait for one, a queued
//! request has a deadline and is dropped if its client left, smuggling heads are refused, and
//! buffers shrink back. Measured times and resource figures go to stderr:
//! `cargo test frontend -- --nocapture`.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::support::http::{
    Conn, Reply, Req, body_reader, connect, get, parse_reply, read_until_closed, send,
    served_within,
};
use crate::support::mock::{Mock, Reply as MockReply};
use crate::support::procfs;
use crate::support::proxy::{Proxy, proxy_to};
use crate::support::{squash, wait_until};

const KEY: &str = "sk-frontend-key-0000-0001";
const GEMINI_KEY: &str = "AIza-frontend-gemini-key-0001";
const MODELS: &str = "/openai/v1/models";
const CHAT: &str = "/openai/v1/chat/completions";
const GEMINI_MODELS: &str = "/gemini/v1beta/models";
/// Answered by [`slow_mock`] only after its delay.
const SLOW: &str = "/openai/v1/slow";
/// "Answered at once", generously: only a stuck or starved proxy misses it.
const PROMPT: Duration = Duration::from_secs(2);
/// Longest wait for a condition that should hold almost at once (a connection held, a request
/// arrived upstream, a log line written).
const SETTLE: Duration = Duration::from_secs(10);
/// Longest wait for a read in this module.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
const MIB_IN_KIB: u64 = 1024;

// ---- helpers -----------------------------------------------------------------------------------

/// A mock answering 200 `{"ok":true}` at once, or after `delay` for paths containing `/slow`.
/// `start_closing`: tiny_http can stall a new upstream connection behind idle keep-alive ones, and
/// these tests hold several upstream requests at once.
fn slow_mock(delay: Duration) -> Mock {
    Mock::start_closing(move |r| {
        let reply = MockReply::ok_json();
        if r.url.contains("/slow") {
            reply.delay(delay)
        } else {
            reply
        }
    })
}

/// A first normal request (untimed: start-up on a loaded machine is not what is measured).
fn warm_up(port: u16) {
    let reply = get(port, MODELS);
    assert_eq!(reply.status, 200, "warm-up request: {}", reply.text());
}

/// Sends `req` on a new connection and returns the answer and how long it took.
fn timed(port: u16, req: &Req) -> (Reply, Duration) {
    let started = Instant::now();
    let reply = send(port, req);
    (reply, started.elapsed())
}

/// [`timed`] in a thread; join it for the answer.
fn in_background(port: u16, req: Req) -> JoinHandle<(Reply, Duration)> {
    thread::spawn(move || timed(port, &req))
}

fn join<T>(handle: JoinHandle<T>, what: &str) -> T {
    handle
        .join()
        .unwrap_or_else(|_| panic!("{what}: the client thread panicked"))
}

/// Waits until the mock has received `n` requests. The mock records a request on arrival, before
/// its delay, so a slow request counts while it still occupies a worker.
fn wait_for_upstream(mock: &Mock, n: usize, what: &str) {
    assert!(
        wait_until(SETTLE, || mock.count() >= n),
        "{what} did not reach the upstream within {SETTLE:?} ({} of {n} arrived)",
        mock.count()
    );
}

/// Waits until the proxy holds `n` descriptors more than `base_fds` (one per open connection).
fn wait_held(proxy: &Proxy, base_fds: usize, n: usize) {
    let held = wait_until(SETTLE, || procfs::open_fds(proxy.pid()) >= base_fds + n);
    assert!(
        held,
        "the proxy never held {n} connections: {base_fds} descriptors before, {} now",
        procfs::open_fds(proxy.pid())
    );
}

fn assert_running(proxy: &mut Proxy, after: &str) {
    assert!(
        proxy.exit_status().is_none(),
        "the proxy exited after {after}: {:?}; log:\n{}",
        proxy.exit_status(),
        proxy.log_text()
    );
}

/// Whether the proxy has not closed `stream` (a non-blocking read finds nothing to read yet).
fn still_open(stream: &TcpStream) -> bool {
    stream.set_nonblocking(true).expect("non-blocking");
    let mut probe = [0u8; 1];
    let open = matches!(
        (&*stream).read(&mut probe),
        Err(e) if e.kind() == ErrorKind::WouldBlock
    );
    stream.set_nonblocking(false).expect("blocking again");
    open
}

/// The first per-request log line (`status=`) containing `needle`, waited for up to [`SETTLE`].
fn request_line(proxy: &Proxy, needle: &str) -> String {
    let find = |lines: &[String]| {
        lines
            .iter()
            .find(|l| l.contains(needle) && l.contains("status="))
            .cloned()
    };
    proxy.wait_log(SETTLE, |lines| find(lines).is_some());
    find(&proxy.log())
        .unwrap_or_else(|| panic!("no request line for {needle:?}; log:\n{}", proxy.log_text()))
}

/// The value of `name=<value>` in a log line.
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|token| token.strip_prefix(name)?.strip_prefix('='))
}

/// The sum of every sample of metric `name` (with or without labels) in a Prometheus text page,
/// `None` when there is none.
fn metric(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .fold(None, |sum, v| Some(sum.unwrap_or(0.0) + v))
}

fn metrics_page(port: u16) -> String {
    let reply = get(port, "/metrics");
    assert_eq!(reply.status, 200, "/metrics: {}", reply.text());
    reply.text()
}

/// A request head and body on a kept-alive connection (no `Connection: close`).
fn keep_alive_post(path: &str, body_len: usize, fill: u8) -> Vec<u8> {
    let mut bytes = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
Content-Length: {body_len}\r\n\r\n"
    )
    .into_bytes();
    bytes.resize(bytes.len() + body_len, fill);
    bytes
}

/// Sends `request` on `conn` and reads one framed answer, leaving the connection open.
fn round_trip(conn: &mut Conn, request: &[u8]) -> (u16, Vec<u8>) {
    conn.write(request);
    let head = conn.read_head();
    let mut body = Vec::new();
    body_reader(&head, &mut conn.reader, false)
        .read_to_end(&mut body)
        .expect("a framed body");
    (head.status, body)
}

// ---- idle connections and MAX_CONNECTIONS ------------------------------------------------------

#[test]
fn idle_connections_cost_no_threads() {
    const IDLE: usize = 500;
    const WORKERS: u64 = 8;
    /// Threads beyond the workers: main, listener, signals, logging and the like.
    const OTHER_THREADS: u64 = 8;
    let mock = Mock::start_closing(|_| MockReply::ok_json());
    let mut proxy = proxy_to(&mock.url(), &[KEY], &[])
        .env("WORKERS", &WORKERS.to_string())
        .env("CLIENT_IDLE_TIMEOUT_SECS", "120")
        .start();
    let port = proxy.port;
    warm_up(port);
    let base = procfs::settled(proxy.pid(), Duration::from_secs(3));

    let idle: Vec<TcpStream> = (0..IDLE).map(|_| connect(port)).collect();
    wait_held(&proxy, base.fds, IDLE);
    let holding = procfs::usage(proxy.pid());
    let (reply, took) = timed(port, &Req::get(MODELS));
    let after = procfs::usage(proxy.pid());
    eprintln!(
        "{IDLE} idle connections: before {base}; holding them {holding}; a request answered in \
{took:?}; then {after}"
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(
        took <= PROMPT,
        "a request took {took:?} with {IDLE} idle connections"
    );
    let threads = holding.threads.max(after.threads);
    assert!(
        threads <= WORKERS + OTHER_THREADS,
        "{threads} threads with {IDLE} idle connections and WORKERS={WORKERS}"
    );
    assert_running(&mut proxy, "500 idle connections");

    drop(idle);
    let (back, end) = procfs::wait_back_to(proxy.pid(), base, WORKERS, SETTLE);
    assert!(
        back,
        "descriptors not given back after the idle clients left: before {base}, now {end}"
    );
}

#[test]
fn connections_past_max_connections_are_closed_at_once() {
    const MAX: usize = 20;
    const EXTRA: usize = 10;
    let mock = Mock::start_closing(|_| MockReply::ok_json());
    let mut proxy = proxy_to(&mock.url(), &[KEY], &[])
        .env("MAX_CONNECTIONS", &MAX.to_string())
        .env("CLIENT_IDLE_TIMEOUT_SECS", "120")
        .start();
    let port = proxy.port;
    warm_up(port);
    // The warm-up connection is gone from the count once the descriptors hold still.
    let base = procfs::settled(proxy.pid(), Duration::from_secs(3));

    let idle: Vec<TcpStream> = (0..MAX).map(|_| connect(port)).collect();
    wait_held(&proxy, base.fds, MAX);
    let opened = Instant::now();
    let mut extra: Vec<TcpStream> = (0..EXTRA).map(|_| connect(port)).collect();
    for (i, stream) in extra.iter_mut().enumerate() {
        let (received, closed) = read_until_closed(stream, opened + Duration::from_secs(5));
        assert!(
            closed,
            "connection {} (past MAX_CONNECTIONS={MAX}) was still open {:?} after connecting",
            MAX + 1 + i,
            opened.elapsed()
        );
        assert!(
            received.is_empty(),
            "a connection past MAX_CONNECTIONS got bytes: {:?}",
            String::from_utf8_lossy(&received)
        );
    }
    let all_closed = opened.elapsed();
    let kept = idle.iter().filter(|s| still_open(s)).count();
    assert_eq!(kept, MAX, "the held connections must stay open");

    let warns = |lines: &[String]| {
        lines
            .iter()
            .filter(|l| l.contains("WARN") && l.contains("MAX_CONNECTIONS"))
            .count()
    };
    assert!(
        proxy.wait_log(SETTLE, |lines| warns(lines) >= 1),
        "no WARN line naming MAX_CONNECTIONS:\n{}",
        proxy.log_text()
    );
    let warned = warns(&proxy.log());
    assert!(
        warned <= 2,
        "the MAX_CONNECTIONS warning is not rate-limited: {warned} lines for {EXTRA} refusals"
    );

    drop(extra);
    drop(idle);
    let served = served_within(port, MODELS, SETTLE)
        .expect("no request was served within 10 s of the idle connections closing");
    eprintln!(
        "MAX_CONNECTIONS={MAX}: {EXTRA} extra connections closed within {all_closed:?}; \
{warned} WARN line(s); served {served:?} after the idle ones left"
    );
    assert_running(&mut proxy, "connections past MAX_CONNECTIONS");
}

// ---- the queue ---------------------------------------------------------------------------------

#[test]
fn a_request_queued_past_queue_timeout_gets_503() {
    let mock = slow_mock(Duration::from_secs(4));
    let mut proxy = proxy_to(&mock.url(), &[KEY], &[GEMINI_KEY])
        .env("WORKERS", "1")
        .env("QUEUE_TIMEOUT_SECS", "1")
        .start();
    let port = proxy.port;
    let slow = in_background(port, Req::get(SLOW));
    wait_for_upstream(&mock, 1, "the slow request");

    // Both wait behind the only worker at once, so both expire well before it is free (4 s).
    let openai = in_background(port, Req::get(MODELS));
    let gemini = in_background(port, Req::get(GEMINI_MODELS));
    let (openai, openai_took) = join(openai, "queued OpenAI request");
    let (gemini, gemini_took) = join(gemini, "queued Gemini request");
    eprintln!(
        "QUEUE_TIMEOUT_SECS=1: OpenAI {} after {openai_took:?}, Gemini {} after {gemini_took:?}",
        openai.status, gemini.status
    );
    for (route, reply, took) in [
        ("openai", &openai, openai_took),
        ("gemini", &gemini, gemini_took),
    ] {
        assert_eq!(reply.status, 503, "{route}: {}", reply.text());
        assert_eq!(reply.retry_after(), 1, "{route}: {:?}", reply.headers);
        assert!(
            (Duration::from_millis(800)..=Duration::from_millis(3500)).contains(&took),
            "{route}: the 503 came {took:?} after sending, QUEUE_TIMEOUT_SECS=1"
        );
        assert!(
            reply.text().contains("WORKERS"),
            "{route}: the message should say what to raise: {}",
            reply.text()
        );
    }
    let body = squash(&openai.json_text());
    assert!(
        body.starts_with(r#"{"error":{"#)
            && body.contains(r#""message":""#)
            && body.contains(r#""type":""#)
            && body.contains(r#""code":"#),
        "not the OpenAI error shape: {body}"
    );
    let body = squash(&gemini.json_text());
    assert!(
        body.starts_with(r#"{"error":{"#)
            && body.contains(r#""code":503"#)
            && body.contains(r#""message":""#)
            && body.contains(r#""status":"UNAVAILABLE""#),
        "not the Gemini error shape: {body}"
    );

    let (slow, _) = join(slow, "slow request");
    assert_eq!(slow.status, 200, "{}", slow.text());
    // Served after the worker came free, so an expired request would have reached the mock first.
    assert_eq!(get(port, MODELS).status, 200);
    let urls: Vec<String> = mock.requests().into_iter().map(|r| r.url).collect();
    assert_eq!(
        urls.len(),
        2,
        "the expired requests must never reach the upstream: {urls:?}"
    );
    assert_running(&mut proxy, "queue timeouts");
}

#[test]
fn a_client_that_leaves_while_queued_never_reaches_the_upstream() {
    const MARKER: &str = "left-while-queued-7f3a";
    let mock = slow_mock(Duration::from_secs(3));
    let mut proxy = proxy_to(&mock.url(), &[KEY], &[])
        .env("WORKERS", "1")
        .env("QUEUE_TIMEOUT_SECS", "30")
        .start();
    let port = proxy.port;
    let slow = in_background(port, Req::get(SLOW));
    wait_for_upstream(&mock, 1, "the slow request");

    let mut leaving = connect(port);
    let body = format!(r#"{{"model":"m","messages":[],"marker":"{MARKER}"}}"#);
    let request = Req::post(&format!("{CHAT}?marker={MARKER}"), body.as_bytes())
        .header("Content-Type", "application/json");
    leaving
        .write_all(&request.to_bytes(port))
        .expect("send the whole request");
    let queued = wait_until(SETTLE, || {
        metric(&metrics_page(port), "keyrelay_queue_depth").is_some_and(|depth| depth >= 1.0)
    });
    assert!(
        queued,
        "the request never showed in keyrelay_queue_depth:\n{}",
        metrics_page(port)
    );
    let _ = leaving.shutdown(Shutdown::Both);
    drop(leaving);

    let (slow, _) = join(slow, "slow request");
    assert_eq!(slow.status, 200, "{}", slow.text());
    let (after, took) = timed(port, &Req::get(MODELS));
    assert_eq!(after.status, 200, "{}", after.text());
    let reached: Vec<String> = mock
        .requests()
        .into_iter()
        .filter(|r| r.url.contains(MARKER) || String::from_utf8_lossy(&r.body).contains(MARKER))
        .map(|r| r.url)
        .collect();
    assert!(
        reached.is_empty(),
        "a request whose client left while queued reached the upstream: {reached:?}"
    );
    let line = request_line(&proxy, "chat/completions");
    eprintln!("left while queued: next request answered in {took:?}; log: {line}");
    assert!(line.contains("aborted=client-gone"), "{line}");
    assert_running(&mut proxy, "a client leaving while queued");
}

// ---- nothing waits for a worker that does not need one -----------------------------------------

#[test]
fn health_answers_while_every_worker_is_busy() {
    /// Long enough that five admin pages at their 1 s bound still finish while both are busy.
    const SLOW_FOR: Duration = Duration::from_secs(6);
    let mock = slow_mock(SLOW_FOR);
    let mut proxy = proxy_to(&mock.url(), &[KEY], &[])
        .env("WORKERS", "2")
        .start();
    let port = proxy.port;
    let slow: Vec<_> = (0..2)
        .map(|_| in_background(port, Req::get(SLOW)))
        .collect();
    wait_for_upstream(&mock, 2, "both slow requests");

    let mut times = Vec::new();
    for path in ["/health", "/healthz", "/", "/status", "/metrics"] {
        let (reply, took) = timed(port, &Req::get(path));
        assert_eq!(reply.status, 200, "{path}: {}", reply.text());
        times.push((path, took));
    }
    let still_busy = slow.iter().all(|h| !h.is_finished());
    eprintln!("admin pages with every worker busy (target 50 ms each): {times:?}");
    for (path, took) in &times {
        assert!(
            *took <= Duration::from_secs(1),
            "{path} took {took:?} with every worker busy"
        );
    }
    assert!(
        still_busy,
        "the slow requests ended before the admin pages were checked; the check proved nothing"
    );
    for handle in slow {
        let (reply, _) = join(handle, "slow request");
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    assert_running(&mut proxy, "admin pages with every worker busy");
}

#[test]
fn a_trickled_head_never_occupies_a_worker() {
    /// One byte every 100 ms: about 6 s, far longer than the check needs.
    const TRICKLE_BYTES: usize = 60;
    #[derive(Debug)]
    enum Trickle {
        /// Stopped by the test after this many bytes, the head still incomplete.
        Stopped(usize),
        /// Sent every byte before the test stopped it.
        Exhausted,
        /// The proxy refused a byte.
        WriteFailed(usize, String),
    }
    let mock = Mock::start_closing(|_| MockReply::ok_json());
    let mut proxy = proxy_to(&mock.url(), &[KEY], &[])
        .env("WORKERS", "1")
        .env("CLIENT_IDLE_TIMEOUT_SECS", "30")
        .start();
    let port = proxy.port;
    warm_up(port);

    let sent = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let trickler = {
        let (sent, stop) = (Arc::clone(&sent), Arc::clone(&stop));
        thread::spawn(move || {
            let mut stream = connect(port);
            let head = format!(
                "POST {CHAT} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Trickle: {}\r\n\r\n",
                "t".repeat(200)
            );
            for (i, byte) in head.as_bytes().iter().take(TRICKLE_BYTES).enumerate() {
                if stop.load(Ordering::SeqCst) {
                    return Trickle::Stopped(i);
                }
                if let Err(e) = stream.write_all(&[*byte]) {
                    return Trickle::WriteFailed(i, e.to_string());
                }
                sent.fetch_add(1, Ordering::SeqCst);
                // Pacing, not synchronisation.
                thread::sleep(Duration::from_millis(100));
            }
            Trickle::Exhausted
        })
    };
    assert!(
        wait_until(SETTLE, || sent.load(Ordering::SeqCst) >= 5),
        "the trickle did not start"
    );
    let (reply, took) = timed(port, &Req::get(MODELS));
    stop.store(true, Ordering::SeqCst);
    let trickle = join(trickler, "trickling client");
    eprintln!("trickled head ({trickle:?}): another request answered in {took:?}");
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(
        took <= PROMPT,
        "a request took {took:?} while a head trickled in"
    );
    match trickle {
        Trickle::Stopped(bytes) => assert!(bytes < TRICKLE_BYTES),
        Trickle::Exhausted => {
            panic!("the head had finished trickling before the other request was answered")
        }
        Trickle::WriteFailed(bytes, e) => {
            panic!("the proxy refused the trickled head after {bytes} bytes: {e}")
        }
    }
    assert_eq!(
        mock.count(),
        2,
        "only the two complete requests go upstream"
    );
    assert_running(&mut proxy, "a trickled head");
}

#[test]
fn queue_wait_is_logged_and_measured() {
    let mock = slow_mock(Duration::from_secs(2));
    let mut proxy = proxy_to(&mock.url(), &[KEY], &[])
        .env("WORKERS", "1")
        .env("QUEUE_TIMEOUT_SECS", "30")
        .start();
    let port = proxy.port;
    let slow = in_background(port, Req::get(SLOW));
    wait_for_upstream(&mock, 1, "the slow request");
    let (queued, took) = timed(port, &Req::get(MODELS));
    assert_eq!(queued.status, 200, "{}", queued.text());
    let (slow, _) = join(slow, "slow request");
    assert_eq!(slow.status, 200, "{}", slow.text());

    let line = request_line(&proxy, &format!("GET {MODELS}"));
    let slow_line = request_line(&proxy, &format!("GET {SLOW}"));
    eprintln!("queued request answered after {took:?}; log: {line}; slow one: {slow_line}");
    let queued_ms: u64 = field(&line, "queued_ms")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no numeric queued_ms= in {line}"));
    assert!(
        queued_ms >= 500,
        "queued_ms={queued_ms} for a request that waited behind a 2 s one"
    );
    assert!(
        field(&slow_line, "queued_ms").is_some(),
        "every request line has queued_ms=: {slow_line}"
    );

    // Nothing is queued any more once both are answered (the gauge may lag the answer a moment).
    let mut page = String::new();
    let empty = wait_until(SETTLE, || {
        page = metrics_page(port);
        metric(&page, "keyrelay_queue_depth") == Some(0.0)
    });
    assert!(empty, "keyrelay_queue_depth is not 0 when idle:\n{page}");
    let count = metric(&page, "keyrelay_queue_wait_seconds_count").unwrap_or(0.0);
    assert!(count >= 1.0, "keyrelay_queue_wait_seconds_count:\n{page}");
    let sum = metric(&page, "keyrelay_queue_wait_seconds_sum").unwrap_or(0.0);
    assert!(
        sum >= 0.5,
        "keyrelay_queue_wait_seconds_sum {sum} is under the logged wait ({queued_ms} ms):\n{page}"
    );
    assert!(
        metric(&page, "keyrelay_queue_wait_seconds_bucket").is_some(),
        "keyrelay_queue_wait_seconds is a histogram:\n{page}"
    );
    assert_running(&mut proxy, "a queued request");
}

// ---- framing and buffers -----------------------------------------------------------------------

#[test]
fn content_length_with_transfer_encoding_is_refused() {
    let mock = Mock::start_closing(|_| MockReply::ok_json());
    let mut proxy = proxy_to(&mock.url(), &[KEY], &[]).start();
    let port = proxy.port;
    let body = b"0\r\n\r\nGET /openai/v1/SMUGGLED HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut request = format!(
        "POST {CHAT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
Content-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);

    let mut stream = connect(port);
    stream.write_all(&request).expect("send the request");
    let (received, closed) = read_until_closed(&mut stream, Instant::now() + READ_TIMEOUT);
    let text = String::from_utf8_lossy(&received);
    assert!(
        closed,
        "the connection stayed open after a request with both framings: {text:?}"
    );
    let answers = text
        .split("\r\n")
        .filter(|l| l.starts_with("HTTP/1."))
        .count();
    assert_eq!(answers, 1, "exactly one answer: {text:?}");
    let reply = parse_reply(&received, false);
    assert_eq!(reply.status, 400, "{text:?}");
    reply.json_text();

    // Served after the refusal, so anything smuggled would have reached the mock first.
    assert_eq!(get(port, MODELS).status, 200);
    let urls: Vec<String> = mock.requests().into_iter().map(|r| r.url).collect();
    assert!(
        !urls.iter().any(|u| u.contains("SMUGGLED")),
        "smuggled: {urls:?}"
    );
    assert_eq!(
        urls.len(),
        1,
        "only the normal request goes upstream: {urls:?}"
    );
    assert_running(&mut proxy, "a request with both framings");
}

#[test]
fn buffers_shrink_after_a_large_body_on_a_kept_alive_connection() {
    /// Under the default MAX_BODY_BYTES (32 MiB).
    const LARGE: usize = 30 << 20;
    const SMALL: usize = 64;
    const ROUNDS: usize = 5;
    const MARGIN_KIB: u64 = 2 * MIB_IN_KIB;
    let mock = Mock::ok();
    let mut proxy = proxy_to(&mock.url(), &[KEY], &[])
        .env("WORKERS", "1")
        .start();
    let port = proxy.port;
    let pid = proxy.pid();
    let small = keep_alive_post(CHAT, SMALL, b' ');
    let mut conn = Conn::open(port);
    let small_rounds = |conn: &mut Conn| {
        for _ in 0..ROUNDS {
            let (status, body) = round_trip(conn, &small);
            assert_eq!(
                (status, body.as_slice()),
                (200, &b"{\"ok\":true}"[..]),
                "a small POST on the kept-alive connection"
            );
        }
    };
    small_rounds(&mut conn);
    let before = procfs::usage(pid);

    let large = keep_alive_post(CHAT, LARGE, b'x');
    let (status, _) = round_trip(&mut conn, &large);
    drop(large);
    assert_eq!(status, 200, "the 30 MiB POST");
    let peak = procfs::usage(pid);
    small_rounds(&mut conn);

    let mut now = procfs::usage(pid);
    let shrank = wait_until(Duration::from_secs(5), || {
        now = procfs::usage(pid);
        now.rss_kib <= before.rss_kib + MARGIN_KIB
    });
    eprintln!(
        "kept-alive connection: before the 30 MiB POST {before}; right after {peak}; then {now}"
    );
    assert!(
        shrank,
        "VmRSS {} KiB did not come back within {MARGIN_KIB} KiB of {} KiB",
        now.rss_kib, before.rss_kib
    );
    // The same connection is still open and usable.
    small_rounds(&mut conn);
    let received: Vec<usize> = mock.requests().iter().map(|r| r.body.len()).collect();
    assert_eq!(received.len(), 3 * ROUNDS + 1, "{received:?}");
    assert_eq!(
        received[ROUNDS], LARGE,
        "the large body reached the upstream whole"
    );
    assert_running(&mut proxy, "a large body");
}

/// Regression (review of the new front end): a worker zero-filled the whole declared
/// Content-Length before any body byte arrived, so 64 heads declaring 32 MiB each took the
/// process from 3 MB to 1.76 GB.
#[test]
fn a_declared_body_length_costs_memory_only_as_its_bytes_arrive() {
    const CLIENTS: usize = 64;
    let mock = Mock::ok();
    let proxy = proxy_to(&mock.url(), &[KEY], &[]).start();
    let port = proxy.port;
    warm_up(port);
    let head = b"POST /openai/v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 33554432\r\n\r\nx";
    let clients: Vec<TcpStream> = (0..CLIENTS)
        .map(|_| {
            let mut stream = connect(port);
            stream.write_all(head).expect("send a head");
            stream
        })
        .collect();
    // Every request is with a worker, waiting for its body.
    let taken = wait_until(Duration::from_secs(10), || {
        procfs::usage(proxy.pid()).threads >= CLIENTS as u64
    });
    let usage = procfs::usage(proxy.pid());
    eprintln!("{CLIENTS} heads declaring 32 MiB each: {usage}");
    assert!(taken, "the requests never reached workers: {usage}");
    assert!(
        usage.rss_kib < 100 * 1024,
        "RSS {} KiB with {CLIENTS} bodies declared but not sent",
        usage.rss_kib
    );
    drop(clients);
}

/// Regression (review): a body sent a byte at a time, each just inside the idle timeout, held
/// its worker for as long as the client liked.
#[test]
fn a_body_trickled_below_the_minimum_rate_is_cut_off() {
    let mock = Mock::ok();
    let proxy = proxy_to(&mock.url(), &[KEY], &[])
        .env("CLIENT_IDLE_TIMEOUT_SECS", "2")
        .start();
    let port = proxy.port;
    let mut stream = connect(port);
    stream
        .write_all(b"POST /openai/v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
        .expect("send the head");
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let started = Instant::now();
    let mut received = Vec::new();
    // A byte every 500 ms: every read is well inside the 2 s idle timeout, the body never ends.
    while started.elapsed() < Duration::from_secs(20) {
        if stream.write_all(b"{").is_err() {
            break;
        }
        let mut buf = [0u8; 4096];
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
        if !received.is_empty() {
            break;
        }
        thread::sleep(Duration::from_millis(400));
    }
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&received);
    eprintln!("trickled body cut off after {took:?}: {}", squash(&text));
    assert!(text.starts_with("HTTP/1.1 408"), "after {took:?}: {text:?}");
    assert!(took < Duration::from_secs(10), "held for {took:?}");
    assert_eq!(mock.count(), 0, "an unfinished body reached the upstream");
}
