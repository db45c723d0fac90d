//! One client connection and what it carries between owners: the socket, bytes read but not
//! yet used, its clocks, and what the listener is doing with it. It moves whole from the
//! listener to a worker and back; dropping it closes the socket and uncounts it.

use std::io::{self, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::load::Load;

/// Largest read buffer a connection keeps between requests; a bigger one (a large pipelined
/// burst) is given back.
const KEPT_BUFFER: usize = 64 * 1024;

/// A client connection.
pub struct Conn {
    /// The socket, in blocking mode: the listener only uses calls that never wait.
    pub tcp: TcpStream,
    /// Its readiness token, unique for the life of the process.
    pub token: u64,
    /// Bytes received and not yet consumed (part of a head, or the next pipelined request).
    pub buf: Vec<u8>,
    /// Last time anything happened on it: idle and write timeouts count from here.
    pub active_at: Instant,
    /// When the first byte of the head being read arrived: a head must be complete within the
    /// idle timeout, however slowly it trickles in.
    pub head_started: Option<Instant>,
    /// What the listener is doing with it.
    pub phase: Phase,
    load: Arc<Load>,
}

/// The listener's business with a connection it watches.
pub enum Phase {
    /// Waiting for (more of) a request head.
    Reading,
    /// Writing an answer of its own; `then` says what comes after.
    Writing {
        out: Vec<u8>,
        sent: usize,
        then: AfterWrite,
    },
    /// An answer that ends the connection is out; reading and discarding what the client still
    /// sends for a moment, so the answer is not lost to a reset.
    Lingering { until: Instant, drained: usize },
}

/// What follows an answer the listener wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterWrite {
    /// Keep the connection: read the next request.
    Continue,
    /// Refusal: shut the write side and linger.
    Linger,
}

/// How long a lingering close reads, and how much at most.
pub const LINGER: Duration = Duration::from_secs(2);
/// See [`LINGER`].
pub const LINGER_BYTES: usize = 4 * 1024 * 1024;

impl Conn {
    /// Wraps an accepted socket, counted in `load` while it lives.
    pub fn new(tcp: TcpStream, token: u64, load: &Arc<Load>) -> Conn {
        load.connection_opened();
        Conn {
            tcp,
            token,
            buf: Vec::new(),
            active_at: Instant::now(),
            head_started: None,
            phase: Phase::Reading,
            load: Arc::clone(load),
        }
    }

    /// Drops `n` consumed bytes from the front of the buffer and gives back a buffer grown
    /// large (memory follows the requests in flight, not the largest one ever seen).
    pub fn consume(&mut self, n: usize) {
        self.buf.drain(..n.min(self.buf.len()));
        if self.buf.is_empty() {
            self.buf = Vec::new();
        } else if self.buf.capacity() > KEPT_BUFFER {
            self.buf.shrink_to_fit();
        }
    }

    /// A writer for answers that gives the client `limit` to take each flushed piece. The
    /// socket's own send timeout is a short tick that only bounds one blocked `send`; a client
    /// that reads a few bytes now and then would restart it forever.
    pub fn writer(&self, limit: Duration) -> PacedWriter<'_> {
        PacedWriter {
            tcp: &self.tcp,
            limit,
            piece_started: None,
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.load.connection_closed();
    }
}

/// See [`Conn::writer`].
pub struct PacedWriter<'a> {
    tcp: &'a TcpStream,
    limit: Duration,
    piece_started: Option<Instant>,
}

impl Write for PacedWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let started = *self.piece_started.get_or_insert_with(Instant::now);
        loop {
            if started.elapsed() > self.limit {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client did not take the answer in time",
                ));
            }
            match (&*self.tcp).write(buf) {
                Err(err)
                    if matches!(
                        err.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                other => return other,
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.piece_started = None;
        (&*self.tcp).flush()
    }
}
