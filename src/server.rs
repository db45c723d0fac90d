//! The listener and the fixed worker pool: tiny_http accepts and parses, N workers take
//! requests from its queue and forward them one at a time.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::thread;

use log::error;

use crate::forward;
use crate::proxy::Proxy;
use crate::stream::RelayBuffer;

/// Stack size of a worker: forwarding needs little, and a thousand workers should cost little.
const WORKER_STACK: usize = 256 * 1024;

/// A bound, not yet serving, listener.
pub struct Listener {
    server: Arc<tiny_http::Server>,
    addr: SocketAddr,
}

impl Listener {
    /// Binds `addr`.
    pub fn bind(addr: SocketAddr) -> io::Result<Listener> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let server = tiny_http::Server::from_listener(listener, None)
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(Listener {
            server: Arc::new(server),
            addr,
        })
    }

    /// The address actually bound (the port is chosen here when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Starts `workers` worker threads and blocks while they serve.
    pub fn serve(self, proxy: Arc<Proxy>, workers: usize) -> io::Result<()> {
        let mut handles = Vec::with_capacity(workers);
        for index in 0..workers {
            let server = Arc::clone(&self.server);
            let proxy = Arc::clone(&proxy);
            let handle = thread::Builder::new()
                .name(format!("worker-{index}"))
                .stack_size(WORKER_STACK)
                .spawn(move || work(&server, &proxy))?;
            handles.push(handle);
        }
        for handle in handles {
            let _ = handle.join();
        }
        Ok(())
    }
}

/// One worker: takes requests until the server shuts down.
fn work(server: &tiny_http::Server, proxy: &Proxy) {
    let mut buffer = RelayBuffer::default();
    while let Ok(request) = server.recv() {
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
            forward::handle(proxy, request, &mut buffer);
        }));
        if outcome.is_err() {
            // The request was dropped while unwinding, which answers it 500; the worker goes on.
            error!("a request handler panicked; the client got a 500 and the worker continues");
        }
    }
}
