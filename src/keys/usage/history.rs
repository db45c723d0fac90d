//! The last hour, minute by minute, per key and model: attempts by outcome (ok, 429, other
//! errors) and tokens (input, cached, output). A fixed ring of 60 one-minute buckets per key
//! and model, so memory does not grow with uptime; for the status page's charts.

use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use super::book::counts_of;
use super::tokens::Tokens;
use crate::small_map::SmallMap;

/// Minutes kept.
pub const MINUTES: usize = 60;

/// One minute of one key and model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Minute {
    /// Which minute (minutes since the epoch); a bucket of another minute is stale.
    pub at: u64,
    pub ok: u64,
    pub limited: u64,
    pub errors: u64,
    pub input: u64,
    pub cached: u64,
    pub output: u64,
}

/// How an attempt ended, as the charts count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tally {
    Ok,
    Limited,
    Error,
}

/// The rings of one provider.
#[derive(Debug, Default)]
pub struct History {
    rings: Mutex<SmallMap<u64, SmallMap<String, [Minute; MINUTES]>>>,
}

fn minute_of(wall: SystemTime) -> u64 {
    wall.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 60)
}

impl History {
    fn lock(&self) -> MutexGuard<'_, SmallMap<u64, SmallMap<String, [Minute; MINUTES]>>> {
        self.rings.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn with_bucket(
        &self,
        key: u64,
        model: Option<&str>,
        wall: SystemTime,
        f: impl FnOnce(&mut Minute),
    ) {
        let at = minute_of(wall);
        let mut rings = self.lock();
        let models = rings.entry(key).or_default();
        let Some(ring) = counts_of(models, model, || [Minute::default(); MINUTES]) else {
            return;
        };
        let bucket = &mut ring[(at % MINUTES as u64) as usize];
        if bucket.at != at {
            *bucket = Minute {
                at,
                ..Minute::default()
            };
        }
        f(bucket);
    }

    /// Counts one attempt.
    pub fn attempt(&self, key: u64, model: Option<&str>, tally: Tally, wall: SystemTime) {
        self.with_bucket(key, model, wall, |m| match tally {
            Tally::Ok => m.ok += 1,
            Tally::Limited => m.limited += 1,
            Tally::Error => m.errors += 1,
        });
    }

    /// Counts an answer's tokens.
    pub fn tokens(&self, key: u64, model: Option<&str>, tokens: Tokens, wall: SystemTime) {
        self.with_bucket(key, model, wall, |m| {
            m.input += tokens.input;
            m.cached += tokens.cached;
            m.output += tokens.output;
        });
    }

    /// The last hour for the keys `keys` picks (all models summed), oldest minute first,
    /// ending with the minute of `wall`.
    pub fn hour(&self, wall: SystemTime, keys: impl Fn(u64) -> bool) -> [Minute; MINUTES] {
        let now = minute_of(wall);
        let mut hour = [Minute::default(); MINUTES];
        for (i, slot) in hour.iter_mut().enumerate() {
            slot.at = now + 1 + i as u64 - MINUTES as u64;
        }
        let rings = self.lock();
        for (key, models) in rings.iter() {
            if !keys(*key) {
                continue;
            }
            for ring in models.values() {
                for bucket in ring {
                    let Some(age) = now.checked_sub(bucket.at) else {
                        continue;
                    };
                    if age as usize >= MINUTES {
                        continue;
                    }
                    let slot = &mut hour[MINUTES - 1 - age as usize];
                    slot.ok += bucket.ok;
                    slot.limited += bucket.limited;
                    slot.errors += bucket.errors;
                    slot.input += bucket.input;
                    slot.cached += bucket.cached;
                    slot.output += bucket.output;
                }
            }
        }
        hour
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn an_hour_of_minutes_in_a_fixed_ring() {
        let history = History::default();
        let start = UNIX_EPOCH + Duration::from_secs(1_796_000_000 / 60 * 60);
        for minute in 0..90u64 {
            let wall = start + Duration::from_secs(minute * 60);
            history.attempt(1, Some("m"), Tally::Ok, wall);
            if minute % 10 == 0 {
                history.attempt(1, Some("m"), Tally::Limited, wall);
            }
        }
        let last = start + Duration::from_secs(89 * 60);
        let hour = history.hour(last, |_| true);
        assert!(
            hour.iter().all(|m| m.ok == 1),
            "the 30 older minutes were overwritten"
        );
        assert_eq!(hour.iter().map(|m| m.limited).sum::<u64>(), 6);
        // An hour later, nothing of it is left.
        let later = history.hour(last + Duration::from_secs(3600), |_| true);
        assert_eq!(later.iter().map(|m| m.ok).sum::<u64>(), 0);
        assert_eq!(
            history
                .hour(last, |k| k == 2)
                .iter()
                .map(|m| m.ok)
                .sum::<u64>(),
            0
        );
    }
}
