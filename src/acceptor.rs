//! The accept loop: takes client connections off the listening socket, gives each its own guard
//! thread at once (no shared pool to starve), and survives running out of file descriptors by
//! backing off until some are free again.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use log::{error, warn};

use crate::guard::{self, GuardContext, TICK};

/// Stack size of a guard thread: it parses heads and copies bytes, nothing deep.
const GUARD_STACK: usize = 256 * 1024;

/// Pause after an accept error such as EMFILE before trying again; the pending connection waits
/// in the kernel's backlog meanwhile.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Accepts connections until `ctx.stopping` is set (then wake it with [`wake`]).
pub fn run(listener: TcpListener, ctx: Arc<GuardContext>) {
    let mut last_warning: Option<Instant> = None;
    loop {
        let accepted = listener.accept();
        if ctx.stopping.load(Ordering::SeqCst) {
            return;
        }
        match accepted {
            Ok((tcp, peer)) => start_guard(&ctx, tcp, peer),
            Err(err) => {
                let exhausted = matches!(
                    err.raw_os_error(),
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                );
                if exhausted {
                    // Rate-limited: under exhaustion this path runs twenty times a second.
                    if last_warning.is_none_or(|at| at.elapsed() > Duration::from_secs(10)) {
                        warn!(
                            "cannot accept connections: {err}; retrying until descriptors free up (raise LimitNOFILE / ulimit -n)"
                        );
                        last_warning = Some(Instant::now());
                    }
                    thread::sleep(ACCEPT_BACKOFF);
                } else if !matches!(
                    err.kind(),
                    io::ErrorKind::ConnectionAborted | io::ErrorKind::Interrupted
                ) {
                    error!("accept failed: {err}");
                    thread::sleep(ACCEPT_BACKOFF);
                }
            }
        }
    }
}

fn start_guard(ctx: &Arc<GuardContext>, tcp: TcpStream, peer: SocketAddr) {
    // Low latency for small SSE events; ticks for idle checks. Blocked writes also wake every
    // tick, so the answer writer can enforce its own overall limit (see ClientConn::writer).
    let setup = tcp
        .set_nodelay(true)
        .and_then(|_| tcp.set_read_timeout(Some(TICK)))
        .and_then(|_| tcp.set_write_timeout(Some(TICK)));
    if let Err(err) = setup {
        warn!("dropping a connection from {peer}: {err}");
        return;
    }
    let conn = ctx.registry().register(tcp, peer);
    let guard_ctx = Arc::clone(ctx);
    let guard_conn = Arc::clone(&conn);
    let spawned = thread::Builder::new()
        .name("guard".into())
        .stack_size(GUARD_STACK)
        .spawn(move || guard::serve(&guard_ctx, guard_conn));
    if let Err(err) = spawned {
        warn!("dropping a connection from {peer}: cannot start a thread: {err}");
        ctx.registry().guard_done(&conn);
    }
}

/// Connections the kernel may queue for `accept()`. std listens with 128, and when more clients
/// connect at once (SDKs reconnecting after a restart) the kernel drops the extra SYNs and
/// those clients wait a full second to retry. The kernel caps it at net.core.somaxconn.
const ACCEPT_BACKLOG: libc::c_int = 4096;

/// Raises the listen backlog of `listener` (already listening) to [`ACCEPT_BACKLOG`].
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

/// Unblocks a thread waiting in `accept()` on `addr` by connecting to it.
pub fn wake(addr: SocketAddr) {
    let target = match addr {
        SocketAddr::V4(v4) if v4.ip().is_unspecified() => {
            SocketAddr::from(([127, 0, 0, 1], v4.port()))
        }
        SocketAddr::V6(v6) if v6.ip().is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, v6.port()))
        }
        other => other,
    };
    let _ = TcpStream::connect_timeout(&target, Duration::from_secs(1));
}
