//! A worker thread: takes a connection whose request head is complete from the queue, serves
//! that request (and any complete one pipelined behind it), then hands the connection back to
//! the listener. A panic in a handler costs that request only.

use std::panic::{self, AssertUnwindSafe};
use std::time::{Duration, Instant};

use log::error;

use super::forward::{self, After, Progress};
use crate::listen::{
    Conn, Front, Interest, Job, Phase, READ_SIZE, log_gone_while_queued, parse_head, peer_gone,
    recv_now, refusal, wait_readable,
};
use crate::respond::stream::RelayBuffer;

/// A request that waited at least this long is checked for a client that left meanwhile.
const GONE_CHECK_AFTER: Duration = Duration::from_millis(1);

/// Gives the worker's slot back if the thread dies of a panic outside a request's handler, so
/// the pool can start a replacement.
struct SlotGuard<'a>(&'a Front);

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            error!("a worker thread died; a new one starts when needed");
            self.0.queue.worker_died();
        }
    }
}

/// Serves queued requests until the process exits.
pub fn run(front: &Front) {
    let _slot = SlotGuard(front);
    let mut buffer = RelayBuffer::default();
    let mut counted = true;
    loop {
        let job = front.queue.take(counted);
        counted = false;
        if let Some(conn) = serve(front, job, &mut buffer) {
            front.queue.returning();
            counted = true;
            front.park(conn, Interest::Read);
        }
    }
}

/// How long a worker waits for the next request on the connection it just answered.
const NEXT_REQUEST_WAIT_MS: i32 = 1;

/// Waits [`NEXT_REQUEST_WAIT_MS`] for the client's next bytes and appends what came. False
/// when the client closed meanwhile.
fn take_next_request(conn: &mut Conn, buffer: &mut RelayBuffer) -> bool {
    if !wait_readable(&conn.tcp, NEXT_REQUEST_WAIT_MS) {
        return true;
    }
    // Read into the worker's relay buffer, then keep only what came: a zeroed array here would
    // touch stack pages in every worker for ever, and growing the connection's buffer to the
    // read size would zero 16 KiB per request.
    let scratch = &mut buffer.scratch()[..READ_SIZE];
    let read = recv_now(&conn.tcp, scratch);
    if let Ok(n) = read {
        conn.buf.extend_from_slice(&scratch[..n]);
    }
    match read {
        Ok(0) => false,
        Ok(_) => true,
        Err(err) => err.kind() == std::io::ErrorKind::WouldBlock,
    }
}

/// Serves the job's request and any complete one behind it; returns the connection when it
/// goes back to the listener to wait for its next request.
fn serve(front: &Front, job: Job, buffer: &mut RelayBuffer) -> Option<Conn> {
    let proxy = &front.proxy;
    let _busy = proxy.metrics.worker_busy();
    let Job {
        mut conn,
        mut head,
        mut queued_at,
    } = job;
    let mut queued = queued_at.elapsed();
    proxy.metrics.record_queue_wait(queued);
    loop {
        if queued >= GONE_CHECK_AFTER && peer_gone(&conn.tcp) {
            proxy.load.request_done();
            log_gone_while_queued(proxy, &conn.buf, &head, queued);
            return None;
        }
        let mut progress = Progress::default();
        let handled = panic::catch_unwind(AssertUnwindSafe(|| {
            forward::handle(
                proxy,
                &mut conn,
                &head,
                (queued_at, queued),
                &front.stopping,
                buffer,
                &mut progress,
            )
        }));
        proxy.load.request_done();
        let after = handled.unwrap_or_else(|_| {
            if !progress.started {
                forward::answer_internal_error(&conn);
            }
            error!(
                "a request handler panicked; its client got a 500 or a closed connection, the worker goes on"
            );
            After::Close
        });
        match after {
            After::Close => return None,
            After::Linger => {
                front.linger(conn);
                return None;
            }
            After::KeepAlive if front.is_stopping() => return None,
            After::KeepAlive => {}
        }
        if conn.buf.is_empty() && proxy.load.queued() == 0 {
            // A busy keep-alive client sends its next request within microseconds of reading
            // the answer: waiting a moment for it here saves two thread hand-offs. Only while no
            // request waits for a worker, and briefly, so idle connections never hold one.
            if !take_next_request(&mut conn, buffer) {
                return None;
            }
        }
        // A complete request already buffered behind this one is served here, in order.
        match parse_head(&conn.buf) {
            Ok(Some(next)) => {
                head = next;
                queued_at = Instant::now();
                queued = Duration::ZERO;
                proxy.load.request_started();
            }
            Err(error) => {
                let own = refusal(proxy, &error.into(), None, Duration::ZERO, buffer);
                let _ = std::io::Write::write_all(&mut &conn.tcp, &own.bytes);
                front.linger(conn);
                return None;
            }
            Ok(None) => {
                conn.head_started = (!conn.buf.is_empty()).then(Instant::now);
                conn.phase = Phase::Reading;
                return Some(conn);
            }
        }
    }
}
