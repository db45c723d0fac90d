//! Streams that survive the path (issue 21, part 2): a silent upstream gets heartbeats written
//! between events (never inside one, never on a non-SSE answer); an upstream that breaks off
//! mid-stream ends the answer with one error event in the provider's shape and no clean end;
//! an upload to an upstream that stops reading times out within UPSTREAM_TIMEOUT_SECS in total.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::support::http::{Req, read_until_closed, send};
use crate::support::mock::{Mock, Reply};
use crate::support::proxy::{proxy, proxy_to};

const KEY: &str = "sk-stream-ends-key-001";

/// A scripted chunked answer of `content_type`.
fn chunks(content_type: &str, pieces: &[(u64, &str)], break_off: bool) -> Reply {
    Reply::Chunks {
        content_type: content_type.to_string(),
        pieces: pieces
            .iter()
            .map(|(ms, text)| (Duration::from_millis(*ms), text.as_bytes().to_vec()))
            .collect(),
        break_off,
    }
}

/// Sends `req` and reads the raw answer until the connection ends: (head, chunked body
/// decoded as far as it goes, whether it ended with the terminating chunk).
fn exchange(port: u16, req: &Req) -> (String, Vec<u8>, bool) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.write_all(&req.to_bytes(port)).expect("send");
    let (raw, closed) = read_until_closed(&mut stream, Instant::now() + Duration::from_secs(20));
    assert!(closed, "the answer never ended");
    let at = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head")
        + 4;
    let head = String::from_utf8_lossy(&raw[..at]).into_owned();
    assert!(
        head.to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );
    let (mut rest, mut body) = (&raw[at..], Vec::new());
    loop {
        let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
            return (head, body, false);
        };
        let size = std::str::from_utf8(&rest[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.trim(), 16).ok());
        let Some(size) = size else {
            return (head, body, false);
        };
        if size == 0 {
            return (head, body, true);
        }
        let data = &rest[eol + 2..];
        if data.len() < size + 2 {
            body.extend_from_slice(data);
            return (head, body, false);
        }
        body.extend_from_slice(&data[..size]);
        rest = &data[size + 2..];
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn a_silent_upstream_gets_heartbeats_between_events_and_the_rest_arrives_byte_exact() {
    let mock = Mock::start(|_| {
        chunks(
            "text/event-stream",
            &[
                (0, "data: {\"n\":1}\n\n"),
                (3000, "data: {\"n\":2}\n\ndata: [DONE]\n\n"),
            ],
            false,
        )
    });
    let proxy = proxy_to(&mock.url(), &[KEY], &[])
        .env("SSE_HEARTBEAT_SECS", "1")
        .start();
    let (_, body, clean) = exchange(proxy.port, &Req::post("/openai/v1/chat/completions", b"{}"));
    assert!(clean);
    let body = text(&body);
    let beats = body.matches(": keep-alive\n\n").count();
    assert!((2..=4).contains(&beats), "{beats} heartbeats in {body:?}");
    assert_eq!(
        body.replace(": keep-alive\n\n", ""),
        "data: {\"n\":1}\n\ndata: {\"n\":2}\n\ndata: [DONE]\n\n"
    );
    assert!(
        body.starts_with("data: {\"n\":1}\n\n: keep-alive\n\n"),
        "{body:?}"
    );
}

#[test]
fn no_heartbeat_lands_inside_an_event_or_on_an_answer_that_is_not_sse() {
    let mock = Mock::start(|r| {
        if r.url.contains("json") {
            chunks("application/json", &[(0, "{\"a\":"), (2500, "1}")], false)
        } else {
            chunks(
                "text/event-stream",
                &[(0, "data: {\"half\":"), (2500, "1}\n\n")],
                false,
            )
        }
    });
    let proxy = proxy_to(&mock.url(), &[KEY], &[])
        .env("SSE_HEARTBEAT_SECS", "1")
        .start();
    let (_, sse, clean) = exchange(proxy.port, &Req::post("/openai/v1/sse", b"{}"));
    assert!(clean);
    assert_eq!(
        text(&sse),
        "data: {\"half\":1}\n\n",
        "nothing inside the event"
    );
    let (_, json, clean) = exchange(proxy.port, &Req::post("/openai/v1/json", b"{}"));
    assert!(clean);
    assert_eq!(text(&json), "{\"a\":1}");
}

#[test]
fn a_broken_stream_ends_with_an_error_event_in_each_providers_shape_and_no_clean_end() {
    let mock = Mock::start(|_| {
        chunks(
            "text/event-stream",
            &[(0, "data: {\"n\":1}\n\n"), (50, "data: {\"n\":2}\n\n")],
            true,
        )
    });
    let proxy = proxy_to(&mock.url(), &[KEY], &[KEY])
        .env("PROVIDERS", "anthropic")
        .env("ANTHROPIC_BASE_URL", &mock.url())
        .env("ANTHROPIC_API_KEYS", KEY)
        .start();
    let cases = [
        (
            "/openai/v1/chat/completions",
            "data: {\"error\":{\"message\":\"The upstream 127.0.0.1:",
        ),
        (
            "/gemini/v1beta/models/m:streamGenerateContent?alt=sse",
            "data: {\"error\":{\"code\":502,\"message\":\"The upstream 127.0.0.1:",
        ),
        (
            "/anthropic/v1/messages",
            "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":\"The upstream 127.0.0.1:",
        ),
    ];
    for (path, shape) in cases {
        let (head, body, clean) = exchange(proxy.port, &Req::post(path, b"{}"));
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(!clean, "{path}: ended as if complete");
        let body = text(&body);
        assert!(
            body.starts_with("data: {\"n\":1}\n\ndata: {\"n\":2}\n\n"),
            "{body:?}"
        );
        let last = &body["data: {\"n\":1}\n\ndata: {\"n\":2}\n\n".len()..];
        assert!(last.starts_with(shape), "{path}: {last:?}");
        assert!(
            last.contains("broke off") && last.ends_with("\n\n"),
            "{last:?}"
        );
    }
    let lines = proxy.request_lines(3);
    assert!(
        lines.iter().all(|l| l.contains("aborted=upstream-failed")),
        "{lines:#?}"
    );
}

#[test]
fn an_upstream_silent_past_the_limit_mid_stream_gets_heartbeats_then_the_break_event() {
    let mock = Mock::start(|_| {
        chunks(
            "text/event-stream",
            &[(0, "data: {\"n\":1}\n\n"), (8000, "data: {\"n\":2}\n\n")],
            false,
        )
    });
    let proxy = proxy_to(&mock.url(), &[KEY], &[])
        .env("SSE_HEARTBEAT_SECS", "1")
        .env("UPSTREAM_TIMEOUT_SECS", "3")
        .start();
    let started = Instant::now();
    let (_, body, clean) = exchange(proxy.port, &Req::post("/openai/v1/chat/completions", b"{}"));
    let took = started.elapsed();
    assert!(!clean);
    let body = text(&body);
    assert!(body.contains(": keep-alive\n\n"), "{body:?}");
    assert!(
        body.ends_with("\n\n") && body.contains("broke off"),
        "{body:?}"
    );
    assert!(!body.contains("\"n\":2"));
    assert!(
        took < Duration::from_secs(7),
        "the silence limit is 3 s, took {took:?}"
    );
}

#[test]
fn an_upload_to_an_upstream_that_stops_reading_times_out_within_the_limit_in_total() {
    // An upstream that accepts and never reads: the request body fills its buffers and stops.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().unwrap().port();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = std::sync::Arc::clone(&done);
    let held = std::thread::spawn(move || {
        let mut kept = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        listener.set_nonblocking(true).expect("nonblocking accept");
        while Instant::now() < deadline && !stop.load(std::sync::atomic::Ordering::Relaxed) {
            match listener.accept() {
                Ok((stream, _)) => kept.push(stream),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        drop(kept);
    });
    let upstream = format!("http://127.0.0.1:{port}");
    let keyrelay = proxy()
        .env("OPENAI_BASE_URL", &upstream)
        .env("OPENAI_API_KEYS", KEY)
        .env("UPSTREAM_TIMEOUT_SECS", "3")
        .start();
    let body = vec![b'x'; 30 * 1024 * 1024];
    let started = Instant::now();
    let reply = send(keyrelay.port, &Req::post("/openai/v1/files", &body));
    let took = started.elapsed();
    assert_eq!(reply.status, 504, "{}", reply.text());
    assert!(
        reply.text().contains("UPSTREAM_TIMEOUT_SECS"),
        "{}",
        reply.text()
    );
    // 3 s of no progress in total, plus reading 30 MiB from the client; a per-write limit took
    // 9.2 s here.
    assert!(took < Duration::from_secs(7), "took {took:?}");
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    drop(keyrelay);
    let _ = held.join();
}
