//! Just enough HTTP/1.1 for the benchmark's two ends: reading a message head, deciding how its
//! body is delimited, and reading that body (de-chunking included) without buffering it whole.

use std::io::{self, BufRead, Read};

/// Largest message head accepted; anything bigger is a broken peer, not a benchmark input.
const MAX_HEAD: usize = 64 * 1024;

/// A request or status line with its headers.
pub struct Head {
    /// `POST /path HTTP/1.1` or `HTTP/1.1 200 OK`.
    pub start: String,
    headers: Vec<(String, String)>,
}

impl Head {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The status code of a response head.
    pub fn status(&self) -> Option<u16> {
        self.start.split(' ').nth(1)?.parse().ok()
    }

    /// The request target of a request head.
    pub fn target(&self) -> &str {
        self.start.split(' ').nth(1).unwrap_or("")
    }

    /// How the body that follows this head is delimited. `None` means no body.
    pub fn framing(&self, is_response: bool) -> Option<Framing> {
        let chunked = self
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        if chunked {
            return Some(Framing::Chunked);
        }
        match self
            .header("content-length")
            .map(|v| v.trim().parse::<u64>())
        {
            Some(Ok(0)) => None,
            Some(Ok(n)) => Some(Framing::Length(n)),
            _ if is_response => Some(Framing::UntilClose),
            _ => None,
        }
    }
}

/// How a body is delimited.
#[derive(Clone, Copy)]
pub enum Framing {
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the peer closes.
    UntilClose,
}

fn invalid(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.to_string())
}

/// Reads one CRLF-terminated line without its line end. `Ok(None)` at a clean end of stream.
fn read_line(reader: &mut impl BufRead, budget: &mut usize) -> io::Result<Option<String>> {
    let mut line = Vec::new();
    let n = reader
        .by_ref()
        .take(*budget as u64 + 1)
        .read_until(b'\n', &mut line)?;
    if n == 0 {
        return Ok(None);
    }
    if n > *budget || line.last() != Some(&b'\n') {
        return Err(invalid("message head too long or cut short"));
    }
    *budget -= n;
    while matches!(line.last(), Some(b'\n' | b'\r')) {
        line.pop();
    }
    String::from_utf8(line)
        .map(Some)
        .map_err(|_| invalid("head is not UTF-8"))
}

/// Reads a message head. `Ok(None)` when the peer closed before sending anything.
pub fn read_head(reader: &mut impl BufRead) -> io::Result<Option<Head>> {
    let mut budget = MAX_HEAD;
    let Some(start) = read_line(reader, &mut budget)? else {
        return Ok(None);
    };
    let mut headers = Vec::new();
    loop {
        let line = read_line(reader, &mut budget)?.ok_or_else(|| invalid("head cut short"))?;
        if line.is_empty() {
            return Ok(Some(Head { start, headers }));
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| invalid("header without a colon"))?;
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
}

/// Reads a body with the given framing, yielding only payload bytes.
pub struct BodyReader<'a, R: BufRead> {
    inner: &'a mut R,
    framing: Framing,
    /// Bytes left in the current chunk (or the whole body for `Length`).
    left: u64,
    /// A chunk's data ended and its CRLF is still unread: it is consumed on the next read, so a
    /// read returns as soon as the data is in, even if the CRLF travels in a later packet.
    crlf_pending: bool,
    done: bool,
}

impl<'a, R: BufRead> BodyReader<'a, R> {
    /// Starts reading a body from `inner`.
    pub fn new(inner: &'a mut R, framing: Framing) -> Self {
        let left = match framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        BodyReader {
            inner,
            framing,
            left,
            crlf_pending: false,
            done: false,
        }
    }

    /// Reads the next chunk-size line; at the last chunk also the trailers.
    fn next_chunk(&mut self) -> io::Result<()> {
        let mut budget = MAX_HEAD;
        let line = read_line(self.inner, &mut budget)?.ok_or_else(|| invalid("chunk cut short"))?;
        let size = line.split(';').next().unwrap_or("").trim();
        self.left = u64::from_str_radix(size, 16).map_err(|_| invalid("bad chunk size"))?;
        if self.left == 0 {
            while !read_line(self.inner, &mut budget)?
                .ok_or_else(|| invalid("trailers cut short"))?
                .is_empty()
            {}
            self.done = true;
        }
        Ok(())
    }

    /// Consumes the CRLF after a chunk's data.
    fn end_chunk(&mut self) -> io::Result<()> {
        let mut budget = 2;
        match read_line(self.inner, &mut budget)? {
            Some(rest) if rest.is_empty() => Ok(()),
            _ => Err(invalid("chunk data not followed by CRLF")),
        }
    }
}

impl<R: BufRead> Read for BodyReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        if let Framing::UntilClose = self.framing {
            return self.inner.read(buf);
        }
        if self.crlf_pending {
            self.end_chunk()?;
            self.crlf_pending = false;
        }
        if self.left == 0 {
            match self.framing {
                Framing::Chunked => self.next_chunk()?,
                _ => self.done = true,
            }
            if self.done {
                return Ok(0);
            }
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "body cut short",
            ));
        }
        self.left -= n as u64;
        self.crlf_pending = self.left == 0 && matches!(self.framing, Framing::Chunked);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dechunks_a_body_with_trailers() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n1;x=y\r\n!\r\n0\r\nT: 1\r\n\r\nNEXT";
        let mut reader = io::BufReader::new(&raw[..]);
        let head = read_head(&mut reader).unwrap().unwrap();
        assert_eq!(head.status(), Some(200));
        let framing = head.framing(true).unwrap();
        let mut body = String::new();
        BodyReader::new(&mut reader, framing)
            .read_to_string(&mut body)
            .unwrap();
        assert_eq!(body, "hello!");
        let mut rest = String::new();
        reader.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "NEXT");
    }
}
