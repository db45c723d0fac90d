//! The link from the guards to tiny_http: a few long-lived Unix-socket connections into
//! tiny_http's listener, over which guards send requests they have already checked and
//! normalised. Few and long-lived, so tiny_http's per-connection thread pool never meets a
//! burst of new connections.

use std::io::{self, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The set of links.
pub struct Bridge {
    path: PathBuf,
    links: Vec<Mutex<Option<UnixStream>>>,
}

impl Bridge {
    /// Prepares `count` links to the Unix socket at `path` (connected on first use).
    pub fn new(path: &Path, count: usize) -> Bridge {
        Bridge {
            path: path.to_path_buf(),
            links: (0..count.max(1)).map(|_| Mutex::new(None)).collect(),
        }
    }

    /// Sends one complete request (`head` then `body`) on the link chosen by `conn_id`, whole,
    /// so requests from different clients never interleave on a link.
    pub fn send(&self, conn_id: u64, head: &[u8], body: &[u8]) -> io::Result<()> {
        let slot = &self.links[(conn_id as usize) % self.links.len()];
        let mut link = slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for attempt in 0..2 {
            if link.is_none() {
                let stream = UnixStream::connect(&self.path)?;
                // keyrelay never reads tiny_http's side of the link: workers answer on the
                // client socket. Shutting our read side makes tiny_http's own writes fail fast
                // instead of filling a buffer nobody drains.
                let _ = stream.shutdown(Shutdown::Read);
                *link = Some(stream);
            }
            let stream = link.as_mut().expect("link connected above");
            match stream.write_all(head).and_then(|_| stream.write_all(body)) {
                Ok(()) => return Ok(()),
                // A broken link is replaced once; a request only half-written on it was not
                // delivered, so sending it whole on a fresh link is safe.
                Err(err) if attempt == 0 => {
                    log::warn!("internal link to tiny_http failed ({err}); reconnecting");
                    *link = None;
                }
                Err(err) => return Err(err),
            }
        }
        unreachable!("the loop returns on its second attempt")
    }
}
