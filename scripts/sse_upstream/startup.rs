//! Start-up timing: spawns the proxy several times and measures from spawn to ready, where
//! ready is whichever comes first of its `listening on` line on stderr (printed only at
//! LOG_LEVEL=info or lower) and its port accepting a connection.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Pause between connection attempts: short against a 20 ms target, long enough not to
/// starve the starting process of CPU.
const POLL_EVERY: Duration = Duration::from_micros(200);

/// What to run.
pub struct Options {
    /// The proxy binary.
    pub bin: PathBuf,
    /// Its working directory (so it finds no stray .env).
    pub dir: PathBuf,
    /// Port it is told to listen on (127.0.0.1).
    pub port: u16,
    /// How many start-ups to time.
    pub runs: usize,
    /// Give up on one start-up after this long.
    pub timeout: Duration,
    /// Its whole environment.
    pub envs: Vec<(String, String)>,
}

/// Times the start-ups and prints one `RESULT` line on stdout.
pub fn run(options: &Options) -> Result<(), String> {
    let mut times_ms = Vec::with_capacity(options.runs);
    let mut signal = "";
    for _ in 0..options.runs {
        let (elapsed, how) = once(options)?;
        times_ms.push(elapsed.as_secs_f64() * 1000.0);
        signal = how;
    }
    times_ms.sort_by(f64::total_cmp);
    let median = times_ms[times_ms.len() / 2];
    println!(
        "RESULT startup_ms_median={median:.2} startup_ms_min={:.2} startup_ms_max={:.2} runs={} signal={signal}",
        times_ms[0],
        times_ms[times_ms.len() - 1],
        times_ms.len()
    );
    Ok(())
}

/// One start-up: spawn, wait for ready, kill.
fn once(options: &Options) -> Result<(Duration, &'static str), String> {
    let start = Instant::now();
    let mut child = Command::new(&options.bin)
        .current_dir(&options.dir)
        .env_clear()
        .envs(options.envs.iter().cloned())
        .env("PORT", options.port.to_string())
        .env("HOST", "127.0.0.1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", options.bin.display()))?;
    let (ready_rx, lines) = watch_stderr(&mut child);
    let result = wait_ready(&ready_rx, options, start);
    let _ = child.kill();
    let _ = child.wait();
    let lines = lines.join().unwrap_or_default();
    result.map_err(|why| format!("{why}; its stderr:\n{}", lines.join("\n")))
}

/// Reads the child's stderr on a thread: signals the listening line, returns all lines.
fn watch_stderr(child: &mut Child) -> (Receiver<()>, JoinHandle<Vec<String>>) {
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take();
    let handle = thread::spawn(move || {
        let mut lines = Vec::new();
        let Some(stderr) = stderr else {
            return lines;
        };
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line.contains("listening on") {
                let _ = tx.send(());
            }
            lines.push(line);
        }
        lines
    });
    (rx, handle)
}

fn wait_ready(
    ready: &Receiver<()>,
    options: &Options,
    start: Instant,
) -> Result<(Duration, &'static str), String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], options.port));
    loop {
        match ready.try_recv() {
            Ok(()) => return Ok((start.elapsed(), "line")),
            Err(TryRecvError::Disconnected) => return Err("exited before listening".into()),
            Err(TryRecvError::Empty) => {}
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(50)).is_ok() {
            return Ok((start.elapsed(), "port"));
        }
        if start.elapsed() > options.timeout {
            return Err(format!("not ready after {:?}", options.timeout));
        }
        thread::sleep(POLL_EVERY);
    }
}
