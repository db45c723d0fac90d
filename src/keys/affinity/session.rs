//! Recognising a conversation with no help from the client: an explicit hint where the client
//! sends one (`prompt_cache_key`, Anthropic's `metadata.user_id`, a `session_id` or
//! `x-session-id` header), otherwise a fingerprint of what stays the same from turn to turn (the
//! model, the system prompt, the first message). The body is walked member by member and the
//! chosen bytes hashed; no JSON tree is built.

use super::BodySurvey;
use super::ids::Dialect;
use crate::json::{self, HEAD_ELEMENTS, Head};
use crate::scan::for_each_word;

/// A request seen as part of a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conversation {
    /// The conversation's name in the session table (see [`Fingerprint`]).
    pub key: u64,
    /// Named by the client (a hint), not a fingerprint.
    pub explicit: bool,
    /// It holds an earlier answer (an assistant or model turn, a tool call or result): a later
    /// turn, which prefers the key of the earlier ones.
    pub continuing: bool,
}

impl Conversation {
    /// Whether this request should go to the conversation's key (a later turn, or one the
    /// client named); a first turn takes the round robin and only records its key.
    pub fn pinned(&self) -> bool {
        self.explicit || self.continuing
    }
}

/// Headers that name a session.
const SESSION_HEADERS: [&str; 2] = ["session_id", "x-session-id"];

/// Roles of an earlier answer, and item types that only follow one.
const ANSWER_ROLES: [&[u8]; 4] = [b"assistant", b"model", b"tool", b"function"];
const ANSWER_TYPES: [&[u8]; 9] = [
    b"function_call",
    b"function_call_output",
    b"reasoning",
    b"custom_tool_call",
    b"custom_tool_call_output",
    b"local_shell_call",
    b"computer_call",
    b"tool_result",
    b"item_reference",
];

/// Roles whose messages are part of the system prompt.
const SYSTEM_ROLES: [&[u8]; 2] = [b"system", b"developer"];

/// The conversation a request belongs to, or `None` when it is none (no messages at all), from
/// the top-level members of its body and their first elements (its [`BodySurvey`]).
pub fn conversation<'a>(
    dialect: Dialect,
    model: Option<&str>,
    body: &BodySurvey,
    mut headers: impl Iterator<Item = (&'a str, &'a str)>,
) -> Option<Conversation> {
    let hint_header = headers
        .find(|(name, value)| {
            SESSION_HEADERS.iter().any(|h| name.eq_ignore_ascii_case(h)) && !value.trim().is_empty()
        })
        .map(|(_, value)| value.trim());
    let mut hint: Option<&[u8]> = hint_header.map(str::as_bytes);
    let mut system: Vec<&[u8]> = Vec::new();
    // The list of messages, and which member it is.
    let mut turns: Option<(usize, &[u8])> = None;
    for (at, &(name, value)) in body.members.iter().enumerate() {
        match name {
            b"prompt_cache_key" if dialect == Dialect::OpenAi && hint.is_none() => {
                hint = json::plain_string(value).map(str::as_bytes);
            }
            b"metadata" if dialect == Dialect::Anthropic && hint.is_none() => {
                hint = json::top_level_string(value, "user_id").map(str::as_bytes);
            }
            b"system" | b"instructions" | b"systemInstruction" | b"system_instruction" => {
                system.push(value);
            }
            b"messages" | b"contents" | b"input" => turns = Some((at, value)),
            _ => {}
        }
    }
    let mut hash = Fingerprint::default();
    let mut field = |bytes: &[u8]| {
        hash.update(&(bytes.len() as u64).to_le_bytes());
        hash.update(bytes);
    };
    if let Some(hint) = hint.filter(|h| !h.is_empty()) {
        field(b"hint");
        field(hint);
        let continuing = turns.is_some_and(|t| holds_an_answer(t, &body.heads).1);
        return Some(Conversation {
            key: hash.0,
            explicit: true,
            continuing,
        });
    }
    let (turns_at, turns) = turns?;
    field(b"fingerprint");
    field(model.unwrap_or("").as_bytes());
    for part in &system {
        field(part);
    }
    // Only a list of messages is a conversation: a Responses `input` given as one string, or
    // an embeddings `input` (strings), records nothing (it would only crowd the table).
    let (Some(first), continuing) = holds_an_answer((turns_at, turns), &body.heads) else {
        return None;
    };
    // The list up to the end of the first message: system or developer messages kept in it
    // (OpenAI chat) are part of the conversation's identity too.
    // (`first` lies in `turns`; were it not, the message alone would do.)
    let prefix_len = (first.as_ptr() as usize).wrapping_sub(turns.as_ptr() as usize) + first.len();
    field(turns.get(..prefix_len).unwrap_or(first));
    Some(Conversation {
        key: hash.0,
        explicit: false,
        continuing,
    })
}

/// The first message that is not part of the system prompt, and whether the turn after it is
/// an earlier answer: from the list's first elements that the survey kept (`heads` of the
/// member at `at`), or, past those (more system messages than they hold), by walking the list.
fn holds_an_answer<'t>(
    (at, turns): (usize, &'t [u8]),
    heads: &[Head<'t>],
) -> (Option<&'t [u8]>, bool) {
    let kept = || {
        heads
            .iter()
            .filter(move |(member, _)| *member == at)
            .map(|&(_, element)| element)
    };
    let count = kept().count();
    // Fewer kept than could be: that was the whole list. Otherwise the rest is walked, and
    // only if the kept ones do not settle it.
    let rest = (count == HEAD_ELEMENTS)
        .then(|| json::array_elements(turns).skip(count))
        .into_iter()
        .flatten();
    first_and_next(kept().chain(rest))
}

fn first_and_next<'t>(mut elements: impl Iterator<Item = &'t [u8]>) -> (Option<&'t [u8]>, bool) {
    let first = elements.find(|element| {
        let role = json::top_level_raw(element, b"role");
        !role.is_some_and(|r| SYSTEM_ROLES.contains(&r))
    });
    let first = first.filter(|element| element.starts_with(b"{"));
    let Some(first) = first else {
        return (None, false);
    };
    let continuing = elements.next().is_some_and(|next| {
        json::top_level_raw(next, b"role").is_some_and(|r| ANSWER_ROLES.contains(&r))
            || json::top_level_raw(next, b"type").is_some_and(|t| ANSWER_TYPES.contains(&t))
    });
    (Some(first), continuing)
}

/// A 64-bit hash of byte strings, eight bytes a step: each little-endian word is xored in,
/// multiplied by an odd constant and folded (the high half onto the low). The same in every
/// process and instance (the table is shared through Redis), not a secret, and ~8 times fewer
/// steps than FNV-1a's byte at a time, which it replaced (a conversation fingerprinted by an
/// older version is recognised as new once).
struct Fingerprint(u64);

impl Default for Fingerprint {
    fn default() -> Fingerprint {
        Fingerprint(0xcbf2_9ce4_8422_2325)
    }
}

impl Fingerprint {
    fn update(&mut self, bytes: &[u8]) {
        // Zero-padded: every field is preceded by its length, so padding is unambiguous.
        for_each_word(bytes, |word| self.mix(word));
    }

    fn mix(&mut self, word: u64) {
        let mixed = (self.0 ^ word).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.0 = mixed ^ (mixed >> 32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(dialect: Dialect, model: &str, body: &str) -> Option<Conversation> {
        let survey = BodySurvey::of(dialect, body.as_bytes());
        conversation(dialect, Some(model), &survey, std::iter::empty())
    }

    #[test]
    fn turns_of_one_conversation_share_a_key_and_later_turns_are_pinned() {
        let turn1 = r#"{"model":"gpt-4o","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi, I am Ada."}]}"#;
        let turn2 = r#"{"model":"gpt-4o","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi, I am Ada."},{"role":"assistant","content":"Hello Ada."},{"role":"user","content":"Name?"}]}"#;
        let other = r#"{"model":"gpt-4o","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi, I am Bob."}]}"#;
        let (a, b, c) = (
            of(Dialect::OpenAi, "gpt-4o", turn1).unwrap(),
            of(Dialect::OpenAi, "gpt-4o", turn2).unwrap(),
            of(Dialect::OpenAi, "gpt-4o", other).unwrap(),
        );
        assert_eq!(a.key, b.key);
        assert_ne!(a.key, c.key, "same system prompt, another conversation");
        assert!(!a.pinned() && b.pinned() && !c.pinned());
        let mini = of(Dialect::OpenAi, "gpt-4o-mini", turn1).unwrap();
        assert_ne!(a.key, mini.key, "another model, another cache");
        let other_system = turn1.replace("Be brief.", "Be verbose.");
        let d = of(Dialect::OpenAi, "gpt-4o", &other_system).unwrap();
        assert_ne!(a.key, d.key, "another system prompt, another conversation");
    }

    #[test]
    fn every_dialect_shows_a_later_turn() {
        let cases: [(Dialect, &str, bool); 8] = [
            // More system messages than the survey keeps as heads: the rest of the list is
            // walked.
            (
                Dialect::OpenAi,
                r#"{"messages":[{"role":"system","content":"1"},{"role":"developer","content":"2"},{"role":"system","content":"3"},{"role":"system","content":"4"},{"role":"user","content":"a"},{"role":"assistant","content":"b"}]}"#,
                true,
            ),
            (
                Dialect::OpenAi,
                r#"{"messages":[{"role":"system","content":"1"},{"role":"system","content":"2"},{"role":"system","content":"3"},{"role":"user","content":"a"}]}"#,
                false,
            ),
            (
                Dialect::Gemini,
                r#"{"contents":[{"role":"user","parts":[{"text":"a"}]},{"role":"model","parts":[{"text":"b"}]}]}"#,
                true,
            ),
            (
                Dialect::Gemini,
                r#"{"systemInstruction":{"parts":[{"text":"s"}]},"contents":[{"role":"user","parts":[{"text":"a"}]}]}"#,
                false,
            ),
            (
                Dialect::Anthropic,
                r#"{"system":"s","messages":[{"role":"user","content":"a"},{"role":"assistant","content":[{"type":"tool_use","id":"t","name":"n","input":{}}]},{"role":"user","content":[{"type":"tool_result","tool_use_id":"t"}]}]}"#,
                true,
            ),
            (
                Dialect::OpenAi,
                r#"{"input":[{"role":"user","content":"a"},{"type":"function_call","call_id":"c","name":"f","arguments":"{}"},{"type":"function_call_output","call_id":"c","output":"1"}]}"#,
                true,
            ),
            (
                Dialect::OpenAi,
                r#"{"input":[{"role":"user","content":"one question"}]}"#,
                false,
            ),
            (
                Dialect::OpenAi,
                r#"{"messages":[{"role":"user","content":"a"},{"role":"user","content":"b"}]}"#,
                false,
            ),
        ];
        for (dialect, body, continuing) in cases {
            let found = of(dialect, "m", body).unwrap();
            assert_eq!(found.continuing, continuing, "{body}");
            assert!(!found.explicit);
        }
        assert_eq!(of(Dialect::OpenAi, "m", r#"{"prompt":"x"}"#), None);
        assert_eq!(
            of(Dialect::OpenAi, "m", r#"{"input":"just one question"}"#),
            None
        );
        assert_eq!(
            of(Dialect::OpenAi, "m", r#"{"input":["embed me","and me"]}"#),
            None
        );
    }

    #[test]
    fn hints_name_the_conversation() {
        let claude = r#"{"model":"claude","metadata":{"user_id":"user_abc_account__session_123"},"messages":[{"role":"user","content":"a"}]}"#;
        let found = of(Dialect::Anthropic, "claude", claude).unwrap();
        assert!(found.explicit && found.pinned());
        let codex = r#"{"model":"gpt-5","prompt_cache_key":"019a-session","input":[{"role":"user","content":"x"}]}"#;
        let other_first_turn = r#"{"model":"gpt-5","prompt_cache_key":"019a-session","input":[{"role":"user","content":"y"}]}"#;
        assert_eq!(
            of(Dialect::OpenAi, "gpt-5", codex).unwrap().key,
            of(Dialect::OpenAi, "gpt-5", other_first_turn).unwrap().key
        );
        let header = conversation(
            Dialect::Gemini,
            None,
            &BodySurvey::default(),
            [("X-Session-Id", "s-1")].into_iter(),
        )
        .unwrap();
        assert!(header.explicit);
    }
}
