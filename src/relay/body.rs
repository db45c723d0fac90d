//! Reading a request body off the client connection in a worker: bounded by MAX_BODY_BYTES,
//! each read bounded by the idle timeout (the socket's receive timeout), `100 Continue` sent
//! when the client waits for it, chunked bodies decoded as they arrive. The connection's buffer
//! keeps only what follows the body (a pipelined request).

use std::io::{self, Read, Write};

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

/// Reads the body that follows `head` (at the start of `conn.buf`), then consumes both from
/// the buffer.
pub(crate) fn read_body(conn: &mut Conn, head: &Head, limit: u64) -> Result<Vec<u8>, BodyError> {
    if head.chunked {
        return read_chunked(conn, head, limit);
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
    let mut body = Vec::with_capacity(length);
    body.extend_from_slice(&conn.buf[head.len..]);
    conn.consume(conn.buf.len());
    body.resize(length, 0);
    (&conn.tcp)
        .read_exact(&mut body[have..])
        .map_err(|err| read_failure(&err))?;
    Ok(body)
}

fn read_chunked(conn: &mut Conn, head: &Head, limit: u64) -> Result<Vec<u8>, BodyError> {
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
        let n = read_some(conn, &mut piece)?;
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
    if head.expect_continue {
        (&conn.tcp)
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .map_err(|_| BodyError::Gone)?;
    }
    Ok(())
}

fn read_some(conn: &Conn, piece: &mut [u8]) -> Result<usize, BodyError> {
    loop {
        match (&conn.tcp).read(piece) {
            Ok(0) => return Err(BodyError::Gone),
            Ok(n) => return Ok(n),
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
