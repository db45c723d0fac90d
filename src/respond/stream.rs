//! Relaying a response to the client: the head written by hand, then the body copied as it
//! arrives, one chunk frame per upstream read, each followed by a flush, so a Server-Sent Event
//! reaches the client as soon as the upstream sends it. Memory per stream is one fixed buffer.

use std::io::{self, Read, Write};

use crate::agent::SILENT;

/// How the body is delimited on the client connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body at all (HEAD, 204, 304, 1xx).
    None,
    /// Exactly this many bytes, announced with Content-Length.
    Length(u64),
    /// HTTP/1.1 chunked encoding.
    Chunked,
    /// Raw bytes until the connection closes (HTTP/1.0 clients).
    UntilClose,
}

impl Framing {
    /// Chooses the framing for a response.
    pub fn choose(no_body: bool, length: Option<u64>, http10: bool) -> Framing {
        match (no_body, length) {
            (true, _) => Framing::None,
            (false, Some(n)) => Framing::Length(n),
            (false, None) if http10 => Framing::UntilClose,
            (false, None) => Framing::Chunked,
        }
    }
}

/// What a Server-Sent Events answer gets beyond its bytes: a comment line whenever the
/// upstream has been silent a heartbeat interval (at an event boundary only), and, if the
/// upstream breaks off, one last event in the provider's error shape (and no clean end).
#[derive(Debug, Clone)]
pub struct SseEnds {
    /// The complete error event written when the upstream breaks off.
    pub on_break: Vec<u8>,
}

/// An SSE comment: clients ignore it, and it keeps every hop's idle timer from firing.
pub const HEARTBEAT: &[u8] = b": keep-alive\n\n";

/// Why a relay stopped early.
#[derive(Debug)]
pub enum RelayError {
    /// Writing to the client failed: it went away or stopped reading.
    ClientGone,
    /// Reading the upstream body failed (reset, timeout) after the head was sent.
    Upstream,
}

/// Room kept in front of each chunk for its size line (`ffffffff\r\n` at most).
const SIZE_LINE_ROOM: usize = 10;

/// Size of the relay buffer: large enough for bulk downloads to move in few system calls,
/// small enough that a thousand streams stay cheap.
pub const RELAY_BUFFER: usize = 32 * 1024;

/// A reusable relay buffer with room for a chunk's size line before the data and its CRLF
/// after; one per worker, allocated on its first answer and kept (idle workers cost no buffer).
#[derive(Default)]
pub struct RelayBuffer {
    bytes: Option<Box<[u8]>>,
}

impl RelayBuffer {
    /// The buffer as scratch space for a read between answers.
    pub fn scratch(&mut self) -> &mut [u8] {
        self.bytes()
    }

    fn bytes(&mut self) -> &mut [u8] {
        self.bytes
            .get_or_insert_with(|| vec![0; SIZE_LINE_ROOM + RELAY_BUFFER + 2].into_boxed_slice())
    }
}

/// Writes `head` and then the body read from `body` with `framing`, flushing after each read.
/// The head goes out together with the first piece of body, in one write, and each later read
/// costs one write. An SSE answer (`sse`) gets heartbeats and its break event. Returns the
/// number of body bytes relayed.
pub fn relay_body(
    client: &mut dyn Write,
    head: Vec<u8>,
    body: &mut dyn Read,
    framing: Framing,
    buffer: &mut RelayBuffer,
    sse: Option<&SseEnds>,
) -> Result<u64, RelayError> {
    if framing == Framing::None {
        return send(client, &head).map(|_| 0);
    }
    let buf = buffer.bytes();
    let mut pending_head = Some(head);
    let mut relayed = 0u64;
    // The last bytes relayed, to tell whether the stream is between two events.
    let mut tail = Tail::default();
    loop {
        let data = SIZE_LINE_ROOM..SIZE_LINE_ROOM + RELAY_BUFFER;
        let n = match read_some(body, &mut buf[data]) {
            Ok(n) => n,
            Err(e) if e.kind() == SILENT => {
                // The upstream is thinking: an SSE client gets a comment between events, and
                // the head it is waiting for; anything else just waits on.
                if sse.is_some() && tail.between_events() {
                    let mut out = pending_head.take().unwrap_or_default();
                    push_framed(&mut out, HEARTBEAT, framing);
                    send(client, &out)?;
                }
                continue;
            }
            Err(_) => {
                let mut out = pending_head.take().unwrap_or_default();
                if let Some(sse) = sse
                    && matches!(framing, Framing::Chunked | Framing::UntilClose)
                {
                    // One last event that says the stream broke, after ending any event cut in
                    // the middle; and no terminating chunk, so no client can take the answer
                    // for complete. (A length-framed answer cannot take more bytes: its
                    // client sees the length fall short.)
                    let mut event = Vec::new();
                    if !tail.between_events() {
                        event.extend_from_slice(b"\n\n");
                    }
                    event.extend_from_slice(&sse.on_break);
                    push_framed(&mut out, &event, framing);
                }
                // The client still gets the status and headers it was waiting for.
                let _ = send(client, &out);
                return Err(RelayError::Upstream);
            }
        };
        if n == 0 {
            let tail: &[u8] = if framing == Framing::Chunked {
                b"0\r\n\r\n"
            } else {
                b""
            };
            match pending_head {
                Some(mut head) => {
                    head.extend_from_slice(tail);
                    send(client, &head)?;
                }
                None if !tail.is_empty() => send(client, tail)?,
                None => {}
            }
            return Ok(relayed);
        }
        relayed += n as u64;
        tail.saw(&buf[SIZE_LINE_ROOM..SIZE_LINE_ROOM + n]);
        let mut from = SIZE_LINE_ROOM;
        let mut to = SIZE_LINE_ROOM + n;
        if framing == Framing::Chunked {
            let mut line = [0u8; SIZE_LINE_ROOM];
            let line_len = size_line(n, &mut line);
            from -= line_len;
            buf[from..SIZE_LINE_ROOM].copy_from_slice(&line[..line_len]);
            buf[to..to + 2].copy_from_slice(b"\r\n");
            to += 2;
        }
        match pending_head.take() {
            Some(mut head) => {
                head.extend_from_slice(&buf[from..to]);
                send(client, &head)?;
            }
            None => send(client, &buf[from..to])?,
        }
    }
}

/// The last four bytes of a stream, to see whether it stands between two SSE events.
#[derive(Default)]
struct Tail {
    bytes: [u8; 4],
    len: usize,
}

impl Tail {
    fn saw(&mut self, data: &[u8]) {
        for &b in &data[data.len().saturating_sub(4)..] {
            self.bytes.rotate_left(1);
            self.bytes[3] = b;
            self.len = (self.len + 1).min(4);
        }
    }

    /// Nothing relayed yet, or the last event ended with its blank line.
    fn between_events(&self) -> bool {
        let last = &self.bytes[4 - self.len..];
        self.len == 0
            || last.ends_with(b"\n\n")
            || last.ends_with(b"\r\n\r\n")
            || last.ends_with(b"\r\r")
    }
}

/// Appends `data` to `out` as the framing wants it (one chunk, or raw).
fn push_framed(out: &mut Vec<u8>, data: &[u8], framing: Framing) {
    if framing == Framing::Chunked {
        let _ = write!(out, "{:x}\r\n", data.len());
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    } else {
        out.extend_from_slice(data);
    }
}

/// Writes `{n:x}\r\n` into `out` without allocating; returns its length.
fn size_line(n: usize, out: &mut [u8; SIZE_LINE_ROOM]) -> usize {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits = ((usize::BITS - n.leading_zeros()).div_ceil(4)).max(1) as usize;
    for i in 0..digits {
        out[digits - 1 - i] = HEX[(n >> (4 * i)) & 0xf];
    }
    out[digits] = b'\r';
    out[digits + 1] = b'\n';
    digits + 2
}

fn send(client: &mut dyn Write, bytes: &[u8]) -> Result<(), RelayError> {
    client
        .write_all(bytes)
        .and_then(|_| client.flush())
        .map_err(|_| RelayError::ClientGone)
}

fn read_some(body: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match body.read(buf) {
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// The reason phrase for a status line; clients ignore it, humans reading traces do not.
pub fn reason_phrase(status: u16) -> &'static str {
    ureq::http::StatusCode::from_u16(status)
        .ok()
        .and_then(|code| code.canonical_reason())
        .unwrap_or("Status")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that records each write as one item, to check framing and write counts.
    #[derive(Default)]
    struct Recorder {
        writes: Vec<Vec<u8>>,
    }

    impl Write for Recorder {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.writes.push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A reader that hands out fixed pieces, one per read, like a socket.
    struct Pieces(Vec<Vec<u8>>);

    impl Read for Pieces {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0.is_empty() {
                return Ok(0);
            }
            let piece = self.0.remove(0);
            buf[..piece.len()].copy_from_slice(&piece);
            Ok(piece.len())
        }
    }

    fn run(framing: Framing, pieces: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut out = Recorder::default();
        let mut body = Pieces(pieces.iter().map(|p| p.to_vec()).collect());
        relay_body(
            &mut out,
            b"HEAD\r\n\r\n".to_vec(),
            &mut body,
            framing,
            &mut RelayBuffer::default(),
            None,
        )
        .unwrap();
        out.writes
    }

    #[test]
    fn chunked_one_write_per_read() {
        let writes = run(Framing::Chunked, &[b"data: 1\n\n", b"data: 22\n\n"]);
        assert_eq!(
            writes,
            vec![
                b"HEAD\r\n\r\n9\r\ndata: 1\n\n\r\n".to_vec(),
                b"a\r\ndata: 22\n\n\r\n".to_vec(),
                b"0\r\n\r\n".to_vec(),
            ]
        );
    }

    #[test]
    fn length_framing_is_raw_bytes() {
        let writes = run(Framing::Length(5), &[b"hel", b"lo"]);
        assert_eq!(writes.len(), 2);
        assert_eq!(writes, vec![b"HEAD\r\n\r\nhel".to_vec(), b"lo".to_vec()]);
    }

    #[test]
    fn no_body_sends_only_the_head() {
        assert_eq!(
            run(Framing::None, &[b"ignored"]),
            vec![b"HEAD\r\n\r\n".to_vec()]
        );
    }

    #[test]
    fn until_close_is_raw() {
        let writes = run(Framing::UntilClose, &[b"ab", b"c"]);
        assert_eq!(writes.concat(), b"HEAD\r\n\r\nabc".to_vec());
    }

    #[test]
    fn size_lines() {
        for n in [1usize, 9, 10, 255, 4096, 32768] {
            let mut line = [0u8; SIZE_LINE_ROOM];
            let len = size_line(n, &mut line);
            assert_eq!(&line[..len], format!("{n:x}\r\n").as_bytes());
        }
    }

    #[test]
    fn framing_choice() {
        assert_eq!(Framing::choose(true, Some(3), false), Framing::None);
        assert_eq!(Framing::choose(false, Some(3), true), Framing::Length(3));
        assert_eq!(Framing::choose(false, None, true), Framing::UntilClose);
        assert_eq!(Framing::choose(false, None, false), Framing::Chunked);
    }
}
