//! keyrelay's upstream connections: kept and reused while the upstream keeps them open, and
//! never reused once the upstream has closed one or sent bytes nobody asked for. The upstream
//! here is a raw TCP server so that each test controls exactly when a connection ends.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crate::support::http::{Req, send};
use crate::support::proxy::proxy_to;

const KEY: &str = "sk-pool-key-aaaa-0001";
const PATH: &str = "/openai/v1/chat/completions";
const ANSWER: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"ok\":true}";

/// What the upstream does with a connection after each answer.
#[derive(Clone, Copy)]
enum AfterAnswer {
    /// Waits for the next request (keep-alive, as real APIs do).
    Keep,
    /// Closes it shortly after (an upstream's idle timeout, or a load balancer's).
    Close,
    /// Writes an answer nobody asked for and keeps it open.
    Garbage,
}

/// A raw HTTP/1.1 upstream on 127.0.0.1: counts connections and requests.
struct Upstream {
    port: u16,
    connections: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<String>>>,
}

impl Upstream {
    fn start(after: AfterAnswer) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (c, r) = (Arc::clone(&connections), Arc::clone(&requests));
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                c.fetch_add(1, Ordering::SeqCst);
                let r = Arc::clone(&r);
                thread::spawn(move || serve(stream, after, &r));
            }
        });
        Upstream {
            port,
            connections,
            requests,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// Answers requests on one connection until it ends or `after` ends it.
fn serve(stream: TcpStream, after: AfterAnswer, requests: &Mutex<Vec<String>>) {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        requests
            .lock()
            .unwrap()
            .push(request_line.trim_end().to_string());
        if writer.write_all(ANSWER).is_err() {
            return;
        }
        match after {
            AfterAnswer::Keep => {}
            AfterAnswer::Close => {
                thread::sleep(Duration::from_millis(20));
                return;
            }
            AfterAnswer::Garbage => {
                // Later than the answer, so that it arrives while the connection sits in the
                // pool (bytes read together with the answer would never let it be pooled), and
                // shaped like an answer, so that a reused connection would show as a 500.
                thread::sleep(Duration::from_millis(50));
                let _ = writer
                    .write_all(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n");
            }
        }
    }
}

/// Sends `n` requests, one after another, each on a new client connection, pausing between
/// them so the upstream's close or stray bytes arrive before the next request.
fn send_requests(proxy_port: u16, n: usize, pause: Duration) -> Vec<u16> {
    (0..n)
        .map(|i| {
            if i > 0 {
                thread::sleep(pause);
            }
            let body = br#"{"model":"gpt-4o-mini","messages":[]}"#;
            send(proxy_port, &Req::post(PATH, body)).status
        })
        .collect()
}

/// What the upstream saw of `n` requests through keyrelay, `pause` apart, when it does `after`
/// each answer.
struct Seen {
    statuses: Vec<u16>,
    requests: usize,
    connections: usize,
}

fn through_keyrelay(after: AfterAnswer, n: usize, pause: Duration) -> Seen {
    let upstream = Upstream::start(after);
    let proxy = proxy_to(&upstream.url(), &[KEY], &[]).start();
    let statuses = send_requests(proxy.port, n, pause);
    Seen {
        statuses,
        requests: upstream.requests.lock().unwrap().len(),
        connections: upstream.connections.load(Ordering::SeqCst),
    }
}

#[test]
fn an_open_upstream_connection_is_reused_for_later_requests() {
    let seen = through_keyrelay(AfterAnswer::Keep, 5, Duration::from_millis(50));
    assert_eq!(seen.statuses, vec![200; 5]);
    assert_eq!(seen.requests, 5);
    assert_eq!(
        seen.connections, 1,
        "five sequential requests should share one pooled upstream connection"
    );
}

#[test]
fn a_connection_the_upstream_closed_is_not_reused() {
    let seen = through_keyrelay(AfterAnswer::Close, 4, Duration::from_millis(200));
    assert_eq!(
        seen.statuses,
        vec![200; 4],
        "a request after the upstream closed its pooled connection must open a new one, not fail"
    );
    assert_eq!(seen.requests, 4);
    assert_eq!(seen.connections, 4);
}

#[test]
fn a_connection_with_unasked_bytes_is_not_reused() {
    let seen = through_keyrelay(AfterAnswer::Garbage, 3, Duration::from_millis(200));
    assert_eq!(
        seen.statuses,
        vec![200; 3],
        "stray bytes on a pooled connection must not be read as the next answer"
    );
    assert_eq!(seen.requests, 3);
    assert_eq!(
        seen.connections, 3,
        "a connection holding unasked bytes is dropped, so each request opens its own"
    );
}
