//! The hand-off from the listener to the workers: a FIFO of connections whose request head is
//! complete. Workers are spawned when a request finds none idle, up to WORKERS; the listener
//! takes back requests that waited too long or whose client left.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use crate::load::Load;

use super::conn::Conn;
use super::head::Head;

/// A request ready for a worker.
pub struct Job {
    /// Its connection; the head is at the start of `conn.buf`.
    pub conn: Conn,
    /// The parsed head.
    pub head: Head,
    /// When the head was complete: queue wait and request duration count from here.
    pub queued_at: Instant,
}

#[derive(Default)]
struct State {
    jobs: VecDeque<Job>,
    /// Workers blocked in [`WorkQueue::take`], and those started but not there yet (counting
    /// them keeps a burst from starting a thread per request while the first ones start).
    idle: usize,
    /// Workers started so far.
    spawned: usize,
}

/// The queue. Its length never exceeds the open connections: a connection has at most one
/// request in it (the next is read only after the answer).
pub struct WorkQueue {
    state: Mutex<State>,
    ready: Condvar,
    max_workers: usize,
    load: Arc<Load>,
}

impl WorkQueue {
    /// A queue served by at most `max_workers` threads; its depth and worker count are kept
    /// in `load`.
    pub fn new(max_workers: usize, load: Arc<Load>) -> WorkQueue {
        WorkQueue {
            state: Mutex::default(),
            ready: Condvar::new(),
            max_workers: max_workers.max(1),
            load,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `job`. Returns true when the caller must start one more worker (more requests
    /// wait than workers are idle, and WORKERS is not reached).
    pub fn push(&self, job: Job) -> bool {
        let mut state = self.lock();
        state.jobs.push_back(job);
        self.load.set_queued(state.jobs.len());
        self.ready.notify_one();
        let spawn = state.jobs.len() > state.idle && state.spawned < self.max_workers;
        if spawn {
            state.spawned += 1;
            state.idle += 1;
            self.load.set_workers(state.spawned);
        }
        spawn
    }

    /// A worker start failed: forget the slot reserved for it.
    pub fn spawn_failed(&self) {
        let mut state = self.lock();
        state.spawned -= 1;
        state.idle -= 1;
        self.load.set_workers(state.spawned);
    }

    /// A worker thread ended: its slot is free for a new one.
    pub fn worker_died(&self) {
        let mut state = self.lock();
        state.spawned = state.spawned.saturating_sub(1);
        self.load.set_workers(state.spawned);
    }

    /// Counts the calling worker idle ahead of its next [`take`](Self::take): it is about to
    /// hand a connection back, whose next request may be queued before it gets there.
    pub fn returning(&self) {
        self.lock().idle += 1;
    }

    /// Blocks until a job is there and takes it. `counted`: the worker is already counted idle
    /// (just started, or announced by [`returning`](Self::returning)).
    pub fn take(&self, counted: bool) -> Job {
        let mut state = self.lock();
        if !counted {
            state.idle += 1;
        }
        loop {
            if let Some(job) = state.jobs.pop_front() {
                state.idle -= 1;
                self.load.set_queued(state.jobs.len());
                return job;
            }
            state = self.ready.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Removes and returns the jobs queued before `cutoff` and those `gone` picks out, each with
    /// whether `gone` picked it (its client left).
    pub fn take_back(
        &self,
        cutoff: Instant,
        gone: impl Fn(&[&Job]) -> Vec<bool>,
    ) -> Vec<(Job, bool)> {
        let mut state = self.lock();
        if state.jobs.is_empty() {
            return Vec::new();
        }
        let queued: Vec<&Job> = state.jobs.iter().collect();
        let left = gone(&queued);
        let mut keep = VecDeque::with_capacity(state.jobs.len());
        let mut taken = Vec::new();
        for (job, left) in state.jobs.drain(..).zip(left) {
            if left || job.queued_at < cutoff {
                taken.push((job, left));
            } else {
                keep.push_back(job);
            }
        }
        state.jobs = keep;
        self.load.set_queued(state.jobs.len());
        taken
    }
}
