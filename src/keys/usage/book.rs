//! The tokens each key has spent, per model: answers that reported usage, and the input,
//! cached input, output and reasoning tokens they reported. One book per provider, kept
//! across reloads and restarts (STATE_FILE); bounded in models per key.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use super::tokens::Tokens;
use crate::small_map::SmallMap;

/// Most models counted apart per key; later ones are counted as [`OTHER`].
pub const MAX_MODELS: usize = 64;

/// The model name under which overflow and model-less requests are counted.
pub const OTHER: &str = "-";

/// The counts of `model` in `models` (made with `make` when it has none yet): its own, or
/// [`OTHER`]'s for a request without a model and for a new model once `MAX_MODELS` are
/// counted. A model already counted costs two hash look-ups and no allocation.
pub fn counts_of<'m, V>(
    models: &'m mut SmallMap<String, V>,
    model: Option<&str>,
    make: impl FnOnce() -> V,
) -> Option<&'m mut V> {
    let model = model.unwrap_or(OTHER);
    let known = models.contains_key(model);
    let name = if known || models.len() < MAX_MODELS {
        model
    } else {
        OTHER
    };
    if !known {
        models.entry(name.to_string()).or_insert_with(make);
    }
    models.get_mut(name)
}

/// What one key spent on one model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spent {
    /// Answers that reported usage.
    pub answers: u64,
    /// Their tokens, summed.
    pub tokens: Tokens,
}

/// One provider's book.
#[derive(Debug, Default)]
pub struct UsageBook {
    /// By key id, then model.
    spent: Mutex<SmallMap<u64, SmallMap<String, Spent>>>,
    /// Bumped on every record (for STATE_FILE).
    generation: AtomicU64,
    /// The last hour, minute by minute, for the status page's charts.
    pub history: super::history::History,
}

impl UsageBook {
    fn lock(&self) -> MutexGuard<'_, SmallMap<u64, SmallMap<String, Spent>>> {
        self.spent.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts one answer's usage for `key` and `model`, in the totals and in this minute's
    /// history.
    pub fn record(&self, key: u64, model: Option<&str>, tokens: Tokens) {
        self.add(key, model, 1, tokens);
        self.generation.fetch_add(1, Ordering::Relaxed);
        self.history
            .tokens(key, model, tokens, std::time::SystemTime::now());
    }

    /// Adds counts (a record, or a restore from STATE_FILE).
    pub fn add(&self, key: u64, model: Option<&str>, answers: u64, tokens: Tokens) {
        let mut spent = self.lock();
        let models = spent.entry(key).or_default();
        let Some(entry) = counts_of(models, model, Spent::default) else {
            return;
        };
        entry.answers += answers;
        entry.tokens.input += tokens.input;
        entry.tokens.cached += tokens.cached;
        entry.tokens.output += tokens.output;
        entry.tokens.reasoning += tokens.reasoning;
    }

    /// What `key` spent, by model (sorted by model).
    pub fn of(&self, key: u64) -> Vec<(String, Spent)> {
        let spent = self.lock();
        let mut models: Vec<(String, Spent)> = spent
            .get(&key)
            .map(|m| m.iter().map(|(k, v)| (k.clone(), *v)).collect())
            .unwrap_or_default();
        models.sort_by(|a, b| a.0.cmp(&b.0));
        models
    }

    /// Everything: (key id, model, spent).
    pub fn all(&self) -> Vec<(u64, String, Spent)> {
        let spent = self.lock();
        spent
            .iter()
            .flat_map(|(key, models)| models.iter().map(|(m, s)| (*key, m.clone(), *s)))
            .collect()
    }

    /// Changes with every record.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_key_and_model_bounded() {
        let book = UsageBook::default();
        let t = Tokens {
            input: 10,
            cached: 4,
            output: 2,
            reasoning: 1,
        };
        book.record(1, Some("gpt-4o"), t);
        book.record(1, Some("gpt-4o"), t);
        book.record(2, None, t);
        assert_eq!(book.of(1)[0].1.answers, 2);
        assert_eq!(book.of(1)[0].1.tokens.input, 20);
        assert_eq!(book.of(2)[0].0, OTHER);
        for i in 0..MAX_MODELS + 5 {
            book.record(3, Some(&format!("m{i}")), t);
        }
        assert_eq!(book.of(3).len(), MAX_MODELS + 1, "the rest went to {OTHER}");
    }
}
