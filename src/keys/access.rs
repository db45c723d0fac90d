//! Client access tokens (PROXY_API_KEYS): where a client's SDK puts its key, and a comparison
//! that takes the same time whether a guess is close or not.

use subtle::ConstantTimeEq;

use crate::headers::{CLIENT_CREDENTIAL_PARAM, is_client_credential_header};
use crate::keys::ApiKey;

/// The configured client tokens; empty means no token is required.
#[derive(Debug, Clone, Default)]
pub struct AccessTokens {
    tokens: Vec<ApiKey>,
}

impl AccessTokens {
    /// Wraps the configured tokens.
    pub fn new(tokens: Vec<ApiKey>) -> Self {
        AccessTokens { tokens }
    }

    /// True when requests must carry a token.
    pub fn required(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// Whether a request with these headers and raw query string carries a valid token, in any
    /// of the places SDKs put keys: `Authorization: Bearer`, `x-goog-api-key`, `x-api-key`,
    /// `?key=`.
    pub fn allows<'a>(
        &self,
        headers: impl Iterator<Item = (&'a str, &'a str)>,
        query: &str,
    ) -> bool {
        if !self.required() {
            return true;
        }
        let mut offered: Vec<String> = Vec::new();
        for (name, value) in headers {
            if !is_client_credential_header(name) {
                continue;
            }
            let value = value.trim();
            let token = if name.eq_ignore_ascii_case("authorization") {
                match value.split_once(' ') {
                    Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
                    _ => continue,
                }
            } else {
                value
            };
            offered.push(token.to_string());
        }
        for pair in query.split('&') {
            if let Some((name, value)) = pair.split_once('=')
                && percent_decode(name) == CLIENT_CREDENTIAL_PARAM
            {
                offered.push(percent_decode(value));
            }
        }
        // Every offered credential is compared with every token, without stopping early.
        let mut allowed = false;
        for candidate in &offered {
            for token in &self.tokens {
                allowed |= constant_time_eq(candidate.as_bytes(), token.secret().as_bytes());
            }
        }
        allowed
    }
}

/// Equality whose running time depends only on the lengths, not on where the bytes differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// A query value as Google and form decoders read it: `+` is a space, `%XX` a byte.
fn percent_decode(value: &str) -> String {
    percent_encoding::percent_decode_str(&value.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> AccessTokens {
        AccessTokens::new(vec![ApiKey::new("tok-alpha"), ApiKey::new("tok-beta")])
    }

    /// Headers, raw query, expected verdict.
    type Case = (&'static [(&'static str, &'static str)], &'static str, bool);

    #[test]
    fn every_place_an_sdk_puts_a_key() {
        let cases: &[Case] = &[
            (&[("Authorization", "Bearer tok-alpha")], "", true),
            (&[("authorization", "bearer  tok-beta ")], "", true),
            (&[("x-goog-api-key", "tok-alpha")], "", true),
            (&[("X-Api-Key", "tok-beta")], "", true),
            (&[], "alt=sse&key=tok-alpha", true),
            (&[], "key=tok%2Dalpha", true),
            (&[], "%6Bey=tok-alpha", true),
            (&[("Authorization", "Bearer tok-gamma")], "", false),
            (&[("Authorization", "tok-alpha")], "", false),
            (&[("x-other", "tok-alpha")], "", false),
            (&[], "monkey=tok-alpha", false),
            (&[], "", false),
            (&[("x-api-key", "wrong")], "key=tok-beta", true),
        ];
        for (headers, query, expected) in cases {
            let got = tokens().allows(headers.iter().copied(), query);
            assert_eq!(got, *expected, "{headers:?} {query}");
        }
    }

    #[test]
    fn no_tokens_means_open() {
        assert!(AccessTokens::default().allows(std::iter::empty(), ""));
    }

    #[test]
    fn equality() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
