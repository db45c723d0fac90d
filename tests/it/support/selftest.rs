//! Self-tests of the harness: the raw client against the mock upstream directly, no proxy involved,
//! so a failure elsewhere can be blamed on the proxy rather than on the helpers.

use std::io::Read;
use std::time::Duration;

use super::http::{Conn, Req, body_reader, send};
use super::mock::{Mock, Reply, pattern_byte};

#[test]
fn mock_records_requests_and_answers_scripted_replies() {
    let mock = Mock::start(|r| {
        Reply::json(201, &format!("{{\"key\":\"{}\"}}", r.key())).header("x-a", "b")
    });
    let req = Req::post("/v1/x?key=q&y=%2F", &[0, 1, 255])
        .header("Authorization", "Bearer k-1")
        .chunked();
    let reply = send(mock.port, &req);
    assert_eq!(reply.status, 201);
    assert_eq!(reply.header("x-a"), Some("b"));
    assert_eq!(reply.text(), "{\"key\":\"k-1\"}");
    let got = mock.last();
    assert_eq!(
        (got.method.as_str(), got.url.as_str()),
        ("POST", "/v1/x?key=q&y=%2F")
    );
    assert_eq!(got.body, [0, 1, 255]);
    let head = send(
        mock.port,
        &Req::new("HEAD", "/h").header("x-goog-api-key", "g-2"),
    );
    assert!(head.raw_rest.is_empty());
    assert_eq!(mock.last().key(), "g-2");
}

#[test]
fn mock_streams_sse_huge_and_endless_replies() {
    let mock = Mock::start(|r| match r.url.as_str() {
        "/sse" => Reply::Sse {
            events: vec![b"data: 1\n\n".to_vec(), b"data: 2\n\n".to_vec()],
            gap: Duration::from_millis(10),
        },
        "/huge" => Reply::Huge { len: 1_000_003 },
        _ => Reply::Endless,
    });
    assert_eq!(
        send(mock.port, &Req::get("/sse")).text(),
        "data: 1\n\ndata: 2\n\n"
    );
    let huge = send(mock.port, &Req::get("/huge")).body;
    assert_eq!(huge.len(), 1_000_003);
    assert!(
        huge.iter()
            .enumerate()
            .all(|(i, b)| *b == pattern_byte(i as u64))
    );
    let mut conn = Conn::open(mock.port);
    conn.write(&Req::get("/endless").to_bytes(mock.port));
    let head = conn.read_head();
    let mut buf = [0u8; 64];
    let n = body_reader(&head, &mut conn.reader, false)
        .read(&mut buf)
        .expect("a tick");
    assert!(n > 0);
    drop(conn);
    assert!(mock.wait_write_failure(Duration::from_secs(10)));
}
