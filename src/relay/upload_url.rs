//! Gemini resumable uploads come back through keyrelay. The google-genai SDK starts an upload
//! (`POST /upload/v1beta/files` with `X-Goog-Upload-Command: start`) and sends the bytes to the
//! URL the answer's `X-Goog-Upload-URL` names. That URL points at the upstream host, so the bytes
//! would bypass keyrelay (and a custom GEMINI_BASE_URL, an egress, a test upstream). It is
//! rewritten to the same path and query under keyrelay's own address as the client reached it,
//! and the upload's id is bound to the key that started it, so the bytes go with that key.

use std::time::Instant;

use ureq::http::{HeaderMap, HeaderValue};

use super::attempt::UpstreamRequest;
use crate::keys::ApiKey;
use crate::keys::affinity::{Kind, Outcome, UPLOAD_PREFIX};
use crate::provider::{Provider, url_host};

/// The header that names where the upload's bytes go.
const UPLOAD_URL: &str = "x-goog-upload-url";

/// Rewrites `X-Goog-Upload-URL` in `headers` (an answer to a request through `provider`) to
/// come back through keyrelay, and binds the upload to `key`.
pub(crate) fn rewrite_upload_url(
    provider: &Provider,
    upstream: &UpstreamRequest,
    key: &ApiKey,
    headers: &mut HeaderMap,
) {
    let Some(url) = headers.get(UPLOAD_URL).and_then(|v| v.to_str().ok()) else {
        return;
    };
    let Some(base) = client_base(|name| upstream.client_header(name)) else {
        return;
    };
    let Some((rewritten, upload_id)) = through_keyrelay(url, provider, &base) else {
        return;
    };
    if let Some(id) = upload_id {
        let affinity = &provider.affinity;
        if affinity.learn(
            [format!("{UPLOAD_PREFIX}{id}").as_str()],
            key.id(),
            Instant::now(),
        ) > 0
        {
            affinity.count(Kind::Resource, Outcome::Learned);
        }
    }
    if let Ok(value) = HeaderValue::from_str(&rewritten) {
        headers.insert(UPLOAD_URL, value);
    }
}

/// `scheme://host[:port]` as the client reached keyrelay: `X-Forwarded-Proto` and
/// `X-Forwarded-Host` when a reverse proxy set them, else `http` and `Host`.
fn client_base<'a>(header: impl Fn(&str) -> Option<&'a str>) -> Option<String> {
    let first = |name: &str| {
        header(name)
            .map(|v| v.split(',').next().unwrap_or(v).trim())
            .filter(|v| !v.is_empty())
    };
    let scheme = match first("x-forwarded-proto") {
        Some(proto) if proto.eq_ignore_ascii_case("https") => "https",
        _ => "http",
    };
    let host = first("x-forwarded-host").or_else(|| first("host"))?;
    let valid = host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'));
    valid.then(|| format!("{scheme}://{host}"))
}

/// The upstream upload `url` under `base` and the provider's route, with any credential left
/// out of its query, and the upload id it carries.
fn through_keyrelay(
    url: &str,
    provider: &Provider,
    base: &str,
) -> Option<(String, Option<String>)> {
    let after_scheme = url.split_once("://")?.1;
    let path_and_query = &after_scheme[after_scheme.find('/')?..];
    // A base URL with a path (`https://host/prefix`) is not repeated under the route.
    let base_path = &provider.base_url[provider.base_url.find("://")? + 3..];
    let base_path = &base_path[url_host(&provider.base_url).len()..];
    let path_and_query = path_and_query
        .strip_prefix(base_path)
        .filter(|rest| rest.starts_with('/'))
        .unwrap_or(path_and_query);
    let (path, query) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""));
    let query = provider.strip_credentials(query);
    let upload_id = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("upload_id="))
        .map(str::to_string);
    let mut rewritten = format!("{base}/{}{path}", provider.name);
    if !query.is_empty() {
        rewritten.push('?');
        rewritten.push_str(&query);
    }
    Some((rewritten, upload_id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::{AuthStyle, ErrorShape};

    fn gemini(base: &str) -> Provider {
        Provider::new(
            "gemini",
            base,
            AuthStyle::Header("x-goog-api-key".into()),
            ErrorShape::Gemini,
            vec![],
        )
    }

    #[test]
    fn upload_urls_come_back_through_keyrelay() {
        let google = "https://generativelanguage.googleapis.com/upload/v1beta/files?upload_id=AbC-12_z&upload_protocol=resumable";
        let (url, id) = through_keyrelay(
            google,
            &gemini("https://generativelanguage.googleapis.com"),
            "http://127.0.0.1:3000",
        )
        .unwrap();
        assert_eq!(
            url,
            "http://127.0.0.1:3000/gemini/upload/v1beta/files?upload_id=AbC-12_z&upload_protocol=resumable"
        );
        assert_eq!(id.as_deref(), Some("AbC-12_z"));
        let (url, _) = through_keyrelay(
            "http://127.0.0.1:8080/prefix/upload/v1beta/files?key=secret&upload_id=X1",
            &gemini("http://127.0.0.1:8080/prefix"),
            "https://relay.example",
        )
        .unwrap();
        assert_eq!(
            url,
            "https://relay.example/gemini/upload/v1beta/files?upload_id=X1"
        );
    }

    #[test]
    fn the_client_base_follows_the_reverse_proxy() {
        let headers = [
            ("host", "127.0.0.1:8080"),
            ("x-forwarded-proto", "https, http"),
            ("x-forwarded-host", "relay.example"),
        ];
        let lookup = |name: &str| headers.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
        assert_eq!(
            client_base(lookup).as_deref(),
            Some("https://relay.example")
        );
        let plain = |name: &str| (name == "host").then_some("localhost:3000");
        assert_eq!(client_base(plain).as_deref(), Some("http://localhost:3000"));
        let bad = |name: &str| (name == "host").then_some("evil.example/path?");
        assert_eq!(client_base(bad), None);
    }
}
