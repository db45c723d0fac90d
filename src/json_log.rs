//! LOG_FORMAT=json: each log line one JSON object (`time`, `level`, then the request line's
//! fields, or `message`), for journald, Loki or Datadog. Same filter and masking as the text
//! lines: only keyrelay's own records, and no record ever holds a key.

use std::io::{LineWriter, Write};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use log::{LevelFilter, Log, Metadata, Record};

use crate::json::quote;
use crate::utc::format_rfc3339_millis;

/// The log target of request lines (request_log.rs): this logger takes their text as ready-made
/// members, and only theirs (any other message is quoted, whatever it looks like).
pub(crate) const REQUEST_TARGET: &str = "keyrelay::request";

/// Set once at start when LOG_FORMAT=json: request lines are then rendered as JSON fields.
static JSON: AtomicBool = AtomicBool::new(false);

/// Whether log lines are JSON objects.
pub(crate) fn enabled() -> bool {
    JSON.load(Ordering::Relaxed)
}

/// A logger writing one JSON object per line to each destination.
pub struct JsonLogger {
    level: LevelFilter,
    outputs: Vec<Mutex<LineWriter<Box<dyn Write + Send>>>>,
}

impl JsonLogger {
    /// Installs it as the process's logger.
    pub fn init(level: LevelFilter, outputs: Vec<Box<dyn Write + Send>>) -> Result<(), String> {
        JSON.store(true, Ordering::Relaxed);
        let logger = JsonLogger {
            level,
            outputs: outputs
                .into_iter()
                .map(|o| Mutex::new(LineWriter::new(o)))
                .collect(),
        };
        log::set_boxed_logger(Box::new(logger)).map_err(|e| e.to_string())?;
        log::set_max_level(level);
        Ok(())
    }
}

impl Log for JsonLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= self.level && metadata.target().starts_with("keyrelay")
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = render(record, SystemTime::now());
        for output in &self.outputs {
            let mut output = output.lock().unwrap_or_else(|p| p.into_inner());
            let _ = output.write_all(line.as_bytes());
        }
    }

    fn flush(&self) {
        for output in &self.outputs {
            let _ = output.lock().unwrap_or_else(|p| p.into_inner()).flush();
        }
    }
}

/// One record as one JSON line. A request line arrives already rendered as JSON members (see
/// request_log.rs) and is recognised by its target, never by its shape: any other message is
/// quoted, so text that looks like JSON cannot add members to the line.
fn render(record: &Record, now: SystemTime) -> String {
    let text = record.args().to_string();
    let members = (record.target() == REQUEST_TARGET)
        .then(|| text.strip_prefix('{').and_then(|t| t.strip_suffix('}')))
        .flatten();
    let body = match members {
        Some(members) => members.to_string(),
        None => format!("\"message\":{}", quote(&text)),
    };
    format!(
        "{{\"time\":{},\"level\":{},{body}}}\n",
        quote(&format_rfc3339_millis(now)),
        quote(&record.level().to_string())
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use log::Level;
    use std::time::{Duration, UNIX_EPOCH};

    fn line(target: &str, text: &str) -> String {
        let at = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        render(
            &Record::builder()
                .args(format_args!("{text}"))
                .level(Level::Info)
                .target(target)
                .build(),
            at,
        )
    }

    #[test]
    fn a_request_line_becomes_members() {
        assert_eq!(
            line(REQUEST_TARGET, r#"{"req":"r1","status":200}"#),
            "{\"time\":\"2023-11-14T22:13:20.000Z\",\"level\":\"INFO\",\"req\":\"r1\",\"status\":200}\n"
        );
    }

    #[test]
    fn any_other_message_shaped_like_json_is_quoted() {
        assert_eq!(
            line("keyrelay::config", r#"{"level":"forged"}"#),
            "{\"time\":\"2023-11-14T22:13:20.000Z\",\"level\":\"INFO\",\"message\":\"{\\\"level\\\":\\\"forged\\\"}\"}\n"
        );
    }
}
