//! A request as the relay sees it: built from the parsed head, the client's end-to-end headers
//! only, and its body once read.

use crate::error::ProxyError;
use crate::headers::connection_tokens;
use crate::listen::Head;

/// A request as the relay sees it: the client's end-to-end headers (those its `Connection`
/// header names are left out) and its body.
pub(crate) struct Incoming {
    pub(crate) method: String,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Result<Vec<u8>, ProxyError>,
}

impl Incoming {
    pub(crate) fn from_head(buf: &[u8], head: &Head) -> Incoming {
        let listed: Vec<String> = head
            .header_pairs(buf)
            .filter(|(name, _)| name.eq_ignore_ascii_case("connection"))
            .flat_map(|(_, value)| connection_tokens(Some(value)))
            .collect();
        let headers = head
            .header_pairs(buf)
            .filter(|(name, _)| !listed.iter().any(|t| name.eq_ignore_ascii_case(t)))
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        Incoming {
            method: head.method.clone(),
            headers,
            body: Ok(Vec::new()),
        }
    }

    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}
