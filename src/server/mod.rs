//! Wiring: the listening socket, the front end (listener thread, queue, workers), and graceful
//! shutdown on SIGTERM / SIGINT; SIGHUP reloads.

mod notify;

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use log::{info, warn};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::listen::{self, Front, FrontSettings};
use crate::load::Load;
use crate::proxy::Proxy;

/// Settings for serving.
#[derive(Debug, Clone, Copy)]
pub struct ServeSettings {
    /// The front end's limits.
    pub front: FrontSettings,
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
        if let Err(err) = listen::widen_backlog(&tcp) {
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
        let load = Arc::clone(&proxy.load);
        let front = Front::new(proxy, settings.front, crate::relay::worker::run)?;
        let listener_front = Arc::clone(&front);
        let tcp = self.tcp;
        thread::Builder::new()
            .name("listener".into())
            .spawn(move || listen::run(listener_front, tcp))?;
        // The socket has been listening since bind: connections are accepted from now on.
        notify::notify("READY=1");

        let first = signals.forever().find(|signal| {
            if *signal == SIGHUP {
                notify::notify(&notify::reloading());
                reload();
                notify::notify("READY=1");
                return false;
            }
            true
        });
        notify::notify("STOPPING=1");
        info!(
            "signal {} received: no new connections; waiting up to {}s for {} request(s) in flight",
            first.unwrap_or_default(),
            settings.shutdown_grace.as_secs(),
            load.in_flight()
        );
        front.stop();
        thread::spawn(move || {
            if signals.forever().any(|signal| signal != SIGHUP) {
                warn!("second signal: exiting now");
                std::process::exit(1);
            }
        });
        if wait_until_idle(&load, settings.shutdown_grace) {
            info!("all requests finished; exiting");
        } else {
            warn!(
                "grace period over with {} request(s) unfinished; exiting",
                load.in_flight()
            );
        }
        Ok(())
    }
}

/// Waits until no request is in flight, twice in a row 50 ms apart (a head can be completing
/// as the first check runs), or until `grace` runs out.
fn wait_until_idle(load: &Load, grace: Duration) -> bool {
    let deadline = Instant::now() + grace;
    let mut quiet_checks = 0;
    while Instant::now() < deadline {
        quiet_checks = if load.in_flight() == 0 {
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
