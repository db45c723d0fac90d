//! The running proxy's shared state, built once from the configuration and shared by every
//! worker: providers with their key pools, the upstream agent, limits and the id source.

use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use log::error;
use ureq::Agent;

use crate::agent;
use crate::agent::egress::Egress;
use crate::agent::trust::{Trust, TrustFiles};
use crate::config::Config;
use crate::keys::access::AccessTokens;
use crate::keys::journal::{Attached, Journal};
use crate::load::Load;
use crate::metrics::Metrics;
use crate::provider::Provider;
use crate::request_id::RequestIds;

/// Whether a shared store is reachable, and since when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    pub up: bool,
    pub since: std::time::SystemTime,
}

/// What the status pages show of the shared store (state/shared keeps it).
pub trait SharedStatus: Send + Sync {
    /// The store's URL with its password masked.
    fn shown_url(&self) -> &str;
    /// Whether it is reachable, and since when.
    fn health(&self) -> Health;
}

/// Limits applied to every request.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request body.
    pub max_body_bytes: u64,
    /// Cooldown for a 429 without a delay hint.
    pub cooldown: Duration,
    /// Upstream silence limit, for messages.
    pub upstream_timeout: Duration,
    /// Longest a request waits for a cooling key.
    pub wait_for_key: Duration,
    /// Longest a client may take to accept one piece of an answer.
    pub client_timeout: Duration,
    /// Skip keys whose rate-limit headers say they have nothing left (HEADROOM).
    pub headroom: bool,
    /// Keep later turns of a conversation on their key (SESSION_AFFINITY).
    pub session_affinity: bool,
}

/// Everything a worker needs to forward a request.
pub struct Proxy {
    /// Providers in route order; replaced whole on reload, so a request keeps the set it
    /// started with.
    providers: RwLock<Arc<Vec<Provider>>>,
    /// Shared upstream connection pool.
    pub agent: Agent,
    /// The roots TLS upstreams are checked against; new connections take a reload's.
    trust: Trust,
    /// Limits.
    pub limits: Limits,
    /// Request ids.
    pub ids: RequestIds,
    /// Client access tokens.
    pub access: AccessTokens,
    /// Connections, requests in flight and queued, workers.
    pub load: Arc<Load>,
    /// Request counters.
    pub metrics: Metrics,
    /// Start time, for uptime.
    pub started: Instant,
    /// Where key state changes are reported (SHARED_STATE_URL), once attached.
    journal: OnceLock<Arc<dyn Journal>>,
    /// The shared store's state, when SHARED_STATE_URL is set.
    pub shared: OnceLock<Arc<dyn SharedStatus>>,
}

impl Proxy {
    /// Builds the state for `config`, trusting only the built-in roots for TLS (see
    /// [`Proxy::with_trust`]).
    pub fn new(config: &Config) -> Proxy {
        let (trust, _) = Trust::new(&TrustFiles::default()).expect("the built-in roots load");
        Proxy::with_trust(config, trust)
    }

    /// Builds the state for `config`, checking TLS upstreams against `trust` (made from
    /// `config.trust_files` by the caller, who reports a bad file).
    pub fn with_trust(config: &Config, trust: Trust) -> Proxy {
        Proxy {
            providers: RwLock::new(Arc::new(build_providers(config))),
            agent: agent::agent(
                config.connect_timeout,
                config.upstream_timeout,
                config.workers,
                config.sse_heartbeat,
                trust.clone(),
            ),
            trust,
            limits: Limits {
                max_body_bytes: config.max_body_bytes,
                cooldown: config.cooldown,
                upstream_timeout: config.upstream_timeout,
                wait_for_key: config.wait_for_key,
                client_timeout: config.client_idle_timeout,
                headroom: config.headroom,
                session_affinity: config.session_affinity,
            },
            ids: RequestIds::default(),
            access: AccessTokens::new(config.proxy_tokens.clone()),
            load: Arc::default(),
            metrics: Metrics::default(),
            started: Instant::now(),
            journal: OnceLock::new(),
            shared: OnceLock::new(),
        }
    }

    /// Reports every later change of the key state (benches, disabled flags, learned ids,
    /// conversations) to `journal`, for these providers and those a reload brings.
    pub fn attach_journal(&self, journal: Arc<dyn Journal>) {
        if self.journal.set(journal).is_ok() {
            attach_all(&self.providers(), self.journal.get());
        }
    }

    /// The current providers.
    pub fn providers(&self) -> Arc<Vec<Provider>> {
        Arc::clone(&self.providers.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Swaps in the key lists and provider settings of `config`, keeping the cooldowns and
    /// counters of keys that stayed. Requests in flight finish with the set they started with.
    /// Returns a description of what changed (keys as masks).
    pub fn reload(&self, config: &Config) -> Vec<String> {
        let old = self.providers();
        let mut new = build_providers(config);
        for provider in &mut new {
            if let Some(previous) = old.iter().find(|p| p.name == provider.name) {
                provider.pool.adopt(&previous.pool);
                // Objects and conversations stay with their keys across a reload; an owner
                // no longer configured simply owns nothing keyrelay can reach.
                provider.usage = Arc::clone(&previous.usage);
                // The counts so far stay; the rules are the new ones.
                let rules = config
                    .provider(&provider.name)
                    .map(|p| p.limits.clone())
                    .unwrap_or_default();
                previous.limits.set_rules(rules);
                provider.limits = Arc::clone(&previous.limits);
                if previous.affinity.dialect == provider.affinity.dialect {
                    provider.affinity = Arc::clone(&previous.affinity);
                    provider.affinity.set_session_ttl(config.session_ttl);
                }
            }
        }
        attach_all(&new, self.journal.get());
        let mut changes = describe_changes(&old, &new);
        // Read again whether set or not: a variable removed takes its certificates with it.
        match self.trust.reload(&config.trust_files) {
            Ok(0) => {}
            Ok(n) => changes.push(format!(
                "TLS: {n} certificate(s) trusted besides the built-in roots"
            )),
            Err(why) => {
                error!("reload: {why}; new TLS connections keep the certificates trusted before");
            }
        }
        *self.providers.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(new);
        changes
    }
}

/// Attaches `journal` (when there is one) to each provider's pool and affinity tables.
fn attach_all(providers: &[Provider], journal: Option<&Arc<dyn Journal>>) {
    let Some(journal) = journal else { return };
    for provider in providers {
        let attached = Attached::new(&provider.name, Arc::clone(journal));
        provider.pool.attach(attached.clone());
        provider.limits.attach(attached.clone());
        provider.affinity.attach(attached);
    }
}

/// The route patterns of `providers`, for 404 messages and the index page.
pub fn routes(providers: &[Provider]) -> Vec<String> {
    providers.iter().map(|p| format!("/{}/*", p.name)).collect()
}

/// One provider per configured one, in order, each with its key pool.
pub(crate) fn build_providers(config: &Config) -> Vec<Provider> {
    config
        .providers
        .iter()
        .map(|p| {
            let mut provider = Provider::new(
                &p.name,
                &p.base_url,
                p.auth.clone(),
                p.shape,
                p.keys.clone(),
            );
            provider.affinity.set_session_ttl(config.session_ttl);
            provider.limits.set_rules(p.limits.clone());
            // Validated with the configuration: each entry parses.
            provider.egress = p
                .egress
                .iter()
                .filter_map(|entry| Egress::parse(&entry.url).ok())
                .collect();
            provider
        })
        .collect()
}

fn describe_changes(old: &[Provider], new: &[Provider]) -> Vec<String> {
    let mut changes = Vec::new();
    for provider in new {
        let Some(before) = old.iter().find(|p| p.name == provider.name) else {
            changes.push(format!(
                "provider {} added: {} ({} keys)",
                provider.name,
                provider.base_url,
                provider.pool.len()
            ));
            continue;
        };
        if before.base_url != provider.base_url {
            changes.push(format!(
                "{}: base URL {} -> {}",
                provider.name, before.base_url, provider.base_url
            ));
        }
        if before.auth != provider.auth {
            changes.push(format!("{}: key injection changed", provider.name));
        }
        let shown = |p: &Provider| p.egress.iter().map(|e| e.shown.clone()).collect::<Vec<_>>();
        if shown(before) != shown(provider) {
            let list = shown(provider);
            changes.push(format!(
                "{}: egress {}",
                provider.name,
                if list.is_empty() {
                    "as the environment says".to_string()
                } else {
                    list.join(", ")
                }
            ));
        }
        let masks = |from: &Provider, not_in: &Provider| -> Vec<String> {
            from.pool
                .keys()
                .iter()
                .filter(|k| !not_in.pool.keys().contains(k))
                .map(|k| k.mask())
                .collect()
        };
        let added = masks(provider, before);
        let removed = masks(before, provider);
        if !added.is_empty() {
            changes.push(format!(
                "{}: keys added: {}",
                provider.name,
                added.join(", ")
            ));
        }
        if !removed.is_empty() {
            changes.push(format!(
                "{}: keys removed: {}",
                provider.name,
                removed.join(", ")
            ));
        }
    }
    for provider in old {
        if !new.iter().any(|p| p.name == provider.name) {
            changes.push(format!("provider {} removed", provider.name));
        }
    }
    changes
}
