//! The link from the guards to tiny_http: a few long-lived Unix-socket connections into
//! tiny_http's listener, over which guards send requests they have already checked and
//! normalised. Few and long-lived, so tiny_http's per-connection thread pool never meets a
//! burst of new connections.

use std::io::{self, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::mpsc::Receiver;
use std::time::Duration;

/// Header of the probe a new link sends through tiny_http; workers acknowledge it.
pub const PROBE_HEADER: &str = "x-keyrelay-link-probe";

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

    /// Connects every link now, one at a time, each confirmed by a probe that a worker received
    /// through it (`acks` yields the probed link index). tiny_http gives each new connection a
    /// thread from a pool that can miscount idle threads when connections arrive together; one
    /// at a time, each confirmed, every link is sure to have its thread.
    pub fn connect_all(&self, acks: &Receiver<usize>) -> io::Result<()> {
        for (index, slot) in self.links.iter().enumerate() {
            let mut stream = UnixStream::connect(&self.path)?;
            let _ = stream.shutdown(Shutdown::Read);
            let probe = format!(
                "GET /__keyrelay_link_probe HTTP/1.1\r\n{PROBE_HEADER}: {index}\r\ncontent-length: 0\r\n\r\n"
            );
            stream.write_all(probe.as_bytes())?;
            *slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(stream);
            let confirmed = acks
                .recv_timeout(Duration::from_secs(2))
                .is_ok_and(|acked| acked == index);
            if !confirmed {
                log::warn!("internal link {index} to tiny_http was not confirmed in time");
            }
        }
        Ok(())
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
            match write_request(stream, head, body) {
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

/// Writes head and body; small bodies go in the same system call as the head.
fn write_request(stream: &mut UnixStream, head: &[u8], body: &[u8]) -> io::Result<()> {
    if body.len() <= 16 * 1024 {
        let mut both = Vec::with_capacity(head.len() + body.len());
        both.extend_from_slice(head);
        both.extend_from_slice(body);
        stream.write_all(&both)
    } else {
        stream.write_all(head)?;
        stream.write_all(body)
    }
}
