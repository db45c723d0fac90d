//! `<NAME>_KEY_LIMITS`: rules separated by `;`, each `PATTERN=LIMIT,LIMIT…`, where PATTERN is
//! a model name with `*` as a wildcard (the most specific matching pattern wins) and LIMIT is
//! `N/min` (requests in a sliding minute), `N/day` (requests per day) or `Nt/min` (input plus
//! output tokens in a sliding minute). The limits apply to each key on its own, per model.

/// One limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Requests in a sliding minute.
    PerMinute(u64),
    /// Requests per day (Pacific days for Gemini, UTC days for the others).
    PerDay(u64),
    /// Input plus output tokens in a sliding minute.
    TokensPerMinute(u64),
}

impl Limit {
    /// How the limit is written (`5/min`, `100/day`, `250000t/min`).
    pub fn text(self) -> String {
        match self {
            Limit::PerMinute(n) => format!("{n}/min"),
            Limit::PerDay(n) => format!("{n}/day"),
            Limit::TokensPerMinute(n) => format!("{n}t/min"),
        }
    }
}

/// One rule: a model pattern and its limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub pattern: String,
    pub limits: Vec<Limit>,
}

/// A provider's rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    rules: Vec<Rule>,
}

impl Rules {
    /// Parses the variable's value; the error says what is wrong (the caller names the
    /// variable).
    pub fn parse(text: &str) -> Result<Rules, String> {
        let mut rules = Vec::new();
        for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((pattern, limits)) = part.split_once('=') else {
                return Err(format!(
                    "{part:?} is not PATTERN=LIMIT (e.g. gemini-2.5-pro=5/min,100/day)"
                ));
            };
            let pattern = pattern.trim();
            if pattern.is_empty() || pattern.contains(char::is_whitespace) {
                return Err(format!("{part:?} has no model pattern"));
            }
            if rules.iter().any(|r: &Rule| r.pattern == pattern) {
                return Err(format!("the pattern {pattern:?} is given twice"));
            }
            let limits = limits
                .split(',')
                .map(str::trim)
                .map(parse_limit)
                .collect::<Result<Vec<_>, _>>()?;
            rules.push(Rule {
                pattern: pattern.to_string(),
                limits,
            });
        }
        Ok(Rules { rules })
    }

    /// No rules at all.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The limits for `model` (a request without a model is `-`): the most specific matching
    /// pattern's (an exact name over any wildcard; otherwise the one with more literal
    /// characters).
    pub fn for_model(&self, model: &str) -> &[Limit] {
        self.rules
            .iter()
            .filter(|rule| matches(&rule.pattern, model))
            .max_by_key(|rule| {
                let literal = rule.pattern.chars().filter(|c| *c != '*').count();
                (!rule.pattern.contains('*'), literal)
            })
            .map_or(&[], |rule| rule.limits.as_slice())
    }
}

fn parse_limit(text: &str) -> Result<Limit, String> {
    let bad = || format!("{text:?} is not N/min, N/day or Nt/min");
    let (count, window) = text.split_once('/').ok_or_else(bad)?;
    let (count, tokens) = match count.strip_suffix('t') {
        Some(n) => (n, true),
        None => (count, false),
    };
    let n: u64 = count.trim().parse().map_err(|_| bad())?;
    if n == 0 {
        return Err(format!("{text:?} allows nothing; disable the key instead"));
    }
    match (window.trim(), tokens) {
        ("min", false) => Ok(Limit::PerMinute(n)),
        ("day", false) => Ok(Limit::PerDay(n)),
        ("min", true) => Ok(Limit::TokensPerMinute(n)),
        _ => Err(bad()),
    }
}

/// Whether `name` matches `pattern` (`*` matches any run of characters).
fn matches(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || name.len() < first.len() + last.len() || !name.ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(at) => rest = &rest[at + middle.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_most_specific_pattern_wins() {
        let rules = Rules::parse(
            "gemini-2.5-pro=5/min,100/day; gemini-2.5-flash=10/min,250/day,250000t/min; gemini-*=8/min; *=15/min",
        )
        .unwrap();
        assert_eq!(
            rules.for_model("gemini-2.5-pro"),
            [Limit::PerMinute(5), Limit::PerDay(100)]
        );
        assert_eq!(
            rules.for_model("gemini-2.5-flash")[2],
            Limit::TokensPerMinute(250_000)
        );
        assert_eq!(rules.for_model("gemini-2.0-flash"), [Limit::PerMinute(8)]);
        assert_eq!(rules.for_model("gpt-4o"), [Limit::PerMinute(15)]);
        assert!(
            Rules::parse("gpt-4o=1/min")
                .unwrap()
                .for_model("gpt-4o-mini")
                .is_empty()
        );
        assert!(matches("g*-*-pro", "gemini-2.5-pro") && !matches("g*-*-pro", "gpt-pro"));
    }

    #[test]
    fn bad_rules_say_what_is_wrong() {
        for bad in [
            "gpt-4o",
            "gpt-4o=5",
            "gpt-4o=5/hour",
            "gpt-4o=x/min",
            "gpt-4o=0/min",
            "=5/min",
            "a=1/min;a=2/min",
            "gpt-4o=5t/day",
        ] {
            assert!(Rules::parse(bad).is_err(), "{bad}");
        }
        assert!(Rules::parse("").unwrap().is_empty());
    }
}
