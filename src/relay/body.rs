//! Reading a request body off the client connection in a worker: bounded by MAX_BODY_BYTES,
//! memory growing with the bytes that arrive (never with what the head declares), each read
//! bounded by the idle timeout, the whole body by a minimum average rate, `100 Continue` sent
//! when the client waits for it, chunked bodies decoded as they arrive. The connection's buffer
//! keeps only what follows the body (a pipelined request).

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use crate::error::ProxyError;
use crate::listen::{ChunkedDecoder, Conn, Head};

/// Why no body was read.
pub(crate) enum BodyError {
    /// The client must be told (413, 400, 408); the connection closes after.
    Refuse(ProxyError),
    /// The client went away.
    Gone,
}

/// Size of each read of a body that did not arrive with its head.
const READ_PIECE: usize = 16 * 1024;

/// The slowest average a body may arrive at once the idle timeout's grace is used up: a client
/// that sends a byte now and then would otherwise hold a worker for ever.
const MIN_BYTES_PER_SEC: u64 = 1024;

/// The body's clock: each read may wait the idle timeout, and the whole body may take the idle
/// timeout plus one second per [`MIN_BYTES_PER_SEC`] received.
struct Pace {
    started: Instant,
    idle: Duration,
    received: u64,
}

impl Pace {
    /// How long the next read may wait; `None` when the body is already too slow.
    fn next_wait(&self) -> Option<Duration> {
        let allowed = self.idle + Duration::from_secs(self.received / MIN_BYTES_PER_SEC);
        let left = allowed.checked_sub(self.started.elapsed())?;
        Some(left.min(self.idle).max(Duration::from_millis(1)))
    }
}

/// Reads the body that follows `head` (at the start of `conn.buf`), then consumes both from
/// the buffer. `idle` is CLIENT_IDLE_TIMEOUT_SECS.
pub(crate) fn read_body(
    conn: &mut Conn,
    head: &Head,
    limit: u64,
    idle: Duration,
) -> Result<Vec<u8>, BodyError> {
    let mut pace = Pace {
        started: Instant::now(),
        idle,
        received: 0,
    };
    if head.chunked {
        return read_chunked(conn, head, limit, &mut pace);
    }
    let length = head.content_length.unwrap_or(0);
    if length > limit {
        return Err(BodyError::Refuse(ProxyError::BodyTooLarge { limit }));
    }
    let length = length as usize;
    let have = conn.buf.len() - head.len;
    if have >= length {
        let body = conn.buf[head.len..head.len + length].to_vec();
        conn.consume(head.len + length);
        return Ok(body);
    }
    continue_if_expected(conn, head)?;
    // Capacity follows what arrives: a head declaring 32 MiB that sends nothing costs nothing.
    let mut body = Vec::with_capacity(length.min(READ_PIECE * 4));
    body.extend_from_slice(&conn.buf[head.len..]);
    conn.consume(conn.buf.len());
    pace.received = body.len() as u64;
    while body.len() < length {
        let at = body.len();
        let want = (length - at).min(READ_PIECE * 4);
        body.resize(at + want, 0);
        let n = read_some(conn, &mut body[at..], &mut pace)?;
        body.truncate(at + n);
    }
    Ok(body)
}

fn read_chunked(
    conn: &mut Conn,
    head: &Head,
    limit: u64,
    pace: &mut Pace,
) -> Result<Vec<u8>, BodyError> {
    let too_large = || BodyError::Refuse(ProxyError::BodyTooLarge { limit });
    let malformed = |_| BodyError::Refuse(ProxyError::BadBody);
    // Framing bytes (size lines, extensions, trailers) count too, so a body of tiny chunks with
    // long extensions, or endless trailers, cannot run on unbounded.
    let raw_budget = limit.saturating_mul(2).saturating_add(64 * 1024);
    let mut decoder = ChunkedDecoder::default();
    let mut body = Vec::new();
    let (used, done) = decoder
        .decode(&conn.buf[head.len..], &mut body)
        .map_err(malformed)?;
    let mut raw_seen = used as u64;
    if body.len() as u64 > limit {
        return Err(too_large());
    }
    if done {
        conn.consume(head.len + used);
        return Ok(body);
    }
    if used == 0 {
        continue_if_expected(conn, head)?;
    }
    conn.consume(conn.buf.len());
    let mut piece = vec![0u8; READ_PIECE];
    loop {
        let n = read_some(conn, &mut piece, pace)?;
        let (used, done) = decoder.decode(&piece[..n], &mut body).map_err(malformed)?;
        raw_seen += used as u64;
        if body.len() as u64 > limit || raw_seen > raw_budget {
            return Err(too_large());
        }
        if done {
            conn.buf.extend_from_slice(&piece[used..n]);
            return Ok(body);
        }
    }
}

fn continue_if_expected(conn: &Conn, head: &Head) -> Result<(), BodyError> {
    // An HTTP/1.0 client cannot take a 1xx answer (RFC 9110 §10.1.1).
    if head.expect_continue && !head.http10 {
        (&conn.tcp)
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .map_err(|_| BodyError::Gone)?;
    }
    Ok(())
}

/// One read within the body's pace; counts what arrived.
fn read_some(conn: &Conn, piece: &mut [u8], pace: &mut Pace) -> Result<usize, BodyError> {
    loop {
        let wait = pace
            .next_wait()
            .ok_or(BodyError::Refuse(ProxyError::ClientTimeout))?;
        if conn.tcp.set_read_timeout(Some(wait)).is_err() {
            return Err(BodyError::Gone);
        }
        match (&conn.tcp).read(piece) {
            Ok(0) => return Err(BodyError::Gone),
            Ok(n) => {
                pace.received += n as u64;
                return Ok(n);
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(read_failure(&err)),
        }
    }
}

/// A read that ran into the socket's receive timeout is a stalled client (408); anything else
/// means it went away.
fn read_failure(err: &io::Error) -> BodyError {
    match err.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            BodyError::Refuse(ProxyError::ClientTimeout)
        }
        _ => BodyError::Gone,
    }
}
