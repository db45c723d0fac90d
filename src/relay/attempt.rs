//! Choosing the answer: the upstream request built once, then the keys to try. A request that
//! names an object goes to the key that owns it (or gets a clear answer why it cannot); a later
//! turn of a conversation tries its key first; everything else starts at its round-robin
//! ticket. Rounds over the keys (round.rs) repeat while a cooling key frees within
//! WAIT_FOR_KEY_SECS, ending in a live answer to relay, a saved failure to pass on, or an error
//! keyrelay writes itself.

use std::thread;
use std::time::{Duration, Instant, SystemTime};

use log::debug;
use ureq::http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};

use super::incoming::Incoming;
use super::outcome::MIN_COOLDOWN;
use super::round::{LastFailure, Round, try_round};
use crate::error::ProxyError;
use crate::headers::forward_request_header;
use crate::keys::affinity::{BodySurvey, Conversation, Kind, Outcome, ResourcePin, conversation};
use crate::keys::{ApiKey, Readiness};
use crate::provider::{AuthStyle, Provider};
use crate::proxy::Proxy;
use crate::respond::answer::{Answer, SavedAnswer};

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

    /// A header of the client's request (end-to-end ones only).
    pub(crate) fn client_header(&self, name: &str) -> Option<&str> {
        self.incoming.header(name)
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

/// The answer chosen for a request, and what affinity had to do with it.
pub(crate) struct Chosen {
    pub(crate) answer: Answer,
    /// Set when affinity chose the key that served the request.
    pub(crate) pin: Option<Kind>,
}

impl Chosen {
    fn error(provider: &Provider, error: ProxyError, attempts: u32) -> Chosen {
        Chosen {
            answer: Answer::Error {
                error,
                shape: provider.shape,
                attempts,
            },
            pin: None,
        }
    }
}

/// What one request is, for choosing its key.
pub(crate) struct Request<'r> {
    pub(crate) upstream: &'r UpstreamRequest<'r>,
    pub(crate) body: &'r [u8],
    /// What the body names and holds, read once.
    pub(crate) survey: &'r BodySurvey<'r>,
    pub(crate) model: Option<&'r str>,
    /// The path below the route and the query (credentials stripped), where ids may be.
    pub(crate) rest: &'r str,
    pub(crate) query: &'r str,
}

/// Chooses the keys for a request and tries them (see the module's comment).
pub(crate) fn attempt(proxy: &Proxy, provider: &Provider, request: &Request) -> Chosen {
    let now = Instant::now();
    let affinity = &provider.affinity;
    let ids = affinity
        .dialect
        .request_ids(request.rest, request.query, &request.survey.ids);
    let mut rotation = Rotation {
        ids: &ids,
        preferred: None,
        skip: None,
        not_owned_seen: false,
        conversation: None,
        fallback: None,
    };
    match affinity.resource_pin(&ids, provider.pool.keys(), now) {
        ResourcePin::Conflict { first, second } => {
            let mask = |index: usize| provider.pool.key(index).mask();
            let error = ProxyError::OwnersDiffer {
                first: (first.0, mask(first.1)),
                second: (second.0, mask(second.1)),
            };
            return Chosen::error(provider, error, 0);
        }
        ResourcePin::Key { index, id } => {
            match attempt_owner(proxy, provider, request, &ids, index, &id) {
                Ok(chosen) => return chosen,
                // The owner says it has no such object (deleted, or the table was wrong): the
                // object, if it exists, is found by trying the other keys; if none can be
                // asked, the owner's answer is the one to give.
                Err(answer) => {
                    rotation.skip = Some(index);
                    rotation.not_owned_seen = true;
                    rotation.fallback = Some(answer);
                }
            }
        }
        ResourcePin::None => {}
    }
    if proxy.limits.session_affinity && rotation.skip.is_none() {
        let headers = request.upstream.incoming.headers();
        rotation.conversation =
            conversation(affinity.dialect, request.model, request.survey, headers);
        rotation.preferred = rotation
            .conversation
            .filter(Conversation::pinned)
            .and_then(|c| affinity.session_owner(c.key, now))
            .and_then(|owner| provider.pool.keys().iter().position(|k| k.id() == owner));
    }
    rotate(proxy, provider, request, &mut rotation)
}

/// A request sent to the one key that owns an object it names. `Err` (with that key's answer)
/// when the key answers that its account has no such object (the ids are forgotten).
fn attempt_owner(
    proxy: &Proxy,
    provider: &Provider,
    request: &Request,
    ids: &[String],
    index: usize,
    id: &str,
) -> Result<Chosen, (Box<SavedAnswer>, String)> {
    let pool = &provider.pool;
    let deadline = Instant::now() + proxy.limits.wait_for_key;
    let mask = || pool.key(index).mask();
    let mut attempts = 0;
    loop {
        match readiness(provider, index, request.model) {
            Readiness::Ready => {}
            Readiness::Cooling(wait) if Instant::now() + wait <= deadline => {
                debug!(
                    "{}: the key owning {id} is cooling; holding the request {} ms",
                    provider.name,
                    wait.as_millis()
                );
                thread::sleep(wait);
                continue;
            }
            Readiness::Cooling(wait) => {
                let error = ProxyError::OwnerCooling {
                    resource: id.to_string(),
                    key: mask(),
                    retry_after_secs: whole_secs(wait),
                };
                return Ok(Chosen::error(provider, error, attempts));
            }
            Readiness::Out(why) => {
                let error = ProxyError::OwnerUnavailable {
                    resource: id.to_string(),
                    key: mask(),
                    why,
                };
                return Ok(Chosen::error(provider, error, attempts));
            }
        }
        let mut round = Round {
            order: vec![index],
            ids,
            strict: true,
            not_owned_seen: false,
            skipped: false,
        };
        let model = request.model;
        match try_round(proxy, provider, request, &mut round, &mut attempts) {
            Ok(served) => {
                if served.by.is_some() {
                    provider.affinity.count(Kind::Resource, Outcome::Hit);
                }
                return Ok(Chosen {
                    answer: served.answer,
                    pin: Some(Kind::Resource),
                });
            }
            Err(LastFailure::NotOwned(answer, key)) => {
                provider.affinity.forget(ids.iter().map(String::as_str));
                return Err((answer, key));
            }
            // The key is cooling now: wait for it within the deadline, else 429. (Checked here
            // too, not only before the attempt, so no cooldown can make this loop for ever.)
            Err(LastFailure::RateLimited) => {
                let wait = match pool.readiness(index, model, Instant::now()) {
                    Readiness::Cooling(wait) => wait,
                    _ => MIN_COOLDOWN,
                };
                if Instant::now() + wait > deadline {
                    let error = ProxyError::OwnerCooling {
                        resource: id.to_string(),
                        key: mask(),
                        retry_after_secs: whole_secs(wait),
                    };
                    return Ok(Chosen::error(provider, error, attempts));
                }
                thread::sleep(wait);
            }
            Err(LastFailure::Unreachable) => {
                let host = provider.host.clone();
                return Ok(Chosen::error(
                    provider,
                    ProxyError::Unreachable { host },
                    attempts,
                ));
            }
            Err(LastFailure::Answer(answer, key)) => {
                if let Readiness::Out(why) = pool.readiness(index, model, Instant::now()) {
                    let error = ProxyError::OwnerUnavailable {
                        resource: id.to_string(),
                        key: mask(),
                        why,
                    };
                    return Ok(Chosen::error(provider, error, attempts));
                }
                let answer = Answer::Saved {
                    answer: *answer,
                    attempts,
                    key,
                };
                return Ok(Chosen {
                    answer,
                    pin: Some(Kind::Resource),
                });
            }
        }
    }
}

/// How a request that no object pins goes over the keys.
struct Rotation<'r> {
    ids: &'r [String],
    /// The key of the conversation this request continues, tried first.
    preferred: Option<usize>,
    /// A key not to try (an owner that has just said it has no such object).
    skip: Option<usize>,
    not_owned_seen: bool,
    conversation: Option<Conversation>,
    /// The owner's own "no such object" answer, given when no other key can be asked.
    fallback: Option<(Box<SavedAnswer>, String)>,
}

/// Tries the keys from a fresh ticket (the conversation's key first), and when every key is
/// cooling and one frees within WAIT_FOR_KEY_SECS, waits for it and tries again.
fn rotate(
    proxy: &Proxy,
    provider: &Provider,
    request: &Request,
    rotation: &mut Rotation,
) -> Chosen {
    let pool = &provider.pool;
    let deadline = Instant::now() + proxy.limits.wait_for_key;
    let mut attempts = 0;
    let model = request.model;
    loop {
        let ticket = match rotation.preferred {
            Some(_) => pool.peek_ticket(),
            None => pool.ticket(),
        };
        let mut order = Vec::with_capacity(pool.len());
        order.extend(rotation.preferred);
        order.extend(
            pool.attempt_order(ticket)
                .filter(|&i| Some(i) != rotation.preferred && Some(i) != rotation.skip),
        );
        let mut round = Round {
            order,
            ids: rotation.ids,
            strict: false,
            not_owned_seen: rotation.not_owned_seen,
            skipped: false,
        };
        let asked_nobody = round.order.is_empty();
        let last = match try_round(proxy, provider, request, &mut round, &mut attempts) {
            Ok(served) => {
                let pin = served
                    .by
                    .and_then(|index| note_turn(provider, rotation, index));
                return Chosen {
                    answer: served.answer,
                    pin,
                };
            }
            Err(last) => last,
        };
        let error = match last {
            LastFailure::Answer(answer, key) => {
                return Chosen {
                    answer: Answer::Saved {
                        answer: *answer,
                        attempts,
                        key,
                    },
                    pin: None,
                };
            }
            LastFailure::Unreachable => ProxyError::Unreachable {
                host: provider.host.clone(),
            },
            // Only the owner could have had it, and it said no: its answer.
            LastFailure::RateLimited if asked_nobody && rotation.fallback.is_some() => {
                let (answer, key) = rotation.fallback.take().expect("checked");
                return Chosen {
                    answer: Answer::Saved {
                        answer: *answer,
                        attempts,
                        key,
                    },
                    pin: None,
                };
            }
            LastFailure::RateLimited | LastFailure::NotOwned(..) => {
                let wait = earliest_free(provider, model);
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
                    retry_after_secs: whole_secs(wait),
                }
            }
        };
        return Chosen::error(provider, error, attempts);
    }
}

/// Records which key served a turn of a conversation; `Some(Session)` when it was the
/// conversation's own key.
fn note_turn(provider: &Provider, rotation: &Rotation, index: usize) -> Option<Kind> {
    let conversation = rotation.conversation?;
    let affinity = &provider.affinity;
    if rotation.preferred == Some(index) {
        // Its own key served it: the look-up that chose the key already marked the
        // conversation used (no second lock of the table).
        affinity.count(Kind::Session, Outcome::Hit);
        return Some(Kind::Session);
    }
    let served_by = provider.pool.key(index).id();
    let news = affinity.record_session(conversation.key, served_by, Instant::now());
    if rotation.preferred.is_some() {
        affinity.count(Kind::Session, Outcome::Moved);
    } else if news {
        affinity.count(Kind::Session, Outcome::Learned);
    }
    None
}

/// Whether the key at `index` can take a request for `model` now: its benches and its local
/// limits both (a key at its limit is cooling until a request fits).
fn readiness(provider: &Provider, index: usize, model: Option<&str>) -> Readiness {
    let pool = &provider.pool;
    let now = Instant::now();
    let bench = pool.readiness(index, model, now);
    if provider.limits.is_empty() {
        return bench;
    }
    let limit = provider
        .limits
        .wait(pool.key(index).id(), model, now, SystemTime::now());
    match bench {
        Readiness::Ready if !limit.is_zero() => Readiness::Cooling(limit),
        Readiness::Cooling(wait) => Readiness::Cooling(wait.max(limit)),
        other => other,
    }
}

/// How long until some key can take a request for `model`: benches and local limits both.
fn earliest_free(provider: &Provider, model: Option<&str>) -> Duration {
    let pool = &provider.pool;
    if provider.limits.is_empty() {
        return pool.wait_for_any(model, Instant::now());
    }
    (0..pool.len())
        .filter_map(|index| match readiness(provider, index, model) {
            Readiness::Ready => Some(Duration::ZERO),
            Readiness::Cooling(wait) => Some(wait),
            // Out for long or until an operator acts: not a key to wait for.
            Readiness::Out(_) => None,
        })
        .min()
        .unwrap_or(Duration::ZERO)
}

/// Whole seconds for a Retry-After, at least 1.
fn whole_secs(wait: Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
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
