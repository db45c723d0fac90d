//! `/status` for a browser (`Accept: text/html`): one self-contained page, no external assets
//! and no script, readable on a phone, reloading itself every 5 s. Per provider and key (masked):
//! state with a countdown to when it frees, per-model cooldowns, headroom and counters; at the
//! top: version, uptime, requests in flight, queue depth, workers busy. Everything shown is
//! escaped (model names come from clients).

use std::fmt::Write as _;
use std::time::{Duration, Instant, SystemTime};

use super::charts::{self, Series};
use super::status::{key_state, no_access_models};
use crate::keys::AttemptClass;
use crate::proxy::Proxy;

/// Text made safe for HTML.
pub(super) fn esc(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// `1h 02m`, `4m 05s`, `12s`.
fn countdown(left: Duration) -> String {
    let secs = left.as_secs();
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m {:02}s", secs / 60, secs % 60),
        _ => format!("{}h {:02}m", secs / 3600, secs / 60 % 60),
    }
}

const STYLE: &str = "body{font:15px/1.4 system-ui,sans-serif;margin:1rem;color:#222;background:#fafafa}\
h1{font-size:1.3rem;margin:0 0 .5rem}h2{font-size:1.1rem;margin:1.2rem 0 .4rem}\
.top{display:flex;flex-wrap:wrap;gap:.4rem 1.2rem;margin-bottom:.5rem}\
table{border-collapse:collapse;width:100%;background:#fff}td,th{padding:.35rem .5rem;border-bottom:1px solid #ddd;text-align:left;vertical-align:top}\
th{font-size:.8rem;color:#555}.wrap{overflow-x:auto}code{font-size:.9rem;white-space:nowrap}\
.ready{color:#17663a}.cooling{color:#9a6400}.benched_invalid,.benched_quota,.disabled{color:#b3261e}small{color:#666}\
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(280px,1fr));gap:.6rem;margin:.4rem 0 .6rem}\
.chart{margin:0;background:#fff;padding:.3rem .4rem;border:1px solid #ddd}.chart svg{width:100%;height:90px;display:block}\
figcaption{font-size:.85rem}.key{white-space:nowrap;margin-left:.4rem}.key i{display:inline-block;width:.7rem;height:.7rem;margin-right:.2rem;vertical-align:-1px}\
svg.spark{width:120px;height:24px}.win svg{width:100px;height:6px;display:block}";

/// The page.
pub fn render(proxy: &Proxy) -> String {
    let now = Instant::now();
    let mut out = String::with_capacity(4096);
    let _ = write!(
        out,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
<meta http-equiv=\"refresh\" content=\"5\"><title>keyrelay status</title><style>{STYLE}</style></head><body>\
<h1>keyrelay {}</h1><div class=\"top\"><span>up {}</span><span>in flight {}</span>\
<span>queued {}</span><span>workers busy {} of {} started</span><span>connections {}</span></div>",
        esc(env!("CARGO_PKG_VERSION")),
        countdown(proxy.started.elapsed()),
        proxy.load.in_flight(),
        proxy.load.queued(),
        proxy.metrics.workers_busy(),
        proxy.load.workers(),
        proxy.load.connections(),
    );
    if let Some(shared) = proxy.shared.get() {
        let health = shared.health();
        let _ = write!(
            out,
            "<div class=\"top\"><span>shared state <code>{}</code> <b class=\"{}\">{}</b> since {} ago</span></div>",
            esc(shared.shown_url()),
            if health.up { "ready" } else { "disabled" },
            if health.up { "up" } else { "down" },
            countdown(health.since.elapsed().unwrap_or_default())
        );
    }
    let wall = SystemTime::now();
    for provider in proxy.providers().iter() {
        let (ids, sessions) = provider.affinity.sizes();
        let history = &provider.usage.history;
        let hour = history.hour(wall, |_| true);
        let requests = charts::stacked(
            "requests per minute",
            "attempts",
            &hour,
            &[
                Series {
                    name: "ok",
                    color: "#17663a",
                    value: |m| m.ok,
                },
                Series {
                    name: "429",
                    color: "#b3261e",
                    value: |m| m.limited,
                },
                Series {
                    name: "other errors",
                    color: "#9a6400",
                    value: |m| m.errors,
                },
            ],
        );
        let tokens = charts::stacked(
            "tokens per minute",
            "tokens",
            &hour,
            &[
                Series {
                    name: "cached input",
                    color: "#5b8def",
                    value: |m| m.cached,
                },
                Series {
                    name: "uncached input",
                    color: "#1f3f8f",
                    value: |m| m.input.saturating_sub(m.cached),
                },
                Series {
                    name: "output",
                    color: "#999",
                    value: |m| m.output,
                },
            ],
        );
        let _ = write!(
            out,
            "<h2>{} <small>{}</small></h2><div class=\"top\"><span>learned ids {ids}</span>\
<span>live sessions {sessions}</span></div><div class=\"charts\">{requests}{tokens}</div>\
<div class=\"wrap\"><table><tr><th>#</th><th>key</th>\
<th>state</th><th>last hour</th><th>limits</th><th>cooldowns</th><th>no access</th><th>headroom</th><th>tokens in (cached) / out</th><th>attempts</th><th>ok</th><th>429</th><th>errors</th></tr>",
            esc(&provider.name),
            esc(&provider.base_url)
        );
        for (index, snap) in provider.pool.snapshot(now).into_iter().enumerate() {
            let (state, until) = key_state(&snap);
            let frees = until.map_or(String::new(), |u| {
                format!(
                    " <small>frees in {}</small>",
                    countdown(u.saturating_duration_since(now))
                )
            });
            let cooldowns: Vec<String> = snap
                .benches
                .iter()
                .map(|b| {
                    format!(
                        "{}: {} <small>({})</small>",
                        esc(b.model.as_deref().unwrap_or("all models")),
                        countdown(b.until.saturating_duration_since(now)),
                        esc(&b.reason.to_string())
                    )
                })
                .collect();
            let headroom = snap.headroom.map_or("-".to_string(), |h| {
                let part = |what: &str, n: Option<u64>| n.map(|n| format!("{n} {what}"));
                let left: Vec<String> = [
                    part("requests", h.requests_remaining),
                    part("tokens", h.tokens_remaining),
                ]
                .into_iter()
                .flatten()
                .collect();
                let resets = h.resets_at.map_or(String::new(), |at| {
                    format!(
                        ", resets in {}",
                        countdown(at.saturating_duration_since(now))
                    )
                });
                format!("{} left{resets}", left.join(", "))
            });
            let no_access: Vec<String> = no_access_models(&snap).map(esc).collect();
            let key_id = provider.pool.key(index).id();
            let spark = charts::sparkline(&history.hour(wall, |k| k == key_id));
            let limits: String = provider
                .limits
                .usage(key_id, now, wall)
                .iter()
                .map(|(model, uses)| charts::windows(model, uses))
                .collect();
            let limits = if limits.is_empty() {
                "-".to_string()
            } else {
                limits
            };
            let spent = provider.usage.of(key_id);
            let (input, cached, output) = spent.iter().fold((0, 0, 0), |(i, c, o), (_, s)| {
                (i + s.tokens.input, c + s.tokens.cached, o + s.tokens.output)
            });
            let tokens = if input + output == 0 {
                "-".to_string()
            } else {
                format!("{input} ({cached}) / {output}")
            };
            let s = &snap.stats;
            let errors = s.other_errors;
            let _ = write!(
                out,
                "<tr><td>{}</td><td><code>{}</code></td><td class=\"{state}\">{state}{frees}</td><td>{spark}</td><td>{limits}</td><td>{}</td>\
<td>{}</td><td>{}</td><td>{tokens}</td><td>{}</td><td>{}</td><td>{}</td><td>{errors}{}</td></tr>",
                index + 1,
                esc(&snap.mask)
                    + &provider
                        .egress_for(index)
                        .map(|e| format!("<br><small>via {}</small>", esc(&e.shown)))
                        .unwrap_or_default(),
                if cooldowns.is_empty() {
                    "-".to_string()
                } else {
                    cooldowns.join("<br>")
                },
                if no_access.is_empty() {
                    "-".to_string()
                } else {
                    no_access.join("<br>")
                },
                esc(&headroom),
                s.requests,
                s.successes,
                s.rate_limited,
                match s.by_class[AttemptClass::QuotaExhausted as usize] {
                    0 => String::new(),
                    n => format!(" <small>({n} spent balance)</small>"),
                }
            );
        }
        out.push_str("</table></div>");
    }
    out.push_str("<p><small>Reloads every 5 s. JSON: the same URL without <code>Accept: text/html</code>.</small></p></body></html>");
    out
}
