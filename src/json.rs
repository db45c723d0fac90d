//! The little JSON keyrelay needs without a JSON crate: quoting strings it writes, and finding
//! string fields in upstream bodies it only peeks at (Gemini's `retryDelay`, a request's `model`).

use crate::scan::{find_byte, find_either};

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

/// The string value of member `name` of the top-level object in `body`, skipping nested
/// objects and arrays (a tool call's `{"model": ...}` argument is not the request's model). The
/// scan stops at that member; anything malformed, or a value with an escape, gives `None`.
pub fn top_level_string<'a>(body: &'a [u8], name: &str) -> Option<&'a str> {
    top_level_raw(body, name.as_bytes())
        .filter(|raw| !raw.contains(&b'\\'))
        .and_then(|raw| std::str::from_utf8(raw).ok())
}

/// The raw bytes between the quotes of the string value of member `name` of the top-level
/// object in `body` (escapes left as they are), as [`top_level_string`] finds it: for a value
/// compared with known words (a message's role), which needs no UTF-8 check.
pub fn top_level_raw<'a>(body: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    // Not `top_level_members`: this stops at the member, without skipping its value, and runs
    // for every message of every request (callgrind: ~600 instructions a request less).
    let mut i = skip_space(body, 0);
    if body.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    loop {
        i = skip_space(body, i);
        let (key, after_key) = string_at(body, i)?;
        i = skip_space(body, after_key);
        if body.get(i) != Some(&b':') {
            return None;
        }
        i = skip_space(body, i + 1);
        if key == name {
            return string_at(body, i).map(|(value, _)| value);
        }
        i = skip_space(body, skip_value(body, i)?);
        match body.get(i) {
            Some(b',') => i += 1,
            _ => return None,
        }
    }
}

/// The members of the top-level object in `body` as (raw name, raw value bytes), in order,
/// each value skipped over, not parsed. Stops at the first malformed member. The request path
/// uses [`survey`]; this walk is what the tests hold it to.
#[cfg(test)]
pub fn top_level_members(body: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    let mut i = skip_space(body, 0);
    let mut open = body.get(i) == Some(&b'{');
    i += 1;
    std::iter::from_fn(move || {
        if !open {
            return None;
        }
        let member = (|| {
            i = skip_space(body, i);
            let (key, after_key) = string_at(body, i)?;
            i = skip_space(body, after_key);
            if body.get(i) != Some(&b':') {
                return None;
            }
            let start = skip_space(body, i + 1);
            let end = skip_value(body, start)?;
            i = skip_space(body, end);
            match body.get(i) {
                Some(b',') => i += 1,
                _ => open = false,
            }
            Some((key, &body[start..end]))
        })();
        if member.is_none() {
            open = false;
        }
        member
    })
}

/// The elements of the JSON array `raw` as raw bytes, in order (nothing if it is no array).
pub fn array_elements(raw: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut i = skip_space(raw, 0);
    let mut open = raw.get(i) == Some(&b'[');
    i += 1;
    std::iter::from_fn(move || {
        if !open {
            return None;
        }
        let start = skip_space(raw, i);
        if raw.get(start) == Some(&b']') {
            open = false;
            return None;
        }
        let Some(end) = skip_value(raw, start) else {
            open = false;
            return None;
        };
        i = skip_space(raw, end);
        match raw.get(i) {
            Some(b',') => i += 1,
            _ => open = false,
        }
        Some(&raw[start..end])
    })
}

/// The text of a raw JSON string value (quotes included in `raw`) when it has no escapes.
pub fn plain_string(raw: &[u8]) -> Option<&str> {
    let (inner, end) = string_at(raw, 0)?;
    (end == raw.len() && !inner.contains(&b'\\'))
        .then(|| std::str::from_utf8(inner).ok())
        .flatten()
}

/// Every JSON string value in `body` without escapes (member names are left out), as raw
/// bytes between its quotes, found with one pass over the bytes. The request path uses
/// [`survey`]; this is what the tests hold it to.
#[cfg(test)]
pub fn plain_values(body: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut at = 0;
    std::iter::from_fn(move || {
        loop {
            let open = at + find_byte(body.get(at..)?, b'"')?;
            let rest = &body[open + 1..];
            let close = find_either(rest, b'"', b'\\')?;
            if rest[close] == b'"' {
                at = open + 1 + close + 1;
                // A string followed by a colon is a member's name, not a value.
                if body.get(skip_space(body, at)) == Some(&b':') {
                    continue;
                }
                return Some(&rest[..close]);
            }
            // An escaped string: skip to its real end, it is not one we look for.
            let (_, end) = string_at(body, open)?;
            at = end;
        }
    })
}

/// A member of a JSON object: its raw name and its raw value bytes.
pub type Member<'a> = (&'a [u8], &'a [u8]);

/// The first elements of the arrays among the top-level members, as (the member's index in
/// [`Survey::members`], the element's raw bytes).
pub type Head<'a> = (usize, &'a [u8]);

/// Most elements of one array kept as heads: a conversation is told by its first messages.
pub const HEAD_ELEMENTS: usize = 4;

/// What one pass over a JSON body found.
#[derive(Debug, Default, PartialEq)]
pub struct Survey<'a> {
    /// The members of its top-level object, as [`top_level_members`] gives them (none if it
    /// is no object).
    pub members: Vec<Member<'a>>,
    /// The first [`HEAD_ELEMENTS`] elements of each of those members that is an array, as
    /// [`array_elements`] gives them, in order.
    pub heads: Vec<Head<'a>>,
}

/// One pass over `body` for what the request path needs of it (see [`Survey`]), while every
/// string value without escapes, at any depth, is shown to `value`, as [`plain_values`] finds
/// them. Strings are jumped over eight bytes at a time; the bytes between them are looked at
/// once.
pub fn survey<'a>(body: &'a [u8], mut value: impl FnMut(&'a [u8])) -> Survey<'a> {
    // A chat request has about eight members: one allocation, no growing.
    let mut found = Survey {
        members: Vec::with_capacity(8),
        heads: Vec::new(),
    };
    let mut i = skip_space(body, 0);
    let object = body.get(i) == Some(&b'{');
    let mut depth = 0usize;
    // The top-level member being read: its name and where its value starts.
    let mut open: Option<(&[u8], usize)> = None;
    // Inside a top-level member's array: where its current element starts, and how many
    // elements have been kept.
    let mut element: Option<usize> = None;
    let mut kept = 0;
    while let Some(&b) = body.get(i) {
        match b {
            b'"' => {
                let rest = &body[i + 1..];
                let Some(close) = find_either(rest, b'"', b'\\') else {
                    break;
                };
                let (inner, end, plain) = if rest[close] == b'"' {
                    (&rest[..close], i + close + 2, true)
                } else {
                    let Some((inner, end)) = string_at(body, i) else {
                        break;
                    };
                    (inner, end, false)
                };
                let next = skip_space(body, end);
                if body.get(next) == Some(&b':') {
                    // A member's name.
                    if object && depth == 1 {
                        open = Some((inner, skip_space(body, next + 1)));
                    }
                    i = next + 1;
                } else {
                    if plain {
                        value(inner);
                    }
                    i = end;
                }
                continue;
            }
            b'{' | b'[' => {
                depth += 1;
                if depth == 2 && b == b'[' && open.is_some_and(|(_, at)| at == i) {
                    element = Some(i + 1);
                    kept = 0;
                }
            }
            b',' | b'}' | b']' => {
                if depth == 2
                    && let Some(from) = element
                {
                    let raw = trim(&body[from..i]);
                    if !raw.is_empty() && kept < HEAD_ELEMENTS {
                        found.heads.push((found.members.len(), raw));
                        kept += 1;
                    }
                    element = (b == b',').then_some(i + 1);
                }
                if depth == 1
                    && let Some((name, at)) = open.take()
                {
                    found.members.push((name, trim(&body[at..i])));
                }
                if b != b',' {
                    depth = depth.saturating_sub(1);
                }
            }
            _ => {}
        }
        i += 1;
    }
    // A body cut short: the heads of a member that never closed go with it.
    let members = found.members.len();
    found.heads.retain(|&(member, _)| member < members);
    found
}

/// `bytes` without the white space at either end.
fn trim(bytes: &[u8]) -> &[u8] {
    let space = |b: &u8| matches!(b, b' ' | b'\n' | b'\r' | b'\t');
    let start = bytes.iter().position(|b| !space(b)).unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !space(b))
        .map_or(start, |at| at + 1);
    &bytes[start..end]
}

/// The raw contents of the string starting at `i` (escapes left as they are) and the index
/// after its closing quote.
fn string_at(body: &[u8], i: usize) -> Option<(&[u8], usize)> {
    if body.get(i) != Some(&b'"') {
        return None;
    }
    let mut end = i + 1;
    loop {
        // Jump to the next quote or backslash: most of a body is the inside of strings.
        end += find_either(body.get(end..)?, b'"', b'\\')?;
        if body[end] == b'"' {
            return Some((&body[i + 1..end], end + 1));
        }
        end += 2;
    }
}

/// The index just after the JSON value starting at `i`.
fn skip_value(body: &[u8], i: usize) -> Option<usize> {
    match body.get(i)? {
        b'"' => string_at(body, i).map(|(_, end)| end),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut at = i;
            loop {
                at += body
                    .get(at..)?
                    .iter()
                    .position(|&b| matches!(b, b'"' | b'{' | b'[' | b'}' | b']'))?;
                match body[at] {
                    b'"' => {
                        at = string_at(body, at)?.1;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    _ => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(at + 1);
                        }
                    }
                }
                at += 1;
            }
        }
        _ => {
            let len = body[i..]
                .iter()
                .position(|b| matches!(b, b',' | b'}' | b']' | b' ' | b'\n' | b'\r' | b'\t'))?;
            Some(i + len)
        }
    }
}

/// Whether `body` starts like a JSON object or array (after white space).
pub fn looks_like_json(body: &[u8]) -> bool {
    matches!(body.get(skip_space(body, 0)), Some(b'{' | b'['))
}

/// Every member in `body`, at any depth, whose value is a whole number, shown to `each` as
/// (raw name, value), in order: one scan from quote to quote, as [`string_fields`] (`null` and
/// fractions are skipped, and so is a name with an escape). Nothing is collected: an answer's
/// usage is read from it on every request.
pub fn number_members<'a>(body: &'a [u8], mut each: impl FnMut(&'a [u8], u64)) {
    let mut at = 0;
    while let Some(open) = body.get(at..).and_then(|rest| find_byte(rest, b'"')) {
        let Some((name, end)) = string_at(body, at + open) else {
            break;
        };
        at = end;
        // A name with an escape is no name looked for.
        if name.contains(&b'\\') {
            continue;
        }
        let rest = &body[end..];
        let mut i = skip_space(rest, 0);
        if rest.get(i) != Some(&b':') {
            continue;
        }
        i = skip_space(rest, i + 1);
        let digits = rest[i..].iter().take_while(|b| b.is_ascii_digit()).count();
        // At most 19 digits: always within a u64.
        if digits > 0 && digits <= 19 && !matches!(rest.get(i + digits), Some(b'.' | b'e' | b'E')) {
            let n = rest[i..i + digits]
                .iter()
                .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
            each(name, n);
        }
        at = end + i;
    }
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
    fn finds_numbers() {
        let body = br#"{"usage":{"prompt_tokens": 12,"prompt_tokens_details":{"cached_tokens":8},"x":1.5,"prompt_tokens":null}}"#;
        let want: Vec<(&[u8], u64)> = vec![(b"prompt_tokens", 12), (b"cached_tokens", 8)];
        let collect = |body| {
            let mut found = Vec::new();
            number_members(body, |name, n| found.push((name, n)));
            found
        };
        assert_eq!(collect(body), want);
        let escaped = br#"{"a\"b":3,"content":"say \"n\": 4","n":5}"#;
        assert_eq!(collect(escaped).last(), Some(&(&b"n"[..], 5)));
        let widest = br#"{"a":9999999999999999999,"b":18446744073709551616}"#;
        assert_eq!(collect(widest), [(&b"a"[..], 9_999_999_999_999_999_999)]);
    }

    #[test]
    fn finds_fields() {
        let body = br#"{"error":{"details":[{"@type":"x.RetryInfo", "retryDelay" : "37s"}]}}"#;
        assert_eq!(string_fields(body, "retryDelay"), vec!["37s"]);
    }

    #[test]
    fn members_elements_and_strings() {
        let body = br#" {"model":"m","messages":[{"role":"system"},{"role":"user","content":"a \"q\""}],"n":1} "#;
        let members: Vec<(&[u8], &[u8])> = top_level_members(body).collect();
        assert_eq!(members.len(), 3);
        assert_eq!(members[0], (&b"model"[..], &br#""m""#[..]));
        assert_eq!(plain_string(members[0].1), Some("m"));
        let elements: Vec<&[u8]> = array_elements(members[1].1).collect();
        assert_eq!(elements.len(), 2);
        assert_eq!(top_level_string(elements[1], "role"), Some("user"));
        assert_eq!(array_elements(b"[ ]").count(), 0);
        assert_eq!(array_elements(b"{}").count(), 0);
        assert_eq!(top_level_members(b"[1]").count(), 0);
        let values: Vec<&[u8]> = plain_values(body).collect();
        assert!(values.contains(&&b"user"[..]) && values.contains(&&b"m"[..]));
        assert!(
            !values.contains(&&b"messages"[..]),
            "a member name is no value"
        );
        assert!(
            !values.iter().any(|s| s.starts_with(b"a ")),
            "escaped string skipped"
        );
        assert_eq!(plain_values(br#"{"a" : "x", "b":"unterminated"#).count(), 1);
    }

    /// The one pass gives what the walks it stands in for give, on the shapes they are used on
    /// and on broken ones.
    #[test]
    fn a_survey_is_members_and_plain_values_in_one_pass() {
        let bodies: [&[u8]; 15] = [
            br#" {"model":"m","messages":[{"role":"system"},{"role":"user","content":"a \"q\""}],"n":1} "#,
            br#"{ "a" : [1, {"model":"no"}] , "model" : "yes" , "t":true,"z" : null }"#,
            br#"{"s":"a \"model\": \"no\" }","model":"m","o":{"x":{"y":["f","g"]}}}"#,
            br#"{"n":-1.5e3,"store":true}"#,
            br#"{"model":"unterminated"#,
            br#"{"a":{"b":1"#,
            br#"{"a\"b":"v","c":"w"}"#,
            br#"[{"file_id":"file-AbC123xyz"},"x"]"#,
            br#"{}"#,
            br#"{"a":"x"} trailing "y""#,
            b"",
            br#"{"input":"just a string","k":[]}"#,
            br#"{"m":[ {"a":[1,2]} , "s", [3, {"b":"]"}], 4, 5.5 ,{}],"e":[ ],"t":[1,]}"#,
            br#"{"x":{"deep":[1,2]},"y":[[1],[2]]}"#,
            br#"{"cut":[{"a":1},{"b":"#,
        ];
        for body in bodies {
            let mut values = Vec::new();
            let found = survey(body, |v| values.push(v));
            let shown = String::from_utf8_lossy(body);
            let walked: Vec<Member> = top_level_members(body).collect();
            assert_eq!(found.members, walked, "members of {shown}");
            let heads: Vec<Head> = walked
                .iter()
                .enumerate()
                .flat_map(|(at, (_, value))| {
                    array_elements(value)
                        .take(HEAD_ELEMENTS)
                        .map(move |element| (at, element))
                })
                .collect();
            assert_eq!(found.heads, heads, "heads of {shown}");
            let plain: Vec<&[u8]> = plain_values(body).collect();
            assert_eq!(values, plain, "values of {shown}");
        }
    }

    #[test]
    fn top_level_members_only() {
        let cases: [(&[u8], Option<&str>); 9] = [
            (br#"{"model":"gpt-4o","x":1}"#, Some("gpt-4o")),
            (br#" { "a" : [1, {"model":"no"}], "model" : "yes" } "#, Some("yes")),
            (
                br#"{"messages":[{"role":"user","content":[{"type":"tool_use","input":{"model":"gpt-3.5"}}]}],"model":"claude-x"}"#,
                Some("claude-x"),
            ),
            (br#"{"s":"a \"model\": \"no\" }","model":"m"}"#, Some("m")),
            (br#"{"n":-1.5e3,"t":true,"z":null,"model":"m"}"#, Some("m")),
            (br#"{"model": 3}"#, None),
            (br#"{"model":"unterminated"#, None),
            (br#"{"tools":{"model":"nested"}}"#, None),
            (b"", None),
        ];
        for (body, expected) in cases {
            assert_eq!(
                top_level_string(body, "model"),
                expected,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
