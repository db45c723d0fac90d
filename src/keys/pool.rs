//! The pool that hands keys out: round robin by ticket, cooldowns, per-key counters.
//!
//! Pure state: every method that depends on time takes `now`, so tests drive the clock. One
//! `Mutex` guards the whole pool state; it is held only for a few field updates, never across I/O.

use std::fmt;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::journal::{Attached, Change, JournalSlot};
use super::key::ApiKey;

/// Why a key is benched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchReason {
    /// The upstream answered 429.
    RateLimited,
    /// The upstream answered 401 or 403, or Gemini's 400 `API_KEY_INVALID`: the key is probably
    /// revoked or lacks access.
    Rejected(u16),
    /// The key's balance or billing quota is spent (OpenAI's 429 `insufficient_quota`, 402).
    QuotaExhausted(u16),
    /// A successful answer said the key has no requests or tokens left in its window.
    NoHeadroom,
    /// This key's account cannot use the model (404 `model_not_found` or a 403 about model
    /// access) while another key could: benched for that model only.
    NoAccess(u16),
    /// An unrecognised 403 for a request that another key then served: briefly.
    Forbidden,
}

impl BenchReason {
    /// The reason as one word, for STATE_FILE and the shared store.
    pub fn word(self) -> String {
        match self {
            BenchReason::RateLimited => "rate_limited".into(),
            BenchReason::Rejected(status) => format!("rejected:{status}"),
            BenchReason::QuotaExhausted(status) => format!("quota:{status}"),
            BenchReason::NoHeadroom => "headroom".into(),
            BenchReason::NoAccess(status) => format!("no_access:{status}"),
            BenchReason::Forbidden => "forbidden".into(),
        }
    }

    /// The reason [`BenchReason::word`] wrote.
    pub fn from_word(word: &str) -> Option<BenchReason> {
        let status = |rest: &str| rest.parse::<u16>().ok();
        match word.split_once(':') {
            None if word == "rate_limited" => Some(BenchReason::RateLimited),
            None if word == "headroom" => Some(BenchReason::NoHeadroom),
            None if word == "forbidden" => Some(BenchReason::Forbidden),
            Some(("rejected", rest)) => status(rest).map(BenchReason::Rejected),
            Some(("quota", rest)) => status(rest).map(BenchReason::QuotaExhausted),
            Some(("no_access", rest)) => status(rest).map(BenchReason::NoAccess),
            _ => None,
        }
    }
}

impl fmt::Display for BenchReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BenchReason::RateLimited => f.write_str("rate limited (429)"),
            BenchReason::Rejected(status) => write!(f, "rejected by upstream ({status})"),
            BenchReason::QuotaExhausted(status) => write!(f, "quota_exhausted ({status})"),
            BenchReason::NoHeadroom => f.write_str("no headroom left (rate-limit headers)"),
            BenchReason::NoAccess(status) => write!(f, "no_access ({status})"),
            BenchReason::Forbidden => {
                f.write_str("forbidden (403) for a request another key served")
            }
        }
    }
}

/// A cooldown on a key, for every model (`model: None`) or for one model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bench {
    /// The model the cooldown applies to; `None` benches the whole key.
    pub model: Option<String>,
    /// When the key may be used again.
    pub until: Instant,
    /// Why it was benched.
    pub reason: BenchReason,
}

/// How an attempt with a key ended, for the per-key counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptClass {
    /// The answer was relayed to the client.
    Success,
    /// 429.
    RateLimited,
    /// 401 / 403 / Gemini's 400 `API_KEY_INVALID`.
    Rejected,
    /// Spent balance: 429 `insufficient_quota`, 402.
    QuotaExhausted,
    /// 5xx from the upstream.
    ServerError,
    /// Connect failure or timeout.
    Unreachable,
    /// The key's account has no such object (tried while looking for the owner).
    NotOwned,
    /// The key's account cannot use the model.
    NoAccess,
}

impl AttemptClass {
    /// Every class, in a fixed order.
    pub const ALL: [AttemptClass; 8] = [
        AttemptClass::Success,
        AttemptClass::RateLimited,
        AttemptClass::Rejected,
        AttemptClass::QuotaExhausted,
        AttemptClass::ServerError,
        AttemptClass::Unreachable,
        AttemptClass::NotOwned,
        AttemptClass::NoAccess,
    ];

    /// Short label used in /status and /metrics.
    pub fn label(self) -> &'static str {
        match self {
            AttemptClass::Success => "success",
            AttemptClass::RateLimited => "rate_limited",
            AttemptClass::Rejected => "rejected",
            AttemptClass::QuotaExhausted => "quota_exhausted",
            AttemptClass::ServerError => "server_error",
            AttemptClass::Unreachable => "unreachable",
            AttemptClass::NotOwned => "not_owned",
            AttemptClass::NoAccess => "no_access",
        }
    }
}

/// Counters for one key since start-up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyStats {
    /// Attempts made with this key.
    pub requests: u64,
    /// Attempts whose answer was relayed.
    pub successes: u64,
    /// 429 answers.
    pub rate_limited: u64,
    /// Every other failure (rejected, quota exhausted, 5xx, unreachable).
    pub other_errors: u64,
    /// The class of the last failure, if any.
    pub last_error: Option<AttemptClass>,
    /// Attempts by outcome, indexed like [`AttemptClass::ALL`].
    pub by_class: [u64; AttemptClass::ALL.len()],
}

/// A snapshot of one key for status pages.
#[derive(Debug, Clone)]
pub struct KeySnapshot {
    /// The key's mask.
    pub mask: String,
    /// Cooldowns still running.
    pub benches: Vec<Bench>,
    /// Counters.
    pub stats: KeyStats,
    /// Taken out of rotation by an operator.
    pub disabled: bool,
    /// What the upstream last said the key has left.
    pub headroom: Option<HeadroomReport>,
}

/// The rate-limit headroom a key's last successful answer reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadroomReport {
    /// Requests left in the window.
    pub requests_remaining: Option<u64>,
    /// Tokens left in the tightest token window.
    pub tokens_remaining: Option<u64>,
    /// When the window of the scarcer limit resets.
    pub resets_at: Option<Instant>,
}

#[derive(Default)]
struct KeySlot {
    benches: Vec<Bench>,
    stats: KeyStats,
    /// Taken out of rotation by an operator until enabled again.
    disabled: bool,
    headroom: Option<HeadroomReport>,
}

struct PoolState {
    next_ticket: usize,
    slots: Vec<KeySlot>,
}

/// Most per-model cooldowns one key holds at once.
pub const MAX_MODEL_BENCHES: usize = 32;

/// Whether a key can take a request now, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// It can.
    Ready,
    /// A cooldown (429, headroom, a brief 403) ends after this long.
    Cooling(Duration),
    /// Out for long or until an operator acts: disabled, invalid, spent, or no access to the
    /// model. The text says which.
    Out(String),
}

/// The keys of one provider with their cooldowns.
pub struct KeyPool {
    keys: Vec<ApiKey>,
    state: Mutex<PoolState>,
    /// Where benches, resets and disabled flags are reported (SHARED_STATE_URL).
    journal: JournalSlot,
}

impl KeyPool {
    /// A pool over `keys`, all ready.
    pub fn new(keys: Vec<ApiKey>) -> Self {
        let slots = keys.iter().map(|_| KeySlot::default()).collect();
        KeyPool {
            keys,
            state: Mutex::new(PoolState {
                next_ticket: 0,
                slots,
            }),
            journal: JournalSlot::new(),
        }
    }

    /// Reports every later bench, reset and disabled flag to `journal`.
    pub fn attach(&self, journal: Attached) {
        let _ = self.journal.set(journal);
    }

    /// The position of the key whose [`ApiKey::id`] is `id`.
    pub fn position(&self, id: u64) -> Option<usize> {
        self.keys.iter().position(|key| key.id() == id)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when the pool holds no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key at `index`.
    pub fn key(&self, index: usize) -> &ApiKey {
        &self.keys[index]
    }

    /// All keys, in configuration order.
    pub fn keys(&self) -> &[ApiKey] {
        &self.keys
    }

    fn lock(&self) -> MutexGuard<'_, PoolState> {
        // A panic elsewhere while holding the lock leaves only counters half-updated, which is
        // harmless; refusing every later request would not be.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes one ticket: the first key index this request tries. Retries walk on from it (see
    /// [`KeyPool::attempt_order`]) instead of taking new tickets, so a concurrent request's
    /// retry never lands on the key that just failed for another.
    pub fn ticket(&self) -> usize {
        let mut state = self.lock();
        let ticket = state.next_ticket;
        state.next_ticket = ticket.wrapping_add(1);
        if self.keys.is_empty() {
            0
        } else {
            ticket % self.keys.len()
        }
    }

    /// The key the next [`ticket`](Self::ticket) starts at, without taking it: a turn pinned to
    /// its conversation's key does not move the round robin, so new conversations keep
    /// spreading evenly over the keys whatever the later turns in between.
    pub fn peek_ticket(&self) -> usize {
        let state = self.lock();
        if self.keys.is_empty() {
            0
        } else {
            state.next_ticket % self.keys.len()
        }
    }

    /// Key indexes in the order one request tries them: each key once, starting at `ticket`.
    pub fn attempt_order(&self, ticket: usize) -> impl Iterator<Item = usize> + use<> {
        let len = self.keys.len();
        (0..len).map(move |step| (ticket + step) % len)
    }

    /// Whether the key may be used now for `model` (a whole-key bench applies to every model).
    pub fn is_ready(&self, index: usize, model: Option<&str>, now: Instant) -> bool {
        let state = self.lock();
        let slot = &state.slots[index];
        !slot.disabled
            && !slot
                .benches
                .iter()
                .any(|bench| bench.until > now && applies_to(bench, model))
    }

    /// Whether the key at `index` can take a request for `model` now, and if not, why.
    pub fn readiness(&self, index: usize, model: Option<&str>, now: Instant) -> Readiness {
        let state = self.lock();
        let slot = &state.slots[index];
        if slot.disabled {
            return Readiness::Out("disabled by an operator".to_string());
        }
        let live = || {
            slot.benches
                .iter()
                .filter(|bench| bench.until > now && applies_to(bench, model))
        };
        let long = live().find(|bench| {
            matches!(
                bench.reason,
                BenchReason::Rejected(_)
                    | BenchReason::QuotaExhausted(_)
                    | BenchReason::NoAccess(_)
            )
        });
        if let Some(bench) = long {
            return Readiness::Out(bench.reason.to_string());
        }
        match live().map(|bench| bench.until).max() {
            Some(until) => Readiness::Cooling(until - now),
            None => Readiness::Ready,
        }
    }

    /// Clears every cooldown and bench of the key at `index` (an operator's reset).
    pub fn reset(&self, index: usize) {
        let models: Vec<Option<String>> = self.lock().slots[index]
            .benches
            .iter()
            .map(|bench| bench.model.clone())
            .collect();
        self.reset_from_peer(index);
        if let Some(journal) = self.journal.get() {
            journal.record_now(Change::Reset {
                key: self.keys[index].id(),
                models,
            });
        }
    }

    /// [`KeyPool::reset`] as another instance did it (not reported again).
    pub fn reset_from_peer(&self, index: usize) {
        self.lock().slots[index].benches.clear();
    }

    /// Keeps what the upstream last said the key at `index` has left.
    pub fn report_headroom(&self, index: usize, report: HeadroomReport) {
        self.lock().slots[index].headroom = Some(report);
    }

    /// Takes the key at `index` out of rotation, or puts it back.
    pub fn set_disabled(&self, index: usize, disabled: bool) {
        self.set_disabled_from_peer(index, disabled);
        if let Some(journal) = self.journal.get() {
            let key = self.keys[index].id();
            journal.record_now(Change::Disabled { key, disabled });
        }
    }

    /// [`KeyPool::set_disabled`] as another instance did it (not reported again).
    pub fn set_disabled_from_peer(&self, index: usize, disabled: bool) {
        self.lock().slots[index].disabled = disabled;
    }

    /// Benches a key (for one model, or for all when `model` is `None`) until `until`. A longer
    /// cooldown already in place is kept.
    pub fn bench(&self, index: usize, model: Option<&str>, until: Instant, reason: BenchReason) {
        let in_force = self.bench_from_peer(index, model, until, reason);
        if let (Some(journal), Some(bench)) = (self.journal.get(), in_force) {
            // What is in force (a longer bench already there wins), so a short cooldown never
            // overwrites a long bench elsewhere. Written before the request goes on to the
            // next key: another instance's next request must not pay for the same 429.
            let now = Instant::now();
            journal.record_now(Change::Bench {
                key: self.keys[index].id(),
                model: bench.model,
                until: std::time::SystemTime::now() + bench.until.saturating_duration_since(now),
                reason: bench.reason,
            });
        }
    }

    /// [`KeyPool::bench`] as another instance did it (not reported again); returns the bench
    /// now in force for that model (or the whole key), if any.
    pub fn bench_from_peer(
        &self,
        index: usize,
        model: Option<&str>,
        until: Instant,
        reason: BenchReason,
    ) -> Option<Bench> {
        let mut state = self.lock();
        let benches = &mut state.slots[index].benches;
        // Ended cooldowns go; and since model names come from clients, a key collecting too
        // many model cooldowns is benched as a whole instead.
        let now = Instant::now();
        benches.retain(|bench| bench.until > now);
        let model = if model.is_some() && benches.len() >= MAX_MODEL_BENCHES {
            if matches!(reason, BenchReason::NoAccess(_)) {
                // Not being able to use one model says nothing about the others.
                return None;
            }
            None
        } else {
            model
        };
        match benches.iter_mut().find(|b| b.model.as_deref() == model) {
            Some(existing) if existing.until >= until => Some(existing.clone()),
            Some(existing) => {
                existing.until = until;
                existing.reason = reason;
                Some(existing.clone())
            }
            None => {
                let bench = Bench {
                    model: model.map(str::to_string),
                    until,
                    reason,
                };
                benches.push(bench.clone());
                Some(bench)
            }
        }
    }

    /// Time until some key is usable for `model`: zero when one is ready now.
    pub fn wait_for_any(&self, model: Option<&str>, now: Instant) -> Duration {
        let state = self.lock();
        state
            .slots
            .iter()
            // A disabled key frees only when an operator says so.
            .filter(|slot| !slot.disabled)
            .map(|slot| {
                slot.benches
                    .iter()
                    .filter(|bench| applies_to(bench, model))
                    .map(|bench| bench.until.saturating_duration_since(now))
                    .max()
                    .unwrap_or(Duration::ZERO)
            })
            .min()
            .unwrap_or(Duration::ZERO)
    }

    /// Counts one attempt with the key at `index`.
    pub fn record(&self, index: usize, class: AttemptClass) {
        let mut state = self.lock();
        let stats = &mut state.slots[index].stats;
        stats.requests += 1;
        stats.by_class[class as usize] += 1;
        match class {
            AttemptClass::Success => stats.successes += 1,
            AttemptClass::RateLimited => stats.rate_limited += 1,
            _ => stats.other_errors += 1,
        }
        if class != AttemptClass::Success {
            stats.last_error = Some(class);
        }
    }

    /// Takes over the cooldowns and counters of keys that `previous` also holds (a reload keeps
    /// what was learnt about keys that stayed), and its round-robin position.
    pub fn adopt(&self, previous: &KeyPool) {
        let old = previous.lock();
        let mut state = self.lock();
        state.next_ticket = old.next_ticket;
        for (index, key) in self.keys.iter().enumerate() {
            if let Some(at) = previous.keys.iter().position(|k| k == key) {
                state.slots[index].benches = old.slots[at].benches.clone();
                state.slots[index].stats = old.slots[at].stats.clone();
                state.slots[index].disabled = old.slots[at].disabled;
            }
        }
    }

    /// A copy of every key's state, dropping cooldowns that have ended.
    pub fn snapshot(&self, now: Instant) -> Vec<KeySnapshot> {
        let mut state = self.lock();
        self.keys
            .iter()
            .zip(state.slots.iter_mut())
            .map(|(key, slot)| {
                slot.benches.retain(|bench| bench.until > now);
                KeySnapshot {
                    mask: key.mask(),
                    benches: slot.benches.clone(),
                    stats: slot.stats.clone(),
                    disabled: slot.disabled,
                    headroom: slot.headroom,
                }
            })
            .collect()
    }
}

fn applies_to(bench: &Bench, model: Option<&str>) -> bool {
    match &bench.model {
        None => true,
        Some(benched) => model == Some(benched.as_str()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: usize) -> KeyPool {
        KeyPool::new((0..n).map(|i| ApiKey::new(format!("key-{i}"))).collect())
    }

    #[test]
    fn masks() {
        let cases = [
            ("sk-proj-123456789012", "sk-p...9012"),
            ("abcdefghijkl", "abcd...ijkl"),
            ("abcdefghijk", "***"),
            ("", "***"),
            ("ключключключключ", "ключ...ключ"),
        ];
        for (secret, mask) in cases {
            assert_eq!(ApiKey::new(secret).mask(), mask);
            assert_eq!(format!("{}", ApiKey::new(secret)), mask);
            assert!(!format!("{:?}", ApiKey::new(secret)).contains(secret) || secret.is_empty());
        }
    }

    #[test]
    fn tickets_rotate() {
        let pool = pool(3);
        let firsts: Vec<usize> = (0..7).map(|_| pool.ticket()).collect();
        assert_eq!(firsts, vec![0, 1, 2, 0, 1, 2, 0]);
        assert_eq!(
            (pool.peek_ticket(), pool.peek_ticket(), pool.ticket()),
            (1, 1, 1)
        );
        assert_eq!(pool.attempt_order(2).collect::<Vec<_>>(), vec![2, 0, 1]);
    }

    #[test]
    fn bench_expires_and_keeps_the_longer_cooldown() {
        let pool = pool(2);
        let now = Instant::now();
        pool.bench(
            0,
            None,
            now + Duration::from_secs(30),
            BenchReason::RateLimited,
        );
        pool.bench(
            0,
            None,
            now + Duration::from_secs(5),
            BenchReason::RateLimited,
        );
        assert!(!pool.is_ready(0, None, now + Duration::from_secs(29)));
        assert!(pool.is_ready(0, None, now + Duration::from_secs(30)));
        assert!(pool.is_ready(1, None, now));
    }

    #[test]
    fn model_bench_only_affects_that_model() {
        let pool = pool(1);
        let now = Instant::now();
        pool.bench(
            0,
            Some("gpt-4o"),
            now + Duration::from_secs(10),
            BenchReason::RateLimited,
        );
        assert!(!pool.is_ready(0, Some("gpt-4o"), now));
        assert!(pool.is_ready(0, Some("gpt-4o-mini"), now));
        assert!(pool.is_ready(0, None, now));
        pool.bench(
            0,
            None,
            now + Duration::from_secs(3),
            BenchReason::Rejected(401),
        );
        assert!(!pool.is_ready(0, Some("gpt-4o-mini"), now));
    }

    #[test]
    fn too_many_model_cooldowns_bench_the_whole_key() {
        let pool = pool(1);
        let now = Instant::now();
        let later = now + Duration::from_secs(60);
        for i in 0..MAX_MODEL_BENCHES {
            pool.bench(0, Some(&format!("m{i}")), later, BenchReason::RateLimited);
        }
        assert!(pool.is_ready(0, Some("other"), now));
        pool.bench(0, Some("one-too-many"), later, BenchReason::RateLimited);
        assert!(!pool.is_ready(0, Some("other"), now), "whole key benched");
    }

    #[test]
    fn wait_for_any_is_the_earliest_release() {
        let pool = pool(3);
        let now = Instant::now();
        assert_eq!(pool.wait_for_any(None, now), Duration::ZERO);
        for (index, secs) in [(0, 40), (1, 7), (2, 90)] {
            pool.bench(
                index,
                None,
                now + Duration::from_secs(secs),
                BenchReason::RateLimited,
            );
        }
        assert_eq!(pool.wait_for_any(None, now), Duration::from_secs(7));
    }

    #[test]
    fn adopt_keeps_state_of_keys_that_stayed() {
        let now = Instant::now();
        let old = KeyPool::new(vec![ApiKey::new("a"), ApiKey::new("b")]);
        old.bench(
            1,
            Some("m"),
            now + Duration::from_secs(30),
            BenchReason::RateLimited,
        );
        old.record(1, AttemptClass::RateLimited);
        let new = KeyPool::new(vec![ApiKey::new("b"), ApiKey::new("c")]);
        new.adopt(&old);
        assert!(!new.is_ready(0, Some("m"), now), "b keeps its cooldown");
        assert!(new.is_ready(1, Some("m"), now), "c is new");
        assert_eq!(new.snapshot(now)[0].stats.rate_limited, 1);
    }

    #[test]
    fn counters() {
        let pool = pool(1);
        for class in [
            AttemptClass::Success,
            AttemptClass::RateLimited,
            AttemptClass::ServerError,
            AttemptClass::Success,
        ] {
            pool.record(0, class);
        }
        let snap = &pool.snapshot(Instant::now())[0];
        assert_eq!(snap.stats.requests, 4);
        assert_eq!(snap.stats.successes, 2);
        assert_eq!(snap.stats.rate_limited, 1);
        assert_eq!(snap.stats.other_errors, 1);
        assert_eq!(snap.stats.last_error, Some(AttemptClass::ServerError));
        assert_eq!(snap.mask, "***");
    }

    #[test]
    fn disabled_keys_are_skipped_until_enabled_and_survive_adoption() {
        let now = Instant::now();
        let pool = KeyPool::new(vec![ApiKey::new("k-one"), ApiKey::new("k-two")]);
        pool.bench(
            0,
            None,
            now + Duration::from_secs(60),
            BenchReason::RateLimited,
        );
        pool.reset(0);
        assert!(pool.is_ready(0, None, now), "reset clears the bench");
        pool.set_disabled(1, true);
        assert!(!pool.is_ready(1, None, now));
        let reloaded = KeyPool::new(vec![ApiKey::new("k-two"), ApiKey::new("k-three")]);
        reloaded.adopt(&pool);
        assert!(
            !reloaded.is_ready(0, None, now),
            "still disabled after reload"
        );
        assert!(reloaded.snapshot(now)[0].disabled);
        reloaded.set_disabled(0, false);
        assert!(reloaded.is_ready(0, None, now));
    }
}
