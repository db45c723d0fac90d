//! What the key state tells a shared store: every change to a key's benches, its disabled flag,
//! the objects it owns and the conversations it serves, as it happens. The pool and the affinity
//! tables call a [`Journal`] when one is attached (SHARED_STATE_URL); changes that arrive from
//! other instances are applied through the `*_from_peer` methods, which journal nothing.

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use super::pool::BenchReason;

/// One change to one key's state. Keys are named by [`crate::keys::ApiKey::id`], never by the
/// key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The key is benched (for one model, or all) until `until`.
    Bench {
        key: u64,
        model: Option<String>,
        until: SystemTime,
        reason: BenchReason,
    },
    /// An operator took the key out of rotation or put it back.
    Disabled { key: u64, disabled: bool },
    /// An operator cleared the key's cooldowns and benches (those for `models`; `None` is the
    /// whole-key bench).
    Reset {
        key: u64,
        models: Vec<Option<String>>,
    },
    /// The key owns these objects.
    Learned { key: u64, ids: Vec<String> },
    /// These objects are gone.
    Forgot { ids: Vec<String> },
    /// The key served a turn of this conversation.
    Session { key: u64, conversation: u64 },
    /// An answer for `model` with the key spent these tokens (for token limits).
    Spent {
        key: u64,
        model: String,
        tokens: u64,
        at: SystemTime,
    },
}

/// One request asking to pass a key's limits for a model, counted where every instance sees
/// it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission<'a> {
    pub key: u64,
    pub model: &'a str,
    /// Requests in a sliding minute, requests per day, tokens in a sliding minute (0: none).
    pub per_minute: u64,
    pub per_day: u64,
    pub tokens_per_minute: u64,
    pub now: SystemTime,
    /// When the day counted ends.
    pub day_ends: SystemTime,
}

/// Where changes go, and where an object nobody here has seen can be looked up.
pub trait Journal: Send + Sync {
    /// Records a change; returns at once (it is sent in the background).
    fn record(&self, provider: &Arc<str>, change: Change);

    /// Records a change and returns once it is stored, or after a short timeout: used for ids,
    /// which the next request may name on another instance a moment later.
    fn record_now(&self, provider: &Arc<str>, change: Change);

    /// The owners of `ids` that the shared store knows (a round trip with a short timeout;
    /// nothing while it is away).
    fn owners(&self, provider: &str, ids: &[String]) -> Vec<(String, u64)>;

    /// Counts a request against limits shared by every instance (one round trip): `Ok` when
    /// it fits, `Err(wait)` when not; `None` when the store cannot say now (count locally).
    fn admit(&self, provider: &str, admission: &Admission) -> Option<Result<(), Duration>>;
}

/// A journal attached to one provider's state.
#[derive(Clone)]
pub struct Attached {
    /// Shared by every change queued for this provider: queuing one allocates no name.
    provider: Arc<str>,
    journal: Arc<dyn Journal>,
}

impl Attached {
    /// `journal`, for changes of `provider`.
    pub fn new(provider: &str, journal: Arc<dyn Journal>) -> Attached {
        Attached {
            provider: Arc::from(provider),
            journal,
        }
    }

    /// See [`Journal::record`].
    pub fn record(&self, change: Change) {
        self.journal.record(&self.provider, change);
    }

    /// See [`Journal::record_now`].
    pub fn record_now(&self, change: Change) {
        self.journal.record_now(&self.provider, change);
    }

    /// See [`Journal::owners`].
    pub fn owners(&self, ids: &[String]) -> Vec<(String, u64)> {
        self.journal.owners(&self.provider, ids)
    }

    /// See [`Journal::admit`].
    pub fn admit(&self, admission: &Admission) -> Option<Result<(), Duration>> {
        self.journal.admit(&self.provider, admission)
    }
}

impl fmt::Debug for Attached {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Attached({})", self.provider)
    }
}

/// The journal slot of a pool or an affinity table: empty until one is attached.
pub type JournalSlot = OnceLock<Attached>;
