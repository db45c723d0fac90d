//! keyrelay: a key-rotating HTTP proxy for LLM APIs.
//!
//! # Request lifecycle
//!
//! ```text
//! client ──HTTP/1.1──▶ guard thread per connection (bounds head, body, idle time)
//!            ──checked request over a private Unix socket──▶ tiny_http ──queue──▶ N workers
//!                                                    │ route → read body (bounded)
//!                                                    │ one ticket from the key pool's round robin
//!                                                    │ attempts: inject key, call upstream (ureq)
//!                                                    │   429 → cool key, next;  401/403 → bench key
//!                                                    │   5xx / connect error → next key; else relay
//!                                                    ▼
//!               response head + body written straight to the client socket, chunk by chunk,
//!               flushed per read
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

pub mod acceptor;
pub mod access;
pub mod admin;
mod attempt;
pub mod bridge;
pub mod catalog;
pub mod chunked;
pub mod cli;
pub mod client_conn;
pub mod config;
pub mod env_file;
pub mod error;
pub mod forward;
pub mod guard;
pub mod headers;
pub mod http_head;
pub mod json;
pub mod keys;
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
