//! The stand-in upstream for the streaming test: a std::net server that answers
//! POST /v1/chat/completions with an OpenAI-style Server-Sent Events stream whose every event
//! carries the moment it was written (`"sent_us"`, microseconds since the UNIX epoch), so the
//! client can measure how long the proxy held it.
//!
//! A thread per connection reads requests; one ticker thread writes the events of every stream
//! on schedule. A sleeping thread per stream would cost the machine a wake-up per event (20,000
//! a second for 1,000 streams), and on a small VM those wake-ups, not the proxy under test, would
//! decide the measured delays.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread;
use std::time::{Duration, Instant};

use crate::http::{self, BodyReader};
use crate::now_micros;

/// An idle keep-alive connection is closed after this long.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// Stack per connection thread: the handler keeps little on it, and there are a thousand.
const CONNECTION_STACK: usize = 64 * 1024;

/// A proxy that takes no event bytes for this long loses its stream.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

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
    // keyrelay's own 4,096 backlog: with std's 128, when a proxy opened its upstream connections
    // faster than this one thread accepted them for a moment, the kernel dropped the SYNs past
    // 128 and those streams waited a second for the retry, which was measured as the proxy's
    // delay. A real provider's edge does not drop connections at 2 a millisecond.
    keyrelay::listen::widen_backlog(&listener)
        .map_err(|e| format!("cannot widen the listen backlog: {e}"))?;
    eprintln!("sse-upstream listening on http://{addr}");
    let (streams, schedule) = mpsc::channel();
    thread::Builder::new()
        .name("ticker".into())
        .spawn(move || tick(&schedule, plan))
        .map_err(|e| format!("cannot start the ticker thread: {e}"))?;
    for connection in listener.incoming() {
        match connection {
            Ok(stream) => spawn_connection(stream, streams.clone()),
            Err(err) => {
                // Usually out of file descriptors: back off instead of spinning.
                eprintln!("sse-upstream: accept failed: {err}");
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
    Ok(())
}

fn spawn_connection(stream: TcpStream, ticker: Sender<Stream>) {
    let spawned = thread::Builder::new()
        .stack_size(CONNECTION_STACK)
        .spawn(move || {
            if let Err(err) = serve_connection(stream, &ticker)
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
fn serve_connection(stream: TcpStream, ticker: &Sender<Stream>) -> io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(IDLE_TIMEOUT))?;
    // A proxy that stops reading must not hold up the ticker, and with it every other stream.
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    while let Some(head) = http::read_head(&mut reader)? {
        if let Some(framing) = head.framing(false) {
            io::copy(&mut BodyReader::new(&mut reader, framing), &mut io::sink())?;
        }
        if !head.target().starts_with("/v1/chat/completions") {
            writer.write_all(NOT_FOUND)?;
            continue;
        }
        writer.write_all(STREAM_HEAD)?;
        let (finished, outcome) = mpsc::channel();
        let stream = Stream {
            writer: writer.try_clone()?,
            started: Instant::now(),
            sent: 0,
            finished,
        };
        if ticker.send(stream).is_err() {
            return Err(io::Error::other("the ticker thread has gone"));
        }
        // The ticker reports once the stream has ended; the next request may then follow.
        outcome
            .recv()
            .map_err(|_| io::Error::other("the ticker dropped a stream"))??;
    }
    Ok(())
}

/// One stream in progress, owned by the ticker.
struct Stream {
    writer: TcpStream,
    started: Instant,
    /// Events written so far.
    sent: u32,
    /// Told how the stream ended.
    finished: Sender<io::Result<()>>,
}

impl Stream {
    fn due(&self, plan: Plan) -> Instant {
        self.started + plan.interval * (self.sent + 1)
    }

    /// Writes the next event, and after the last one the `[DONE]` event and the end of the body.
    /// Returns whether more events follow.
    fn write_next(&mut self, plan: Plan) -> io::Result<bool> {
        self.sent += 1;
        self.writer.write_all(&chunk(&event(self.sent)))?;
        if self.sent < plan.events {
            return Ok(true);
        }
        self.writer.write_all(&chunk(b"data: [DONE]\n\n"))?;
        self.writer.write_all(b"0\r\n\r\n")?;
        Ok(false)
    }
}

/// The ticker: writes every stream's next event when it is due, sleeping until the earliest
/// one, and takes in new streams as they start.
fn tick(new_streams: &Receiver<Stream>, plan: Plan) {
    let mut streams: Vec<Option<Stream>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut due: BinaryHeap<Reverse<(Instant, usize)>> = BinaryHeap::new();
    loop {
        let next = due.peek().map(|Reverse((at, _))| *at);
        let wait = next.map_or(Duration::from_secs(3600), |at| {
            at.saturating_duration_since(Instant::now())
        });
        match new_streams.recv_timeout(wait) {
            Ok(stream) => {
                let at = stream.due(plan);
                let slot = match free.pop() {
                    Some(slot) => {
                        streams[slot] = Some(stream);
                        slot
                    }
                    None => {
                        streams.push(Some(stream));
                        streams.len() - 1
                    }
                };
                due.push(Reverse((at, slot)));
                continue;
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let now = Instant::now();
        while let Some(&Reverse((at, slot))) = due.peek() {
            if at > now {
                break;
            }
            due.pop();
            let Some(stream) = streams[slot].as_mut() else {
                continue;
            };
            match stream.write_next(plan) {
                Ok(true) => due.push(Reverse((stream.due(plan), slot))),
                ended => {
                    let stream = streams[slot].take().expect("stream present above");
                    let _ = stream.finished.send(ended.map(|_| ()));
                    free.push(slot);
                }
            }
        }
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
