//! `/status`: per provider and key (masked), its state, cooldowns and counters, as JSON.

use std::time::{Instant, SystemTime};

use crate::json::quote;
use crate::keys::affinity::Kind;
use crate::keys::usage::Spent;
use crate::keys::{AttemptClass, BenchReason, KeySnapshot};
use crate::proxy::Proxy;
use crate::utc::format_rfc3339;

/// A key's state (`disabled`, `benched_invalid`, `benched_quota`, `cooling`, `ready`) and until
/// when.
pub(super) fn key_state(snapshot: &KeySnapshot) -> (&'static str, Option<Instant>) {
    if snapshot.disabled {
        return ("disabled", None);
    }
    let whole = snapshot.benches.iter().filter(|b| b.model.is_none());
    let latest = |wanted: fn(&BenchReason) -> bool| {
        whole
            .clone()
            .filter(|b| wanted(&b.reason))
            .map(|b| b.until)
            .max()
    };
    if let Some(until) = latest(|r| matches!(r, BenchReason::Rejected(_))) {
        return ("benched_invalid", Some(until));
    }
    if let Some(until) = latest(|r| matches!(r, BenchReason::QuotaExhausted(_))) {
        return ("benched_quota", Some(until));
    }
    match whole.map(|b| b.until).max() {
        Some(until) => ("cooling", Some(until)),
        None => ("ready", None),
    }
}

/// One model's spending as JSON: answers that reported usage, input, cached input, output and
/// reasoning tokens, and the cached share of input.
fn usage_json(model: &str, spent: &Spent) -> String {
    let t = &spent.tokens;
    let share = if t.input == 0 {
        0.0
    } else {
        t.cached as f64 / t.input as f64
    };
    format!(
        r#"{{"model":{},"answers":{},"input":{},"cached":{},"output":{},"reasoning":{},"cached_share":{:.3}}}"#,
        quote(model),
        spent.answers,
        t.input,
        t.cached,
        t.output,
        t.reasoning,
        share
    )
}

/// The models a key's account cannot use (benched as `no_access`).
pub(super) fn no_access_models(snapshot: &KeySnapshot) -> impl Iterator<Item = &str> {
    snapshot
        .benches
        .iter()
        .filter(|b| matches!(b.reason, BenchReason::NoAccess(_)))
        .filter_map(|b| b.model.as_deref())
}

fn wall_time(until: Instant, now: Instant, wall_now: SystemTime) -> String {
    format_rfc3339(wall_now + until.saturating_duration_since(now))
}

pub(super) fn status(proxy: &Proxy) -> String {
    let now = Instant::now();
    let wall_now = SystemTime::now();
    let mut providers = Vec::new();
    for provider in proxy.providers().iter() {
        let mut keys = Vec::new();
        for (index, snap) in provider.pool.snapshot(now).into_iter().enumerate() {
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
            let no_access: Vec<String> = no_access_models(&snap).map(quote).collect();
            let egress = provider
                .egress_for(index)
                .map_or("null".to_string(), |e| quote(&e.shown));
            let key_id = provider.pool.key(index).id();
            let limits: Vec<String> = provider
                .limits
                .usage(key_id, now, wall_now)
                .into_iter()
                .map(|(model, uses)| {
                    let windows: Vec<String> = uses
                        .iter()
                        .map(|u| {
                            format!(
                                r#"{{"limit":{},"used":{},"frees_in_secs":{}}}"#,
                                quote(&u.limit.text()),
                                u.used,
                                u.frees_in.as_secs_f64().ceil()
                            )
                        })
                        .collect();
                    format!(
                        r#"{{"model":{},"windows":[{}]}}"#,
                        quote(&model),
                        windows.join(",")
                    )
                })
                .collect();
            let usage: Vec<String> = provider
                .usage
                .of(provider.pool.key(index).id())
                .into_iter()
                .map(|(model, spent)| usage_json(&model, &spent))
                .collect();
            keys.push(format!(
                r#"{{"position":{},"key":{},"egress":{egress},"state":{},"until":{},"cooldowns":[{}],"no_access":[{}],"attempts":{},"successes":{},"rate_limited":{},"quota_exhausted":{},"other_errors":{},"last_error":{},"headroom":{},"usage":[{}],"limits":[{}]}}"#,
                index + 1,
                quote(&snap.mask),
                quote(state),
                until.map_or("null".to_string(), |u| quote(&wall_time(u, now, wall_now))),
                cooldowns.join(","),
                no_access.join(","),
                s.requests,
                s.successes,
                s.rate_limited,
                s.by_class[AttemptClass::QuotaExhausted as usize],
                s.other_errors,
                s.last_error.map_or("null".to_string(), |c| quote(c.label())),
                snap.headroom.map_or("null".to_string(), |h| format!(
                    r#"{{"requests_remaining":{},"tokens_remaining":{},"resets":{}}}"#,
                    h.requests_remaining.map_or("null".to_string(), |n| n.to_string()),
                    h.tokens_remaining.map_or("null".to_string(), |n| n.to_string()),
                    h.resets_at.map_or("null".to_string(), |at| quote(&wall_time(at, now, wall_now)))
                )),
                usage.join(","),
                limits.join(",")
            ));
        }
        let affinity = &provider.affinity;
        let (ids, sessions) = affinity.sizes();
        let all_counts = affinity.counts();
        let mut counts: Vec<String> = Vec::new();
        for kind in Kind::ALL {
            let members: Vec<String> = all_counts
                .iter()
                .filter(|(k, _, _)| *k == kind)
                .map(|(_, outcome, n)| format!("{}:{n}", quote(outcome.label())))
                .collect();
            counts.push(format!("{}:{{{}}}", quote(kind.label()), members.join(",")));
        }
        let egresses: Vec<String> = provider
            .egress
            .iter()
            .enumerate()
            .map(|(entry, e)| {
                let counts = e.counts();
                let keys: Vec<String> = provider
                    .keys_behind(entry)
                    .iter()
                    .map(|k| (k + 1).to_string())
                    .collect();
                format!(
                    r#"{{"egress":{},"keys":[{}],"attempts":{},"failures":{},"rate_limited_last_minute":{}}}"#,
                    quote(&e.shown),
                    keys.join(","),
                    counts.attempts,
                    counts.failures,
                    counts.rate_limited_last_minute
                )
            })
            .collect();
        providers.push(format!(
            r#"{{"name":{},"base_url":{},"learned_ids":{ids},"live_sessions":{sessions},"affinity":{{{}}},"egress":[{}],"keys":[{}]}}"#,
            quote(&provider.name),
            quote(&provider.base_url),
            counts.join(","),
            egresses.join(","),
            keys.join(",")
        ));
    }
    let shared = proxy.shared.get().map_or("null".to_string(), |shared| {
        let health = shared.health();
        format!(
            r#"{{"url":{},"state":{},"since":{}}}"#,
            quote(shared.shown_url()),
            quote(if health.up { "up" } else { "down" }),
            quote(&format_rfc3339(health.since))
        )
    });
    format!(
        r#"{{"status":"ok","version":{},"uptime_secs":{},"connections":{},"in_flight":{},"queued":{},"workers":{},"workers_busy":{},"shared_state":{shared},"providers":[{}]}}"#,
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
