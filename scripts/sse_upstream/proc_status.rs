//! Watching another process's memory from /proc: a background sampler that keeps the peak
//! resident set size and thread count while a test runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// How often the sampler looks.
const SAMPLE_EVERY: Duration = Duration::from_millis(20);

/// Highest values seen.
#[derive(Default, Clone, Copy)]
pub struct Peak {
    /// VmRSS in KiB.
    pub rss_kib: u64,
    /// Threads.
    pub threads: u64,
}

/// A numeric field (`VmRSS`, `VmHWM`, `Threads`, ...) of /proc/<pid>/status; sizes are in KiB.
pub fn status_field(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| {
        l.strip_prefix(field)
            .is_some_and(|rest| rest.starts_with(':'))
    })?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A running sampler.
pub struct Watcher {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Peak>,
}

impl Watcher {
    /// Starts sampling `pid`.
    pub fn start(pid: u32) -> Watcher {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = thread::spawn(move || sample(pid, &flag));
        Watcher { stop, handle }
    }

    /// Stops sampling and returns the peak.
    pub fn finish(self) -> Peak {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or_default()
    }
}

fn sample(pid: u32, stop: &AtomicBool) -> Peak {
    let mut peak = Peak::default();
    while !stop.load(Ordering::Relaxed) {
        if let Some(rss) = status_field(pid, "VmRSS") {
            peak.rss_kib = peak.rss_kib.max(rss);
        }
        if let Some(threads) = status_field(pid, "Threads") {
            peak.threads = peak.threads.max(threads);
        }
        thread::sleep(SAMPLE_EVERY);
    }
    peak
}
