//! Pool keys never reach a client: an upstream error body can quote the key it rejected, and a
//! query-auth provider can echo `?key=` in a redirect. Such bodies (when small enough to hold)
//! and `Location` headers have every pool key of the provider replaced by its mask.

use std::io::Read;

use ureq::http::{HeaderMap, HeaderValue};

use crate::keys::KeyPool;
use crate::respond::answer::SavedAnswer;

/// Largest error body held to redact; a larger one passes as it is (it is not a key echo).
pub(crate) const MAX_REDACTED_BODY: usize = 64 * 1024;

/// `bytes` with every key of `pool` replaced by its mask.
pub(crate) fn redact_bytes(pool: &KeyPool, bytes: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for key in pool.keys() {
        let secret = key.secret().as_bytes();
        if secret.is_empty() || out.len() < secret.len() {
            continue;
        }
        let mask = key.mask();
        let mut replaced = Vec::with_capacity(out.len());
        let mut at = 0;
        while at < out.len() {
            if out[at..].starts_with(secret) {
                replaced.extend_from_slice(mask.as_bytes());
                at += secret.len();
            } else {
                replaced.push(out[at]);
                at += 1;
            }
        }
        out = replaced;
    }
    out
}

/// Redacts the `Location` header of an answer.
pub(crate) fn redact_location(pool: &KeyPool, headers: &mut HeaderMap) {
    let Some(location) = headers.get("location") else {
        return;
    };
    let redacted = redact_bytes(pool, location.as_bytes());
    if redacted != location.as_bytes()
        && let Ok(value) = HeaderValue::from_bytes(&redacted)
    {
        headers.insert("location", value);
    }
}

/// Redacts a held answer: its body when it is small enough, and its `Location` (the length
/// is recomputed from the body when it is written).
pub(crate) fn redact_saved(pool: &KeyPool, answer: &mut SavedAnswer) {
    if answer.body.len() <= MAX_REDACTED_BODY {
        answer.body = redact_bytes(pool, &answer.body);
    }
    redact_location(pool, &mut answer.headers);
}

/// Reads at most [`MAX_REDACTED_BODY`] + 1 bytes of `body`: `Ok` with the whole body when it
/// fits, `Err` with what was read when it is longer (the rest is still in `body`).
pub(crate) fn read_small(body: &mut dyn Read) -> Result<Vec<u8>, Vec<u8>> {
    let mut held = Vec::new();
    match body
        .take(MAX_REDACTED_BODY as u64 + 1)
        .read_to_end(&mut held)
    {
        Ok(_) if held.len() <= MAX_REDACTED_BODY => Ok(held),
        _ => Err(held),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::ApiKey;

    fn pool() -> KeyPool {
        KeyPool::new(vec![
            ApiKey::new("sk-secret-key-000001"),
            ApiKey::new("AIzaSyA-secret-0002"),
        ])
    }

    #[test]
    fn every_occurrence_of_every_key_is_masked() {
        let body = br#"{"error":"Incorrect API key provided: sk-secret-key-000001 (and sk-secret-key-000001); other AIzaSyA-secret-0002"}"#;
        let out = String::from_utf8(redact_bytes(&pool(), body)).unwrap();
        assert!(!out.contains("secret"), "{out}");
        assert_eq!(out.matches("sk-s...0001").count(), 2, "{out}");
        assert!(out.contains("AIza...0002"), "{out}");
        assert_eq!(redact_bytes(&pool(), b"no keys here"), b"no keys here");
    }

    #[test]
    fn locations_are_masked() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "location",
            HeaderValue::from_static("https://x/v1?key=AIzaSyA-secret-0002&a=1"),
        );
        redact_location(&pool(), &mut headers);
        assert_eq!(headers["location"], "https://x/v1?key=AIza...0002&a=1");
    }

    #[test]
    fn small_bodies_are_held_large_ones_are_not() {
        let small = vec![b'a'; MAX_REDACTED_BODY];
        assert_eq!(
            read_small(&mut small.as_slice()).unwrap().len(),
            MAX_REDACTED_BODY
        );
        let large = vec![b'a'; MAX_REDACTED_BODY + 10];
        let mut reader = large.as_slice();
        let held = read_small(&mut reader).unwrap_err();
        assert_eq!(held.len() + reader.len(), large.len());
    }
}
