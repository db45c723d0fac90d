//! keyrelay's own pages: `/` (what this is), `/health`, `/status` (keys, masked) and `/metrics`
//! (Prometheus text). They never call an upstream and never show a full key.

mod charts;
mod prometheus;
mod status;
mod status_page;
mod steer;

use crate::error::ProxyError;
use crate::json::quote;
use crate::proxy::{Proxy, routes};

/// A page keyrelay serves itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    /// `/`: a short description.
    Index,
    /// `/health`, `/healthz`: liveness.
    Health,
    /// `/status`: providers and keys.
    Status,
    /// `/metrics`: Prometheus text format.
    Metrics,
}

impl Page {
    /// The page at `path`, if it is one.
    pub fn at(path: &str) -> Option<Page> {
        match path {
            "/" => Some(Page::Index),
            "/health" | "/healthz" => Some(Page::Health),
            "/status" => Some(Page::Status),
            "/metrics" => Some(Page::Metrics),
            _ => None,
        }
    }

    /// Whether the page needs an access token when PROXY_API_KEYS is set.
    pub fn needs_token(self) -> bool {
        matches!(self, Page::Status | Page::Metrics)
    }
}

/// A rendered page.
pub struct Rendered {
    /// `Content-Type`.
    pub content_type: &'static str,
    /// Body.
    pub body: String,
}

/// keyrelay's own answer when `path` is one of its pages or under `/status/keys`: the page, or
/// the error to answer (401 without a needed token, 404/405 for steering). `None` for any
/// other path. `loopback` says whether the client is on this machine; it is a system call, so
/// it is asked only when the answer depends on it.
pub fn answer_for<'a>(
    proxy: &Proxy,
    method: &str,
    path: &str,
    headers: impl Iterator<Item = (&'a str, &'a str)> + Clone,
    query: &str,
    loopback: impl FnOnce() -> bool,
) -> Option<Result<Rendered, ProxyError>> {
    if steer::is_steering(path) {
        let allowed = steer::allowed(proxy, headers, query, loopback);
        return Some(allowed.and_then(|()| steer::steer(proxy, method, path)));
    }
    let page = Page::at(path)?;
    let wants_html = page == Page::Status
        && headers.clone().any(|(name, value)| {
            name.eq_ignore_ascii_case("accept") && value.contains("text/html")
        });
    if page.needs_token() && !proxy.access.allows(headers, query) {
        return Some(Err(ProxyError::Unauthorized));
    }
    if wants_html {
        return Some(Ok(Rendered {
            content_type: "text/html; charset=utf-8",
            body: status_page::render(proxy),
        }));
    }
    Some(Ok(render(proxy, page)))
}

/// Whether `path` is answered by keyrelay itself (see [`answer_for`]).
pub fn is_own(path: &str) -> bool {
    Page::at(path).is_some() || steer::is_steering(path)
}

/// Renders `page`.
pub fn render(proxy: &Proxy, page: Page) -> Rendered {
    let json = |body| Rendered {
        content_type: "application/json",
        body,
    };
    match page {
        Page::Index => json(format!(
            r#"{{"name":"keyrelay","version":{},"routes":[{}],"docs":"point your SDK's base URL at a route, e.g. http://HOST:PORT/openai/v1"}}"#,
            quote(env!("CARGO_PKG_VERSION")),
            routes(&proxy.providers())
                .iter()
                .map(|r| quote(r))
                .collect::<Vec<_>>()
                .join(",")
        )),
        Page::Health => json(r#"{"status":"ok"}"#.to_string()),
        Page::Status => json(status::status(proxy)),
        Page::Metrics => Rendered {
            content_type: "text/plain; version=0.0.4",
            body: prometheus::metrics(proxy),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RESERVED_ROUTES;

    #[test]
    fn every_page_but_the_index_is_a_reserved_route_name() {
        for name in RESERVED_ROUTES {
            assert!(Page::at(&format!("/{name}")).is_some(), "{name}");
        }
        for path in ["/health", "/healthz", "/status", "/metrics"] {
            let name = path.trim_start_matches('/');
            assert!(RESERVED_ROUTES.contains(&name), "{path}");
        }
    }
}
