//! Local limits per key and model (`<NAME>_KEY_LIMITS`): a key that has used its allowance for
//! a model in the current window is skipped for that model, as a cooling key is, before the
//! upstream answers 429. Pure: every method takes the clock (`now` for the sliding minutes,
//! `wall` for the day) from the caller.

mod rules;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use rules::{Limit, Rule, Rules};

use crate::keys::journal::{Admission, Attached, Change, JournalSlot};
use crate::utc::next_pacific_midnight;

/// The sliding window of the per-minute limits.
const MINUTE: Duration = Duration::from_secs(60);

/// Most (key, model) windows kept; past it, idle ones are dropped.
const MAX_WINDOWS: usize = 4096;

/// Where a provider's days begin: Gemini's quotas reset at midnight US Pacific time, the
/// others' at midnight UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Days {
    Pacific,
    Utc,
}

impl Days {
    /// The day `wall` falls in, as the moment it ends.
    pub fn end_of_day(self, wall: SystemTime) -> SystemTime {
        match self {
            Days::Pacific => next_pacific_midnight(wall),
            Days::Utc => {
                let secs = wall.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
                UNIX_EPOCH + Duration::from_secs((secs / 86_400 + 1) * 86_400)
            }
        }
    }
}

/// One key's use of one model.
#[derive(Debug, Default)]
struct Window {
    /// Requests in the last minute.
    requests: VecDeque<Instant>,
    /// Tokens in the last minute.
    tokens: VecDeque<(Instant, u64)>,
    /// The day counted (as its end), and its requests.
    day: Option<SystemTime>,
    today: u64,
}

impl Window {
    fn forget_old(&mut self, now: Instant, day: SystemTime) {
        while self
            .requests
            .front()
            .is_some_and(|at| now.saturating_duration_since(*at) >= MINUTE)
        {
            self.requests.pop_front();
        }
        while self
            .tokens
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) >= MINUTE)
        {
            self.tokens.pop_front();
        }
        if self.day != Some(day) {
            self.day = Some(day);
            self.today = 0;
        }
    }

    /// How long until every one of `limits` lets one more request through (zero: now).
    fn wait_all(&self, limits: &[Limit], now: Instant, wall: SystemTime) -> Duration {
        limits
            .iter()
            .map(|limit| self.wait(*limit, now, wall).0)
            .max()
            .unwrap_or(Duration::ZERO)
    }

    /// How long until `limit` lets one more request through (zero: it does now), and how
    /// much of it is used.
    fn wait(&self, limit: Limit, now: Instant, wall: SystemTime) -> (Duration, u64) {
        let until_minute_frees =
            |at: Instant| MINUTE.saturating_sub(now.saturating_duration_since(at));
        match limit {
            Limit::PerMinute(n) => {
                let used = self.requests.len() as u64;
                let wait = if used >= n {
                    // The request that must leave the window first.
                    until_minute_frees(self.requests[(used - n) as usize])
                } else {
                    Duration::ZERO
                };
                (wait, used)
            }
            Limit::PerDay(n) => {
                let wait = if self.today >= n {
                    self.day
                        .and_then(|end| end.duration_since(wall).ok())
                        .unwrap_or(Duration::ZERO)
                } else {
                    Duration::ZERO
                };
                (wait, self.today)
            }
            Limit::TokensPerMinute(n) => {
                let used: u64 = self.tokens.iter().map(|(_, t)| t).sum();
                let mut wait = Duration::ZERO;
                if used >= n {
                    // Until enough tokens have left the window to be under the limit.
                    let mut left = used;
                    for (at, t) in &self.tokens {
                        left -= t;
                        if left < n {
                            wait = until_minute_frees(*at);
                            break;
                        }
                    }
                }
                (wait, used)
            }
        }
    }
}

/// One limit's state for /status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowUse {
    pub limit: Limit,
    pub used: u64,
    /// Until the next request fits, when it does not now.
    pub frees_in: Duration,
}

/// A provider's limits and the keys' use of them.
#[derive(Debug)]
pub struct Limiter {
    rules: RwLock<Rules>,
    /// Whether any rule is set: without one, a request costs one atomic load here.
    any: AtomicBool,
    days: Days,
    windows: Mutex<HashMap<(u64, String), Window>>,
    /// Where counts are shared with other instances (SHARED_STATE_URL), once attached.
    journal: JournalSlot,
}

impl Limiter {
    /// Limits `rules`, with days as `days` says.
    pub fn new(rules: Rules, days: Days) -> Limiter {
        Limiter {
            any: AtomicBool::new(!rules.is_empty()),
            rules: RwLock::new(rules),
            days,
            windows: Mutex::new(HashMap::new()),
            journal: JournalSlot::new(),
        }
    }

    /// Counts requests and tokens where every instance sees them from now on (this instance
    /// counts alone whenever the store cannot answer).
    pub fn attach(&self, journal: Attached) {
        let _ = self.journal.set(journal);
    }

    /// Takes new rules (a reload); the counts so far stay.
    pub fn set_rules(&self, rules: Rules) {
        self.any.store(!rules.is_empty(), Ordering::Relaxed);
        *self.rules.write().unwrap_or_else(|p| p.into_inner()) = rules;
    }

    /// Whether there are any rules.
    pub fn is_empty(&self) -> bool {
        !self.any.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<(u64, String), Window>> {
        self.windows.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn limits(&self, model: &str) -> Vec<Limit> {
        if self.is_empty() {
            return Vec::new();
        }
        self.rules
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .for_model(model)
            .to_vec()
    }

    /// Lets one request for `model` through with the key whose id is `key`, counting it, or
    /// says how long until one fits.
    pub fn admit(
        &self,
        key: u64,
        model: Option<&str>,
        now: Instant,
        wall: SystemTime,
    ) -> Result<(), Duration> {
        let model = model.unwrap_or("-");
        let limits = self.limits(model);
        if limits.is_empty() {
            return Ok(());
        }
        let day = self.days.end_of_day(wall);
        let shared = self.journal.get().and_then(|journal| {
            let kind =
                |f: fn(&Limit) -> Option<u64>| limits.iter().filter_map(f).min().unwrap_or(0);
            journal.admit(&Admission {
                key,
                model,
                per_minute: kind(|l| match l {
                    Limit::PerMinute(n) => Some(*n),
                    _ => None,
                }),
                per_day: kind(|l| match l {
                    Limit::PerDay(n) => Some(*n),
                    _ => None,
                }),
                tokens_per_minute: kind(|l| match l {
                    Limit::TokensPerMinute(n) => Some(*n),
                    _ => None,
                }),
                now: wall,
                day_ends: day,
            })
        });
        let mut windows = self.lock();
        if windows.len() >= MAX_WINDOWS {
            windows.retain(|_, w| {
                w.forget_old(now, day);
                !w.requests.is_empty() || !w.tokens.is_empty() || w.today > 0
            });
        }
        let window = windows.entry((key, model.to_string())).or_default();
        window.forget_old(now, day);
        // The shared count is the word when there is one (this instance's windows then only
        // mirror its own share, for /status); else this instance counts alone.
        let wait = match shared {
            Some(Err(wait)) => wait,
            Some(Ok(())) => Duration::ZERO,
            None => window.wait_all(&limits, now, wall),
        };
        if !wait.is_zero() {
            return Err(wait);
        }
        window.requests.push_back(now);
        window.today += 1;
        Ok(())
    }

    /// How long until the key can take a request for `model` (zero: now), counting nothing.
    pub fn wait(&self, key: u64, model: Option<&str>, now: Instant, wall: SystemTime) -> Duration {
        let model = model.unwrap_or("-");
        let limits = self.limits(model);
        if limits.is_empty() {
            return Duration::ZERO;
        }
        let day = self.days.end_of_day(wall);
        let mut windows = self.lock();
        let Some(window) = windows.get_mut(&(key, model.to_string())) else {
            return Duration::ZERO;
        };
        window.forget_old(now, day);
        window.wait_all(&limits, now, wall)
    }

    /// Counts the tokens an answer for `model` reported.
    pub fn spent(&self, key: u64, model: Option<&str>, tokens: u64, now: Instant) {
        let model = model.unwrap_or("-");
        let limits = self.limits(model);
        if !limits
            .iter()
            .any(|l| matches!(l, Limit::TokensPerMinute(_)))
        {
            return;
        }
        if let Some(window) = self.lock().get_mut(&(key, model.to_string())) {
            window.tokens.push_back((now, tokens));
        }
        if let Some(journal) = self.journal.get() {
            journal.record(Change::Spent {
                key,
                model: model.to_string(),
                tokens,
                at: SystemTime::now(),
            });
        }
    }

    /// The key's use of each of its limits, by model, for /status.
    pub fn usage(&self, key: u64, now: Instant, wall: SystemTime) -> Vec<(String, Vec<WindowUse>)> {
        let day = self.days.end_of_day(wall);
        let mut windows = self.lock();
        let mut out: Vec<(String, Vec<WindowUse>)> = windows
            .iter_mut()
            .filter(|((k, _), _)| *k == key)
            .map(|((_, model), window)| {
                window.forget_old(now, day);
                let uses = self
                    .limits(model)
                    .into_iter()
                    .map(|limit| {
                        let (frees_in, used) = window.wait(limit, now, wall);
                        WindowUse {
                            limit,
                            used,
                            frees_in,
                        }
                    })
                    .collect();
                (model.clone(), uses)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(rules: &str, days: Days) -> Limiter {
        Limiter::new(Rules::parse(rules).unwrap(), days)
    }

    #[test]
    fn a_sliding_minute_lets_the_third_request_through_when_the_first_leaves() {
        let limits = limiter("*=2/min", Days::Utc);
        let (t0, wall) = (Instant::now(), SystemTime::now());
        assert!(limits.admit(1, Some("m"), t0, wall).is_ok());
        assert!(
            limits
                .admit(1, Some("m"), t0 + Duration::from_secs(20), wall)
                .is_ok()
        );
        let wait = limits
            .admit(1, Some("m"), t0 + Duration::from_secs(30), wall)
            .unwrap_err();
        assert_eq!(
            wait,
            Duration::from_secs(30),
            "until the first leaves the minute"
        );
        assert!(
            limits.admit(2, Some("m"), t0, wall).is_ok(),
            "each key on its own"
        );
        assert!(
            limits.admit(1, Some("other"), t0, wall).is_ok(),
            "each model on its own"
        );
        assert!(
            limits
                .admit(1, Some("m"), t0 + Duration::from_secs(60), wall)
                .is_ok()
        );
    }

    #[test]
    fn a_day_ends_at_pacific_midnight_for_gemini_and_at_utc_midnight_otherwise() {
        // Tue, 24 Nov 2026 22:00:00 UTC = 14:00 PST: ten hours to Pacific midnight.
        let wall = UNIX_EPOCH + Duration::from_secs(1_795_557_600);
        let now = Instant::now();
        let gemini = limiter("gemini-2.5-pro=2/day", Days::Pacific);
        for _ in 0..2 {
            assert!(gemini.admit(1, Some("gemini-2.5-pro"), now, wall).is_ok());
        }
        let wait = gemini
            .admit(1, Some("gemini-2.5-pro"), now, wall)
            .unwrap_err();
        assert_eq!(wait, Duration::from_secs(10 * 3600));
        // 07:59:59 UTC the next day is still the same Pacific day; 08:00 is a new one.
        let before = UNIX_EPOCH + Duration::from_secs(1_795_593_599);
        assert!(
            gemini
                .admit(1, Some("gemini-2.5-pro"), now, before)
                .is_err()
        );
        let after = UNIX_EPOCH + Duration::from_secs(1_795_593_600);
        assert!(gemini.admit(1, Some("gemini-2.5-pro"), now, after).is_ok());
        let openai = limiter("*=1/day", Days::Utc);
        assert!(openai.admit(1, None, now, wall).is_ok());
        assert_eq!(
            openai.admit(1, None, now, wall).unwrap_err(),
            Duration::from_secs(2 * 3600)
        );
    }

    #[test]
    fn tokens_in_the_minute_hold_the_key_until_enough_leave() {
        let limits = limiter("*=1000t/min", Days::Utc);
        let (t0, wall) = (Instant::now(), SystemTime::now());
        assert!(limits.admit(1, Some("m"), t0, wall).is_ok());
        limits.spent(1, Some("m"), 700, t0);
        assert!(
            limits
                .admit(1, Some("m"), t0 + Duration::from_secs(10), wall)
                .is_ok()
        );
        limits.spent(1, Some("m"), 400, t0 + Duration::from_secs(10));
        let wait = limits
            .admit(1, Some("m"), t0 + Duration::from_secs(15), wall)
            .unwrap_err();
        assert_eq!(wait, Duration::from_secs(45), "the first 700 leave at 60 s");
        let uses = limits.usage(1, t0 + Duration::from_secs(15), wall);
        assert_eq!(uses[0].1[0].used, 1100);
    }
}
