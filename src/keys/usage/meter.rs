//! Reading an answer's usage as it is relayed, without parsing the answer: the bytes pass
//! through untouched, and only the small `"usage…":{…}` objects they hold are copied (at most
//! [`SNIPPET`] bytes each, the last two kept: a stream reports usage in its final event, and
//! Anthropic in its first and last). Nothing else of the answer is kept, so a thousand streams
//! cost a thousand empty meters.

use super::tokens::Tokens;
use crate::keys::affinity::Dialect;
use crate::scan::find_quoted;

/// Largest usage object copied.
const SNIPPET: usize = 1024;

/// What starts a usage object: `"usage"` and Gemini's `"usageMetadata"` alike.
const NEEDLE: &[u8] = b"\"usage";

/// Watches an answer's bytes for its usage.
pub struct UsageMeter {
    dialect: Dialect,
    /// The last two usage objects (or what of them arrived), oldest first.
    snippets: Vec<Vec<u8>>,
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
            snippets: Vec::new(),
            open: None,
            carry: [0; NEEDLE.len() - 1],
            carried: 0,
        }
    }

    /// Looks at the next piece of the answer.
    pub fn see(&mut self, bytes: &[u8]) {
        let mut at = 0;
        // A needle split between the last piece and this one: it starts in `carry`.
        if self.open.is_none() && self.carried > 0 {
            let carried = &self.carry[..self.carried];
            let straddling = (0..carried.len()).find(|&pos| {
                let (in_carry, rest) = NEEDLE.split_at(carried.len() - pos);
                carried[pos..] == *in_carry && bytes.starts_with(rest)
            });
            if let Some(pos) = straddling {
                // Its first part is in `carry`; the copy goes on from this piece's start.
                let from_carry = self.carried - pos;
                self.start(&NEEDLE[..from_carry]);
            }
        }
        self.carried = 0;
        while at < bytes.len() {
            if self.open.is_some() {
                at += self.copy(&bytes[at..]);
                continue;
            }
            match find_quoted(&bytes[at..], NEEDLE) {
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
        if self.snippets.len() == 2 {
            self.snippets.remove(0);
        }
        let mut snippet = Vec::with_capacity(128);
        snippet.extend_from_slice(prefix);
        self.snippets.push(snippet);
        self.open = Some(Open::default());
    }

    /// Copies bytes into the open snippet until its value ends (or the snippet is full);
    /// returns how many were taken.
    fn copy(&mut self, bytes: &[u8]) -> usize {
        let (Some(open), Some(snippet)) = (self.open.as_mut(), self.snippets.last_mut()) else {
            return bytes.len();
        };
        for (i, &b) in bytes.iter().enumerate() {
            snippet.push(b);
            if open.step(b) || snippet.len() >= SNIPPET {
                self.open = None;
                return i + 1;
            }
        }
        bytes.len()
    }

    /// The usage the answer reported, if it reported any.
    pub fn finish(&self) -> Option<Tokens> {
        self.snippets
            .iter()
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
        assert_eq!(metered(Dialect::OpenAi, &[r#"{"usage":null,"x":1}"#]), None);
        assert_eq!(
            metered(Dialect::OpenAi, &["data: {\"choices\":[]}\n\n"]),
            None
        );
    }
}
