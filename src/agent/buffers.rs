//! The two buffers of one upstream connection, allocated zeroed by the allocator when the
//! connection opens: pages nobody writes stay untouched, so a stream whose head and events are
//! small costs a few pages, not the whole size (ureq's own buffers write every byte of both).

use ureq::unversioned::transport::Buffers;

/// Below this much free room ureq reads a request body into the input buffer's free part
/// (ureq's own `MIN_TMP_SIZE`).
const MIN_TMP_ROOM: usize = 10 * 1024;

/// Output (a whole request head) and input (response bytes, consumed from the front).
#[derive(Debug)]
pub(super) struct LinkBuffers {
    output: Vec<u8>,
    input: Vec<u8>,
    filled: usize,
    consumed: usize,
    /// Whether the last consume took bytes: unconsumed input is only worth parsing again then.
    progress: bool,
}

impl LinkBuffers {
    pub(super) fn new(input_size: usize, output_size: usize) -> LinkBuffers {
        LinkBuffers {
            output: vec![0; output_size],
            input: vec![0; input_size],
            filled: 0,
            consumed: 0,
            progress: false,
        }
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
        &mut self.output
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
        (&mut self.input[self.filled..], &mut self.output)
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
    fn body_scratch_is_at_least_ten_kib() {
        let mut b = LinkBuffers::new(4 * 1024, 64);
        let (tmp, out) = b.tmp_and_output();
        assert!(tmp.len() >= MIN_TMP_ROOM);
        assert_eq!(out.len(), 64);
    }
}
