//! Spawning the keyrelay binary hermetically: cleared environment, a fresh working directory,
//! PORT=0; parses the listen port from stderr and keeps collecting the log for later searches.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::channel;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const START_TIMEOUT: Duration = Duration::from_secs(10);
const CLI_TIMEOUT: Duration = Duration::from_secs(10);

/// A fresh, uniquely named directory under the system temp dir; removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let name = format!(
            "keyrelay-it-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes an environment file `keyrelay.env` into `dir`; its path, for ENV_FILE.
pub fn write_env(dir: &TempDir, text: &str) -> String {
    let path = dir.0.join("keyrelay.env");
    std::fs::write(&path, text).expect("write env file");
    path.display().to_string()
}

/// What to start the binary with.
#[derive(Clone, Default)]
pub struct ProxyBuilder {
    env: Vec<(String, String)>,
    dotenv: Option<String>,
    nofile: Option<u64>,
}

/// A builder with PORT=0 and HOST=127.0.0.1 and nothing else.
pub fn proxy() -> ProxyBuilder {
    ProxyBuilder::default()
        .env("PORT", "0")
        .env("HOST", "127.0.0.1")
}

/// A builder for a proxy whose two providers both point at `upstream` with the given keys
/// (an empty key list leaves that provider's variable unset).
pub fn proxy_to(upstream: &str, openai_keys: &[&str], gemini_keys: &[&str]) -> ProxyBuilder {
    let mut b = proxy()
        .env("OPENAI_BASE_URL", upstream)
        .env("GEMINI_BASE_URL", upstream);
    if !openai_keys.is_empty() {
        b = b.env("OPENAI_API_KEYS", &openai_keys.join(","));
    }
    if !gemini_keys.is_empty() {
        b = b.env("GEMINI_API_KEYS", &gemini_keys.join(","));
    }
    b
}

/// What a run of the binary that exits by itself produced.
#[derive(Debug)]
pub struct CliOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl ProxyBuilder {
    /// Sets (or replaces) one environment variable.
    pub fn env(mut self, name: &str, value: &str) -> ProxyBuilder {
        self.env.retain(|(n, _)| n != name);
        self.env.push((name.to_string(), value.to_string()));
        self
    }

    /// Writes `.env` with this content into the working directory.
    pub fn dotenv(mut self, content: &str) -> ProxyBuilder {
        self.dotenv = Some(content.to_string());
        self
    }

    /// Starts the binary with RLIMIT_NOFILE lowered to `limit` (through `sh -c 'ulimit -n ..
    /// && exec ..'`, so the pid is still the proxy's).
    pub fn nofile_limit(mut self, limit: u64) -> ProxyBuilder {
        self.nofile = Some(limit);
        self
    }

    fn command(&self, dir: &TempDir, args: &[&str]) -> Command {
        if let Some(content) = &self.dotenv {
            std::fs::write(dir.0.join(".env"), content).expect("write .env");
        }
        let bin = env!("CARGO_BIN_EXE_keyrelay");
        let mut cmd = match self.nofile {
            None => Command::new(bin),
            Some(limit) => {
                let mut sh = Command::new("/bin/sh");
                sh.arg("-c")
                    .arg(format!("ulimit -n {limit} && exec \"$0\" \"$@\""))
                    .arg(bin);
                sh
            }
        };
        cmd.env_clear()
            .envs(self.env.iter().map(|(n, v)| (n, v)))
            .args(args)
            .current_dir(&dir.0)
            .stdin(Stdio::null());
        cmd
    }

    /// Starts the proxy and waits until it logs its listen address.
    pub fn start(&self) -> Proxy {
        let dir = TempDir::new();
        let mut child = self
            .command(&dir, &[])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn keyrelay");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (port_tx, port_rx) = channel();
        let log_w = Arc::clone(&log);
        thread::spawn(move || {
            let mut reader = BufReader::new(stderr);
            let mut port_tx = Some(port_tx);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                let line = String::from_utf8_lossy(&buf).trim_end().to_string();
                let port = parse_listen_port(&line);
                // Logged before the port is announced, so the start-up lines are all visible.
                log_w.lock().unwrap().push(line);
                if let Some(port) = port
                    && let Some(tx) = port_tx.take()
                {
                    let _ = tx.send(port);
                }
            }
        });
        let port = match port_rx.recv_timeout(START_TIMEOUT) {
            Ok(port) => port,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "keyrelay did not log `listening on http://127.0.0.1:<port>` within {:?}; stderr:\n{}",
                    START_TIMEOUT,
                    log.lock().unwrap().join("\n")
                );
            }
        };
        Proxy {
            child,
            port,
            log,
            _dir: dir,
        }
    }

    /// Runs the binary with `args` to completion (killed after 10 s) and captures its output.
    pub fn run(&self, args: &[&str]) -> CliOutput {
        let dir = TempDir::new();
        let mut child = self
            .command(&dir, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn keyrelay");
        let out = drain(child.stdout.take().expect("stdout"));
        let err = drain(child.stderr.take().expect("stderr"));
        let deadline = Instant::now() + CLI_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait keyrelay") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("keyrelay {args:?} did not exit within {CLI_TIMEOUT:?}");
            }
            thread::sleep(Duration::from_millis(10));
        };
        let stdout = out.recv_timeout(CLI_TIMEOUT).unwrap_or_default();
        let stderr = err.recv_timeout(CLI_TIMEOUT).unwrap_or_default();
        CliOutput {
            status,
            stdout,
            stderr,
        }
    }
}

fn drain(mut r: impl Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = channel();
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        let _ = tx.send(String::from_utf8_lossy(&buf).into_owned());
    });
    rx
}

fn parse_listen_port(line: &str) -> Option<u16> {
    let rest = &line[line.find("listening on http://127.0.0.1:")? + 30..];
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// A running proxy; killed on drop.
pub struct Proxy {
    child: Child,
    pub port: u16,
    log: Arc<Mutex<Vec<String>>>,
    _dir: TempDir,
}

impl Proxy {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the process has exited (e.g. aborted), `None` while it runs.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Sends signal `name` (`TERM`, `INT`, ...) to the proxy with `kill -s`.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args(["-s", name, &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -s {name} {} failed", self.pid());
    }

    /// Waits up to `timeout` for the process to exit; its status, or `None` if still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exit_status() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Every stderr line so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    pub fn log_text(&self) -> String {
        self.log().join("\n")
    }

    /// Polls the log until `pred` holds or `timeout` passes; returns whether it held.
    pub fn wait_log(&self, timeout: Duration, pred: impl Fn(&[String]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if pred(&self.log()) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for `n` per-request lines that contain `part` and returns those: a count that does
    /// not depend on how many readiness or /metrics requests the test made, nor on whether the
    /// last of them has been logged yet.
    pub fn request_lines_with(&self, n: usize, part: &str) -> Vec<String> {
        let is_req =
            |l: &String| l.contains("status=") && l.contains("attempts=") && l.contains(part);
        let ok = self.wait_log(Duration::from_secs(5), |lines| {
            lines.iter().filter(|l| is_req(l)).count() >= n
        });
        assert!(
            ok,
            "expected {n} request log lines with {part:?}, log:\n{}",
            self.log_text()
        );
        self.log().into_iter().filter(is_req).collect()
    }

    /// Waits for `n` per-request lines (`status=` and `attempts=`) and returns them.
    pub fn request_lines(&self, n: usize) -> Vec<String> {
        self.request_lines_with(n, "")
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
