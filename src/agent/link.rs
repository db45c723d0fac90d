//! The plain TCP connection to an upstream, as ureq's connector chain sees it (TLS, when the
//! upstream is https, is layered on top by ureq's rustls connector). It does what ureq's own
//! TCP connector does, with less work per request: a pooled connection is checked with one
//! non-blocking peek (ureq's makes three system calls, twice per request), a timeout is set on
//! the socket only when it changes, a request's head and body go out in one send (ureq sends
//! each part as it is written; they leave when ureq turns to wait for the answer), and the
//! buffers are [`LinkBuffers`].

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, Either, NextTimeout, ShutdownHandle, Transport,
};
use ureq::{Error, Timeout};

use super::buffers::LinkBuffers;

/// Opens upstream TCP connections (unless an earlier connector, e.g. a CONNECT proxy, already
/// opened one).
#[derive(Debug)]
pub(super) struct LinkConnector;

impl<In: Transport> Connector<In> for LinkConnector {
    type Out = Either<In, Link>;

    fn connect(
        &self,
        details: &ConnectionDetails,
        chained: Option<In>,
    ) -> Result<Option<Self::Out>, Error> {
        if let Some(earlier) = chained {
            return Ok(Some(Either::A(earlier)));
        }
        let stream = connect_any(&details.addrs[..], details.timeout)?;
        stream.set_nodelay(true)?;
        let stream = Arc::new(stream);
        (details.register_shutdown)(Arc::downgrade(&stream) as Weak<dyn ShutdownHandle>)?;
        let config = details.config;
        Ok(Some(Either::B(Link {
            stream,
            buffers: LinkBuffers::new(config.input_buffer_size(), config.output_buffer_size()),
            read_timeout: None,
            write_timeout: None,
            just_read: false,
        })))
    }
}

/// Tries the resolved addresses in order; each gets half of the time left (the last one all of
/// it), so one unreachable address cannot use up the whole connect budget.
fn connect_any(addrs: &[SocketAddr], timeout: NextTimeout) -> Result<TcpStream, Error> {
    let started = Instant::now();
    let budget = timeout.not_zero().map(|t| *t);
    let mut last = None;
    for (i, addr) in addrs.iter().enumerate() {
        let left = budget.map(|b| b.saturating_sub(started.elapsed()));
        let this = match left {
            Some(left) if left.is_zero() => break,
            Some(left) if i + 1 < addrs.len() => Some(left / 2),
            other => other,
        };
        let attempt = match this {
            Some(t) => TcpStream::connect_timeout(addr, t.max(Duration::from_millis(10))),
            None => TcpStream::connect(addr),
        };
        match attempt {
            Ok(stream) => return Ok(stream),
            Err(e) if timed_out(&e) => last = Some(Error::Timeout(timeout.reason)),
            Err(e) if addrs.len() > i + 1 && concerns_this_address(&e) => last = Some(e.into()),
            Err(e) => return Err(e.into()),
        }
    }
    Err(last.unwrap_or_else(|| {
        if addrs.is_empty() {
            io::Error::new(io::ErrorKind::ConnectionRefused, "no address to connect to").into()
        } else {
            // The budget ran out before the next address was tried.
            Error::Timeout(timeout.reason)
        }
    }))
}

/// Errors after which the next resolved address may still work (ureq's rule: refused, or no
/// route for this address family).
fn concerns_this_address(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
            | io::ErrorKind::NetworkDown
            | io::ErrorKind::AddrNotAvailable
    )
}

/// A socket timeout expired (Linux reports it as EAGAIN).
fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
    )
}

/// An I/O error as ureq's error: an expired socket timeout is the timeout `reason`.
fn failure(e: io::Error, reason: Timeout) -> Error {
    if timed_out(&e) {
        Error::Timeout(reason)
    } else {
        e.into()
    }
}

/// One upstream TCP connection.
pub(super) struct Link {
    /// Shared (weakly) with ureq's shutdown registry, which may shut it down mid-call.
    stream: Arc<TcpStream>,
    buffers: LinkBuffers,
    /// The socket's current timeouts, so that an unchanged one costs no system call.
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
    /// Set by a read, cleared by the next probe: see [`Link::is_open`].
    just_read: bool,
}

/// The time left for an operation, or the timeout error if none is.
fn time_left(timeout: NextTimeout) -> Result<Option<Duration>, Error> {
    if timeout.after.is_zero() {
        return Err(Error::Timeout(timeout.reason));
    }
    Ok(timeout.not_zero().map(|t| *t))
}

impl Link {
    /// Sends the output ureq handed over, if any.
    fn send_unsent(&mut self, timeout: NextTimeout) -> Result<(), Error> {
        if self.buffers.unsent().is_empty() {
            return Ok(());
        }
        let timeout = timeout.for_write();
        let left = time_left(timeout)?;
        let stream = &*self.stream;
        update_timeout(&mut self.write_timeout, left, |t| {
            stream.set_write_timeout(t)
        })?;
        let sent = (&*self.stream).write_all(self.buffers.unsent());
        self.buffers.mark_sent();
        sent.map_err(|e| failure(e, timeout.reason))
    }
}

/// Names the peer only: the buffers hold request heads, and with them the key.
impl fmt::Debug for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Link")
            .field("peer", &self.stream.peer_addr().ok())
            .finish_non_exhaustive()
    }
}

/// Sets a socket timeout unless it already has that value.
fn update_timeout(
    current: &mut Option<Duration>,
    wanted: Option<Duration>,
    set: impl FnOnce(Option<Duration>) -> io::Result<()>,
) -> io::Result<()> {
    if *current != wanted {
        set(wanted)?;
        *current = wanted;
    }
    Ok(())
}

impl Transport for Link {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.buffers
    }

    /// ureq skips waiting when the input already holds what it needs (e.g. an answer that came
    /// with a 100 Continue): what it handed over must go out then too, before the next request.
    fn maybe_await_input(&mut self, timeout: NextTimeout) -> Result<bool, Error> {
        self.send_unsent(timeout)?;
        if self.buffers.can_use_input() {
            return Ok(true);
        }
        self.await_input(timeout)
    }

    /// Takes what ureq wrote; it is sent together with what follows it, when ureq next waits
    /// for input, or now if it fills half the buffer.
    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), Error> {
        self.buffers.hand_over(amount);
        if self.buffers.unsent_is_large() {
            self.send_unsent(timeout)?;
        }
        Ok(())
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, Error> {
        // Everything ureq handed over goes before waiting for the answer to it.
        self.send_unsent(timeout)?;
        let timeout = timeout.for_read();
        let left = time_left(timeout)?;
        let stream = &*self.stream;
        update_timeout(&mut self.read_timeout, left, |t| stream.set_read_timeout(t))?;
        let started = Instant::now();
        let read_timeout = &mut self.read_timeout;
        let room = self.buffers.input_append_buf();
        let read = loop {
            match (&*self.stream).read(room) {
                // A signal interrupts a read with a socket timeout even under SA_RESTART: read
                // again for what is left of the timeout, so signals cannot extend it.
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    if let Some(total) = left {
                        let rest = total.saturating_sub(started.elapsed());
                        if rest.is_zero() {
                            return Err(Error::Timeout(timeout.reason));
                        }
                        update_timeout(read_timeout, Some(rest), |t| stream.set_read_timeout(t))?;
                    }
                }
                other => break other,
            }
        };
        let amount = read.map_err(|e| failure(e, timeout.reason))?;
        self.buffers.input_appended(amount);
        self.just_read = true;
        Ok(amount > 0)
    }

    /// Whether a pooled connection may be used again: nothing to read yet (bytes the upstream
    /// sent unasked, or its close, mean no). ureq asks twice per request: as the connection
    /// goes back to its pool, the moment its answer has been read, and as the next request takes
    /// it out. Only the second look can see what the upstream did meanwhile, and it sees
    /// everything the first would have, so the first costs no system call.
    fn is_open(&mut self) -> bool {
        if !self.buffers.unsent().is_empty() {
            // Bytes of a request not sent: the connection is mid-request, never reusable.
            return false;
        }
        if std::mem::take(&mut self.just_read) {
            return true;
        }
        let mut byte = 0u8;
        // SAFETY: a one-byte peek into a live local; the fd is owned by `self.stream`.
        let got = unsafe {
            libc::recv(
                self.stream.as_raw_fd(),
                (&raw mut byte).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        got < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock
    }
}
