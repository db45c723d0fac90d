//! Wiring: the public listener and its guards, tiny_http behind them on a private Unix socket,
//! the fixed worker pool, and graceful shutdown on SIGTERM / SIGINT.

use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixListener;
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Sender};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::{error, info, warn};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::acceptor;
use crate::bridge::{Bridge, PROBE_HEADER};
use crate::client_conn::Registry;
use crate::forward::{self, Progress};
use crate::guard::{CONN_HEADER, GuardContext};
use crate::proxy::Proxy;
use crate::stream::RelayBuffer;

/// Stack size of a worker: address space only (untouched pages cost no memory), sized for a
/// TLS handshake with the upstream, which the plain-HTTP tests never exercise.
const WORKER_STACK: usize = 1024 * 1024;

/// Internal links from the guards into tiny_http. tiny_http hands over one request per link at
/// a time, so links are what lets requests from different clients overlap; an idle link costs
/// one parked thread.
const LINKS: usize = 8;

/// Settings for serving.
#[derive(Debug, Clone, Copy)]
pub struct ServeSettings {
    /// Worker threads.
    pub workers: usize,
    /// Longest wait for in-flight requests on shutdown.
    pub shutdown_grace: Duration,
}

/// A bound, not yet serving, listener.
pub struct Listener {
    tcp: TcpListener,
    addr: SocketAddr,
    signals: Signals,
}

impl Listener {
    /// Binds `addr`. Signal handlers are installed first: once the port accepts connections, a
    /// SIGHUP or SIGTERM must reach keyrelay's handlers, not the default action (which for
    /// SIGHUP is to exit).
    pub fn bind(addr: SocketAddr) -> io::Result<Listener> {
        let signals = Signals::new([SIGTERM, SIGINT, SIGHUP])?;
        let tcp = TcpListener::bind(addr)?;
        if let Err(err) = acceptor::widen_backlog(&tcp) {
            warn!(
                "cannot raise the listen backlog ({err}); bursts of over 128 new connections may wait 1 s"
            );
        }
        let addr = tcp.local_addr()?;
        Ok(Listener { tcp, addr, signals })
    }

    /// The address actually bound (the port is chosen here when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until SIGTERM or SIGINT, then drains in-flight requests (bounded by the grace
    /// period) and returns. A second signal exits at once. SIGHUP calls `reload`.
    pub fn serve(
        self,
        proxy: Arc<Proxy>,
        settings: ServeSettings,
        reload: impl Fn(),
    ) -> io::Result<()> {
        let mut signals = self.signals;
        let socket_dir = private_dir()?;
        let socket_path = socket_dir.join("tiny_http.sock");
        let tiny = tiny_http::Server::from_listener(UnixListener::bind(&socket_path)?, None)
            .map_err(|e| io::Error::other(e.to_string()))?;
        let tiny = Arc::new(tiny);
        let registry = &proxy.registry;
        let (probe_acks, acks) = mpsc::channel();
        for index in 0..settings.workers {
            let (tiny, proxy) = (Arc::clone(&tiny), Arc::clone(&proxy));
            let probe_acks = probe_acks.clone();
            thread::Builder::new()
                .name(format!("worker-{index}"))
                .stack_size(WORKER_STACK)
                .spawn(move || work(&tiny, &proxy, &probe_acks))?;
        }
        let bridge = Bridge::new(&socket_path, LINKS);
        bridge.connect_all(&acks).map_err(|err| {
            io::Error::new(
                err.kind(),
                format!("cannot open the internal links to tiny_http: {err} (raise ulimit -n?)"),
            )
        })?;
        let stopping = Arc::new(AtomicBool::new(false));
        let ctx = Arc::new(GuardContext {
            bridge,
            stopping: Arc::clone(&stopping),
            proxy: Arc::clone(&proxy),
        });
        let acceptor = thread::Builder::new()
            .name("acceptor".into())
            .spawn(move || acceptor::run(self.tcp, ctx))?;

        let first = signals.forever().find(|signal| {
            if *signal == SIGHUP {
                reload();
                return false;
            }
            true
        });
        info!(
            "signal {} received: no new connections; waiting up to {}s for {} request(s) in flight",
            first.unwrap_or_default(),
            settings.shutdown_grace.as_secs(),
            registry.busy()
        );
        stopping.store(true, Ordering::SeqCst);
        thread::spawn(move || {
            if signals.forever().any(|signal| signal != SIGHUP) {
                warn!("second signal: exiting now");
                std::process::exit(1);
            }
        });
        acceptor::wake(self.addr);
        // The acceptor closes the listener when it sees `stopping`; if the wake-up connection
        // could not be made, it does so on the next connection, and the drain goes on anyway.
        drop(acceptor);
        let drained = wait_until_idle(registry, settings.shutdown_grace);
        let _ = std::fs::remove_dir_all(&socket_dir);
        if drained {
            info!("all requests finished; exiting");
        } else {
            warn!(
                "grace period over with {} request(s) unfinished; exiting",
                registry.busy()
            );
        }
        Ok(())
    }
}

/// Waits until nothing is being received or answered, twice in a row 50 ms apart (a request
/// can be between a guard and a worker for an instant), or until `grace` runs out.
fn wait_until_idle(registry: &Registry, grace: Duration) -> bool {
    let deadline = Instant::now() + grace;
    let mut quiet_checks = 0;
    while Instant::now() < deadline {
        quiet_checks = if registry.busy() == 0 {
            quiet_checks + 1
        } else {
            0
        };
        if quiet_checks >= 2 {
            return true;
        }
        thread::sleep(Duration::from_millis(50));
    }
    false
}

/// A directory only this user can enter, for the internal socket.
fn private_dir() -> io::Result<PathBuf> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = std::env::temp_dir().join(format!("keyrelay-{}-{nanos:08x}", std::process::id()));
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    Ok(dir)
}

/// One worker: takes requests from tiny_http and answers each on its client connection.
fn work(tiny: &tiny_http::Server, proxy: &Proxy, probe_acks: &Sender<usize>) {
    let registry = &proxy.registry;
    let mut buffer = RelayBuffer::default();
    while let Ok(request) = tiny.recv() {
        let probe = request
            .headers()
            .iter()
            .find(|h| h.field.equiv(PROBE_HEADER))
            .and_then(|h| h.value.as_str().parse::<usize>().ok());
        if let Some(link) = probe {
            drop(request.into_writer());
            let _ = probe_acks.send(link);
            continue;
        }
        let conn = request
            .headers()
            .iter()
            .find(|h| h.field.equiv(CONN_HEADER))
            .and_then(|h| h.value.as_str().parse::<u64>().ok())
            .and_then(|id| registry.get(id));
        let Some(conn) = conn else {
            // Only guards write to tiny_http, and they always name a registered connection.
            error!("a request reached a worker without its connection; dropped");
            drop(request.into_writer());
            continue;
        };
        let _busy = proxy.metrics.worker_busy();
        let mut progress = Progress::default();
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
            forward::handle(proxy, request, &conn, &mut buffer, &mut progress);
        }));
        if outcome.is_err() && !progress.answered {
            if progress.started {
                // Part of an answer may be out; the only honest ending is to close.
                let _ = conn.tcp.shutdown(Shutdown::Both);
            } else {
                forward::answer_internal_error(&conn);
            }
            error!(
                "a request handler panicked; its client got a 500 or a closed connection, the worker goes on"
            );
        }
        if !progress.answered {
            registry.request_done(&conn);
        }
    }
}
