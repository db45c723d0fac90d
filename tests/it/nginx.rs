//! keyrelay behind real nginx configured with deploy/nginx.conf: SSE arrives event by event, a
//! 20 MiB upload passes byte-exact, an oversized body is refused. Needs nginx installed (.ci/run
//! installs it); without it the test says so and passes only outside CI.

use std::io::Read;
use std::time::{Duration, Instant};

use crate::support::http::{Conn, Req, body_reader, send};
use crate::support::mock::{Mock, Reply};
use crate::support::nginx::start_nginx;
use crate::support::proxy::proxy_to;

const KEY: &str = "sk-nginx-test-key-0001";

#[test]
#[ignore = "needs nginx: `bash .ci/run` installs it and runs the ignored tests too"]
fn behind_nginx_streams_uploads_and_refuses_oversized_bodies() {
    let site = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/nginx.conf"))
        .expect("read deploy/nginx.conf");
    assert!(site.contains("server 127.0.0.1:3000;"));
    let events: Vec<Vec<u8>> = (1..=5)
        .map(|n| format!("data: {{\"n\":{n}}}\n\n").into_bytes())
        .collect();
    let mock = Mock::start(move |r| {
        if r.url.contains("stream") {
            Reply::Sse {
                events: events.clone(),
                gap: Duration::from_millis(500),
            }
        } else {
            Reply::ok_json()
        }
    });
    let proxy = proxy_to(&mock.url(), &[KEY], &[]).start();
    let nginx = start_nginx(&site.replace(
        "server 127.0.0.1:3000;",
        &format!("server 127.0.0.1:{};", proxy.port),
    ));

    // SSE: the first event must arrive long before the stream ends (5 events, 500 ms apart).
    let mut conn = Conn::open(nginx.port);
    let started = Instant::now();
    conn.write(&Req::post("/openai/v1/stream", b"{}").to_bytes(nginx.port));
    let head = conn.read_head();
    assert_eq!(head.status, 200);
    let mut body = body_reader(&head, &mut conn.reader, false);
    let mut seen = Vec::new();
    let mut arrivals = Vec::new();
    let mut buf = [0u8; 1024];
    while arrivals.len() < 5 {
        let n = body.read(&mut buf).expect("read SSE through nginx");
        assert!(
            n > 0,
            "stream ended early: {:?}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
        let complete = seen.windows(2).filter(|w| w == b"\n\n").count();
        while arrivals.len() < complete {
            arrivals.push(started.elapsed());
        }
    }
    // The events leave the mock 500 ms apart, 2 s from first to last. Buffering anywhere
    // delivers them together; a busy machine only shifts them all.
    assert!(
        arrivals[4] - arrivals[0] > Duration::from_millis(1000),
        "events arrived together (nginx or keyrelay buffered the stream): {arrivals:?}"
    );
    drop(body);

    // A 20 MiB upload passes byte-exact.
    let upload: Vec<u8> = (0..20 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let reply = send(nginx.port, &Req::post("/openai/v1/files", &upload));
    assert_eq!(reply.status, 200, "{}", reply.text());
    let received = mock.last();
    assert_eq!(received.body.len(), upload.len());
    assert!(received.body == upload, "upload changed on the way");

    // Over client_max_body_size (32m): nginx refuses it and nothing reaches the upstream.
    let before = mock.count();
    let mut conn = Conn::open(nginx.port);
    conn.write(
        b"POST /openai/v1/files HTTP/1.1\r\nHost: x\r\nContent-Length: 40000000\r\nConnection: close\r\n\r\n",
    );
    let head = conn.read_head();
    assert_eq!(head.status, 413);
    assert_eq!(mock.count(), before);
}
