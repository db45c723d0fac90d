//! keyrelay: a key-rotating HTTP proxy for LLM APIs.
//!
//! # Request lifecycle
//!
//! ```text
//! client ──HTTP/1.1──▶ tiny_http listener ──queue──▶ N worker threads (fixed pool)
//!                                                    │ route → read body (bounded)
//!                                                    │ one ticket from the key pool's round robin
//!                                                    │ attempts: inject key, call upstream (ureq)
//!                                                    │   429 → cool key, next;  401/403 → bench key
//!                                                    │   5xx / connect error → next key; else relay
//!                                                    ▼
//!                              response head + body copied chunk by chunk, flushed per read
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

pub mod cli;
pub mod config;
pub mod env_file;
pub mod error;
pub mod forward;
pub mod headers;
pub mod json;
pub mod keys;
pub mod outcome;
pub mod provider;
pub mod proxy;
pub mod request_id;
pub mod server;
pub mod stream;
pub mod upstream;
