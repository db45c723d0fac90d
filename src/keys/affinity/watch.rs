//! Learning from an answer while it is relayed: the first [`WINDOW`] bytes of a successful
//! answer are looked at as they pass (a plain JSON answer names its object at the top, a
//! Responses stream in its first event), and every id found is recorded for the key that got
//! the answer before those bytes are written to the client. The relay is never held up: the
//! look happens between the upstream read and the client write, on bytes already in memory,
//! and keeps no copy of them beyond the JSON string it is in the middle of.

use std::sync::Arc;
use std::time::Instant;

use super::{Affinity, Kind, Outcome};
use crate::scan::{find_byte, find_either};

/// How much of an answer is looked at.
pub const WINDOW: usize = 64 * 1024;

/// Longest string kept while looking for its end: an id is never longer.
const LONGEST: usize = 258;

/// Learns ids from an answer's first bytes for one key. It holds only the string being read
/// (at most [`LONGEST`] bytes), not the answer: a thousand streams cost a thousand small
/// buffers.
pub struct AnswerWatch {
    affinity: Arc<Affinity>,
    key: u64,
    /// Stored chat completions are ids too (the request asked `store: true`).
    stored: bool,
    /// Bytes looked at so far.
    seen: usize,
    /// Inside a JSON string (after its opening quote).
    in_string: bool,
    /// The previous byte was a backslash inside the string.
    escape_next: bool,
    /// The string holds an escape or is too long: it names no id.
    spoiled: bool,
    /// The string so far.
    current: Vec<u8>,
    /// A string that has ended, waiting for the next byte that is not white space: a colon
    /// makes it a member's name (no id), anything else a value to look at. (Its buffer and
    /// `current` swap, so strings cost no allocation each.)
    pending: Vec<u8>,
    has_pending: bool,
}

impl AnswerWatch {
    /// A watch that credits what it finds to the key with id `key`.
    pub fn new(affinity: Arc<Affinity>, key: u64, stored: bool) -> AnswerWatch {
        AnswerWatch {
            affinity,
            key,
            stored,
            seen: 0,
            in_string: false,
            escape_next: false,
            spoiled: false,
            current: Vec::new(),
            pending: Vec::new(),
            has_pending: false,
        }
    }

    /// Whether the watch has looked at all it will.
    pub fn done(&self) -> bool {
        self.seen >= WINDOW
    }

    /// Looks at the next bytes of the answer.
    pub fn see(&mut self, bytes: &[u8]) {
        let bytes = &bytes[..bytes.len().min(WINDOW.saturating_sub(self.seen))];
        self.seen += bytes.len();
        let mut found: Vec<String> = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            if !self.in_string {
                if self.has_pending {
                    let Some(next) = bytes[at..].iter().position(|b| !b.is_ascii_whitespace())
                    else {
                        break;
                    };
                    self.has_pending = false;
                    if bytes[at + next] != b':'
                        && let Some(id) = self
                            .affinity
                            .dialect
                            .answer_ids_raw(&self.pending, self.stored)
                    {
                        found.push(id.to_string());
                    }
                }
                let Some(open) = find_byte(&bytes[at..], b'"') else {
                    break;
                };
                at += open + 1;
                self.in_string = true;
                self.spoiled = false;
                self.current.clear();
                continue;
            }
            if self.escape_next {
                self.escape_next = false;
                at += 1;
                continue;
            }
            let rest = &bytes[at..];
            let stop = find_either(rest, b'"', b'\\');
            let piece = &rest[..stop.unwrap_or(rest.len())];
            if self.current.len() + piece.len() > LONGEST {
                self.spoiled = true;
            } else if !self.spoiled {
                self.current.extend_from_slice(piece);
            }
            let Some(stop) = stop else { break };
            at += stop + 1;
            if rest[stop] == b'\\' {
                self.escape_next = true;
                self.spoiled = true;
                continue;
            }
            self.in_string = false;
            if !self.spoiled {
                // Looked at once the next byte shows whether it is a value.
                std::mem::swap(&mut self.pending, &mut self.current);
                self.has_pending = true;
            }
        }
        if found.is_empty() {
            return;
        }
        let news = self
            .affinity
            .learn(found.iter().map(String::as_str), self.key, Instant::now());
        self.affinity
            .count_n(Kind::Resource, Outcome::Learned, news);
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
        let event = b"data: {\"type\":\"response.created\",\"response\":{\"id\":\"resp_abc123def456\",\"status\":\"in_progress\"}}\n\n";
        let (a, b) = event.split_at(52); // inside the id
        watch.see(a);
        assert_eq!(affinity.sizes().0, 0);
        watch.see(b);
        let ids = affinity.ids(Instant::now());
        assert_eq!(ids.len(), 1);
        assert_eq!((&*ids[0].0, ids[0].1.key), ("resp_abc123def456", 7));
    }

    #[test]
    fn escaped_and_overlong_strings_name_nothing_and_the_window_ends() {
        let affinity = Arc::new(Affinity::new(Dialect::OpenAi, Duration::from_secs(60)));
        let mut watch = AnswerWatch::new(Arc::clone(&affinity), 1, false);
        let long = format!("file-{}", "x".repeat(400));
        let body = format!(r#"{{"a":"file-esc\"aped1","b":"{long}","c":"file-plain001"}}"#);
        for byte in body.as_bytes() {
            watch.see(std::slice::from_ref(byte)); // one byte per read, the worst split
        }
        let ids: Vec<String> = affinity
            .ids(Instant::now())
            .into_iter()
            .map(|e| e.0.to_string())
            .collect();
        assert_eq!(ids, ["file-plain001"]);
        let mut late = AnswerWatch::new(Arc::clone(&affinity), 1, false);
        late.see(&vec![b' '; WINDOW]);
        assert!(late.done());
        late.see(br#"{"id":"file-toolate01"}"#);
        assert_eq!(affinity.sizes().0, 1);
    }
}
