//! Egress (issue 21, part 1): each key leaves through its own proxy (`<NAME>_EGRESS`, key i
//! through entry i mod m), a dead proxy moves the request to the next key with nothing benched,
//! the standard HTTPS_PROXY / NO_PROXY work, and proxy credentials never show. Against real
//! tinyproxy (HTTP CONNECT) and microsocks (SOCKS5).

use std::time::Duration;

use serde_json::Value;

use crate::support::api::{self, provider};
use crate::support::closed_port;
use crate::support::egress::{MicroSocks, TinyProxy};
use crate::support::http::get;
use crate::support::mock::Mock;
use crate::support::proxy::proxy_to;
use crate::support::wait_until;

const K1: &str = "sk-egress-key-00000001";
const K2: &str = "sk-egress-key-00000002";
const K3: &str = "sk-egress-key-00000003";

fn target(mock: &Mock) -> String {
    format!("127.0.0.1:{}", mock.port)
}

fn keys_status(port: u16) -> Vec<Value> {
    provider(&api::status(port), "openai")["keys"]
        .as_array()
        .unwrap()
        .clone()
}

#[test]
#[ignore = "needs tinyproxy and microsocks: `bash .ci/run` installs them and runs the ignored tests too"]
fn each_key_leaves_through_its_own_proxy() {
    let http = TinyProxy::start(None);
    let socks = MicroSocks::start();
    // Each request on a new upstream connection, so each crosses its proxy.
    let mock = Mock::start_closing(|_| crate::support::mock::Reply::ok_json());
    let proxy = proxy_to(&mock.url(), &[K1, K2, K3], &[])
        .env("OPENAI_EGRESS", &format!("{},{}", http.url(), socks.url()))
        .start();
    for _ in 0..6 {
        assert_eq!(get(proxy.port, "/openai/v1/models").status, 200);
    }
    let keys = mock.keys();
    let count = |k: &str| keys.iter().filter(|x| *x == k).count();
    assert_eq!((count(K1), count(K2), count(K3)), (2, 2, 2), "{keys:?}");
    // K1 and K3 (positions 0 and 2) through tinyproxy, K2 through microsocks.
    assert!(
        wait_until(Duration::from_secs(5), || http.connects_to(&target(&mock))
            == 4),
        "tinyproxy log:\n{}",
        http.log()
    );
    assert!(
        wait_until(Duration::from_secs(5), || socks.connects_to(&target(&mock))
            == 2),
        "microsocks output:\n{}",
        socks.output()
    );
    let status = keys_status(proxy.port);
    assert_eq!(status[0]["egress"], http.url());
    assert_eq!(status[1]["egress"], socks.url());
    let egress = provider(&api::status(proxy.port), "openai")["egress"].clone();
    assert_eq!(egress[0]["keys"], serde_json::json!([1, 3]), "{egress}");
    assert_eq!(egress[0]["attempts"], 4);
}

#[test]
#[ignore = "needs tinyproxy and microsocks: `bash .ci/run` installs them and runs the ignored tests too"]
fn a_dead_egress_moves_the_request_to_the_next_key_and_benches_nothing() {
    let mock = Mock::ok();
    let dead = format!("http://127.0.0.1:{}", closed_port());
    let socks = MicroSocks::start();
    let proxy = proxy_to(&mock.url(), &[K1, K2], &[])
        .env("OPENAI_EGRESS", &format!("{dead},{}", socks.url()))
        .start();
    for _ in 0..6 {
        assert_eq!(get(proxy.port, "/openai/v1/models").status, 200);
    }
    assert!(mock.keys().iter().all(|k| k == K2), "{:?}", mock.keys());
    let status = keys_status(proxy.port);
    assert!(status.iter().all(|k| k["state"] == "ready"), "{status:?}");
    let egress = provider(&api::status(proxy.port), "openai")["egress"].clone();
    assert_eq!(egress[0]["failures"], 3, "{egress}");
    let warnings: Vec<String> = proxy
        .log()
        .into_iter()
        .filter(|l| l.contains("WARN") && l.contains("egress"))
        .collect();
    assert_eq!(warnings.len(), 1, "one WARN a minute: {warnings:#?}");
    // A refusing proxy (SOCKS with the wrong target) counts the same: microsocks gone.
    drop(socks);
    let reply = get(proxy.port, "/openai/v1/models");
    assert_eq!(reply.status, 502, "{}", reply.text());
    assert!(
        keys_status(proxy.port)
            .iter()
            .all(|k| k["state"] == "ready")
    );
}

#[test]
#[ignore = "needs tinyproxy: `bash .ci/run` installs it and runs the ignored tests too"]
fn the_standard_proxy_variables_work_and_no_proxy_skips_them() {
    let http = TinyProxy::start(None);
    let mock = Mock::start_closing(|_| crate::support::mock::Reply::ok_json());
    let via = proxy_to(&mock.url(), &[K1], &[])
        .env("HTTPS_PROXY", &http.url())
        .start();
    for _ in 0..3 {
        assert_eq!(get(via.port, "/openai/v1/models").status, 200);
    }
    assert!(
        wait_until(Duration::from_secs(5), || http.connects_to(&target(&mock))
            == 3),
        "{}",
        http.log()
    );
    drop(via);
    let skipped = proxy_to(&mock.url(), &[K1], &[])
        .env("HTTPS_PROXY", &http.url())
        .env("NO_PROXY", "127.0.0.1")
        .start();
    for _ in 0..3 {
        assert_eq!(get(skipped.port, "/openai/v1/models").status, 200);
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        http.connects_to(&target(&mock)),
        3,
        "NO_PROXY went through the proxy"
    );
    // <NAME>_EGRESS=direct wins over the environment.
    let direct = proxy_to(&mock.url(), &[K1], &[])
        .env("HTTPS_PROXY", &http.url())
        .env("OPENAI_EGRESS", "direct")
        .start();
    assert_eq!(get(direct.port, "/openai/v1/models").status, 200);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        http.connects_to(&target(&mock)),
        3,
        "direct went through the proxy"
    );
}

#[test]
#[ignore = "needs tinyproxy: `bash .ci/run` installs it and runs the ignored tests too"]
fn proxy_credentials_work_and_never_show() {
    let password = "s3cret-egress-pass";
    let http = TinyProxy::start(Some(("relay", password)));
    let mock = Mock::start_closing(|_| crate::support::mock::Reply::ok_json());
    let egress = format!("http://relay:{password}@127.0.0.1:{}", http.port);
    let builder = proxy_to(&mock.url(), &[K1], &[]).env("OPENAI_EGRESS", &egress);
    let proxy = builder.start();
    assert_eq!(get(proxy.port, "/openai/v1/models").status, 200);
    assert_eq!(http.connects_to(&target(&mock)), 1, "{}", http.log());
    let shown = format!("http://***@127.0.0.1:{}", http.port);
    let status = get(proxy.port, "/status").text();
    assert!(
        status.contains(&shown) && !status.contains(password),
        "{status}"
    );
    let page = crate::support::http::send(
        proxy.port,
        &crate::support::http::Req::get("/status").header("accept", "text/html"),
    )
    .text();
    assert!(!page.contains(password));
    let checked = builder.run(&["--check"]);
    assert!(checked.stdout.contains(&shown), "{}", checked.stdout);
    let probed = builder.run(&["--probe"]);
    assert!(
        probed.stdout.contains(&format!("via {shown}")),
        "{}",
        probed.stdout
    );
    for text in [
        proxy.log_text(),
        checked.stdout,
        checked.stderr,
        probed.stdout,
        probed.stderr,
    ] {
        assert!(!text.contains(password), "{text}");
    }
    // A wrong password: the proxy refuses the CONNECT; nothing is benched.
    let wrong = format!("http://relay:wrong@127.0.0.1:{}", http.port);
    let refused = proxy_to(&mock.url(), &[K1], &[])
        .env("OPENAI_EGRESS", &wrong)
        .start();
    let reply = get(refused.port, "/openai/v1/models");
    assert_eq!(reply.status, 502, "{}", reply.text());
    assert!(
        keys_status(refused.port)
            .iter()
            .all(|k| k["state"] == "ready")
    );
}
