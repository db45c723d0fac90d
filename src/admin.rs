//! keyrelay's own pages: `/` (what this is), `/health`, `/status` (keys, masked) and `/metrics`
//! (Prometheus text). They never call an upstream and never show a full key.

use std::fmt::Write as _;
use std::time::{Instant, SystemTime};

use crate::json::quote;
use crate::keys::{AttemptClass, BenchReason, KeySnapshot};
use crate::metrics::Histogram;
use crate::proxy::{Proxy, routes};
use crate::utc::format_rfc3339;

/// A page keyrelay serves itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    /// `/`: a short description.
    Index,
    /// `/health`, `/healthz`: liveness.
    Health,
    /// `/status`: providers and keys.
    Status,
    /// `/metrics`: Prometheus text format.
    Metrics,
}

impl Page {
    /// The page at `path`, if it is one.
    pub fn at(path: &str) -> Option<Page> {
        match path {
            "/" => Some(Page::Index),
            "/health" | "/healthz" => Some(Page::Health),
            "/status" => Some(Page::Status),
            "/metrics" => Some(Page::Metrics),
            _ => None,
        }
    }

    /// Whether the page needs an access token when PROXY_API_KEYS is set.
    pub fn needs_token(self) -> bool {
        matches!(self, Page::Status | Page::Metrics)
    }
}

/// A rendered page.
pub struct Rendered {
    /// `Content-Type`.
    pub content_type: &'static str,
    /// Body.
    pub body: String,
}

/// Renders `page`.
pub fn render(proxy: &Proxy, page: Page) -> Rendered {
    let json = |body| Rendered {
        content_type: "application/json",
        body,
    };
    match page {
        Page::Index => json(format!(
            r#"{{"name":"keyrelay","version":{},"routes":[{}],"docs":"point your SDK's base URL at a route, e.g. http://HOST:PORT/openai/v1"}}"#,
            quote(env!("CARGO_PKG_VERSION")),
            routes(&proxy.providers())
                .iter()
                .map(|r| quote(r))
                .collect::<Vec<_>>()
                .join(",")
        )),
        Page::Health => json(r#"{"status":"ok"}"#.to_string()),
        Page::Status => json(status(proxy)),
        Page::Metrics => Rendered {
            content_type: "text/plain; version=0.0.4",
            body: metrics(proxy),
        },
    }
}

fn key_state(snapshot: &KeySnapshot) -> (&'static str, Option<Instant>) {
    let whole = snapshot.benches.iter().filter(|b| b.model.is_none());
    let rejected = whole
        .clone()
        .filter(|b| matches!(b.reason, BenchReason::Rejected(_)))
        .map(|b| b.until)
        .max();
    if rejected.is_some() {
        return ("benched_invalid", rejected);
    }
    match whole.map(|b| b.until).max() {
        Some(until) => ("cooling", Some(until)),
        None => ("ready", None),
    }
}

fn wall_time(until: Instant, now: Instant, wall_now: SystemTime) -> String {
    format_rfc3339(wall_now + until.saturating_duration_since(now))
}

fn status(proxy: &Proxy) -> String {
    let now = Instant::now();
    let wall_now = SystemTime::now();
    let mut providers = Vec::new();
    for provider in proxy.providers().iter() {
        let mut keys = Vec::new();
        for snap in provider.pool.snapshot(now) {
            let (state, until) = key_state(&snap);
            let cooldowns: Vec<String> = snap
                .benches
                .iter()
                .map(|b| {
                    format!(
                        r#"{{"model":{},"until":{},"reason":{}}}"#,
                        b.model.as_deref().map_or("null".to_string(), quote),
                        quote(&wall_time(b.until, now, wall_now)),
                        quote(&b.reason.to_string())
                    )
                })
                .collect();
            let s = &snap.stats;
            keys.push(format!(
                r#"{{"key":{},"state":{},"until":{},"cooldowns":[{}],"requests":{},"successes":{},"rate_limited":{},"other_errors":{},"last_error":{}}}"#,
                quote(&snap.mask),
                quote(state),
                until.map_or("null".to_string(), |u| quote(&wall_time(u, now, wall_now))),
                cooldowns.join(","),
                s.requests,
                s.successes,
                s.rate_limited,
                s.other_errors,
                s.last_error.map_or("null".to_string(), |c| quote(c.label()))
            ));
        }
        providers.push(format!(
            r#"{{"name":{},"base_url":{},"keys":[{}]}}"#,
            quote(&provider.name),
            quote(&provider.base_url),
            keys.join(",")
        ));
    }
    format!(
        r#"{{"status":"ok","version":{},"uptime_secs":{},"connections":{},"in_flight":{},"queued":{},"workers":{},"workers_busy":{},"providers":[{}]}}"#,
        quote(env!("CARGO_PKG_VERSION")),
        proxy.started.elapsed().as_secs(),
        proxy.load.connections(),
        proxy.load.in_flight(),
        proxy.load.queued(),
        proxy.load.workers(),
        proxy.metrics.workers_busy(),
        providers.join(",")
    )
}

fn metrics(proxy: &Proxy) -> String {
    let mut out = String::with_capacity(4096);
    let (requests, durations, queue_wait) = proxy.metrics.snapshot();
    let _ = writeln!(
        out,
        "# HELP keyrelay_requests_total Requests answered, by provider, route and status class."
    );
    let _ = writeln!(out, "# TYPE keyrelay_requests_total counter");
    let mut rows: Vec<_> = requests.into_iter().collect();
    rows.sort();
    for ((provider, route, class), count) in rows {
        let _ = writeln!(
            out,
            "keyrelay_requests_total{{provider={},route={},status={}}} {count}",
            label(&provider),
            label(&route),
            label(&class)
        );
    }
    let _ = writeln!(
        out,
        "# HELP keyrelay_upstream_attempts_total Upstream attempts, by provider, key (masked) and outcome."
    );
    let _ = writeln!(out, "# TYPE keyrelay_upstream_attempts_total counter");
    let mut key_rows = String::new();
    let now = Instant::now();
    for provider in proxy.providers().iter() {
        let (mut ready, mut cooling, mut benched) = (0, 0, 0);
        for snap in provider.pool.snapshot(now) {
            match key_state(&snap).0 {
                "ready" => ready += 1,
                "cooling" => cooling += 1,
                _ => benched += 1,
            }
            for class in AttemptClass::ALL {
                let _ = writeln!(
                    out,
                    "keyrelay_upstream_attempts_total{{provider={},key={},outcome={}}} {}",
                    label(&provider.name),
                    label(&snap.mask),
                    label(class.label()),
                    snap.stats.by_class[class as usize]
                );
            }
        }
        for (state, count) in [("ready", ready), ("cooling", cooling), ("benched", benched)] {
            let _ = writeln!(
                key_rows,
                "keyrelay_keys{{provider={},state={}}} {count}",
                label(&provider.name),
                label(state)
            );
        }
    }
    let _ = writeln!(out, "# HELP keyrelay_keys Keys by state.");
    let _ = writeln!(out, "# TYPE keyrelay_keys gauge");
    out.push_str(&key_rows);
    let _ = writeln!(
        out,
        "# HELP keyrelay_request_duration_seconds Time from request to the end of its answer."
    );
    let _ = writeln!(out, "# TYPE keyrelay_request_duration_seconds histogram");
    let mut histograms: Vec<_> = durations.into_iter().collect();
    histograms.sort_by(|a, b| a.0.cmp(&b.0));
    for (provider, h) in histograms {
        histogram(
            &mut out,
            "keyrelay_request_duration_seconds",
            &format!("provider={},", label(&provider)),
            &h,
        );
    }
    let _ = writeln!(
        out,
        "# HELP keyrelay_queue_wait_seconds Time requests waited for a free worker."
    );
    let _ = writeln!(out, "# TYPE keyrelay_queue_wait_seconds histogram");
    histogram(&mut out, "keyrelay_queue_wait_seconds", "", &queue_wait);
    gauge(
        &mut out,
        "keyrelay_queue_depth",
        "Requests waiting for a free worker.",
        proxy.load.queued(),
    );
    gauge(
        &mut out,
        "keyrelay_workers",
        "Worker threads started (they start as requests need them, up to WORKERS).",
        proxy.load.workers(),
    );
    gauge(
        &mut out,
        "keyrelay_in_flight_requests",
        "Requests received and not yet fully answered, queued ones included.",
        proxy.load.in_flight(),
    );
    gauge(
        &mut out,
        "keyrelay_client_connections",
        "Open client connections.",
        proxy.load.connections(),
    );
    gauge(
        &mut out,
        "keyrelay_workers_busy",
        "Worker threads handling a request.",
        proxy.metrics.workers_busy(),
    );
    out
}

/// Appends the bucket, sum and count lines of one histogram; `labels` is empty or ends with a
/// comma.
fn histogram(out: &mut String, name: &str, labels: &str, h: &Histogram) {
    let mut cumulative = 0;
    for (index, bound) in h.bounds.iter().enumerate() {
        cumulative += h.buckets[index];
        let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{bound}\"}} {cumulative}");
    }
    let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {}", h.count);
    let labels = match labels.trim_end_matches(',') {
        "" => String::new(),
        set => format!("{{{set}}}"),
    };
    let _ = writeln!(out, "{name}_sum{labels} {}", h.sum);
    let _ = writeln!(out, "{name}_count{labels} {}", h.count);
}

/// Appends one unlabelled gauge with its HELP and TYPE lines.
fn gauge(out: &mut String, name: &str, help: &str, value: usize) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} gauge");
    let _ = writeln!(out, "{name} {value}");
}

/// A Prometheus label value, quoted and escaped.
fn label(value: &str) -> String {
    let escaped = value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n");
    format!("\"{escaped}\"")
}
