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

/// A regex that must match the whole input (Envoy's `safe_regex`), with the literal text every
/// match starts with checked before the regex runs: route tables try regex routes one after
/// the other, and most of them fail on their first bytes (`/api/v[0-9]+/...` against
/// `/static/app.js`) at the cost of a `starts_with` instead of a regex search.
#[derive(Clone, Debug)]
pub struct FullMatchRegex {
    regex: Regex,
    /// What every matching input starts with (possibly nothing).
    prefix: Box<[u8]>,
}

impl FullMatchRegex {
    pub fn is_match(&self, input: &str) -> bool {
        input.as_bytes().starts_with(&self.prefix) && self.regex.is_match(input)
    }

    /// The anchored regex, for captures and replacements.
    pub fn regex(&self) -> &Regex {
        &self.regex
    }
}

/// Compiles a pattern for full matching.
pub fn full_match_regex(pattern: &str) -> Result<FullMatchRegex, String> {
    let anchored = format!("^(?:{pattern})$");
    let regex = Regex::new(&anchored).map_err(|e| {
        format!(
            "invalid regex '{pattern}': {}",
            e.to_string().lines().last().unwrap_or("")
        )
    })?;
    Ok(FullMatchRegex {
        prefix: literal_prefix(&anchored).into(),
        regex,
    })
}

/// The longest text every match of `pattern` starts with (empty when there is none or the
/// pattern cannot be analysed): the common prefix of the literals regex-syntax extracts.
fn literal_prefix(pattern: &str) -> Vec<u8> {
    use regex_syntax::hir::literal::{ExtractKind, Extractor};
    let Ok(hir) = regex_syntax::Parser::new().parse(pattern) else {
        return Vec::new();
    };
    let literals = Extractor::new().kind(ExtractKind::Prefix).extract(&hir);
    literals
        .longest_common_prefix()
        .map(<[u8]>::to_vec)
        .unwrap_or_default()
}

/// Compiles a `RegexMatcher`; the error is placed at its `regex` field.
pub fn regex_matcher(m: &RegexMatcher) -> Compiled<FullMatchRegex> {
    full_match_regex(&m.regex).map_err(|e| vec![ConfigError::new("regex", e)])
}

/// A compiled `StringMatcher`.
#[derive(Clone, Debug)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
    Regex(FullMatchRegex),
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
        // With `ignore_case` the patterns are lower case already; the value is compared
        // byte-wise ignoring ASCII case (no copy), except for `contains`.
        let ic = self.ignore_case;
        let (v, n) = (value.as_bytes(), value.len());
        match &self.pattern {
            StringMatch::Exact(s) if ic => value.eq_ignore_ascii_case(s),
            StringMatch::Exact(s) => value == s,
            StringMatch::Prefix(s) if ic => {
                n >= s.len() && v[..s.len()].eq_ignore_ascii_case(s.as_bytes())
            }
            StringMatch::Prefix(s) => value.starts_with(s.as_str()),
            StringMatch::Suffix(s) if ic => {
                n >= s.len() && v[n - s.len()..].eq_ignore_ascii_case(s.as_bytes())
            }
            StringMatch::Suffix(s) => value.ends_with(s.as_str()),
            StringMatch::Contains(s) if ic => value.to_ascii_lowercase().contains(s.as_str()),
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
    fn the_literal_prefix_check_never_changes_the_answer() {
        let cases: [(&str, &str); 8] = [
            (r"/svc1/v[0-9]+/.*", "/svc1/v"),
            (r"/api/\d+", "/api/"),
            (r"(?i)/api/.*", "/"),
            (r"/a|/b", "/"),
            (r".*\.js", ""),
            (r"/é[a-z]", "/é"),
            (r"/(foo|foobar)/x", "/foo"),
            (r"", ""),
        ];
        let inputs = [
            "",
            "/",
            "/svc1/v2/x",
            "/svc1/v/x",
            "/svc12/v2/x",
            "/api/42",
            "/API/42",
            "/a",
            "/b",
            "/c",
            "app.js",
            "/éb",
            "/ée",
            "/foo/x",
            "/foobar/x",
            "/fo/x",
        ];
        for (pattern, prefix) in cases {
            let fast = full_match_regex(pattern).unwrap();
            assert_eq!(fast.prefix.as_ref(), prefix.as_bytes(), "{pattern}");
            let plain = Regex::new(&format!("^(?:{pattern})$")).unwrap();
            for input in inputs {
                assert_eq!(
                    fast.is_match(input),
                    plain.is_match(input),
                    "{pattern} on {input}"
                );
            }
        }
    }

    #[test]
    fn ignore_case_compares_without_copying() {
        let m = |pattern: StringMatch| CompiledStringMatcher {
            pattern,
            ignore_case: true,
        };
        assert!(m(StringMatch::Exact("/abc".into())).matches("/ABC"));
        assert!(!m(StringMatch::Exact("/abc".into())).matches("/ABCD"));
        assert!(m(StringMatch::Suffix(".js".into())).matches("APP.JS"));
        assert!(!m(StringMatch::Suffix("long.js".into())).matches(".JS"));
        assert!(m(StringMatch::Contains("mid".into())).matches("xMIDy"));
        assert!(!m(StringMatch::Prefix("/abcdef".into())).matches("/ABC"));
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
