//! Resource figures of a running process read from /proc (Linux): resident memory, threads and
//! open file descriptors, for tests that prove the proxy gives back what hostile clients took.

use std::fmt;
use std::thread;
use std::time::{Duration, Instant};

/// One reading of a process's resources.
#[derive(Clone, Copy, Debug)]
pub struct Usage {
    /// Resident memory now (VmRSS), KiB.
    pub rss_kib: u64,
    /// Peak resident memory so far (VmHWM), KiB.
    pub hwm_kib: u64,
    /// Threads (`Threads:`).
    pub threads: u64,
    /// Entries of /proc/<pid>/fd.
    pub fds: usize,
}

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "VmRSS={} KiB VmHWM={} KiB threads={} fds={}",
            self.rss_kib, self.hwm_kib, self.threads, self.fds
        )
    }
}

/// Reads the current figures of `pid`; panics if the process is gone.
pub fn usage(pid: u32) -> Usage {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    Usage {
        rss_kib: status_field(&status, "VmRSS:"),
        hwm_kib: status_field(&status, "VmHWM:"),
        threads: status_field(&status, "Threads:"),
        fds: open_fds(pid),
    }
}

/// Number of open file descriptors of `pid`.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("list /proc/{pid}/fd: {e}"))
        .count()
}

fn status_field(status: &str, name: &str) -> u64 {
    status
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no numeric {name} line in /proc status"))
}

/// A baseline taken once the thread and descriptor counts have held still for three readings
/// 100 ms apart (a connection closing a moment ago may still hold a thread), or after `timeout`.
pub fn settled(pid: u32, timeout: Duration) -> Usage {
    let deadline = Instant::now() + timeout;
    let mut last = usage(pid);
    let mut same = 0;
    while same < 3 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
        let now = usage(pid);
        same = if (now.threads, now.fds) == (last.threads, last.fds) {
            same + 1
        } else {
            0
        };
        last = now;
    }
    last
}

/// Polls until `pid` has at most `margin` more threads and descriptors than `base`, or until
/// `timeout`; returns whether that held and the last reading.
pub fn wait_back_to(pid: u32, base: Usage, margin: u64, timeout: Duration) -> (bool, Usage) {
    let deadline = Instant::now() + timeout;
    loop {
        let now = usage(pid);
        let back =
            now.threads <= base.threads + margin && now.fds as u64 <= base.fds as u64 + margin;
        if back || Instant::now() > deadline {
            return (back, now);
        }
        thread::sleep(Duration::from_millis(50));
    }
}
