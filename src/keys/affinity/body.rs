//! A request's JSON body, read once for everything affinity and the relay want of it: its
//! top-level members (a conversation's messages and hints, `store`, the model), the first
//! elements of its arrays (a conversation's first messages) and the ids its strings name.
//! Before, each of those walked the body again (callgrind: ~5k instructions a request).

use super::ids::Dialect;
use crate::json::{self, Head, Member};

/// What one pass over a request's body found.
#[derive(Debug, Default)]
pub struct BodySurvey<'a> {
    /// The members of the body's top-level object, in order (none if it is no JSON object).
    pub members: Vec<Member<'a>>,
    /// The first elements of the members that are arrays (a conversation's first messages).
    pub heads: Vec<Head<'a>>,
    /// The ids of per-account objects its string values name, each once, in order.
    pub ids: Vec<&'a str>,
}

impl<'a> BodySurvey<'a> {
    /// Reads `body` in `dialect`'s id shapes. Only a JSON body names ids or members: an
    /// upload's bytes are not looked through.
    pub fn of(dialect: Dialect, body: &'a [u8]) -> BodySurvey<'a> {
        if !json::looks_like_json(body) {
            return BodySurvey::default();
        }
        let mut ids: Vec<&str> = Vec::new();
        let found = json::survey(body, |raw| {
            if let Some(id) = dialect.id_of_raw(raw)
                && !ids.contains(&id)
            {
                ids.push(id);
            }
        });
        BodySurvey {
            members: found.members,
            heads: found.heads,
            ids,
        }
    }

    /// Whether the body asks OpenAI to store its chat completion (`"store": true`).
    pub fn asks_to_store(&self) -> bool {
        self.member(b"store") == Some(b"true")
    }

    /// The raw value of the top-level member `name`.
    pub fn member(&self, name: &[u8]) -> Option<&'a [u8]> {
        self.members
            .iter()
            .find(|(member, _)| *member == name)
            .map(|(_, value)| *value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_ids_and_store_from_one_pass() {
        let body = br#"{"model":"gpt-4o","store":true,"messages":[{"role":"user","content":[{"type":"file","file":{"file_id":"file-AbC123xyz"}},{"type":"text","text":"file-AbC123xyz"}]}],"previous_response_id":"resp_0Ab12cd34EF"}"#;
        let survey = BodySurvey::of(Dialect::OpenAi, body);
        assert_eq!(survey.ids, ["file-AbC123xyz", "resp_0Ab12cd34EF"]);
        assert!(survey.asks_to_store());
        assert_eq!(survey.member(b"model"), Some(&br#""gpt-4o""#[..]));
        assert_eq!(survey.members.len(), 4);
        let not_stored = BodySurvey::of(Dialect::OpenAi, br#"{"store":false,"x":{"store":true}}"#);
        assert!(
            !not_stored.asks_to_store(),
            "only the top-level member counts"
        );
        let upload = BodySurvey::of(Dialect::OpenAi, b"file-AbC123xyz raw bytes");
        assert!(upload.ids.is_empty() && upload.members.is_empty());
    }
}
