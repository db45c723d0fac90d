//! The starvation check: many keep-alive connections opened at once, each sending the chat
//! request back to back for a fixed time. It reports, per connection, how many answers it got
//! and its longest wait for one, so a connection the proxy leaves unserved shows up (wrk only
//! reports requests that completed, so such a connection is invisible in its figures).

use std::io::{self, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use crate::http::{self, BodyReader};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A request that waits longer than the run plus this is given up on.
const ANSWER_GRACE: Duration = Duration::from_secs(2);

/// What to run.
pub struct Options {
    /// The target.
    pub addr: SocketAddr,
    /// Request path.
    pub path: String,
    /// JSON body of every request.
    pub body: String,
    /// Connections, all opened at once.
    pub conns: usize,
    /// How long each connection keeps sending.
    pub duration: Duration,
    /// A wait at least this long makes a connection count as starving.
    pub starve: Duration,
}

/// What one connection saw.
#[derive(Default)]
struct ConnReport {
    answered: u64,
    non2xx: u64,
    longest: Duration,
    error: Option<String>,
}

/// Runs the connections and prints one `RESULT` line on stdout.
pub fn run(options: Options) -> Result<(), String> {
    let options = Arc::new(options);
    let barrier = Arc::new(Barrier::new(options.conns));
    let handles = (0..options.conns)
        .map(|index| {
            let options = Arc::clone(&options);
            let barrier = Arc::clone(&barrier);
            thread::Builder::new()
                .stack_size(128 * 1024)
                .spawn(move || {
                    barrier.wait();
                    run_conn(&options)
                })
                .map_err(|e| format!("cannot start connection thread {index}: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let reports: Vec<ConnReport> = handles
        .into_iter()
        .map(|h| {
            h.join().unwrap_or_else(|_| ConnReport {
                error: Some("connection thread panicked".into()),
                ..ConnReport::default()
            })
        })
        .collect();
    print_summary(&options, &reports);
    Ok(())
}

fn run_conn(options: &Options) -> ConnReport {
    let mut report = ConnReport::default();
    let deadline = Instant::now() + options.duration;
    let request = request(options);
    let mut stream = None;
    while Instant::now() < deadline {
        let started = Instant::now();
        let result = exchange(&mut stream, options, &request);
        report.longest = report.longest.max(started.elapsed());
        match result {
            Ok(status) => {
                report.answered += 1;
                report.non2xx += u64::from(!(200..300).contains(&status));
            }
            Err(err) => {
                report.error = Some(err);
                break;
            }
        }
    }
    report
}

fn request(options: &Options) -> Vec<u8> {
    format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
Authorization: Bearer sk-client-placeholder\r\nContent-Length: {}\r\n\r\n{}",
        options.path,
        options.addr,
        options.body.len(),
        options.body
    )
    .into_bytes()
}

/// One request and its answer on the kept-alive connection (opened first if there is none).
/// Returns the status.
fn exchange(
    slot: &mut Option<BufReader<TcpStream>>,
    options: &Options,
    request: &[u8],
) -> Result<u16, String> {
    if slot.is_none() {
        *slot = Some(BufReader::new(connect(options)?));
    }
    let reader = slot.as_mut().ok_or("no connection")?;
    reader
        .get_mut()
        .write_all(request)
        .map_err(|e| format!("send: {e}"))?;
    let head = http::read_head(reader)
        .map_err(|e| describe("read answer", &e))?
        .ok_or("connection closed before answering")?;
    let status = head.status().ok_or("malformed status line")?;
    if let Some(framing) = head.framing(true) {
        io::copy(&mut BodyReader::new(reader, framing), &mut io::sink())
            .map_err(|e| describe("read body", &e))?;
    }
    let closing = head
        .header("connection")
        .is_some_and(|v| v.eq_ignore_ascii_case("close"));
    if closing {
        *slot = None;
    }
    Ok(status)
}

fn connect(options: &Options) -> Result<TcpStream, String> {
    let stream = TcpStream::connect_timeout(&options.addr, CONNECT_TIMEOUT)
        .map_err(|e| format!("connect: {e}"))?;
    let setup = |e: io::Error| format!("socket setup: {e}");
    stream.set_nodelay(true).map_err(setup)?;
    stream
        .set_read_timeout(Some(options.duration + ANSWER_GRACE))
        .map_err(setup)?;
    Ok(stream)
}

fn describe(what: &str, err: &io::Error) -> String {
    match err.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => format!("{what}: no answer"),
        _ => format!("{what}: {err}"),
    }
}

fn print_summary(options: &Options, reports: &[ConnReport]) {
    let mut answered: Vec<u64> = reports.iter().map(|r| r.answered).collect();
    answered.sort_unstable();
    let starving = reports
        .iter()
        .filter(|r| r.answered == 0 || r.longest >= options.starve)
        .count();
    let errors = reports.iter().filter(|r| r.error.is_some()).count();
    for error in reports.iter().filter_map(|r| r.error.as_deref()).take(5) {
        eprintln!("conns: {error}");
    }
    let longest = reports.iter().map(|r| r.longest).max().unwrap_or_default();
    println!(
        "RESULT conns={} starving={starving} never_answered={} answered_min={} \
answered_median={} answered_max={} longest_wait_ms={:.1} non2xx={} errors={errors}",
        options.conns,
        answered.iter().filter(|&&n| n == 0).count(),
        answered.first().copied().unwrap_or(0),
        answered.get(answered.len() / 2).copied().unwrap_or(0),
        answered.last().copied().unwrap_or(0),
        longest.as_secs_f64() * 1000.0,
        reports.iter().map(|r| r.non2xx).sum::<u64>(),
    );
}
