//! The shared-state threads. One connects, subscribes (through a second thread that applies
//! other instances' events as they arrive), brings memory and the store in step, then writes
//! the queue every few milliseconds and checks every second that the store still answers. When
//! it does not, the store is marked away, and connecting starts again with a growing pause.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::info;
use redis::{Connection, RedisResult};

use super::link::{BACKGROUND_TIMEOUT, connect};
use super::{SharedState, describe, sync, wire};
use crate::keys::journal::Change;
use crate::proxy::Proxy;

/// How often the queue is written.
const TICK: Duration = Duration::from_millis(5);

/// How often the store is asked whether it is there.
const PING_EVERY: Duration = Duration::from_secs(1);

/// How long the subscriber waits for a message before it looks whether it should stop.
const LISTEN_SLICE: Duration = Duration::from_millis(250);

/// Pauses between connection attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Keeps connecting, for the life of the process.
pub fn run(shared: &Arc<SharedState>, proxy: &Arc<Proxy>) {
    let mut backoff = BACKOFF_MIN;
    // The store's epoch as last seen: another one is a new (or emptied) store.
    let last_epoch = Mutex::new(None::<String>);
    loop {
        let started = Instant::now();
        let why = serve(shared, proxy, &last_epoch);
        shared.mark_down(&why);
        if started.elapsed() > Duration::from_secs(10) {
            backoff = BACKOFF_MIN;
        }
        thread::sleep(backoff);
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One connection's life; returns why it ended.
fn serve(
    shared: &Arc<SharedState>,
    proxy: &Arc<Proxy>,
    last_epoch: &Mutex<Option<String>>,
) -> String {
    let mut writer = match connect(&shared.client, BACKGROUND_TIMEOUT) {
        Ok(connection) => connection,
        Err(err) => return describe(&err),
    };
    let over = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = mpsc::channel();
    {
        let (shared, proxy, over) = (Arc::clone(shared), Arc::clone(proxy), Arc::clone(&over));
        let spawned = thread::Builder::new()
            .name("shared-events".into())
            .spawn(move || listen(&shared, &proxy, &over, &ready_tx));
        if spawned.is_err() {
            return "cannot start the events thread".to_string();
        }
    }
    let end = |why: String| {
        over.store(true, Ordering::Relaxed);
        why
    };
    match ready_rx.recv_timeout(BACKGROUND_TIMEOUT * 2) {
        Ok(Ok(())) => {}
        Ok(Err(why)) => return end(why),
        Err(_) => return end("no answer to SUBSCRIBE".to_string()),
    }
    let applied = match bring_in_step(shared, proxy, &mut writer, last_epoch) {
        Ok(applied) => applied,
        Err(err) => return end(describe(&err)),
    };
    shared.mark_up();
    info!(
        "shared state {}: connected; {applied} fact(s) read from it",
        shared.shown
    );
    let mut pinged = Instant::now();
    loop {
        thread::sleep(TICK);
        if over.load(Ordering::Relaxed) {
            return "the event subscription was lost".to_string();
        }
        let batch = coalesce(shared.take_queue());
        if !batch.is_empty() {
            let (writes, lines) = shared.writes_for(&batch);
            if let Err(err) = sync::send(&mut writer, &shared.names, &writes, &lines) {
                requeue(shared, batch);
                return end(describe(&err));
            }
        }
        if pinged.elapsed() >= PING_EVERY {
            pinged = Instant::now();
            if let Err(err) = redis::cmd("PING").query::<String>(&mut writer) {
                return end(describe(&err));
            }
        }
    }
}

/// After connecting: a store this instance has not filled (new, emptied, or the queue
/// overflowed) gets all of memory, otherwise the changes made while it was away; then memory
/// takes in what the store holds. Returns how many facts were read.
fn bring_in_step(
    shared: &SharedState,
    proxy: &Proxy,
    writer: &mut Connection,
    last_epoch: &Mutex<Option<String>>,
) -> RedisResult<usize> {
    let token = format!(
        "{} {}",
        shared.instance,
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
    );
    let created: Option<String> = redis::cmd("SET")
        .arg(shared.names.epoch())
        .arg(&token)
        .arg("NX")
        .query(writer)?;
    let epoch: Option<String> = redis::cmd("GET").arg(shared.names.epoch()).query(writer)?;
    let mut seen = last_epoch.lock().unwrap_or_else(|p| p.into_inner());
    // Memory fills the store only when the store is new (this instance made its epoch), was
    // emptied since this instance last saw it, or missed changes (the queue overflowed).
    // Otherwise the store is the word: an instance that restarts with an old STATE_FILE
    // does not undo what the others did meanwhile.
    let emptied = seen
        .as_ref()
        .is_some_and(|before| Some(before) != epoch.as_ref());
    let fresh = created.is_some() || emptied || shared.overflowed.swap(false, Ordering::Relaxed);
    let queued = shared.take_queue();
    let batch = if fresh {
        sync::everything(proxy)
            .into_iter()
            .chain(queued.into_iter().filter(|(_, c)| is_deletion(c)))
            .collect()
    } else {
        coalesce(queued)
    };
    for chunk in batch.chunks(1000) {
        let (writes, lines) = shared.writes_for(chunk);
        sync::send(writer, &shared.names, &writes, &lines)?;
    }
    *seen = epoch;
    drop(seen);
    // Disabled flags changed here since the batch was taken are this instance's word.
    let pending: HashSet<(String, u64)> = shared
        .queue
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter_map(|(provider, change)| match change {
            Change::Disabled { key, .. } => Some((provider.to_string(), *key)),
            _ => None,
        })
        .collect();
    sync::read_all(writer, &shared.names, proxy, &pending, !fresh)
}

fn is_deletion(change: &Change) -> bool {
    matches!(
        change,
        Change::Reset { .. }
            | Change::Forgot { .. }
            | Change::Disabled {
                disabled: false,
                ..
            }
    )
}

/// The queue with repeated conversation updates folded into the last one (identical requests
/// rotating over the keys would otherwise write one fact each).
fn coalesce(batch: Vec<(Arc<str>, Change)>) -> Vec<(Arc<str>, Change)> {
    let mut seen: HashSet<(Arc<str>, u64)> = HashSet::new();
    let mut kept: Vec<(Arc<str>, Change)> = Vec::with_capacity(batch.len());
    for (provider, change) in batch.into_iter().rev() {
        if let Change::Session { conversation, .. } = &change
            && !seen.insert((Arc::clone(&provider), *conversation))
        {
            continue;
        }
        kept.push((provider, change));
    }
    kept.reverse();
    kept
}

/// Puts a batch that could not be written back in front of the queue.
fn requeue(shared: &SharedState, batch: Vec<(Arc<str>, Change)>) {
    let mut queue = shared.queue.lock().unwrap_or_else(|p| p.into_inner());
    let later = std::mem::replace(&mut *queue, batch);
    queue.extend(later);
}

/// The events thread: applies other instances' changes as they arrive, until the connection
/// fails or `over` is set.
fn listen(
    shared: &SharedState,
    proxy: &Proxy,
    over: &AtomicBool,
    ready: &mpsc::Sender<Result<(), String>>,
) {
    let mut connection = match connect(&shared.client, BACKGROUND_TIMEOUT) {
        Ok(connection) => connection,
        Err(err) => {
            let _ = ready.send(Err(describe(&err)));
            return;
        }
    };
    let mut events = connection.as_pubsub();
    if let Err(err) = events.subscribe(shared.names.channel()) {
        let _ = ready.send(Err(describe(&err)));
        return;
    }
    if events.set_read_timeout(Some(LISTEN_SLICE)).is_err() {
        let _ = ready.send(Err("cannot set a read timeout".to_string()));
        return;
    }
    let _ = ready.send(Ok(()));
    while !over.load(Ordering::Relaxed) {
        match events.get_message() {
            Ok(message) => {
                let Ok(text) = std::str::from_utf8(message.get_payload_bytes()) else {
                    continue;
                };
                for line in text.lines() {
                    if let Some((instance, provider, change)) = wire::parse_event(line)
                        && instance != shared.instance
                    {
                        sync::apply(proxy, provider, change);
                    }
                }
            }
            Err(err) if err.is_timeout() => {}
            Err(_) => break,
        }
    }
    over.store(true, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_conversation_updates_fold_into_the_last() {
        let openai: Arc<str> = Arc::from("openai");
        let session =
            |key, conversation| (Arc::clone(&openai), Change::Session { key, conversation });
        let batch = vec![
            session(1, 7),
            (
                Arc::clone(&openai),
                Change::Reset {
                    key: 3,
                    models: Vec::new(),
                },
            ),
            session(2, 7),
            session(1, 8),
            session(3, 7),
        ];
        let kept = coalesce(batch);
        assert_eq!(
            kept,
            vec![
                (
                    Arc::clone(&openai),
                    Change::Reset {
                        key: 3,
                        models: Vec::new(),
                    }
                ),
                session(1, 8),
                session(3, 7),
            ]
        );
    }
}
