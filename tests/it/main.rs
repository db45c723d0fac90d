//! keyrelay's integration tests: one binary that starts the real proxy against a scripted mock
//! upstream and checks what crosses the wire, what the mock received, and what the log says.

mod support;

mod affinity;
mod config;
mod egress;
mod frontend;
mod hardening;
mod headroom;
mod keys;
mod limits;
mod logging;
mod nginx;
mod ops;
mod probe;
mod providers;
mod relay;
mod rotation;
mod routing;
mod sdk;
mod service;
mod shared_state;
mod state;
mod status_page;
mod steering;
mod stream_ends;
mod streaming;
mod tls_trust;
mod upstream_pool;
mod upstream_verdicts;
mod usage;
