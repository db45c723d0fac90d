//! Raw-socket HTTP client for talking to the proxy with full control over the bytes: every read has
//! a timeout, requests default to `Connection: close`, streaming bodies are decoded incrementally.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Longest silence tolerated on any read from the proxy.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a whole exchange through [`send`] may take.
const EXCHANGE_DEADLINE: Duration = Duration::from_secs(30);

/// A request to send; build with [`Req::new`] and the chained setters.
#[derive(Clone, Debug)]
pub struct Req {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub chunked: bool,
}

impl Req {
    pub fn new(method: &str, path: &str) -> Req {
        Req {
            method: method.to_string(),
            path: path.to_string(),
            headers: Vec::new(),
            body: Vec::new(),
            chunked: false,
        }
    }

    pub fn get(path: &str) -> Req {
        Req::new("GET", path)
    }

    pub fn post(path: &str, body: &[u8]) -> Req {
        Req::new("POST", path).body(body)
    }

    pub fn header(mut self, name: &str, value: &str) -> Req {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn body(mut self, body: &[u8]) -> Req {
        self.body = body.to_vec();
        self
    }

    /// Sends the body with `Transfer-Encoding: chunked` (split in a few chunks).
    pub fn chunked(mut self) -> Req {
        self.chunked = true;
        self
    }

    /// The bytes on the wire, with `Host` and `Connection: close` added.
    pub fn to_bytes(&self, port: u16) -> Vec<u8> {
        let mut head = format!(
            "{} {} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n",
            self.method, self.path
        );
        let has = |n: &str| self.headers.iter().any(|(h, _)| h.eq_ignore_ascii_case(n));
        if !has("connection") {
            head.push_str("Connection: close\r\n");
        }
        for (n, v) in &self.headers {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
        let mut out;
        if self.chunked {
            head.push_str("Transfer-Encoding: chunked\r\n\r\n");
            out = head.into_bytes();
            let piece = (self.body.len() / 3).max(1);
            for chunk in self.body.chunks(piece) {
                out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                out.extend_from_slice(chunk);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\n\r\n");
        } else {
            let wants_length =
                !self.body.is_empty() || matches!(self.method.as_str(), "POST" | "PUT" | "PATCH");
            if wants_length {
                head.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
            }
            head.push_str("\r\n");
            out = head.into_bytes();
            out.extend_from_slice(&self.body);
        }
        out
    }
}

/// A complete response.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// The body after transfer decoding.
    pub body: Vec<u8>,
    /// Every byte after the head, before transfer decoding (empty when there was no body at all).
    pub raw_rest: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Asserts a JSON error body (content type and outer braces) and returns it as text.
    pub fn json_text(&self) -> String {
        let ct = self.header("content-type").unwrap_or("");
        assert!(
            ct.contains("json"),
            "content-type {ct:?} is not JSON; reply {self:?}"
        );
        let text = self.text();
        let t = text.trim();
        assert!(
            t.starts_with('{') && t.ends_with('}'),
            "body is not a JSON object: {text}"
        );
        text
    }

    /// `Retry-After` as whole seconds.
    pub fn retry_after(&self) -> u64 {
        let v = self.header("retry-after").expect("a Retry-After header");
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("Retry-After {v:?} is not whole seconds"))
    }
}

pub fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Sends `req` on a new connection, reads until the proxy closes it, and parses the answer.
pub fn send(port: u16, req: &Req) -> Reply {
    let mut conn = Conn::open(port);
    conn.write(&req.to_bytes(port));
    let raw = conn.read_to_end();
    parse_reply(&raw, req.method == "HEAD")
}

/// Like [`send`], but a connection that fails (reset, closed before any answer) is an `Err`.
pub fn try_send(port: u16, req: &Req) -> Result<Reply, String> {
    let stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(READ_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mut conn = Conn {
        reader: BufReader::new(stream),
    };
    conn.reader
        .get_mut()
        .write_all(&req.to_bytes(port))
        .map_err(|e| format!("write: {e}"))?;
    let mut raw = Vec::new();
    conn.reader
        .read_to_end(&mut raw)
        .map_err(|e| format!("read after {} bytes: {e}", raw.len()))?;
    if raw.is_empty() {
        return Err("connection closed without an answer".to_string());
    }
    Ok(parse_reply(&raw, req.method == "HEAD"))
}

pub fn get(port: u16, path: &str) -> Reply {
    send(port, &Req::get(path))
}

/// Parses a whole response (head plus everything the server sent before closing).
pub fn parse_reply(raw: &[u8], head_request: bool) -> Reply {
    let mut reader = BufReader::new(raw);
    let head = read_head_from(&mut reader).expect("a response head");
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest).expect("read from memory");
    let body = if no_body(&head, head_request) {
        Vec::new()
    } else {
        let mut out = Vec::new();
        body_reader(&head, &mut &rest[..], head_request)
            .read_to_end(&mut out)
            .expect("a well-formed body");
        out
    };
    Reply {
        status: head.status,
        headers: head.headers,
        body,
        raw_rest: rest,
    }
}

/// Status line and headers of a response.
#[derive(Clone, Debug)]
pub struct Head {
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

fn read_line(r: &mut dyn BufRead) -> std::io::Result<String> {
    let mut line = Vec::new();
    r.read_until(b'\n', &mut line)?;
    if line.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed",
        ));
    }
    Ok(String::from_utf8_lossy(&line).trim_end().to_string())
}

/// Reads a response head, skipping interim 1xx responses.
pub fn read_head_from(r: &mut dyn BufRead) -> std::io::Result<Head> {
    loop {
        let status_line = read_line(r)?;
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {status_line:?}")))?;
        let mut headers = Vec::new();
        loop {
            let line = read_line(r)?;
            if line.is_empty() {
                break;
            }
            let (n, v) = line.split_once(':').unwrap_or((&line, ""));
            headers.push((n.trim().to_string(), v.trim().to_string()));
        }
        if !(100..200).contains(&status) {
            return Ok(Head { status, headers });
        }
    }
}

fn no_body(head: &Head, head_request: bool) -> bool {
    head_request || head.status == 204 || head.status == 304
}

/// A reader over a response body, decoding `Transfer-Encoding: chunked` on the fly.
pub fn body_reader<'a>(
    head: &Head,
    r: &'a mut dyn BufRead,
    head_request: bool,
) -> Box<dyn Read + 'a> {
    if no_body(head, head_request) {
        return Box::new(std::io::empty());
    }
    let chunked = head
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        return Box::new(Chunked {
            inner: r,
            left: 0,
            done: false,
        });
    }
    match head
        .header("content-length")
        .and_then(|v| v.parse::<u64>().ok())
    {
        Some(n) => Box::new(r.take(n)),
        None => Box::new(r),
    }
}

struct Chunked<'a> {
    inner: &'a mut dyn BufRead,
    left: usize,
    done: bool,
}

impl Read for Chunked<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            let line = read_line(self.inner)?;
            let size = line.split(';').next().unwrap_or("").trim();
            self.left = usize::from_str_radix(size, 16)
                .map_err(|_| std::io::Error::other(format!("bad chunk size line {line:?}")))?;
            if self.left == 0 {
                // Trailers end with an empty line.
                while !read_line(self.inner)?.is_empty() {}
                self.done = true;
                return Ok(0);
            }
        }
        let want = buf.len().min(self.left);
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "chunk cut short",
            ));
        }
        self.left -= n;
        if self.left == 0 {
            let crlf = read_line(self.inner)?;
            if !crlf.is_empty() {
                return Err(std::io::Error::other("chunk not followed by CRLF"));
            }
        }
        Ok(n)
    }
}

/// A connection to the proxy with read and write timeouts.
pub fn connect(port: u16) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the proxy");
    stream
        .set_read_timeout(Some(READ_TIMEOUT))
        .expect("read timeout");
    stream
        .set_write_timeout(Some(READ_TIMEOUT))
        .expect("write timeout");
    stream
}

/// One client connection with read and write timeouts.
pub struct Conn {
    pub reader: BufReader<TcpStream>,
}

impl Conn {
    pub fn open(port: u16) -> Conn {
        Conn {
            reader: BufReader::new(connect(port)),
        }
    }

    pub fn write(&mut self, bytes: &[u8]) {
        let s = self.reader.get_mut();
        s.write_all(bytes).expect("write to the proxy");
        s.flush().expect("flush to the proxy");
    }

    pub fn read_head(&mut self) -> Head {
        read_head_from(&mut self.reader).expect("read a response head")
    }

    /// Everything until the proxy closes the connection (bounded by a deadline).
    pub fn read_to_end(&mut self) -> Vec<u8> {
        let deadline = Instant::now() + EXCHANGE_DEADLINE;
        let mut out = Vec::new();
        let mut buf = [0u8; 16384];
        loop {
            assert!(
                Instant::now() < deadline,
                "the proxy did not close the connection in time"
            );
            match self.reader.read(&mut buf) {
                Ok(0) => return out,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => panic!(
                    "reading from the proxy failed after {} bytes: {e}",
                    out.len()
                ),
            }
        }
    }
}

/// Reads from `stream` until EOF, an error (reset, timeout) or `deadline`; returns the bytes and
/// whether the connection was seen to end (EOF or reset) rather than stay open until `deadline`.
pub fn read_until_closed(stream: &mut TcpStream, deadline: Instant) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (out, false);
        }
        stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .expect("read timeout");
        match stream.read(&mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return (out, false);
            }
            Err(_) => return (out, true),
        }
    }
}

/// Polls until a GET of `path` on a new connection is answered 200 (each try bounded by 2 s), or
/// `timeout` passes; how long that took, `None` if it never was.
pub fn served_within(port: u16, path: &str, timeout: Duration) -> Option<Duration> {
    const TRY: Duration = Duration::from_secs(2);
    let started = Instant::now();
    let served = super::wait_until(timeout, || {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
            return false;
        };
        let _ = stream.set_write_timeout(Some(TRY));
        if stream.write_all(&Req::get(path).to_bytes(port)).is_err() {
            return false;
        }
        let (received, _) = read_until_closed(&mut stream, Instant::now() + TRY);
        received.starts_with(b"HTTP/1.1 200 ") || received.starts_with(b"HTTP/1.0 200 ")
    });
    served.then(|| started.elapsed())
}

/// The `state` /status shows for the key at `position` (from 1) of the first provider that
/// lists it.
pub fn key_state(port: u16, position: usize) -> String {
    let status = get(port, "/status").text();
    let at = status
        .find(&format!("\"position\":{position},"))
        .unwrap_or_else(|| panic!("no position {position}: {status}"));
    let state = status[at..]
        .split("\"state\":\"")
        .nth(1)
        .expect("state field");
    state.split('"').next().unwrap_or("").to_string()
}
