//! Upstream host names resolved once a minute, not for every request. ureq resolves a
//! request's host before it looks for a pooled connection, so every request paid for a lookup
//! it did not need: for an IP literal a `format!` and a parse (~3k instructions, callgrind), for
//! a host name a `getaddrinfo` call (a DNS round trip unless a local cache answers). An IP
//! literal is now parsed in place; a host name is looked up through ureq's own resolver at most
//! once per [`FRESH`] and remembered (a provider that moves is reached at its new address a
//! minute later at most; connections in the pool keep their address anyway).

use std::net::{IpAddr, SocketAddr};
use std::sync::RwLock;
use std::time::{Duration, Instant};

use ureq::config::Config;
use ureq::http::Uri;
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::NextTimeout;

use crate::small_map::SmallMap;

/// How long a host name's addresses are used before it is looked up again.
pub const FRESH: Duration = Duration::from_secs(60);

/// Most host names remembered: upstreams come from the configuration (base URLs, egress
/// proxies), so a handful; past this the memory starts over.
const MAX_HOSTS: usize = 64;

/// Addresses of one host and port, and when they were looked up.
type Looked = (Instant, ResolvedSocketAddrs);

/// ureq's resolver with IP literals parsed in place and host names remembered for [`FRESH`].
#[derive(Debug, Default)]
pub struct CachingResolver {
    inner: DefaultResolver,
    /// By (host, port). Read by every request, written once a minute per host.
    hosts: RwLock<SmallMap<(String, u16), Looked>>,
}

impl Resolver for CachingResolver {
    fn resolve(
        &self,
        uri: &Uri,
        config: &Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let (Some(authority), Some(port)) = (uri.authority(), port_of(uri)) else {
            return self.inner.resolve(uri, config, timeout);
        };
        let host = authority.host();
        let literal = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
        // keyrelay leaves ureq's IP family at Any: a literal is the address, whichever it is.
        if let Ok(ip) = literal.unwrap_or(host).parse::<IpAddr>() {
            let mut addrs = self.empty();
            addrs.push(SocketAddr::new(ip, port));
            return Ok(addrs);
        }
        let key = (host.to_ascii_lowercase(), port);
        let now = Instant::now();
        let known = self
            .hosts
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .filter(|(at, _)| now.saturating_duration_since(*at) < FRESH)
            .map(|(_, addrs)| addrs.clone());
        if let Some(addrs) = known {
            return Ok(addrs);
        }
        // Looked up outside the lock: a slow DNS answer holds up only its own request.
        let addrs = self.inner.resolve(uri, config, timeout)?;
        let mut hosts = self.hosts.write().unwrap_or_else(|p| p.into_inner());
        if hosts.len() >= MAX_HOSTS && !hosts.contains_key(&key) {
            hosts.clear();
        }
        hosts.insert(key, (now, addrs.clone()));
        Ok(addrs)
    }
}

/// The port a request goes to: the URI's own, or its scheme's (`None` for a scheme keyrelay
/// does not know, which ureq's resolver then answers).
fn port_of(uri: &Uri) -> Option<u16> {
    uri.port_u16().or(match uri.scheme_str()? {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(resolver: &CachingResolver, url: &str) -> Vec<SocketAddr> {
        let uri: Uri = url.parse().unwrap();
        let config = ureq::Agent::config_builder().build();
        let addrs = resolver
            .resolve(&uri, &config, NextTimeout::default())
            .unwrap();
        addrs.iter().copied().collect()
    }

    #[test]
    fn literals_in_place_and_names_remembered() {
        let resolver = CachingResolver::default();
        assert_eq!(
            resolve(&resolver, "http://127.0.0.1:8080/v1"),
            ["127.0.0.1:8080".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(
            resolve(&resolver, "https://[::1]/v1"),
            ["[::1]:443".parse::<SocketAddr>().unwrap()]
        );
        assert!(
            resolver.hosts.read().unwrap().is_empty(),
            "literals are not remembered"
        );
        // `localhost` comes from /etc/hosts: no network.
        let first = resolve(&resolver, "http://localhost:9/x");
        assert!(first.iter().all(|a| a.ip().is_loopback() && a.port() == 9));
        assert_eq!(resolver.hosts.read().unwrap().len(), 1);
        assert_eq!(
            resolve(&resolver, "http://LOCALHOST:9/y"),
            first,
            "from memory"
        );
        assert_eq!(resolver.hosts.read().unwrap().len(), 1);
        // An entry past FRESH is looked up again.
        let stale = Instant::now() - FRESH - Duration::from_secs(1);
        for (at, _) in resolver.hosts.write().unwrap().values_mut() {
            *at = stale;
        }
        assert_eq!(resolve(&resolver, "http://localhost:9/z"), first);
        let at = resolver.hosts.read().unwrap().values().next().unwrap().0;
        assert!(at > stale, "looked up again");
    }
}
