//! A request as the relay sees it: its parsed head over a copy of the head's bytes (the
//! connection's buffer moves on to the body and the next request), the client's end-to-end
//! headers only, and its body once read.

use crate::error::ProxyError;
use crate::headers::connection_tokens;
use crate::listen::Head;

/// A request as the relay sees it: the client's end-to-end headers (those its `Connection`
/// header names are left out) and its body.
pub(crate) struct Incoming<'h> {
    head: &'h Head,
    /// The head's bytes, which `head`'s header ranges index.
    bytes: Vec<u8>,
    /// Header names the client's `Connection` header lists (lowercase).
    listed: Vec<String>,
    pub(crate) body: Result<Vec<u8>, ProxyError>,
}

impl<'h> Incoming<'h> {
    /// `buf` starts with the bytes `head` was parsed from.
    pub(crate) fn from_head(buf: &[u8], head: &'h Head) -> Incoming<'h> {
        let bytes = buf[..head.len.min(buf.len())].to_vec();
        let listed = head
            .header_pairs(&bytes)
            .filter(|(name, _)| name.eq_ignore_ascii_case("connection"))
            .flat_map(|(_, value)| connection_tokens(Some(value)))
            .collect();
        Incoming {
            head,
            bytes,
            listed,
            body: Ok(Vec::new()),
        }
    }

    pub(crate) fn method(&self) -> &str {
        &self.head.method
    }

    /// The end-to-end headers, in the client's order.
    pub(crate) fn headers(&self) -> impl Iterator<Item = (&str, &str)> + Clone {
        self.head
            .header_pairs(&self.bytes)
            .filter(|(name, _)| !self.listed.iter().any(|t| name.eq_ignore_ascii_case(t)))
    }

    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }
}
