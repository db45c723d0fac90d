//! Stand-in upstream for scripts/soak.sh (a cargo example, `soak-upstream`): a
//! thread-per-connection keep-alive HTTP/1.1 server on 127.0.0.1 that answers like an LLM API
//! under stress, so the soak exercises every path of the proxy without touching the internet:
//!
//! - `POST /v1/chat/completions` with `"stream":true` in the body: an SSE stream of 10 events
//!   100 ms apart, then `data: [DONE]`; without it, a small JSON completion;
//! - `/v1beta/...` (Gemini routes): 429 with `Retry-After: 1` for keys ending in `-hot`, 200 JSON
//!   for the others; paths containing `overloaded` answer 429 for every key;
//! - `/v1/models`: a small JSON list; anything else: 404 JSON.
//!
//! Usage: `soak-upstream [PORT]` (default 0); prints `soak-upstream listening on
//! http://127.0.0.1:<port>` on stderr once bound, and serves until killed.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

/// Events per stream, and the pause before each.
const EVENTS: u32 = 10;
const EVENT_GAP: Duration = Duration::from_millis(100);
/// An idle keep-alive connection from the proxy is closed after this long.
const IDLE: Duration = Duration::from_secs(30);
/// Largest request body read; the soak sends small ones.
const MAX_BODY: usize = 1 << 20;

fn main() {
    let port: u16 = match std::env::args().nth(1).map(|p| p.parse()) {
        None => 0,
        Some(Ok(port)) => port,
        Some(Err(_)) => {
            eprintln!("usage: soak-upstream [PORT]");
            std::process::exit(2);
        }
    };
    let listener = match TcpListener::bind(("127.0.0.1", port)) {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("soak-upstream: cannot listen on 127.0.0.1:{port}: {err}");
            std::process::exit(1);
        }
    };
    match listener.local_addr() {
        Ok(addr) => eprintln!("soak-upstream listening on http://{addr}"),
        Err(err) => eprintln!("soak-upstream: bound, address unknown: {err}"),
    }
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                thread::spawn(move || {
                    // The proxy closing a stream early is part of the soak; nothing to report.
                    let _ = serve(stream);
                });
            }
            Err(err) => {
                eprintln!("soak-upstream: accept failed: {err}");
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// One request head, as much as this stand-in needs.
struct Request {
    method: String,
    target: String,
    key: String,
    body: Vec<u8>,
}

fn serve(stream: TcpStream) -> io::Result<()> {
    stream.set_read_timeout(Some(IDLE))?;
    stream.set_nodelay(true)?;
    let mut out = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    while let Some(request) = read_request(&mut reader)? {
        answer(&mut out, &request)?;
    }
    Ok(())
}

fn read_request(reader: &mut impl BufRead) -> io::Result<Option<Request>> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let (mut length, mut key, mut chunked) = (0usize, String::new(), false);
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':').unwrap_or((header, ""));
        let value = value.trim();
        match name.to_ascii_lowercase().as_str() {
            "content-length" => length = value.parse().unwrap_or(0),
            "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
            "x-goog-api-key" => key = value.to_string(),
            "authorization" => key = value.trim_start_matches("Bearer ").to_string(),
            _ => {}
        }
    }
    if chunked || length > MAX_BODY {
        return Err(io::Error::other("unsupported request body"));
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok(Some(Request {
        method,
        target,
        key,
        body,
    }))
}

fn answer(out: &mut impl Write, request: &Request) -> io::Result<()> {
    let path = request.target.split('?').next().unwrap_or("");
    if path.starts_with("/v1beta/") {
        if path.contains("overloaded") || request.key.ends_with("-hot") {
            let body = r#"{"error":{"code":429,"message":"Resource has been exhausted (soak).","status":"RESOURCE_EXHAUSTED"}}"#;
            return json(out, 429, "Too Many Requests", &[("Retry-After", "1")], body);
        }
        let body = r#"{"candidates":[{"content":{"parts":[{"text":"soak"}],"role":"model"}}]}"#;
        return json(out, 200, "OK", &[], body);
    }
    if path == "/v1/chat/completions" && request.method == "POST" {
        let stream = request.body.windows(13).any(|w| w == b"\"stream\":true");
        if stream {
            return events(out);
        }
        let body = r#"{"id":"chatcmpl-soak","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"soak"},"finish_reason":"stop"}]}"#;
        return json(out, 200, "OK", &[], body);
    }
    if path == "/v1/models" {
        return json(
            out,
            200,
            "OK",
            &[],
            r#"{"object":"list","data":[{"id":"soak"}]}"#,
        );
    }
    json(
        out,
        404,
        "Not Found",
        &[],
        r#"{"error":{"message":"not found"}}"#,
    )
}

fn json(
    out: &mut impl Write,
    status: u16,
    reason: &str,
    extra: &[(&str, &str)],
    body: &str,
) -> io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in extra {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    head.push_str(body);
    out.write_all(head.as_bytes())?;
    out.flush()
}

fn events(out: &mut impl Write) -> io::Result<()> {
    out.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
Transfer-Encoding: chunked\r\n\r\n",
    )?;
    out.flush()?;
    for index in 1..=EVENTS + 1 {
        thread::sleep(EVENT_GAP);
        let data = if index > EVENTS {
            "data: [DONE]\n\n".to_string()
        } else {
            format!(
                "data: {{\"object\":\"chat.completion.chunk\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"t{index} \"}}}}]}}\n\n"
            )
        };
        out.write_all(format!("{:x}\r\n{data}\r\n", data.len()).as_bytes())?;
        out.flush()?;
    }
    out.write_all(b"0\r\n\r\n")?;
    out.flush()
}
