//! The running proxy's shared state, built once from the configuration and shared by every
//! worker: providers with their key pools, the upstream agent, limits and the id source.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ureq::Agent;

use crate::access::AccessTokens;
use crate::client_conn::Registry;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::provider::Provider;
use crate::request_id::RequestIds;
use crate::upstream;

/// Limits applied to every request.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request body.
    pub max_body_bytes: u64,
    /// Cooldown for a 429 without a delay hint.
    pub cooldown: Duration,
    /// Upstream silence limit, for messages.
    pub upstream_timeout: Duration,
}

/// Everything a worker needs to forward a request.
pub struct Proxy {
    /// Providers in route order.
    pub providers: Vec<Provider>,
    /// Shared upstream connection pool.
    pub agent: Agent,
    /// Limits.
    pub limits: Limits,
    /// Request ids.
    pub ids: Arc<RequestIds>,
    /// Client access tokens.
    pub access: AccessTokens,
    /// Open client connections and requests in flight.
    pub registry: Arc<Registry>,
    /// Request counters.
    pub metrics: Metrics,
    /// Start time, for uptime.
    pub started: Instant,
}

impl Proxy {
    /// Builds the state for `config`.
    pub fn new(config: &Config) -> Proxy {
        let providers = config
            .providers
            .iter()
            .map(|p| {
                Provider::new(
                    &p.name,
                    &p.base_url,
                    p.auth.clone(),
                    p.shape,
                    p.keys.clone(),
                )
            })
            .collect();
        Proxy {
            providers,
            agent: upstream::agent(
                config.connect_timeout,
                config.upstream_timeout,
                config.workers,
            ),
            limits: Limits {
                max_body_bytes: config.max_body_bytes,
                cooldown: config.cooldown,
                upstream_timeout: config.upstream_timeout,
            },
            ids: Arc::new(RequestIds::default()),
            access: AccessTokens::new(config.proxy_tokens.clone()),
            registry: Arc::new(Registry::default()),
            metrics: Metrics::default(),
            started: Instant::now(),
        }
    }

    /// The provider serving route `name`.
    pub fn provider(&self, name: &str) -> Option<&Provider> {
        self.providers.iter().find(|p| p.name == name)
    }

    /// The route patterns, for 404 messages and the index page.
    pub fn routes(&self) -> Vec<String> {
        self.providers
            .iter()
            .map(|p| format!("/{}/*", p.name))
            .collect()
    }
}
