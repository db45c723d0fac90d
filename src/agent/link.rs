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
pub(super) struct LinkConnector {
    /// See [`Link::silence_tick`].
    pub(super) silence_tick: Option<Duration>,
}

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
            write_waited: Duration::ZERO,
            silence_tick: self.silence_tick,
            heard: Instant::now(),
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
    /// Time spent blocked in writes since the upstream last sent something: a request's body
    /// may wait for the upstream to read this long in total (the per-write limit), however the
    /// waits are split between writes.
    write_waited: Duration,
    /// Silence on a body is reported every this long, so a stream can send heartbeats (see
    /// [`SILENT`]); `None`: no reports.
    silence_tick: Option<Duration>,
    /// When the upstream last sent something, for the silence limit across reports.
    heard: Instant,
}

/// The error kind a body read returns when the upstream has been silent for a heartbeat
/// interval but not yet for the silence limit: nothing is wrong, read again.
pub const SILENT: io::ErrorKind = io::ErrorKind::WouldBlock;

/// The time left for an operation, or the timeout error if none is.
fn time_left(timeout: NextTimeout) -> Result<Option<Duration>, Error> {
    if timeout.after.is_zero() {
        return Err(Error::Timeout(timeout.reason));
    }
    Ok(timeout.not_zero().map(|t| *t))
}

impl Link {
    /// Sends the output ureq handed over, if any. The per-write timeout bounds the time spent
    /// blocked in total since the upstream last answered, not each write: an upstream that
    /// takes a little now and then cannot stretch it.
    fn send_unsent(&mut self, timeout: NextTimeout) -> Result<(), Error> {
        if self.buffers.unsent().is_empty() {
            return Ok(());
        }
        let timeout = timeout.for_write();
        let left = time_left(timeout)?;
        let stream = &*self.stream;
        let mut unsent = self.buffers.unsent();
        let result = loop {
            if unsent.is_empty() {
                break Ok(());
            }
            let budget = match left {
                Some(total) => match total.checked_sub(self.write_waited) {
                    Some(rest) if !rest.is_zero() => Some(rest),
                    _ => break Err(Error::Timeout(timeout.reason)),
                },
                None => None,
            };
            if let Err(e) = update_timeout(&mut self.write_timeout, budget, |t| {
                stream.set_write_timeout(t)
            }) {
                break Err(e.into());
            }
            let started = Instant::now();
            let wrote = (&*self.stream).write(unsent);
            self.write_waited += started.elapsed();
            match wrote {
                Ok(0) => break Err(io::Error::from(io::ErrorKind::WriteZero).into()),
                Ok(n) => unsent = &unsent[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(failure(e, timeout.reason)),
            }
        };
        self.buffers.mark_sent();
        result
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
        // The phase, before the per-read limit renames the timeout (the agent configures a
        // body timeout so that body reads are told apart).
        let on_body = timeout.reason == Timeout::RecvBody;
        let timeout = timeout.for_read();
        let limit = time_left(timeout)?;
        let started = Instant::now();
        // A body's silence counts from what the upstream last sent; anything else's from now.
        let since = if on_body { self.heard } else { started };
        let stream = &*self.stream;
        let read = loop {
            // The socket waits at most one heartbeat interval at a time (so its timeout, once
            // set, stays the same from one read to the next), and at most what is left.
            let rest = limit.map(|l| l.saturating_sub(since.elapsed()));
            if rest.is_some_and(|r| r.is_zero()) {
                return Err(Error::Timeout(timeout.reason));
            }
            let slice = match (self.silence_tick, rest) {
                (Some(tick), Some(rest)) => Some(tick.min(rest)),
                (Some(tick), None) => Some(tick),
                (None, rest) => rest,
            };
            update_timeout(&mut self.read_timeout, slice, |t| {
                stream.set_read_timeout(t)
            })?;
            match (&*self.stream).read(self.buffers.input_append_buf()) {
                // A signal interrupts a read with a socket timeout even under SA_RESTART: the
                // loop reads again for what is left, so signals cannot extend it.
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // A slice ended in silence: a body reports it (the relay may send a
                // heartbeat); anything else waits on until the limit.
                Err(e) if timed_out(&e) && slice != rest => {
                    if on_body {
                        return Err(io::Error::from(SILENT).into());
                    }
                }
                other => break other,
            }
        };
        let amount = read.map_err(|e| failure(e, timeout.reason))?;
        self.buffers.input_appended(amount);
        self.just_read = true;
        self.heard = Instant::now();
        self.write_waited = Duration::ZERO;
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
