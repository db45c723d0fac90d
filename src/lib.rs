//! keyrelay: a key-rotating HTTP proxy for LLM APIs.
//!
//! # Request lifecycle
//!
//! ```text
//! client ──HTTP/1.1──▶ listener thread (epoll): accept; idle and half-read connections;
//!            │         heads parsed within bounds; /health, /status, /metrics answered here
//!            │ complete head + its connection
//!            ▼
//!          queue (QUEUE_TIMEOUT_SECS → 503; dropped if the client left)
//!            ▼
//!          worker (up to WORKERS, blocking): read body (bounded) → route
//!            │ one ticket from the key pool's round robin
//!            │ attempts: inject key, call upstream (ureq)
//!            │   429 → cool key, next;  401/403 → bench key
//!            │   5xx / connect error → next key; else relay
//!            ▼
//!          answer written to the client chunk by chunk, flushed per read;
//!          the connection goes back to the listener (or on to the next pipelined request)
//! ```
//!
//! # Log levels
//!
//! - `error`: keyrelay itself failed (a handler panicked, the listener broke).
//! - `warn`: something an operator should act on: a key benched (429 cooldown or 401/403).
//! - `info`: start-up summary and one line per request.
//! - `debug`: each failed attempt (5xx, unreachable upstream) before the next key is tried.
//!
//! No level ever prints a key, a client credential or a raw query string: keys print as masks.

pub mod admin;
pub mod agent;
pub mod config;
pub mod error;
mod head_error;
mod headers;
mod json;
pub mod json_log;
pub mod keys;
pub mod listen;
mod load;
mod metrics;
mod provider;
pub mod proxy;
pub mod relay;
mod request_id;
mod request_log;
mod respond;
mod scan;
pub mod server;
mod small_map;
/// STATE_FILE, under its old path.
pub use state::file as state_file;
pub mod state;
pub mod utc;
