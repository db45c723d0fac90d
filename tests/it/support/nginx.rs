//! A real nginx for the tests that run keyrelay behind it, with a site from deploy/: started
//! as root or not, in a temp directory; stopped on drop.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::proxy::TempDir;
use super::wait_until;

pub fn nginx_binary() -> Option<PathBuf> {
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
pub struct Nginx {
    child: Child,
    pub port: u16,
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

/// Starts nginx with `site` (a site from deploy/, its upstream servers already pointed at the
/// test's keyrelay), its `listen 80;` moved to a free port of 127.0.0.1.
pub fn start_nginx(site: &str) -> Nginx {
    let binary = nginx_binary().expect("nginx is not installed (apt-get install nginx-light)");
    assert!(site.contains("listen 80;"), "{site}");
    let port = free_port();
    let site = site.replace("listen 80;", &format!("listen 127.0.0.1:{port};"));
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
