//! Configuration: environment variables (and a `.env` file beneath them) turned into a validated
//! [`Config`]. Lookups go through a function so tests never touch the process environment.

pub mod catalog;
pub mod cli;
pub mod env_file;

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use crate::agent::egress::Egress;
use crate::agent::trust::TrustFiles;
use crate::config::catalog::{ALWAYS, known};
use crate::config::env_file::{EnvFileError, parse_env_file};
use crate::keys::limits::Rules;
use crate::keys::{ApiKey, mask_userinfo};
use crate::provider::{AuthStyle, ErrorShape, env_prefix, keys_var_for};

/// One documented setting: its variable, default and meaning. `--help` prints this list; the
/// README's table says the same (with a row for the per-provider variables), and a test checks
/// that every variable in the README table is here.
pub struct Setting {
    /// Environment variable.
    pub name: &'static str,
    /// Default, as shown to users.
    pub default: &'static str,
    /// What it does.
    pub meaning: &'static str,
}

/// Every variable keyrelay reads.
pub const SETTINGS: &[Setting] = &[
    Setting {
        name: "PORT",
        default: "3000",
        meaning: "listen port (0 picks a free one)",
    },
    Setting {
        name: "HOST",
        default: "127.0.0.1",
        meaning: "listen address",
    },
    Setting {
        name: "OPENAI_API_KEYS",
        default: "-",
        meaning: "comma-separated OpenAI-style keys (spaces trimmed, empties and duplicates dropped)",
    },
    Setting {
        name: "GEMINI_API_KEYS",
        default: "-",
        meaning: "comma-separated Gemini keys; at least one provider needs keys",
    },
    Setting {
        name: "OPENAI_BASE_URL",
        default: "https://api.openai.com",
        meaning: "upstream for /openai/*; may carry a path and may be http://",
    },
    Setting {
        name: "GEMINI_BASE_URL",
        default: "https://generativelanguage.googleapis.com",
        meaning: "upstream for /gemini/*",
    },
    Setting {
        name: "BASE_URL",
        default: "-",
        meaning: "sets both upstreams at once; the specific variables win",
    },
    Setting {
        name: "PROVIDERS",
        default: "-",
        meaning: "more providers to route, e.g. anthropic,groq, each with <NAME>_API_KEYS, <NAME>_BASE_URL, <NAME>_AUTH (and <NAME>_PROBE_PATH for --probe)",
    },
    Setting {
        name: "WAIT_FOR_KEY_SECS",
        default: "0",
        meaning: "when every key is cooling and one frees within this many seconds, hold the request instead of answering 429",
    },
    Setting {
        name: "HEADROOM",
        default: "on",
        meaning: "off stops reading rate-limit headers on successful answers (a key reporting nothing left is otherwise skipped until its window resets)",
    },
    Setting {
        name: "SESSION_AFFINITY",
        default: "on",
        meaning: "off sends every turn of a conversation by plain round robin; on keeps later turns on the key that served the earlier ones (its prompt cache), while that key can serve",
    },
    Setting {
        name: "SESSION_AFFINITY_TTL_SECS",
        default: "3600",
        meaning: "how long after its last turn a conversation keeps its key",
    },
    Setting {
        name: "ENV_FILE",
        default: ".env",
        meaning: "the environment file read at start and on SIGHUP",
    },
    Setting {
        name: "WORKERS",
        default: "1024",
        meaning: "most requests (and streams) forwarded at once; threads start as needed, each busy one costs ~75 KiB",
    },
    Setting {
        name: "QUEUE_TIMEOUT_SECS",
        default: "30",
        meaning: "longest a request waits for a free worker, then 503 with Retry-After: 1",
    },
    Setting {
        name: "MAX_CONNECTIONS",
        default: "from ulimit -n",
        meaning: "most open client connections (default: open-file limit less room for upstream connections); more are closed at once",
    },
    Setting {
        name: "MAX_BODY_BYTES",
        default: "33554432",
        meaning: "largest request body accepted (413 above)",
    },
    Setting {
        name: "CONNECT_TIMEOUT_SECS",
        default: "10",
        meaning: "upstream connect timeout",
    },
    Setting {
        name: "UPSTREAM_TIMEOUT_SECS",
        default: "300",
        meaning: "longest silence from the upstream: waiting for its response headers, or between body reads",
    },
    Setting {
        name: "SSE_HEARTBEAT_SECS",
        default: "15",
        meaning: "on a Server-Sent Events answer, write an SSE comment (: keep-alive) after this many seconds of upstream silence, at an event boundary, and again every as many seconds, so nginx, CDNs and clients do not cut a model that thinks for minutes; 0 turns it off",
    },
    Setting {
        name: "UPSTREAM_CA_FILE",
        default: "-",
        meaning: "PEM certificates trusted for TLS upstreams in addition to the built-in Mozilla roots (a TLS-inspecting corporate proxy, a self-hosted upstream's own CA); read at start and on SIGHUP",
    },
    Setting {
        name: "SSL_CERT_FILE",
        default: "-",
        meaning: "read as other tools read it (a PEM bundle), and trusted in addition to the built-in roots, like UPSTREAM_CA_FILE",
    },
    Setting {
        name: "COOLDOWN_SECS",
        default: "60",
        meaning: "how long a 429 benches a key when the upstream gives no delay",
    },
    Setting {
        name: "CLIENT_IDLE_TIMEOUT_SECS",
        default: "60",
        meaning: "closes an idle client connection; also a stalled request (408) or a client that stops reading",
    },
    Setting {
        name: "SHUTDOWN_GRACE_SECS",
        default: "30",
        meaning: "on SIGTERM / SIGINT, how long in-flight requests and streams may take to finish",
    },
    Setting {
        name: "STATE_FILE",
        default: "-",
        meaning: "keep cooldowns, benches and disabled keys in this file across restarts (keys named by a SHA-256 prefix)",
    },
    Setting {
        name: "SHARED_STATE_URL",
        default: "-",
        meaning: "redis://[user:password@]host:port[/db] (Redis or Valkey): several instances share cooldowns, benches, disabled keys, learned ids and conversations through it; unset, each instance keeps its own (memory and STATE_FILE)",
    },
    Setting {
        name: "SHARED_STATE_PREFIX",
        default: "keyrelay",
        meaning: "prefix of every Redis key and of the events channel, so two pools can share one Redis",
    },
    Setting {
        name: "LOG_LEVEL",
        default: "info",
        meaning: "error, warn, info or debug",
    },
    Setting {
        name: "LOG_FORMAT",
        default: "text",
        meaning: "text, or json for one JSON object per line (time, level, and the request line's fields)",
    },
    Setting {
        name: "LOG_FILE",
        default: "-",
        meaning: "also append log lines to this file",
    },
    Setting {
        name: "PROXY_API_KEYS",
        default: "-",
        meaning: "comma-separated client tokens; when set, every request except /health and / must carry one",
    },
    Setting {
        name: "PROXY_API_KEYS_FILE",
        default: "-",
        meaning: "a file with the client tokens, one per line (# comments); read at start and on SIGHUP, instead of PROXY_API_KEYS (both set is an error). <NAME>_API_KEYS_FILE does the same for a provider's keys",
    },
    Setting {
        name: "ALLOW_UNAUTHENTICATED",
        default: "false",
        meaning: "true lets HOST be a non-loopback address without PROXY_API_KEYS",
    },
];

/// First path segments keyrelay's own pages use, which no provider may take as its route name
/// (admin's tests check that each is one of its pages).
pub const RESERVED_ROUTES: [&str; 4] = ["health", "healthz", "status", "metrics"];

/// How long a key answered with 401/403 stays benched: long enough to stop hammering a revoked
/// key, short enough that a key fixed upstream comes back without a restart.
pub const REJECTED_KEY_BENCH: Duration = Duration::from_secs(30 * 60);

/// How long a key whose balance is spent (429 `insufficient_quota`, 402) stays benched: a
/// top-up is a person's doing, so an hour between tries costs nothing and recovers on its own.
pub const QUOTA_BENCH: Duration = Duration::from_secs(60 * 60);

/// How long a key whose account cannot use a model (404 `model_not_found`, a 403 about model
/// access) sits out for that model once another key served it: access changes by a person's
/// doing, and an operator's reset (POST /status/keys/…/reset) brings it back at once.
pub const NO_ACCESS_BENCH: Duration = Duration::from_secs(6 * 3600);

/// Log verbosity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Errors and warnings (benched keys).
    Warn,
    /// One line per request.
    Info,
    /// Each attempt.
    Debug,
}

/// What `SHARED_STATE_URL` and `SHARED_STATE_PREFIX` say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedSettings {
    /// The URL, password included: for the connection only, never printed.
    pub url: String,
    /// The URL with its password masked, for every message.
    pub shown: String,
    /// The prefix of every Redis key.
    pub prefix: String,
}

/// Settings for one provider.
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    /// Route name.
    pub name: String,
    /// Upstream base URL, validated, no trailing slash.
    pub base_url: String,
    /// Keys, deduplicated, in order.
    pub keys: Vec<ApiKey>,
    /// Key injection.
    pub auth: AuthStyle,
    /// Error body shape.
    pub shape: ErrorShape,
    /// `<NAME>_PROBE_PATH`: what `keyrelay --probe` requests instead of the shape's default.
    pub probe_path: Option<String>,
    /// `<NAME>_EGRESS`: how the keys' requests leave, key i through entry i mod m (empty: as
    /// the environment's proxy variables say).
    pub egress: Vec<EgressSetting>,
    /// `<NAME>_KEY_LIMITS`: local limits per key and model.
    pub limits: Rules,
}

/// One entry of `<NAME>_EGRESS`, validated.
#[derive(Clone, PartialEq, Eq)]
pub struct EgressSetting {
    /// The entry as given (it may hold a proxy password): for the connection only.
    pub url: String,
    /// The entry with credentials masked, for every message.
    pub shown: String,
}

impl fmt::Debug for EgressSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listen address.
    pub host: IpAddr,
    /// Listen port; 0 picks a free one.
    pub port: u16,
    /// Worker pool size.
    pub workers: usize,
    /// Skip keys that report no headroom left.
    pub headroom: bool,
    /// Keep later turns of a conversation on the key that served the earlier ones.
    pub session_affinity: bool,
    /// How long after its last turn a conversation keeps its key.
    pub session_ttl: Duration,
    /// Longest wait in the queue for a worker.
    pub queue_timeout: Duration,
    /// Most open client connections; `None`: derived from the open-file limit at start.
    pub max_connections: Option<usize>,
    /// Largest request body.
    pub max_body_bytes: u64,
    /// Upstream connect timeout.
    pub connect_timeout: Duration,
    /// Upstream header wait and body silence limit.
    pub upstream_timeout: Duration,
    /// Default 429 cooldown.
    pub cooldown: Duration,
    /// Silence on an SSE answer after which a heartbeat comment is written; `None`: never.
    pub sse_heartbeat: Option<Duration>,
    /// Longest a request waits for a cooling key instead of getting 429.
    pub wait_for_key: Duration,
    /// Idle / stall / write timeout for client connections.
    pub client_idle_timeout: Duration,
    /// Longest wait for in-flight requests on shutdown.
    pub shutdown_grace: Duration,
    /// Log verbosity.
    pub log_level: LogLevel,
    /// One JSON object per log line instead of text.
    pub log_json: bool,
    /// Extra log destination.
    pub log_file: Option<String>,
    /// Where cooldowns and disabled flags outlive a restart.
    pub state_file: Option<String>,
    /// The store several instances share their key state through (SHARED_STATE_URL).
    pub shared_state: Option<SharedSettings>,
    /// Certificates trusted for TLS upstreams besides Mozilla's roots.
    pub trust_files: TrustFiles,
    /// Client access tokens (empty: none required).
    pub proxy_tokens: Vec<ApiKey>,
    /// Providers, keyed by route name, in a fixed order.
    pub providers: Vec<ProviderConfig>,
}

/// Why the configuration was refused. Messages name the variable and never print a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// A variable has a value that cannot be used.
    Invalid {
        /// The variable.
        var: String,
        /// What was wrong and what is expected.
        reason: String,
    },
    /// No provider has a key.
    NoKeys,
    /// The `.env` file has a line that cannot be read.
    EnvFile(EnvFileError),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Invalid { var, reason } => write!(f, "{var}: {reason}"),
            ConfigError::NoKeys => f.write_str(
                "no API keys configured: set OPENAI_API_KEYS and/or GEMINI_API_KEYS \
                 (comma-separated; or <NAME>_API_KEYS for a provider in PROVIDERS) in the \
                 environment or in a .env file",
            ),
            ConfigError::EnvFile(err) => write!(f, ".env {err}"),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Merges a `.env` file's text under the process environment: a variable set in the process
/// wins. Returns the lookup function [`Config::from_lookup`] takes.
pub fn layered_lookup(
    env_file: Option<&str>,
    process: impl Fn(&str) -> Option<String>,
) -> Result<impl Fn(&str) -> Option<String>, ConfigError> {
    let file_pairs = match env_file {
        Some(text) => parse_env_file(text).map_err(ConfigError::EnvFile)?,
        None => Vec::new(),
    };
    Ok(move |name: &str| {
        process(name).or_else(|| {
            file_pairs
                .iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        })
    })
}

/// Reads the file a `*_FILE` variable names.
pub type ReadFile<'a> = &'a dyn Fn(&str) -> std::io::Result<String>;

impl Config {
    /// Reads and validates every setting through `lookup`; `*_API_KEYS_FILE` files are read
    /// from disk.
    pub fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        Config::from_sources(lookup, &|path: &str| std::fs::read_to_string(path))
    }

    /// Reads and validates every setting through `lookup`, and the key files that
    /// `<NAME>_API_KEYS_FILE` and `PROXY_API_KEYS_FILE` name through `read_file`.
    pub fn from_sources(
        lookup: &dyn Fn(&str) -> Option<String>,
        read_file: ReadFile,
    ) -> Result<Config, ConfigError> {
        let from_files = key_files(lookup, read_file)?;
        let lookup = |name: &str| from_files.get(name).cloned().or_else(|| lookup(name));
        let get = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let providers = parse_providers(&get)?;
        if providers.iter().all(|p| p.keys.is_empty()) {
            return Err(ConfigError::NoKeys);
        }
        let host = match get("HOST") {
            Some(v) => v.parse().map_err(|_| ConfigError::Invalid {
                var: "HOST".to_string(),
                reason: format!("{v:?} is not an IP address (use 127.0.0.1, 0.0.0.0 or ::1)"),
            })?,
            None => IpAddr::from([127, 0, 0, 1]),
        };
        let proxy_tokens = parse_keys(get("PROXY_API_KEYS").as_deref().unwrap_or(""));
        if proxy_tokens.is_empty() && lookup("PROXY_API_KEYS").is_some_and(|v| !v.is_empty()) {
            // Set but blank (`' '`, `','`): silently running without access control would be
            // the opposite of what was meant.
            return Err(ConfigError::Invalid {
                var: "PROXY_API_KEYS".to_string(),
                reason: "is set but holds no token; list one or more comma-separated tokens, or unset it to run without access control".to_string(),
            });
        }
        let allow_open = parse_bool(
            "ALLOW_UNAUTHENTICATED",
            get("ALLOW_UNAUTHENTICATED").as_deref(),
        )?;
        if !host.is_loopback() && proxy_tokens.is_empty() && !allow_open {
            return Err(ConfigError::Invalid {
                var: "PROXY_API_KEYS".to_string(),
                reason: format!(
                    "HOST={host} is reachable from other machines and no client token is set, so anyone \
                     could spend your API keys. Either set PROXY_API_KEYS=token1,token2 (clients send one \
                     as their API key), or set ALLOW_UNAUTHENTICATED=true to accept the risk (e.g. behind \
                     a firewall or an authenticating reverse proxy)"
                ),
            });
        }
        let shared_state = parse_shared_state(&get)?;
        Ok(Config {
            shared_state,
            trust_files: TrustFiles {
                upstream_ca_file: get("UPSTREAM_CA_FILE"),
                ssl_cert_file: get("SSL_CERT_FILE"),
            },
            log_file: get("LOG_FILE"),
            state_file: get("STATE_FILE"),
            proxy_tokens,
            host,
            port: number(&get, "PORT", 3000, 0, u16::MAX as u64)? as u16,
            workers: number(&get, "WORKERS", 1024, 1, 16_384)? as usize,
            queue_timeout: secs(&get, "QUEUE_TIMEOUT_SECS", 30)?,
            headroom: on_off(&get, "HEADROOM")?,
            session_affinity: on_off(&get, "SESSION_AFFINITY")?,
            session_ttl: secs(&get, "SESSION_AFFINITY_TTL_SECS", 3600)?,
            max_connections: get("MAX_CONNECTIONS")
                .map(|_| number(&get, "MAX_CONNECTIONS", 0, 1, 10_000_000))
                .transpose()?
                .map(|n| n as usize),
            max_body_bytes: number(&get, "MAX_BODY_BYTES", 32 * 1024 * 1024, 1, 1 << 40)?,
            connect_timeout: secs(&get, "CONNECT_TIMEOUT_SECS", 10)?,
            upstream_timeout: secs(&get, "UPSTREAM_TIMEOUT_SECS", 300)?,
            cooldown: secs(&get, "COOLDOWN_SECS", 60)?,
            sse_heartbeat: match number(&get, "SSE_HEARTBEAT_SECS", 15, 0, 3600)? {
                0 => None,
                n => Some(Duration::from_secs(n)),
            },
            wait_for_key: Duration::from_secs(number(&get, "WAIT_FOR_KEY_SECS", 0, 0, 3600)?),
            client_idle_timeout: secs(&get, "CLIENT_IDLE_TIMEOUT_SECS", 60)?,
            shutdown_grace: secs(&get, "SHUTDOWN_GRACE_SECS", 30)?,
            log_level: parse_log_level(get("LOG_LEVEL").as_deref())?,
            log_json: match get("LOG_FORMAT").map(|v| v.to_ascii_lowercase()).as_deref() {
                None | Some("text") => false,
                Some("json") => true,
                Some(other) => {
                    return Err(ConfigError::Invalid {
                        var: "LOG_FORMAT".to_string(),
                        reason: format!("{other:?} is not text or json"),
                    });
                }
            },
            providers,
        })
    }

    /// MAX_CONNECTIONS, or its default for an open-file limit of `fd_limit`: what is left after
    /// room for one upstream connection per worker (at most half the limit) and a few more.
    pub fn max_connections_for(&self, fd_limit: u64) -> usize {
        self.max_connections.unwrap_or_else(|| {
            let fd_limit = fd_limit as usize;
            let upstream = self.workers.min(fd_limit / 2) + 32;
            fd_limit.saturating_sub(upstream).max(16)
        })
    }

    /// The provider settings for a route name.
    pub fn provider(&self, name: &str) -> Option<&ProviderConfig> {
        self.providers.iter().find(|p| p.name == name)
    }
}

/// Reads the provider table: the built-in openai and gemini, plus every name in PROVIDERS, each
/// from its `<NAME>_API_KEYS`, `<NAME>_BASE_URL` and `<NAME>_AUTH`.
fn parse_providers(
    get: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<ProviderConfig>, ConfigError> {
    let shared_base = get("BASE_URL")
        .map(|v| parse_base_url("BASE_URL", &v))
        .transpose()?;
    let mut names: Vec<String> = ALWAYS.iter().map(|n| n.to_string()).collect();
    for name in get("PROVIDERS")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
    {
        if name.is_empty() || names.iter().any(|n| n == name) {
            continue;
        }
        let valid = name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !valid || RESERVED_ROUTES.contains(&name) {
            return Err(ConfigError::Invalid {
                var: "PROVIDERS".to_string(),
                reason: format!(
                    "{name:?} is not a usable provider name (lowercase letters, digits and -; not health, status or metrics)"
                ),
            });
        }
        names.push(name.to_string());
    }
    let mut providers = Vec::with_capacity(names.len());
    for name in names {
        let prefix = env_prefix(&name);
        let known = known(&name);
        let base_var = format!("{prefix}_BASE_URL");
        let shared = if ALWAYS.contains(&name.as_str()) {
            shared_base.clone()
        } else {
            None
        };
        let base_url = match get(&base_var) {
            Some(v) => parse_base_url(&base_var, &v)?,
            None => shared
                .or_else(|| known.map(|k| k.base_url.to_string()))
                .ok_or_else(|| ConfigError::Invalid {
                    var: base_var.clone(),
                    reason: format!(
                        "provider {name:?} is not built in, so its upstream URL must be set"
                    ),
                })?,
        };
        let auth_var = format!("{prefix}_AUTH");
        let auth = match get(&auth_var) {
            Some(v) => parse_auth(&auth_var, &v)?,
            None => known.map_or(AuthStyle::Bearer, |k| k.auth.style()),
        };
        let egress_var = format!("{prefix}_EGRESS");
        let egress = match get(&egress_var) {
            None => Vec::new(),
            Some(list) => list
                .split(',')
                .map(str::trim)
                .filter(|entry| !entry.is_empty())
                .map(|entry| {
                    let parsed = Egress::parse(entry).map_err(|reason| ConfigError::Invalid {
                        var: egress_var.clone(),
                        reason,
                    })?;
                    Ok(EgressSetting {
                        url: entry.to_string(),
                        shown: parsed.shown,
                    })
                })
                .collect::<Result<Vec<_>, ConfigError>>()?,
        };
        let limits_var = format!("{prefix}_KEY_LIMITS");
        let limits = match get(&limits_var) {
            None => Rules::default(),
            Some(text) => Rules::parse(&text).map_err(|reason| ConfigError::Invalid {
                var: limits_var.clone(),
                reason,
            })?,
        };
        providers.push(ProviderConfig {
            egress,
            limits,
            keys: checked_keys(&keys_var_for(&name), get)?,
            probe_path: get(&format!("{}_PROBE_PATH", env_prefix(&name))),
            base_url,
            auth,
            shape: known.map_or(ErrorShape::OpenAi, |k| k.shape),
            name,
        });
    }
    Ok(providers)
}

/// The keys in `var`, refusing any that could not travel in a header or a URL unchanged
/// (the message never shows the key).
fn checked_keys(
    var: &str,
    get: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<ApiKey>, ConfigError> {
    let keys = parse_keys(get(var).as_deref().unwrap_or(""));
    if let Some(at) = keys
        .iter()
        .position(|k| !k.secret().bytes().all(|b| b.is_ascii_graphic()))
    {
        return Err(ConfigError::Invalid {
            var: var.to_string(),
            reason: format!(
                "key #{} contains spaces, control or non-ASCII characters; check for a stray quote or paste error",
                at + 1
            ),
        });
    }
    Ok(keys)
}

/// `bearer`, `header:<name>` or `query:<param>`.
pub fn parse_auth(var: &str, value: &str) -> Result<AuthStyle, ConfigError> {
    let token_ok = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    };
    let lower = value.to_ascii_lowercase();
    let style = match lower.split_once(':') {
        None if lower == "bearer" => Some(AuthStyle::Bearer),
        Some(("header", name)) if token_ok(name) => Some(AuthStyle::Header(name.to_string())),
        Some(("query", _)) => {
            let param = &value["query:".len()..];
            token_ok(param).then(|| AuthStyle::Query(param.to_string()))
        }
        _ => None,
    };
    style.ok_or_else(|| ConfigError::Invalid {
        var: var.to_string(),
        reason: format!("{value:?} is not bearer, header:<header-name> or query:<param>"),
    })
}

/// Splits a comma-separated key list: spaces trimmed, empties and duplicates dropped.
pub fn parse_keys(list: &str) -> Vec<ApiKey> {
    let mut keys: Vec<ApiKey> = Vec::new();
    for part in list.split(',').map(str::trim).filter(|k| !k.is_empty()) {
        let key = ApiKey::new(part);
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    keys
}

fn parse_base_url(var: &str, value: &str) -> Result<String, ConfigError> {
    // Messages reach --check, the journal and LOG_FILE: a password in the URL must not.
    let shown = mask_userinfo(value);
    let invalid = |reason: &str| ConfigError::Invalid {
        var: var.to_string(),
        reason: format!("{shown:?} {reason}"),
    };
    let rest = value
        .strip_prefix("http://")
        .or_else(|| value.strip_prefix("https://"))
        .ok_or_else(|| invalid("is not an http:// or https:// URL"))?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(invalid("has no host"));
    }
    if host.contains('@') {
        // It would be shown in /status, logs and error bodies; keys go in <NAME>_API_KEYS.
        return Err(invalid("must not carry credentials (user:password@)"));
    }
    if rest.contains(['?', '#']) {
        return Err(invalid("must not carry a query or fragment"));
    }
    Ok(value.trim_end_matches('/').to_string())
}

fn number(
    get: &dyn Fn(&str) -> Option<String>,
    var: &str,
    default: u64,
    min: u64,
    max: u64,
) -> Result<u64, ConfigError> {
    let Some(text) = get(var) else {
        return Ok(default);
    };
    match text.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(ConfigError::Invalid {
            var: var.to_string(),
            reason: format!("{text:?} is not a whole number from {min} to {max}"),
        }),
    }
}

fn secs(
    get: &dyn Fn(&str) -> Option<String>,
    var: &str,
    default: u64,
) -> Result<Duration, ConfigError> {
    number(get, var, default, 1, 7 * 24 * 3600).map(Duration::from_secs)
}

/// The keys that `<NAME>_API_KEYS_FILE` and `PROXY_API_KEYS_FILE` files hold, as the
/// comma-separated value of the variable without `_FILE` (one key per line in the file, `#`
/// comments and blank lines skipped). A variable and its `_FILE` twin both set is an error.
fn key_files(
    lookup: &dyn Fn(&str) -> Option<String>,
    read_file: ReadFile,
) -> Result<std::collections::HashMap<String, String>, ConfigError> {
    let set = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
    let mut vars: Vec<String> = ALWAYS.iter().map(|n| keys_var_for(n)).collect();
    for name in set("PROVIDERS")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
    {
        if !name.is_empty() {
            vars.push(keys_var_for(name));
        }
    }
    vars.push("PROXY_API_KEYS".to_string());
    let mut found = std::collections::HashMap::new();
    for var in vars {
        let file_var = format!("{var}_FILE");
        let Some(path) = set(&file_var) else { continue };
        let path = path.trim();
        if set(&var).is_some() {
            return Err(ConfigError::Invalid {
                var: file_var,
                reason: format!("both {var} and {var}_FILE are set; keep one of them"),
            });
        }
        let text = read_file(path).map_err(|err| ConfigError::Invalid {
            var: file_var.clone(),
            reason: format!("cannot read {path}: {err}"),
        })?;
        let keys: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .collect();
        if keys.is_empty() && var == "PROXY_API_KEYS" {
            return Err(ConfigError::Invalid {
                var: file_var,
                reason: format!(
                    "{path} holds no token; list one per line, or unset it to run without access control"
                ),
            });
        }
        found.insert(var, keys.join(","));
    }
    Ok(found)
}

/// SHARED_STATE_URL (`redis://[user:password@]host:port[/db]`, also `valkey://`) and
/// SHARED_STATE_PREFIX. The password is shown masked in every message.
fn parse_shared_state(
    get: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<SharedSettings>, ConfigError> {
    let prefix = get("SHARED_STATE_PREFIX").unwrap_or_else(|| "keyrelay".to_string());
    let prefix_ok = prefix.len() <= 64
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !prefix_ok {
        return Err(ConfigError::Invalid {
            var: "SHARED_STATE_PREFIX".to_string(),
            reason: format!("{prefix:?} must be letters, digits, - _ or . (at most 64)"),
        });
    }
    let Some(url) = get("SHARED_STATE_URL") else {
        return Ok(None);
    };
    let shown = mask_userinfo(&url);
    let invalid = |reason: &str| ConfigError::Invalid {
        var: "SHARED_STATE_URL".to_string(),
        reason: format!("{shown:?} {reason}"),
    };
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(invalid("is not a redis://host:port URL"));
    };
    match scheme {
        "redis" | "valkey" => {}
        "rediss" | "valkeys" => {
            return Err(invalid(
                "asks for TLS, which keyrelay does not speak to Redis; use redis:// on a private network or through a local TLS tunnel (stunnel, spiped)",
            ));
        }
        _ => return Err(invalid("is not a redis:// or valkey:// URL")),
    }
    // The host follows the last `@` (a password may hold `/`, `?`, `#` or `@`).
    let after_userinfo = rest.rsplit('@').next().unwrap_or(rest);
    let host = after_userinfo.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(invalid("has no host"));
    }
    Ok(Some(SharedSettings { url, shown, prefix }))
}

#[cfg(test)]
mod shared_state_tests {
    use super::*;

    #[test]
    fn passwords_never_show_whatever_they_hold() {
        for (url, shown) in [
            (
                "redis://:se/cret@127.0.0.1:6399",
                "redis://***@127.0.0.1:6399",
            ),
            (
                "redis://u:se#cret@127.0.0.1:6399/2",
                "redis://***@127.0.0.1:6399/2",
            ),
            (
                "redis://u:se?c@ret@127.0.0.2:6379",
                "redis://***@127.0.0.2:6379",
            ),
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
        ] {
            let get = |name: &str| (name == "SHARED_STATE_URL").then(|| url.to_string());
            let settings = parse_shared_state(&get).unwrap().unwrap();
            assert_eq!(settings.shown, shown);
        }
    }
}

/// A switch that defaults to on.
fn on_off(get: &dyn Fn(&str) -> Option<String>, var: &str) -> Result<bool, ConfigError> {
    match get(var).map(|v| v.to_ascii_lowercase()).as_deref() {
        None | Some("on" | "true" | "1" | "yes") => Ok(true),
        Some("off" | "false" | "0" | "no") => Ok(false),
        Some(other) => Err(ConfigError::Invalid {
            var: var.to_string(),
            reason: format!("{other:?} is not on or off"),
        }),
    }
}

fn parse_bool(var: &str, value: Option<&str>) -> Result<bool, ConfigError> {
    match value.map(str::to_ascii_lowercase).as_deref() {
        None | Some("false" | "0" | "no" | "off") => Ok(false),
        Some("true" | "1" | "yes" | "on") => Ok(true),
        Some(other) => Err(ConfigError::Invalid {
            var: var.to_string(),
            reason: format!("{other:?} is not true or false"),
        }),
    }
}

fn parse_log_level(value: Option<&str>) -> Result<LogLevel, ConfigError> {
    match value.map(str::to_ascii_lowercase).as_deref() {
        None | Some("info") => Ok(LogLevel::Info),
        Some("error") => Ok(LogLevel::Error),
        Some("warn") | Some("warning") => Ok(LogLevel::Warn),
        Some("debug") | Some("trace") => Ok(LogLevel::Debug),
        Some(other) => Err(ConfigError::Invalid {
            var: "LOG_LEVEL".to_string(),
            reason: format!("{other:?} is not one of error, warn, info, debug"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(&|name: &str| map.get(name).cloned())
    }

    #[test]
    fn defaults() {
        let c = config(&[("OPENAI_API_KEYS", "a")]).unwrap();
        assert_eq!(c.port, 3000);
        assert_eq!(c.host.to_string(), "127.0.0.1");
        assert_eq!(c.max_body_bytes, 33_554_432);
        assert_eq!(c.upstream_timeout, Duration::from_secs(300));
        assert_eq!(
            c.provider("openai").unwrap().base_url,
            "https://api.openai.com"
        );
        assert!(c.provider("gemini").unwrap().keys.is_empty());
    }

    #[test]
    fn public_host_needs_tokens_or_an_explicit_opt_out() {
        let base = [("OPENAI_API_KEYS", "a"), ("HOST", "0.0.0.0")];
        assert!(config(&base).is_err());
        assert!(config(&[base[0], base[1], ("PROXY_API_KEYS", "t1")]).is_ok());
        assert!(config(&[base[0], base[1], ("ALLOW_UNAUTHENTICATED", "true")]).is_ok());
        assert!(config(&[base[0], ("HOST", "::1")]).is_ok());
    }

    #[test]
    fn named_providers() {
        let c = config(&[
            ("PROVIDERS", "anthropic, groq,my-llm,anthropic"),
            ("ANTHROPIC_API_KEYS", "sk-ant-1"),
            ("MY_LLM_BASE_URL", "http://127.0.0.1:9/v2"),
            ("MY_LLM_AUTH", "query:api_key"),
            ("GROQ_AUTH", "header:X-Key"),
            ("BASE_URL", "http://shared:1"),
        ])
        .unwrap();
        let names: Vec<&str> = c.providers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            vec!["openai", "gemini", "anthropic", "groq", "my-llm"]
        );
        let anthropic = c.provider("anthropic").unwrap();
        assert_eq!(
            anthropic.base_url, "https://api.anthropic.com",
            "BASE_URL is only for openai and gemini"
        );
        assert_eq!(anthropic.auth, AuthStyle::Header("x-api-key".into()));
        assert_eq!(anthropic.shape, ErrorShape::Anthropic);
        assert_eq!(
            c.provider("groq").unwrap().auth,
            AuthStyle::Header("x-key".into())
        );
        assert_eq!(
            c.provider("groq").unwrap().base_url,
            "https://api.groq.com/openai"
        );
        let mine = c.provider("my-llm").unwrap();
        assert_eq!(mine.auth, AuthStyle::Query("api_key".into()));
        assert_eq!(mine.shape, ErrorShape::OpenAi);
    }

    #[test]
    fn named_provider_errors() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("OPENAI_API_KEYS", "a"), ("PROVIDERS", "mystery")],
                "MYSTERY_BASE_URL",
            ),
            (
                &[("OPENAI_API_KEYS", "a"), ("PROVIDERS", "Bad_Name")],
                "PROVIDERS",
            ),
            (
                &[("OPENAI_API_KEYS", "a"), ("PROVIDERS", "status")],
                "PROVIDERS",
            ),
            (
                &[
                    ("OPENAI_API_KEYS", "a"),
                    ("PROVIDERS", "groq"),
                    ("GROQ_AUTH", "basic"),
                ],
                "GROQ_AUTH",
            ),
            (&[("PROVIDERS", "groq")], "GEMINI_API_KEYS"),
        ];
        for (vars, name) in cases {
            let err = config(vars).unwrap_err().to_string();
            assert!(err.contains(name), "{vars:?}: {err}");
        }
        assert!(config(&[("PROVIDERS", "groq"), ("GROQ_API_KEYS", "g")]).is_ok());
    }

    #[test]
    fn keys_are_trimmed_and_deduplicated() {
        let keys = parse_keys(" k1, ,k2,k1 ,,k3 ");
        let secrets: Vec<&str> = keys.iter().map(ApiKey::secret).collect();
        assert_eq!(secrets, vec!["k1", "k2", "k3"]);
    }

    #[test]
    fn base_url_precedence() {
        let c = config(&[
            ("GEMINI_API_KEYS", "g"),
            ("BASE_URL", "http://shared:1/"),
            ("OPENAI_BASE_URL", "https://openrouter.ai/api"),
        ])
        .unwrap();
        assert_eq!(
            c.provider("openai").unwrap().base_url,
            "https://openrouter.ai/api"
        );
        assert_eq!(c.provider("gemini").unwrap().base_url, "http://shared:1");
    }

    #[test]
    fn errors_name_the_variable() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("OPENAI_API_KEYS", "a"), ("PORT", "abc")], "PORT"),
            (&[("OPENAI_API_KEYS", "a"), ("PORT", "70000")], "PORT"),
            (
                &[("OPENAI_API_KEYS", "a"), ("OPENAI_BASE_URL", "ftp://x")],
                "OPENAI_BASE_URL",
            ),
            (
                &[("OPENAI_API_KEYS", "a"), ("BASE_URL", "https://")],
                "BASE_URL",
            ),
            (&[("OPENAI_API_KEYS", "a"), ("HOST", "localhost:1")], "HOST"),
            (&[("OPENAI_API_KEYS", "a"), ("WORKERS", "0")], "WORKERS"),
            (
                &[("OPENAI_API_KEYS", "a"), ("LOG_LEVEL", "loud")],
                "LOG_LEVEL",
            ),
            (
                &[("OPENAI_API_KEYS", "a"), ("COOLDOWN_SECS", "-1")],
                "COOLDOWN_SECS",
            ),
            (
                &[("OPENAI_API_KEYS", "a"), ("HOST", "0.0.0.0")],
                "PROXY_API_KEYS",
            ),
            (
                &[("OPENAI_API_KEYS", "a"), ("ALLOW_UNAUTHENTICATED", "maybe")],
                "ALLOW_UNAUTHENTICATED",
            ),
            (&[], "GEMINI_API_KEYS"),
            (&[("OPENAI_API_KEYS", " , ")], "OPENAI_API_KEYS"),
            (
                &[("OPENAI_API_KEYS", "a"), ("PROXY_API_KEYS", " ")],
                "PROXY_API_KEYS",
            ),
            (
                &[("OPENAI_API_KEYS", "a"), ("PROXY_API_KEYS", ",")],
                "PROXY_API_KEYS",
            ),
        ];
        for (vars, name) in cases {
            let err = config(vars).unwrap_err().to_string();
            assert!(err.contains(name), "{vars:?}: {err}");
        }
    }

    #[test]
    fn refused_base_urls_never_show_their_credentials() {
        for url in [
            "https://user:hunter2@api.example.com/v1",
            "http://hunter2@api.example.com",
            "https://user:hunter2@api.example.com?x=1",
        ] {
            let err = config(&[("OPENAI_API_KEYS", "a"), ("OPENAI_BASE_URL", url)])
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("OPENAI_BASE_URL") && err.contains("***@api.example.com"),
                "{err}"
            );
            assert!(!err.contains("hunter2"), "{err}");
        }
        assert!(config(&[("OPENAI_API_KEYS", "a"), ("PROXY_API_KEYS", "")]).is_ok());
    }

    #[test]
    fn process_environment_wins_over_env_file() {
        let file = "OPENAI_API_KEYS=from-file\nexport PORT=4000\nGEMINI_API_KEYS='g1,g2'\n";
        let lookup = layered_lookup(Some(file), |name| {
            (name == "OPENAI_API_KEYS").then(|| "from-env".to_string())
        })
        .unwrap();
        let c = Config::from_lookup(&lookup).unwrap();
        assert_eq!(c.provider("openai").unwrap().keys[0].secret(), "from-env");
        assert_eq!(c.port, 4000);
        assert_eq!(c.provider("gemini").unwrap().keys.len(), 2);
    }

    #[test]
    fn bad_env_file_is_an_error() {
        let result = layered_lookup(Some("A=1\nnonsense\n"), |_| None);
        assert!(matches!(result, Err(ConfigError::EnvFile(e)) if e.line == 2));
    }
}
