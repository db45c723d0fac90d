//! The streaming client: opens many concurrent SSE streams through the proxy (one thread each,
//! raw HTTP/1.1), spread evenly over a short ramp so that the kernel's listen queues, not the
//! proxy, are not what is measured, and for every event records how long after the upstream
//! wrote it the client read it. Reports delay percentiles, streams that stalled or failed, the
//! peak number of streams open at once, and optionally the proxy's peak memory meanwhile.

use std::collections::BTreeMap;
use std::io::{self, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use crate::http::{self, BodyReader};
use crate::now_micros;
use crate::proc_status::Watcher;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Stack per stream thread.
const STREAM_STACK: usize = 128 * 1024;

/// What to run.
pub struct Options {
    /// The proxy.
    pub addr: SocketAddr,
    /// Request path, e.g. `/openai/v1/chat/completions`.
    pub path: String,
    /// Concurrent streams.
    pub streams: usize,
    /// Events each stream must deliver before `[DONE]`.
    pub events: u32,
    /// Silence after which a stream counts as stalled.
    pub stall: Duration,
    /// Longest a stream may take in all.
    pub deadline: Duration,
    /// Process whose memory is sampled during the run.
    pub watch_pid: Option<u32>,
    /// Stream `i` starts `ramp * i / streams` after the first.
    pub ramp: Duration,
}

/// How one stream ended.
enum Outcome {
    Ok,
    Stalled,
    Failed(String),
}

/// What one stream saw.
struct StreamReport {
    outcome: Outcome,
    /// Upstream write to client read, per event, in microseconds.
    delays_us: Vec<u64>,
    /// Request sent to first event read.
    first_event_us: Option<u64>,
    /// When the stream was opened and when it ended, from the common start.
    open: Option<(Duration, Duration)>,
}

/// Runs all streams at once and prints one `RESULT` line on stdout.
pub fn run(options: Options) -> Result<(), String> {
    let options = Arc::new(options);
    let barrier = Arc::new(Barrier::new(options.streams + 1));
    let mut handles = Vec::with_capacity(options.streams);
    let epoch = Instant::now();
    for index in 0..options.streams {
        let options = Arc::clone(&options);
        let barrier = Arc::clone(&barrier);
        let delay = options.ramp.mul_f64(index as f64 / options.streams as f64);
        let handle = thread::Builder::new()
            .stack_size(STREAM_STACK)
            .spawn(move || {
                barrier.wait();
                thread::sleep(delay);
                run_stream(&options, epoch)
            })
            .map_err(|e| format!("cannot start stream thread {index}: {e}"))?;
        handles.push(handle);
    }
    let watcher = options.watch_pid.map(Watcher::start);
    let started = Instant::now();
    barrier.wait();
    let reports: Vec<StreamReport> = handles
        .into_iter()
        .map(|h| {
            h.join()
                .unwrap_or_else(|_| failed("stream thread panicked"))
        })
        .collect();
    let wall = started.elapsed();
    let peak = watcher.map(Watcher::finish).unwrap_or_default();
    print_summary(&options, &reports, wall, peak);
    Ok(())
}

fn failed(message: &str) -> StreamReport {
    StreamReport {
        outcome: Outcome::Failed(message.to_string()),
        delays_us: Vec::new(),
        first_event_us: None,
        open: None,
    }
}

fn run_stream(options: &Options, epoch: Instant) -> StreamReport {
    let mut report = StreamReport {
        outcome: Outcome::Ok,
        delays_us: Vec::with_capacity(options.events as usize),
        first_event_us: None,
        open: None,
    };
    let opened = epoch.elapsed();
    if let Err(outcome) = stream_once(options, &mut report) {
        report.outcome = outcome;
    }
    report.open = Some((opened, epoch.elapsed()));
    report
}

/// The most streams open at the same moment.
fn peak_concurrency(reports: &[StreamReport]) -> usize {
    let mut edges: Vec<(Duration, i32)> = reports
        .iter()
        .filter_map(|r| r.open)
        .flat_map(|(from, to)| [(from, 1), (to, -1)])
        .collect();
    // Ends sort before starts at the same instant: touching intervals do not overlap.
    edges.sort_unstable();
    let mut open = 0i32;
    let mut peak = 0i32;
    for (_, step) in edges {
        open += step;
        peak = peak.max(open);
    }
    peak as usize
}

/// A read error as an outcome: silence is a stall, anything else a failure.
fn read_outcome(what: &str, err: &io::Error) -> Outcome {
    match err.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Outcome::Stalled,
        _ => Outcome::Failed(format!("{what}: {err}")),
    }
}

fn request(options: &Options) -> Vec<u8> {
    let body = "{\"model\":\"gpt-4o-mini\",\"stream\":true,\"messages\":[{\"role\":\"user\",\
\"content\":\"Count slowly from one to twenty.\"}]}";
    format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
Accept: text/event-stream\r\nAuthorization: Bearer client-token\r\nContent-Length: {}\r\n\r\n{}",
        options.path,
        options.addr,
        body.len(),
        body
    )
    .into_bytes()
}

fn stream_once(options: &Options, report: &mut StreamReport) -> Result<(), Outcome> {
    let stream = TcpStream::connect_timeout(&options.addr, CONNECT_TIMEOUT)
        .map_err(|e| Outcome::Failed(format!("connect: {e}")))?;
    let setup = |e: io::Error| Outcome::Failed(format!("socket setup: {e}"));
    stream.set_nodelay(true).map_err(setup)?;
    stream
        .set_read_timeout(Some(options.stall))
        .map_err(setup)?;
    stream
        .set_write_timeout(Some(options.stall))
        .map_err(setup)?;
    let sent = Instant::now();
    (&stream)
        .write_all(&request(options))
        .map_err(|e| read_outcome("send request", &e))?;
    let mut reader = BufReader::with_capacity(16 * 1024, &stream);
    let head = http::read_head(&mut reader)
        .map_err(|e| read_outcome("read response head", &e))?
        .ok_or_else(|| Outcome::Failed("closed before answering".into()))?;
    match head.status() {
        Some(200) => {}
        other => return Err(Outcome::Failed(format!("status {other:?}"))),
    }
    let framing = head
        .framing(true)
        .ok_or_else(|| Outcome::Failed("answer without a body".into()))?;
    let mut body = BodyReader::new(&mut reader, framing);
    let mut parser = SseParser::default();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = body
            .read(&mut buf)
            .map_err(|e| read_outcome("read body", &e))?;
        let now = now_micros();
        if n == 0 {
            break;
        }
        parser.feed(&buf[..n], now, &mut report.delays_us);
        if report.first_event_us.is_none() && parser.events > 0 {
            report.first_event_us = Some(sent.elapsed().as_micros() as u64);
        }
        if sent.elapsed() > options.deadline {
            return Err(Outcome::Failed("stream exceeded its deadline".into()));
        }
    }
    check_complete(&parser, options.events)
}

fn check_complete(parser: &SseParser, expected: u32) -> Result<(), Outcome> {
    if parser.events == expected && parser.done && parser.unstamped == 0 {
        return Ok(());
    }
    Err(Outcome::Failed(format!(
        "{} of {expected} events, {} unstamped, [DONE] {}",
        parser.events,
        parser.unstamped,
        if parser.done { "seen" } else { "missing" }
    )))
}

/// Splits the event stream into lines and reads each `data:` line's send stamp.
#[derive(Default)]
struct SseParser {
    pending: Vec<u8>,
    events: u32,
    unstamped: u32,
    done: bool,
}

impl SseParser {
    fn feed(&mut self, bytes: &[u8], now_us: u64, delays_us: &mut Vec<u64>) {
        self.pending.extend_from_slice(bytes);
        while let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            self.line(&line[..end], now_us, delays_us);
        }
    }

    fn line(&mut self, line: &[u8], now_us: u64, delays_us: &mut Vec<u64>) {
        let Some(data) = line.strip_prefix(b"data: ") else {
            return;
        };
        if data == b"[DONE]" {
            self.done = true;
            return;
        }
        self.events += 1;
        match sent_stamp(data) {
            Some(sent) => delays_us.push(now_us.saturating_sub(sent)),
            None => self.unstamped += 1,
        }
    }
}

/// The number after `"sent_us":` in an event's JSON.
fn sent_stamp(data: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"sent_us\":";
    let at = data.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let digits: Vec<u8> = data[at..]
        .iter()
        .copied()
        .take_while(u8::is_ascii_digit)
        .collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

/// Nearest-rank percentile of sorted values, in milliseconds.
fn percentile_ms(sorted_us: &[u64], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted_us.len() as f64).ceil() as usize;
    sorted_us[rank.clamp(1, sorted_us.len()) - 1] as f64 / 1000.0
}

fn print_summary(
    options: &Options,
    reports: &[StreamReport],
    wall: Duration,
    peak: crate::proc_status::Peak,
) {
    let mut delays: Vec<u64> = reports.iter().flat_map(|r| r.delays_us.clone()).collect();
    delays.sort_unstable();
    let mut firsts: Vec<u64> = reports.iter().filter_map(|r| r.first_event_us).collect();
    firsts.sort_unstable();
    let ok = count(reports, |o| matches!(o, Outcome::Ok));
    let stalled = count(reports, |o| matches!(o, Outcome::Stalled));
    let failed = count(reports, |o| matches!(o, Outcome::Failed(_)));
    print_failure_reasons(reports);
    println!(
        "RESULT streams={} concurrent_peak={} ok={ok} stalled={stalled} failed={failed} events={} \
delay_p50_ms={:.3} delay_p99_ms={:.3} delay_max_ms={:.3} first_event_p50_ms={:.3} \
first_event_p99_ms={:.3} first_event_max_ms={:.3} rss_peak_kib={} threads_peak={} wall_s={:.2}",
        options.streams,
        peak_concurrency(reports),
        delays.len(),
        percentile_ms(&delays, 50.0),
        percentile_ms(&delays, 99.0),
        percentile_ms(&delays, 100.0),
        percentile_ms(&firsts, 50.0),
        percentile_ms(&firsts, 99.0),
        percentile_ms(&firsts, 100.0),
        peak.rss_kib,
        peak.threads,
        wall.as_secs_f64()
    );
}

fn count(reports: &[StreamReport], test: impl Fn(&Outcome) -> bool) -> usize {
    reports.iter().filter(|r| test(&r.outcome)).count()
}

/// Lists distinct failure reasons on stderr, most common first.
fn print_failure_reasons(reports: &[StreamReport]) {
    let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
    for report in reports {
        let reason = match &report.outcome {
            Outcome::Ok => continue,
            Outcome::Stalled => "stalled (no byte for the stall limit)",
            Outcome::Failed(why) => why.as_str(),
        };
        *reasons.entry(reason).or_default() += 1;
    }
    let mut sorted: Vec<_> = reasons.into_iter().collect();
    sorted.sort_by_key(|&(_, n)| std::cmp::Reverse(n));
    for (reason, n) in sorted.iter().take(10) {
        eprintln!("sse client: {n} stream(s): {reason}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_events_split_across_reads() {
        let mut parser = SseParser::default();
        let mut delays = Vec::new();
        parser.feed(
            b"data: {\"a\":1,\"sent_us\":1000}\n\ndata: {\"sent",
            1500,
            &mut delays,
        );
        parser.feed(b"_us\":1200}\n\ndata: [DONE]\n\n", 2000, &mut delays);
        assert_eq!(delays, vec![500, 800]);
        assert!(parser.done);
        assert!(check_complete(&parser, 2).is_ok());
    }

    #[test]
    fn peak_concurrency_counts_overlaps_only() {
        let report = |from: u64, to: u64| StreamReport {
            open: Some((Duration::from_millis(from), Duration::from_millis(to))),
            ..failed("")
        };
        let reports = [report(0, 10), report(5, 15), report(10, 20), report(12, 13)];
        assert_eq!(peak_concurrency(&reports), 3);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u64> = (1..=100).map(|x| x * 1000).collect();
        assert_eq!(percentile_ms(&v, 50.0), 50.0);
        assert_eq!(percentile_ms(&v, 99.0), 99.0);
        assert_eq!(percentile_ms(&v, 100.0), 100.0);
    }
}
