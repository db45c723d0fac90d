//! Which strings name an object a provider keeps per account: in a request (its path, query
//! and body, so it can go to the key that owns the object) and in an answer (so keyrelay learns
//! which key owns it). A scan over the bytes, never a JSON tree.

use crate::scan::find_either;

/// The API family a provider speaks, for its id shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// OpenAI and OpenAI-compatible APIs.
    OpenAi,
    /// Google's Gemini API.
    Gemini,
    /// Anthropic's Messages API.
    Anthropic,
}

/// OpenAI's per-account objects: files, uploads, responses, batches, vector stores, assistants,
/// threads, fine-tuning jobs and models, conversations, containers, stored chat completions.
const OPENAI: &[&str] = &[
    "file-",
    "upload_",
    "resp_",
    "batch_",
    "vs_",
    "asst_",
    "thread_",
    "ftjob-",
    "ft:",
    "conv_",
    "cntr_",
    "chatcmpl-",
];

/// Gemini's per-project resources, by collection.
const GEMINI: &[&str] = &[
    "files/",
    "cachedContents/",
    "batches/",
    "tunedModels/",
    "operations/",
];

/// Anthropic's per-workspace objects: files and message batches.
const ANTHROPIC: &[&str] = &["file_", "msgbatch_"];

/// How a learned Gemini resumable upload is named in the tables.
pub const UPLOAD_PREFIX: &str = "upload:";

/// Shortest and longest id accepted.
const ID_LEN: std::ops::RangeInclusive<usize> = 6..=256;

/// Stored chat completions are learned only when the request asked to store them; every other
/// chat completion id names nothing kept.
const STORED_ONLY: &str = "chatcmpl-";

/// The bytes `prefixes` start with, as a bit set over ASCII (every prefix starts with a letter).
const fn first_bytes(prefixes: &[&str]) -> u128 {
    let mut set = 0u128;
    let mut at = 0;
    while at < prefixes.len() {
        set |= 1 << prefixes[at].as_bytes()[0];
        at += 1;
    }
    set
}

const OPENAI_FIRST: u128 = first_bytes(OPENAI);
/// Gemini's file URIs (`https://…/files/…`) name ids too.
const GEMINI_FIRST: u128 = first_bytes(GEMINI) | 1 << b'h';
const ANTHROPIC_FIRST: u128 = first_bytes(ANTHROPIC);

impl Dialect {
    fn prefixes(self) -> &'static [&'static str] {
        match self {
            Dialect::OpenAi => OPENAI,
            Dialect::Gemini => GEMINI,
            Dialect::Anthropic => ANTHROPIC,
        }
    }

    /// Whether a string starting with `byte` may be an id: one test, where comparing the
    /// prefixes was ~120 instructions a string (callgrind), for every path segment and string
    /// value of every request.
    fn may_start_an_id(self, byte: u8) -> bool {
        let set = match self {
            Dialect::OpenAi => OPENAI_FIRST,
            Dialect::Gemini => GEMINI_FIRST,
            Dialect::Anthropic => ANTHROPIC_FIRST,
        };
        byte < 128 && set & 1 << byte != 0
    }

    /// The id a whole string value names, if it names one: the value itself, or for Gemini the
    /// resource name inside a file URI (`https://…/v1beta/files/abc` → `files/abc`).
    pub fn id_in(self, value: &str) -> Option<&str> {
        if !self.may_start_an_id(*value.as_bytes().first()?) {
            return None;
        }
        if self == Dialect::Gemini && value.starts_with("http") {
            let at = value.find("/files/")?;
            let name = &value[at + 1..];
            let name = without_query(name);
            return self.id_in(name);
        }
        // Too short or too long to be one (`v1`, `chat`): no prefix compared.
        if !ID_LEN.contains(&value.len()) {
            return None;
        }
        // Compared in place, first byte first (a `starts_with` is a memcmp call).
        let bytes = value.as_bytes();
        let prefix = self
            .prefixes()
            .iter()
            .find(|p| p.len() < bytes.len() && p.bytes().zip(bytes).all(|(a, &b)| a == b))?;
        let tail = &value[prefix.len()..];
        let shaped = if prefix.ends_with(['-', '_']) {
            generated(tail)
        } else {
            tail.len() > 2
        };
        (shaped && value.bytes().all(id_byte)).then_some(value)
    }

    /// The ids a request names, in its path below the route, its query and (`body_ids`, from
    /// its [`BodySurvey`](super::BodySurvey)) its JSON body.
    pub fn request_ids(self, rest: &str, query: &str, body_ids: &[&str]) -> Vec<String> {
        let mut ids = Vec::new();
        let mut push = |id: &str| {
            if !ids.iter().any(|known| known == id) {
                ids.push(id.to_string());
            }
        };
        let path = without_query(rest);
        // Walked with the next segment at hand, not collected (one allocation less a request).
        let mut segments = path.split('/').filter(|s| !s.is_empty()).peekable();
        while let Some(whole) = segments.next() {
            // `files/abc:download`, `tunedModels/x:generateContent`: the method is not the id.
            let segment = whole.split(':').next().unwrap_or(whole);
            let segment = if segment.starts_with("ft") {
                whole // `ft:` models keep their colons
            } else {
                segment
            };
            if self == Dialect::Gemini {
                // Only a collection's name (`files`, `cachedContents`, …) starts a resource
                // name: the pair is built for those alone.
                let collection = GEMINI.iter().any(|p| p.strip_suffix('/') == Some(segment));
                if collection && let Some(next) = segments.peek() {
                    let next = next.split(':').next().unwrap_or(next);
                    if let Some(id) = self.id_in(&format!("{segment}/{next}")) {
                        push(id);
                    }
                }
            } else if let Some(id) = self.id_in(segment) {
                push(id);
            }
        }
        for pair in query.split('&') {
            let Some((name, value)) = pair.split_once('=') else {
                continue;
            };
            let value = percent_encoding::percent_decode_str(value).decode_utf8_lossy();
            if self == Dialect::Gemini && name == "upload_id" && value.bytes().all(id_byte) {
                push(&format!("{UPLOAD_PREFIX}{value}"));
            } else if let Some(id) = self.id_in(&value) {
                push(id);
            }
        }
        for id in body_ids {
            push(id);
        }
        ids
    }

    /// Whether an answer from `url` can name an object to learn. A generation (an OpenAI chat
    /// completion that is not stored, an embedding, a legacy completion, a moderation; Gemini's
    /// generateContent, embeddings and token counts) names only its own id, which no later
    /// request can use, so it is not looked through. An Anthropic Messages answer is: code
    /// execution hands back `file_` ids of files the key now owns.
    pub fn answer_may_name_objects(self, url: &str) -> bool {
        let path = without_query(url);
        let ends = |ends: &[&str]| ends.iter().any(|end| path.ends_with(end));
        match self {
            Dialect::OpenAi => !ends(&[
                "/chat/completions",
                "/embeddings",
                "/completions",
                "/moderations",
            ]),
            Dialect::Gemini => !ends(&[
                ":generateContent",
                ":streamGenerateContent",
                ":embedContent",
                ":batchEmbedContents",
                ":countTokens",
            ]),
            Dialect::Anthropic => true,
        }
    }

    /// The ids an answer's bytes name (ids of stored chat completions only if `stored`).
    #[cfg(test)]
    fn answer_ids(self, bytes: &[u8], stored: bool) -> impl Iterator<Item = &str> {
        crate::json::plain_values(bytes).filter_map(move |raw| self.answer_ids_raw(raw, stored))
    }

    /// The id one string of an answer (raw bytes between its quotes) names, if it is one to
    /// learn.
    pub(super) fn answer_ids_raw(self, raw: &[u8], stored: bool) -> Option<&str> {
        self.id_of_raw(raw)
            .filter(|id| stored || !id.starts_with(STORED_ONLY))
    }

    pub(super) fn id_of_raw(self, raw: &[u8]) -> Option<&str> {
        // Cheap rejections first: most strings in a body are neither long enough nor start
        // like an id.
        if raw.len() < *ID_LEN.start() || !self.may_start_an_id(raw[0]) {
            return None;
        }
        self.id_in(std::str::from_utf8(raw).ok()?)
    }
}

/// `url` without its query or fragment: a word-at-a-time search (splitting on a pair of chars
/// looks at them one by one, ~300 instructions for an upstream URL).
pub fn without_query(url: &str) -> &str {
    match find_either(url.as_bytes(), b'?', b'#') {
        // Both are ASCII: the cut is at a char boundary.
        Some(at) => &url[..at],
        None => url,
    }
}

/// Whether the part of an id after its prefix looks generated, as every OpenAI and Anthropic
/// id is (`file-AbC4…`, `resp_0f09…`, `file_011CN…`): eight or more letters and digits, not a
/// plain lowercase word. A tool named `file_read` or `upload_file`, a schema named
/// `thread_summary`, is no object id.
fn generated(tail: &str) -> bool {
    tail.len() >= 8
        && tail.bytes().all(|b| b.is_ascii_alphanumeric())
        && !tail.bytes().all(|b| b.is_ascii_lowercase())
}

fn id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'/')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Dialect, path below the route, query, body, the ids expected.
    type Case = (
        Dialect,
        &'static str,
        &'static str,
        &'static [u8],
        &'static [&'static str],
    );

    #[test]
    fn a_query_or_fragment_is_cut_off() {
        assert_eq!(without_query("http://u/v1/x?a=1#f"), "http://u/v1/x");
        assert_eq!(without_query("files/a#b?c"), "files/a");
        assert_eq!(without_query("v1/files"), "v1/files");
        assert_eq!(without_query("v1/fü?x=ü"), "v1/fü");
        assert_eq!(without_query("?"), "");
    }

    #[test]
    fn generations_are_not_looked_through_for_ids() {
        let openai = Dialect::OpenAi;
        assert!(!openai.answer_may_name_objects("http://u/v1/chat/completions"));
        assert!(!openai.answer_may_name_objects("http://u/v1/embeddings?x=1"));
        assert!(openai.answer_may_name_objects("http://u/v1/responses"));
        assert!(openai.answer_may_name_objects("http://u/v1/files"));
        assert!(openai.answer_may_name_objects("http://u/v1/chat/completions/chatcmpl-abc"));
        let gemini = Dialect::Gemini;
        assert!(!gemini.answer_may_name_objects("http://u/v1beta/models/g:generateContent"));
        assert!(
            !gemini
                .answer_may_name_objects("http://u/v1beta/models/g:streamGenerateContent?alt=sse")
        );
        assert!(gemini.answer_may_name_objects("http://u/v1beta/cachedContents"));
        assert!(gemini.answer_may_name_objects("http://u/upload/v1beta/files"));
        assert!(Dialect::Anthropic.answer_may_name_objects("http://u/v1/messages"));
    }

    #[test]
    fn ids_in_requests() {
        let cases: [Case; 9] = [
            (
                Dialect::OpenAi,
                "v1/files/file-AbC123xyz/content",
                "",
                b"",
                &["file-AbC123xyz"],
            ),
            (
                Dialect::OpenAi,
                "v1/responses",
                "",
                br#"{"model":"gpt-4o","previous_response_id":"resp_0123abcd4567","input":"file-based storage?"}"#,
                &["resp_0123abcd4567"],
            ),
            (
                Dialect::OpenAi,
                "v1/chat/completions",
                "",
                br#"{"model":"ft:gpt-4o-mini:acme::9xYz","messages":[{"role":"user","content":[{"type":"file","file":{"file_id":"file-Q1w2e3r4"}}]}],"tools":[{"type":"file_search","vector_store_ids":["vs_aa11bb22","vs_aa11bb22"]}]}"#,
                &["ft:gpt-4o-mini:acme::9xYz", "file-Q1w2e3r4", "vs_aa11bb22"],
            ),
            (
                Dialect::OpenAi,
                "v1/files",
                "after=file-Zz99Yy88&limit=2",
                b"",
                &["file-Zz99Yy88"],
            ),
            (
                Dialect::OpenAi,
                "v1/chat/completions",
                "",
                br#"{"model":"gpt-4o","messages":[{"role":"user","content":"resp_ is a prefix; file- too"}],"tools":[{"type":"function","function":{"name":"upload_file"}},{"type":"function","function":{"name":"thread_summaries"}}],"response_format":{"type":"json_schema","json_schema":{"name":"batch_result"}},"file-Q1w2e3r4t5":"a member name"}"#,
                &[],
            ),
            (
                Dialect::Gemini,
                "v1beta/files/abc123def:download",
                "alt=media",
                b"",
                &["files/abc123def"],
            ),
            (
                Dialect::Gemini,
                "v1beta/models/gemini-2.5-flash:generateContent",
                "",
                br#"{"cachedContent":"cachedContents/cc-123456","contents":[{"parts":[{"fileData":{"fileUri":"https://generativelanguage.googleapis.com/v1beta/files/f9x8c7v6?x=1","mimeType":"text/plain"}}]}]}"#,
                &["cachedContents/cc-123456", "files/f9x8c7v6"],
            ),
            (
                Dialect::Gemini,
                "upload/v1beta/files",
                "upload_id=AB-cd_12&upload_protocol=resumable",
                b"",
                &["upload:AB-cd_12"],
            ),
            (
                Dialect::Anthropic,
                "v1/messages/batches/msgbatch_01AbCdEf/results",
                "",
                br#"{"messages":[{"role":"user","content":[{"type":"document","source":{"type":"file","file_id":"file_011CNha8"}}]}]}"#,
                &["msgbatch_01AbCdEf", "file_011CNha8"],
            ),
        ];
        for (dialect, rest, query, body, expected) in cases {
            let survey = crate::keys::affinity::BodySurvey::of(dialect, body);
            let got = dialect.request_ids(rest, query, &survey.ids);
            assert_eq!(got, expected.to_vec(), "{rest} {query}");
        }
    }

    #[test]
    fn ids_in_answers() {
        let batch = br#"{"id":"batch_abc123def456","object":"batch","input_file_id":"file-in123456","output_file_id":"file-out12345","error_file_id":null}"#;
        let ids: Vec<&str> = Dialect::OpenAi.answer_ids(batch, false).collect();
        assert_eq!(
            ids,
            ["batch_abc123def456", "file-in123456", "file-out12345"]
        );
        let chat = br#"{"id":"chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT","object":"chat.completion"}"#;
        assert_eq!(Dialect::OpenAi.answer_ids(chat, false).count(), 0);
        assert_eq!(Dialect::OpenAi.answer_ids(chat, true).count(), 1);
        let file = br#"{"file":{"name":"files/xyz789","uri":"https://g/v1beta/files/xyz789","state":"ACTIVE"}}"#;
        let ids: Vec<&str> = Dialect::Gemini.answer_ids(file, false).collect();
        assert_eq!(ids, ["files/xyz789", "files/xyz789"]);
    }
}
