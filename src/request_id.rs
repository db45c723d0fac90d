//! Request ids: the client's own `X-Request-Id` when it is a sane token, otherwise one made
//! here, unique for the process's life and unlikely to collide across restarts.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Longest client-supplied id kept.
pub const MAX_ID_LEN: usize = 64;

/// Hands out request ids.
pub struct RequestIds {
    prefix: u32,
    counter: AtomicU64,
}

impl Default for RequestIds {
    fn default() -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32).rotate_left(16))
            .unwrap_or(0);
        RequestIds {
            prefix: nanos ^ std::process::id().rotate_left(8),
            counter: AtomicU64::new(0),
        }
    }
}

impl RequestIds {
    /// The id for a request: the client's, sanitised, or a new one.
    pub fn for_request(&self, client_id: Option<&str>) -> String {
        client_id.and_then(sanitise).unwrap_or_else(|| self.next())
    }

    /// A new id such as `kr-1a2b3c4d-42`.
    pub fn next(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed) + 1;
        // Sized for the longest id (kr-, 8 hex digits, -, 20 digits): one allocation.
        let mut id = String::with_capacity(32);
        let _ = write!(id, "kr-{:08x}-{n}", self.prefix);
        id
    }
}

/// Keeps a client id made of letters, digits and `-_.:`, at most [`MAX_ID_LEN`] long; anything
/// else (spaces, control bytes that could forge log lines) makes it unusable.
pub fn sanitise(id: &str) -> Option<String> {
    let id = id.trim();
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    ok.then(|| id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids() {
        let ids = RequestIds::default();
        assert_eq!(ids.for_request(Some(" abc-123 ")), "abc-123");
        for bad in ["a b", "x\ny", "", &"z".repeat(65), "ключ"] {
            let made = ids.for_request(Some(bad));
            assert!(made.starts_with("kr-"), "{bad:?} gave {made}");
        }
        assert_ne!(ids.next(), ids.next());
    }
}
