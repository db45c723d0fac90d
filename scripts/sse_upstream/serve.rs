//! The stand-in upstream for the streaming test: a thread-per-connection std::net server that
//! answers POST /v1/chat/completions with an OpenAI-style Server-Sent Events stream whose every
//! event carries the moment it was written (`"sent_us"`, microseconds since the UNIX epoch), so
//! the client can measure how long the proxy held it.

use std::io::{self, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use crate::http::{self, BodyReader};
use crate::now_micros;

/// An idle keep-alive connection is closed after this long.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// Stack per connection thread: the handler keeps little on it, and there are a thousand.
const CONNECTION_STACK: usize = 64 * 1024;

const STREAM_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n";

const NOT_FOUND: &[u8] = b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n\
Content-Length: 21\r\n\r\n{\"error\":\"not found\"}";

/// What each stream sends.
#[derive(Clone, Copy)]
pub struct Plan {
    /// Events per stream (a `[DONE]` event follows them).
    pub events: u32,
    /// Pause before each event.
    pub interval: Duration,
}

/// Serves on 127.0.0.1:`port` (0 picks one) until killed.
pub fn run(port: u16, plan: Plan) -> Result<(), String> {
    let listener = TcpListener::bind(("127.0.0.1", port))
        .map_err(|e| format!("cannot listen on 127.0.0.1:{port}: {e}"))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("cannot read the bound address: {e}"))?;
    eprintln!("sse-upstream listening on http://{addr}");
    for connection in listener.incoming() {
        match connection {
            Ok(stream) => spawn_connection(stream, plan),
            Err(err) => {
                // Usually out of file descriptors: back off instead of spinning.
                eprintln!("sse-upstream: accept failed: {err}");
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
    Ok(())
}

fn spawn_connection(stream: TcpStream, plan: Plan) {
    let spawned = thread::Builder::new()
        .stack_size(CONNECTION_STACK)
        .spawn(move || {
            if let Err(err) = serve_connection(stream, plan)
                && !is_peer_gone(&err)
            {
                eprintln!("sse-upstream: connection failed: {err}");
            }
        });
    if let Err(err) = spawned {
        eprintln!("sse-upstream: cannot start a connection thread: {err}");
    }
}

/// Errors that only mean the peer left or stayed idle too long.
fn is_peer_gone(err: &io::Error) -> bool {
    use io::ErrorKind as K;
    matches!(
        err.kind(),
        K::WouldBlock | K::TimedOut | K::ConnectionReset | K::BrokenPipe | K::UnexpectedEof
    )
}

/// Answers requests on one keep-alive connection until the peer closes it.
fn serve_connection(stream: TcpStream, plan: Plan) -> io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(IDLE_TIMEOUT))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    while let Some(head) = http::read_head(&mut reader)? {
        if let Some(framing) = head.framing(false) {
            io::copy(&mut BodyReader::new(&mut reader, framing), &mut io::sink())?;
        }
        if head.target().starts_with("/v1/chat/completions") {
            send_events(&mut writer, plan)?;
        } else {
            writer.write_all(NOT_FOUND)?;
        }
    }
    Ok(())
}

/// Sends the stream: the head at once, then one chunk per event on a fixed schedule.
fn send_events(writer: &mut impl Write, plan: Plan) -> io::Result<()> {
    writer.write_all(STREAM_HEAD)?;
    let start = Instant::now();
    for index in 1..=plan.events {
        sleep_until(start + plan.interval * index);
        writer.write_all(&chunk(&event(index)))?;
    }
    writer.write_all(&chunk(b"data: [DONE]\n\n"))?;
    writer.write_all(b"0\r\n\r\n")
}

fn sleep_until(due: Instant) {
    let now = Instant::now();
    if due > now {
        thread::sleep(due - now);
    }
}

/// One chat-completion chunk event, stamped as late as possible before it is written.
fn event(index: u32) -> Vec<u8> {
    format!(
        "data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\
\"created\":1700000000,\"model\":\"gpt-4o-mini\",\"choices\":[{{\"index\":0,\
\"delta\":{{\"content\":\"token{index} \"}},\"finish_reason\":null}}],\"sent_us\":{}}}\n\n",
        now_micros()
    )
    .into_bytes()
}

/// `data` framed as one HTTP/1.1 chunk, so it goes out in a single write.
fn chunk(data: &[u8]) -> Vec<u8> {
    let mut framed = format!("{:x}\r\n", data.len()).into_bytes();
    framed.extend_from_slice(data);
    framed.extend_from_slice(b"\r\n");
    framed
}
