//! The `keyrelay` binary: parse the command line, load the configuration, start logging, serve.
//! Exit codes: 0 done, 1 could not start (e.g. the port is taken), 2 bad configuration or usage.

use std::io::LineWriter;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use keyrelay::config::cli::{self, Command};
use keyrelay::config::{Config, LogLevel, layered_lookup};
use keyrelay::listen::{self, FrontSettings};
use keyrelay::proxy::Proxy;
use keyrelay::server::{Listener, ServeSettings};
use log::{LevelFilter, error, info};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match cli::parse_args(&args) {
        Ok(command) => command,
        Err(message) => {
            eprintln!("keyrelay: {message}");
            return ExitCode::from(2);
        }
    };
    match command {
        Command::Help => {
            print!("{}", cli::help());
            return ExitCode::SUCCESS;
        }
        Command::Version => {
            println!("{}", cli::version());
            return ExitCode::SUCCESS;
        }
        Command::Check | Command::Probe | Command::Serve => {}
    }
    let config = match load_config() {
        Ok(config) => config,
        Err(message) => {
            eprintln!("keyrelay: configuration error: {message}");
            return ExitCode::from(2);
        }
    };
    if command == Command::Probe {
        return if keyrelay::relay::probe::run(&config) {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        };
    }
    if command == Command::Check {
        println!("configuration OK");
        for line in cli::summary(&config) {
            println!("  {line}");
        }
        return ExitCode::SUCCESS;
    }
    if let Err(message) = init_logging(
        config.log_level,
        config.log_file.as_deref(),
        config.log_json,
    ) {
        eprintln!("keyrelay: LOG_FILE: {message}");
        return ExitCode::from(2);
    }
    std::panic::set_hook(Box::new(|info| error!("panic: {info}")));
    serve(config)
}

/// Reads the configuration from the process environment over the environment file (ENV_FILE,
/// else `./.env`, which may be absent).
fn load_config() -> Result<Config, String> {
    let (path, required) = match std::env::var("ENV_FILE") {
        Ok(path) if !path.is_empty() => (path, true),
        _ => (".env".to_string(), false),
    };
    let env_file = match std::fs::read_to_string(&path) {
        Ok(text) => Some(text),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound && !required => None,
        Err(err) => return Err(format!("{path}: {err}")),
    };
    let lookup = layered_lookup(env_file.as_deref(), |name| std::env::var(name).ok())
        .map_err(|e| e.to_string())?;
    Config::from_lookup(&lookup).map_err(|e| e.to_string())
}

/// SIGHUP: re-reads the environment file and swaps in new keys and provider settings; a bad file
/// is refused and the running configuration kept.
fn reload_config(proxy: &Proxy) {
    match load_config() {
        Ok(config) => {
            let changes = proxy.reload(&config);
            if changes.is_empty() {
                info!("reload: configuration re-read, nothing changed");
            }
            for change in changes {
                info!("reload: {change}");
            }
        }
        Err(message) => error!("reload refused, keeping the running configuration: {message}"),
    }
}

fn init_logging(level: LogLevel, log_file: Option<&str>, json: bool) -> Result<(), String> {
    let filter = match level {
        LogLevel::Error => LevelFilter::Error,
        LogLevel::Warn => LevelFilter::Warn,
        LogLevel::Info => LevelFilter::Info,
        LogLevel::Debug => LevelFilter::Debug,
    };
    let open_log_file = |path: &str| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| format!("cannot open {path}: {e}"))
    };
    if json {
        let mut outputs: Vec<Box<dyn std::io::Write + Send>> = vec![Box::new(std::io::stderr())];
        if let Some(path) = log_file {
            outputs.push(Box::new(open_log_file(path)?));
        }
        return keyrelay::json_log::JsonLogger::init(filter, outputs);
    }
    let config = simplelog::ConfigBuilder::new()
        .set_time_format_rfc3339()
        .set_target_level(LevelFilter::Off)
        .set_thread_level(LevelFilter::Off)
        // Only keyrelay's own lines: dependencies' debug output can contain URLs and headers.
        .add_filter_allow_str("keyrelay")
        .build();
    let mut loggers: Vec<Box<dyn simplelog::SharedLogger>> = vec![simplelog::WriteLogger::new(
        filter,
        config.clone(),
        LineWriter::new(std::io::stderr()),
    )];
    if let Some(path) = log_file {
        let file = open_log_file(path)?;
        loggers.push(simplelog::WriteLogger::new(
            filter,
            config,
            LineWriter::new(file),
        ));
    }
    simplelog::CombinedLogger::init(loggers).map_err(|e| e.to_string())
}

fn serve(config: Config) -> ExitCode {
    let addr = SocketAddr::new(config.host, config.port);
    let listener = match Listener::bind(addr) {
        Ok(listener) => listener,
        Err(err) => {
            error!("cannot listen on {addr}: {err}");
            eprintln!("keyrelay: cannot listen on {addr}: {err} (is another process using PORT?)");
            return ExitCode::from(1);
        }
    };
    info!("{} starting", cli::version());
    for line in cli::summary(&config) {
        info!("{line}");
    }
    info!("listening on http://{}", listener.local_addr());
    let trust = match keyrelay::agent::trust::Trust::new(&config.trust_files) {
        Ok((trust, 0)) => trust,
        Ok((trust, extra)) => {
            info!("TLS: {extra} certificate(s) trusted besides the built-in roots");
            trust
        }
        Err(why) => {
            error!("{why}");
            eprintln!("keyrelay: configuration error: {why}");
            return ExitCode::from(2);
        }
    };
    let proxy = Arc::new(Proxy::with_trust(&config, trust));
    let reloaded = Arc::clone(&proxy);
    let reload = move || reload_config(&reloaded);
    let fd_limit = listen::raise_fd_limit();
    let max_connections = config.max_connections_for(fd_limit);
    info!("at most {max_connections} client connections (open-file limit {fd_limit})");
    release_large_buffers();
    let settings = ServeSettings {
        front: FrontSettings {
            workers: config.workers,
            max_connections,
            queue_timeout: config.queue_timeout,
        },
        shutdown_grace: config.shutdown_grace,
    };
    let state = config.state_file.as_ref().map(|path| {
        let path = std::path::PathBuf::from(path);
        keyrelay::state_file::load(&proxy, &path);
        let writer = Arc::new(std::sync::Mutex::new(keyrelay::state_file::Writer::new(
            path,
        )));
        let (ticking, watched) = (Arc::clone(&writer), Arc::clone(&proxy));
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(keyrelay::state_file::WRITE_EVERY);
                ticking
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .sync(&watched);
            }
        });
        writer
    });
    if let Some(shared) = &config.shared_state {
        // After STATE_FILE: what this instance remembers is offered to the store too.
        match keyrelay::state::shared::SharedState::start(
            shared,
            config.session_ttl,
            Arc::clone(&proxy),
        ) {
            Ok(_) => info!(
                "shared state {}: connecting in the background",
                shared.shown
            ),
            Err(message) => error!("{message}; serving without shared state"),
        }
    }
    let served = listener.serve(Arc::clone(&proxy), settings, reload);
    if let Some(writer) = state {
        writer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .sync(&proxy);
    }
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            error!("server failed: {err}");
            ExitCode::from(1)
        }
    }
}

/// glibc raises its mmap threshold to the size of each large block freed (up to 32 MiB), after
/// which request bodies of that size come from the heap and their memory is not returned.
/// Fixing the threshold keeps large bodies in their own mappings, given back when freed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release_large_buffers() {
    // SAFETY: mallopt only sets an allocator parameter; it is called before other threads run.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
    }
}

/// musl's allocator maps large blocks and unmaps them when freed already.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_large_buffers() {}
