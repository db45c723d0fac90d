//! Streaming relay: SSE events arrive as sent, a 300 MiB download in bounded proxy memory, and a
//! client that disconnects mid-stream makes the proxy close the upstream connection.

use std::io::Read;
use std::net::Shutdown;
use std::time::{Duration, Instant};

use crate::support::http::{Conn, Req, body_reader, get};
use crate::support::mock::{Mock, Reply, pattern_byte};
use crate::support::proxy::proxy_to;

const KEY: &str = "sk-stream-key-aaaa-0001";

/// Reads from `body` until `acc` contains `needle`; panics on end of stream.
fn read_until_contains(body: &mut dyn Read, acc: &mut Vec<u8>, needle: &[u8]) {
    let mut buf = [0u8; 4096];
    while !acc.windows(needle.len()).any(|w| w == needle) {
        let n = body.read(&mut buf).expect("read the stream");
        assert!(
            n > 0,
            "stream ended before {:?}; got {:?}",
            String::from_utf8_lossy(needle),
            String::from_utf8_lossy(acc)
        );
        acc.extend_from_slice(&buf[..n]);
    }
}

#[test]
fn sse_events_reach_the_client_as_they_are_sent() {
    let events = vec![
        b"data: {\"n\":1}\n\n".to_vec(),
        b"data: {\"n\":2}\n\n".to_vec(),
        b"data: [DONE]\n\n".to_vec(),
    ];
    let mock = Mock::start(move |_| Reply::Sse {
        events: events.clone(),
        gap: Duration::from_millis(1500),
    });
    let proxy = proxy_to(&mock.url(), &[KEY], &[KEY]).start();
    for path in [
        "/openai/v1/chat/completions",
        "/gemini/v1beta/models/m:streamGenerateContent?alt=sse",
    ] {
        let mut conn = Conn::open(proxy.port);
        let started = Instant::now();
        conn.write(&Req::post(path, b"{\"stream\":true}").to_bytes(proxy.port));
        let head = conn.read_head();
        assert_eq!(head.status, 200, "{path}");
        assert_eq!(
            head.header("content-type"),
            Some("text/event-stream"),
            "{path}"
        );
        let mut body = body_reader(&head, &mut conn.reader, false);
        let mut acc = Vec::new();
        read_until_contains(&mut body, &mut acc, b"\"n\":1");
        let first = started.elapsed();
        assert!(
            !acc.windows(5).any(|w| w == b"\"n\":2"),
            "{path}: the second event came with the first (buffered)"
        );
        read_until_contains(&mut body, &mut acc, b"\"n\":2");
        let second = started.elapsed();
        // The mock writes them 1.5 s apart; a relay that buffers delivers them together, a
        // busy machine only shifts both.
        assert!(
            second - first > Duration::from_millis(750),
            "{path}: events at {first:?} and {second:?}: not relayed as sent"
        );
        read_until_contains(&mut body, &mut acc, b"[DONE]");
        let mut rest = Vec::new();
        body.read_to_end(&mut rest).expect("stream end");
        acc.extend_from_slice(&rest);
        assert_eq!(
            acc, b"data: {\"n\":1}\n\ndata: {\"n\":2}\n\ndata: [DONE]\n\n",
            "{path}"
        );
    }
}

fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM line");
    line.split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("VmHWM value")
}

#[test]
fn large_download_streams_in_bounded_memory() {
    const LEN: u64 = 300 << 20;
    let mock = Mock::start(|_| Reply::Huge { len: LEN });
    let proxy = proxy_to(&mock.url(), &[KEY], &[]).start();
    let mut conn = Conn::open(proxy.port);
    conn.write(&Req::get("/openai/v1/files/big/content").to_bytes(proxy.port));
    let head = conn.read_head();
    assert_eq!(head.status, 200);
    let mut body = body_reader(&head, &mut conn.reader, false);
    let pattern: Vec<u8> = (0..251 + 65536).map(pattern_byte).collect();
    let mut buf = vec![0u8; 65536];
    let mut total: u64 = 0;
    loop {
        let n = body.read(&mut buf).expect("read the download");
        if n == 0 {
            break;
        }
        let phase = (total % 251) as usize;
        assert!(
            buf[..n] == pattern[phase..phase + n],
            "corrupt bytes near offset {total}"
        );
        total += n as u64;
    }
    assert_eq!(total, LEN, "download length");
    let hwm = vm_hwm_kib(proxy.pid());
    assert!(
        hwm < 100 * 1024,
        "proxy peak RSS {hwm} KiB for a {LEN}-byte download"
    );
}

#[test]
fn client_disconnect_closes_the_upstream_stream() {
    let mock = Mock::start(|r| {
        if r.url.contains("endless") {
            Reply::Endless
        } else {
            Reply::ok_json()
        }
    });
    let proxy = proxy_to(&mock.url(), &[KEY], &[]).start();
    let mut conn = Conn::open(proxy.port);
    conn.write(&Req::post("/openai/v1/endless", b"{}").to_bytes(proxy.port));
    let head = conn.read_head();
    assert_eq!(head.status, 200);
    let mut acc = Vec::new();
    {
        let mut body = body_reader(&head, &mut conn.reader, false);
        read_until_contains(&mut body, &mut acc, b"tick 2 ");
    }
    let _ = conn.reader.get_ref().shutdown(Shutdown::Both);
    drop(conn);
    assert!(
        mock.wait_write_failure(Duration::from_secs(10)),
        "the upstream stream was not closed within 10 s of the client leaving"
    );
    // The proxy keeps serving.
    assert_eq!(get(proxy.port, "/openai/v1/models").status, 200);
}

/// SDKs keep connections alive: each relayed answer must be framed exactly so the next request on
/// the same connection is read correctly (streamed, empty-bodied and HEAD answers included).
#[test]
fn keep_alive_connection_carries_sequential_requests() {
    let mock = Mock::start(|r| match (r.method.as_str(), r.url.as_str()) {
        (_, "/v1/stream") => Reply::Sse {
            events: vec![b"data: a\n\n".to_vec(), b"data: b\n\n".to_vec()],
            gap: Duration::from_millis(20),
        },
        ("HEAD", _) => Reply::ok_json(),
        ("DELETE", _) => Reply::status(204),
        _ => Reply::json(200, &format!("{{\"url\":\"{}\"}}", r.url)),
    });
    let proxy = proxy_to(&mock.url(), &[KEY], &[]).start();
    let mut conn = Conn::open(proxy.port);
    let steps: [(&str, &str, &[u8]); 5] = [
        ("POST", "/openai/v1/stream", b"data: a\n\ndata: b\n\n"),
        ("GET", "/openai/v1/one", b"{\"url\":\"/v1/one\"}"),
        ("HEAD", "/openai/v1/two", b""),
        ("DELETE", "/openai/v1/three", b""),
        ("GET", "/openai/v1/four", b"{\"url\":\"/v1/four\"}"),
    ];
    for (method, path, expected) in steps {
        let req = Req::new(method, path).header("Connection", "keep-alive");
        conn.write(&req.to_bytes(proxy.port));
        let head = conn.read_head();
        assert_eq!(
            head.status,
            if method == "DELETE" { 204 } else { 200 },
            "{method} {path}"
        );
        let mut body = Vec::new();
        body_reader(&head, &mut conn.reader, method == "HEAD")
            .read_to_end(&mut body)
            .expect("a framed body");
        assert_eq!(body, expected, "{method} {path}");
    }
    assert_eq!(mock.count(), 5);
}
