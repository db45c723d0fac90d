//! Token usage: what each answer reports (tokens.rs), read while it is relayed (meter.rs), and
//! counted per key and model (book.rs).

mod book;
mod history;
mod meter;
mod tokens;

use std::sync::Arc;

use super::limits::Limiter;

pub use book::{MAX_MODELS, OTHER, Spent, UsageBook};
pub use history::{History, MINUTES, Minute, Tally};
pub use meter::UsageMeter;
pub use tokens::Tokens;

/// A meter on one answer, and where its usage is counted once the answer has been relayed.
pub struct Metered {
    meter: UsageMeter,
    book: Arc<UsageBook>,
    /// Token limits count what the answer spent.
    limits: Arc<Limiter>,
    key: u64,
    model: Option<String>,
}

impl Metered {
    /// A meter for an answer to `model` got with the key whose id is `key`.
    pub fn new(
        meter: UsageMeter,
        (book, limits): (Arc<UsageBook>, Arc<Limiter>),
        key: u64,
        model: Option<&str>,
    ) -> Metered {
        Metered {
            meter,
            book,
            limits,
            key,
            model: model.map(str::to_string),
        }
    }

    /// Looks at the next piece of the answer.
    pub fn see(&mut self, bytes: &[u8]) {
        self.meter.see(bytes);
    }

    /// Counts what the answer reported and returns it.
    pub fn finish(self) -> Option<Tokens> {
        let tokens = self.meter.finish()?;
        let model = self.model.as_deref();
        self.book.record(self.key, model, tokens);
        self.limits
            .spent(self.key, model, tokens.total(), std::time::Instant::now());
        Some(tokens)
    }
}
