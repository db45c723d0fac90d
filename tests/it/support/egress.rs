//! Real outbound proxies for the egress tests, from Debian's packages: tinyproxy (HTTP CONNECT)
//! and microsocks (SOCKS5), each on a free port of 127.0.0.1 with its own log, stopped on drop.

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use super::proxy::TempDir;
use super::wait_until;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn wait_listening(port: u16, what: &str) {
    let up = wait_until(Duration::from_secs(10), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    assert!(up, "{what} did not listen on {port}");
}

/// A running tinyproxy.
pub struct TinyProxy {
    child: Child,
    pub port: u16,
    dir: TempDir,
}

impl TinyProxy {
    /// Starts one; with `auth`, it asks for that user and password (BasicAuth).
    pub fn start(auth: Option<(&str, &str)>) -> TinyProxy {
        let port = free_port();
        let dir = TempDir::new();
        let log = dir.0.join("tinyproxy.log");
        let mut config = format!(
            "Port {port}\nListen 127.0.0.1\nTimeout 30\nMaxClients 50\nAllow 127.0.0.1\n\
             LogFile \"{}\"\nLogLevel Info\nPidFile \"{}\"\n",
            log.display(),
            dir.0.join("tinyproxy.pid").display()
        );
        if let Some((user, password)) = auth {
            config.push_str(&format!("BasicAuth {user} {password}\n"));
        }
        // No ConnectPort line: CONNECT to any port (the test upstreams are not on 443).
        let path = dir.0.join("tinyproxy.conf");
        std::fs::write(&path, config).expect("write tinyproxy.conf");
        let child = Command::new("tinyproxy")
            .arg("-d")
            .arg("-c")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tinyproxy (apt-get install tinyproxy)");
        wait_listening(port, "tinyproxy");
        TinyProxy { child, port, dir }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("tinyproxy.log")).unwrap_or_default()
    }

    /// How many tunnels it opened to `target` (`host:port`).
    pub fn connects_to(&self, target: &str) -> usize {
        self.log()
            .lines()
            .filter(|l| l.contains("CONNECT") && l.contains(target))
            .count()
    }
}

impl Drop for TinyProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running microsocks, its output collected.
pub struct MicroSocks {
    child: Child,
    pub port: u16,
    output: Arc<Mutex<String>>,
}

impl MicroSocks {
    pub fn start() -> MicroSocks {
        let port = free_port();
        let mut child = Command::new("microsocks")
            .args(["-i", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start microsocks (apt-get install microsocks)");
        let output = Arc::new(Mutex::new(String::new()));
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let output = Arc::clone(&output);
            thread::spawn(move || {
                let mut stream = stream;
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    output
                        .lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
        }
        wait_listening(port, "microsocks");
        MicroSocks {
            child,
            port,
            output,
        }
    }

    pub fn url(&self) -> String {
        format!("socks5://127.0.0.1:{}", self.port)
    }

    /// How many connections it made to `target` (`host:port`), from its output.
    pub fn connects_to(&self, target: &str) -> usize {
        self.output
            .lock()
            .unwrap()
            .lines()
            .filter(|l| l.contains("connected to") && l.contains(target))
            .count()
    }

    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }
}

impl Drop for MicroSocks {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
