//! The few socket calls std does not offer: reads and writes that never block on a socket left
//! in blocking mode (so workers can use it as an ordinary blocking stream), a check for a peer
//! that has gone, the listen backlog, and the open-file limit.

use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;

/// Reads what is there without waiting: `Ok(0)` is end of stream, `WouldBlock` means nothing yet.
pub fn recv_now(tcp: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of its length for the whole call.
    let n = unsafe {
        libc::recv(
            tcp.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Writes what fits without waiting; `WouldBlock` means the send buffer is full.
pub fn send_now(tcp: &TcpStream, bytes: &[u8]) -> io::Result<usize> {
    // SAFETY: `bytes` is valid for reads of its length for the whole call.
    let n = unsafe {
        libc::send(
            tcp.as_raw_fd(),
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// True when the peer has closed or reset the connection, whatever unread bytes remain.
pub fn peer_gone(tcp: &TcpStream) -> bool {
    peers_gone(&[tcp])[0]
}

/// [`peer_gone`] for many sockets in one system call.
pub fn peers_gone(sockets: &[&TcpStream]) -> Vec<bool> {
    let mut fds: Vec<libc::pollfd> = sockets
        .iter()
        .map(|tcp| libc::pollfd {
            fd: tcp.as_raw_fd(),
            events: libc::POLLRDHUP,
            revents: 0,
        })
        .collect();
    // SAFETY: `fds` holds `fds.len()` initialised entries; timeout 0 returns at once.
    let status = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 0) };
    let gone = libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR;
    fds.iter()
        .map(|fd| status > 0 && fd.revents & gone != 0)
        .collect()
}

/// Waits up to `timeout_ms` for bytes (or the end) on `tcp`; true when a read would not block.
pub fn wait_readable(tcp: &TcpStream, timeout_ms: i32) -> bool {
    let mut fd = libc::pollfd {
        fd: tcp.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one initialised pollfd, for the duration of the call.
    let status = unsafe { libc::poll(&mut fd, 1, timeout_ms) };
    status > 0
}

/// Connections the kernel may queue for `accept()`. std listens with 128, and when more clients
/// connect at once (SDKs reconnecting after a restart) the kernel drops the extra SYNs and
/// those clients wait a full second to retry. The kernel caps it at net.core.somaxconn.
const ACCEPT_BACKLOG: libc::c_int = 4096;

/// Raises the listen backlog of `listener` (already listening) to 4,096 (capped by the kernel's
/// net.core.somaxconn).
pub fn widen_backlog(listener: &TcpListener) -> io::Result<()> {
    // SAFETY: listen(2) on a descriptor `listener` owns for the whole call; on a socket that
    // is already listening it only changes the backlog.
    let status = unsafe { libc::listen(listener.as_raw_fd(), ACCEPT_BACKLOG) };
    if status == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Raises the soft open-file limit to the hard one (as Go and nginx's `worker_rlimit_nofile`
/// do: the soft default of 1024 is a relic of select()), and returns the limit now in force.
pub fn raise_fd_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit for getrlimit to fill and setrlimit to read.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit.rlim_cur = limit.rlim_max;
            }
        }
    }
    limit.rlim_cur
}
