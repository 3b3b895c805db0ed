//! `envoy.type.matcher.v3.StringMatcher` and RE2-style regexes.
//!
//! Envoy's `safe_regex` is RE2 and always matches the whole input. Rust's `regex` crate has the
//! same guarantees (no backtracking, linear time) and nearly the same syntax; we anchor the
//! pattern. Known differences: `\d`, `\w`, `\s` are Unicode-aware here and ASCII in RE2, and
//! RE2's program-size limit (Envoy refuses programs over 100 by default) is not applied.

use legate_api::pb::envoy::r#type::matcher::v3::{
    RegexMatcher, StringMatcher, string_matcher::MatchPattern,
};
use regex::Regex;

use crate::{Compiled, ConfigError};

/// Compiles a pattern for full matching.
pub fn full_match_regex(pattern: &str) -> Result<Regex, String> {
    Regex::new(&format!("^(?:{pattern})$")).map_err(|e| {
        format!(
            "invalid regex '{pattern}': {}",
            e.to_string().lines().last().unwrap_or("")
        )
    })
}

/// Compiles a `RegexMatcher`; the error is placed at its `regex` field.
pub fn regex_matcher(m: &RegexMatcher) -> Compiled<Regex> {
    full_match_regex(&m.regex).map_err(|e| vec![ConfigError::new("regex", e)])
}

/// A compiled `StringMatcher`.
#[derive(Clone, Debug)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
    Regex(Regex),
}

#[derive(Clone, Debug)]
pub struct CompiledStringMatcher {
    pub pattern: StringMatch,
    pub ignore_case: bool,
}

impl CompiledStringMatcher {
    pub fn compile(m: &StringMatcher) -> Compiled<Self> {
        let lower = |s: &str| {
            if m.ignore_case {
                s.to_ascii_lowercase()
            } else {
                s.to_owned()
            }
        };
        let pattern = match &m.match_pattern {
            Some(MatchPattern::Exact(s)) => StringMatch::Exact(lower(s)),
            Some(MatchPattern::Prefix(s)) => StringMatch::Prefix(lower(s)),
            Some(MatchPattern::Suffix(s)) => StringMatch::Suffix(lower(s)),
            Some(MatchPattern::Contains(s)) => StringMatch::Contains(lower(s)),
            Some(MatchPattern::SafeRegex(r)) => {
                StringMatch::Regex(regex_matcher(r).map_err(|e| {
                    e.into_iter()
                        .map(|e| e.within("safe_regex"))
                        .collect::<Vec<_>>()
                })?)
            }
            Some(MatchPattern::Custom(_)) => {
                return Err(vec![ConfigError::new(
                    "custom",
                    "custom string matchers are not supported by Legate",
                )]);
            }
            None => return Err(vec![ConfigError::new("", "a match pattern is required")]),
        };
        Ok(Self {
            pattern,
            ignore_case: m.ignore_case,
        })
    }

    pub fn matches(&self, value: &str) -> bool {
        let folded;
        let value = if self.ignore_case && !matches!(self.pattern, StringMatch::Regex(_)) {
            folded = value.to_ascii_lowercase();
            folded.as_str()
        } else {
            value
        };
        match &self.pattern {
            StringMatch::Exact(s) => value == s,
            StringMatch::Prefix(s) => value.starts_with(s.as_str()),
            StringMatch::Suffix(s) => value.ends_with(s.as_str()),
            StringMatch::Contains(s) => value.contains(s.as_str()),
            StringMatch::Regex(r) => r.is_match(value),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regex_is_full_match_with_ascii_classes() {
        let r = full_match_regex(r"/api/\d+").unwrap();
        assert!(r.is_match("/api/42"));
        assert!(!r.is_match("/api/42/x"));
        assert!(!r.is_match("x/api/42"));
        assert!(full_match_regex("(").is_err());
    }

    #[test]
    fn ignore_case_folds_both_sides() {
        let m = CompiledStringMatcher {
            pattern: StringMatch::Prefix("/abc".into()),
            ignore_case: true,
        };
        assert!(m.matches("/ABCdef"));
    }
}
