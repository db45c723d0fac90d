//! `/metrics`: the counters, key states and gauges in Prometheus text format.

use std::fmt::Write as _;
use std::time::Instant;

use super::status::key_state;
use crate::keys::AttemptClass;
use crate::metrics::Histogram;
use crate::proxy::Proxy;

pub(super) fn metrics(proxy: &Proxy) -> String {
    let mut out = String::with_capacity(4096);
    let (requests, durations, queue_wait) = proxy.metrics.snapshot();
    family(
        &mut out,
        "keyrelay_requests_total",
        "counter",
        "Requests answered, by provider, route and status class.",
    );
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
    family(
        &mut out,
        "keyrelay_upstream_attempts_total",
        "counter",
        "Upstream attempts, by provider, key (masked) and outcome.",
    );
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
    family(
        &mut out,
        "keyrelay_affinity_total",
        "counter",
        "Affinity events, by provider, kind (resource: an object's owner; session: a conversation's key) and outcome.",
    );
    for provider in proxy.providers().iter() {
        for (kind, outcome, count) in provider.affinity.counts() {
            let _ = writeln!(
                out,
                "keyrelay_affinity_total{{provider={},kind={},outcome={}}} {count}",
                label(&provider.name),
                label(kind.label()),
                label(outcome.label())
            );
        }
    }
    family(
        &mut out,
        "keyrelay_affinity_entries",
        "gauge",
        "Learned object ids and live conversations, by provider.",
    );
    for provider in proxy.providers().iter() {
        let (ids, sessions) = provider.affinity.sizes();
        for (table, n) in [("ids", ids), ("sessions", sessions)] {
            let _ = writeln!(
                out,
                "keyrelay_affinity_entries{{provider={},table={}}} {n}",
                label(&provider.name),
                label(table)
            );
        }
    }
    family(
        &mut out,
        "keyrelay_tokens_total",
        "counter",
        "Tokens the upstream reported, by provider, key (masked), model and kind (input includes cached; output includes reasoning).",
    );
    for provider in proxy.providers().iter() {
        for key in provider.pool.keys() {
            for (model, spent) in provider.usage.of(key.id()) {
                let t = spent.tokens;
                for (kind, n) in [
                    ("input", t.input),
                    ("cached", t.cached),
                    ("output", t.output),
                    ("reasoning", t.reasoning),
                ] {
                    let _ = writeln!(
                        out,
                        "keyrelay_tokens_total{{provider={},key={},model={},kind={}}} {n}",
                        label(&provider.name),
                        label(&key.mask()),
                        label(&model),
                        label(kind)
                    );
                }
            }
        }
    }
    family(&mut out, "keyrelay_keys", "gauge", "Keys by state.");
    out.push_str(&key_rows);
    family(
        &mut out,
        "keyrelay_request_duration_seconds",
        "histogram",
        "Time from request to the end of its answer.",
    );
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
    family(
        &mut out,
        "keyrelay_queue_wait_seconds",
        "histogram",
        "Time requests waited for a free worker.",
    );
    histogram(&mut out, "keyrelay_queue_wait_seconds", "", &queue_wait);
    if let Some(shared) = proxy.shared.get() {
        gauge(
            &mut out,
            "keyrelay_shared_state_up",
            "1 while the shared store (SHARED_STATE_URL) answers, 0 while it is away.",
            usize::from(shared.health().up),
        );
    }
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

/// Appends the HELP and TYPE lines of a metric family.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Appends one unlabelled gauge with its HELP and TYPE lines.
fn gauge(out: &mut String, name: &str, help: &str, value: usize) {
    family(out, name, "gauge", help);
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
