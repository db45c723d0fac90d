//! A bounded table from a name (an object id, a conversation's fingerprint) to the key that
//! owns or served it: at most `max` entries, each forgotten `max_age` after its last use. When
//! full, the oldest eighth goes at once, so an insert costs O(1) amortised.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// One entry: the owning key's id and when the entry was last used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    /// [`crate::keys::ApiKey::id`] of the key.
    pub key: u64,
    /// Last learned or used.
    pub touched: Instant,
}

/// The table.
#[derive(Debug)]
pub struct Table<K> {
    map: HashMap<K, Owner>,
    max: usize,
    max_age: Duration,
}

impl<K: Hash + Eq + Clone> Table<K> {
    /// An empty table.
    pub fn new(max: usize, max_age: Duration) -> Table<K> {
        Table {
            map: HashMap::new(),
            max: max.max(8),
            max_age,
        }
    }

    /// Changes the age limit (a reload).
    pub fn set_max_age(&mut self, max_age: Duration) {
        self.max_age = max_age;
    }

    /// The owner of `name`, marking it used; an entry past its age is dropped.
    pub fn get<Q>(&mut self, name: &Q, now: Instant) -> Option<u64>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let entry = self.map.get_mut(name)?;
        if now.saturating_duration_since(entry.touched) >= self.max_age {
            self.map.remove(name);
            return None;
        }
        entry.touched = now;
        Some(entry.key)
    }

    /// Records that `key` owns `name` as of `touched`; true when that is news (a new entry or
    /// another owner), false when it only refreshed the entry.
    pub fn insert(&mut self, name: K, key: u64, touched: Instant) -> bool {
        if let Some(entry) = self.map.get_mut(&name) {
            let changed = entry.key != key;
            entry.key = key;
            entry.touched = entry.touched.max(touched);
            return changed;
        }
        if self.map.len() >= self.max {
            self.evict(touched);
        }
        self.map.insert(name, Owner { key, touched });
        true
    }

    /// Forgets `name`; true when it was known.
    pub fn remove<Q>(&mut self, name: &Q) -> bool
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.remove(name).is_some()
    }

    /// Entries held, ended ones included until the next sweep.
    pub fn count(&self) -> usize {
        self.map.len()
    }

    /// Live entries (ended ones are dropped first).
    pub fn len(&mut self, now: Instant) -> usize {
        let max_age = self.max_age;
        self.map
            .retain(|_, e| now.saturating_duration_since(e.touched) < max_age);
        self.map.len()
    }

    /// A copy of every live entry.
    pub fn entries(&mut self, now: Instant) -> Vec<(K, Owner)> {
        self.len(now);
        self.map.iter().map(|(k, o)| (k.clone(), *o)).collect()
    }

    /// Drops ended entries, then, if still full, the oldest eighth: one pass that also drops
    /// entries tied with the cut until enough are gone, so ties (many ids learned in the same
    /// instant) cannot make every later insert pay for a sweep.
    fn evict(&mut self, now: Instant) {
        self.len(now);
        if self.map.len() < self.max {
            return;
        }
        let mut ages: Vec<Instant> = self.map.values().map(|e| e.touched).collect();
        let goal = ages.len() / 8 + 1;
        let (_, cut, _) = ages.select_nth_unstable(goal - 1);
        let cut = *cut;
        let mut dropped = 0;
        self.map.retain(|_, e| {
            let older = e.touched < cut;
            let tied = e.touched == cut && dropped < goal;
            if older || tied {
                dropped += 1;
            }
            !(older || tied)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_age_out_and_the_bound_holds() {
        let start = Instant::now();
        let mut table: Table<String> = Table::new(16, Duration::from_secs(60));
        assert!(table.insert("a".into(), 1, start));
        assert!(!table.insert("a".into(), 1, start), "same owner: no news");
        assert!(table.insert("a".into(), 2, start), "another owner");
        assert_eq!(table.get("a", start + Duration::from_secs(59)), Some(2));
        // The get refreshed it: still there 59 s after that use.
        assert_eq!(table.get("a", start + Duration::from_secs(118)), Some(2));
        assert_eq!(table.get("a", start + Duration::from_secs(300)), None);
        for i in 0..100u64 {
            table.insert(format!("n{i}"), i, start + Duration::from_millis(i));
        }
        assert!(table.len(start) <= 16);
        assert_eq!(table.get("n99", start), Some(99), "the newest stays");
        assert_eq!(table.get("n0", start), None, "the oldest went");
        assert!(table.remove("n99") && !table.remove("n99"));
    }

    #[test]
    fn entries_learned_in_the_same_instant_are_evicted_in_bulk() {
        let now = Instant::now();
        let mut table: Table<u64> = Table::new(1000, Duration::from_secs(60));
        for i in 0..5000u64 {
            table.insert(i, 1, now);
            assert!(table.count() <= 1000);
        }
        // Each eviction dropped an eighth at once, not one entry per insert.
        assert!(table.count() >= 800, "{}", table.count());
    }
}
