//! Moving state between memory and the store: writing a batch of changes (facts and events in
//! one pipeline), writing memory whole into an empty store, reading the store back into
//! memory, and applying a change another instance made.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use redis::{Connection, RedisResult};

use super::wire::{Names, Write};
use crate::keys::journal::Change;
use crate::proxy::Proxy;

/// Facts per pipeline when writing or reading many.
const CHUNK: usize = 1000;

/// Sets and deletes `writes` and publishes `lines` as one event message, in one pipeline.
pub fn send(
    connection: &mut Connection,
    names: &Names,
    writes: &[Write],
    lines: &[String],
) -> RedisResult<()> {
    for chunk in writes.chunks(CHUNK) {
        let mut pipe = redis::pipe();
        for write in chunk {
            match write {
                Write::Set(fact) => {
                    let cmd = pipe.cmd("SET").arg(&fact.key).arg(&fact.value);
                    if let Some(ttl) = fact.ttl {
                        cmd.arg("PX").arg(ttl.as_millis().max(1) as u64);
                    }
                    cmd.ignore();
                }
                Write::Delete(key) => {
                    pipe.cmd("DEL").arg(key).ignore();
                }
                Write::Add {
                    key,
                    score_ms,
                    member,
                    ttl,
                } => {
                    pipe.cmd("ZADD")
                        .arg(key)
                        .arg(*score_ms)
                        .arg(member)
                        .ignore();
                    pipe.cmd("PEXPIRE")
                        .arg(key)
                        .arg(ttl.as_millis() as u64)
                        .ignore();
                }
            }
        }
        pipe.exec(connection)?;
    }
    if !lines.is_empty() {
        redis::cmd("PUBLISH")
            .arg(names.channel())
            .arg(lines.join("\n"))
            .exec(connection)?;
    }
    Ok(())
}

/// Every key matching `pattern`.
fn scan(connection: &mut Connection, pattern: &str) -> RedisResult<Vec<String>> {
    let mut keys = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, found): (u64, Vec<String>) = redis::cmd("SCAN")
            .cursor_arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(CHUNK)
            .query(connection)?;
        keys.extend(found);
        if next == 0 {
            return Ok(keys);
        }
        cursor = next;
    }
}

/// Everything in memory as changes: benches, disabled keys, learned ids, conversations.
pub fn everything(proxy: &Proxy) -> Vec<(Arc<str>, Change)> {
    let now = Instant::now();
    let wall = SystemTime::now();
    let mut changes = Vec::new();
    for provider in proxy.providers().iter() {
        let name: Arc<str> = Arc::from(provider.name.as_str());
        for (index, snap) in provider.pool.snapshot(now).into_iter().enumerate() {
            let key = provider.pool.key(index).id();
            if snap.disabled {
                changes.push((
                    name.clone(),
                    Change::Disabled {
                        key,
                        disabled: true,
                    },
                ));
            }
            for bench in snap.benches {
                let until = wall + bench.until.saturating_duration_since(now);
                let (model, reason) = (bench.model, bench.reason);
                changes.push((
                    name.clone(),
                    Change::Bench {
                        key,
                        model,
                        until,
                        reason,
                    },
                ));
            }
        }
        for (id, owner) in provider.affinity.ids(now) {
            let ids = vec![id.to_string()];
            changes.push((
                name.clone(),
                Change::Learned {
                    key: owner.key,
                    ids,
                },
            ));
        }
        for (conversation, owner) in provider.affinity.sessions(now) {
            let key = owner.key;
            changes.push((name.clone(), Change::Session { key, conversation }));
        }
    }
    changes
}

/// Reads the benches, disabled keys and conversations in the store into memory; returns how
/// many facts were applied. Keys named in `pending` (changes of this instance not yet written)
/// keep their disabled flag. With `authoritative`, benches in memory that the store no longer
/// holds (reset or ended elsewhere) go first. Ids are not read in bulk: an id nobody here has
/// seen is asked of the store when a request names it.
pub fn read_all(
    connection: &mut Connection,
    names: &Names,
    proxy: &Proxy,
    pending: &HashSet<(String, u64)>,
    authoritative: bool,
) -> RedisResult<usize> {
    let mut applied = 0;
    let mut disabled: HashSet<(String, u64)> = HashSet::new();
    if authoritative {
        for provider in proxy.providers().iter() {
            for index in 0..provider.pool.len() {
                provider.pool.reset_from_peer(index);
            }
        }
    }
    for kind in ['b', 'd', 's'] {
        let keys = scan(connection, &names.all(kind))?;
        for chunk in keys.chunks(CHUNK) {
            let values: Vec<Option<String>> = redis::cmd("MGET").arg(chunk).query(connection)?;
            for (key, value) in chunk.iter().zip(values) {
                let Some((provider, change)) = value.and_then(|v| names.fact_change(key, &v))
                else {
                    continue;
                };
                if let Change::Disabled { key, .. } = &change {
                    disabled.insert((provider.clone(), *key));
                }
                applied += usize::from(apply(proxy, &provider, change));
            }
        }
    }
    // The store is the word on disabled keys: one enabled elsewhere is enabled here too.
    for provider in proxy.providers().iter() {
        for (index, key) in provider.pool.keys().iter().enumerate() {
            let named = (provider.name.clone(), key.id());
            if !disabled.contains(&named) && !pending.contains(&named) {
                provider.pool.set_disabled_from_peer(index, false);
            }
        }
    }
    Ok(applied)
}

/// Applies a change another instance made (or the store holds) to memory; false when it names
/// a provider or key this instance does not have.
pub fn apply(proxy: &Proxy, provider: &str, change: Change) -> bool {
    let providers = proxy.providers();
    let Some(provider) = providers.iter().find(|p| p.name == provider) else {
        return false;
    };
    let (pool, affinity) = (&provider.pool, &provider.affinity);
    let now = Instant::now();
    let index = |key: u64| pool.position(key);
    match change {
        Change::Bench {
            key,
            model,
            until,
            reason,
        } => {
            let Some(index) = index(key) else {
                return false;
            };
            let Ok(left) = until.duration_since(SystemTime::now()) else {
                return false;
            };
            let until = now + left.min(crate::relay::MAX_COOLDOWN);
            pool.bench_from_peer(index, model.as_deref(), until, reason);
        }
        Change::Disabled { key, disabled } => {
            let Some(index) = index(key) else {
                return false;
            };
            pool.set_disabled_from_peer(index, disabled);
        }
        Change::Reset { key, .. } => {
            let Some(index) = index(key) else {
                return false;
            };
            pool.reset_from_peer(index);
        }
        Change::Learned { key, ids } => {
            affinity.learn_from_peer(ids.iter().map(String::as_str), key, now);
        }
        Change::Forgot { ids } => {
            affinity.forget_from_peer(ids.iter().map(String::as_str));
        }
        Change::Session { key, conversation } => {
            affinity.session_from_peer(conversation, key, now);
        }
        Change::Spent { .. } => return false,
    }
    true
}
