//! STATE_FILE (issue 13, part 2): cooldowns, benches and disabled keys survive a restart, and a
//! benched key gets no traffic from the new process; the file never names a key.

use std::time::Duration;

use crate::support::http::{Req, get, key_state, send};
use crate::support::mock::{Mock, Reply};
use crate::support::proxy::{TempDir, proxy_to};
use crate::support::wait_until;

const LIMITED: &str = "sk-state-limited-00001";
const REVOKED: &str = "sk-state-revoked-00002";
const SIDELINED: &str = "sk-state-disabled-0003";
const GOOD: &str = "sk-state-good-0000004";

#[test]
fn cooldowns_benches_and_disabled_keys_survive_a_restart() {
    let mock = Mock::start(|r| match r.key() {
        LIMITED => Reply::json(429, "{}").header("retry-after", "3600"),
        REVOKED => Reply::json(401, "{}"),
        _ => Reply::ok_json(),
    });
    let dir = TempDir::new();
    let state = dir.0.join("state");
    let state_path = state.to_str().expect("utf-8 path");
    let keys = [LIMITED, REVOKED, SIDELINED, GOOD];
    let mut first = proxy_to(&mock.url(), &keys, &[])
        .env("STATE_FILE", state_path)
        .start();
    for _ in 0..4 {
        assert_eq!(get(first.port, "/openai/v1/models").status, 200);
    }
    let disabled = send(first.port, &Req::post("/status/keys/openai/3/disable", b""));
    assert_eq!(disabled.status, 200, "{}", disabled.text());
    let expected = ["cooling", "benched_invalid", "disabled", "ready"];
    for (position, state) in expected.iter().enumerate() {
        assert_eq!(&key_state(first.port, position + 1), state);
    }
    let written = wait_until(Duration::from_secs(5), || {
        std::fs::read_to_string(&state).is_ok_and(|t| t.lines().count() == 4)
    });
    assert!(written, "state file: {:?}", std::fs::read_to_string(&state));
    first.signal("TERM");
    assert!(
        first
            .wait_exit(Duration::from_secs(10))
            .is_some_and(|s| s.success())
    );
    let text = std::fs::read_to_string(&state).expect("state file");
    for key in keys {
        assert!(!text.contains(key), "the state file names a key: {text}");
    }

    let before = mock.count();
    let second = proxy_to(&mock.url(), &keys, &[])
        .env("STATE_FILE", state_path)
        .start();
    for (position, state) in expected.iter().enumerate() {
        assert_eq!(
            &key_state(second.port, position + 1),
            state,
            "after the restart"
        );
    }
    for _ in 0..4 {
        assert_eq!(get(second.port, "/openai/v1/models").status, 200);
    }
    let after: Vec<String> = mock.keys()[before..].to_vec();
    assert_eq!(after, vec![GOOD; 4], "benched or disabled keys got traffic");
    assert!(
        second.wait_log(Duration::from_secs(5), |lines| lines
            .iter()
            .any(|l| l.contains("STATE_FILE") && l.contains("restored 3"))),
        "{}",
        second.log_text()
    );
}

#[test]
fn a_corrupt_state_file_is_logged_and_ignored() {
    let mock = Mock::ok();
    let dir = TempDir::new();
    let state = dir.0.join("state");
    std::fs::write(&state, "not a state file\n").expect("write");
    let proxy = proxy_to(&mock.url(), &[GOOD], &[])
        .env("STATE_FILE", state.to_str().expect("utf-8 path"))
        .start();
    assert_eq!(get(proxy.port, "/openai/v1/models").status, 200);
    assert!(
        proxy.wait_log(Duration::from_secs(5), |lines| lines
            .iter()
            .any(|l| l.contains("WARN")
                && l.contains("STATE_FILE")
                && l.contains("ignored"))),
        "{}",
        proxy.log_text()
    );
}
