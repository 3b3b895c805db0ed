//! Dynamic metadata: what a filter learns about a connection and publishes for the filters and
//! access logs after it (`%DYNAMIC_METADATA(NAMESPACE:KEY)%`), Envoy's
//! `Metadata.filter_metadata`: a struct per namespace, usually the filter's name.
//!
//! Legate's one producer, the `proxy_protocol` listener filter, sets string values only (a
//! TLV's bytes under the key its rule names), so a namespace here is a map of keys to strings.
//! The maps are ordered, so a namespace prints its keys sorted, as Envoy prints a `Struct`.
//! A connection's metadata belongs to the connection: HTTP streams on it start with none of
//! it, as in Envoy. [`MetadataMatcher`] is Envoy's matcher of the same name over it (the
//! network RBAC filter's `metadata` permissions and principals).

use std::collections::BTreeMap;

use legate_api::pb::envoy::r#type::matcher::v3::{
    MetadataMatcher as MetadataMatcherProto, ValueMatcher, metadata_matcher::path_segment::Segment,
    value_matcher::MatchPattern,
};

use crate::matcher::CompiledStringMatcher;
use crate::{Compiled, ConfigError, Errors, within};

/// The filters' metadata of one connection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DynamicMetadata {
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
}

impl DynamicMetadata {
    pub fn is_empty(&self) -> bool {
        self.namespaces.is_empty()
    }

    /// Sets `key` in `namespace`, replacing what was there (Envoy's `setDynamicMetadata`).
    pub fn insert(&mut self, namespace: &str, key: &str, value: String) {
        let fields = self.namespaces.entry(namespace.to_owned()).or_default();
        fields.insert(key.to_owned(), value);
    }

    /// Sets `key` in `namespace` unless it is set already: the first value stays, as in
    /// Envoy, whose proxy_protocol filter keeps the first of two TLVs of one type.
    pub fn insert_first(&mut self, namespace: &str, key: &str, value: String) {
        let fields = self.namespaces.entry(namespace.to_owned()).or_default();
        fields.entry(key.to_owned()).or_insert(value);
    }

    /// The fields of `namespace`.
    pub fn namespace(&self, namespace: &str) -> Option<&BTreeMap<String, String>> {
        self.namespaces.get(namespace)
    }

    /// The value at `path` (`namespace`, then keys): a string, or a namespace's whole struct.
    /// `None` when nothing is there, including a path that goes below a string.
    pub fn lookup(&self, namespace: &str, keys: &[String]) -> Option<Lookup<'_>> {
        let fields = self.namespaces.get(namespace)?;
        match keys {
            [] => Some(Lookup::Struct(fields)),
            [key] => fields.get(key).map(|v| Lookup::String(v)),
            _ => None,
        }
    }
}

/// What a metadata path leads to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup<'a> {
    String(&'a str),
    Struct(&'a BTreeMap<String, String>),
}

/// `bytes` as text, each byte that is not part of valid UTF-8 replaced by `!` (Envoy's
/// `MessageUtil::sanitizeUtf8String`, which a metadata string goes through): the bytes of an
/// invalid or truncated sequence become one `!` each.
pub fn sanitize_utf8(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    let mut rest = bytes;
    loop {
        match std::str::from_utf8(rest) {
            Ok(valid) => {
                out.push_str(valid);
                return out;
            }
            Err(e) => {
                let (valid, after) = rest.split_at(e.valid_up_to());
                // The first `valid_up_to` bytes are valid UTF-8.
                out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                let bad = e.error_len().unwrap_or(after.len());
                out.extend(std::iter::repeat_n('!', bad));
                rest = &after[bad..];
            }
        }
    }
}

/// `envoy.type.matcher.v3.MetadataMatcher`: the value at `filter` (a namespace) and `path`
/// checked by a value matcher, the result inverted with `invert`.
#[derive(Debug)]
pub struct MetadataMatcher {
    namespace: String,
    keys: Vec<String>,
    value: ValueMatch,
    invert: bool,
}

/// A compiled `ValueMatcher`.
#[derive(Debug)]
enum ValueMatch {
    /// `null_match`, `bool_match`: they match values of other kinds than Legate's metadata
    /// holds (strings), so never, as Envoy's would on a string.
    OtherKind,
    String(CompiledStringMatcher),
    /// `present_match`: whether a value is there, or not.
    Present(bool),
    Or(Vec<ValueMatch>),
}

impl MetadataMatcher {
    pub fn compile(m: &MetadataMatcherProto) -> Compiled<MetadataMatcher> {
        let keys = m
            .path
            .iter()
            .map(|segment| match &segment.segment {
                Some(Segment::Key(key)) => key.clone(),
                None => String::new(),
            })
            .collect();
        let Some(value) = &m.value else {
            return Err(vec![ConfigError::new("value", "value is required")]);
        };
        Ok(MetadataMatcher {
            namespace: m.filter.clone(),
            keys,
            value: compile_value(value).map_err(|e| within(e, "value"))?,
            invert: m.invert,
        })
    }

    pub fn matches(&self, metadata: Option<&DynamicMetadata>) -> bool {
        let found = metadata.and_then(|m| m.lookup(&self.namespace, &self.keys));
        self.value.matches(found) != self.invert
    }
}

impl ValueMatch {
    fn matches(&self, value: Option<Lookup<'_>>) -> bool {
        match self {
            ValueMatch::OtherKind => false,
            ValueMatch::String(m) => matches!(value, Some(Lookup::String(s)) if m.matches(s)),
            ValueMatch::Present(present) => value.is_some() == *present,
            ValueMatch::Or(any) => any.iter().any(|m| m.matches(value)),
        }
    }
}

fn compile_value(v: &ValueMatcher) -> Compiled<ValueMatch> {
    Ok(match &v.match_pattern {
        Some(MatchPattern::NullMatch(_)) | Some(MatchPattern::BoolMatch(_)) => {
            ValueMatch::OtherKind
        }
        Some(MatchPattern::StringMatch(m)) => ValueMatch::String(
            CompiledStringMatcher::compile(m).map_err(|e| within(e, "string_match"))?,
        ),
        Some(MatchPattern::PresentMatch(present)) => ValueMatch::Present(*present),
        Some(MatchPattern::OrMatch(or)) => {
            let mut errors = Errors::default();
            let matchers = or
                .value_matchers
                .iter()
                .enumerate()
                .filter_map(|(i, m)| {
                    errors.take(&format!("or_match.value_matchers[{i}]"), compile_value(m))
                })
                .collect();
            errors.finish(|| ValueMatch::Or(matchers))?
        }
        // Refused with their paths by the supported-fields check before they get here.
        Some(MatchPattern::DoubleMatch(_)) | Some(MatchPattern::ListMatch(_)) | None => {
            return Err(vec![ConfigError::new(
                "",
                "this value matcher is not supported by Legate",
            )]);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_bytes_become_one_bang_each() {
        // The values Envoy 1.40 logs for these TLVs.
        assert_eq!(sanitize_utf8(b"\xff\xfe\"q\x00z"), "!!\"q\0z");
        assert_eq!(
            sanitize_utf8("a\u{e9}c\u{1f600}d".as_bytes()),
            "a\u{e9}c\u{1f600}d"
        );
        // A truncated sequence, a surrogate, a truncated sequence at the end.
        assert_eq!(
            sanitize_utf8(b"a\xe2\x82b\xed\xa0\x80e\xf0\x9f"),
            "a!!b!!!e!!"
        );
        assert_eq!(sanitize_utf8(b""), "");
    }

    #[test]
    fn the_first_value_of_a_key_stays() {
        let mut m = DynamicMetadata::default();
        assert!(m.is_empty());
        m.insert_first("ns", "k", "one".into());
        m.insert_first("ns", "k", "two".into());
        m.insert_first("ns", "a", "".into());
        assert_eq!(m.lookup("ns", &["k".into()]), Some(Lookup::String("one")));
        assert_eq!(m.lookup("ns", &["a".into()]), Some(Lookup::String("")));
        assert_eq!(m.lookup("ns", &["k".into(), "x".into()]), None);
        assert_eq!(m.lookup("other", &[]), None);
        let Some(Lookup::Struct(fields)) = m.lookup("ns", &[]) else {
            panic!("the namespace's struct");
        };
        assert_eq!(fields.keys().collect::<Vec<_>>(), ["a", "k"]);
    }

    fn matcher(yaml_value: ValueMatcher, invert: bool) -> MetadataMatcher {
        use legate_api::pb::envoy::r#type::matcher::v3::metadata_matcher::PathSegment;
        MetadataMatcher::compile(&MetadataMatcherProto {
            filter: "ns".into(),
            path: vec![PathSegment {
                segment: Some(Segment::Key("vpce".into())),
            }],
            value: Some(yaml_value),
            invert,
        })
        .unwrap()
    }

    #[test]
    fn metadata_matchers_match_strings_and_presence() {
        use legate_api::pb::envoy::r#type::matcher::v3::{
            OrMatcher, StringMatcher, string_matcher,
        };
        let prefix = |p: &str| ValueMatcher {
            match_pattern: Some(MatchPattern::StringMatch(StringMatcher {
                match_pattern: Some(string_matcher::MatchPattern::Prefix(p.into())),
                ignore_case: false,
            })),
        };
        let present = |p: bool| ValueMatcher {
            match_pattern: Some(MatchPattern::PresentMatch(p)),
        };
        let mut m = DynamicMetadata::default();
        m.insert_first("ns", "vpce", "vpce-123".into());
        let with = Some(&m);
        assert!(matcher(prefix("vpce-1"), false).matches(with));
        assert!(!matcher(prefix("vpce-9"), false).matches(with));
        assert!(matcher(prefix("vpce-9"), true).matches(with));
        assert!(!matcher(prefix("vpce-1"), false).matches(None));
        assert!(matcher(present(true), false).matches(with));
        assert!(matcher(present(false), false).matches(None));
        let either = ValueMatcher {
            match_pattern: Some(MatchPattern::OrMatch(OrMatcher {
                value_matchers: vec![prefix("x"), prefix("vpce")],
            })),
        };
        assert!(matcher(either, false).matches(with));
        let null = ValueMatcher {
            match_pattern: Some(MatchPattern::NullMatch(Default::default())),
        };
        assert!(!matcher(null, false).matches(with));
    }
}
