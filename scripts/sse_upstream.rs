//! Benchmark helper for scripts/bench.sh (a cargo example, `sse-upstream`), with four modes:
//!
//! - `serve`: the Rust stand-in upstream for the streaming test, which holds 1,000 slow SSE
//!   streams and stamps every event with its send time (`sse_upstream/serve.rs`);
//! - `client`: opens the concurrent streams through the proxy and measures each event's delay
//!   (`sse_upstream/client.rs`);
//! - `conns`: opens many keep-alive connections at once and finds any the proxy leaves
//!   unserved (`sse_upstream/conns.rs`);
//! - `startup`: times the proxy from spawn to ready (`sse_upstream/startup.rs`).
//!
//! Results are printed as one `RESULT key=value ...` line on stdout for the script to parse.

#[path = "sse_upstream/client.rs"]
mod client;
#[path = "sse_upstream/conns.rs"]
mod conns;
#[path = "sse_upstream/http.rs"]
mod http;
#[path = "sse_upstream/proc_status.rs"]
mod proc_status;
#[path = "sse_upstream/serve.rs"]
mod serve;
#[path = "sse_upstream/startup.rs"]
mod startup;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const USAGE: &str = "\
usage: sse-upstream serve   [--port P] [--events 20] [--interval-ms 50]
       sse-upstream client  --addr 127.0.0.1:P [--path /openai/v1/chat/completions]
                            [--streams 1000] [--events 20] [--stall-secs 5]
                            [--deadline-secs 60] [--ramp-ms 500] [--watch-pid PID]
       sse-upstream conns   --addr 127.0.0.1:P [--path /openai/v1/chat/completions]
                            [--conns 64] [--secs 5] [--starve-ms 1000] [--body JSON]
       sse-upstream startup --bin PATH --dir DIR --port P [--runs 5]
                            [--timeout-ms 5000] [--env KEY=VALUE]...";

/// Microseconds since the UNIX epoch: the clock both ends of the streaming test share.
pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// `--name value` pairs, in order (a name may repeat).
struct Args(Vec<(String, String)>);

impl Args {
    fn parse(raw: &[String]) -> Result<Args, String> {
        let mut pairs = Vec::new();
        let mut iter = raw.iter();
        while let Some(flag) = iter.next() {
            let name = flag
                .strip_prefix("--")
                .ok_or_else(|| format!("expected --name, got {flag:?}"))?;
            let value = iter
                .next()
                .ok_or_else(|| format!("--{name} needs a value"))?;
            pairs.push((name.to_string(), value.clone()));
        }
        Ok(Args(pairs))
    }

    fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn get<T: FromStr>(&self, name: &str, default: Option<T>) -> Result<T, String> {
        match self.all(name).last() {
            Some(text) => text
                .parse()
                .map_err(|_| format!("--{name}: cannot parse {text:?}")),
            None => default.ok_or_else(|| format!("--{name} is required")),
        }
    }
}

fn serve_mode(args: &Args) -> Result<(), String> {
    let plan = serve::Plan {
        events: args.get("events", Some(20))?,
        interval: Duration::from_millis(args.get("interval-ms", Some(50))?),
    };
    serve::run(args.get("port", Some(0))?, plan)
}

fn client_mode(args: &Args) -> Result<(), String> {
    client::run(client::Options {
        addr: args.get::<SocketAddr>("addr", None)?,
        path: args.get("path", Some("/openai/v1/chat/completions".to_string()))?,
        streams: args.get("streams", Some(1000))?,
        events: args.get("events", Some(20))?,
        stall: Duration::from_secs(args.get("stall-secs", Some(5))?),
        deadline: Duration::from_secs(args.get("deadline-secs", Some(60))?),
        ramp: Duration::from_millis(args.get("ramp-ms", Some(500))?),
        watch_pid: args
            .all("watch-pid")
            .last()
            .map(str::parse)
            .transpose()
            .map_err(|_| "--watch-pid: not a process id".to_string())?,
    })
}

fn conns_mode(args: &Args) -> Result<(), String> {
    conns::run(conns::Options {
        addr: args.get::<SocketAddr>("addr", None)?,
        path: args.get("path", Some("/openai/v1/chat/completions".to_string()))?,
        body: args.get(
            "body",
            Some("{\"model\":\"gpt-4o-mini\",\"messages\":[]}".to_string()),
        )?,
        conns: args.get::<usize>("conns", Some(64))?.max(1),
        duration: Duration::from_secs(args.get("secs", Some(5))?),
        starve: Duration::from_millis(args.get("starve-ms", Some(1000))?),
    })
}

fn startup_mode(args: &Args) -> Result<(), String> {
    let envs = args
        .all("env")
        .map(|pair| {
            pair.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| format!("--env {pair:?}: expected KEY=VALUE"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    startup::run(&startup::Options {
        bin: args.get::<String>("bin", None)?.into(),
        dir: args.get::<String>("dir", None)?.into(),
        port: args.get("port", None)?,
        runs: args.get::<usize>("runs", Some(5))?.max(1),
        timeout: Duration::from_millis(args.get("timeout-ms", Some(5000))?),
        envs,
    })
}

fn main() -> ExitCode {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let Some((mode, rest)) = raw.split_first() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let result = Args::parse(rest).and_then(|args| match mode.as_str() {
        "serve" => serve_mode(&args),
        "client" => client_mode(&args),
        "conns" => conns_mode(&args),
        "startup" => startup_mode(&args),
        _ => Err(format!("unknown mode {mode:?}\n{USAGE}")),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("sse-upstream: {message}");
            ExitCode::FAILURE
        }
    }
}
