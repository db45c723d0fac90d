//! Writing the chosen answer to the client: the head by hand (framing chosen for this client
//! and this answer), then the body through the relay, one write per upstream read.

pub mod answer;
pub mod stream;
mod tap;

use std::io::{Read, Write};

use ureq::http::{HeaderMap, HeaderValue};

use crate::headers::is_hop_by_hop_for;
use crate::keys::usage::Tokens;
use crate::respond::answer::{Answer, SavedAnswer};
use crate::respond::stream::{Framing, RelayBuffer, RelayError, reason_phrase, relay_body};
use tap::Tapped;

/// What happened to a request, for its log line.
pub(crate) struct Report {
    pub(crate) status: u16,
    pub(crate) attempts: u32,
    pub(crate) key: Option<String>,
    pub(crate) note: &'static str,
    /// The answer ends when the connection closes (HTTP/1.0 without a length).
    pub(crate) ends_with_close: bool,
    /// The tokens the answer reported.
    pub(crate) tokens: Option<Tokens>,
}

/// What the client's request line and headers say about how to answer it.
pub(crate) struct ClientInfo {
    pub(crate) id: String,
    pub(crate) method: String,
    pub(crate) http10: bool,
    pub(crate) wants_close: bool,
}

/// Writes the chosen answer to the client and reports how it went.
pub(crate) fn deliver(
    out: &mut dyn Write,
    client: &ClientInfo,
    answer: Answer,
    buffer: &mut RelayBuffer,
) -> Report {
    match answer {
        Answer::Error {
            error,
            shape,
            attempts,
        } => {
            let rendered = error.answer(shape);
            let mut headers = HeaderMap::new();
            headers.insert("content-type", HeaderValue::from_static("application/json"));
            for (name, value) in &rendered.headers {
                if let Ok(value) = HeaderValue::from_str(value) {
                    headers.insert(*name, value);
                }
            }
            let saved = SavedAnswer {
                status: rendered.status,
                headers,
                body: rendered.body.into_bytes(),
            };
            let (status, note) = write_saved(out, client, &saved, buffer);
            Report {
                status,
                attempts,
                key: None,
                note,
                ends_with_close: false,
                tokens: None,
            }
        }
        Answer::Page(page) => {
            let mut headers = HeaderMap::new();
            headers.insert("content-type", HeaderValue::from_static(page.content_type));
            headers.insert("cache-control", HeaderValue::from_static("no-store"));
            let saved = SavedAnswer {
                status: 200,
                headers,
                body: page.body.into_bytes(),
            };
            let (status, note) = write_saved(out, client, &saved, buffer);
            Report {
                status,
                attempts: 0,
                key: None,
                note,
                ends_with_close: false,
                tokens: None,
            }
        }
        Answer::Saved {
            answer,
            attempts,
            key,
        } => {
            let (status, note) = write_saved(out, client, &answer, buffer);
            Report {
                status,
                attempts,
                key: Some(key),
                note,
                ends_with_close: false,
                tokens: None,
            }
        }
        Answer::Live {
            response,
            prefix,
            attempts,
            key,
            watch,
            metered,
            sse,
        } => {
            let status = response.status().as_u16();
            let (parts, body) = response.into_parts();
            let length = parts
                .headers
                .get("content-length")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse().ok())
                .filter(|_| !parts.headers.contains_key("transfer-encoding"));
            let framing = Framing::choose(no_body(&client.method, status), length, client.http10);
            let head = response_head(client, status, &parts.headers, framing);
            let mut reader =
                Tapped::new(prefix.as_slice().chain(body.into_reader()), watch, metered);
            let result = relay_body(out, head, &mut reader, framing, buffer, sse.as_ref());
            // Usage only from an answer relayed whole: a cut one reported nothing reliable.
            let tokens = if result.is_ok() { reader.usage() } else { None };
            // Dropping an unfinished reader closes the upstream connection, which stops the
            // generation when the client has gone.
            drop(reader);
            Report {
                status,
                attempts,
                key: Some(key),
                note: relay_note(&result),
                ends_with_close: framing == Framing::UntilClose,
                tokens,
            }
        }
    }
}

pub(crate) fn write_saved(
    out: &mut dyn Write,
    client: &ClientInfo,
    answer: &SavedAnswer,
    buffer: &mut RelayBuffer,
) -> (u16, &'static str) {
    let framing = Framing::choose(
        no_body(&client.method, answer.status),
        Some(answer.body.len() as u64),
        client.http10,
    );
    let head = response_head(client, answer.status, &answer.headers, framing);
    let result = relay_body(
        out,
        head,
        &mut answer.body.as_slice(),
        framing,
        buffer,
        None,
    );
    (answer.status, relay_note(&result))
}

pub(crate) fn relay_note(result: &Result<u64, RelayError>) -> &'static str {
    match result {
        Ok(_) => "",
        Err(RelayError::ClientGone) => " aborted=client-gone",
        Err(RelayError::Upstream) => " aborted=upstream-failed",
    }
}

/// Responses that never carry a body, whatever their headers say.
pub(crate) fn no_body(method: &str, status: u16) -> bool {
    method.eq_ignore_ascii_case("HEAD") || status == 204 || status == 304 || status < 200
}

/// The status line and headers sent to the client, ending with the blank line.
pub(crate) fn response_head(
    client: &ClientInfo,
    status: u16,
    headers: &HeaderMap,
    framing: Framing,
) -> Vec<u8> {
    // Sized once for everything below (keyrelay's own lines fit in 160 bytes).
    let upstream_lines: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    let mut head = Vec::with_capacity(upstream_lines + client.id.len() + 160);
    let version = if client.http10 {
        "HTTP/1.0"
    } else {
        "HTTP/1.1"
    };
    // Written by hand, not with `write!` (~1k instructions a request of formatting machinery).
    head.extend_from_slice(version.as_bytes());
    head.push(b' ');
    push_decimal(&mut head, u64::from(status));
    head.push(b' ');
    head.extend_from_slice(reason_phrase(status).as_bytes());
    head.extend_from_slice(b"\r\n");
    let connection = headers.get("connection").and_then(|v| v.to_str().ok());
    for (name, value) in headers {
        let name = name.as_str();
        // A HEAD or 304 answer keeps the length of the body it describes.
        let described_length = framing == Framing::None && name == "content-length";
        if is_hop_by_hop_for(name, connection) && !described_length {
            continue;
        }
        let name = if name == "x-request-id" {
            "x-upstream-request-id"
        } else {
            name
        };
        push_header(&mut head, name, value.as_bytes());
    }
    push_header(&mut head, "x-request-id", client.id.as_bytes());
    match framing {
        Framing::Length(n) => {
            head.extend_from_slice(b"content-length: ");
            push_decimal(&mut head, n);
            head.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => push_header(&mut head, "transfer-encoding", b"chunked"),
        Framing::UntilClose | Framing::None => {}
    }
    if client.wants_close || framing == Framing::UntilClose {
        push_header(&mut head, "connection", b"close");
    } else if client.http10 {
        push_header(&mut head, "connection", b"keep-alive");
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// `n` in decimal digits.
fn push_decimal(head: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    head.extend_from_slice(&digits[at..]);
}

pub(crate) fn push_header(head: &mut Vec<u8>, name: &str, value: &[u8]) {
    head.extend_from_slice(name.as_bytes());
    head.extend_from_slice(b": ");
    head.extend_from_slice(value);
    head.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals() {
        for n in [0, 7, 10, 200, 4_294_967_296, u64::MAX] {
            let mut out = Vec::new();
            push_decimal(&mut out, n);
            assert_eq!(out, n.to_string().into_bytes());
        }
    }
}
