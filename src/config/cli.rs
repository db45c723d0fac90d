//! The command line: `--help`, `--version`, `--check`, and the start-up summary, kept apart from
//! `main` so the texts are tested as strings.

use crate::config::{Config, SETTINGS};

/// What the command line asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Run the proxy.
    Serve,
    /// Print help.
    Help,
    /// Print the version.
    Version,
    /// Validate the configuration and print a summary.
    Check,
    /// Check every key against its upstream.
    Probe,
}

/// Parses the arguments after the program name.
pub fn parse_args(args: &[String]) -> Result<Command, String> {
    match args {
        [] => Ok(Command::Serve),
        [one] => match one.as_str() {
            "-h" | "--help" => Ok(Command::Help),
            "-V" | "--version" => Ok(Command::Version),
            "--check" => Ok(Command::Check),
            "--probe" => Ok(Command::Probe),
            other => Err(format!("unknown argument {other:?}; see keyrelay --help")),
        },
        _ => Err("expected at most one argument; see keyrelay --help".to_string()),
    }
}

/// `keyrelay <version>`.
pub fn version() -> String {
    format!("keyrelay {}", env!("CARGO_PKG_VERSION"))
}

/// The `--help` text: usage and the configuration table.
pub fn help() -> String {
    let mut text = format!(
        "{}\nA key-rotating proxy for LLM APIs.\n\n\
         Usage: keyrelay [--help | --version | --check | --probe]\n\n\
         --probe checks every key against its upstream (one cheap request each) and exits 0\n\
         when every provider has a usable key.\n\n\
         Configuration comes from the environment and from ./.env (the environment wins).\n\n",
        version()
    );
    let width = SETTINGS.iter().map(|s| s.name.len()).max().unwrap_or(0);
    let default_width = SETTINGS.iter().map(|s| s.default.len()).max().unwrap_or(0);
    text.push_str(&format!(
        "{:width$}  {:default_width$}  meaning\n",
        "variable", "default"
    ));
    for s in SETTINGS {
        text.push_str(&format!(
            "{:width$}  {:default_width$}  {}\n",
            s.name, s.default, s.meaning
        ));
    }
    text.push_str(
        "\nRoutes: /openai/<path> → OPENAI_BASE_URL/<path>, /gemini/<path> → GEMINI_BASE_URL/<path>,\n\
         /<name>/<path> → <NAME>_BASE_URL/<path> for each name in PROVIDERS.\n\
         Signals: SIGTERM/SIGINT drain and exit; SIGHUP re-reads the environment file.\n",
    );
    text
}

/// The configuration summary printed by `--check` and logged at start-up; keys are masked.
pub fn summary(config: &Config) -> Vec<String> {
    let mut lines = vec![format!(
        "listen {}:{}, up to {} workers, queue timeout {}s, max body {} bytes, upstream timeout {}s, cooldown {}s",
        config.host,
        config.port,
        config.workers,
        config.queue_timeout.as_secs(),
        config.max_body_bytes,
        config.upstream_timeout.as_secs(),
        config.cooldown.as_secs()
    )];
    lines.push(match config.proxy_tokens.len() {
        0 => "access control off: no PROXY_API_KEYS token configured".to_string(),
        n => format!("access control on: {n} PROXY_API_KEYS token(s) configured"),
    });
    lines.push(match &config.shared_state {
        None => "shared state off: this instance's memory (and STATE_FILE) only".to_string(),
        Some(shared) => format!("shared state: {} (prefix {})", shared.shown, shared.prefix),
    });
    for p in &config.providers {
        let masks: Vec<String> = p.keys.iter().map(|k| k.mask()).collect();
        lines.push(format!(
            "/{}/* → {} ({} keys{}{})",
            p.name,
            p.base_url,
            p.keys.len(),
            if masks.is_empty() { "" } else { ": " },
            masks.join(", ")
        ));
        if !p.egress.is_empty() {
            let shown: Vec<&str> = p.egress.iter().map(|e| e.shown.as_str()).collect();
            lines.push(format!(
                "/{}/* leaves through {} (key i through entry i mod {})",
                p.name,
                shown.join(", "),
                shown.len()
            ));
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args() {
        let parse = |a: &[&str]| parse_args(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(parse(&[]), Ok(Command::Serve));
        assert_eq!(parse(&["--help"]), Ok(Command::Help));
        assert_eq!(parse(&["--version"]), Ok(Command::Version));
        assert_eq!(parse(&["--check"]), Ok(Command::Check));
        assert!(parse(&["--nope"]).is_err());
        assert!(parse(&["--check", "--help"]).is_err());
    }

    #[test]
    fn help_lists_every_setting() {
        let text = help();
        for s in SETTINGS {
            assert!(text.contains(s.name), "{}", s.name);
        }
    }

    #[test]
    fn help_lists_every_variable_of_the_readme_table() {
        let readme = include_str!("../../README.md");
        let names: Vec<&str> = readme
            .lines()
            .filter_map(|line| line.strip_prefix("| ")?.split(" |").next())
            .filter(|name| {
                name.len() > 2 && name.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')
            })
            .collect();
        assert!(names.len() >= 20, "README table not found: {names:?}");
        let text = help();
        for name in names {
            assert!(text.contains(name), "--help does not list {name}");
        }
    }

    #[test]
    fn summary_masks_keys() {
        let config = Config::from_lookup(&|name: &str| {
            (name == "OPENAI_API_KEYS").then(|| "sk-proj-abcdefgh12345678,short".to_string())
        })
        .unwrap();
        let text = summary(&config).join("\n");
        assert!(text.contains("sk-p...5678") && text.contains("***"));
        assert!(!text.contains("abcdefgh") && !text.contains("short"));
    }
}
