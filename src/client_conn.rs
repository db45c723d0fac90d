//! Client connections as the workers see them: the socket a response is written to, and the
//! count of requests still owed an answer (the guard hands on one request at a time, so at most
//! one writer uses the socket at once).

use std::collections::HashMap;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// One accepted client connection.
pub struct ClientConn {
    /// Registry id, carried to the worker in the forwarded request.
    pub id: u64,
    /// The client socket; workers write responses straight to it.
    pub tcp: TcpStream,
    /// The client's address.
    pub peer: SocketAddr,
    in_flight: AtomicUsize,
    guard_done: AtomicBool,
    answered: (Mutex<()>, Condvar),
}

impl ClientConn {
    /// Blocks until every request forwarded on this connection has been answered. The guard
    /// hands on one request at a time, so pipelined requests cannot pile up on workers, and its
    /// own refusals never overtake an answer.
    pub fn wait_until_answered(&self) {
        if self.in_flight() == 0 {
            return;
        }
        let (lock, signal) = &self.answered;
        let mut guard = lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        while self.in_flight() > 0 {
            // The timeout only guards against a missed wake-up; answers notify.
            guard = signal
                .wait_timeout(guard, Duration::from_millis(500))
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
    }

    fn notify_answered(&self) {
        let (lock, signal) = &self.answered;
        let _guard = lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        signal.notify_all();
    }

    /// Requests forwarded on this connection and not answered yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// A writer for answers that gives the client `limit` to take each flushed piece. The
    /// socket's own send timeout only bounds one blocked `send`; a client that reads a few
    /// bytes now and then would restart it forever.
    pub fn writer(&self, limit: Duration) -> PacedWriter<'_> {
        PacedWriter {
            tcp: &self.tcp,
            limit,
            piece_started: None,
        }
    }
}

/// See [`ClientConn::writer`].
pub struct PacedWriter<'a> {
    tcp: &'a TcpStream,
    limit: Duration,
    piece_started: Option<Instant>,
}

impl Write for PacedWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let started = *self.piece_started.get_or_insert_with(Instant::now);
        loop {
            if started.elapsed() > self.limit {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client did not take the answer in time",
                ));
            }
            // The socket's send timeout is a short tick: a blocked send returns so the
            // overall limit above can be checked.
            match (&*self.tcp).write(buf) {
                Err(err)
                    if matches!(
                        err.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                other => return other,
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.piece_started = None;
        (&*self.tcp).flush()
    }
}

/// All open client connections, and the number of requests in flight across them.
#[derive(Default)]
pub struct Registry {
    conns: Mutex<HashMap<u64, Arc<ClientConn>>>,
    next_id: AtomicU64,
    in_flight: AtomicUsize,
    receiving: AtomicUsize,
}

/// Marks a request as being received (head read, body still arriving) while it lives.
pub struct Receiving<'a>(&'a AtomicUsize);

impl Drop for Receiving<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Registry {
    fn map(&self) -> MutexGuard<'_, HashMap<u64, Arc<ClientConn>>> {
        self.conns
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a new connection.
    pub fn register(&self, tcp: TcpStream, peer: SocketAddr) -> Arc<ClientConn> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let conn = Arc::new(ClientConn {
            id,
            tcp,
            peer,
            in_flight: AtomicUsize::new(0),
            guard_done: AtomicBool::new(false),
            answered: (Mutex::new(()), Condvar::new()),
        });
        self.map().insert(id, Arc::clone(&conn));
        conn
    }

    /// The connection with `id`, while it is open or owed an answer.
    pub fn get(&self, id: u64) -> Option<Arc<ClientConn>> {
        self.map().get(&id).cloned()
    }

    /// Counts a request handed on for `conn`.
    pub fn request_forwarded(&self, conn: &ClientConn) {
        conn.in_flight.fetch_add(1, Ordering::SeqCst);
        self.in_flight.fetch_add(1, Ordering::SeqCst);
    }

    /// Counts an answered request; forgets the connection once its guard has gone too.
    pub fn request_done(&self, conn: &ClientConn) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        let left = conn.in_flight.fetch_sub(1, Ordering::SeqCst) - 1;
        if left == 0 {
            conn.notify_answered();
            self.forget_if_finished(conn);
        }
    }

    /// The guard stopped reading from `conn`; it is forgotten once no answer is owed.
    pub fn guard_done(&self, conn: &ClientConn) {
        conn.guard_done.store(true, Ordering::SeqCst);
        self.forget_if_finished(conn);
    }

    /// Forgets `conn` when its guard has gone and no answer is owed. Both are read now, in this
    /// order: once the guard has gone nothing is forwarded any more, so an in-flight count of
    /// zero read after it stays zero. (A count read before it may be stale: the guard can hand
    /// on one last request, say a pipelined one with `Connection: close`, between the two.)
    fn forget_if_finished(&self, conn: &ClientConn) {
        if conn.guard_done.load(Ordering::SeqCst) && conn.in_flight.load(Ordering::SeqCst) == 0 {
            self.map().remove(&conn.id);
        }
    }

    /// Counts a request whose head has arrived and whose body is being read, until dropped.
    pub fn receiving(&self) -> Receiving<'_> {
        self.receiving.fetch_add(1, Ordering::SeqCst);
        Receiving(&self.receiving)
    }

    /// Requests being received or owed an answer: what a graceful shutdown waits for.
    pub fn busy(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst) + self.receiving.load(Ordering::SeqCst)
    }

    /// Requests forwarded and not yet answered, over all connections.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Open connections.
    pub fn len(&self) -> usize {
        self.map().len()
    }

    /// True when no connection is open.
    pub fn is_empty(&self) -> bool {
        self.map().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn socket() -> (TcpStream, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        (TcpStream::connect(addr).unwrap(), addr)
    }

    #[test]
    fn connection_outlives_its_guard_while_owed_an_answer() {
        let registry = Registry::default();
        let (tcp, peer) = socket();
        let conn = registry.register(tcp, peer);
        registry.request_forwarded(&conn);
        registry.guard_done(&conn);
        assert!(registry.get(conn.id).is_some(), "still owed an answer");
        assert_eq!(registry.in_flight(), 1);
        registry.request_done(&conn);
        assert!(registry.get(conn.id).is_none());
        assert_eq!(registry.in_flight(), 0);
    }

    #[test]
    fn idle_connection_is_forgotten_when_its_guard_ends() {
        let registry = Registry::default();
        let (tcp, peer) = socket();
        let conn = registry.register(tcp, peer);
        assert_eq!(registry.len(), 1);
        registry.guard_done(&conn);
        assert!(registry.is_empty());
    }
}
