//! One pass over the keys in a given order, each at most once, skipping benched ones: inject
//! the key, call the upstream, and read what its answer means for that key (outcome.rs). Ends
//! in the answer to relay, or says how the last failure went.

use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use log::{debug, info, warn};
use ureq::http::{HeaderMap, Method};

use super::attempt::{Request, UpstreamRequest};
use super::headroom::Headroom;
use super::outcome::{MAX_COOLDOWN, Verdict, cooldown_of, needs_body, verdict};
use super::redact::{read_small, redact_location, redact_saved};
use super::upload_url::rewrite_upload_url;
use super::upstream::{self, CallFailure};
use crate::config::{NO_ACCESS_BENCH, QUOTA_BENCH, REJECTED_KEY_BENCH};
use crate::error::{ProxyError, broken_stream_event};
use crate::keys::affinity::{
    AnswerWatch, BodySurvey, Dialect, Kind, Outcome, UPLOAD_PREFIX, without_query,
};
use crate::keys::usage::{Metered, Tally, UsageMeter};
use crate::keys::{ApiKey, AttemptClass, BenchReason, HeadroomReport};
use crate::provider::Provider;
use crate::proxy::Proxy;
use crate::respond::answer::{Answer, SavedAnswer};
use crate::respond::stream::SseEnds;
use crate::scan::find_bytes;

/// Largest error body from upstream kept to relay or to read a retry delay from.
const MAX_ERROR_BODY: u64 = 1024 * 1024;

/// How the last failed attempt ended, to choose the answer when no key succeeds.
pub(crate) enum LastFailure {
    /// No attempt was made (every key benched) or the last one was a 429.
    RateLimited,
    /// The upstream could not be reached.
    Unreachable,
    /// A failed answer, kept to relay (keys masked), with the mask of the key that got it.
    Answer(Box<SavedAnswer>, String),
    /// In a strict round: the only key tried says its account has no such object (its answer,
    /// kept to relay if no other key has the object either).
    NotOwned(Box<SavedAnswer>, String),
}

/// Which keys a round tries, and what it knows about the request.
pub(crate) struct Round<'r> {
    /// Key positions in the order to try them.
    pub(crate) order: Vec<usize>,
    /// The object ids the request names.
    pub(crate) ids: &'r [String],
    /// The keys are the objects' owner alone: an answer that the object is not there ends the
    /// round with [`LastFailure::NotOwned`] instead of trying another key.
    pub(crate) strict: bool,
    /// A key has already answered that its account has no such object: the key that serves
    /// the request owns the ids.
    pub(crate) not_owned_seen: bool,
    /// A key was passed over because it was cooling, or answered 429: when the others say they
    /// have no such object, the one that could not be asked may own it.
    pub(crate) skipped: bool,
}

/// The answer a round ends with.
pub(crate) struct Served {
    pub(crate) answer: Answer,
    /// The key whose successful (2xx) answer it is, if it is one.
    pub(crate) by: Option<usize>,
}

impl Served {
    fn error(provider: &Provider, error: ProxyError, attempts: u32) -> Served {
        Served {
            answer: Answer::Error {
                error,
                shape: provider.shape,
                attempts,
            },
            by: None,
        }
    }
}

/// One pass over `round.order`. `Ok` is the final answer (relay, or a timeout); `Err` says how
/// the last failure went.
pub(crate) fn try_round(
    proxy: &Proxy,
    provider: &Provider,
    request: &Request,
    round: &mut Round,
    attempts: &mut u32,
) -> Result<Served, LastFailure> {
    let (upstream, body, model) = (request.upstream, request.body, request.model);
    let pool = &provider.pool;
    let mut last = LastFailure::RateLimited;
    // Keys whose failure may be about the request rather than the key: benched only if another
    // key then serves the same request.
    let mut suspects: Vec<(usize, BenchReason)> = Vec::new();
    for &index in &round.order {
        if !pool.is_ready(index, model, Instant::now()) {
            round.skipped = true;
            continue;
        }
        // A key at its local limit for this model sits out like a cooling one (counted here
        // when it does not: the attempt is made).
        let limits = &provider.limits;
        if !limits.is_empty()
            && limits
                .admit(
                    pool.key(index).id(),
                    model,
                    Instant::now(),
                    SystemTime::now(),
                )
                .is_err()
        {
            round.skipped = true;
            continue;
        }
        *attempts += 1;
        let key = pool.key(index);
        let Some(uri) = upstream.uri(provider, key.secret()) else {
            return Ok(Served::error(provider, ProxyError::BadRequest, *attempts));
        };
        let headers = upstream.headers_with_key(provider, key);
        let sent_body = upstream.has_body.then_some(body);
        // Every way of getting no answer counts as unreachable for this key's counters.
        let egress = provider.egress_for(index);
        if let Some(egress) = egress {
            egress.attempted();
        }
        let called = upstream::call(
            &proxy.agent,
            &upstream.method,
            uri,
            headers,
            sent_body,
            egress,
        )
        .inspect_err(|_| count(provider, index, model, AttemptClass::Unreachable));
        let mut response = match called {
            Ok(response) => response,
            Err(CallFailure::TimedOut) => {
                let host = provider.host.clone();
                let secs = proxy.limits.upstream_timeout.as_secs();
                return Ok(Served::error(
                    provider,
                    ProxyError::Timeout { host, secs },
                    *attempts,
                ));
            }
            Err(CallFailure::Failed(why)) => {
                debug!(
                    "{} key={} upstream failed after the request was sent: {why}",
                    provider.name, key
                );
                let host = provider.host.clone();
                return Ok(Served::error(
                    provider,
                    ProxyError::UpstreamFailed { host },
                    *attempts,
                ));
            }
            Err(CallFailure::Untrusted(why)) => {
                let host = provider.host.clone();
                return Ok(Served::error(
                    provider,
                    ProxyError::Untrusted { host, why },
                    *attempts,
                ));
            }
            Err(CallFailure::Unreachable(why)) => {
                debug!("{} key={} unreachable: {why}", provider.name, key);
                if let Some(egress) = egress.filter(|e| e.proxy.is_some()) {
                    egress.failed(&provider.name, &why);
                }
                last = LastFailure::Unreachable;
                continue;
            }
        };
        let status = response.status().as_u16();
        let error_body = needs_body(status).then(|| read_error_body(&mut response));
        let error_text = error_body.as_deref().unwrap_or_default();
        match verdict(status, error_text, !round.ids.is_empty()) {
            // keyrelay never forwards an upgrade, so a switch of protocols is nonsense here.
            Verdict::Relay if status < 200 => {
                count(provider, index, model, AttemptClass::ServerError);
                let host = provider.host.clone();
                return Ok(Served::error(
                    provider,
                    ProxyError::UpstreamFailed { host },
                    *attempts,
                ));
            }
            Verdict::Relay => {
                count(provider, index, model, AttemptClass::Success);
                if proxy.limits.headroom {
                    note_headroom(provider, index, model, response.headers());
                }
                let ok = (200..300).contains(&status);
                let watch = ok
                    .then(|| {
                        learn_from(
                            proxy,
                            provider,
                            upstream,
                            request.survey,
                            round,
                            index,
                            model,
                            &suspects,
                        )
                    })
                    .flatten();
                let metered = ok.then(|| {
                    let meter = UsageMeter::new(provider.affinity.dialect);
                    Box::new(Metered::new(
                        meter,
                        (Arc::clone(&provider.usage), Arc::clone(&provider.limits)),
                        key.id(),
                        model,
                    ))
                });
                let answer = relay_answer(
                    provider,
                    upstream,
                    key,
                    response,
                    error_body,
                    *attempts,
                    (watch, metered),
                );
                return Ok(Served {
                    answer,
                    by: ok.then_some(index),
                });
            }
            Verdict::RegionBlocked => {
                count(provider, index, model, AttemptClass::Rejected);
                warn_region_block(provider);
                let answer = relay_answer(
                    provider,
                    upstream,
                    key,
                    response,
                    error_body,
                    *attempts,
                    (None, None),
                );
                return Ok(Served { answer, by: None });
            }
            Verdict::NotOwned => {
                count(provider, index, model, AttemptClass::NotOwned);
                round.not_owned_seen = true;
                debug!(
                    "{} key={} answered {status}: its account has no such object; trying the next key",
                    provider.name, key
                );
                let saved = Box::new(save(provider, response, error_body));
                if round.strict {
                    return Err(LastFailure::NotOwned(saved, key.mask()));
                }
                last = LastFailure::Answer(saved, key.mask());
            }
            found @ (Verdict::NoAccess | Verdict::Forbidden) => {
                let (class, reason) = if found == Verdict::NoAccess {
                    (AttemptClass::NoAccess, BenchReason::NoAccess(status))
                } else {
                    (AttemptClass::Rejected, BenchReason::Forbidden)
                };
                pool.record(index, class);
                suspects.push((index, reason));
                debug!(
                    "{} key={} answered {status} ({reason}); trying the next key",
                    provider.name, key
                );
                last =
                    LastFailure::Answer(Box::new(save(provider, response, error_body)), key.mask());
            }
            Verdict::RateLimited => {
                count(provider, index, model, AttemptClass::RateLimited);
                round.skipped = true;
                if let Some(egress) = egress {
                    let entry = index % provider.egress.len();
                    egress.rate_limited(&provider.name, index, &provider.keys_behind(entry));
                }
                let cooldown = cooldown_of(response.headers(), error_text, proxy.limits.cooldown);
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
                count(provider, index, model, AttemptClass::ServerError);
                debug!(
                    "{} key={} upstream answered {status}, trying the next key",
                    provider.name, key
                );
                last =
                    LastFailure::Answer(Box::new(save(provider, response, error_body)), key.mask());
            }
        }
    }
    if round.not_owned_seen && round.skipped && !round.ids.is_empty() {
        // "No such object" from the keys that could be asked, while another was cooling: that
        // one may own it, so the answer is to wait, not that the object does not exist.
        return Err(LastFailure::RateLimited);
    }
    Err(last)
}

/// Counts one attempt with the key at `index`: its counters, and the last hour's history.
fn count(provider: &Provider, index: usize, model: Option<&str>, class: AttemptClass) {
    provider.pool.record(index, class);
    let tally = match class {
        AttemptClass::Success => Tally::Ok,
        AttemptClass::RateLimited => Tally::Limited,
        _ => Tally::Error,
    };
    let key = provider.pool.key(index).id();
    provider
        .usage
        .history
        .attempt(key, model, tally, SystemTime::now());
}

/// What a successful answer with the key at `index` teaches, before it is relayed: the
/// suspects' failures were about them (bench them), the ids a key-by-key search was looking
/// for belong to this key, a deleted object is gone; and the watch that learns the ids the
/// answer itself names (none for a deletion, whose answer names what is gone).
#[allow(clippy::too_many_arguments)] // reason: one call site; a struct would only rename them
fn learn_from(
    proxy: &Proxy,
    provider: &Provider,
    upstream: &UpstreamRequest,
    survey: &BodySurvey,
    round: &Round,
    index: usize,
    model: Option<&str>,
    suspects: &[(usize, BenchReason)],
) -> Option<AnswerWatch> {
    let pool = &provider.pool;
    let now = Instant::now();
    for &(suspect, reason) in suspects {
        let (model, until) = match reason {
            BenchReason::NoAccess(_) => match model {
                Some(model) => (Some(model), now + NO_ACCESS_BENCH),
                None => continue,
            },
            _ => (None, now + proxy.limits.cooldown),
        };
        pool.bench(suspect, model, until, reason);
        warn!(
            "{} key={} benched for {}s{}: {reason}; key={} served the same request",
            provider.name,
            pool.key(suspect),
            until.saturating_duration_since(now).as_secs(),
            model.map(|m| format!(" for model {m}")).unwrap_or_default(),
            pool.key(index)
        );
    }
    let affinity = &provider.affinity;
    let key = pool.key(index);
    if upstream.method == Method::DELETE {
        // Only an object deleted at its own path (`/v1/files/{id}`, `/v1beta/cachedContents/
        // {name}`) is gone; `DELETE /v1/vector_stores/{vs}/files/{id}` keeps both.
        let rest = upstream
            .url
            .get(provider.base_url.len() + 1..)
            .unwrap_or("");
        if let Some(gone) = deleted_object(affinity.dialect, rest) {
            affinity.forget([gone.as_str()]);
        }
        return None;
    }
    // An upload session is bound only by the answer that started it (upload_url.rs), never
    // by trying keys: its id is a capability.
    let found: Vec<&str> = if round.not_owned_seen {
        round
            .ids
            .iter()
            .map(String::as_str)
            .filter(|id| !id.starts_with(UPLOAD_PREFIX))
            .collect()
    } else {
        Vec::new()
    };
    if !found.is_empty() {
        let news = affinity.learn(found.iter().copied(), key.id(), now);
        affinity.count_n(Kind::Resource, Outcome::Discovered, news);
        info!(
            "{} key={} owns {}: found by trying keys",
            provider.name,
            key,
            found.join(", ")
        );
    }
    // The body's members are at hand; the URL is searched only for a body that asks.
    let stored = affinity.dialect == Dialect::OpenAi
        && survey.asks_to_store()
        && upstream.url.contains("/chat/completions");
    if !stored && !affinity.dialect.answer_may_name_objects(&upstream.url) {
        return None;
    }
    Some(AnswerWatch::new(Arc::clone(affinity), key.id(), stored))
}

/// The object a `DELETE` of `rest` removes: the id that is the last of exactly three path
/// segments (`v1/files/{id}`), if it is one.
fn deleted_object(dialect: Dialect, rest: &str) -> Option<String> {
    let path = without_query(rest);
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if segments.len() != 3 {
        return None;
    }
    let ids = dialect.request_ids(path, "", &[]);
    ids.into_iter().next_back()
}

/// Logs, at most once a minute, that the upstream refuses where requests come from.
fn warn_region_block(provider: &Provider) {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let last = LAST.load(Ordering::Relaxed);
    if now.saturating_sub(last) >= 60
        && LAST
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        warn!(
            "{}: the upstream refuses requests from this machine's country or region (403 unsupported_country_region_territory); this is the same for every key, so nothing is benched. Route keyrelay's egress through a supported region.",
            provider.name
        );
    }
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
    // Gemini and many OpenAI-style upstreams send none: one look over the names (a handful)
    // instead of nine look-ups that each parse and hash a name.
    let reports = headers.keys().any(|name| {
        let name = name.as_str();
        name.starts_with("x-ratelimit-") || name.starts_with("anthropic-ratelimit-")
    });
    if !reports {
        return;
    }
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
    upstream: &UpstreamRequest,
    key: &ApiKey,
    mut response: ureq::http::Response<ureq::Body>,
    error_body: Option<Vec<u8>>,
    attempts: u32,
    (watch, metered): (Option<AnswerWatch>, Option<Box<Metered>>),
) -> Answer {
    if provider.affinity.dialect == Dialect::Gemini {
        rewrite_upload_url(provider, upstream, key, response.headers_mut());
    }
    // Ids are looked for in JSON and event streams only, never in a file's bytes being
    // downloaded (`/files/{id}/content`, `alt=media`).
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    // Usage likewise: it is in JSON answers and in streams.
    let readable = find_bytes(content_type.as_bytes(), b"json").is_some()
        || find_bytes(content_type.as_bytes(), b"event-stream").is_some();
    let stream = content_type.starts_with("text/event-stream");
    let watch = watch.filter(|_| readable);
    let metered = metered.filter(|_| readable);
    let key = key.mask();
    let status = response.status().as_u16();
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
            let sse = stream.then(|| SseEnds {
                on_break: broken_stream_event(provider.shape, &provider.host).into_bytes(),
            });
            Answer::Live {
                response,
                prefix,
                attempts,
                key,
                watch,
                metered,
                sse,
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
