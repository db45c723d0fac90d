//! What a request is answered with, decided before the client connection is written to.

use ureq::http::HeaderMap;

use crate::admin::Rendered;
use crate::error::ProxyError;
use crate::keys::affinity::AnswerWatch;
use crate::keys::usage::Metered;
use crate::provider::ErrorShape;
use crate::respond::stream::SseEnds;

/// How the request is answered, decided before the client connection is written to.
pub(crate) enum Answer {
    /// An error keyrelay writes itself.
    Error {
        error: ProxyError,
        shape: ErrorShape,
        attempts: u32,
    },
    /// An upstream answer, relayed as it streams in.
    Live {
        response: ureq::http::Response<ureq::Body>,
        /// Body bytes already read from `response` (an error body too large to hold whole),
        /// relayed before the rest.
        prefix: Vec<u8>,
        attempts: u32,
        key: String,
        /// Learns the object ids the answer names as it passes.
        watch: Option<AnswerWatch>,
        /// Reads the usage the answer reports, for its key and model.
        metered: Option<Box<Metered>>,
        /// Set for a Server-Sent Events answer: heartbeats, and its break event.
        sse: Option<SseEnds>,
    },
    /// One of keyrelay's own pages.
    Page(Rendered),
    /// An upstream answer already read (the last 401/403/5xx after every key failed).
    Saved {
        answer: SavedAnswer,
        attempts: u32,
        key: String,
    },
}

/// A complete upstream answer held in memory.
pub(crate) struct SavedAnswer {
    pub(crate) status: u16,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Vec<u8>,
}
