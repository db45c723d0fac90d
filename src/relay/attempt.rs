//! Choosing the answer: the upstream request built once, then attempts over the keys from one
//! ticket (each key once, cooldowns per model, waiting for a key when allowed), ending in a live
//! answer to relay, a saved failure to pass on, or an error keyrelay writes itself.

use std::io::Read;
use std::thread;
use std::time::{Instant, SystemTime};

use log::{debug, info, warn};
use ureq::http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};

use super::headroom::Headroom;
use super::incoming::Incoming;
use super::outcome::{MAX_COOLDOWN, Verdict, cooldown_of, needs_body, verdict};
use super::redact::{read_small, redact_location, redact_saved};
use super::upstream::{self, CallFailure};
use crate::config::{QUOTA_BENCH, REJECTED_KEY_BENCH};
use crate::error::ProxyError;
use crate::headers::forward_request_header;
use crate::keys::{ApiKey, AttemptClass, BenchReason, HeadroomReport};
use crate::provider::{AuthStyle, Provider};
use crate::proxy::Proxy;
use crate::respond::answer::{Answer, SavedAnswer};

/// Largest error body from upstream kept to relay or to read a retry delay from.
const MAX_ERROR_BODY: u64 = 1024 * 1024;

/// The parts of the upstream request that are the same for every attempt.
pub(crate) struct UpstreamRequest<'a> {
    pub(crate) method: Method,
    pub(crate) url: String,
    pub(crate) has_body: bool,
    incoming: &'a Incoming<'a>,
    request_id: &'a str,
}

impl<'a> UpstreamRequest<'a> {
    pub(crate) fn new(
        incoming: &'a Incoming<'a>,
        provider: &Provider,
        rest: &str,
        query: &str,
        request_id: &'a str,
    ) -> Option<UpstreamRequest<'a>> {
        let method = Method::from_bytes(incoming.method().as_bytes()).ok()?;
        let has_body = incoming.body.as_ref().is_ok_and(|b| !b.is_empty())
            || !matches!(
                method,
                Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS
            );
        Some(UpstreamRequest {
            method,
            url: provider.upstream_url(rest, query),
            has_body,
            incoming,
            request_id,
        })
    }

    /// The URI for one attempt.
    pub(crate) fn uri(&self, provider: &Provider, key: &str) -> Option<Uri> {
        uri_with_key(&self.url, provider, key)
    }

    /// The headers for one attempt: the client's end-to-end ones but its credentials, keyrelay's
    /// request id, and the pool key. Built per attempt (most requests make one): a map built
    /// once and cloned would cost more allocations than it saves.
    pub(crate) fn headers_with_key(&self, provider: &Provider, key: &ApiKey) -> HeaderMap {
        let incoming = self.incoming.headers();
        // The head's header count bounds the end-to-end ones: no second pass to count them.
        let bound = incoming.size_hint().1.unwrap_or(0);
        let mut headers = HeaderMap::with_capacity(bound + 2);
        for (name, value) in incoming {
            if !forward_request_header(name, &[]) || provider.is_credential_header(name) {
                continue;
            }
            let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_bytes(value.as_bytes()),
            ) else {
                continue;
            };
            headers.append(name, value);
        }
        if let Ok(id) = HeaderValue::from_str(self.request_id) {
            headers.insert("x-request-id", id);
        }
        with_key(headers, provider, key)
    }
}

/// `url` as the URI for one attempt; query-style providers carry the key in it.
pub(crate) fn uri_with_key(url: &str, provider: &Provider, key: &str) -> Option<Uri> {
    match &provider.auth {
        AuthStyle::Query(param) => {
            let separator = if url.contains('?') { '&' } else { '?' };
            format!("{url}{separator}{param}={}", percent_encode(key))
                .parse()
                .ok()
        }
        _ => url.parse().ok(),
    }
}

/// `headers` with the pool key added the way the provider takes it (none for query-style).
pub(crate) fn with_key(mut headers: HeaderMap, provider: &Provider, key: &ApiKey) -> HeaderMap {
    let injected = match &provider.auth {
        AuthStyle::Bearer => key
            .bearer_header()
            .map(|value| (HeaderName::from_static("authorization"), value)),
        AuthStyle::Header(name) => HeaderName::from_bytes(name.as_bytes())
            .ok()
            .zip(key.bare_header()),
        AuthStyle::Query(_) => None,
    };
    if let Some((name, value)) = injected {
        headers.insert(name, value);
    }
    headers
}

/// How the last failed attempt ended, to choose the answer when no key succeeds.
pub(crate) enum LastFailure {
    /// No attempt was made (every key benched) or the last one was a 429.
    RateLimited,
    /// The upstream could not be reached.
    Unreachable,
    /// A 401/403/5xx answer, kept to relay.
    Answer(Box<SavedAnswer>, String),
}

/// Tries the keys, and when every key is cooling and one frees within WAIT_FOR_KEY_SECS, waits
/// for it and tries again.
pub(crate) fn attempt(
    proxy: &Proxy,
    provider: &Provider,
    upstream: &UpstreamRequest,
    body: &[u8],
    model: Option<&str>,
) -> Answer {
    let pool = &provider.pool;
    let deadline = Instant::now() + proxy.limits.wait_for_key;
    let mut attempts = 0;
    loop {
        let last = match try_round(proxy, provider, upstream, body, model, &mut attempts) {
            Ok(answer) => return answer,
            Err(last) => last,
        };
        let error = match last {
            LastFailure::Answer(answer, key) => {
                return Answer::Saved {
                    answer: *answer,
                    attempts,
                    key,
                };
            }
            LastFailure::Unreachable => ProxyError::Unreachable {
                host: provider.host.clone(),
            },
            LastFailure::RateLimited => {
                let wait = pool.wait_for_any(model, Instant::now());
                if !wait.is_zero() && Instant::now() + wait <= deadline {
                    debug!(
                        "{}: every key is cooling; holding the request {} ms for the first to free",
                        provider.name,
                        wait.as_millis()
                    );
                    thread::sleep(wait);
                    continue;
                }
                ProxyError::Exhausted {
                    retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
                }
            }
        };
        return Answer::Error {
            error,
            shape: provider.shape,
            attempts,
        };
    }
}

/// One pass over the keys from a fresh ticket, each at most once, skipping benched ones.
/// `Ok` is the final answer (relay, or a timeout); `Err` says how the last failure went.
pub(crate) fn try_round(
    proxy: &Proxy,
    provider: &Provider,
    upstream: &UpstreamRequest,
    body: &[u8],
    model: Option<&str>,
    attempts: &mut u32,
) -> Result<Answer, LastFailure> {
    let pool = &provider.pool;
    let mut last = LastFailure::RateLimited;
    for index in pool.attempt_order(pool.ticket()) {
        if !pool.is_ready(index, model, Instant::now()) {
            continue;
        }
        *attempts += 1;
        let key = pool.key(index);
        let Some(uri) = upstream.uri(provider, key.secret()) else {
            return Ok(Answer::Error {
                error: ProxyError::BadRequest,
                shape: provider.shape,
                attempts: *attempts,
            });
        };
        let headers = upstream.headers_with_key(provider, key);
        let sent_body = upstream.has_body.then_some(body);
        // Every way of getting no answer counts as unreachable for this key's counters.
        let called = upstream::call(&proxy.agent, &upstream.method, uri, headers, sent_body)
            .inspect_err(|_| pool.record(index, AttemptClass::Unreachable));
        let mut response = match called {
            Ok(response) => response,
            Err(CallFailure::TimedOut) => {
                let host = provider.host.clone();
                let secs = proxy.limits.upstream_timeout.as_secs();
                return Ok(Answer::Error {
                    error: ProxyError::Timeout { host, secs },
                    shape: provider.shape,
                    attempts: *attempts,
                });
            }
            Err(CallFailure::Failed(why)) => {
                debug!(
                    "{} key={} upstream failed after the request was sent: {why}",
                    provider.name, key
                );
                return Ok(Answer::Error {
                    error: ProxyError::UpstreamFailed {
                        host: provider.host.clone(),
                    },
                    shape: provider.shape,
                    attempts: *attempts,
                });
            }
            Err(CallFailure::Unreachable(why)) => {
                debug!("{} key={} unreachable: {why}", provider.name, key);
                last = LastFailure::Unreachable;
                continue;
            }
        };
        let status = response.status().as_u16();
        let error_body = needs_body(status).then(|| read_error_body(&mut response));
        match verdict(status, error_body.as_deref().unwrap_or_default()) {
            // keyrelay never forwards an upgrade, so a switch of protocols is nonsense here.
            Verdict::Relay if status < 200 => {
                pool.record(index, AttemptClass::ServerError);
                return Ok(Answer::Error {
                    error: ProxyError::UpstreamFailed {
                        host: provider.host.clone(),
                    },
                    shape: provider.shape,
                    attempts: *attempts,
                });
            }
            Verdict::Relay => {
                pool.record(index, AttemptClass::Success);
                if proxy.limits.headroom {
                    note_headroom(provider, index, model, response.headers());
                }
                return Ok(relay_answer(
                    provider,
                    response,
                    error_body,
                    *attempts,
                    key.mask(),
                ));
            }
            Verdict::RateLimited => {
                pool.record(index, AttemptClass::RateLimited);
                let cooldown = cooldown_of(
                    response.headers(),
                    error_body.as_deref().unwrap_or_default(),
                    proxy.limits.cooldown,
                );
                let reason = BenchReason::RateLimited;
                pool.bench(index, model, Instant::now() + cooldown, reason);
                warn!(
                    "{} key={} benched for {}s{}: {reason}",
                    provider.name,
                    key,
                    cooldown.as_secs_f64().ceil(),
                    model.map(|m| format!(" for model {m}")).unwrap_or_default()
                );
                last = LastFailure::RateLimited;
            }
            found @ (Verdict::KeyRejected | Verdict::QuotaExhausted) => {
                // Dead or spent: no cooldown clears it, so the whole key sits out for long.
                let (class, reason, bench, advice) = if found == Verdict::KeyRejected {
                    let reason = BenchReason::Rejected(status);
                    (
                        AttemptClass::Rejected,
                        reason,
                        REJECTED_KEY_BENCH,
                        "check that the key is valid",
                    )
                } else {
                    let reason = BenchReason::QuotaExhausted(status);
                    (
                        AttemptClass::QuotaExhausted,
                        reason,
                        QUOTA_BENCH,
                        "top up its balance or remove it",
                    )
                };
                pool.record(index, class);
                pool.bench(index, None, Instant::now() + bench, reason);
                warn!(
                    "{} key={} benched for {}s: {reason}; {advice}",
                    provider.name,
                    key,
                    bench.as_secs()
                );
                last =
                    LastFailure::Answer(Box::new(save(provider, response, error_body)), key.mask());
            }
            Verdict::ServerError => {
                pool.record(index, AttemptClass::ServerError);
                debug!(
                    "{} key={} upstream answered {status}, trying the next key",
                    provider.name, key
                );
                last =
                    LastFailure::Answer(Box::new(save(provider, response, error_body)), key.mask());
            }
        }
    }
    Err(last)
}

pub(crate) fn read_error_body(response: &mut ureq::http::Response<ureq::Body>) -> Vec<u8> {
    let mut body = Vec::new();
    // A body that fails half-way is still useful for what was read; the status says enough.
    let _ = response
        .body_mut()
        .as_reader()
        .take(MAX_ERROR_BODY)
        .read_to_end(&mut body);
    body
}

/// Reads what a successful answer says the key has left; a key with nothing left is benched
/// (for this model) until its window resets, so the next request goes to another key instead
/// of earning a 429.
fn note_headroom(provider: &Provider, index: usize, model: Option<&str>, headers: &HeaderMap) {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let headroom = Headroom::from_headers(header, SystemTime::now());
    if !headroom.reported() {
        return;
    }
    let now = Instant::now();
    let wait = headroom.exhausted_for().map(|wait| wait.min(MAX_COOLDOWN));
    // Exhausted: when the key frees; otherwise the next window reset reported.
    let next_reset = [headroom.requests, headroom.tokens]
        .into_iter()
        .flatten()
        .filter_map(|limit| limit.reset)
        .min();
    provider.pool.report_headroom(
        index,
        HeadroomReport {
            requests_remaining: headroom.requests.map(|l| l.remaining),
            tokens_remaining: headroom.tokens.map(|l| l.remaining),
            resets_at: wait.or(next_reset).map(|d| now + d),
        },
    );
    if let Some(wait) = wait.filter(|w| !w.is_zero()) {
        let reason = BenchReason::NoHeadroom;
        provider.pool.bench(index, model, now + wait, reason);
        info!(
            "{} key={} skipped for {}s{}: {reason}",
            provider.name,
            provider.pool.key(index),
            wait.as_secs_f64().ceil(),
            model.map(|m| format!(" for model {m}")).unwrap_or_default()
        );
    }
}

/// The answer to relay. A 2xx answer and a stream flow through as they arrive; another error
/// answer is held (when small) so the pool's keys can be masked in it.
fn relay_answer(
    provider: &Provider,
    mut response: ureq::http::Response<ureq::Body>,
    error_body: Option<Vec<u8>>,
    attempts: u32,
    key: String,
) -> Answer {
    let status = response.status().as_u16();
    let stream = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let held = match error_body {
        Some(body) => Ok(body),
        None if (200..300).contains(&status) || stream => Err(Vec::new()),
        None => read_small(&mut response.body_mut().as_reader()),
    };
    match held {
        Ok(body) => {
            let mut answer = SavedAnswer {
                status,
                headers: std::mem::take(response.headers_mut()),
                body,
            };
            redact_saved(&provider.pool, &mut answer);
            Answer::Saved {
                answer,
                attempts,
                key,
            }
        }
        Err(prefix) => {
            redact_location(&provider.pool, response.headers_mut());
            Answer::Live {
                response,
                prefix,
                attempts,
                key,
            }
        }
    }
}

/// Keeps a failed answer to relay if no other key succeeds (keys masked); `body` when already
/// read.
pub(crate) fn save(
    provider: &Provider,
    mut response: ureq::http::Response<ureq::Body>,
    body: Option<Vec<u8>>,
) -> SavedAnswer {
    let body = body.unwrap_or_else(|| read_error_body(&mut response));
    let mut answer = SavedAnswer {
        status: response.status().as_u16(),
        headers: std::mem::take(response.headers_mut()),
        body,
    };
    redact_saved(&provider.pool, &mut answer);
    answer
}

/// Characters a key keeps in a query value: the unreserved ones; everything else is %XX.
const QUERY_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A key as a query value.
pub(crate) fn percent_encode(value: &str) -> String {
    percent_encoding::utf8_percent_encode(value, QUERY_VALUE).to_string()
}
