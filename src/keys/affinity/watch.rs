//! Learning from an answer while it is relayed: the first [`WINDOW`] bytes of a successful
//! answer are looked at as they pass (a plain JSON answer names its object at the top, a
//! Responses stream in its first event), and every id found is recorded for the key that got
//! the answer before those bytes are written to the client. The relay is never held up: the
//! look happens between the upstream read and the client write, on bytes already in memory.

use std::io::{self, Read};
use std::sync::Arc;
use std::time::Instant;

use super::{Affinity, Kind, Outcome};

/// How much of an answer is looked at.
pub const WINDOW: usize = 64 * 1024;

/// Learns ids from an answer's first bytes for one key.
pub struct AnswerWatch {
    affinity: Arc<Affinity>,
    key: u64,
    /// Stored chat completions are ids too (the request asked `store: true`).
    stored: bool,
    window: Vec<u8>,
    /// Where the next string to look at may start.
    scanned: usize,
}

impl AnswerWatch {
    /// A watch that credits what it finds to the key with id `key`.
    pub fn new(affinity: Arc<Affinity>, key: u64, stored: bool) -> AnswerWatch {
        AnswerWatch {
            affinity,
            key,
            stored,
            window: Vec::new(),
            scanned: 0,
        }
    }

    /// Looks at the next bytes of the answer.
    pub fn see(&mut self, bytes: &[u8]) {
        let room = WINDOW - self.window.len();
        if room == 0 || bytes.is_empty() {
            return;
        }
        self.window
            .extend_from_slice(&bytes[..bytes.len().min(room)]);
        let (found, scanned) = complete_strings(&self.window, self.scanned);
        self.scanned = scanned;
        let dialect = self.affinity.dialect;
        let stored = self.stored;
        let ids = found
            .into_iter()
            .filter_map(|(from, to)| dialect.answer_ids_raw(&self.window[from..to], stored));
        let news = self.affinity.learn(ids, self.key, Instant::now());
        for _ in 0..news {
            self.affinity.count(Kind::Resource, Outcome::Learned);
        }
    }
}

/// The spans of the complete, unescaped JSON strings in `bytes` from `from` on, and where the
/// next look should start (at an unfinished string's opening quote, or the end).
fn complete_strings(bytes: &[u8], from: usize) -> (Vec<(usize, usize)>, usize) {
    let mut spans = Vec::new();
    let mut at = from;
    loop {
        let Some(open) = bytes[at..].iter().position(|&b| b == b'"').map(|p| at + p) else {
            return (spans, bytes.len());
        };
        let mut end = open + 1;
        let mut escaped = false;
        let close = loop {
            match bytes.get(end) {
                None => return (spans, open),
                Some(b'"') => break end,
                Some(b'\\') => {
                    escaped = true;
                    end += 2;
                }
                Some(_) => end += 1,
            }
        };
        if !escaped {
            spans.push((open + 1, close));
        }
        at = close + 1;
    }
}

/// A reader that shows everything it reads to an [`AnswerWatch`] first.
pub struct Tapped<R> {
    inner: R,
    watch: Option<AnswerWatch>,
}

impl<R: Read> Tapped<R> {
    /// `inner`, watched by `watch` when there is one.
    pub fn new(inner: R, watch: Option<AnswerWatch>) -> Tapped<R> {
        Tapped { inner, watch }
    }
}

impl<R: Read> Read for Tapped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(watch) = &mut self.watch {
            watch.see(&buf[..n]);
            if watch.window.len() >= WINDOW {
                self.watch = None; // seen enough: the rest passes untouched
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::affinity::Dialect;
    use std::time::Duration;

    #[test]
    fn ids_split_across_reads_are_learned_once_complete() {
        let affinity = Arc::new(Affinity::new(Dialect::OpenAi, Duration::from_secs(60)));
        let mut watch = AnswerWatch::new(Arc::clone(&affinity), 7, false);
        let event = b"data: {\"type\":\"response.created\",\"response\":{\"id\":\"resp_abc123\",\"status\":\"in_progress\"}}\n\n";
        let (a, b) = event.split_at(52); // inside the id
        watch.see(a);
        assert_eq!(affinity.sizes(Instant::now()).0, 0);
        watch.see(b);
        let ids = affinity.ids(Instant::now());
        assert_eq!(ids.len(), 1);
        assert_eq!((ids[0].0.as_str(), ids[0].1.key), ("resp_abc123", 7));
    }

    #[test]
    fn spans_skip_escaped_strings() {
        let (spans, next) = complete_strings(br#"{"a":"x\"y","b":"unfin"#, 0);
        assert_eq!(spans, vec![(2, 3), (13, 14)]);
        assert_eq!(next, 16);
    }
}
