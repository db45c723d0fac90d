//! keyrelay behind real nginx configured with deploy/nginx.conf: SSE arrives event by event, a
//! 20 MiB upload passes byte-exact, an oversized body is refused. Needs nginx installed (.ci/run
//! installs it); without it the test says so and passes only outside CI.

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::http::{Conn, Req, body_reader, send};
use crate::support::mock::{Mock, Reply};
use crate::support::proxy::{TempDir, proxy_to};
use crate::support::wait_until;

const KEY: &str = "sk-nginx-test-key-0001";

fn nginx_binary() -> Option<PathBuf> {
    ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr").port()
}

/// A running nginx; stopped on drop.
struct Nginx {
    child: Child,
    port: u16,
    _dir: TempDir,
}

impl Drop for Nginx {
    /// SIGTERM, so the master stops its workers (SIGKILL would orphan them); SIGKILL only if it
    /// has not exited within 5 s.
    fn drop(&mut self) {
        // SAFETY: kill(2) on the pid of a child this struct owns and has not reaped.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let exited = wait_until(Duration::from_secs(5), || {
            matches!(self.child.try_wait(), Ok(Some(_)))
        });
        if !exited {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts nginx with the shipped site, its `listen` and keyrelay address rewritten for the test.
fn start_nginx(binary: &Path, keyrelay_port: u16) -> Nginx {
    let site = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/nginx.conf"))
        .expect("read deploy/nginx.conf");
    assert!(site.contains("server 127.0.0.1:3000;") && site.contains("listen 80;"));
    let port = free_port();
    let site = site
        .replace(
            "server 127.0.0.1:3000;",
            &format!("server 127.0.0.1:{keyrelay_port};"),
        )
        .replace("listen 80;", &format!("listen 127.0.0.1:{port};"));
    let dir = TempDir::new();
    let d = dir.0.display();
    std::fs::write(dir.0.join("site.conf"), site).expect("write site");
    let main = format!(
        "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 256; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
         include {d}/site.conf;\n}}\n"
    );
    std::fs::write(dir.0.join("nginx.conf"), main).expect("write nginx.conf");
    // As root, nginx's workers would switch to an unprivileged user that cannot write the
    // temp directory.
    let mut command = Command::new(binary);
    command.args(["-p", &d.to_string(), "-c", &format!("{d}/nginx.conf")]);
    if is_root() {
        command.args(["-g", "user root;"]);
    }
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nginx");
    let nginx = Nginx {
        child,
        port,
        _dir: dir,
    };
    let up = wait_until(Duration::from_secs(10), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    if !up {
        let log = std::fs::read_to_string(nginx._dir.0.join("error.log")).unwrap_or_default();
        drop(nginx);
        panic!("nginx did not start listening: {log}");
    }
    nginx
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

#[test]
#[ignore = "needs nginx: `bash .ci/run` installs it and runs the ignored tests too"]
fn behind_nginx_streams_uploads_and_refuses_oversized_bodies() {
    let binary = nginx_binary().expect("nginx is not installed (apt-get install nginx-light)");
    let events: Vec<Vec<u8>> = (1..=5)
        .map(|n| format!("data: {{\"n\":{n}}}\n\n").into_bytes())
        .collect();
    let mock = Mock::start(move |r| {
        if r.url.contains("stream") {
            Reply::Sse {
                events: events.clone(),
                gap: Duration::from_millis(500),
            }
        } else {
            Reply::ok_json()
        }
    });
    let proxy = proxy_to(&mock.url(), &[KEY], &[]).start();
    let nginx = start_nginx(&binary, proxy.port);

    // SSE: the first event must arrive long before the stream ends (5 events, 500 ms apart).
    let mut conn = Conn::open(nginx.port);
    let started = Instant::now();
    conn.write(&Req::post("/openai/v1/stream", b"{}").to_bytes(nginx.port));
    let head = conn.read_head();
    assert_eq!(head.status, 200);
    let mut body = body_reader(&head, &mut conn.reader, false);
    let mut seen = Vec::new();
    let mut arrivals = Vec::new();
    let mut buf = [0u8; 1024];
    while arrivals.len() < 5 {
        let n = body.read(&mut buf).expect("read SSE through nginx");
        assert!(
            n > 0,
            "stream ended early: {:?}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
        let complete = seen.windows(2).filter(|w| w == b"\n\n").count();
        while arrivals.len() < complete {
            arrivals.push(started.elapsed());
        }
    }
    // The events leave the mock 500 ms apart, 2 s from first to last. Buffering anywhere
    // delivers them together; a busy machine only shifts them all.
    assert!(
        arrivals[4] - arrivals[0] > Duration::from_millis(1000),
        "events arrived together (nginx or keyrelay buffered the stream): {arrivals:?}"
    );
    drop(body);

    // A 20 MiB upload passes byte-exact.
    let upload: Vec<u8> = (0..20 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let reply = send(nginx.port, &Req::post("/openai/v1/files", &upload));
    assert_eq!(reply.status, 200, "{}", reply.text());
    let received = mock.last();
    assert_eq!(received.body.len(), upload.len());
    assert!(received.body == upload, "upload changed on the way");

    // Over client_max_body_size (32m): nginx refuses it and nothing reaches the upstream.
    let before = mock.count();
    let mut conn = Conn::open(nginx.port);
    conn.write(
        b"POST /openai/v1/files HTTP/1.1\r\nHost: x\r\nContent-Length: 40000000\r\nConnection: close\r\n\r\n",
    );
    let head = conn.read_head();
    assert_eq!(head.status, 413);
    assert_eq!(mock.count(), before);
}
