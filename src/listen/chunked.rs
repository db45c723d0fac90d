//! Decoding a chunked request body incrementally, as its bytes arrive, so the worker can bound
//! its size and send the upstream a plain body with a Content-Length.

/// Longest chunk-size line (size, extensions) or trailer line accepted.
const MAX_LINE: usize = 4096;

/// Why a chunked body was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkError {
    /// Not valid chunked framing.
    Malformed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a chunk-size line; `size` so far, `digits` seen, in extensions, line length.
    Size {
        size: u64,
        digits: u32,
        in_ext: bool,
        line: usize,
    },
    /// Expecting the `\n` after the size line's `\r`.
    SizeLf { size: u64 },
    /// Chunk data left to copy.
    Data(u64),
    /// Expecting `\r\n` after chunk data (`seen_cr` once `\r` arrived).
    DataEnd { seen_cr: bool },
    /// Reading trailer lines; `line` is the length of the current one.
    Trailer { line: usize, seen_cr: bool },
    /// The body is complete.
    Done,
}

/// Incremental chunked decoder.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder {
            state: State::Size {
                size: 0,
                digits: 0,
                in_ext: false,
                line: 0,
            },
        }
    }
}

impl ChunkedDecoder {
    /// Decodes from `input`, appending payload to `out`. Returns the input bytes consumed and
    /// whether the body is complete (bytes after it belong to the next request).
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(usize, bool), ChunkError> {
        let mut pos = 0;
        while pos < input.len() {
            match self.state {
                State::Done => break,
                State::Data(left) => {
                    let take = (left.min((input.len() - pos) as u64)) as usize;
                    out.extend_from_slice(&input[pos..pos + take]);
                    pos += take;
                    self.state = if left == take as u64 {
                        State::DataEnd { seen_cr: false }
                    } else {
                        State::Data(left - take as u64)
                    };
                }
                state => {
                    self.state = step(state, input[pos])?;
                    pos += 1;
                }
            }
        }
        Ok((pos, self.state == State::Done))
    }
}

fn step(state: State, byte: u8) -> Result<State, ChunkError> {
    use State::*;
    Ok(match state {
        Size {
            size,
            digits,
            in_ext,
            line,
        } => {
            if line >= MAX_LINE {
                return Err(ChunkError::Malformed);
            }
            let line = line + 1;
            match byte {
                b'\r' if digits > 0 => SizeLf { size },
                b'\n' if digits > 0 => after_size(size),
                _ if in_ext => Size {
                    size,
                    digits,
                    in_ext,
                    line,
                },
                b';' | b' ' | b'\t' if digits > 0 => Size {
                    size,
                    digits,
                    in_ext: true,
                    line,
                },
                _ => {
                    let digit = (byte as char).to_digit(16).ok_or(ChunkError::Malformed)?;
                    if digits >= 15 {
                        return Err(ChunkError::Malformed);
                    }
                    Size {
                        size: size * 16 + digit as u64,
                        digits: digits + 1,
                        in_ext,
                        line,
                    }
                }
            }
        }
        SizeLf { size } if byte == b'\n' => after_size(size),
        DataEnd { seen_cr: false } if byte == b'\r' => DataEnd { seen_cr: true },
        DataEnd { .. } if byte == b'\n' => Size {
            size: 0,
            digits: 0,
            in_ext: false,
            line: 0,
        },
        Trailer { line, seen_cr } => match byte {
            b'\n' if line == 0 => Done,
            b'\n' => Trailer {
                line: 0,
                seen_cr: false,
            },
            b'\r' if !seen_cr => Trailer {
                line,
                seen_cr: true,
            },
            _ if line >= MAX_LINE => return Err(ChunkError::Malformed),
            _ => Trailer {
                line: line + 1,
                seen_cr: false,
            },
        },
        _ => return Err(ChunkError::Malformed),
    })
}

fn after_size(size: u64) -> State {
    if size == 0 {
        State::Trailer {
            line: 0,
            seen_cr: false,
        }
    } else {
        State::Data(size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8], piece: usize) -> Result<(Vec<u8>, usize, bool), ChunkError> {
        let mut decoder = ChunkedDecoder::default();
        let mut out = Vec::new();
        let mut consumed = 0;
        for part in input.chunks(piece.max(1)) {
            let (used, done) = decoder.decode(part, &mut out)?;
            consumed += used;
            if done {
                return Ok((out, consumed, true));
            }
        }
        Ok((out, consumed, false))
    }

    #[test]
    fn decodes_in_any_split() {
        let body = b"5\r\nhello\r\n1;ext=1\r\n \r\nA\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        for piece in [1, 2, 3, 7, 100] {
            let (out, consumed, done) = decode_all(body, piece).unwrap();
            assert!(done, "piece {piece}");
            assert_eq!(out, b"hello 0123456789");
            assert_eq!(&body[consumed..], b"NEXT", "piece {piece}");
        }
    }

    #[test]
    fn incomplete_is_not_done() {
        let (out, _, done) = decode_all(b"5\r\nhel", 100).unwrap();
        assert!(!done);
        assert_eq!(out, b"hel");
    }

    #[test]
    fn refusals() {
        for bad in [
            &b"z\r\n"[..],
            b"\r\n",
            b"5\r\nhelloXX",
            b"ffffffffffffffff\r\n",
            b"5\rX",
        ] {
            assert!(decode_all(bad, 100).is_err(), "{bad:?}");
        }
        let long_ext = [b"1;".to_vec(), vec![b'a'; MAX_LINE + 1]].concat();
        assert!(decode_all(&long_ext, 100).is_err());
    }
}
