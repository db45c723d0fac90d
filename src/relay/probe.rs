//! `keyrelay --probe`: one cheap authenticated request per configured key, a few at a time, each
//! answer classified by the same code the proxy uses for real answers, one line per key (masked)
//! and an exit status a deploy script can test.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ureq::http::{HeaderMap, HeaderValue, Method};

use super::attempt::{uri_with_key, with_key};
use super::outcome::{Verdict, cooldown_of, needs_body, verdict};
use super::round::read_error_body;
use super::upstream::{self, CallFailure};
use crate::agent::trust::Trust;
use crate::config::{Config, ProviderConfig};
use crate::provider::{ErrorShape, Provider};
use crate::proxy::build_providers;

/// Probes running at once.
const PARALLEL: usize = 8;

/// What a probe found out about one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyVerdict {
    /// The upstream accepted it.
    Ok,
    /// Rejected as invalid or revoked.
    Invalid,
    /// Its balance is spent.
    QuotaExhausted,
    /// Rate limited now; usable again after this long.
    RateLimited(Duration),
    /// The upstream could not be reached.
    Unreachable,
    /// The upstream's TLS certificate is not trusted (UPSTREAM_CA_FILE).
    Untrusted,
    /// Any other answer.
    Unexpected(u16),
}

impl KeyVerdict {
    /// Whether the key can serve requests (now, or once its rate limit resets).
    pub fn usable(&self) -> bool {
        matches!(self, KeyVerdict::Ok | KeyVerdict::RateLimited(_))
    }

    fn label(&self) -> String {
        match self {
            KeyVerdict::Ok => "ok".into(),
            KeyVerdict::Invalid => "invalid".into(),
            KeyVerdict::QuotaExhausted => "quota_exhausted".into(),
            KeyVerdict::RateLimited(wait) => {
                format!("rate_limited (cooldown {} s)", wait.as_secs_f64().ceil())
            }
            KeyVerdict::Unreachable => "unreachable".into(),
            KeyVerdict::Untrusted => "untrusted certificate (set UPSTREAM_CA_FILE)".into(),
            KeyVerdict::Unexpected(status) => format!("unexpected {status}"),
        }
    }
}

/// The path a probe requests: `<NAME>_PROBE_PATH`, else the cheapest listing of the API shape.
fn probe_path(config: &ProviderConfig) -> &str {
    match (&config.probe_path, config.shape) {
        (Some(path), _) => path,
        (None, ErrorShape::Gemini) => "/v1beta/models?pageSize=1",
        (None, _) => "/v1/models",
    }
}

/// Probes key `index` of `provider`.
fn probe(
    agent: &ureq::Agent,
    provider: &Provider,
    path: &str,
    index: usize,
    cooldown: Duration,
) -> KeyVerdict {
    let mut headers = HeaderMap::new();
    if provider.shape == ErrorShape::Anthropic {
        headers.insert("anthropic-version", HeaderValue::from_static("2023-06-01"));
    }
    let (rest, query) = path
        .trim_start_matches('/')
        .split_once('?')
        .unwrap_or((path.trim_start_matches('/'), ""));
    let key = provider.pool.key(index);
    let Some(uri) = uri_with_key(&provider.upstream_url(rest, query), provider, key.secret())
    else {
        return KeyVerdict::Unexpected(0);
    };
    let headers = with_key(headers, provider, key);
    let egress = provider.egress_for(index);
    let mut response = match upstream::call(agent, &Method::GET, uri, headers, None, egress) {
        Ok(response) => response,
        Err(CallFailure::Untrusted(_)) => return KeyVerdict::Untrusted,
        Err(CallFailure::Unreachable(_) | CallFailure::TimedOut | CallFailure::Failed(_)) => {
            return KeyVerdict::Unreachable;
        }
    };
    let status = response.status().as_u16();
    let body = if needs_body(status) {
        read_error_body(&mut response)
    } else {
        Vec::new()
    };
    match verdict(status, &body, false) {
        Verdict::Relay if (200..300).contains(&status) => KeyVerdict::Ok,
        // A probe names no object and no model: a 403 there is about the key.
        Verdict::KeyRejected | Verdict::Forbidden => KeyVerdict::Invalid,
        Verdict::QuotaExhausted => KeyVerdict::QuotaExhausted,
        Verdict::RateLimited => {
            KeyVerdict::RateLimited(cooldown_of(response.headers(), &body, cooldown))
        }
        _ => KeyVerdict::Unexpected(status),
    }
}

/// Probes every key of `config`, prints a line per key, and returns whether every provider
/// with keys has at least one usable one.
pub fn run(config: &Config) -> bool {
    let trust = match Trust::new(&config.trust_files) {
        Ok((trust, _)) => trust,
        Err(why) => {
            println!("probe: {why}");
            return false;
        }
    };
    let agent = crate::agent::agent(
        config.connect_timeout,
        config.connect_timeout,
        PARALLEL,
        None,
        trust,
    );
    let providers: Vec<(Provider, &ProviderConfig)> = build_providers(config)
        .into_iter()
        .zip(&config.providers)
        .filter(|(provider, _)| !provider.pool.is_empty())
        .collect();
    let work: Vec<(usize, usize)> = providers
        .iter()
        .enumerate()
        .flat_map(|(p, (provider, _))| (0..provider.pool.len()).map(move |k| (p, k)))
        .collect();
    let next = AtomicUsize::new(0);
    let results = Mutex::new(vec![None; work.len()]);
    std::thread::scope(|scope| {
        for _ in 0..PARALLEL.min(work.len()) {
            scope.spawn(|| {
                loop {
                    let at = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&(p, k)) = work.get(at) else { break };
                    let (provider, settings) = &providers[p];
                    let started = Instant::now();
                    let found = probe(&agent, provider, probe_path(settings), k, config.cooldown);
                    let took = started.elapsed();
                    results.lock().unwrap_or_else(|e| e.into_inner())[at] = Some((found, took));
                }
            });
        }
    });
    let results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    let mut usable = vec![false; providers.len()];
    for (&(p, k), result) in work.iter().zip(results) {
        let (found, took) = result.expect("every probe ran");
        usable[p] |= found.usable();
        let provider = &providers[p].0;
        let via = provider
            .egress_for(k)
            .map(|e| format!(" via {}", e.shown))
            .unwrap_or_default();
        println!(
            "{:<12} {:<14} {:<28} {} ms{via}",
            provider.name,
            provider.pool.key(k).mask(),
            found.label(),
            took.as_millis()
        );
    }
    let without: Vec<&str> = providers
        .iter()
        .zip(&usable)
        .filter(|(_, ok)| !**ok)
        .map(|((provider, _), _)| provider.name.as_str())
        .collect();
    if without.is_empty() {
        println!("probe: every provider has a usable key");
    } else {
        println!("probe: no usable key for {}", without.join(", "));
    }
    without.is_empty()
}
