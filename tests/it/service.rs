//! What a service manager relies on (issue 20): systemd readiness on NOTIFY_SOCKET (`READY=1`
//! once the port accepts connections, `RELOADING=1` then `READY=1` around SIGHUP, `STOPPING=1`
//! when draining starts), and keys read from `_FILE` variables (systemd `LoadCredential=`), read
//! again on SIGHUP and never printed.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use crate::support::api;
use crate::support::http::get;
use crate::support::mock::Mock;
use crate::support::proxy::{TempDir, proxy, proxy_to};

const FIRST: &str = "sk-from-file-00000001";
const SECOND: &str = "sk-from-file-00000002";
const THIRD: &str = "sk-from-file-00000003";

/// The next datagram on `socket`, as text.
fn next_message(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 512];
    let n = socket
        .recv(&mut buf)
        .expect("a datagram from keyrelay in time");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn readiness_reload_and_stopping_reach_notify_socket_and_keys_come_from_files() {
    let mock = Mock::ok();
    let dir = TempDir::new();
    let socket_path = dir.0.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind the notify socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let keys_file = dir.0.join("openai.keys");
    std::fs::write(&keys_file, format!("# pool keys\n{FIRST}\n\n{SECOND}\n")).unwrap();
    let tokens_file = dir.0.join("tokens");
    std::fs::write(&tokens_file, "tok-file-client-0001\n").unwrap();
    let mut keyrelay = proxy_to(&mock.url(), &[], &[])
        .env("OPENAI_API_KEYS_FILE", keys_file.to_str().unwrap())
        .env("PROXY_API_KEYS_FILE", tokens_file.to_str().unwrap())
        .env("NOTIFY_SOCKET", socket_path.to_str().unwrap())
        .start();
    assert_eq!(next_message(&socket), "READY=1");
    // The port answers once READY=1 has been said.
    assert_eq!(get(keyrelay.port, "/health").status, 200);
    let status = |port| {
        crate::support::http::send(
            port,
            &crate::support::http::Req::get("/status")
                .header("authorization", "Bearer tok-file-client-0001"),
        )
    };
    let keys = |port| {
        let reply = status(port);
        assert_eq!(reply.status, 200, "{}", reply.text());
        let parsed = api::parsed(&reply);
        api::provider(&parsed, "openai")["keys"]
            .as_array()
            .unwrap()
            .len()
    };
    assert_eq!(keys(keyrelay.port), 2);
    assert_eq!(
        get(keyrelay.port, "/status").status,
        401,
        "the token file is in force"
    );

    std::fs::write(&keys_file, format!("{FIRST}\n{SECOND}\n{THIRD}\n")).unwrap();
    keyrelay.signal("HUP");
    let reloading = next_message(&socket);
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading:?}"
    );
    assert_eq!(next_message(&socket), "READY=1");
    assert_eq!(keys(keyrelay.port), 3);

    keyrelay.signal("TERM");
    assert_eq!(next_message(&socket), "STOPPING=1");
    assert!(
        keyrelay
            .wait_exit(Duration::from_secs(10))
            .is_some_and(|s| s.success())
    );
    let log = keyrelay.log_text();
    for secret in [FIRST, SECOND, THIRD, "tok-file-client-0001"] {
        assert!(!log.contains(secret), "the log shows a key: {log}");
    }
}

#[test]
fn a_variable_and_its_file_twin_both_set_is_refused_and_a_missing_file_named() {
    let dir = TempDir::new();
    let keys_file = dir.0.join("keys");
    std::fs::write(&keys_file, format!("{FIRST}\n")).unwrap();
    let both = proxy()
        .env("OPENAI_API_KEYS", SECOND)
        .env("OPENAI_API_KEYS_FILE", keys_file.to_str().unwrap())
        .run(&["--check"]);
    assert_eq!(both.status.code(), Some(2), "{both:?}");
    assert!(
        both.stderr.contains("OPENAI_API_KEYS_FILE") && both.stderr.contains("both"),
        "{}",
        both.stderr
    );
    let missing = proxy()
        .env("GEMINI_API_KEYS_FILE", "/nonexistent/keys")
        .run(&["--check"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        missing.stderr.contains("/nonexistent/keys"),
        "{}",
        missing.stderr
    );
    let empty_tokens = dir.0.join("tokens");
    std::fs::write(&empty_tokens, "# nobody yet\n").unwrap();
    let open = proxy()
        .env("OPENAI_API_KEYS_FILE", keys_file.to_str().unwrap())
        .env("PROXY_API_KEYS_FILE", empty_tokens.to_str().unwrap())
        .run(&["--check"]);
    assert_eq!(
        open.status.code(),
        Some(2),
        "an empty token file must not open the proxy"
    );
    let fine = proxy()
        .env("OPENAI_API_KEYS_FILE", keys_file.to_str().unwrap())
        .env(
            "SHARED_STATE_URL",
            "redis://admin:hunter2-secret@127.0.0.1:6379/2",
        )
        .run(&["--check"]);
    assert_eq!(fine.status.code(), Some(0), "{fine:?}");
    let printed = format!("{}{}", fine.stdout, fine.stderr);
    assert!(
        !printed.contains(FIRST) && !printed.contains("hunter2"),
        "{printed}"
    );
    assert!(
        printed.contains("redis://***@127.0.0.1:6379/2"),
        "{printed}"
    );
}
