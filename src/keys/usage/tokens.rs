//! The token usage an answer reports, in one shape whatever the provider: OpenAI chat and
//! completions (`usage` with `prompt_tokens_details.cached_tokens` and
//! `completion_tokens_details.reasoning_tokens`), OpenAI Responses (`usage` with
//! `input_tokens_details.cached_tokens`), embeddings (`usage`), Anthropic (`usage` with
//! `cache_read_input_tokens` and `cache_creation_input_tokens`, which `input_tokens` leaves
//! out), Gemini (`usageMetadata`: `promptTokenCount`, `cachedContentTokenCount`,
//! `candidatesTokenCount`, `thoughtsTokenCount`).

use crate::json::number_members;
use crate::keys::affinity::Dialect;

/// The counts a usage report may hold, in every provider's names; the largest where a name
/// comes twice.
#[derive(Default)]
struct Counts {
    prompt_tokens: Option<u64>,
    input_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cached_tokens: Option<u64>,
    reasoning_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    prompt_token_count: Option<u64>,
    cached_content_token_count: Option<u64>,
    candidates_token_count: Option<u64>,
    thoughts_token_count: Option<u64>,
}

impl Counts {
    /// The counts in `snippet`: one pass, no list.
    fn of(snippet: &[u8]) -> Counts {
        let mut counts = Counts::default();
        number_members(snippet, |name, n| {
            let slot = match name {
                b"prompt_tokens" => &mut counts.prompt_tokens,
                b"input_tokens" => &mut counts.input_tokens,
                b"completion_tokens" => &mut counts.completion_tokens,
                b"output_tokens" => &mut counts.output_tokens,
                b"cached_tokens" => &mut counts.cached_tokens,
                b"reasoning_tokens" => &mut counts.reasoning_tokens,
                b"cache_read_input_tokens" => &mut counts.cache_read_input_tokens,
                b"cache_creation_input_tokens" => &mut counts.cache_creation_input_tokens,
                b"promptTokenCount" => &mut counts.prompt_token_count,
                b"cachedContentTokenCount" => &mut counts.cached_content_token_count,
                b"candidatesTokenCount" => &mut counts.candidates_token_count,
                b"thoughtsTokenCount" => &mut counts.thoughts_token_count,
                _ => return,
            };
            *slot = Some(slot.map_or(n, |seen| seen.max(n)));
        });
        counts
    }
}

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
        let c = Counts::of(snippet);
        let tokens = match dialect {
            Dialect::Gemini => {
                let thoughts = c.thoughts_token_count.unwrap_or(0);
                Tokens {
                    input: c.prompt_token_count?,
                    cached: c.cached_content_token_count.unwrap_or(0),
                    output: c.candidates_token_count.unwrap_or(0) + thoughts,
                    reasoning: thoughts,
                }
            }
            Dialect::Anthropic => {
                // input_tokens counts only what came after the last cache breakpoint.
                let read = c.cache_read_input_tokens.unwrap_or(0);
                let written = c.cache_creation_input_tokens.unwrap_or(0);
                let input = c.input_tokens;
                let output = c.output_tokens;
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
                let input = c.prompt_tokens.or(c.input_tokens);
                let output = c.completion_tokens.or(c.output_tokens);
                if input.is_none() && output.is_none() {
                    return None;
                }
                Tokens {
                    input: input.unwrap_or(0),
                    cached: c.cached_tokens.unwrap_or(0),
                    output: output.unwrap_or(0),
                    reasoning: c.reasoning_tokens.unwrap_or(0),
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
