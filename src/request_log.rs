//! The one INFO line per request, written the same way by the listener and the workers.

use std::time::Duration;

use log::info;

use crate::json::quote;
use crate::json_log::REQUEST_TARGET;
use crate::keys::usage::Tokens;

/// One request log line: `req=… METHOD /path status= attempts= key= ms= queued_ms=` and a note.
pub(crate) struct RequestLog<'a> {
    pub(crate) id: &'a str,
    pub(crate) method: &'a str,
    pub(crate) path: &'a str,
    pub(crate) status: u16,
    pub(crate) attempts: u32,
    pub(crate) key: Option<&'a str>,
    /// From the complete head to the end of the answer, queue wait included.
    pub(crate) elapsed: Duration,
    /// Time spent waiting for a worker.
    pub(crate) queued: Duration,
    pub(crate) note: &'a str,
    /// `resource` or `session` when affinity chose the key.
    pub(crate) pin: Option<&'static str>,
    /// The tokens the answer reported.
    pub(crate) tokens: Option<Tokens>,
}

impl RequestLog<'_> {
    pub(crate) fn write(&self) {
        if crate::json_log::enabled() {
            return info!(target: REQUEST_TARGET, "{}", self.json_members());
        }
        info!(
            target: REQUEST_TARGET,
            "req={} {} {} status={} attempts={} key={}{}{}{} ms={} queued_ms={}{}",
            self.id,
            self.method,
            self.path,
            self.status,
            self.attempts,
            self.key.unwrap_or("-"),
            if self.pin.is_some() { " pin=" } else { "" },
            self.pin.unwrap_or(""),
            self.tokens.map_or(String::new(), |t| format!(
                " tokens_in={} tokens_cached={} tokens_out={}",
                t.input, t.cached, t.output
            )),
            self.elapsed.as_millis(),
            self.queued.as_millis(),
            self.note
        );
    }

    /// The same fields as one JSON object (the logger adds `time` and `level`); the note's
    /// `aborted=` / `refused=` become members of their own.
    fn json_members(&self) -> String {
        let mut out = format!(
            r#"{{"req":{},"method":{},"path":{},"status":{},"attempts":{},"key":{},"ms":{},"queued_ms":{}"#,
            quote(self.id),
            quote(self.method),
            quote(self.path),
            self.status,
            self.attempts,
            self.key.map_or("null".to_string(), quote),
            self.elapsed.as_millis(),
            self.queued.as_millis()
        );
        if let Some(t) = self.tokens {
            out.push_str(&format!(
                ",\"tokens_in\":{},\"tokens_cached\":{},\"tokens_out\":{}",
                t.input, t.cached, t.output
            ));
        }
        if let Some(pin) = self.pin {
            out.push_str(&format!(",\"pin\":{}", quote(pin)));
        }
        for pair in self.note.split_whitespace() {
            if let Some((name, value)) = pair.split_once('=') {
                out.push_str(&format!(",{}:{}", quote(name), quote(value)));
            }
        }
        out.push('}');
        out
    }
}
