//! Charts for the status page, as inline SVG made here: no script, no external asset, scaled by
//! the browser to the page's width (a phone's too). Every bar and line carries its numbers as
//! `data-*` attributes and a `<title>` tooltip.

use std::fmt::Write as _;

use crate::keys::limits::WindowUse;
use crate::keys::usage::{MINUTES, Minute};

/// One series of a stacked chart: its name, colour, and value in a minute.
pub struct Series {
    pub name: &'static str,
    pub color: &'static str,
    pub value: fn(&Minute) -> u64,
}

/// Stacked bars, one per minute of the last hour (oldest left), each series on the one below.
pub fn stacked(title: &str, unit: &str, hour: &[Minute; MINUTES], series: &[Series]) -> String {
    const W: u64 = 600;
    const H: u64 = 120;
    let bar = W / MINUTES as u64;
    let top = hour
        .iter()
        .map(|m| series.iter().map(|s| (s.value)(m)).sum::<u64>())
        .max()
        .unwrap_or(0)
        .max(1);
    let mut svg = format!(
        "<figure class=\"chart\"><figcaption>{title} <small>(last hour; top {top} {unit}/min)</small> {}</figcaption>\
<svg viewBox=\"0 0 {W} {H}\" preserveAspectRatio=\"none\" role=\"img\" aria-label=\"{title}\" data-chart=\"{title}\">\
<rect width=\"{W}\" height=\"{H}\" fill=\"#fff\"/>",
        legend(series)
    );
    for (i, minute) in hour.iter().enumerate() {
        let x = i as u64 * bar;
        let mut y = H;
        for s in series {
            let value = (s.value)(minute);
            if value == 0 {
                continue;
            }
            let height = (value * H).div_ceil(top).max(1);
            y = y.saturating_sub(height);
            let _ = write!(
                svg,
                "<rect x=\"{x}\" y=\"{y}\" width=\"{}\" height=\"{height}\" fill=\"{}\" data-series=\"{}\" data-value=\"{value}\" data-minute=\"{}\"><title>{} {}: {value}</title></rect>",
                bar - 1,
                s.color,
                s.name,
                minute.at,
                minute_label(i),
                s.name
            );
        }
    }
    svg.push_str("</svg></figure>");
    svg
}

/// A small line of one key's last hour: attempts (dark) and 429s (red), on one scale.
pub fn sparkline(hour: &[Minute; MINUTES]) -> String {
    const W: u64 = 120;
    const H: u64 = 24;
    let attempts: Vec<u64> = hour.iter().map(|m| m.ok + m.limited + m.errors).collect();
    let limited: Vec<u64> = hour.iter().map(|m| m.limited).collect();
    let top = attempts.iter().copied().max().unwrap_or(0).max(1);
    let points = |values: &[u64]| -> String {
        values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let x = i as u64 * W / (MINUTES as u64 - 1);
                let y = H - 1 - v * (H - 2) / top;
                format!("{x},{y}")
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let total: u64 = attempts.iter().sum();
    let total_limited: u64 = limited.iter().sum();
    format!(
        "<svg class=\"spark\" viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"last hour\" data-attempts=\"{total}\" data-limited=\"{total_limited}\">\
<title>last hour: {total} attempts, {total_limited} answered 429</title>\
<polyline points=\"{}\" fill=\"none\" stroke=\"#333\" stroke-width=\"1.5\"/>\
<polyline points=\"{}\" fill=\"none\" stroke=\"#b3261e\" stroke-width=\"1.5\"/></svg>",
        points(&attempts),
        points(&limited)
    )
}

/// A bar per limit window: how full it is.
pub fn windows(model: &str, uses: &[WindowUse]) -> String {
    let mut out = String::new();
    for u in uses {
        let text = u.limit.text();
        let cap = match u.limit {
            crate::keys::limits::Limit::PerMinute(n)
            | crate::keys::limits::Limit::PerDay(n)
            | crate::keys::limits::Limit::TokensPerMinute(n) => n,
        };
        let fill = (u.used.min(cap) * 100) / cap.max(1);
        let color = if u.used >= cap { "#b3261e" } else { "#17663a" };
        let _ = write!(
            out,
            "<div class=\"win\"><small>{} {text}: {}</small><svg viewBox=\"0 0 100 6\" preserveAspectRatio=\"none\" data-window=\"{text}\" data-used=\"{}\">\
<rect width=\"100\" height=\"6\" fill=\"#e5e5e5\"/><rect width=\"{fill}\" height=\"6\" fill=\"{color}\"/></svg></div>",
            super::status_page::esc(model),
            u.used,
            u.used
        );
    }
    out
}

fn legend(series: &[Series]) -> String {
    series
        .iter()
        .map(|s| {
            format!(
                "<span class=\"key\"><i style=\"background:{}\"></i>{}</span>",
                s.color, s.name
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn minute_label(i: usize) -> String {
    match MINUTES - 1 - i {
        0 => "this minute".to_string(),
        ago => format!("{ago} min ago"),
    }
}
