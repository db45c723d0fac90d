//! Parsing a client's request head from bytes, strictly and with a size bound, as the listener
//! accumulates it. Pure: bytes in, a [`Head`] or a [`HeadError`] out.

use std::ops::Range;

use crate::head_error::{HeadError, MAX_HEAD_BYTES, MAX_HEADERS};

/// A parsed request head. Ranges index into the bytes it was parsed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Method, e.g. `POST`.
    pub method: String,
    /// Request target as sent (path and query).
    pub target: String,
    /// True for HTTP/1.0, false for HTTP/1.1.
    pub http10: bool,
    /// Header lines as (name, value) ranges, value trimmed.
    pub headers: Vec<(Range<usize>, Range<usize>)>,
    /// Declared body length.
    pub content_length: Option<u64>,
    /// Body uses chunked transfer coding.
    pub chunked: bool,
    /// The connection ends after this request (HTTP/1.0 without keep-alive, or `Connection: close`).
    pub close: bool,
    /// The client waits for `100 Continue` before sending its body.
    pub expect_continue: bool,
    /// Bytes the head occupies, final blank line included.
    pub len: usize,
}

impl Head {
    /// The path, without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// The query string without its `?` (empty when there is none).
    pub fn query(&self) -> &str {
        self.target.split_once('?').map_or("", |(_, q)| q)
    }

    /// The header lines as text; `buf` is what the head was parsed from (the parser admits
    /// ASCII only, so every range is valid text).
    pub fn header_pairs<'a>(
        &'a self,
        buf: &'a [u8],
    ) -> impl Iterator<Item = (&'a str, &'a str)> + Clone {
        let text =
            |range: &std::ops::Range<usize>| std::str::from_utf8(&buf[range.clone()]).unwrap_or("");
        self.headers
            .iter()
            .map(move |(name, value)| (text(name), text(value)))
    }

    /// The first value of header `name` (any case).
    pub fn header<'a>(&'a self, buf: &'a [u8], name: &str) -> Option<&'a str> {
        self.header_pairs(buf)
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }
}

/// Parses a head from the start of `buf`. `Ok(None)`: not complete yet (read more).
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, HeadError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut slots);
    let len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => {
            return Err(HeadError::TooLarge);
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(error) => return Err(refusal(error, buf)),
    };
    if len > MAX_HEAD_BYTES {
        return Err(HeadError::TooLarge);
    }
    check_bytes(&buf[..len])?;
    let (Some(method), Some(target), Some(minor)) = (request.method, request.path, request.version)
    else {
        return Err(HeadError::Malformed("request line"));
    };
    if target.contains('#') {
        return Err(HeadError::Malformed("request target"));
    }
    let http10 = minor == 0;
    let mut head = Head {
        method: method.to_string(),
        target: target.to_string(),
        http10,
        headers: Vec::with_capacity(request.headers.len()),
        content_length: None,
        chunked: false,
        close: http10,
        expect_continue: false,
        len,
    };
    let offset = |part: &[u8]| part.as_ptr() as usize - buf.as_ptr() as usize;
    for header in request.headers.iter() {
        let name_at = offset(header.name.as_bytes());
        let value = header.value.trim_ascii();
        let value_at = if value.is_empty() { 0 } else { offset(value) };
        apply_header(&mut head, header.name.as_bytes(), value)?;
        head.headers.push((
            name_at..name_at + header.name.len(),
            value_at..value_at + value.len(),
        ));
    }
    if head.chunked && head.content_length.is_some() {
        return Err(HeadError::Ambiguous);
    }
    Ok(Some(head))
}

/// Bytes a head must not hold, whatever httparse tolerates: control and non-ASCII bytes (text
/// that could garble logs), and a carriage return that does not end a line (a forged line).
fn check_bytes(head: &[u8]) -> Result<(), HeadError> {
    if plain_head(head) {
        return Ok(());
    }
    if head
        .iter()
        .any(|&b| b >= 0x80 || (b < 0x20 && !matches!(b, b'\r' | b'\n' | b'\t')) || b == 0x7f)
    {
        return Err(HeadError::Malformed("control or non-ASCII byte"));
    }
    if head.windows(2).any(|w| w[0] == b'\r' && w[1] != b'\n') {
        return Err(HeadError::Malformed("bare carriage return"));
    }
    Ok(())
}

/// Whether `head` holds only what [`check_bytes`] lets through, eight bytes at a time: a word
/// of printable ASCII alone (most of a head) is passed with a few operations; a word with
/// anything else (a line's CR LF, a tab, a bad byte) is looked at byte by byte. The byte loop
/// it replaced was ~1k instructions a request (callgrind).
fn plain_head(head: &[u8]) -> bool {
    const LOW: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let byte_ok = |at: usize| match head[at] {
        0x20..=0x7e | b'\n' | b'\t' => true,
        b'\r' => head.get(at + 1) == Some(&b'\n') || at + 1 == head.len(),
        _ => false,
    };
    let mut at = 0;
    while at + 8 <= head.len() {
        let mut eight = [0u8; 8];
        eight.copy_from_slice(&head[at..at + 8]);
        let word = u64::from_le_bytes(eight);
        // Non-zero when some byte is >= 0x80, < 0x20 or 0x7f (flags may be false, never
        // missing: the bytes of such a word are then checked one by one).
        let below_space = word.wrapping_sub(LOW * 0x20) & !word & HIGH;
        let delete = (word ^ (LOW * 0x7f)).wrapping_sub(LOW) & !(word ^ (LOW * 0x7f)) & HIGH;
        if ((word & HIGH) | below_space | delete) != 0 && !(at..at + 8).all(byte_ok) {
            return false;
        }
        at += 8;
    }
    (at..head.len()).all(byte_ok)
}

/// The refusal for what httparse rejected; the message names the part that is wrong.
fn refusal(error: httparse::Error, buf: &[u8]) -> HeadError {
    let first_line = buf.split(|&b| b == b'\n').next().unwrap_or(buf);
    match error {
        httparse::Error::TooManyHeaders => HeadError::TooLarge,
        // HTTP/2.0, HTTP/9.9: a version keyrelay does not speak (505), not garbage.
        httparse::Error::Version
            if first_line
                .rsplit(|&b| b == b' ')
                .next()
                .is_some_and(|version| version.starts_with(b"HTTP/")) =>
        {
            HeadError::Version
        }
        _ => {
            let seen = &buf[..buf.len().min(MAX_HEAD_BYTES)];
            if let Err(specific) = check_bytes(seen) {
                return specific;
            }
            HeadError::Malformed(match error {
                httparse::Error::HeaderName => "header name",
                httparse::Error::HeaderValue => "header value",
                httparse::Error::NewLine => "line ending",
                _ => "request line",
            })
        }
    }
}

fn apply_header(head: &mut Head, name: &[u8], value: &[u8]) -> Result<(), HeadError> {
    let value = std::str::from_utf8(value).map_err(|_| HeadError::Malformed("header value"))?;
    if name.eq_ignore_ascii_case(b"content-length") {
        let length: u64 = value
            .parse()
            .ok()
            .filter(|_| value.bytes().all(|b| b.is_ascii_digit()))
            .ok_or(HeadError::BadLength)?;
        if head.content_length.is_some_and(|seen| seen != length) {
            return Err(HeadError::BadLength);
        }
        head.content_length = Some(length);
    } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
        for coding in value.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            if !coding.eq_ignore_ascii_case("chunked") || head.chunked {
                return Err(HeadError::UnsupportedCoding);
            }
            head.chunked = true;
        }
    } else if name.eq_ignore_ascii_case(b"connection") {
        for token in value.split(',').map(str::trim) {
            if token.eq_ignore_ascii_case("close") {
                head.close = true;
            } else if token.eq_ignore_ascii_case("keep-alive") && head.http10 {
                head.close = false;
            }
        }
    } else if name.eq_ignore_ascii_case(b"expect") {
        if !value.eq_ignore_ascii_case("100-continue") {
            return Err(HeadError::BadExpectation);
        }
        head.expect_continue = true;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Option<Head>, HeadError> {
        parse_head(text.as_bytes())
    }

    /// The word-at-a-time pass says "plain" exactly when the byte-by-byte rules find nothing,
    /// for every byte value at every offset of a word (and next to a CR).
    #[test]
    fn the_fast_byte_check_agrees_with_the_byte_rules() {
        let rules = |head: &[u8]| {
            !head.iter().any(|&b| {
                b >= 0x80 || (b < 0x20 && !matches!(b, b'\r' | b'\n' | b'\t')) || b == 0x7f
            }) && !head.windows(2).any(|w| w[0] == b'\r' && w[1] != b'\n')
        };
        let base = b"GET /a HTTP/1.1\r\nHost: h\r\nX: y\r\n\r\n".to_vec();
        for at in 0..base.len() {
            for byte in 0..=255u8 {
                let mut head = base.clone();
                head[at] = byte;
                assert_eq!(plain_head(&head), rules(&head), "byte {byte:#x} at {at}");
                head.truncate(at + 1);
                assert_eq!(
                    plain_head(&head),
                    rules(&head),
                    "byte {byte:#x} last, at {at}"
                );
            }
        }
    }

    #[test]
    fn complete_heads() {
        let head = parse("POST /openai/v1/x?a=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 12\r\nX-A:  b \r\n\r\nbody")
            .unwrap()
            .unwrap();
        assert_eq!(head.method, "POST");
        assert_eq!(head.target, "/openai/v1/x?a=1");
        assert_eq!(head.content_length, Some(12));
        assert!(!head.close && !head.http10 && !head.chunked);
        assert_eq!(head.headers.len(), 3);
        let text = "POST /openai/v1/x?a=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 12\r\nX-A:  b \r\n\r\nbody";
        let (name, value) = head.headers[2].clone();
        assert_eq!(&text[name], "X-A");
        assert_eq!(&text[value], "b");
        assert_eq!(&text[head.len..], "body");
    }

    #[test]
    fn connection_semantics() {
        let cases = [
            ("GET / HTTP/1.0\r\n\r\n", true),
            ("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", false),
            ("GET / HTTP/1.1\r\n\r\n", false),
            ("GET / HTTP/1.1\r\nConnection: Close\r\n\r\n", true),
        ];
        for (text, close) in cases {
            assert_eq!(parse(text).unwrap().unwrap().close, close, "{text:?}");
        }
    }

    #[test]
    fn the_first_blank_line_ends_the_head() {
        let text = b"POST /a HTTP/1.1\nContent-Length: 5\n\nhelloGET /b HTTP/1.1\r\n\r\n";
        let head = parse_head(text).unwrap().unwrap();
        assert_eq!(head.target, "/a");
        assert_eq!(&text[head.len..head.len + 5], b"hello");
    }

    #[test]
    fn incomplete_heads_ask_for_more() {
        for text in ["", "GET / HTTP/1.1\r\n", "GET / HTTP/1.1\r\nHost: x\r\n\r"] {
            assert_eq!(parse(text), Ok(None), "{text:?}");
        }
    }

    #[test]
    fn refusals() {
        let huge_line = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(200_000));
        let endless = format!("GET / HTTP/1.1\r\nX-Big: {}", "a".repeat(70_000));
        let many = format!(
            "GET / HTTP/1.1\r\n{}\r\n",
            "A: b\r\n".repeat(MAX_HEADERS + 1)
        );
        let cases: Vec<(String, HeadError)> = vec![
            (
                "\x16\x03\x01garbage\r\n\r\n".into(),
                HeadError::Malformed("control or non-ASCII byte"),
            ),
            (
                "hello world\r\n\r\n".into(),
                HeadError::Malformed("request line"),
            ),
            ("GET / HTTP/9.9\r\n\r\n".into(), HeadError::Version),
            ("GET / HTTP/2.0\r\n\r\n".into(), HeadError::Version),
            (
                "POST / HTTP/1.1\r\nContent-Length: -5\r\n\r\n".into(),
                HeadError::BadLength,
            ),
            (
                "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n".into(),
                HeadError::BadLength,
            ),
            (
                "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n".into(),
                HeadError::BadLength,
            ),
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n".into(),
                HeadError::UnsupportedCoding,
            ),
            (
                "GET / HTTP/1.1\r\nExpect: magic\r\n\r\n".into(),
                HeadError::BadExpectation,
            ),
            (
                "GET / HTTP/1.1\r\n folded: x\r\n\r\n".into(),
                HeadError::Malformed("header name"),
            ),
            (
                "GET / HTTP/1.1\r\nNoColon\r\n\r\n".into(),
                HeadError::Malformed("header name"),
            ),
            (
                "GET /a\rFAKE HTTP/1.1\r\n\r\n".into(),
                HeadError::Malformed("bare carriage return"),
            ),
            (
                "GET / HTTP/1.1\r\nX: caf\u{e9}\r\n\r\n".into(),
                HeadError::Malformed("control or non-ASCII byte"),
            ),
            (huge_line, HeadError::TooLarge),
            (endless, HeadError::TooLarge),
            (many, HeadError::TooLarge),
        ];
        for (text, error) in cases {
            assert_eq!(
                parse(&text),
                Err(error),
                "{:?}",
                &text[..text.len().min(60)]
            );
        }
    }

    #[test]
    fn chunked_and_expect_are_seen() {
        let head =
            parse("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n")
                .unwrap()
                .unwrap();
        assert!(head.chunked && head.expect_continue);
        assert_eq!(head.content_length, None);
    }

    #[test]
    fn length_with_transfer_encoding_is_refused_in_either_order() {
        for text in [
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 58\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert_eq!(parse(text), Err(HeadError::Ambiguous), "{text:?}");
        }
        assert_eq!(HeadError::Ambiguous.status(), 400);
    }

    #[test]
    fn statuses() {
        assert_eq!(HeadError::TooLarge.status(), 431);
        assert_eq!(HeadError::Version.status(), 505);
        assert_eq!(HeadError::BadLength.status(), 400);
    }
}
