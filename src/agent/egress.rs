//! Egress: how a provider's requests leave the machine. `<NAME>_EGRESS` lists HTTP CONNECT
//! proxies (`http://[user:pass@]host:port`), SOCKS5 proxies (`socks5://`, `socks5h://` where
//! the proxy resolves names) and `direct`; the key at position i leaves through entry i mod m,
//! so each key always shows the provider the same address. Without the variable, the standard
//! HTTPS_PROXY / ALL_PROXY / NO_PROXY apply (ureq's reading of them). Credentials in an entry
//! are shown masked everywhere.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::warn;
use ureq::Proxy;

use crate::keys::mask_userinfo;

/// One way out.
#[derive(Debug)]
pub struct Egress {
    /// The proxy; `None` for `direct`.
    pub proxy: Option<Proxy>,
    /// The entry with any credentials masked: how it is shown.
    pub shown: String,
    attempts: AtomicU64,
    failures: AtomicU64,
    /// 429s in the last minute: when, and which key (its position).
    limited: Mutex<Vec<(Instant, usize)>>,
    /// Unix seconds of the last "unreachable" and "throttled" warnings.
    warned_dead: AtomicU64,
    warned_throttled: AtomicU64,
}

/// Counters of one egress, for /status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EgressCounts {
    pub attempts: u64,
    pub failures: u64,
    pub rate_limited_last_minute: usize,
}

/// How long a 429 counts toward the throttling check and /status.
const RECENT: Duration = Duration::from_secs(60);

impl Egress {
    /// Parses one entry of `<NAME>_EGRESS`; the error never shows credentials.
    pub fn parse(entry: &str) -> Result<Egress, String> {
        let entry = entry.trim();
        let shown = mask_userinfo(entry);
        if entry.eq_ignore_ascii_case("direct") {
            return Ok(Egress::new(None, "direct".to_string()));
        }
        let scheme = entry.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        if !matches!(
            scheme.as_deref(),
            Some("http" | "https" | "socks5" | "socks5h")
        ) {
            return Err(format!(
                "{shown:?} is not direct, http://host:port, socks5://host:port or socks5h://host:port"
            ));
        }
        let proxy =
            Proxy::new(entry).map_err(|_| format!("{shown:?} is not a usable proxy URL"))?;
        Ok(Egress::new(Some(proxy), shown))
    }

    fn new(proxy: Option<Proxy>, shown: String) -> Egress {
        Egress {
            proxy,
            shown,
            attempts: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            limited: Mutex::new(Vec::new()),
            warned_dead: AtomicU64::new(0),
            warned_throttled: AtomicU64::new(0),
        }
    }

    /// Counts an attempt through this egress.
    pub fn attempted(&self) {
        self.attempts.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an attempt that could not get through (the egress could not be reached or
    /// refused), with one WARN a minute at most.
    pub fn failed(&self, provider: &str, why: &str) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        if once_a_minute(&self.warned_dead) {
            warn!(
                "{provider}: egress {} cannot be used ({why}); its keys' requests move to the next key, nothing is benched",
                self.shown
            );
        }
    }

    /// Counts a 429 for the key at `position`; when every key behind this egress (`keys`) got
    /// one within the minute, says (once a minute) that the egress's address looks throttled.
    pub fn rate_limited(&self, provider: &str, position: usize, keys: &[usize]) {
        let now = Instant::now();
        let mut limited = self.limited.lock().unwrap_or_else(|p| p.into_inner());
        limited.retain(|(at, _)| now.duration_since(*at) < RECENT);
        limited.push((now, position));
        let all = keys.len() >= 2 && keys.iter().all(|k| limited.iter().any(|(_, hit)| hit == k));
        drop(limited);
        if all && once_a_minute(&self.warned_throttled) {
            warn!(
                "{provider}: every key behind egress {} ({} keys) got 429 within a minute: this looks like the egress's IP address being throttled, not the keys; spread the keys over more egresses",
                self.shown,
                keys.len()
            );
        }
    }

    /// The counters now.
    pub fn counts(&self) -> EgressCounts {
        let now = Instant::now();
        let limited = self.limited.lock().unwrap_or_else(|p| p.into_inner());
        EgressCounts {
            attempts: self.attempts.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            rate_limited_last_minute: limited
                .iter()
                .filter(|(at, _)| now.duration_since(*at) < RECENT)
                .count(),
        }
    }
}

/// True at most once a minute per `last` (unix seconds of the last true).
fn once_a_minute(last: &AtomicU64) -> bool {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let before = last.load(Ordering::Relaxed);
    now.saturating_sub(before) >= 60
        && last
            .compare_exchange(before, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_parse_and_never_show_credentials() {
        let http = Egress::parse("http://user:s3cret@127.0.0.1:8888").unwrap();
        assert_eq!(http.shown, "http://***@127.0.0.1:8888");
        assert!(http.proxy.is_some());
        let socks = Egress::parse(" socks5h://127.0.0.1:1080 ").unwrap();
        assert_eq!(socks.shown, "socks5h://127.0.0.1:1080");
        assert!(Egress::parse("DIRECT").unwrap().proxy.is_none());
        let slashed = Egress::parse("socks5://u:se/cr?e#t@127.0.0.1:1080").unwrap();
        assert_eq!(slashed.shown, "socks5://***@127.0.0.1:1080");
        for bad in ["ftp://user:s3cret@h:1", "127.0.0.1:8080", "socks4://h:1"] {
            let error = Egress::parse(bad).unwrap_err();
            assert!(!error.contains("s3cret"), "{error}");
        }
    }

    #[test]
    fn every_key_limited_within_a_minute_is_throttling() {
        let egress = Egress::parse("direct").unwrap();
        egress.rate_limited("p", 0, &[0, 2]);
        assert_eq!(egress.counts().rate_limited_last_minute, 1);
        egress.rate_limited("p", 2, &[0, 2]);
        assert_eq!(egress.counts().rate_limited_last_minute, 2);
        assert!(egress.warned_throttled.load(Ordering::Relaxed) > 0);
    }
}
