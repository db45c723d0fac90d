//! How busy the process is, as counters the front end keeps and the status page, /metrics and
//! the shutdown drain read: open connections, requests in flight, requests queued, workers.

use std::sync::atomic::{AtomicUsize, Ordering};

/// The counters.
#[derive(Debug, Default)]
pub struct Load {
    connections: AtomicUsize,
    in_flight: AtomicUsize,
    queued: AtomicUsize,
    workers: AtomicUsize,
}

impl Load {
    /// A connection was accepted.
    pub fn connection_opened(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection was closed.
    pub fn connection_closed(&self) {
        self.connections.fetch_sub(1, Ordering::Relaxed);
    }

    /// Open client connections.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// A complete request head was handed on (to the queue or straight to a worker).
    pub fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
    }

    /// That request was answered, refused or dropped.
    pub fn request_done(&self) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }

    /// Requests handed on and not finished: what a graceful shutdown waits for.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Sets the number of requests waiting for a worker.
    pub fn set_queued(&self, queued: usize) {
        self.queued.store(queued, Ordering::Relaxed);
    }

    /// Requests waiting for a worker.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Sets the number of worker threads started.
    pub fn set_workers(&self, workers: usize) {
        self.workers.store(workers, Ordering::Relaxed);
    }

    /// Worker threads started so far (they are started as requests need them).
    pub fn workers(&self) -> usize {
        self.workers.load(Ordering::Relaxed)
    }
}
