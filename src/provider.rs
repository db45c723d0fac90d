//! The provider table: where each route prefix goes, how a key is injected, which client
//! credentials are stripped, and the shape of the errors keyrelay writes in its name.

use std::sync::Arc;
use std::time::Duration;

use crate::agent::egress::Egress;
use crate::headers::{CLIENT_CREDENTIAL_PARAM, is_client_credential_header};
use crate::json;
use crate::keys::affinity::{Affinity, BodySurvey, Dialect};
use crate::keys::limits::{Days, Limiter, Rules};
use crate::keys::usage::UsageBook;
use crate::keys::{ApiKey, KeyPool};

/// How the pool key travels to the upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthStyle {
    /// `Authorization: Bearer <key>`.
    Bearer,
    /// A named header carrying the bare key (lowercase name), e.g. `x-goog-api-key`.
    Header(String),
    /// A query parameter carrying the key.
    Query(String),
}

/// The JSON error shape a provider's SDKs understand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorShape {
    /// `{"error":{"message","type","code"}}`.
    OpenAi,
    /// `{"error":{"code","message","status"}}`.
    Gemini,
    /// `{"type":"error","error":{"type","message"}}`.
    Anthropic,
}

/// One upstream API with its keys.
pub struct Provider {
    /// Route name: requests to `/<name>/...` go here.
    pub name: String,
    /// Base URL without a trailing slash; may carry a path.
    pub base_url: String,
    /// Host (and port) of the base URL, for error messages and logs.
    pub host: String,
    /// Key injection.
    pub auth: AuthStyle,
    /// Error body shape.
    pub shape: ErrorShape,
    /// The variable users set to give this provider keys.
    pub keys_var: String,
    /// Its keys and their cooldowns.
    pub pool: KeyPool,
    /// Which key owns which object, and which key each conversation is on.
    pub affinity: Arc<Affinity>,
    /// How the keys' requests leave: key i through entry i mod m; empty: the environment's
    /// proxy variables.
    pub egress: Vec<Egress>,
    /// The tokens each key has spent, per model.
    pub usage: Arc<UsageBook>,
    /// Local limits per key and model, and the keys' use of them.
    pub limits: Arc<Limiter>,
}

impl Provider {
    /// Builds a provider over `keys`.
    pub fn new(
        name: &str,
        base_url: &str,
        auth: AuthStyle,
        shape: ErrorShape,
        keys: Vec<ApiKey>,
    ) -> Self {
        Provider {
            name: name.to_string(),
            base_url: base_url.trim_end_matches('/').to_string(),
            host: url_host(base_url).to_string(),
            auth,
            shape,
            keys_var: keys_var_for(name),
            pool: KeyPool::new(keys),
            affinity: Arc::new(Affinity::new(dialect_of(shape), DEFAULT_SESSION_TTL)),
            egress: Vec::new(),
            usage: Arc::default(),
            limits: Arc::new(Limiter::new(
                Rules::default(),
                if shape == ErrorShape::Gemini {
                    Days::Pacific
                } else {
                    Days::Utc
                },
            )),
        }
    }

    /// The egress the key at `index` leaves through, when `<NAME>_EGRESS` is set.
    pub fn egress_for(&self, index: usize) -> Option<&Egress> {
        (!self.egress.is_empty()).then(|| &self.egress[index % self.egress.len()])
    }

    /// The positions of the keys that leave through egress entry `entry`.
    pub fn keys_behind(&self, entry: usize) -> Vec<usize> {
        let m = self.egress.len().max(1);
        (0..self.pool.len()).filter(|i| i % m == entry).collect()
    }

    /// Whether a request header carries a client credential to strip: the usual three, plus this
    /// provider's own key header.
    pub fn is_credential_header(&self, name: &str) -> bool {
        is_client_credential_header(name)
            || matches!(&self.auth, AuthStyle::Header(own) if name.eq_ignore_ascii_case(own))
    }

    /// The client's query string without credentials (`key=`, and this provider's own key
    /// parameter), otherwise byte for byte.
    pub fn strip_credentials(&self, query: &str) -> String {
        let stripped = strip_query_param(query, CLIENT_CREDENTIAL_PARAM);
        match &self.auth {
            AuthStyle::Query(param) => strip_query_param(&stripped, param),
            _ => stripped,
        }
    }

    /// The model a request is for, for per-model cooldowns: from the path for Gemini
    /// (`models/<model>:generateContent`), else from the JSON body's `"model"` (one of the
    /// members its one pass found).
    pub fn model_of(&self, rest: &str, body: &BodySurvey) -> Option<String> {
        if self.shape == ErrorShape::Gemini {
            let after = rest.split_once("models/")?.1;
            let model = after.split([':', '/', '?']).next()?;
            return (!model.is_empty() && model.len() <= 200).then(|| model.to_string());
        }
        body.member(b"model")
            .and_then(json::plain_string)
            .filter(|m| !m.is_empty() && m.len() <= 200)
            .map(str::to_string)
    }

    /// The upstream URL for a request's path below the route prefix and its filtered query.
    pub fn upstream_url(&self, rest: &str, query: &str) -> String {
        let mut url = String::with_capacity(self.base_url.len() + rest.len() + query.len() + 2);
        url.push_str(&self.base_url);
        url.push('/');
        url.push_str(rest.trim_start_matches('/'));
        if !query.is_empty() {
            url.push('?');
            url.push_str(query);
        }
        url
    }
}

/// How long a conversation keeps its key when nothing says otherwise (SESSION_AFFINITY_TTL_SECS).
const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(3600);

/// The id shapes of a provider whose SDKs speak `shape`.
fn dialect_of(shape: ErrorShape) -> Dialect {
    match shape {
        ErrorShape::OpenAi => Dialect::OpenAi,
        ErrorShape::Gemini => Dialect::Gemini,
        ErrorShape::Anthropic => Dialect::Anthropic,
    }
}

/// `<NAME>_API_KEYS` for a provider name (`-` becomes `_`).
pub fn keys_var_for(name: &str) -> String {
    format!("{}_API_KEYS", env_prefix(name))
}

/// The upper-cased variable prefix of a provider name.
pub fn env_prefix(name: &str) -> String {
    name.to_ascii_uppercase().replace('-', "_")
}

/// The `host[:port]` part of an http(s) URL.
pub fn url_host(url: &str) -> &str {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let end = after_scheme
        .find(['/', '?', '#'])
        .unwrap_or(after_scheme.len());
    &after_scheme[..end]
}

/// Removes every `name=` parameter from a raw query string, keeping the rest byte for byte.
pub fn strip_query_param(query: &str, name: &str) -> String {
    query
        .split('&')
        .filter(|pair| {
            let key = pair.split_once('=').map_or(*pair, |(k, _)| k);
            // Compared as the upstream reads it: `%6Bey` is `key` to Google.
            let decoded = percent_encoding::percent_decode_str(&key.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned();
            !key.is_empty() && decoded != name
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// `/openai/v1/x` → (`openai`, `v1/x`).
pub fn split_route(path: &str) -> (&str, &str) {
    let trimmed = path.trim_start_matches('/');
    trimmed.split_once('/').unwrap_or((trimmed, ""))
}

/// The error shape of the provider a path is for (OpenAI's when none).
pub fn shape_for(providers: &[Provider], path: &str) -> ErrorShape {
    let (name, _) = split_route(path);
    providers
        .iter()
        .find(|p| p.name == name)
        .map_or(ErrorShape::OpenAi, |p| p.shape)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_urls() {
        let p = Provider::new(
            "openai",
            "https://openrouter.ai/api/",
            AuthStyle::Bearer,
            ErrorShape::OpenAi,
            vec![],
        );
        assert_eq!(
            p.upstream_url("v1/chat/completions", ""),
            "https://openrouter.ai/api/v1/chat/completions"
        );
        assert_eq!(
            p.upstream_url("v1/models", "a=1"),
            "https://openrouter.ai/api/v1/models?a=1"
        );
        assert_eq!(p.host, "openrouter.ai");
        assert_eq!(p.keys_var, "OPENAI_API_KEYS");
        assert_eq!(keys_var_for("my-llm"), "MY_LLM_API_KEYS");
    }

    #[test]
    fn query_stripping() {
        let cases = [
            ("alt=sse&key=abc&x=%2F", "alt=sse&x=%2F"),
            ("key=abc", ""),
            ("keys=1&key", "keys=1"),
            ("a=1&&b=2", "a=1&b=2"),
            ("q=a+b%20c", "q=a+b%20c"),
            // By the name the upstream decodes: Google reads `%6Bey` and `k%65y` as `key`.
            ("%6Bey=tok&a=1", "a=1"),
            ("a=1&k%65y=tok", "a=1"),
            ("%6B%65%79", ""),
            ("keyx=1&%6Beyx=2", "keyx=1&%6Beyx=2"),
        ];
        for (input, expected) in cases {
            assert_eq!(strip_query_param(input, "key"), expected, "{input}");
        }
    }

    #[test]
    fn models() {
        let gemini = Provider::new(
            "gemini",
            "http://g",
            AuthStyle::Bearer,
            ErrorShape::Gemini,
            vec![],
        );
        let openai = Provider::new(
            "openai",
            "http://o",
            AuthStyle::Bearer,
            ErrorShape::OpenAi,
            vec![],
        );
        let cases: [(&Provider, &str, &[u8], Option<&str>); 6] = [
            (
                &gemini,
                "v1beta/models/gemini-2.0-flash:generateContent",
                b"",
                Some("gemini-2.0-flash"),
            ),
            (
                &gemini,
                "v1/models/gemini-pro:streamGenerateContent?alt=sse",
                b"",
                Some("gemini-pro"),
            ),
            (&gemini, "v1beta/files", br#"{"model":"x"}"#, None),
            (
                &openai,
                "v1/chat/completions",
                br#"{"model": "gpt-4o", "messages": []}"#,
                Some("gpt-4o"),
            ),
            (
                &openai,
                "v1/chat/completions",
                br#"{"messages":[{"content":"\"model\": \"no\""}]}"#,
                None,
            ),
            (&openai, "v1/models", b"", None),
        ];
        for (provider, rest, body, expected) in cases {
            let survey = BodySurvey::of(provider.affinity.dialect, body);
            let model = provider.model_of(rest, &survey);
            assert_eq!(model.as_deref(), expected, "{rest}");
        }
    }

    #[test]
    fn credentials_per_provider() {
        let p = Provider::new(
            "x",
            "http://x",
            AuthStyle::Query("api_key".into()),
            ErrorShape::OpenAi,
            vec![],
        );
        assert_eq!(p.strip_credentials("a=1&key=k&api_key=z&b=2"), "a=1&b=2");
        let h = Provider::new(
            "y",
            "http://y",
            AuthStyle::Header("x-custom-key".into()),
            ErrorShape::OpenAi,
            vec![],
        );
        assert!(h.is_credential_header("X-Custom-Key") && h.is_credential_header("authorization"));
        assert!(!h.is_credential_header("anthropic-version"));
    }

    #[test]
    fn hosts() {
        assert_eq!(url_host("http://127.0.0.1:8080/x"), "127.0.0.1:8080");
        assert_eq!(url_host("https://api.openai.com"), "api.openai.com");
    }
}
