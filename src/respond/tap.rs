//! The reader an upstream answer is relayed through: it shows every piece to the answer's
//! watchers (the ids it names, the usage it reports) before the piece is written to the client.

use std::io::{self, Read};

use crate::keys::affinity::AnswerWatch;
use crate::keys::usage::{Metered, Tokens};

/// `inner`, watched.
pub struct Tapped<R> {
    inner: R,
    watch: Option<AnswerWatch>,
    metered: Option<Box<Metered>>,
}

impl<R: Read> Tapped<R> {
    /// `inner`, shown to `watch` and `metered` where there are.
    pub fn new(inner: R, watch: Option<AnswerWatch>, metered: Option<Box<Metered>>) -> Tapped<R> {
        Tapped {
            inner,
            watch,
            metered,
        }
    }

    /// The usage the answer reported (counted for its key), once it has been read.
    pub fn usage(&mut self) -> Option<Tokens> {
        self.metered.take().and_then(|metered| metered.finish())
    }
}

impl<R: Read> Read for Tapped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(watch) = &mut self.watch {
            watch.see(&buf[..n]);
            if watch.done() {
                self.watch = None; // seen enough: the rest passes untouched
            }
        }
        if let Some(metered) = &mut self.metered {
            metered.see(&buf[..n]);
        }
        Ok(n)
    }
}
