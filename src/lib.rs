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

pub mod access;
pub mod admin;
mod attempt;
mod body;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod env_file;
pub mod error;
mod forward;
pub mod headers;
pub mod json;
pub mod keys;
pub mod listen;
pub mod load;
pub mod metrics;
pub mod outcome;
pub mod provider;
pub mod proxy;
pub mod request_id;
mod respond;
pub mod server;
pub mod stream;
pub mod upstream;
pub mod utc;
mod worker;
