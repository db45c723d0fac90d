//! Readiness through epoll (libc): every client socket is watched one-shot, so one event hands
//! the socket to exactly one owner (the listener) until that owner arms it again.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// What an armed socket waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interest {
    /// Bytes to read, or the peer closing.
    Read,
    /// Room to write.
    Write,
}

impl Interest {
    fn flags(self) -> u32 {
        let wanted = match self {
            Interest::Read => libc::EPOLLIN | libc::EPOLLRDHUP,
            Interest::Write => libc::EPOLLOUT,
        };
        (wanted | libc::EPOLLONESHOT) as u32
    }
}

/// One readiness event: the token the socket was armed with.
#[derive(Debug, Clone, Copy)]
pub struct Ready {
    /// The token given to [`Poller::add`] or [`Poller::rearm`].
    pub token: u64,
}

/// An epoll instance. Arming is thread-safe: workers re-arm the sockets they hand back.
pub struct Poller {
    epoll: OwnedFd,
}

impl Poller {
    /// A new epoll instance.
    pub fn new() -> io::Result<Poller> {
        // SAFETY: epoll_create1 takes no pointers; a non-negative result is a new descriptor
        // that nothing else owns.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by epoll_create1 and is owned by nobody else.
        Ok(Poller {
            epoll: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Starts watching `fd` for `interest`, reporting `token` once.
    pub fn add(&self, fd: RawFd, token: u64, interest: Interest) -> io::Result<()> {
        self.control(libc::EPOLL_CTL_ADD, fd, token, interest)
    }

    /// Arms `fd` (already added) again for one more event.
    pub fn rearm(&self, fd: RawFd, token: u64, interest: Interest) -> io::Result<()> {
        self.control(libc::EPOLL_CTL_MOD, fd, token, interest)
    }

    fn control(
        &self,
        op: libc::c_int,
        fd: RawFd,
        token: u64,
        interest: Interest,
    ) -> io::Result<()> {
        let mut event = libc::epoll_event {
            events: interest.flags(),
            u64: token,
        };
        // SAFETY: `event` lives for the call; epoll copies it. A stale `fd` only makes the
        // call fail.
        let status = unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), op, fd, &mut event) };
        if status < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `timeout_ms` for events and appends them to `out` (cleared first).
    pub fn wait(&self, out: &mut Vec<Ready>, timeout_ms: i32) -> io::Result<()> {
        const BATCH: usize = 256;
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; BATCH];
        out.clear();
        // SAFETY: `events` has room for BATCH entries, which is what the kernel is told.
        let n = unsafe {
            libc::epoll_wait(
                self.epoll.as_raw_fd(),
                events.as_mut_ptr(),
                BATCH as libc::c_int,
                timeout_ms,
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            return if err.kind() == io::ErrorKind::Interrupted {
                Ok(())
            } else {
                Err(err)
            };
        }
        out.extend(events[..n as usize].iter().map(|e| Ready { token: e.u64 }));
        Ok(())
    }
}
