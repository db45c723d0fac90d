//! Several instances, one pool: the key state shared through Redis (or Valkey) when
//! SHARED_STATE_URL is set.
//!
//! Memory stays the only thing the request path reads. Every change (a bench, a disable, a
//! learned id, a conversation's key) is queued and written by a background thread within
//! milliseconds: one pipeline per batch that sets the facts (wire.rs) and publishes them as
//! events, which every other instance applies to its memory as they arrive. Only two things
//! make a request wait for the store, each with a 20 ms timeout: writing the ids an answer
//! reveals before that answer reaches the client, and asking about an id nobody here has seen.
//!
//! When the store is away, requests are served from memory as before; changes wait in the
//! queue. On reconnect the queue is written and the store read back; a store that came back
//! empty is filled again from memory.

mod link;
mod supervisor;
mod sync;
pub mod wire;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use log::warn;

use crate::config::SharedSettings;
use crate::keys::journal::{Admission, Change, Journal};
use crate::proxy::{Health, Proxy, SharedStatus};
use link::{REQUEST_TIMEOUT, RequestLinks};
use wire::{Names, Write};

/// Most changes waiting to be written; past it the store is filled again from memory on the
/// next connect.
const MAX_QUEUED: usize = 100_000;

/// The shared store of one process.
pub struct SharedState {
    shown: String,
    client: redis::Client,
    names: Names,
    /// This process's name in events, to skip its own.
    instance: String,
    session_ttl: Duration,
    up: AtomicBool,
    since: Mutex<SystemTime>,
    /// Changes not yet written, with their provider.
    queue: Mutex<Vec<(Arc<str>, Change)>>,
    /// The queue overflowed: memory is written whole on the next connect.
    overflowed: AtomicBool,
    links: RequestLinks,
    /// Unix seconds of the last "store away" warning.
    warned: AtomicU64,
    /// Admissions made, for unique members of the shared minute windows.
    admissions: AtomicU64,
}

impl SharedState {
    /// Connects to the store in the background and keeps `proxy`'s memory in step with it; the
    /// proxy serves from memory meanwhile, whether the store is there or not.
    pub fn start(
        settings: &SharedSettings,
        session_ttl: Duration,
        proxy: Arc<Proxy>,
    ) -> Result<Arc<SharedState>, String> {
        let client = redis::Client::open(settings.url.as_str())
            .map_err(|_| format!("SHARED_STATE_URL {} cannot be used", settings.shown))?;
        let shared = Arc::new(SharedState {
            shown: settings.shown.clone(),
            client,
            names: Names::new(&settings.prefix),
            instance: instance_name(),
            session_ttl,
            up: AtomicBool::new(false),
            since: Mutex::new(SystemTime::now()),
            queue: Mutex::new(Vec::new()),
            overflowed: AtomicBool::new(false),
            links: RequestLinks::default(),
            warned: AtomicU64::new(0),
            admissions: AtomicU64::new(0),
        });
        proxy.attach_journal(Arc::clone(&shared) as Arc<dyn Journal>);
        let _ = proxy
            .shared
            .set(Arc::clone(&shared) as Arc<dyn SharedStatus>);
        let (running, watched) = (Arc::clone(&shared), Arc::clone(&proxy));
        std::thread::Builder::new()
            .name("shared-state".into())
            .spawn(move || supervisor::run(&running, &watched))
            .map_err(|e| format!("cannot start the shared-state thread: {e}"))?;
        Ok(shared)
    }

    fn mark_up(&self) {
        *self.since.lock().unwrap_or_else(|p| p.into_inner()) = SystemTime::now();
        self.up.store(true, Ordering::Relaxed);
    }

    /// Notes that the store is away (`why` goes in a WARN line at most once a minute).
    fn mark_down(&self, why: &str) {
        if self.up.swap(false, Ordering::Relaxed) {
            *self.since.lock().unwrap_or_else(|p| p.into_inner()) = SystemTime::now();
        }
        self.links.clear();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = self.warned.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= 60
            && self
                .warned
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            warn!(
                "shared state {} is away ({why}); serving from this instance's memory and reconnecting",
                self.shown
            );
        }
    }

    fn enqueue(&self, provider: &Arc<str>, change: Change) {
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if queue.len() >= MAX_QUEUED {
            self.overflowed.store(true, Ordering::Relaxed);
            return;
        }
        queue.push((Arc::clone(provider), change));
    }

    fn take_queue(&self) -> Vec<(Arc<str>, Change)> {
        std::mem::take(&mut *self.queue.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The facts to set and delete for `changes`, and the event lines announcing them.
    fn writes_for(&self, changes: &[(Arc<str>, Change)]) -> (Vec<Write>, Vec<String>) {
        let now = SystemTime::now();
        let mut writes = Vec::new();
        let mut lines = Vec::new();
        for (provider, change) in changes {
            writes.extend(self.names.writes(provider, change, now, self.session_ttl));
            lines.extend(wire::event_line(&self.instance, provider, change));
        }
        (writes, lines)
    }
}

impl SharedStatus for SharedState {
    fn shown_url(&self) -> &str {
        &self.shown
    }

    fn health(&self) -> Health {
        Health {
            up: self.up.load(Ordering::Relaxed),
            since: *self.since.lock().unwrap_or_else(|p| p.into_inner()),
        }
    }
}

impl Journal for SharedState {
    fn record(&self, provider: &Arc<str>, change: Change) {
        self.enqueue(provider, change);
    }

    fn record_now(&self, provider: &Arc<str>, change: Change) {
        if !self.up.load(Ordering::Relaxed) {
            return self.enqueue(provider, change);
        }
        let batch = [(Arc::clone(provider), change)];
        let (writes, lines) = self.writes_for(&batch);
        let done = self.links.with(&self.client, |connection| {
            sync::send(connection, &self.names, &writes, &lines)
        });
        if !matches!(done, Some(Ok(()))) {
            // Slow, away, or every request connection busy: the background writer takes it
            // (whether the store is away is the writer's PING to say, not one slow answer).
            let [(provider, change)] = batch;
            self.enqueue(&provider, change);
        }
    }

    fn owners(&self, provider: &str, ids: &[String]) -> Vec<(String, u64)> {
        if !self.up.load(Ordering::Relaxed) || ids.is_empty() {
            return Vec::new();
        }
        let keys: Vec<String> = ids
            .iter()
            .map(|id| self.names.id_key(provider, id))
            .collect();
        let found = self.links.with(&self.client, |connection| {
            redis::cmd("MGET")
                .arg(&keys)
                .query::<Vec<Option<String>>>(connection)
        });
        match found {
            Some(Ok(values)) => ids
                .iter()
                .zip(values)
                .filter_map(|(id, value)| {
                    let key = u64::from_str_radix(&value?, 16).ok()?;
                    Some((id.clone(), key))
                })
                .collect(),
            // No answer in time: the request goes on as if the store knew nothing.
            Some(Err(_)) | None => Vec::new(),
        }
    }

    fn admit(&self, provider: &str, admission: &Admission) -> Option<Result<(), Duration>> {
        if !self.up.load(Ordering::Relaxed) || !wire::plain(admission.model) {
            return None;
        }
        let names = &self.names;
        let (key, model) = (admission.key, admission.model);
        let day_secs = admission
            .day_ends
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let now_ms = admission
            .now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let day_left = admission
            .day_ends
            .duration_since(admission.now)
            .map_or(0, |d| d.as_millis() as u64);
        let member = format!(
            "{}-{}",
            self.instance,
            self.admissions.fetch_add(1, Ordering::Relaxed)
        );
        let answer = self.links.with(&self.client, |connection| {
            redis::cmd("EVAL")
                .arg(LIMITS_SCRIPT)
                .arg(3)
                .arg(names.limit_key(provider, key, model, "m"))
                .arg(names.limit_key(provider, key, model, &format!("d{day_secs}")))
                .arg(names.limit_key(provider, key, model, "t"))
                .arg(now_ms)
                .arg(admission.per_minute)
                .arg(admission.per_day)
                .arg(admission.tokens_per_minute)
                .arg(day_left)
                .arg(member)
                .query::<u64>(connection)
        });
        match answer {
            Some(Ok(0)) => Some(Ok(())),
            Some(Ok(ms)) => Some(Err(Duration::from_millis(ms))),
            // No answer in time: this instance counts alone for this request.
            Some(Err(_)) | None => None,
        }
    }
}

/// The script that checks and counts one request against shared limits (limits.lua).
const LIMITS_SCRIPT: &str = include_str!("limits.lua");

/// A store error as words that never hold the URL (it can carry a password).
fn describe(err: &redis::RedisError) -> String {
    if err.is_timeout() {
        format!("no answer within {} ms", REQUEST_TIMEOUT.as_millis())
    } else if err.is_connection_refusal() {
        "connection refused".to_string()
    } else if err.is_connection_dropped() || err.is_io_error() {
        "connection lost".to_string()
    } else {
        format!("{:?}", err.kind())
    }
}

/// A name for this process in events: pid and start time, as hex.
fn instance_name() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    format!("{:x}-{:x}", std::process::id(), nanos)
}
