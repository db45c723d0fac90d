//! Counters for /metrics: requests by provider, route and status class, and request durations.
//! Per-key attempt counters live in the key pools; gauges are read at scrape time.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::small_map::{SmallMap, small_map};

/// Upper bounds (seconds) of the request duration histogram buckets.
pub const DURATION_BUCKETS: [f64; 13] = [
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// Upper bounds (seconds) of the queue-wait histogram buckets.
pub const QUEUE_WAIT_BUCKETS: [f64; 11] = [
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0,
];

/// Distinct (provider, route) pairs kept, each with one series per status class seen; later
/// routes count as `other`, so odd paths cannot bloat the metrics without bound.
const MAX_ROUTES: usize = 200;

/// A duration histogram.
#[derive(Debug, Clone)]
pub struct Histogram {
    /// Upper bounds of the buckets, in seconds.
    pub bounds: &'static [f64],
    /// Count per bucket (not cumulative), plus one for +Inf.
    pub buckets: Vec<u64>,
    /// Sum of all observations in seconds.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, seconds: f64) {
        let index = self
            .bounds
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(self.bounds.len());
        self.buckets[index] += 1;
        self.sum += seconds;
        self.count += 1;
    }
}

/// Request counters keyed by (provider, route, status class such as `2xx`).
pub type RequestCounts = HashMap<(String, String, String), u64>;

/// Counts per status class (index = status / 100) of one route.
type ClassCounts = [u64; 10];

/// One provider's counters.
struct ProviderCounts {
    /// By route: looked up by `&str`, so a request on a known route allocates nothing.
    routes: SmallMap<String, ClassCounts>,
    durations: Histogram,
}

struct State {
    providers: SmallMap<String, ProviderCounts>,
    /// Distinct (provider, route) pairs counted.
    routes: usize,
    queue_wait: Histogram,
}

/// Process-wide request metrics.
pub struct Metrics {
    state: Mutex<State>,
    workers_busy: AtomicUsize,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            state: Mutex::new(State {
                providers: small_map(),
                routes: 0,
                queue_wait: Histogram::new(&QUEUE_WAIT_BUCKETS),
            }),
            workers_busy: AtomicUsize::new(0),
        }
    }
}

impl Metrics {
    /// Records one finished request.
    pub fn record(&self, provider: &str, route: &str, status: u16, elapsed: Duration) {
        let class = usize::from(status / 100).min(9);
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let State {
            providers, routes, ..
        } = &mut *state;
        if !providers.contains_key(provider) {
            let fresh = ProviderCounts {
                routes: small_map(),
                durations: Histogram::new(&DURATION_BUCKETS),
            };
            providers.insert(provider.to_string(), fresh);
        }
        let counts = providers.get_mut(provider).expect("inserted above");
        counts.durations.observe(elapsed.as_secs_f64());
        match counts.routes.get_mut(route) {
            Some(classes) => classes[class] += 1,
            None => {
                let label = if *routes < MAX_ROUTES { route } else { "other" };
                let classes = counts.routes.entry(label.to_string()).or_insert_with(|| {
                    *routes += 1;
                    ClassCounts::default()
                });
                classes[class] += 1;
            }
        }
    }

    /// Records how long a request waited for a worker.
    pub fn record_queue_wait(&self, waited: Duration) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.queue_wait.observe(waited.as_secs_f64());
    }

    /// Marks a worker busy until the returned guard drops.
    pub fn worker_busy(&self) -> BusyWorker<'_> {
        self.workers_busy.fetch_add(1, Ordering::Relaxed);
        BusyWorker(&self.workers_busy)
    }

    /// Workers handling a request now.
    pub fn workers_busy(&self) -> usize {
        self.workers_busy.load(Ordering::Relaxed)
    }

    /// A copy of the counters: requests, durations by provider, queue wait.
    pub fn snapshot(&self) -> (RequestCounts, HashMap<String, Histogram>, Histogram) {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let requests = state
            .providers
            .iter()
            .flat_map(|(provider, counts)| {
                counts.routes.iter().flat_map(move |(route, counts)| {
                    counts
                        .iter()
                        .enumerate()
                        .filter(|(_, n)| **n > 0)
                        .map(move |(class, n)| {
                            ((provider.clone(), route.clone(), format!("{class}xx")), *n)
                        })
                })
            })
            .collect();
        let durations = state
            .providers
            .iter()
            .map(|(provider, counts)| (provider.clone(), counts.durations.clone()))
            .collect();
        (requests, durations, state.queue_wait.clone())
    }
}

/// Keeps the busy-worker gauge up while alive.
pub struct BusyWorker<'a>(&'a AtomicUsize);

impl Drop for BusyWorker<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The route label for a path below a provider prefix: up to three segments, without the
/// query (`v1/chat/completions`, `v1beta/models/gemini-2.0-flash:generateContent`).
pub fn route_label(rest: &str) -> Cow<'_, str> {
    let path = rest.split('?').next().unwrap_or("").trim_start_matches('/');
    if !path.contains("//") {
        // No empty segment: the label is the path up to its third slash.
        let end = path
            .match_indices('/')
            .nth(2)
            .map_or(path.len(), |(i, _)| i);
        return Cow::Borrowed(path[..end].trim_end_matches('/'));
    }
    let label: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).take(3).collect();
    Cow::Owned(label.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_buckets() {
        let metrics = Metrics::default();
        metrics.record(
            "openai",
            "v1/chat/completions",
            200,
            Duration::from_millis(30),
        );
        metrics.record(
            "openai",
            "v1/chat/completions",
            429,
            Duration::from_secs(400),
        );
        let (requests, durations, _) = metrics.snapshot();
        let key = |class: &str| {
            (
                "openai".to_string(),
                "v1/chat/completions".to_string(),
                class.to_string(),
            )
        };
        assert_eq!(requests[&key("2xx")], 1);
        assert_eq!(requests[&key("4xx")], 1);
        let h = &durations["openai"];
        assert_eq!(h.count, 2);
        assert_eq!(h.buckets[1], 1, "30 ms lands in the 0.05 s bucket");
        assert_eq!(h.buckets[DURATION_BUCKETS.len()], 1, "400 s lands in +Inf");
    }

    #[test]
    fn routes_are_bounded() {
        let metrics = Metrics::default();
        for i in 0..(MAX_ROUTES + 50) {
            metrics.record("openai", &format!("r{i}"), 200, Duration::ZERO);
        }
        let (requests, _, _) = metrics.snapshot();
        assert!(requests.len() <= MAX_ROUTES + 1);
        assert!(requests.keys().any(|(_, route, _)| route == "other"));
    }

    #[test]
    fn route_labels() {
        assert_eq!(
            route_label("v1/chat/completions?x=1"),
            "v1/chat/completions"
        );
        assert_eq!(
            route_label("v1beta/models/g:generateContent/extra"),
            "v1beta/models/g:generateContent"
        );
        assert_eq!(route_label(""), "");
        assert_eq!(route_label("/v1/models/"), "v1/models");
        assert_eq!(route_label("v1//models///x/y"), "v1/models/x");
    }

    #[test]
    fn busy_gauge() {
        let metrics = Metrics::default();
        let busy = metrics.worker_busy();
        assert_eq!(metrics.workers_busy(), 1);
        drop(busy);
        assert_eq!(metrics.workers_busy(), 0);
    }
}
