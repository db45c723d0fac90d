//! Which headers cross the proxy. Hop-by-hop headers stay on their own connection; `host` and
//! `content-length` are set by whoever frames the next hop; client credentials never travel.

/// Hop-by-hop headers (RFC 9110 §7.6.1) plus the framing headers each side sets itself.
const NOT_FORWARDED: [&str; 11] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "host",
];

/// True when a header named `name` (any case) must not be copied to the next hop.
/// `connection_tokens` are the extra names the message's own `Connection` header lists.
pub fn is_hop_by_hop(name: &str, connection_tokens: &[String]) -> bool {
    NOT_FORWARDED.iter().any(|h| name.eq_ignore_ascii_case(h))
        || connection_tokens
            .iter()
            .any(|t| name.eq_ignore_ascii_case(t))
}

/// [`is_hop_by_hop`] against a `Connection` value as it came, its names compared in place:
/// no list is built (an answer's head is written for every request).
pub fn is_hop_by_hop_for(name: &str, connection: Option<&str>) -> bool {
    NOT_FORWARDED.iter().any(|h| name.eq_ignore_ascii_case(h))
        || connection.is_some_and(|listed| {
            listed
                .split(',')
                .any(|token| name.eq_ignore_ascii_case(token.trim()))
        })
}

/// The header names listed in a `Connection` value (lower-cased), e.g. `close, x-foo`.
pub fn connection_tokens(value: Option<&str>) -> Vec<String> {
    value
        .map(|v| {
            v.split(',')
                .map(|t| t.trim().to_ascii_lowercase())
                .filter(|t| !t.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// True for a request header that goes upstream: not hop-by-hop, not a client credential,
/// not `expect` (keyrelay has already answered any 100-continue), not the client's request id
/// (keyrelay sends its own), not keyrelay's internal `x-keyrelay-*` headers.
pub fn forward_request_header(name: &str, connection_tokens: &[String]) -> bool {
    !is_hop_by_hop(name, connection_tokens)
        && !is_client_credential_header(name)
        && !name.eq_ignore_ascii_case("expect")
        && !name.eq_ignore_ascii_case("x-request-id")
        && !name
            .get(..11)
            .is_some_and(|prefix| prefix.eq_ignore_ascii_case("x-keyrelay-"))
}

/// Headers that carry a client's own credential; removed before the pool key is injected.
pub const CLIENT_CREDENTIAL_HEADERS: [&str; 3] = ["authorization", "x-goog-api-key", "x-api-key"];

/// Whether `name` (any case) is one of [`CLIENT_CREDENTIAL_HEADERS`].
pub fn is_client_credential_header(name: &str) -> bool {
    CLIENT_CREDENTIAL_HEADERS
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h))
}

/// Query parameter that carries a client's own credential (Gemini's `?key=`).
pub const CLIENT_CREDENTIAL_PARAM: &str = "key";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_from_a_raw_connection_value_as_from_its_tokens() {
        let value = Some("keep-alive, X-Secret-Hop ,,close");
        let tokens = connection_tokens(value);
        for name in [
            "x-secret-hop",
            "X-SECRET-HOP",
            "keep-alive",
            "close",
            "content-type",
            "x-secret",
        ] {
            assert_eq!(
                is_hop_by_hop_for(name, value),
                is_hop_by_hop(name, &tokens),
                "{name}"
            );
        }
        assert!(is_hop_by_hop_for("transfer-encoding", None));
        assert!(!is_hop_by_hop_for("content-type", None));
    }

    #[test]
    fn request_headers() {
        let tokens = connection_tokens(Some("keep-alive, X-Secret-Hop"));
        let cases = [
            ("Content-Type", true),
            ("openai-organization", true),
            ("anthropic-version", true),
            ("Authorization", false),
            ("X-Goog-Api-Key", false),
            ("x-api-key", false),
            ("Host", false),
            ("Content-Length", false),
            ("Transfer-Encoding", false),
            ("x-secret-hop", false),
            ("Expect", false),
            ("X-Request-Id", false),
            ("x-keyrelay-conn", false),
            ("X-Keyrelay-Client", false),
        ];
        for (name, forwarded) in cases {
            assert_eq!(forward_request_header(name, &tokens), forwarded, "{name}");
        }
    }
}
