//! How the key state looks in Redis: one string per fact, under one prefix, each with the time
//! to live of the fact; and the event lines instances publish to each other. Keys are named by
//! their SHA-256 prefix ([`crate::keys::ApiKey::id`]), never by the key.
//!
//! | Redis key | value | expires |
//! |---|---|---|
//! | `<prefix>:b:<provider>:<key-id>:<model or ->` | `<until unix ms> <reason>` | at `until` |
//! | `<prefix>:d:<provider>:<key-id>` | `1` | never (deleted on enable) |
//! | `<prefix>:i:<provider>:<object id>` | `<key-id>` | 30 days after it was learned |
//! | `<prefix>:s:<provider>:<conversation>` | `<key-id>` | SESSION_AFFINITY_TTL_SECS |
//! | `<prefix>:epoch` | when the store was first filled | never |
//!
//! Events go to the channel `<prefix>:events`, one line per change:
//! `<instance> <provider> <op> <fields…>`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::keys::BenchReason;
use crate::keys::journal::Change;

/// A fact as a Redis key, value and time to live (`None`: kept until deleted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fact {
    pub key: String,
    pub value: String,
    pub ttl: Option<Duration>,
}

/// What a change does to the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Set a fact.
    Set(Fact),
    /// Delete a key.
    Delete(String),
    /// Add a member to a sorted set, scored by time (the tokens of a sliding minute).
    Add {
        key: String,
        score_ms: u64,
        member: String,
        ttl: Duration,
    },
}

/// The names under one prefix.
#[derive(Debug, Clone)]
pub struct Names {
    prefix: String,
}

fn hex(id: u64) -> String {
    format!("{id:016x}")
}

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Whether a model name or id can travel in a Redis key and an event line as it is (no white
/// space or control characters; the model is always the last field).
pub fn plain(text: &str) -> bool {
    !text.is_empty() && text.len() <= 256 && !text.bytes().any(|b| b <= b' ' || b == 0x7f)
}

impl Names {
    /// Names under `prefix`.
    pub fn new(prefix: &str) -> Names {
        Names {
            prefix: prefix.to_string(),
        }
    }

    /// The events channel.
    pub fn channel(&self) -> String {
        format!("{}:events", self.prefix)
    }

    /// The marker set when the store is first filled: its absence means a new (or emptied)
    /// store that every instance fills again.
    pub fn epoch(&self) -> String {
        format!("{}:epoch", self.prefix)
    }

    /// The pattern of every fact of one kind (`b`, `d`, `i`, `s`).
    pub fn all(&self, kind: char) -> String {
        format!("{}:{kind}:*", self.prefix)
    }

    /// What `change` of `provider` writes, as of `now`; empty when nothing can be written (an
    /// ended bench, a model name that cannot travel).
    pub fn writes(
        &self,
        provider: &str,
        change: &Change,
        now: SystemTime,
        session_ttl: Duration,
    ) -> Vec<Write> {
        let p = &self.prefix;
        match change {
            Change::Bench {
                key,
                model,
                until,
                reason,
            } => {
                let Ok(left) = until.duration_since(now) else {
                    return Vec::new();
                };
                let model = model.as_deref().unwrap_or("-");
                if left.is_zero() || !plain(model) {
                    return Vec::new();
                }
                vec![Write::Set(Fact {
                    key: self.bench_key(provider, *key, model),
                    value: format!("{} {}", unix_ms(*until), reason.word()),
                    ttl: Some(left),
                })]
            }
            Change::Disabled { key, disabled } => {
                let name = format!("{p}:d:{provider}:{}", hex(*key));
                if *disabled {
                    vec![Write::Set(Fact {
                        key: name,
                        value: "1".into(),
                        ttl: None,
                    })]
                } else {
                    vec![Write::Delete(name)]
                }
            }
            // The benches this instance knows of (every instance mirrors them): deleted by
            // name, so a reset never scans the store.
            Change::Reset { key, models } => models
                .iter()
                .map(|model| {
                    let model = model.as_deref().unwrap_or("-");
                    Write::Delete(self.bench_key(provider, *key, model))
                })
                .collect(),
            Change::Learned { key, ids } => ids
                .iter()
                .filter(|id| plain(id))
                .map(|id| {
                    Write::Set(Fact {
                        key: self.id_key(provider, id),
                        value: hex(*key),
                        ttl: Some(id_ttl(id)),
                    })
                })
                .collect(),
            Change::Forgot { ids } => ids
                .iter()
                .map(|id| Write::Delete(self.id_key(provider, id)))
                .collect(),
            Change::Spent {
                key,
                model,
                tokens,
                at,
            } => {
                if !plain(model) {
                    return Vec::new();
                }
                let ms = unix_ms(*at);
                vec![Write::Add {
                    key: self.limit_key(provider, *key, model, "t"),
                    score_ms: ms,
                    member: format!("{ms}{:04}:{tokens}", ms % 10_000),
                    ttl: Duration::from_secs(60),
                }]
            }
            Change::Session { key, conversation } => vec![Write::Set(Fact {
                key: format!("{p}:s:{provider}:{}", hex(*conversation)),
                value: hex(*key),
                ttl: Some(session_ttl),
            })],
        }
    }

    /// The Redis key of one key's count of one kind (`m` requests in the minute, `t` tokens
    /// in the minute, `d<end>` requests of the day ending then) for `model`.
    pub fn limit_key(&self, provider: &str, key: u64, model: &str, kind: &str) -> String {
        format!("{}:l:{provider}:{}:{model}:{kind}", self.prefix, hex(key))
    }

    /// The Redis key of a bench of `key` for `model` (`-`: the whole key).
    fn bench_key(&self, provider: &str, key: u64, model: &str) -> String {
        format!("{}:b:{provider}:{}:{model}", self.prefix, hex(key))
    }

    /// The Redis key of an object id.
    pub fn id_key(&self, provider: &str, id: &str) -> String {
        format!("{}:i:{provider}:{id}", self.prefix)
    }

    /// The change a stored fact stands for, with its provider (`None` for anything else under
    /// the prefix).
    pub fn fact_change(&self, key: &str, value: &str) -> Option<(String, Change)> {
        let rest = key.strip_prefix(&self.prefix)?.strip_prefix(':')?;
        let (kind, rest) = rest.split_once(':')?;
        let (provider, rest) = rest.split_once(':')?;
        let change = match kind {
            "b" => {
                let (key_id, model) = rest.split_once(':')?;
                let (until, reason) = value.split_once(' ')?;
                Change::Bench {
                    key: parse_hex(key_id)?,
                    model: (model != "-").then(|| model.to_string()),
                    until: UNIX_EPOCH + Duration::from_millis(until.parse().ok()?),
                    reason: BenchReason::from_word(reason)?,
                }
            }
            "d" => Change::Disabled {
                key: parse_hex(rest)?,
                disabled: true,
            },
            "i" => Change::Learned {
                key: parse_hex(value)?,
                ids: vec![rest.to_string()],
            },
            "s" => Change::Session {
                key: parse_hex(value)?,
                conversation: parse_hex(rest)?,
            },
            _ => return None,
        };
        Some((provider.to_string(), change))
    }
}

/// How long the store keeps a learned id (each instance keeps its own for 30 days, bounded in
/// number): a week; a day for the kinds made by the thousand (a stored response per Responses
/// turn, a stored chat completion), which would otherwise grow the store without bound. An id
/// the store has forgotten is found again by trying keys.
pub fn id_ttl(id: &str) -> Duration {
    if id.starts_with("resp_") || id.starts_with("chatcmpl-") {
        Duration::from_secs(24 * 3600)
    } else {
        Duration::from_secs(7 * 24 * 3600)
    }
}

fn parse_hex(text: &str) -> Option<u64> {
    (text.len() == 16)
        .then(|| u64::from_str_radix(text, 16).ok())
        .flatten()
}

/// One change as an event line from `instance`.
pub fn event_line(instance: &str, provider: &str, change: &Change) -> Option<String> {
    let body = match change {
        Change::Bench {
            key,
            model,
            until,
            reason,
        } => {
            let model = model.as_deref().unwrap_or("-");
            if !plain(model) {
                return None;
            }
            format!(
                "bench {} {} {} {model}",
                hex(*key),
                unix_ms(*until),
                reason.word()
            )
        }
        Change::Disabled { key, disabled } => {
            format!("disabled {} {}", hex(*key), u8::from(*disabled))
        }
        Change::Reset { key, .. } => format!("reset {}", hex(*key)),
        Change::Learned { key, ids } => {
            let ids: Vec<&str> = ids
                .iter()
                .map(String::as_str)
                .filter(|i| plain(i))
                .collect();
            format!("learned {} {}", hex(*key), ids.join(" "))
        }
        Change::Forgot { ids } => {
            let ids: Vec<&str> = ids
                .iter()
                .map(String::as_str)
                .filter(|i| plain(i))
                .collect();
            format!("forgot {}", ids.join(" "))
        }
        Change::Session { key, conversation } => {
            format!("session {} {}", hex(*key), hex(*conversation))
        }
        // Counts live in the store only: nothing for the other instances' memory.
        Change::Spent { .. } => return None,
    };
    plain(provider).then(|| format!("{instance} {provider} {body}"))
}

/// An event line as (instance, provider, change); `None` for a line this version cannot read.
pub fn parse_event(line: &str) -> Option<(&str, &str, Change)> {
    let mut fields = line.split(' ');
    let instance = fields.next()?;
    let provider = fields.next()?;
    let op = fields.next()?;
    let mut next = || fields.next();
    let change = match op {
        "bench" => {
            let key = parse_hex(next()?)?;
            let until = UNIX_EPOCH + Duration::from_millis(next()?.parse().ok()?);
            let reason = BenchReason::from_word(next()?)?;
            let model = next()?;
            Change::Bench {
                key,
                model: (model != "-").then(|| model.to_string()),
                until,
                reason,
            }
        }
        "disabled" => Change::Disabled {
            key: parse_hex(next()?)?,
            disabled: next()? == "1",
        },
        "reset" => Change::Reset {
            key: parse_hex(next()?)?,
            models: Vec::new(),
        },
        "learned" => {
            let key = parse_hex(next()?)?;
            let ids = std::iter::from_fn(next).map(str::to_string).collect();
            Change::Learned { key, ids }
        }
        "forgot" => Change::Forgot {
            ids: std::iter::from_fn(next).map(str::to_string).collect(),
        },
        "session" => Change::Session {
            key: parse_hex(next()?)?,
            conversation: parse_hex(next()?)?,
        },
        _ => return None,
    };
    Some((instance, provider, change))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changes(now: SystemTime) -> Vec<Change> {
        vec![
            Change::Bench {
                key: 0xabc,
                model: Some("ft:gpt-4o:acme::x1".into()),
                until: now + Duration::from_secs(90),
                reason: BenchReason::RateLimited,
            },
            Change::Bench {
                key: 1,
                model: None,
                until: now + Duration::from_secs(1800),
                reason: BenchReason::Rejected(401),
            },
            Change::Disabled {
                key: 2,
                disabled: true,
            },
            Change::Disabled {
                key: 2,
                disabled: false,
            },
            Change::Reset {
                key: 3,
                models: Vec::new(),
            },
            Change::Learned {
                key: 4,
                ids: vec!["file-abc".into(), "files/xyz".into()],
            },
            Change::Forgot {
                ids: vec!["resp_1".into()],
            },
            Change::Session {
                key: 5,
                conversation: u64::MAX,
            },
        ]
    }

    #[test]
    fn events_round_trip() {
        let now = UNIX_EPOCH + Duration::from_millis(1_796_000_000_123);
        for change in changes(now) {
            let line = event_line("i1", "openai", &change).unwrap();
            let (instance, provider, back) = parse_event(&line).unwrap();
            assert_eq!(
                (instance, provider, &back),
                ("i1", "openai", &change),
                "{line}"
            );
        }
        let spaced = Change::Bench {
            key: 1,
            model: Some("a model".into()),
            until: now,
            reason: BenchReason::RateLimited,
        };
        assert_eq!(event_line("i1", "openai", &spaced), None);
        assert_eq!(parse_event("i1 openai launch 1"), None);
    }

    #[test]
    fn facts_round_trip_and_ended_benches_write_nothing() {
        let now = UNIX_EPOCH + Duration::from_millis(1_796_000_000_000);
        let names = Names::new("kr");
        let ttl = Duration::from_secs(3600);
        for change in changes(now) {
            for write in names.writes("gemini", &change, now, ttl) {
                let Write::Set(fact) = write else { continue };
                assert!(fact.key.starts_with("kr:"), "{fact:?}");
                let (provider, back) = names.fact_change(&fact.key, &fact.value).unwrap();
                assert_eq!(provider, "gemini");
                match (&change, &back) {
                    (Change::Learned { key, .. }, Change::Learned { key: k2, ids }) => {
                        assert_eq!(key, k2);
                        assert_eq!(ids.len(), 1);
                    }
                    _ => assert_eq!(back, change),
                }
            }
        }
        let ended = Change::Bench {
            key: 1,
            model: None,
            until: now - Duration::from_secs(1),
            reason: BenchReason::RateLimited,
        };
        assert!(names.writes("openai", &ended, now, ttl).is_empty());
        assert_eq!(names.fact_change("other:b:x:y:z", "1 rate_limited"), None);
    }
}
