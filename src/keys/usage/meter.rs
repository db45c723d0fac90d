//! Reading an answer's usage as it is relayed, without parsing the answer: the bytes pass
//! through untouched, and only the small `"usage…":{…}` objects they hold are copied (at most
//! [`SNIPPET`] bytes each, the last two kept: a stream reports usage in its final event, and
//! Anthropic in its first and last). Nothing else of the answer is kept, so a thousand streams
//! cost a thousand empty meters.

use super::tokens::Tokens;
use crate::keys::affinity::Dialect;
use crate::scan::find_bytes_by;

/// Largest usage object copied.
const SNIPPET: usize = 1024;

/// What starts a usage object: `"usage"` and Gemini's `"usageMetadata"` alike.
const NEEDLE: &[u8] = b"\"usage";

/// The needle's rarest byte, `g`, jumped between (an answer holds a quote every few bytes).
const RARE: usize = 4;

/// Watches an answer's bytes for its usage.
pub struct UsageMeter {
    dialect: Dialect,
    /// The last two usage objects (or what of them arrived): the one before, and the last
    /// (being copied while `open`). Empty until one is found; a third reuses the first's buffer.
    older: Vec<u8>,
    newer: Vec<u8>,
    /// The snippet being copied, until its object closes: the brace depth reached (0 before
    /// its first brace), and whether the copy is inside a string.
    open: Option<Open>,
    /// The end of the previous piece, in case the needle straddles two reads (its length in
    /// `carried`): a fixed array, so a read costs no allocation.
    carry: [u8; NEEDLE.len() - 1],
    carried: usize,
}

#[derive(Default)]
struct Open {
    /// Past the colon after the name (the name's own quotes come first).
    valued: bool,
    depth: u32,
    in_string: bool,
    escaped: bool,
}

impl Open {
    /// Takes one more byte; true when the value has ended with it.
    fn step(&mut self, b: u8) -> bool {
        if !self.valued {
            self.valued = b == b':';
            return false;
        }
        if self.in_string {
            match (self.escaped, b) {
                (true, _) => self.escaped = false,
                (false, b'\\') => self.escaped = true,
                (false, b'"') => self.in_string = false,
                _ => {}
            }
            return false;
        }
        match b {
            b'"' => self.in_string = true,
            b'{' => self.depth += 1,
            b'}' if self.depth <= 1 => return true,
            b'}' => self.depth -= 1,
            // `"usage":null`, or a value that is no object: nothing more to read.
            b',' | b']' if self.depth == 0 => return true,
            _ => {}
        }
        false
    }
}

impl UsageMeter {
    /// A meter for an answer in `dialect`'s shapes.
    pub fn new(dialect: Dialect) -> UsageMeter {
        UsageMeter {
            dialect,
            older: Vec::new(),
            newer: Vec::new(),
            open: None,
            carry: [0; NEEDLE.len() - 1],
            carried: 0,
        }
    }

    /// Looks at the next piece of the answer.
    pub fn see(&mut self, bytes: &[u8]) {
        let mut at = 0;
        // A needle split between the pieces before and this one: it starts in `carry`.
        if self.open.is_none() && self.carried > 0 {
            const TAIL: usize = NEEDLE.len() - 1;
            let head = bytes.len().min(TAIL);
            let mut window = [0u8; 2 * TAIL];
            window[..self.carried].copy_from_slice(&self.carry[..self.carried]);
            window[self.carried..self.carried + head].copy_from_slice(&bytes[..head]);
            let window = &window[..self.carried + head];
            let straddling = (0..self.carried).find(|&pos| window[pos..].starts_with(NEEDLE));
            if let Some(pos) = straddling {
                // Its first part is in `carry`; the copy goes on from this piece's start.
                self.start(&NEEDLE[..self.carried - pos]);
            } else if head < TAIL {
                // A piece shorter than the needle holds none of its own, but may be the middle
                // of one: the carry grows by it.
                let keep = window.len().min(TAIL);
                let mut tail = [0u8; TAIL];
                tail[..keep].copy_from_slice(&window[window.len() - keep..]);
                self.carry = tail;
                self.carried = keep;
                return;
            }
        }
        self.carried = 0;
        while at < bytes.len() {
            if self.open.is_some() {
                at += self.copy(&bytes[at..]);
                continue;
            }
            match find_bytes_by(&bytes[at..], NEEDLE, RARE) {
                Some(pos) => {
                    self.start(&[]);
                    at += pos;
                }
                None => {
                    let keep = (NEEDLE.len() - 1).min(bytes.len() - at);
                    self.carry[..keep].copy_from_slice(&bytes[bytes.len() - keep..]);
                    self.carried = keep;
                    return;
                }
            }
        }
    }

    fn start(&mut self, prefix: &[u8]) {
        std::mem::swap(&mut self.older, &mut self.newer);
        self.newer.clear();
        self.newer.reserve(128);
        self.newer.extend_from_slice(prefix);
        self.open = Some(Open::default());
    }

    /// Copies bytes into the open snippet until its value ends (or the snippet is full);
    /// returns how many were taken.
    fn copy(&mut self, bytes: &[u8]) -> usize {
        let Some(open) = self.open.as_mut() else {
            return bytes.len();
        };
        let snippet = &mut self.newer;
        // Where the value ends (or the snippet fills up) first, then one copy.
        let room = SNIPPET.saturating_sub(snippet.len());
        let within = bytes.len().min(room);
        let (taken, closed) = match bytes[..within].iter().position(|&b| open.step(b)) {
            Some(end) => (end + 1, true),
            None => (within, within == room),
        };
        snippet.extend_from_slice(&bytes[..taken]);
        if closed {
            self.open = None;
        }
        taken
    }

    /// The usage the answer reported, if it reported any.
    pub fn finish(&self) -> Option<Tokens> {
        [&self.older, &self.newer]
            .into_iter()
            .filter(|snippet| !snippet.is_empty())
            .filter_map(|snippet| Tokens::from_snippet(self.dialect, snippet))
            .reduce(Tokens::merge)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metered(dialect: Dialect, pieces: &[&str]) -> Option<Tokens> {
        let mut meter = UsageMeter::new(dialect);
        for piece in pieces {
            meter.see(piece.as_bytes());
        }
        meter.finish()
    }

    #[test]
    fn a_plain_answer_and_a_stream_split_anywhere() {
        let answer = r#"{"id":"chatcmpl-1","choices":[{"message":{"content":"the usage of tools"}}],"usage":{"prompt_tokens":12,"completion_tokens":3,"prompt_tokens_details":{"cached_tokens":8}}}"#;
        let want = Some(Tokens {
            input: 12,
            cached: 8,
            output: 3,
            reasoning: 0,
        });
        for split in 0..answer.len() {
            let (a, b) = answer.split_at(split);
            assert_eq!(metered(Dialect::OpenAi, &[a, b]), want, "split at {split}");
        }
        // Pieces shorter than the needle: `"usage` spread over three or more reads.
        for size in 1..=8 {
            let pieces: Vec<&str> = (0..answer.len())
                .step_by(size)
                .map(|at| &answer[at..(at + size).min(answer.len())])
                .collect();
            assert_eq!(metered(Dialect::OpenAi, &pieces), want, "pieces of {size}");
        }
        let stream = [
            "data: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":10,\"cache_read_input_tokens\":90,\"output_tokens\":1}}}\n\n",
            "data: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"hi\"}}\n\n",
            "data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":42}}\n\n",
        ];
        assert_eq!(
            metered(Dialect::Anthropic, &stream),
            Some(Tokens {
                input: 100,
                cached: 90,
                output: 42,
                reasoning: 0
            })
        );
        // A usage object longer than SNIPPET is cut there, wherever the pieces split it.
        let long = format!(
            r#"{{"usage":{{"prompt_tokens":5,"x":"{}","completion_tokens":2}}}}"#,
            "a".repeat(2 * SNIPPET)
        );
        for size in [1, 7, 100, SNIPPET, long.len()] {
            let pieces: Vec<&str> = (0..long.len())
                .step_by(size)
                .map(|at| &long[at..(at + size).min(long.len())])
                .collect();
            let mut meter = UsageMeter::new(Dialect::OpenAi);
            pieces.iter().for_each(|piece| meter.see(piece.as_bytes()));
            assert_eq!(
                [&meter.older, &meter.newer]
                    .map(|s| s.len())
                    .into_iter()
                    .max(),
                Some(SNIPPET),
                "pieces of {size}"
            );
            assert_eq!(
                meter.finish().map(|t| (t.input, t.output)),
                Some((5, 0)),
                "pieces of {size}"
            );
        }
        assert_eq!(metered(Dialect::OpenAi, &[r#"{"usage":null,"x":1}"#]), None);
        assert_eq!(
            metered(Dialect::OpenAi, &["data: {\"choices\":[]}\n\n"]),
            None
        );
    }
}
