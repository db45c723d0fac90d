//! The two buffers of one upstream connection, allocated zeroed by the allocator when the
//! connection opens: pages nobody writes stay untouched, so a stream whose head and events are
//! small costs a few pages, not the whole size (ureq's own buffers write every byte of both).
//! Output ureq has handed over but that is not sent yet stays at the front of the output buffer
//! and ureq writes after it, so a request's head and body leave in one send.

use ureq::unversioned::transport::Buffers;

/// Below this much free room ureq reads a request body into the input buffer's free part
/// (ureq's own `MIN_TMP_SIZE`).
const MIN_TMP_ROOM: usize = 10 * 1024;

/// Output (a whole request head) and input (response bytes, consumed from the front).
pub(super) struct LinkBuffers {
    output: Vec<u8>,
    /// Bytes at the front of `output` handed over for sending but not sent yet.
    unsent: usize,
    input: Vec<u8>,
    filled: usize,
    consumed: usize,
    /// Whether the last consume took bytes: unconsumed input is only worth parsing again then.
    progress: bool,
}

/// Sizes only: the output holds request heads, and with them the key.
impl std::fmt::Debug for LinkBuffers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkBuffers")
            .field("output", &self.output.len())
            .field("unsent", &self.unsent)
            .field("input", &self.input.len())
            .field("unconsumed", &(self.filled - self.consumed))
            .finish()
    }
}

impl LinkBuffers {
    pub(super) fn new(input_size: usize, output_size: usize) -> LinkBuffers {
        LinkBuffers {
            output: vec![0; output_size],
            unsent: 0,
            input: vec![0; input_size],
            filled: 0,
            consumed: 0,
            progress: false,
        }
    }

    /// Marks the next `amount` bytes ureq wrote as handed over for sending.
    pub(super) fn hand_over(&mut self, amount: usize) {
        self.unsent += amount;
        assert!(
            self.unsent <= self.output.len(),
            "handed over more than written"
        );
    }

    /// The output handed over and not sent yet.
    pub(super) fn unsent(&self) -> &[u8] {
        &self.output[..self.unsent]
    }

    /// Whether so much waits that ureq's room to write is getting short: send it now.
    pub(super) fn unsent_is_large(&self) -> bool {
        self.unsent > self.output.len() / 2
    }

    pub(super) fn mark_sent(&mut self) {
        self.unsent = 0;
    }

    /// Moves unconsumed bytes to the front once they are all consumed or past half the buffer.
    fn compact(&mut self) {
        if self.consumed == 0 {
            return;
        }
        if self.consumed == self.filled {
            self.consumed = 0;
            self.filled = 0;
        } else if self.filled > self.input.len() / 2 {
            self.input.copy_within(self.consumed..self.filled, 0);
            self.filled -= self.consumed;
            self.consumed = 0;
        }
    }
}

impl Buffers for LinkBuffers {
    fn output(&mut self) -> &mut [u8] {
        &mut self.output[self.unsent..]
    }

    fn input(&self) -> &[u8] {
        &self.input[self.consumed..self.filled]
    }

    fn input_append_buf(&mut self) -> &mut [u8] {
        self.compact();
        &mut self.input[self.filled..]
    }

    fn input_appended(&mut self, amount: usize) {
        self.filled += amount;
        assert!(self.filled <= self.input.len(), "more input than room");
    }

    fn input_consume(&mut self, amount: usize) {
        self.progress = amount > 0;
        self.consumed += amount;
        assert!(
            self.consumed <= self.filled,
            "consumed more input than read"
        );
    }

    fn tmp_and_output(&mut self) -> (&mut [u8], &mut [u8]) {
        self.compact();
        let free = self.input.len() - self.filled;
        if free < MIN_TMP_ROOM {
            self.input.resize(self.filled + MIN_TMP_ROOM, 0);
        }
        (
            &mut self.input[self.filled..],
            &mut self.output[self.unsent..],
        )
    }

    fn can_use_input(&self) -> bool {
        self.consumed < self.filled && self.progress
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_is_appended_consumed_and_compacted() {
        let mut b = LinkBuffers::new(8, 4);
        b.input_append_buf()[..6].copy_from_slice(b"abcdef");
        b.input_appended(6);
        assert_eq!(b.input(), b"abcdef");
        assert!(
            !b.can_use_input(),
            "nothing consumed yet: ureq must read first"
        );
        b.input_consume(4);
        assert_eq!(b.input(), b"ef");
        assert!(b.can_use_input());
        // 6 filled > half of 8: the two unconsumed bytes move to the front.
        assert_eq!(b.input_append_buf().len(), 6);
        assert_eq!(b.input(), b"ef");
        b.input_consume(2);
        assert_eq!(
            b.input_append_buf().len(),
            8,
            "all consumed: the whole buffer is free"
        );
        assert!(b.input().is_empty());
    }

    #[test]
    fn handed_over_output_stays_in_front_until_sent() {
        let mut b = LinkBuffers::new(16, 8);
        b.output()[..3].copy_from_slice(b"GET");
        b.hand_over(3);
        assert_eq!(b.output().len(), 5, "ureq writes after what waits");
        b.output()[..2].copy_from_slice(b" /");
        b.hand_over(2);
        assert_eq!(b.unsent(), b"GET /");
        assert!(b.unsent_is_large(), "5 of 8 bytes wait");
        b.mark_sent();
        assert_eq!(b.output().len(), 8);
        assert!(b.unsent().is_empty());
    }

    #[test]
    fn body_scratch_is_at_least_ten_kib() {
        let mut b = LinkBuffers::new(4 * 1024, 64);
        let (tmp, out) = b.tmp_and_output();
        assert!(tmp.len() >= MIN_TMP_ROOM);
        assert_eq!(out.len(), 64);
    }
}
