//! Parsing of the `.env` file: `KEY=value` lines, read from bytes so it is tested without a disk.
//!
//! Accepted: `KEY=value`, `export KEY=value`, values in single quotes (taken literally) or double
//! quotes (with `\n`, `\"`, `\\` escapes), `#` comments on their own line or after an unquoted value,
//! blank lines. A line that is none of these is an error naming its line number, so a typo is not
//! silently ignored.

use std::fmt;

/// One `KEY=value` pair from an env file, in file order.
pub type EnvPair = (String, String);

/// A line of an env file that could not be understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvFileError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl fmt::Display for EnvFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

impl std::error::Error for EnvFileError {}

/// Parses the whole text of an env file. Later duplicates win, as in a shell.
pub fn parse_env_file(text: &str) -> Result<Vec<EnvPair>, EnvFileError> {
    let mut pairs = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fail = |reason| EnvFileError {
            line: index + 1,
            reason,
        };
        let line = line
            .strip_prefix("export ")
            .map(str::trim_start)
            .unwrap_or(line);
        let (name, value) = line.split_once('=').ok_or(fail("expected KEY=value"))?;
        let name = name.trim();
        if !is_valid_name(name) {
            return Err(fail("variable names use letters, digits and _"));
        }
        let value = parse_value(value.trim_start()).map_err(fail)?;
        pairs.push((name.to_string(), value));
    }
    Ok(pairs)
}

fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_value(value: &str) -> Result<String, &'static str> {
    if let Some(rest) = value.strip_prefix('\'') {
        let end = rest.find('\'').ok_or("unterminated single quote")?;
        ensure_only_comment(&rest[end + 1..])?;
        return Ok(rest[..end].to_string());
    }
    if let Some(rest) = value.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = rest.char_indices();
        while let Some((at, c)) = chars.next() {
            match c {
                '"' => {
                    ensure_only_comment(&rest[at + 1..])?;
                    return Ok(out);
                }
                '\\' => match chars.next() {
                    Some((_, 'n')) => out.push('\n'),
                    Some((_, other)) => out.push(other),
                    None => break,
                },
                other => out.push(other),
            }
        }
        return Err("unterminated double quote");
    }
    let unquoted = match value.find(" #") {
        Some(at) => &value[..at],
        None => value,
    };
    Ok(unquoted.trim_end().to_string())
}

fn ensure_only_comment(after_quote: &str) -> Result<(), &'static str> {
    let rest = after_quote.trim_start();
    if rest.is_empty() || rest.starts_with('#') {
        Ok(())
    } else {
        Err("unexpected text after the closing quote")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_forms() {
        let cases: &[(&str, &str, &str)] = &[
            ("A=1", "A", "1"),
            ("export B=two", "B", "two"),
            ("C = spaced ", "C", "spaced"),
            ("D='a # b'", "D", "a # b"),
            ("E=\"x\\\"y\\n\"", "E", "x\"y\n"),
            ("F=plain # note", "F", "plain"),
            ("G=", "G", ""),
            ("H=a=b", "H", "a=b"),
            ("I=\"q\" # c", "I", "q"),
            ("J=sk-1,sk-2", "J", "sk-1,sk-2"),
        ];
        for (line, name, value) in cases {
            let pairs = parse_env_file(line).unwrap_or_else(|e| panic!("{line}: {e}"));
            assert_eq!(pairs, vec![(name.to_string(), value.to_string())], "{line}");
        }
    }

    #[test]
    fn comments_and_blank_lines_are_skipped() {
        let text = "# header\n\n  # indented\nA=1\r\n\nB=2\n";
        let pairs = parse_env_file(text).unwrap();
        assert_eq!(pairs.len(), 2);
        assert_eq!(pairs[1], ("B".to_string(), "2".to_string()));
    }

    #[test]
    fn errors_name_the_line() {
        let cases: &[(&str, usize)] = &[
            ("A=1\nnot a pair", 2),
            ("1X=2", 1),
            ("A='open", 1),
            ("\n\nB=\"open", 3),
            ("C='x' y", 1),
        ];
        for (text, line) in cases {
            let err = parse_env_file(text).unwrap_err();
            assert_eq!(err.line, *line, "{text:?}");
        }
    }
}
