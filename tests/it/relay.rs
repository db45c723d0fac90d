//! Relay of bodies and heads: byte-exact binary, multipart and chunked uploads, replay of a large
//! body on retry, response headers and gzip untouched, HEAD/204/304, HTTP/1.0, 413, 502 and 504.

use std::io::Read;
use std::time::Duration;

use crate::support::http::{Conn, Req, body_reader, parse_reply, send, try_send};
use crate::support::mock::{Mock, Reply};
use crate::support::proxy::proxy_to;
use crate::support::{closed_port, wait_until};

const A: &str = "sk-relay-key-aaaa-0001";
const B: &str = "sk-relay-key-bbbb-0002";
const PATH: &str = "/openai/v1/audio/transcriptions";

/// A valid gzip stream of a small JSON document.
const GZIP: [u8; 59] = [
    31, 139, 8, 0, 0, 0, 0, 0, 2, 255, 171, 86, 202, 76, 81, 178, 82, 74, 206, 72, 44, 73, 206, 45,
    200, 209, 53, 84, 210, 81, 202, 79, 202, 74, 77, 46, 129, 138, 234, 37, 231, 3, 197, 83, 75,
    50, 243, 243, 148, 106, 1, 31, 196, 170, 26, 46, 0, 0, 0,
];

fn all_bytes(repeat: usize) -> Vec<u8> {
    (0..256 * repeat).map(|i| (i % 256) as u8).collect()
}

#[test]
fn binary_bodies_pass_byte_exact_both_ways() {
    let mock = Mock::start(|r| {
        let mut reversed = r.body.clone();
        reversed.reverse();
        Reply::status(200)
            .header("Content-Type", "audio/mpeg")
            .body(&reversed)
    });
    let proxy = proxy_to(&mock.url(), &[A], &[]).start();
    let body = all_bytes(64);
    let reply = send(
        proxy.port,
        &Req::post(PATH, &body).header("Content-Type", "application/octet-stream"),
    );
    assert_eq!(reply.status, 200);
    assert_eq!(mock.last().body, body, "upstream received different bytes");
    let mut reversed = body.clone();
    reversed.reverse();
    assert_eq!(reply.body, reversed, "client received different bytes");
    assert_eq!(reply.header("content-type"), Some("audio/mpeg"));
}

#[test]
fn multipart_upload_passes_byte_exact() {
    let mock = Mock::ok();
    let proxy = proxy_to(&mock.url(), &[A], &[]).start();
    let boundary = "----keyrelayBoundary7MA4YWxkTrZu0gW";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(&all_bytes(8));
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let content_type = format!("multipart/form-data; boundary={boundary}");
    let reply = send(
        proxy.port,
        &Req::post(PATH, &body).header("Content-Type", &content_type),
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    let got = mock.last();
    assert_eq!(got.header("content-type"), Some(content_type.as_str()));
    assert_eq!(got.body, body);
}

#[test]
fn chunked_request_body_is_forwarded_whole() {
    let mock = Mock::ok();
    let proxy = proxy_to(&mock.url(), &[A], &[]).start();
    let body = all_bytes(400);
    let reply = send(proxy.port, &Req::post(PATH, &body).chunked());
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(mock.last().body, body);
}

/// curl sends `Expect: 100-continue` for bodies over 1 KiB.
#[test]
fn expect_continue_upload_is_forwarded() {
    let mock = Mock::ok();
    let proxy = proxy_to(&mock.url(), &[A], &[]).start();
    let body = all_bytes(16);
    let req = Req::post(PATH, &body).header("Expect", "100-continue");
    let reply = send(proxy.port, &req);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(mock.last().body, body);
}

#[test]
fn eight_mib_body_is_replayed_identically_on_retry() {
    let mock = Mock::start(|r| {
        if r.key() == A {
            Reply::json(429, "{}").header("Retry-After", "30")
        } else {
            Reply::ok_json()
        }
    });
    let proxy = proxy_to(&mock.url(), &[A, B], &[]).start();
    let body: Vec<u8> = (0..8u64 << 20).map(|i| (i * 7 % 256) as u8).collect();
    // The first request may start at B; by the second one A has certainly been tried once.
    for _ in 0..2 {
        assert_eq!(send(proxy.port, &Req::post(PATH, &body)).status, 200);
    }
    let requests = mock.requests();
    let a = requests.iter().position(|r| r.key() == A).expect("A tried");
    let next = requests.get(a + 1).expect("a retry after the 429");
    assert_eq!(next.key(), B);
    assert_eq!(requests[a].body.len(), body.len());
    assert!(requests[a].body == body, "first attempt body differs");
    assert!(next.body == body, "replayed body differs");
}

#[test]
fn response_headers_and_gzip_pass_untouched() {
    let mock = Mock::start(|_| {
        Reply::status(200)
            .header("Content-Type", "application/json")
            .header("Content-Encoding", "gzip")
            .header("x-ratelimit-remaining-requests", "42")
            .header("x-ratelimit-reset-tokens", "6m0s")
            .header("openai-processing-ms", "123")
            .body(&GZIP)
    });
    let proxy = proxy_to(&mock.url(), &[A], &[]).start();
    let reply = send(
        proxy.port,
        &Req::get("/openai/v1/models").header("Accept-Encoding", "gzip"),
    );
    assert_eq!(reply.status, 200);
    assert_eq!(mock.last().header("accept-encoding"), Some("gzip"));
    assert_eq!(reply.body, GZIP, "gzip bytes must arrive identical");
    for (name, value) in [
        ("content-type", "application/json"),
        ("content-encoding", "gzip"),
        ("x-ratelimit-remaining-requests", "42"),
        ("x-ratelimit-reset-tokens", "6m0s"),
        ("openai-processing-ms", "123"),
    ] {
        assert_eq!(
            reply.header(name),
            Some(value),
            "{name}: {:?}",
            reply.headers
        );
    }
}

/// OpenAI's SDKs expose the upstream `x-request-id` (for support tickets); it is end-to-end.
#[test]
fn upstream_request_id_moves_to_x_upstream_request_id() {
    let mock = Mock::start(|_| Reply::ok_json().header("x-request-id", "req_upstream_abc123"));
    let proxy = proxy_to(&mock.url(), &[A], &[]).start();
    let reply = send(proxy.port, &Req::get("/openai/v1/models"));
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("x-upstream-request-id"),
        Some("req_upstream_abc123"),
        "{:?}",
        reply.headers
    );
    let ours = reply.header("x-request-id").expect("keyrelay's own id");
    assert_ne!(ours, "req_upstream_abc123");
    let sent = mock.requests();
    assert_eq!(
        sent[0].header("x-request-id"),
        Some(ours),
        "same id goes upstream"
    );
}

#[test]
fn head_204_and_304_have_no_body() {
    let mock = Mock::start(|r| match r.method.as_str() {
        "HEAD" => Reply::status(200)
            .header("Content-Type", "application/json")
            .body(&[b'x'; 1234]),
        "DELETE" => Reply::status(204).header("x-deleted", "yes"),
        _ => Reply::status(304).header("ETag", "\"v1\""),
    });
    let proxy = proxy_to(&mock.url(), &[A], &[]).start();
    let cases = [
        (
            Req::new("HEAD", "/openai/v1/files/f1"),
            200,
            ("content-type", "application/json"),
        ),
        (
            Req::new("DELETE", "/openai/v1/files/f1"),
            204,
            ("x-deleted", "yes"),
        ),
        (
            Req::get("/openai/v1/files/f1").header("If-None-Match", "\"v1\""),
            304,
            ("etag", "\"v1\""),
        ),
    ];
    for (req, status, (name, value)) in cases {
        let reply = send(proxy.port, &req);
        assert_eq!(reply.status, status, "{} {reply:?}", req.method);
        assert_eq!(reply.header(name), Some(value), "{}", req.method);
        assert!(
            reply.raw_rest.is_empty(),
            "{}: body bytes {:?}",
            req.method,
            String::from_utf8_lossy(&reply.raw_rest)
        );
    }
    assert_eq!(mock.last().header("if-none-match"), Some("\"v1\""));
}

#[test]
fn http_1_0_client_gets_the_whole_body_and_a_closed_connection() {
    let payload = all_bytes(400);
    let mock = Mock::start({
        let payload = payload.clone();
        move |_| {
            Reply::status(200)
                .header("Content-Type", "application/octet-stream")
                .body(&payload)
        }
    });
    let proxy = proxy_to(&mock.url(), &[A], &[]).start();
    let mut conn = Conn::open(proxy.port);
    conn.write(b"GET /openai/v1/files/f1/content HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    // read_to_end only returns once the proxy closes the connection.
    let raw = conn.read_to_end();
    let reply = parse_reply(&raw, false);
    assert_eq!(reply.status, 200, "{:?}", reply.headers);
    assert_eq!(
        reply.raw_rest, payload,
        "HTTP/1.0 body must be the raw bytes, unframed"
    );
    assert_eq!(mock.last().key(), A);
}

/// Sends only a request head declaring `length` body bytes and reads the answer.
fn head_only(port: u16, length: &str) -> (u16, String) {
    let mut conn = Conn::open(port);
    conn.write(format!("POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n").as_bytes());
    let head = conn.read_head();
    let mut body = Vec::new();
    body_reader(&head, &mut conn.reader, false)
        .read_to_end(&mut body)
        .expect("413 body");
    let ct = head.header("content-type").unwrap_or("").to_string();
    assert!(ct.contains("json"), "content-type {ct}");
    (head.status, String::from_utf8_lossy(&body).into_owned())
}

#[test]
fn declared_length_over_limit_gets_413_before_the_body_is_sent() {
    let mock = Mock::ok();
    let mut proxy = proxy_to(&mock.url(), &[A], &[])
        .env("MAX_BODY_BYTES", "1000")
        .start();
    for length in ["5000", "99999999999999"] {
        let (status, body) = head_only(proxy.port, length);
        assert_eq!(status, 413, "Content-Length {length}: {body}");
        assert!(body.trim_start().starts_with('{'), "{body}");
    }
    assert_eq!(
        mock.count(),
        0,
        "nothing over the limit may reach the upstream"
    );
    // Exactly at the limit passes, and the proxy survived the huge declared length.
    let exact = try_send(proxy.port, &Req::post(PATH, &[b'c'; 1000]));
    let exact = exact.unwrap_or_else(|e| {
        let exited = wait_until(Duration::from_secs(2), || proxy.exit_status().is_some());
        panic!(
            "request after the 413s failed ({e}); proxy exited: {:?}; log:\n{}",
            exited.then(|| proxy.exit_status()),
            proxy.log_text()
        )
    });
    assert_eq!(exact.status, 200, "{exact:?}");
    assert_eq!(mock.last().body, vec![b'c'; 1000]);
}

/// A client that declares too much and then sends nothing must not hold a worker hostage.
#[test]
fn over_limit_request_held_open_does_not_pin_a_worker() {
    let mock = Mock::ok();
    let proxy = proxy_to(&mock.url(), &[A], &[])
        .env("MAX_BODY_BYTES", "1000")
        .env("WORKERS", "1")
        .start();
    let mut idle = Conn::open(proxy.port);
    idle.write(
        format!("POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5000\r\n\r\n")
            .as_bytes(),
    );
    assert_eq!(idle.read_head().status, 413);
    // `idle` stays open and silent while the only worker is asked to serve someone else.
    let next = try_send(proxy.port, &Req::get("/openai/v1/models"));
    assert_eq!(
        next.map(|r| r.status),
        Ok(200),
        "the single worker is stuck"
    );
    drop(idle);
}

/// Ordinary clients send the body right after the head; they must still read the 413.
#[test]
fn over_limit_body_sent_in_full_still_gets_413() {
    let mock = Mock::ok();
    let proxy = proxy_to(&mock.url(), &[A], &[])
        .env("MAX_BODY_BYTES", "1000")
        .start();
    let cases = [
        ("chunked 5000", Req::post(PATH, &[b'b'; 5000]).chunked()),
        ("content-length 1001", Req::post(PATH, &[b'a'; 1001])),
        ("content-length 20000", Req::post(PATH, &[b'a'; 20000])),
    ];
    for (name, req) in cases {
        let reply = send(proxy.port, &req);
        assert_eq!(reply.status, 413, "{name}: {reply:?}");
        reply.json_text();
    }
    assert_eq!(
        mock.count(),
        0,
        "nothing over the limit may reach the upstream"
    );
}

#[test]
fn unreachable_upstream_answers_502_naming_the_host() {
    let base = format!("http://127.0.0.1:{}", closed_port());
    let proxy = proxy_to(&base, &[A, B], &[A])
        .env("CONNECT_TIMEOUT_SECS", "2")
        .start();
    for path in ["/openai/v1/models", "/gemini/v1beta/models"] {
        let reply = send(proxy.port, &Req::get(path));
        assert_eq!(reply.status, 502, "{path}: {reply:?}");
        let text = reply.json_text();
        assert!(text.contains("127.0.0.1"), "{path}: {text}");
        assert!(
            !text.contains(A) && !text.contains(B),
            "{path}: key leaked: {text}"
        );
    }
    // A connect failure moves on to the next key: both OpenAI keys were tried.
    let lines = proxy.request_lines(2);
    assert!(
        lines.iter().any(|l| l.contains("/openai/")
            && l.contains("status=502")
            && l.contains("attempts=2")),
        "{lines:#?}"
    );
}

#[test]
fn slow_upstream_answers_504_without_retry() {
    let mock = Mock::start(|_| Reply::ok_json().delay(Duration::from_secs(6)));
    let proxy = proxy_to(&mock.url(), &[A, B], &[])
        .env("UPSTREAM_TIMEOUT_SECS", "1")
        .start();
    let reply = send(proxy.port, &Req::post("/openai/v1/chat/completions", b"{}"));
    assert_eq!(reply.status, 504, "{reply:?}");
    assert!(reply.json_text().contains("127.0.0.1"), "{}", reply.text());
    assert_eq!(mock.count(), 1, "a timed-out request must not be retried");
}
