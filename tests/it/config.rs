//! Configuration: `.env` syntax, environment over `.env`, BASE_URL versus the specific base URLs,
//! start-up errors (exit code 2 naming the variable), and the --help, --version, --check commands.

use crate::support::http::get;
use crate::support::mask;
use crate::support::mock::Mock;
use crate::support::proxy::{proxy, proxy_to};

const VARIABLES: [&str; 13] = [
    "PORT",
    "HOST",
    "OPENAI_API_KEYS",
    "GEMINI_API_KEYS",
    "OPENAI_BASE_URL",
    "GEMINI_BASE_URL",
    "BASE_URL",
    "WORKERS",
    "MAX_BODY_BYTES",
    "CONNECT_TIMEOUT_SECS",
    "UPSTREAM_TIMEOUT_SECS",
    "COOLDOWN_SECS",
    "LOG_LEVEL",
];

#[test]
fn help_lists_every_variable() {
    let out = proxy().run(&["--help"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", out.stderr);
    for name in VARIABLES {
        assert!(
            out.stdout.contains(name),
            "--help misses {name}:\n{}",
            out.stdout
        );
    }
}

#[test]
fn version_prints_name_and_semver() {
    let out = proxy().run(&["--version"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", out.stderr);
    assert_eq!(
        out.stdout.trim(),
        format!("keyrelay {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn check_prints_masked_keys_and_exits_zero() {
    let openai = ["sk-check-openai-key-0001", "sk-check-openai-key-0002"];
    let gemini = ["AIza-check-gemini-key-03", "shortkey"];
    let out = proxy_to("http://127.0.0.1:9", &openai, &gemini).run(&["--check"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", out.stderr);
    for key in openai.iter().chain(&gemini) {
        assert!(
            !out.stdout.contains(key),
            "--check printed a full key {key}:\n{}",
            out.stdout
        );
        assert!(
            !out.stderr.contains(key),
            "--check logged a full key {key}:\n{}",
            out.stderr
        );
    }
    for key in openai.iter().chain(&gemini[..1]) {
        assert!(
            out.stdout.contains(&mask(key)),
            "--check misses {}:\n{}",
            mask(key),
            out.stdout
        );
    }
    assert!(
        out.stdout.contains("***"),
        "short key not shown as ***:\n{}",
        out.stdout
    );
}

#[test]
fn bad_configuration_exits_2_naming_the_variable() {
    let with_keys = || proxy().env("OPENAI_API_KEYS", "sk-valid-key-000000001");
    let cases = [
        (with_keys().env("PORT", "abc"), vec!["PORT"]),
        (with_keys().env("PORT", "70000"), vec!["PORT"]),
        (
            with_keys().env("OPENAI_BASE_URL", "ftp://x"),
            vec!["OPENAI_BASE_URL"],
        ),
        (
            with_keys().env("GEMINI_BASE_URL", "not a url"),
            vec!["GEMINI_BASE_URL"],
        ),
        (
            with_keys().env("BASE_URL", "ftp://example.com"),
            vec!["BASE_URL"],
        ),
        (
            with_keys().env("MAX_BODY_BYTES", "lots"),
            vec!["MAX_BODY_BYTES"],
        ),
        (
            with_keys().env("CONNECT_TIMEOUT_SECS", "ten"),
            vec!["CONNECT_TIMEOUT_SECS"],
        ),
        (
            with_keys().env("UPSTREAM_TIMEOUT_SECS", "-1"),
            vec!["UPSTREAM_TIMEOUT_SECS"],
        ),
        (
            with_keys().env("COOLDOWN_SECS", "1.5x"),
            vec!["COOLDOWN_SECS"],
        ),
        (with_keys().env("WORKERS", "many"), vec!["WORKERS"]),
        (with_keys().env("LOG_LEVEL", "loud"), vec!["LOG_LEVEL"]),
        (proxy(), vec!["OPENAI_API_KEYS", "GEMINI_API_KEYS"]),
        (
            proxy().env("OPENAI_API_KEYS", " , ,"),
            vec!["OPENAI_API_KEYS", "GEMINI_API_KEYS"],
        ),
    ];
    for (builder, names) in cases {
        for args in [&[][..], &["--check"][..]] {
            let out = builder.run(args);
            assert_eq!(
                out.status.code(),
                Some(2),
                "{names:?} {args:?}: stderr {}",
                out.stderr
            );
            for name in &names {
                assert!(
                    out.stderr.contains(name),
                    "{args:?}: stderr does not name {name}: {}",
                    out.stderr
                );
            }
        }
    }
}

#[test]
fn dotenv_file_syntax_is_understood() {
    let mock = Mock::ok();
    let dotenv = format!(
        "# keyrelay settings\n\
         export OPENAI_API_KEYS=\"sk-dotenv-quoted-0001, sk-dotenv-quoted-0002\"\n\
         \n\
         GEMINI_API_KEYS='AIza-dotenv-single-0003'\n\
         # another comment\n\
         OPENAI_BASE_URL={url}\n\
         export GEMINI_BASE_URL=\"{url}\"\n\
         UNRELATED_SETTING=ignored\n",
        url = mock.url()
    );
    let proxy = proxy().dotenv(&dotenv).start();
    for _ in 0..2 {
        assert_eq!(get(proxy.port, "/openai/v1/models").status, 200);
    }
    assert_eq!(get(proxy.port, "/gemini/v1beta/models").status, 200);
    let mut openai = mock.keys()[..2].to_vec();
    openai.sort();
    assert_eq!(openai, ["sk-dotenv-quoted-0001", "sk-dotenv-quoted-0002"]);
    let gemini = mock.last();
    assert_eq!(
        gemini.header("x-goog-api-key"),
        Some("AIza-dotenv-single-0003")
    );
}

#[test]
fn process_environment_wins_over_dotenv() {
    let mock = Mock::ok();
    let other = Mock::ok();
    // If .env won, PORT=abc would stop the start-up and the requests would go to `other`.
    let dotenv = format!(
        "PORT=abc\nOPENAI_API_KEYS=sk-from-dotenv-key-0001\nOPENAI_BASE_URL={}\n",
        other.url()
    );
    let proxy = proxy()
        .dotenv(&dotenv)
        .env("OPENAI_API_KEYS", "sk-from-environment-02")
        .env("OPENAI_BASE_URL", &mock.url())
        .start();
    for _ in 0..3 {
        assert_eq!(get(proxy.port, "/openai/v1/models").status, 200);
    }
    assert_eq!(mock.keys(), vec!["sk-from-environment-02".to_string(); 3]);
    assert_eq!(other.count(), 0);
}

#[test]
fn base_url_sets_both_and_specific_variables_win() {
    let shared = Mock::ok();
    let specific = Mock::ok();
    let keys = |b: crate::support::proxy::ProxyBuilder| {
        b.env("OPENAI_API_KEYS", "sk-base-url-openai-001")
            .env("GEMINI_API_KEYS", "AIza-base-url-gemini-02")
    };
    let cases = [
        (
            "BASE_URL alone",
            keys(proxy()).env("BASE_URL", &shared.url()),
            (&shared, &shared),
        ),
        (
            "OPENAI_BASE_URL wins",
            keys(proxy())
                .env("BASE_URL", &shared.url())
                .env("OPENAI_BASE_URL", &specific.url()),
            (&specific, &shared),
        ),
        (
            "GEMINI_BASE_URL wins",
            keys(proxy())
                .env("BASE_URL", &shared.url())
                .env("GEMINI_BASE_URL", &specific.url()),
            (&shared, &specific),
        ),
    ];
    for (name, builder, (openai_mock, gemini_mock)) in cases {
        let proxy = builder.start();
        for (path, mock) in [
            ("/openai/v1/models", openai_mock),
            ("/gemini/v1beta/models", gemini_mock),
        ] {
            let before = mock.count();
            assert_eq!(get(proxy.port, path).status, 200, "{name} {path}");
            assert_eq!(
                mock.count(),
                before + 1,
                "{name}: {path} went to the wrong upstream"
            );
        }
    }
}
