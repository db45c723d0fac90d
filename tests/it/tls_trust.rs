//! Trust for TLS upstreams (issue 21): an upstream whose certificate a CA of the test signed is
//! refused (502 naming UPSTREAM_CA_FILE, nothing benched) until that CA is given in
//! UPSTREAM_CA_FILE or SSL_CERT_FILE, at start or by a SIGHUP reload, and through an HTTP
//! CONNECT egress too.

use std::time::Duration;

use crate::support::egress::TinyProxy;
use crate::support::http::{get, key_state};
use crate::support::proxy::{TempDir, proxy, proxy_to, write_env};
use crate::support::tls::TlsUpstream;
use crate::support::wait_until;

const KEY: &str = "sk-tls-trust-key-00001";
const KEY2: &str = "sk-tls-trust-key-00002";

#[test]
fn an_upstream_with_its_own_ca_is_refused_clearly_until_the_ca_is_trusted() {
    let upstream = TlsUpstream::start();
    let dir = TempDir::new();
    let ca = dir.0.join("ca.pem");
    std::fs::write(&ca, &upstream.ca_pem).unwrap();

    let untrusting = proxy_to(&upstream.url(), &[KEY, KEY2], &[]).start();
    let reply = get(untrusting.port, "/openai/v1/models");
    assert_eq!(reply.status, 502, "{}", reply.text());
    let text = reply.json_text();
    assert!(
        text.contains("UPSTREAM_CA_FILE") && text.contains(&format!("127.0.0.1:{}", upstream.port)),
        "{text}"
    );
    assert_eq!(upstream.served(), 0);
    assert_eq!(
        key_state(untrusting.port, 1),
        "ready",
        "a certificate benches no key"
    );
    drop(untrusting);

    let trusting = proxy_to(&upstream.url(), &[KEY], &[])
        .env("UPSTREAM_CA_FILE", ca.to_str().unwrap())
        .start();
    let reply = get(trusting.port, "/openai/v1/models");
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(reply.text().contains("\"tls\":true"));
    drop(trusting);

    let bundle = proxy_to(&upstream.url(), &[KEY], &[])
        .env("SSL_CERT_FILE", ca.to_str().unwrap())
        .start();
    assert_eq!(get(bundle.port, "/openai/v1/models").status, 200);
}

#[test]
fn the_ca_file_is_read_again_on_sighup_and_a_bad_one_stops_start_up() {
    let upstream = TlsUpstream::start();
    let dir = TempDir::new();
    let ca = dir.0.join("ca.pem");
    std::fs::write(&ca, &upstream.ca_pem).unwrap();
    let base = format!(
        "OPENAI_API_KEYS={KEY}\nOPENAI_BASE_URL={}\n",
        upstream.url()
    );
    let env = write_env(&dir, &base);
    let mut keyrelay = proxy().env("ENV_FILE", &env).start();
    assert_eq!(get(keyrelay.port, "/openai/v1/models").status, 502);
    std::fs::write(&env, format!("{base}UPSTREAM_CA_FILE={}\n", ca.display())).unwrap();
    keyrelay.signal("HUP");
    let trusted = wait_until(Duration::from_secs(10), || {
        get(keyrelay.port, "/openai/v1/models").status == 200
    });
    assert!(trusted, "{}", keyrelay.log_text());
    assert!(keyrelay.log_text().contains("1 certificate(s) trusted"));
    keyrelay.signal("TERM");
    let _ = keyrelay.wait_exit(Duration::from_secs(10));

    let bad = proxy()
        .env("OPENAI_API_KEYS", KEY)
        .env("UPSTREAM_CA_FILE", "/nonexistent/ca.pem")
        .run(&[]);
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    assert!(bad.stderr.contains("UPSTREAM_CA_FILE"), "{}", bad.stderr);
}

#[test]
#[ignore = "needs tinyproxy: `bash .ci/run` installs it and runs the ignored tests too"]
fn a_trusted_tls_upstream_is_reached_through_an_http_connect_egress() {
    let upstream = TlsUpstream::start();
    let http = TinyProxy::start(None);
    let dir = TempDir::new();
    let ca = dir.0.join("ca.pem");
    std::fs::write(&ca, &upstream.ca_pem).unwrap();
    let keyrelay = proxy_to(&upstream.url(), &[KEY], &[])
        .env("UPSTREAM_CA_FILE", ca.to_str().unwrap())
        .env("OPENAI_EGRESS", &http.url())
        .start();
    let reply = get(keyrelay.port, "/openai/v1/models");
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(
        wait_until(Duration::from_secs(5), || http
            .connects_to(&format!("127.0.0.1:{}", upstream.port))
            >= 1),
        "{}",
        http.log()
    );
}
