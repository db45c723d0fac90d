//! Why a client's request head is refused, and the bounds a head must keep. Shared by the
//! listener, which parses and refuses, the error table, which answers, and the upstream agent,
//! whose output buffer holds the largest head; none of them owns it.

/// Largest request head (request line and headers) accepted; larger answers 431.
pub const MAX_HEAD_BYTES: usize = 32 * 1024;

/// Most header lines accepted in one head.
pub const MAX_HEADERS: usize = 128;

/// Why a head was refused; each maps to a status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// Not HTTP: bad request line, header syntax, control or non-ASCII bytes.
    Malformed(&'static str),
    /// A version other than HTTP/1.0 or HTTP/1.1.
    Version,
    /// The head is over [`MAX_HEAD_BYTES`] or has too many headers.
    TooLarge,
    /// Content-Length is not a number, or two disagree.
    BadLength,
    /// A transfer coding other than chunked.
    UnsupportedCoding,
    /// An `Expect` other than `100-continue`.
    BadExpectation,
    /// Both Content-Length and Transfer-Encoding: the two framings could disagree, which is how
    /// a request is smuggled inside another (RFC 9112 §6.1).
    Ambiguous,
}

impl HeadError {
    /// The status to answer with.
    pub fn status(self) -> u16 {
        match self {
            HeadError::Malformed(_) | HeadError::BadLength | HeadError::Ambiguous => 400,
            HeadError::Version => 505,
            HeadError::TooLarge => 431,
            HeadError::UnsupportedCoding => 501,
            HeadError::BadExpectation => 417,
        }
    }

    /// What the client should do about it.
    pub fn message(self) -> String {
        match self {
            HeadError::Malformed(what) => format!("Malformed HTTP request ({what}); send a valid HTTP/1.1 request."),
            HeadError::Version => "Only HTTP/1.0 and HTTP/1.1 are supported; use HTTP/1.1.".to_string(),
            HeadError::TooLarge => format!("Request head is larger than {MAX_HEAD_BYTES} bytes or has more than {MAX_HEADERS} headers; send fewer or shorter headers."),
            HeadError::BadLength => "Content-Length is invalid; send one non-negative decimal Content-Length.".to_string(),
            HeadError::UnsupportedCoding => "Only the chunked transfer coding is supported; send the body with Content-Length or chunked.".to_string(),
            HeadError::BadExpectation => "Only `Expect: 100-continue` is supported; remove the Expect header.".to_string(),
            HeadError::Ambiguous => "The request has both Content-Length and Transfer-Encoding; send only one of them.".to_string(),
        }
    }
}
