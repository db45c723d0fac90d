//! Affinity: a key is an account, and some requests belong to one.
//!
//! - Resource affinity (correctness): an object a provider keeps per account (a file, a stored
//!   response, a batch, a Gemini upload or cached content, a fine-tuned model) can only be used
//!   with the key that created it. Ids are learned from the answers that reveal them and from
//!   requests that found their owner by trying keys; a request naming a known id goes to its
//!   owner.
//! - Session affinity (a preference): later turns of a conversation go to the key that served
//!   the earlier ones, where the provider's prompt cache holds their prefix.
//!
//! Both tables are bounded in count and age and guarded by their own `Mutex`, held for a hash
//! look-up or insert only.

mod body;
mod ids;
mod recent;
mod session;
mod table;
mod watch;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub use body::BodySurvey;
pub use ids::{Dialect, UPLOAD_PREFIX, without_query};
pub use session::{Conversation, conversation};
pub use table::Owner;
pub use watch::AnswerWatch;

use super::journal::{Attached, Change, JournalSlot};
use super::key::ApiKey;
use recent::Recent;
use table::Table;

/// Most learned ids kept per provider (~120 bytes each: the id, its owner, when last used).
pub const MAX_IDS: usize = 200_000;

/// How long an id nobody uses is kept. OpenAI files and vector stores live until deleted, a
/// batch runs up to a day and its output files stay; an id older than this is found again by
/// trying keys.
pub const ID_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);

/// Most conversations kept per provider (~90 bytes each).
pub const MAX_SESSIONS: usize = 100_000;

/// How long an id the shared store did not know is not asked about again (a string that looks
/// like an id but names nothing would otherwise cost a round trip per request).
const UNKNOWN_FOR: Duration = Duration::from_secs(10);

/// Most such ids remembered.
const MAX_UNKNOWN: usize = 10_000;

/// What chose (or taught) a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An object the key owns.
    Resource,
    /// A conversation the key served.
    Session,
}

impl Kind {
    /// Both kinds, in a fixed order.
    pub const ALL: [Kind; 2] = [Kind::Resource, Kind::Session];

    /// `resource` or `session`, as /metrics and the request log name it.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Resource => "resource",
            Kind::Session => "session",
        }
    }
}

/// How affinity played out, for /metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The remembered key served the request.
    Hit,
    /// The remembered key could not, and the conversation moved to another.
    Moved,
    /// An answer taught a new id, or a first turn recorded its key.
    Learned,
    /// An id nobody had seen was found by trying keys.
    Discovered,
}

impl Outcome {
    /// Every outcome, in a fixed order.
    pub const ALL: [Outcome; 4] = [
        Outcome::Hit,
        Outcome::Moved,
        Outcome::Learned,
        Outcome::Discovered,
    ];

    /// The label /metrics uses.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Moved => "moved",
            Outcome::Learned => "learned",
            Outcome::Discovered => "discovered",
        }
    }
}

/// Where the ids a request names send it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResourcePin {
    /// No id with a known owner among the keys configured now.
    None,
    /// Every known id belongs to the key at `index`; `id` is one of them, for messages.
    Key {
        /// The owning key's position in the pool.
        index: usize,
        /// An id it owns.
        id: String,
    },
    /// Two ids belong to different keys: no key can serve the request.
    Conflict {
        /// An id and its owner's position.
        first: (String, usize),
        /// Another id, owned by another key.
        second: (String, usize),
    },
}

/// One provider's affinity tables and counters.
#[derive(Debug)]
pub struct Affinity {
    /// How this provider's ids look.
    pub dialect: Dialect,
    /// Ids as shared strings: a copy of the table (STATE_FILE, the shared store) clones no text.
    resources: Mutex<Table<Arc<str>>>,
    sessions: Mutex<Table<u64>>,
    /// Turns recorded this second, not written to `sessions` again (see recent.rs).
    recent: Recent,
    /// Indexed by kind then outcome.
    counters: [[AtomicU64; Outcome::ALL.len()]; Kind::ALL.len()],
    /// Bumped whenever an id's owner is learned, changed or forgotten (STATE_FILE writes ids
    /// within a second; conversations, which change with every first turn, once a minute).
    generation: AtomicU64,
    /// Where learned ids, forgotten ids and conversations are reported (SHARED_STATE_URL).
    journal: JournalSlot,
    /// Ids the shared store was asked about and did not know.
    unknown: Mutex<Table<Arc<str>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere leaves at most one entry half-written, which is harmless.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Affinity {
    /// Empty tables; conversations are kept `session_ttl` after their last turn.
    pub fn new(dialect: Dialect, session_ttl: Duration) -> Affinity {
        Affinity {
            dialect,
            resources: Mutex::new(Table::new(MAX_IDS, ID_MAX_AGE)),
            sessions: Mutex::new(Table::new(MAX_SESSIONS, session_ttl)),
            recent: Recent::new(),
            counters: Default::default(),
            generation: AtomicU64::new(0),
            journal: JournalSlot::new(),
            unknown: Mutex::new(Table::new(MAX_UNKNOWN, UNKNOWN_FOR)),
        }
    }

    /// Reports every later learned id, forgotten id and conversation to `journal`, and asks it
    /// about ids nobody here has seen.
    pub fn attach(&self, journal: Attached) {
        let _ = self.journal.set(journal);
    }

    /// Changes how long conversations are kept (a reload).
    pub fn set_session_ttl(&self, ttl: Duration) {
        lock(&self.sessions).set_max_age(ttl);
    }

    /// Counts one affinity event.
    pub fn count(&self, kind: Kind, outcome: Outcome) {
        self.count_n(kind, outcome, 1);
    }

    /// Counts `n` affinity events of one kind and outcome.
    pub fn count_n(&self, kind: Kind, outcome: Outcome, n: u64) {
        self.counters[kind as usize][outcome as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// Every counter: (kind, outcome, count).
    pub fn counts(&self) -> Vec<(Kind, Outcome, u64)> {
        Kind::ALL
            .iter()
            .flat_map(|&kind| {
                Outcome::ALL.iter().map(move |&outcome| {
                    let n = self.counters[kind as usize][outcome as usize].load(Ordering::Relaxed);
                    (kind, outcome, n)
                })
            })
            .collect()
    }

    /// Learned ids and conversations held (entries past their age included until the next
    /// sweep: counting is O(1), for status pages).
    pub fn sizes(&self) -> (usize, usize) {
        (lock(&self.resources).count(), lock(&self.sessions).count())
    }

    /// Changes whenever an owner is learned, changed or forgotten.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// Where the request's `ids` send it, among `keys` (the pool as configured now). Ids
    /// unknown here are asked of the shared store, when there is one.
    pub fn resource_pin(&self, ids: &[String], keys: &[ApiKey], now: Instant) -> ResourcePin {
        if ids.is_empty() {
            return ResourcePin::None;
        }
        let pin = self.known_pin(ids, keys, now);
        if pin != ResourcePin::None {
            return pin;
        }
        let Some(journal) = self.journal.get() else {
            return pin;
        };
        let unseen: Vec<String> = {
            let mut unknown = lock(&self.unknown);
            ids.iter()
                .filter(|id| unknown.get(id.as_str(), now).is_none())
                .cloned()
                .collect()
        };
        if unseen.is_empty() {
            return pin;
        }
        let found = journal.owners(&unseen);
        {
            let mut unknown = lock(&self.unknown);
            for id in unseen
                .iter()
                .filter(|id| !found.iter().any(|(f, _)| f == *id))
            {
                unknown.insert(Arc::from(id.as_str()), 0, now);
            }
        }
        if found.is_empty() {
            return pin;
        }
        let mut table = lock(&self.resources);
        for (id, key) in found {
            table.insert(Arc::from(id), key, now);
        }
        drop(table);
        self.known_pin(ids, keys, now)
    }

    fn known_pin(&self, ids: &[String], keys: &[ApiKey], now: Instant) -> ResourcePin {
        let mut table = lock(&self.resources);
        let mut found: Option<(String, usize)> = None;
        for id in ids {
            let Some(owner) = table.get(id.as_str(), now) else {
                continue;
            };
            // An owner no longer configured owns nothing keyrelay can reach.
            let Some(index) = keys.iter().position(|k| k.id() == owner) else {
                continue;
            };
            match &found {
                None => found = Some((id.clone(), index)),
                Some((_, known)) if *known == index => {}
                Some(first) => {
                    return ResourcePin::Conflict {
                        first: first.clone(),
                        second: (id.clone(), index),
                    };
                }
            }
        }
        match found {
            Some((id, index)) => ResourcePin::Key { index, id },
            None => ResourcePin::None,
        }
    }

    /// Records that `key` owns each of `ids`; returns how many were news. News reaches the
    /// shared store before this returns (or its short timeout runs out): the answer that
    /// revealed the ids has not reached the client yet.
    pub fn learn<'a>(&self, ids: impl IntoIterator<Item = &'a str>, key: u64, now: Instant) -> u64 {
        let news = self.learn_from_peer(ids, key, now);
        if !news.is_empty()
            && let Some(journal) = self.journal.get()
        {
            journal.record_now(Change::Learned {
                key,
                ids: news.clone(),
            });
        }
        news.len() as u64
    }

    /// Records ids another instance learned (not reported again); returns the news.
    pub fn learn_from_peer<'a>(
        &self,
        ids: impl IntoIterator<Item = &'a str>,
        key: u64,
        now: Instant,
    ) -> Vec<String> {
        let mut table = lock(&self.resources);
        let mut news = Vec::new();
        for id in ids {
            if table.insert(Arc::from(id), key, now) {
                news.push(id.to_string());
            }
        }
        drop(table);
        if !news.is_empty() {
            self.generation.fetch_add(1, Ordering::Relaxed);
        }
        news
    }

    /// Forgets `ids` (deleted, or their owner said it has no such object).
    pub fn forget<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        let known: Vec<String> = ids.into_iter().map(str::to_string).collect();
        if self.forget_from_peer(known.iter().map(String::as_str))
            && let Some(journal) = self.journal.get()
        {
            journal.record(Change::Forgot { ids: known });
        }
    }

    /// Forgets ids another instance forgot (not reported again); true when one was known.
    pub fn forget_from_peer<'a>(&self, ids: impl IntoIterator<Item = &'a str>) -> bool {
        let mut table = lock(&self.resources);
        let mut any = false;
        for id in ids {
            any |= table.remove(id);
        }
        drop(table);
        if any {
            self.generation.fetch_add(1, Ordering::Relaxed);
        }
        any
    }

    /// The key that last served conversation `conversation`, if it is still remembered.
    pub fn session_owner(&self, conversation: u64, now: Instant) -> Option<u64> {
        lock(&self.sessions).get(&conversation, now)
    }

    /// Records that `key` served a turn of `conversation`; true when that is news (news goes
    /// to the shared store in the background).
    pub fn record_session(&self, conversation: u64, key: u64, now: Instant) -> bool {
        if self.recent.seen(conversation, key, now) {
            return false; // recorded with this key within the second: nothing new to write
        }
        let news = lock(&self.sessions).insert(conversation, key, now);
        self.recent.note(conversation, key, now);
        if news && let Some(journal) = self.journal.get() {
            journal.record(Change::Session { key, conversation });
        }
        news
    }

    /// Records a turn another instance served (not reported again); true when that is news.
    pub fn session_from_peer(&self, conversation: u64, key: u64, now: Instant) -> bool {
        let news = lock(&self.sessions).insert(conversation, key, now);
        // What this instance noted this second may no longer be what the table holds.
        self.recent.forget(conversation);
        news
    }

    /// Every learned id with its owner, for STATE_FILE.
    pub fn ids(&self, now: Instant) -> Vec<(Arc<str>, Owner)> {
        lock(&self.resources).entries(now)
    }

    /// Every live conversation with its key, for STATE_FILE.
    pub fn sessions(&self, now: Instant) -> Vec<(u64, Owner)> {
        lock(&self.sessions).entries(now)
    }

    /// Restores a learned id as of `touched` (STATE_FILE).
    pub fn restore_id(&self, id: &str, key: u64, touched: Instant) {
        lock(&self.resources).insert(Arc::from(id), key, touched);
    }

    /// Restores a conversation as of `touched` (STATE_FILE).
    pub fn restore_session(&self, conversation: u64, key: u64, touched: Instant) {
        lock(&self.sessions).insert(conversation, key, touched);
    }
}
