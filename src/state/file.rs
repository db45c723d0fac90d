//! STATE_FILE: cooldowns, benches (reason, until), disabled flags, learned object ids and
//! conversations outlive a restart, so a key benched until Pacific midnight is not hammered
//! again by every deploy, and a file or batch keeps its key. Keys are named in the file by a
//! SHA-256 prefix, never by the key. Written atomically (temp file + rename) at most about once
//! a second when something changed, and at shutdown; read at start. A corrupt or unreadable
//! file is logged and ignored, never fatal.
//!
//! Format, one line each: `keyrelay-state 2` (a version 1 file is read too), then
//! `<provider> <key-id> disabled`, `<provider> <key-id> bench <unix-secs> <reason> <model|->`,
//! `<provider> <key-id> id <unix-secs last used> <object id>` and
//! `<provider> <key-id> session <unix-secs last used> <conversation hash>`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::{info, warn};

use crate::keys::usage::Tokens;
use crate::keys::{Bench, BenchReason};
use crate::proxy::Proxy;

const HEADER: &str = "keyrelay-state 2";

/// The header of files written before ids and sessions were kept; still read.
const HEADER_V1: &str = "keyrelay-state 1";

/// How often learned ids and conversations are written again when only their last-use times
/// changed (a restart then ages them from at most this long ago).
const AFFINITY_REFRESH: Duration = Duration::from_secs(60);

/// How often the writer looks for changes.
pub const WRITE_EVERY: Duration = Duration::from_secs(1);

/// The state of every pool and affinity table as file text (ended cooldowns are left out).
pub fn render(proxy: &Proxy, now: Instant, wall_now: SystemTime) -> String {
    render_pools(proxy, now, wall_now) + &render_affinity(proxy, now, wall_now)
}

/// Seconds since the epoch of `at`, rounded up, as the wall clock puts it.
fn unix_secs(at: Instant, now: Instant, wall_now: SystemTime) -> u64 {
    let wall = if at >= now {
        wall_now + (at - now)
    } else {
        wall_now - (now - at)
    };
    wall.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() + u64::from(d.subsec_nanos() > 0))
}

/// The learned ids and conversations of every provider, one line each.
fn render_affinity(proxy: &Proxy, now: Instant, wall_now: SystemTime) -> String {
    let mut out = String::new();
    for provider in proxy.providers().iter() {
        let affinity = &provider.affinity;
        for (id, owner) in affinity.ids(now) {
            let secs = unix_secs(owner.touched, now, wall_now);
            let _ = writeln!(out, "{} {:016x} id {secs} {id}", provider.name, owner.key);
        }
        for (conversation, owner) in affinity.sessions(now) {
            let secs = unix_secs(owner.touched, now, wall_now);
            let _ = writeln!(
                out,
                "{} {:016x} session {secs} {conversation:016x}",
                provider.name, owner.key
            );
        }
    }
    out
}

/// The state of every pool (header included).
fn render_pools(proxy: &Proxy, now: Instant, wall_now: SystemTime) -> String {
    let mut out = format!("{HEADER}\n");
    for provider in proxy.providers().iter() {
        // Tokens spent, per key and model: `usage <answers> <input> <cached> <output>
        // <reasoning> <model>` (the model last: it may hold spaces).
        let mut spent = provider.usage.all();
        spent.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        for (key, model, s) in spent {
            let t = s.tokens;
            let _ = writeln!(
                out,
                "{} {key:016x} usage {} {} {} {} {} {model}",
                provider.name, s.answers, t.input, t.cached, t.output, t.reasoning
            );
        }
        for (index, snap) in provider.pool.snapshot(now).into_iter().enumerate() {
            if !snap.disabled && snap.benches.is_empty() {
                continue; // nothing to keep: no hash to compute (this runs every second)
            }
            let id = provider.pool.key(index).id_hex();
            if snap.disabled {
                let _ = writeln!(out, "{} {id} disabled", provider.name);
            }
            for bench in &snap.benches {
                // Whole seconds, rounded up: the same state renders the same text from one
                // second to the next, so an unchanged pool is not rewritten.
                let secs = unix_secs(bench.until.max(now), now, wall_now);
                let _ = writeln!(
                    out,
                    "{} {id} bench {secs} {} {}",
                    provider.name,
                    bench.reason.word(),
                    bench.model.as_deref().unwrap_or("-")
                );
            }
        }
    }
    out
}

/// Applies file text to the pools; returns how many entries were restored, or why the text was
/// refused (nothing is applied then).
pub fn apply(
    proxy: &Proxy,
    text: &str,
    now: Instant,
    wall_now: SystemTime,
) -> Result<usize, String> {
    let mut lines = text.lines();
    if !matches!(lines.next(), Some(HEADER | HEADER_V1)) {
        return Err(format!("it does not start with {HEADER:?}"));
    }
    enum Entry {
        Disabled,
        Bench(Bench),
        /// A learned id or a conversation, and when it was last used.
        Id(String, Instant),
        Session(u64, Instant),
        /// Tokens a key spent on a model: answers, tokens, model.
        Usage(u64, Tokens, String),
    }
    // When an entry last used at `secs` was used, on this process's clock; `None` if that is
    // before this machine's clock can say.
    let used_at = |secs: u64| {
        let wall = UNIX_EPOCH + Duration::from_secs(secs.min(1 << 40));
        let ago = wall_now.duration_since(wall).unwrap_or(Duration::ZERO);
        now.checked_sub(ago)
    };
    let mut entries = Vec::new();
    for (number, line) in lines.enumerate() {
        let bad = || format!("line {} is not a state entry", number + 2);
        let fields: Vec<&str> = line.splitn(9, ' ').collect();
        let entry = match fields.as_slice() {
            [provider, id, "disabled"] => (*provider, *id, Entry::Disabled),
            [provider, id, "bench", secs, reason, model] => {
                let secs: u64 = secs.parse().map_err(|_| bad())?;
                let reason = BenchReason::from_word(reason).ok_or_else(bad)?;
                let until_wall = UNIX_EPOCH + Duration::from_secs(secs.min(1 << 40));
                let Ok(left) = until_wall.duration_since(wall_now) else {
                    continue; // ended while keyrelay was down
                };
                let model = (*model != "-").then(|| model.to_string());
                let until = now + left.min(crate::relay::MAX_COOLDOWN);
                (
                    *provider,
                    *id,
                    Entry::Bench(Bench {
                        model,
                        until,
                        reason,
                    }),
                )
            }
            [provider, id, "id", secs, object] => {
                let secs: u64 = secs.parse().map_err(|_| bad())?;
                let Some(at) = used_at(secs) else { continue };
                (*provider, *id, Entry::Id(object.to_string(), at))
            }
            [
                provider,
                id,
                "usage",
                answers,
                input,
                cached,
                output,
                reasoning,
                model,
            ] => {
                let n = |field: &str| field.parse::<u64>().map_err(|_| bad());
                let tokens = Tokens {
                    input: n(input)?,
                    cached: n(cached)?,
                    output: n(output)?,
                    reasoning: n(reasoning)?,
                };
                (
                    *provider,
                    *id,
                    Entry::Usage(n(answers)?, tokens, model.to_string()),
                )
            }
            [provider, id, "session", secs, hash] => {
                let secs: u64 = secs.parse().map_err(|_| bad())?;
                let hash = u64::from_str_radix(hash, 16).map_err(|_| bad())?;
                let Some(at) = used_at(secs) else { continue };
                (*provider, *id, Entry::Session(hash, at))
            }
            [] | [""] => continue,
            _ => return Err(bad()),
        };
        entries.push(entry);
    }
    let providers = proxy.providers();
    // Each key's id, hashed once, by provider.
    let ids: Vec<Vec<String>> = providers
        .iter()
        .map(|p| (0..p.pool.len()).map(|i| p.pool.key(i).id_hex()).collect())
        .collect();
    let mut restored = 0;
    for (name, id, entry) in entries {
        let Some(at) = providers.iter().position(|p| p.name == name) else {
            continue;
        };
        let provider = &providers[at];
        let Some(index) = ids[at].iter().position(|known| *known == id) else {
            continue; // a key no longer configured
        };
        let key = provider.pool.key(index).id();
        match entry {
            Entry::Id(object, at) => provider.affinity.restore_id(&object, key, at),
            Entry::Session(hash, at) => provider.affinity.restore_session(hash, key, at),
            Entry::Usage(answers, tokens, model) => {
                provider.usage.add(key, Some(&model), answers, tokens);
            }
            Entry::Disabled => provider.pool.set_disabled(index, true),
            Entry::Bench(bench) => {
                provider
                    .pool
                    .bench(index, bench.model.as_deref(), bench.until, bench.reason);
            }
        }
        restored += 1;
    }
    Ok(restored)
}

/// Reads the state file at start, logging what it restored or why it was ignored.
pub fn load(proxy: &Proxy, path: &Path) {
    match std::fs::read_to_string(path) {
        Ok(text) => match apply(proxy, &text, Instant::now(), SystemTime::now()) {
            Ok(n) => info!(
                "STATE_FILE {}: restored {n} cooldown(s), disabled flag(s), learned id(s) and conversation(s)",
                path.display()
            ),
            Err(why) => warn!("STATE_FILE {} ignored: {why}", path.display()),
        },
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => warn!(
            "STATE_FILE {} ignored: cannot read it: {err}",
            path.display()
        ),
    }
}

/// Writes `text` to `path` atomically: a temp file beside it, then a rename.
fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let mut temp = PathBuf::from(path);
    temp.as_mut_os_string().push(".tmp");
    std::fs::write(&temp, text)?;
    std::fs::rename(&temp, path)
}

/// Keeps the file in step with the pools: writes when the state differs from what was last
/// written. Called once a second by the writer thread and once at shutdown.
pub struct Writer {
    path: PathBuf,
    last: String,
    warned: bool,
    /// The affinity lines as last rendered, the tables' generations then, and when: they are
    /// rendered again only when an owner changed or [`AFFINITY_REFRESH`] passed.
    affinity: String,
    affinity_generation: Option<u64>,
    affinity_at: Option<Instant>,
}

impl Writer {
    /// A writer for `path`.
    pub fn new(path: PathBuf) -> Writer {
        Writer {
            path,
            last: String::new(),
            warned: false,
            affinity: String::new(),
            affinity_generation: None,
            affinity_at: None,
        }
    }

    /// Writes the current state if it changed.
    pub fn sync(&mut self, proxy: &Proxy) {
        let (now, wall_now) = (Instant::now(), SystemTime::now());
        let generation = proxy
            .providers()
            .iter()
            .map(|p| p.affinity.generation())
            .fold(0u64, u64::wrapping_add);
        let stale = self
            .affinity_at
            .is_none_or(|at| now.duration_since(at) >= AFFINITY_REFRESH);
        if stale || self.affinity_generation != Some(generation) {
            self.affinity = render_affinity(proxy, now, wall_now);
            self.affinity_generation = Some(generation);
            self.affinity_at = Some(now);
        }
        let text = render_pools(proxy, now, wall_now) + &self.affinity;
        if text == self.last {
            return;
        }
        match write_atomically(&self.path, &text) {
            Ok(()) => {
                self.last = text;
                self.warned = false;
            }
            Err(err) if !self.warned => {
                warn!("STATE_FILE {}: cannot write it: {err}", self.path.display());
                self.warned = true;
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn proxy(keys: &str) -> Proxy {
        let keys = keys.to_string();
        let config = Config::from_lookup(&move |name: &str| {
            (name == "OPENAI_API_KEYS").then(|| keys.clone())
        })
        .unwrap();
        Proxy::new(&config)
    }

    #[test]
    fn state_survives_a_round_trip_without_naming_a_key() {
        let (now, wall) = (Instant::now(), SystemTime::now());
        let before = proxy("sk-state-key-0000001,sk-state-key-0000002,sk-state-key-0000003");
        let pool = &before.providers()[0].pool;
        pool.bench(
            0,
            Some("gpt-x"),
            now + Duration::from_secs(90),
            BenchReason::RateLimited,
        );
        pool.bench(
            1,
            None,
            now + Duration::from_secs(1800),
            BenchReason::Rejected(401),
        );
        pool.set_disabled(2, true);
        let text = render(&before, now, wall);
        assert!(!text.contains("sk-state"), "{text}");
        // The third key is gone from the new configuration; a new one came.
        let after = proxy("sk-state-key-0000002,sk-state-key-0000001,sk-state-key-0000009");
        assert_eq!(apply(&after, &text, now, wall), Ok(2));
        let snaps = after.providers()[0].pool.snapshot(now);
        assert_eq!(snaps[0].benches[0].reason, BenchReason::Rejected(401));
        assert_eq!(snaps[1].benches[0].model.as_deref(), Some("gpt-x"));
        assert!(snaps[2].benches.is_empty() && !snaps[2].disabled);
        assert_eq!(render(&after, now, wall).lines().count(), 3);
    }

    #[test]
    fn learned_ids_and_conversations_survive_a_round_trip() {
        let (now, wall) = (Instant::now(), SystemTime::now());
        let before = proxy("sk-state-key-0000001,sk-state-key-0000002");
        let provider = &before.providers()[0];
        let owner = provider.pool.key(1).id();
        provider
            .affinity
            .learn(["file-abc123", "resp_xyz789"], owner, now);
        provider.affinity.record_session(0xfeed, owner, now);
        let text = render(&before, now, wall);
        assert!(
            text.starts_with(HEADER) && !text.contains("sk-state"),
            "{text}"
        );
        let after = proxy("sk-state-key-0000002,sk-state-key-0000003");
        assert_eq!(apply(&after, &text, now, wall), Ok(3));
        let provider = &after.providers()[0];
        let ids = ["file-abc123".to_string()];
        let pin = provider
            .affinity
            .resource_pin(&ids, provider.pool.keys(), now);
        assert_eq!(
            pin,
            crate::keys::affinity::ResourcePin::Key {
                index: 0,
                id: "file-abc123".into()
            }
        );
        assert_eq!(provider.affinity.session_owner(0xfeed, now), Some(owner));
        // A version 1 file (before ids were kept) is still read.
        assert_eq!(apply(&after, "keyrelay-state 1\n", now, wall), Ok(0));
    }

    #[test]
    fn a_corrupt_file_is_refused_whole_and_ended_cooldowns_are_dropped() {
        let (now, wall) = (Instant::now(), SystemTime::now());
        let p = proxy("sk-state-key-0000001");
        assert!(apply(&p, "garbage", now, wall).is_err());
        assert!(
            apply(
                &p,
                "keyrelay-state 2\nopenai x bench soon rate_limited -",
                now,
                wall
            )
            .is_err()
        );
        let id = p.providers()[0].pool.key(0).id_hex();
        let ended = format!("keyrelay-state 2\nopenai {id} bench 1000 rate_limited -\n");
        assert_eq!(apply(&p, &ended, now, wall), Ok(0));
        assert!(p.providers()[0].pool.is_ready(0, None, now));
    }
}
