//! The little JSON keyrelay needs without a JSON crate: quoting strings it writes, and finding
//! string fields in upstream bodies it only peeks at (Gemini's `retryDelay`, a request's `model`).

/// `s` as a JSON string literal, quotes included.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Every string value of a field named `name`, anywhere in `body`, in order. A scan, not a
/// parse: good enough for well-formed bodies from known APIs, and it never fails.
pub fn string_fields<'a>(body: &'a [u8], name: &str) -> Vec<&'a str> {
    field_values(body, name).collect()
}

/// The first string value of a top-level-looking field `name` (see [`string_fields`]); the scan
/// stops there, so a large request body is not read to its end for its `"model"`.
pub fn first_string_field<'a>(body: &'a [u8], name: &str) -> Option<&'a str> {
    field_values(body, name).next()
}

/// The string values of fields named `name`, found lazily from the start of `body`.
fn field_values<'a>(body: &'a [u8], name: &str) -> impl Iterator<Item = &'a str> + use<'a> {
    let needle = format!("\"{name}\"");
    let mut rest = body;
    std::iter::from_fn(move || {
        while let Some(at) = find(rest, needle.as_bytes()) {
            rest = &rest[at + needle.len()..];
            if let Some(value) = string_after_colon(rest) {
                return Some(value);
            }
        }
        None
    })
}

fn string_after_colon(bytes: &[u8]) -> Option<&str> {
    let mut i = skip_space(bytes, 0);
    if bytes.get(i) != Some(&b':') {
        return None;
    }
    i = skip_space(bytes, i + 1);
    if bytes.get(i) != Some(&b'"') {
        return None;
    }
    let start = i + 1;
    let mut end = start;
    while end < bytes.len() {
        match bytes[end] {
            b'"' => return std::str::from_utf8(&bytes[start..end]).ok(),
            // Escaped values are not what we look for (model names, durations); skip them.
            b'\\' => return None,
            _ => end += 1,
        }
    }
    None
}

fn skip_space(bytes: &[u8], mut i: usize) -> usize {
    while matches!(bytes.get(i), Some(b' ' | b'\n' | b'\r' | b'\t')) {
        i += 1;
    }
    i
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes() {
        assert_eq!(quote("a\"b\\c\nd\u{1}"), "\"a\\\"b\\\\c\\nd\\u0001\"");
    }

    #[test]
    fn finds_fields() {
        let body = br#"{"error":{"details":[{"@type":"x.RetryInfo", "retryDelay" : "37s"}]}}"#;
        assert_eq!(string_fields(body, "retryDelay"), vec!["37s"]);
        assert_eq!(
            first_string_field(br#"{"model":"gpt-4o","x":1}"#, "model"),
            Some("gpt-4o")
        );
        assert_eq!(first_string_field(br#"{"model": 3}"#, "model"), None);
        assert_eq!(
            first_string_field(br#"{"model":"unterminated"#, "model"),
            None
        );
        assert_eq!(first_string_field(b"", "model"), None);
    }
}
