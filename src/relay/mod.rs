//! The relay: workers that read a request's body, pick keys, call the upstream and copy its
//! answer to the client.

mod attempt;
mod body;
mod forward;
mod headroom;
mod incoming;
mod outcome;
pub mod probe;
mod redact;
mod round;
mod upload_url;
pub mod upstream;
pub mod worker;

pub use outcome::MAX_COOLDOWN;
