//! The listener thread: accepts connections and owns every connection that is idle, sending a
//! head, or being answered by keyrelay itself. Heads are read without blocking and checked;
//! keyrelay's own pages are answered here; a complete proxied request goes to the work queue.
//! A tick closes idle connections, cuts off stalled heads and takes back queued requests that
//! waited too long or whose client left.

use std::collections::HashMap;
use std::io;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use log::{error, warn};

use super::answer::{self, Own};
use super::conn::{AfterWrite, Conn, LINGER, LINGER_BYTES, Phase};
use super::head::parse_head;
use super::poller::{Interest, Poller, Ready};
use super::queue::{Job, WorkQueue};
use super::socket::{peers_gone, recv_now, send_now};
use crate::error::ProxyError;
use crate::proxy::Proxy;
use crate::respond::stream::RelayBuffer;

/// How often the listener checks clocks: idle connections, stalled heads, the queue.
const TICK: Duration = Duration::from_millis(250);

/// Send timeout of a client socket: a worker's blocked write wakes this often to check the
/// client's overall time to take an answer piece.
pub const WRITE_TICK: Duration = Duration::from_millis(500);

/// Pause after an accept error such as EMFILE; the pending connection waits in the backlog.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Most connections accepted per readiness event, so a flood cannot starve the others.
const ACCEPT_BATCH: usize = 256;

/// Token of the listening socket.
const LISTEN_TOKEN: u64 = 0;

/// Bytes taken per read: a head in a few turns at most, little of a queued body held.
pub(crate) const READ_SIZE: usize = 16 * 1024;

/// Settings of the front end.
#[derive(Debug, Clone, Copy)]
pub struct FrontSettings {
    /// Most worker threads.
    pub workers: usize,
    /// Most open client connections; more are closed at once.
    pub max_connections: usize,
    /// Longest a request waits for a worker before a 503.
    pub queue_timeout: Duration,
}

/// What a worker thread runs: take jobs from [`Front::queue`] until the process exits.
pub type WorkerLoop = fn(&Front);

/// Stack size of a worker: address space only (untouched pages cost no memory), sized for a
/// TLS handshake with the upstream, which the plain-HTTP tests never exercise.
const WORKER_STACK: usize = 1024 * 1024;

/// What the listener and the workers share.
pub struct Front {
    pub(crate) poller: Poller,
    /// Connections the listener watches, by token.
    parked: Mutex<HashMap<u64, Conn>>,
    pub(crate) queue: WorkQueue,
    pub(crate) proxy: Arc<Proxy>,
    /// Set on SIGTERM: no new connections, idle ones close, answers end with `close`.
    pub(crate) stopping: AtomicBool,
    settings: FrontSettings,
    worker: WorkerLoop,
}

impl Front {
    /// A front end for `proxy` whose worker threads run `worker`.
    pub fn new(
        proxy: Arc<Proxy>,
        settings: FrontSettings,
        worker: WorkerLoop,
    ) -> io::Result<Arc<Front>> {
        Ok(Arc::new(Front {
            poller: Poller::new()?,
            parked: Mutex::new(HashMap::new()),
            queue: WorkQueue::new(settings.workers, Arc::clone(&proxy.load)),
            proxy,
            stopping: AtomicBool::new(false),
            settings,
            worker,
        }))
    }

    /// Starts shutting down: the listener closes the port and the idle connections.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    fn parked(&self) -> MutexGuard<'_, HashMap<u64, Conn>> {
        self.parked.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands `conn` to the listener, to be woken when it can `interest`.
    pub(crate) fn park(&self, mut conn: Conn, interest: Interest) {
        conn.active_at = Instant::now();
        let (fd, token) = (conn.tcp.as_raw_fd(), conn.token);
        self.parked().insert(token, conn);
        // Inserted before arming: the event can only come once it is findable.
        if self.poller.rearm(fd, token, interest).is_err() {
            self.parked().remove(&token);
        }
    }

    /// Hands back a connection whose answer was a refusal: shut the write side, then linger.
    pub(crate) fn linger(&self, mut conn: Conn) {
        let _ = conn.tcp.shutdown(Shutdown::Write);
        conn.phase = Phase::Lingering {
            until: Instant::now() + LINGER,
            drained: 0,
        };
        self.park(conn, Interest::Read);
    }

    /// Queues a request, starting a worker when none is idle.
    fn enqueue(self: &Arc<Front>, job: Job) {
        self.proxy.load.request_started();
        if self.queue.push(job) {
            let front = Arc::clone(self);
            let worker = self.worker;
            let spawned = std::thread::Builder::new()
                .name("worker".into())
                .stack_size(WORKER_STACK)
                .spawn(move || worker(&front));
            if let Err(err) = spawned {
                self.queue.spawn_failed();
                warn!(
                    "cannot start a worker thread: {err}; the queued request waits for a busy one"
                );
            }
        }
    }
}

/// Rate-limits a repeated warning to one line per 10 s.
#[derive(Default)]
struct Throttle(Option<Instant>);

impl Throttle {
    fn ready(&mut self) -> bool {
        let ready = self
            .0
            .is_none_or(|at| at.elapsed() > Duration::from_secs(10));
        if ready {
            self.0 = Some(Instant::now());
        }
        ready
    }
}

/// The listener thread's own state.
struct Listener {
    front: Arc<Front>,
    tcp: Option<TcpListener>,
    scratch: Box<[u8]>,
    /// Reused for every answer the listener renders itself.
    relay: RelayBuffer,
    next_token: u64,
    accept_paused_until: Option<Instant>,
    accept_warning: Throttle,
    limit_warning: Throttle,
}

/// Runs the listener on `tcp` until the process exits.
pub fn run(front: Arc<Front>, tcp: TcpListener) {
    if let Err(err) = tcp.set_nonblocking(true).and_then(|_| {
        front
            .poller
            .add(tcp.as_raw_fd(), LISTEN_TOKEN, Interest::Read)
    }) {
        error!("cannot watch the listening socket: {err}; no connections will be accepted");
        return;
    }
    let mut listener = Listener {
        front,
        tcp: Some(tcp),
        scratch: vec![0; READ_SIZE].into_boxed_slice(),
        relay: RelayBuffer::default(),
        next_token: LISTEN_TOKEN + 1,
        accept_paused_until: None,
        accept_warning: Throttle::default(),
        limit_warning: Throttle::default(),
    };
    let mut events: Vec<Ready> = Vec::with_capacity(256);
    let mut last_tick = Instant::now();
    loop {
        let timeout = if listener.accept_paused_until.is_some() {
            ACCEPT_BACKOFF
        } else {
            TICK
        };
        if let Err(err) = listener
            .front
            .poller
            .wait(&mut events, timeout.as_millis() as i32)
        {
            error!("waiting for connections failed: {err}");
            std::thread::sleep(ACCEPT_BACKOFF);
        }
        for ready in &events {
            // A bug while handling one connection costs that connection, never the listener.
            let handled = panic::catch_unwind(AssertUnwindSafe(|| {
                if ready.token == LISTEN_TOKEN {
                    listener.accept();
                } else {
                    listener.on_ready(ready.token);
                }
            }));
            if handled.is_err() {
                error!(
                    "the listener panicked on one connection; it was dropped, the listener goes on"
                );
                if ready.token == LISTEN_TOKEN {
                    listener.arm_accept();
                }
            }
        }
        if let Some(until) = listener.accept_paused_until
            && Instant::now() >= until
        {
            listener.accept_paused_until = None;
            listener.arm_accept();
        }
        if last_tick.elapsed() >= TICK {
            last_tick = Instant::now();
            if panic::catch_unwind(AssertUnwindSafe(|| listener.tick())).is_err() {
                error!("the listener panicked in its clock tick; it goes on");
            }
        }
    }
}

impl Listener {
    fn arm_accept(&self) {
        if let Some(tcp) = &self.tcp {
            let _ = self
                .front
                .poller
                .rearm(tcp.as_raw_fd(), LISTEN_TOKEN, Interest::Read);
        }
    }

    fn accept(&mut self) {
        for _ in 0..ACCEPT_BATCH {
            let Some(tcp) = &self.tcp else { return };
            match tcp.accept() {
                Ok((stream, _)) => self.admit(stream),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err)
                    if matches!(
                        err.kind(),
                        io::ErrorKind::ConnectionAborted | io::ErrorKind::Interrupted
                    ) => {}
                Err(err) => {
                    let exhausted = matches!(
                        err.raw_os_error(),
                        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                    );
                    if !exhausted {
                        error!("accept failed: {err}");
                    } else if self.accept_warning.ready() {
                        warn!(
                            "cannot accept connections: {err}; retrying until descriptors free up (raise LimitNOFILE / ulimit -n)"
                        );
                    }
                    self.accept_paused_until = Some(Instant::now() + ACCEPT_BACKOFF);
                    return;
                }
            }
        }
        self.arm_accept();
    }

    fn admit(&mut self, tcp: TcpStream) {
        let open = self.front.proxy.load.connections();
        let max = self.front.settings.max_connections;
        if open >= max {
            if self.limit_warning.ready() {
                warn!(
                    "MAX_CONNECTIONS ({max}) reached: closing new connections at once until some close (raise MAX_CONNECTIONS, and the open-file limit with it)"
                );
            }
            return;
        }
        let idle = self.front.proxy.limits.client_timeout;
        let setup = tcp
            .set_nodelay(true)
            .and_then(|_| tcp.set_read_timeout(Some(idle)))
            .and_then(|_| tcp.set_write_timeout(Some(WRITE_TICK)));
        if setup.is_err() {
            return;
        }
        let token = self.next_token;
        self.next_token += 1;
        let fd = tcp.as_raw_fd();
        let conn = Conn::new(tcp, token, &self.front.proxy.load);
        self.front.parked().insert(token, conn);
        if self.front.poller.add(fd, token, Interest::Read).is_err() {
            self.front.parked().remove(&token);
        }
    }

    fn on_ready(&mut self, token: u64) {
        let Some(conn) = self.front.parked().remove(&token) else {
            return;
        };
        match conn.phase {
            Phase::Reading => self.read(conn),
            Phase::Writing { .. } => self.write(conn),
            Phase::Lingering { .. } => self.drain(conn),
        }
    }

    /// Takes one read of what the client sent (the socket stays ready if there is more, so a
    /// head larger than one read comes in a few turns, and a queued request holds at most one
    /// read of its body), then acts on complete heads.
    fn read(&mut self, mut conn: Conn) {
        loop {
            match recv_now(&conn.tcp, &mut self.scratch) {
                // The client closed; a half-close counts as leaving too, as for nginx.
                Ok(0) => return,
                Ok(n) => {
                    conn.buf.extend_from_slice(&self.scratch[..n]);
                    conn.active_at = Instant::now();
                    break;
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
        self.advance(conn);
    }

    /// Acts on what `conn.buf` holds: answers keyrelay's own pages (as many as are pipelined),
    /// queues a proxied request, refuses a bad head, or waits for more bytes.
    fn advance(&mut self, mut conn: Conn) {
        loop {
            let own = match parse_head(&conn.buf) {
                Ok(Some(head)) => {
                    conn.head_started = None;
                    let limit = self.front.proxy.limits.max_body_bytes;
                    if head.content_length.is_some_and(|len| len > limit) {
                        let error = ProxyError::BodyTooLarge { limit };
                        answer::refusal(
                            &self.front.proxy,
                            &error,
                            Some((&conn.buf, &head)),
                            Duration::ZERO,
                            &mut self.relay,
                        )
                    } else if answer::is_own_page(&head) {
                        let stopping = self.front.is_stopping();
                        let own = answer::page(
                            &self.front.proxy,
                            &conn,
                            &head,
                            stopping,
                            &mut self.relay,
                        );
                        conn.consume(head.len);
                        own
                    } else {
                        let queued_at = Instant::now();
                        self.front.enqueue(Job {
                            conn,
                            head,
                            queued_at,
                        });
                        return;
                    }
                }
                Ok(None) => {
                    conn.head_started = if conn.buf.is_empty() {
                        None
                    } else {
                        Some(conn.head_started.unwrap_or_else(Instant::now))
                    };
                    self.front.park(conn, Interest::Read);
                    return;
                }
                Err(error) => answer::refusal(
                    &self.front.proxy,
                    &ProxyError::Http(error),
                    None,
                    Duration::ZERO,
                    &mut self.relay,
                ),
            };
            conn.phase = Phase::Writing {
                out: own.bytes,
                sent: 0,
                then: own.then,
            };
            match self.progress_write(conn) {
                // Answered in full: go on with what the client pipelined behind it.
                Some(next) => conn = next,
                None => return,
            }
        }
    }

    /// Sends an answer of the listener's own on a connection taken out of the map or queue.
    fn send(&mut self, mut conn: Conn, own: Own) {
        conn.phase = Phase::Writing {
            out: own.bytes,
            sent: 0,
            then: own.then,
        };
        self.write(conn);
    }

    fn write(&mut self, conn: Conn) {
        if let Some(conn) = self.progress_write(conn) {
            self.advance(conn);
        }
    }

    /// Writes as much of the pending answer as fits. Returns the connection when the answer is
    /// out and it goes on reading; otherwise parks it (more to write, or lingering) or closes.
    fn progress_write(&mut self, mut conn: Conn) -> Option<Conn> {
        let Phase::Writing { out, sent, then } = &mut conn.phase else {
            return Some(conn);
        };
        while *sent < out.len() {
            match send_now(&conn.tcp, &out[*sent..]) {
                Ok(n) => *sent += n,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    self.front.park(conn, Interest::Write);
                    return None;
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return None,
            }
        }
        match *then {
            AfterWrite::Continue => {
                conn.phase = Phase::Reading;
                (!self.front.is_stopping()).then_some(conn)
            }
            AfterWrite::Linger => {
                self.front.linger(conn);
                None
            }
        }
    }

    /// Reads and discards what a refused client still sends, until it closes.
    fn drain(&mut self, mut conn: Conn) {
        let Phase::Lingering { drained, .. } = &mut conn.phase else {
            return;
        };
        loop {
            match recv_now(&conn.tcp, &mut self.scratch) {
                Ok(0) => return,
                Ok(n) => {
                    *drained += n;
                    if *drained > LINGER_BYTES {
                        return;
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
        self.front.park(conn, Interest::Read);
    }

    /// The clock's work: on shutdown close the port; close idle connections, refuse stalled
    /// heads (408), give up on clients that do not take an answer, end lingering closes; take
    /// back queued requests that waited too long (503) or whose client left.
    fn tick(&mut self) {
        let now = Instant::now();
        let stopping = self.front.is_stopping();
        if stopping && self.tcp.take().is_some() {
            log::debug!("listening socket closed");
        }
        let idle = self.front.proxy.limits.client_timeout;
        let mut stalled = Vec::new();
        {
            let mut parked = self.front.parked();
            parked.retain(|_, conn| match &conn.phase {
                Phase::Reading if conn.buf.is_empty() => {
                    !stopping && now.duration_since(conn.active_at) < idle
                }
                Phase::Reading => {
                    let late = conn
                        .head_started
                        .is_some_and(|at| now.duration_since(at) > idle)
                        || now.duration_since(conn.active_at) >= idle;
                    if late {
                        stalled.push(conn.token);
                    }
                    true
                }
                Phase::Writing { .. } => now.duration_since(conn.active_at) < idle,
                Phase::Lingering { until, .. } => now < *until,
            });
        }
        for token in stalled {
            let conn = self.front.parked().remove(&token);
            if let Some(conn) = conn {
                let own = answer::refusal(
                    &self.front.proxy,
                    &ProxyError::ClientTimeout,
                    None,
                    Duration::ZERO,
                    &mut self.relay,
                );
                self.send(conn, own);
            }
        }
        let cutoff = now.checked_sub(self.front.settings.queue_timeout);
        let taken = self.front.queue.take_back(cutoff.unwrap_or(now), |jobs| {
            let sockets: Vec<&TcpStream> = jobs.iter().map(|job| &job.conn.tcp).collect();
            peers_gone(&sockets)
        });
        for (job, gone) in taken {
            self.front.proxy.load.request_done();
            let waited = job.queued_at.elapsed();
            self.front.proxy.metrics.record_queue_wait(waited);
            if gone {
                answer::log_gone_while_queued(&self.front.proxy, &job.conn.buf, &job.head, waited);
                continue;
            }
            let error = ProxyError::Overloaded {
                workers: self.front.settings.workers,
                waited_secs: waited.as_secs(),
            };
            let own = answer::refusal(
                &self.front.proxy,
                &error,
                Some((&job.conn.buf, &job.head)),
                waited,
                &mut self.relay,
            );
            self.send(job.conn, own);
        }
    }
}
