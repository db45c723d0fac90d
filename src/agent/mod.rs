//! The ureq agent every worker shares (it holds the upstream connection pool), with settings
//! that make ureq a transparent relay: no redirects, no decompression, statuses as answers.

mod buffers;
pub mod egress;
mod link;
mod resolve;
pub mod trust;

use std::time::Duration;

use ureq::Agent;
use ureq::unversioned::transport::{ConnectProxyConnector, Connector, SocksConnector};

use link::LinkConnector;
pub(crate) use link::SILENT;
use resolve::CachingResolver;
use trust::{Trust, TrustConnector};

/// Per-connection read buffer, also the largest upstream response head accepted.
const INPUT_BUFFER: usize = 16 * 1024;
/// Per-connection write buffer: holds a whole request head, which the listener bounds to
/// [`MAX_HEAD_BYTES`](crate::head_error::MAX_HEAD_BYTES), plus room for the injected key.
const OUTPUT_BUFFER: usize = crate::head_error::MAX_HEAD_BYTES + 4 * 1024;

/// The "limit" on receiving a whole body: ten years.
const WHOLE_BODY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Builds the agent every worker shares (it holds the upstream connection pool).
/// `heartbeat`: how often a silent body read reports silence ([`SILENT`]), so the relay can
/// keep a stream's client connection alive (SSE_HEARTBEAT_SECS; `None` for none).
/// `trust`: the roots TLS upstreams are checked against.
pub fn agent(
    connect_timeout: Duration,
    upstream_timeout: Duration,
    workers: usize,
    heartbeat: Option<Duration>,
    trust: Trust,
) -> Agent {
    let config = Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .allow_non_standard_methods(true)
        .user_agent(ureq::config::AutoHeaderValue::None)
        .accept(ureq::config::AutoHeaderValue::None)
        // Idle connections kept per upstream host: enough that a burst rarely reconnects (the
        // default of 3 opened thousands of connections under load), few enough that finding one
        // stays cheap (ureq searches its pool linearly on every request).
        .max_idle_connections(workers.clamp(8, 64))
        .max_idle_connections_per_host(workers.clamp(8, 64))
        // ureq's 128 KiB default buffers are allocated per pooled connection; LLM API heads are
        // a few KiB, and body bytes stream through the relay buffer anyway.
        .input_buffer_size(INPUT_BUFFER)
        .output_buffer_size(OUTPUT_BUFFER)
        .max_response_header_size(INPUT_BUFFER)
        .timeout_connect(Some(connect_timeout))
        // Each read and write may wait this long: the response head is one read or a few, and
        // silence on a stream is bounded, not its length (long generations keep flowing).
        // Fixed per-operation timeouts, not deadlines, so the socket's timeout does not change
        // from one request to the next and costs no system call (deadlines cost three).
        .timeout_per_read(Some(upstream_timeout))
        .timeout_per_write(Some(upstream_timeout))
        // No limit on a whole body in practice (a stream may last hours); it is set only so
        // that the transport can tell a body read from a wait for the head (heartbeats).
        .timeout_recv_body(Some(WHOLE_BODY))
        .build();
    // ureq's default chain (a SOCKS or CONNECT proxy when the request's egress or the
    // environment names one), with keyrelay's TCP link and TLS trust in place of ureq's.
    let connector = ()
        .chain(SocksConnector::default())
        .chain(ConnectProxyConnector::default())
        .chain(LinkConnector {
            silence_tick: heartbeat,
        })
        .chain(TrustConnector { trust });
    Agent::with_parts(config, connector, CachingResolver::default())
}
