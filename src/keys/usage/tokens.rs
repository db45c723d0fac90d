//! The token usage an answer reports, in one shape whatever the provider: OpenAI chat and
//! completions (`usage` with `prompt_tokens_details.cached_tokens` and
//! `completion_tokens_details.reasoning_tokens`), OpenAI Responses (`usage` with
//! `input_tokens_details.cached_tokens`), embeddings (`usage`), Anthropic (`usage` with
//! `cache_read_input_tokens` and `cache_creation_input_tokens`, which `input_tokens` leaves
//! out), Gemini (`usageMetadata`: `promptTokenCount`, `cachedContentTokenCount`,
//! `candidatesTokenCount`, `thoughtsTokenCount`).

use crate::json::number_members;
use crate::keys::affinity::Dialect;

/// Tokens of one answer (or a sum of answers).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tokens {
    /// Input (prompt) tokens, cached ones included.
    pub input: u64,
    /// Input tokens read from the provider's prompt cache.
    pub cached: u64,
    /// Output tokens, reasoning included.
    pub output: u64,
    /// Reasoning (thinking) tokens, part of `output`.
    pub reasoning: u64,
}

impl Tokens {
    /// The usage one snippet of an answer reports (`"usage":{…}` or `"usageMetadata":{…}`),
    /// `None` when it holds none (`"usage":null`).
    pub fn from_snippet(dialect: Dialect, snippet: &[u8]) -> Option<Tokens> {
        let members = number_members(snippet);
        let first = |name: &str| {
            members
                .iter()
                .filter(|(member, _)| *member == name.as_bytes())
                .map(|&(_, n)| n)
                .max()
        };
        let tokens = match dialect {
            Dialect::Gemini => {
                let thoughts = first("thoughtsTokenCount").unwrap_or(0);
                Tokens {
                    input: first("promptTokenCount")?,
                    cached: first("cachedContentTokenCount").unwrap_or(0),
                    output: first("candidatesTokenCount").unwrap_or(0) + thoughts,
                    reasoning: thoughts,
                }
            }
            Dialect::Anthropic => {
                // input_tokens counts only what came after the last cache breakpoint.
                let read = first("cache_read_input_tokens").unwrap_or(0);
                let written = first("cache_creation_input_tokens").unwrap_or(0);
                let input = first("input_tokens");
                let output = first("output_tokens");
                if input.is_none() && output.is_none() {
                    return None;
                }
                Tokens {
                    input: input.unwrap_or(0) + read + written,
                    cached: read,
                    output: output.unwrap_or(0),
                    reasoning: 0,
                }
            }
            Dialect::OpenAi => {
                let input = first("prompt_tokens").or_else(|| first("input_tokens"));
                let output = first("completion_tokens").or_else(|| first("output_tokens"));
                if input.is_none() && output.is_none() {
                    return None;
                }
                Tokens {
                    input: input.unwrap_or(0),
                    cached: first("cached_tokens").unwrap_or(0),
                    output: output.unwrap_or(0),
                    reasoning: first("reasoning_tokens").unwrap_or(0),
                }
            }
        };
        Some(tokens)
    }

    /// Field by field the larger: two reports of one answer (Anthropic's `message_start` and
    /// `message_delta`) each know part of it.
    pub fn merge(self, other: Tokens) -> Tokens {
        Tokens {
            input: self.input.max(other.input),
            cached: self.cached.max(other.cached),
            output: self.output.max(other.output),
            reasoning: self.reasoning.max(other.reasoning),
        }
    }

    /// Input plus output, for token limits.
    pub fn total(&self) -> u64 {
        self.input + self.output
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_providers_usage_in_one_shape() {
        let cases: [(Dialect, &str, Option<Tokens>); 6] = [
            (
                Dialect::OpenAi,
                r#""usage":{"prompt_tokens":120,"completion_tokens":30,"total_tokens":150,"prompt_tokens_details":{"cached_tokens":100},"completion_tokens_details":{"reasoning_tokens":12}}"#,
                Some(Tokens {
                    input: 120,
                    cached: 100,
                    output: 30,
                    reasoning: 12,
                }),
            ),
            (
                Dialect::OpenAi,
                r#""usage":{"input_tokens":80,"input_tokens_details":{"cached_tokens":64},"output_tokens":9,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":89}"#,
                Some(Tokens {
                    input: 80,
                    cached: 64,
                    output: 9,
                    reasoning: 0,
                }),
            ),
            (
                Dialect::OpenAi,
                r#""usage":{"prompt_tokens":8,"total_tokens":8}"#,
                Some(Tokens {
                    input: 8,
                    cached: 0,
                    output: 0,
                    reasoning: 0,
                }),
            ),
            (Dialect::OpenAi, r#""usage":null"#, None),
            (
                Dialect::Anthropic,
                r#""usage":{"input_tokens":20,"cache_creation_input_tokens":0,"cache_read_input_tokens":1800,"output_tokens":55}"#,
                Some(Tokens {
                    input: 1820,
                    cached: 1800,
                    output: 55,
                    reasoning: 0,
                }),
            ),
            (
                Dialect::Gemini,
                r#""usageMetadata":{"promptTokenCount":300,"cachedContentTokenCount":256,"candidatesTokenCount":40,"thoughtsTokenCount":10,"totalTokenCount":350}"#,
                Some(Tokens {
                    input: 300,
                    cached: 256,
                    output: 50,
                    reasoning: 10,
                }),
            ),
        ];
        for (dialect, snippet, expected) in cases {
            assert_eq!(
                Tokens::from_snippet(dialect, snippet.as_bytes()),
                expected,
                "{snippet}"
            );
        }
    }
}
