//! Tag extraction: `cluster.foo.upstream_rq_200` -> `cluster.upstream_rq` with
//! `envoy.response_code="200"` and `envoy.cluster_name="foo"`.
//!
//! This is Envoy's `TagProducerImpl` with the default extractors of
//! `source/common/config/well_known_names.cc` (Envoy 1.40: the regex and token patterns were
//! checked against the strings in the 1.40 binary). The rules being matched:
//!
//! * Every extractor looks at the **whole original name**. A regex extractor matches anywhere
//!   (RE2 `PartialMatch`); its first capture group is the text to remove from the name, its
//!   second (if non-empty) the tag value, else the first. A token extractor splits the name on
//!   `.` and matches a pattern where `*` is one token, `**` any number and `$` the value; it
//!   removes the value with one adjacent dot. The tag-extracted name is the name with the union
//!   of all removed ranges cut out.
//! * Extractors with a literal first token (`^cluster\.`, `cluster.$.**`) run only on names with
//!   that first token, after every extractor without one: this fixes the order of the tags, which
//!   is the order of Prometheus labels (`envoy_response_code` before `envoy_cluster_name`).
//! * A `substr` that must occur in the name is checked before the regex (an optimisation that
//!   never changes the result), and a value equal to the "negative match" is refused (so
//!   `listener.admin.*` keeps `admin` in the name).
//! * When two extractors share a tag name (`envoy.http_conn_manager_prefix`,
//!   `envoy.ext_authz_prefix`), only the first that matches counts.
//!
//! RE2 syntax is turned into the `regex` crate's by [`re2_to_rust`]: `\d`, `\w`, `\s` are ASCII
//! in RE2 and Unicode in `regex`, and RE2 (Perl mode) accepts a `-` after a class escape inside
//! brackets (`[\w-\./]`) where `regex` wants `\-`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock, OnceLock};

use regex::Regex;

/// One tag of a stat: `envoy.cluster_name` = `foo`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Tag {
    pub name: String,
    pub value: String,
}

impl Tag {
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Self {
        Tag {
            name: name.into(),
            value: value.into(),
        }
    }
}

/// One entry of `stats_config.stats_tags` (`envoy.config.metrics.v3.TagSpecifier`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TagSpecifier {
    /// `tag_name` alone: the default extractor(s) of that name.
    Default { name: String },
    /// `tag_name` + `regex`.
    Regex { name: String, regex: String },
    /// `tag_name` + `fixed_value`: added to every stat.
    Fixed { name: String, value: String },
}

// Envoy's `expandRegex` substitutions, written for the `regex` crate (the `-` in the two route
// name classes is escaped; RE2 reads `[\w-\.]` the same way).
const MACROS: [(&str, &str); 8] = [
    (
        "<ADDRESS>",
        r"(?:(?:\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}|\[[a-fA-F_\d]+\])_\d+)",
    ),
    ("<CIPHER>", r"[\w-]+"),
    ("<TLS_VERSION>", r"TLSv\d\.\d"),
    ("<TAG_VALUE>", r"[^\.]+"),
    ("<ROUTE_CONFIG_NAME>", r"[\w\-\./]+"),
    ("<SCOPED_ROUTE_CONFIG_NAME>", r"[\w\-\.]+"),
    (
        "<LISTENER_OR_CLUSTER_WITH_NAME>",
        r"(?:listener|cluster)\..*?",
    ),
    ("<PROXY_PROTOCOL_VERSION>", r"\d"),
];

/// The default regex extractors, in Envoy's order: (tag name, regex, substr, negative match).
const DEFAULT_REGEXES: &[(&str, &str, &str, &str)] = &[
    // *_rq(_<response_code>)
    ("envoy.response_code", r"_rq(_(\d{3}))$", "_rq_", ""),
    // *_rq_(<response_code_class>)xx
    ("envoy.response_code_class", r"_rq_((\d))xx$", "_rq_", ""),
    // http.[<stat_prefix>.]dynamodb.table.[<table>.]capacity.[<op>.](__partition_id=<id>)
    (
        "envoy.dynamo_partition_id",
        r"^http\.<TAG_VALUE>\.dynamodb\.table\.<TAG_VALUE>\.capacity\.<TAG_VALUE>(\.__partition_id=(\w{7}))$",
        ".dynamodb.table.",
        "",
    ),
    // http.[<stat_prefix>.]dynamodb.operation.(<operation_name>.)*
    (
        "envoy.dynamo_operation",
        r"^http\.<TAG_VALUE>\.dynamodb.(?:operation|table\.<TAG_VALUE>\.capacity)(\.(<TAG_VALUE>))(?:\.|$)",
        ".dynamodb.",
        "",
    ),
    // http.[<stat_prefix>.]dynamodb.table.(<table_name>.)*
    (
        "envoy.dynamo_table",
        r"^http\.<TAG_VALUE>\.dynamodb.(?:table|error)\.((<TAG_VALUE>)\.)",
        ".dynamodb.",
        "",
    ),
    // listener.[<address>.]ssl.ciphers.(<cipher>)
    (
        "envoy.ssl_cipher",
        r"^listener\..*?\.ssl\.ciphers(\.(<CIPHER>))$",
        ".ssl.ciphers.",
        "",
    ),
    // (listener|cluster).[<name>.]ssl.curves.(<curve>)
    (
        "envoy.ssl_curve",
        r"^<LISTENER_OR_CLUSTER_WITH_NAME>\.ssl\.curves(\.(<CIPHER>))$",
        ".ssl.curves.",
        "",
    ),
    // (listener|cluster).[<name>.]ssl.sigalgs.(<algorithm>)
    (
        "envoy.ssl_sigalg",
        r"^<LISTENER_OR_CLUSTER_WITH_NAME>\.ssl\.sigalgs(\.(<CIPHER>))$",
        ".ssl.sigalgs.",
        "",
    ),
    // (listener|cluster).[<name>.]ssl.versions.(<version>)
    (
        "envoy.ssl_version",
        r"^<LISTENER_OR_CLUSTER_WITH_NAME>\.ssl\.versions(\.(<TLS_VERSION>))$",
        ".ssl.versions.",
        "",
    ),
    // cluster.[<cluster_name>.]ssl.ciphers.(<cipher>)
    (
        "cipher_suite",
        r"^cluster\.<TAG_VALUE>\.ssl\.ciphers(\.(<CIPHER>))$",
        ".ssl.ciphers.",
        "",
    ),
    // listener.[<address>.]http.(<stat_prefix>.)*
    (
        "envoy.http_conn_manager_prefix",
        r"^listener\..*?\.http\.((<TAG_VALUE>)\.)",
        ".http.",
        "",
    ),
    // (listener.<address>|server|listener_manager|thread_local_cluster_manager).(worker_<id>.)*
    (
        "envoy.worker_id",
        r"^(?:listener\.(?:<ADDRESS>|<TAG_VALUE>)|server|listener_manager|thread_local_cluster_manager)\.worker_((\d+)\.)",
        "",
        "",
    ),
    // listener.(<address|stat_prefix>.)*, except "admin"
    (
        "envoy.listener_address",
        r"^listener\.((<ADDRESS>|<TAG_VALUE>)\.)",
        "",
        "admin",
    ),
    // http.[<stat_prefix>.]rds.(<route_config_name>.)<base_stat>
    (
        "envoy.rds_route_config",
        r"^http\.<TAG_VALUE>\.rds\.((<ROUTE_CONFIG_NAME>)\.)\w+?$",
        ".rds.",
        "",
    ),
    // http.[<stat_prefix>.]scoped_rds.(<scoped_route_config_name>.)<base_stat>
    (
        "envoy.scoped_rds_config",
        r"^http\.<TAG_VALUE>\.scoped_rds\.((<SCOPED_ROUTE_CONFIG_NAME>)\.)\w+?$",
        ".scoped_rds.",
        "",
    ),
    // http.[<stat_prefix>.]rbac.[<prefix>.]policy.(<policy_name>.)(allowed|denied|...)
    (
        "envoy.rbac_policy_name",
        r"^http\.<TAG_VALUE>\.rbac\.(?:<TAG_VALUE>\.)?policy\.((<TAG_VALUE>)\.)(allowed|shadow_allowed|denied|shadow_denied)$",
        "",
        "",
    ),
    // http.<stat_prefix>.rbac.(<rules_stat_prefix>.)*, except "policy"
    (
        "envoy.rbac_http_prefix",
        r"^http\.<TAG_VALUE>\.rbac\.((<TAG_VALUE>)\.).*?",
        "",
        "policy",
    ),
    // proxy_proto.(<stat_prefix>.)**, except "versions"
    (
        "envoy.proxy_protocol_prefix",
        r"^proxy_proto\.((<TAG_VALUE>)\.).+$",
        "",
        "versions",
    ),
    // proxy_proto.([<stat_prefix>.]versions.v(<version>).)(found|disallowed|error)
    (
        "envoy.proxy_protocol_version",
        r"^proxy_proto\.((?:<TAG_VALUE>\.)?versions\.v(<PROXY_PROTOCOL_VERSION>)\.)\w+$",
        "",
        "",
    ),
    // (listener|cluster).[<name>.]ssl.certificate.(<cert_name>).<metric>
    (
        "envoy.tls_certificate",
        r"^<LISTENER_OR_CLUSTER_WITH_NAME>\.ssl\.certificate\.((<TAG_VALUE>)\.).*$",
        ".ssl.certificate",
        "",
    ),
    // sds.(<resource_name>.)**
    (
        "envoy.xds_resource_name",
        r"^sds\.((<TAG_VALUE>)\.).+",
        "",
        "",
    ),
    // cluster.[<cluster_name>.]health_check(.name.<health_check_name>).*
    (
        "envoy.health_check_name",
        r"^cluster\.<TAG_VALUE>\.health_check(\.name\.(<TAG_VALUE>))\..+",
        "",
        "",
    ),
];

/// The default token extractors, in Envoy's order (they run after the regexes of the same
/// first token).
const DEFAULT_TOKENS: &[(&str, &str)] = &[
    (
        "envoy.mongo_callsite",
        "mongo.*.collection.*.callsite.$.query.**",
    ),
    ("envoy.mongo_collection", "mongo.*.collection.$.**.query.*"),
    ("envoy.mongo_cmd", "mongo.*.cmd.$.**"),
    ("envoy.grpc_bridge_method", "cluster.*.grpc.*.$.**"),
    ("envoy.http_user_agent", "http.*.user_agent.$.**"),
    ("envoy.virtual_cluster", "vhost.*.vcluster.$.**"),
    ("envoy.fault_downstream_cluster", "http.*.fault.$.**"),
    ("envoy.grpc_bridge_service", "cluster.*.grpc.$.**"),
    ("envoy.tcp_prefix", "tcp.$.**"),
    ("envoy.udp_prefix", "udp.$.**"),
    ("envoy.clientssl_prefix", "auth.clientssl.$.**"),
    ("envoy.ratelimit_prefix", "ratelimit.$.**"),
    ("envoy.cluster_name", "cluster.$.**"),
    ("envoy.ext_authz_prefix", "cluster.*.ext_authz.$.**"),
    ("envoy.ext_authz_prefix", "http.*.ext_authz.$.**"),
    ("envoy.http_conn_manager_prefix", "http.$.**"),
    ("envoy.virtual_host", "vhost.$.**"),
    ("envoy.mongo_prefix", "mongo.$.**"),
    ("envoy.route", "vhost.*.route.$.**"),
    ("envoy.thrift_prefix", "thrift.$.**"),
    ("envoy.redis_prefix", "redis.$.**"),
    (
        "envoy.local_http_ratelimit_prefix",
        "$.http_local_rate_limit.**",
    ),
    (
        "envoy.local_network_ratelimit_prefix",
        "local_rate_limit.$.**",
    ),
    (
        "envoy.local_listener_ratelimit_prefix",
        "listener_local_ratelimit.$.**",
    ),
    ("envoy.dns_filter_prefix", "dns_filter.$.**"),
    ("envoy.connection_limit_prefix", "connection_limit.$.**"),
    ("envoy.rbac_prefix", "$.rbac.**"),
    ("envoy.google_grpc_client_prefix", "grpc.$.**"),
];

/// The default extractors, made once per process. Their regexes are compiled when first used
/// (most processes never extract tags; compiled, they were ~425 KB of an idle proxy's heap).
static DEFAULT_EXTRACTORS: LazyLock<Vec<Arc<TagExtractor>>> = LazyLock::new(|| {
    let regexes = DEFAULT_REGEXES
        .iter()
        .map(|&(name, regex, substr, negative)| {
            let expanded = MACROS
                .iter()
                .fold(regex.to_string(), |r, (from, to)| r.replace(from, to));
            TagExtractor::lazy_regex(name, &expanded, substr, negative)
        });
    let tokens = DEFAULT_TOKENS
        .iter()
        .map(|&(name, pattern)| TagExtractor::tokens(name, pattern));
    regexes.chain(tokens).map(Arc::new).collect()
});

enum Matcher {
    Regex {
        /// In the regex crate's syntax.
        pattern: Box<str>,
        /// Compiled on first use; `None` if it does not compile (only possible for the
        /// constant defaults, which a test compiles).
        regex: OnceLock<Option<Regex>>,
        substr: String,
        negative: String,
    },
    Tokens {
        tokens: Vec<String>,
        value_index: usize,
    },
    Fixed {
        value: String,
    },
}

/// One tag extractor (`Stats::TagExtractor`).
pub struct TagExtractor {
    name: String,
    /// The literal first token of the names this extractor can match, if it has one.
    prefix: Option<String>,
    matcher: Matcher,
}

impl TagExtractor {
    /// An RE2 extractor (`TagExtractorRe2Impl`).
    pub fn regex(name: &str, regex: &str, substr: &str, negative: &str) -> Result<Self, String> {
        if name.is_empty() {
            return Err("tag_name cannot be empty".to_string());
        }
        let extractor = TagExtractor::lazy_regex(name, regex, substr, negative);
        if let Matcher::Regex {
            pattern,
            regex: compiled,
            ..
        } = &extractor.matcher
        {
            let checked = Regex::new(pattern).map_err(|e| {
                format!(
                    "invalid regex '{regex}' for tag '{name}': {}",
                    e.to_string().lines().last().unwrap_or("")
                )
            })?;
            let _ = compiled.set(Some(checked));
        }
        Ok(extractor)
    }

    /// An RE2 extractor whose regex is compiled when first used: the constant defaults
    /// ([`TagExtractor::regex`] compiles a configured one at once, to reject it if invalid).
    fn lazy_regex(name: &str, regex: &str, substr: &str, negative: &str) -> Self {
        TagExtractor {
            name: name.to_string(),
            prefix: regex_prefix(regex),
            matcher: Matcher::Regex {
                pattern: re2_to_rust(regex).into(),
                regex: OnceLock::new(),
                substr: substr.to_string(),
                negative: negative.to_string(),
            },
        }
    }

    /// A token-pattern extractor (`TagExtractorTokensImpl`), e.g. `cluster.$.**`.
    pub fn tokens(name: &str, pattern: &str) -> Self {
        let tokens: Vec<String> = pattern.split('.').map(str::to_string).collect();
        let value_index = tokens.iter().position(|t| t == "$").unwrap_or(tokens.len());
        let prefix = tokens
            .first()
            .filter(|t| !matches!(t.as_str(), "$" | "*" | "**"))
            .cloned();
        TagExtractor {
            name: name.to_string(),
            prefix,
            matcher: Matcher::Tokens {
                tokens,
                value_index,
            },
        }
    }

    /// A tag with a fixed value added to every stat (`TagExtractorFixedImpl`).
    pub fn fixed(name: &str, value: &str) -> Self {
        TagExtractor {
            name: name.to_string(),
            prefix: None,
            matcher: Matcher::Fixed {
                value: value.to_string(),
            },
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The tag value and the byte range to remove from `stat_name`, if the extractor matches.
    fn extract(&self, stat_name: &str) -> Option<(String, Option<(usize, usize)>)> {
        match &self.matcher {
            Matcher::Regex {
                pattern,
                regex,
                substr,
                negative,
            } => {
                if !substr.is_empty() && !stat_name.contains(substr.as_str()) {
                    return None;
                }
                let regex = regex.get_or_init(|| Regex::new(pattern).ok()).as_ref()?;
                let captures = regex.captures(stat_name)?;
                let remove = captures.get(1).filter(|m| !m.as_str().is_empty())?;
                let value = captures
                    .get(2)
                    .filter(|m| !m.as_str().is_empty())
                    .unwrap_or(remove)
                    .as_str();
                if !negative.is_empty() && value == negative {
                    return None;
                }
                Some((value.to_string(), Some((remove.start(), remove.end()))))
            }
            Matcher::Tokens {
                tokens,
                value_index,
            } => {
                let input: Vec<&str> = stat_name.split('.').collect();
                let mut found = None;
                if !match_tokens(tokens, *value_index, &input, 0, 0, 0, &mut found) {
                    return None;
                }
                let (start, index) = found?;
                let value = input[index];
                let mut range = (start, start + value.len());
                // Remove the value with the dot after it, or before it when it is the last
                // token: "cluster.foo.x" -> "cluster.x", "a.b.foo" -> "a.b".
                if index + 1 < input.len() {
                    range.1 += 1;
                } else if range.0 > 0 {
                    range.0 -= 1;
                }
                Some((value.to_string(), Some(range)))
            }
            Matcher::Fixed { value } => Some((value.clone(), None)),
        }
    }
}

/// Matches `input[i..]` against `pattern[p..]`; `char_index` is the byte offset of `input[i]`.
/// Sets `found` to the offset and index of the token matched by `$`.
fn match_tokens(
    pattern: &[String],
    value_index: usize,
    input: &[&str],
    mut i: usize,
    mut p: usize,
    mut char_index: usize,
    found: &mut Option<(usize, usize)>,
) -> bool {
    while i < input.len() && p < pattern.len() {
        if p == value_index {
            *found = Some((char_index, i));
        } else if pattern[p] == "**" {
            if p + 1 == pattern.len() {
                return true;
            }
            // "**" inside the pattern: the rest of the pattern must match some suffix.
            while i < input.len() {
                if match_tokens(pattern, value_index, input, i, p + 1, char_index, found) {
                    return true;
                }
                char_index += input[i].len() + 1;
                i += 1;
            }
            return false;
        } else if pattern[p] != "*" && pattern[p] != input[i] {
            return false;
        }
        char_index += input[i].len() + 1;
        i += 1;
        p += 1;
    }
    // As in Envoy, a trailing "**" needs at least one token: "cluster.$.**" does not match
    // "cluster.foo".
    i == input.len() && p == pattern.len()
}

/// Envoy's `extractRegexPrefix`: the literal first token of an anchored regex (`^cluster\.` ->
/// `cluster`), if the regex starts with one followed by `\.`, `(?=\.)` or a final `$`.
fn regex_prefix(regex: &str) -> Option<String> {
    let body = regex.strip_prefix('^')?;
    let end = body
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(body.len());
    if end == 0 || end == body.len() {
        return None;
    }
    let rest = &body[end..];
    let followed_by_dot = rest.starts_with(r"\.") || rest.starts_with(r"(?=\.)");
    if followed_by_dot || rest == "$" {
        Some(body[..end].to_string())
    } else {
        None
    }
}

/// Rewrites an RE2 pattern for the `regex` crate: ASCII `\d`, `\w`, `\s` as in RE2, and a `-`
/// after a class escape inside brackets taken literally, as RE2 does in Perl mode.
pub fn re2_to_rust(pattern: &str) -> String {
    const DIGIT: &str = "0-9";
    const WORD: &str = "0-9A-Za-z_";
    const SPACE: &str = r"\t\n\x0C\r\x20";
    let mut out = String::with_capacity(pattern.len() + 16);
    let mut in_class = false;
    let mut after_class_escape = false;
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        let was_after_class_escape = std::mem::take(&mut after_class_escape);
        match c {
            '\\' => {
                let Some(next) = chars.next() else {
                    out.push('\\');
                    break;
                };
                let ascii = match next {
                    'd' => Some(DIGIT),
                    'w' => Some(WORD),
                    's' => Some(SPACE),
                    _ => None,
                };
                match (ascii, in_class) {
                    (Some(set), true) => {
                        out.push_str(set);
                        after_class_escape = true;
                    }
                    (Some(set), false) => {
                        out.push('[');
                        out.push_str(set);
                        out.push(']');
                    }
                    (None, _) => {
                        out.push('\\');
                        out.push(next);
                    }
                }
            }
            '[' if !in_class => {
                in_class = true;
                out.push('[');
                if let Some(caret) = chars.next_if_eq(&'^') {
                    out.push(caret);
                }
                // A ']' right after the opening bracket is a literal.
                if chars.next_if_eq(&']').is_some() {
                    out.push_str(r"\]");
                }
            }
            '[' if chars.peek() == Some(&':') => {
                // A POSIX class such as [:digit:], copied as is (ASCII in both engines).
                out.push('[');
                for c in chars.by_ref() {
                    out.push(c);
                    if c == ']' {
                        break;
                    }
                }
            }
            ']' if in_class => {
                in_class = false;
                out.push(']');
            }
            '-' if in_class && was_after_class_escape => out.push_str(r"\-"),
            _ => out.push(c),
        }
    }
    out
}

/// Turns stat names into tag-extracted names and tags (`Stats::TagProducerImpl`).
#[derive(Clone)]
pub struct TagProducer {
    /// Run on every name, first.
    without_prefix: Vec<Arc<TagExtractor>>,
    /// Run on names whose first token is the key, after `without_prefix`.
    by_prefix: HashMap<String, Vec<Arc<TagExtractor>>>,
    /// Tag names produced by more than one extractor: only the first match counts.
    shared_names: HashSet<String>,
}

impl Default for TagProducer {
    /// Envoy's default: every default extractor (`use_all_default_tags` unset).
    fn default() -> Self {
        let mut producer = TagProducer::empty();
        for extractor in DEFAULT_EXTRACTORS.iter() {
            producer.add(extractor.clone());
        }
        producer
    }
}

impl TagProducer {
    /// No extraction at all: every stat keeps its full name and has no tags.
    pub fn empty() -> Self {
        TagProducer {
            without_prefix: Vec::new(),
            by_prefix: HashMap::new(),
            shared_names: HashSet::new(),
        }
    }

    /// The producer for `stats_config`: the defaults unless `use_all_default_tags` is false,
    /// then each `stats_tags` entry in order.
    pub fn new(specifiers: &[TagSpecifier], use_all_default_tags: bool) -> Result<Self, String> {
        let mut producer = if use_all_default_tags {
            TagProducer::default()
        } else {
            TagProducer::empty()
        };
        for specifier in specifiers {
            match specifier {
                TagSpecifier::Default { name } => {
                    let defaults: Vec<_> = DEFAULT_EXTRACTORS
                        .iter()
                        .filter(|e| e.name() == name)
                        .cloned()
                        .collect();
                    if defaults.is_empty() {
                        return Err(format!(
                            "No regex specified for tag specifier and no default regex for name: '{name}'"
                        ));
                    }
                    defaults.into_iter().for_each(|e| producer.add(e));
                }
                TagSpecifier::Regex { name, regex } => {
                    producer.add(Arc::new(TagExtractor::regex(name, regex, "", "")?));
                }
                TagSpecifier::Fixed { name, value } => {
                    if name.is_empty() {
                        return Err("tag_name cannot be empty".to_string());
                    }
                    producer.add(Arc::new(TagExtractor::fixed(name, value)));
                }
            }
        }
        Ok(producer)
    }

    fn add(&mut self, extractor: Arc<TagExtractor>) {
        let name = extractor.name();
        let seen = self
            .without_prefix
            .iter()
            .chain(self.by_prefix.values().flatten())
            .any(|e| e.name() == name);
        if seen {
            self.shared_names.insert(name.to_string());
        }
        match &extractor.prefix {
            Some(prefix) => self
                .by_prefix
                .entry(prefix.clone())
                .or_default()
                .push(extractor),
            None => self.without_prefix.push(extractor),
        }
    }

    /// The tag-extracted name and the tags of `name`, tags in extraction order.
    pub fn produce_tags(&self, name: &str) -> (String, Vec<Tag>) {
        let first_token = name.split_once('.').map(|(first, _)| first);
        let prefixed = first_token
            .and_then(|t| self.by_prefix.get(t))
            .map(Vec::as_slice)
            .unwrap_or_default();
        let mut tags: Vec<Tag> = Vec::new();
        let mut removed: Vec<(usize, usize)> = Vec::new();
        for extractor in self.without_prefix.iter().chain(prefixed) {
            let shared = self.shared_names.contains(extractor.name());
            if shared && tags.iter().any(|t| t.name == extractor.name()) {
                continue;
            }
            if let Some((value, range)) = extractor.extract(name) {
                tags.push(Tag::new(extractor.name(), value));
                removed.extend(range);
            }
        }
        (remove_ranges(name, removed), tags)
    }
}

/// `name` without the bytes covered by any of `ranges`.
fn remove_ranges(name: &str, mut ranges: Vec<(usize, usize)>) -> String {
    if ranges.is_empty() {
        return name.to_string();
    }
    ranges.sort_unstable();
    let mut out = String::with_capacity(name.len());
    let mut kept_from = 0;
    for (start, end) in ranges {
        if start > kept_from {
            out.push_str(name.get(kept_from..start).unwrap_or(""));
        }
        kept_from = kept_from.max(end);
    }
    out.push_str(name.get(kept_from..).unwrap_or(""));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn extract(name: &str) -> (String, Vec<(String, String)>) {
        let (extracted, tags) = TagProducer::default().produce_tags(name);
        (
            extracted,
            tags.into_iter().map(|t| (t.name, t.value)).collect(),
        )
    }

    fn tags(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    /// They are compiled only when first used, where a failure would go unnoticed.
    #[test]
    fn every_default_regex_compiles() {
        assert_eq!(
            DEFAULT_EXTRACTORS.len(),
            DEFAULT_REGEXES.len() + DEFAULT_TOKENS.len()
        );
        for extractor in DEFAULT_EXTRACTORS.iter() {
            if let Matcher::Regex { pattern, .. } = &extractor.matcher {
                if let Err(e) = Regex::new(pattern) {
                    panic!("{}: {e}", extractor.name);
                }
            }
        }
    }

    // Expected results are Envoy 1.40's `/stats/prometheus` for the same stat names.
    #[test]
    fn cluster_and_response_codes() {
        assert_eq!(
            extract("cluster.foo.upstream_rq_200"),
            (
                "cluster.upstream_rq".into(),
                tags(&[
                    ("envoy.response_code", "200"),
                    ("envoy.cluster_name", "foo")
                ])
            )
        );
        assert_eq!(
            extract("cluster.foo.external.upstream_rq_2xx"),
            (
                "cluster.external.upstream_rq_xx".into(),
                tags(&[
                    ("envoy.response_code_class", "2"),
                    ("envoy.cluster_name", "foo")
                ])
            )
        );
        assert_eq!(
            extract("cluster.foo.upstream_rq_total"),
            (
                "cluster.upstream_rq_total".into(),
                tags(&[("envoy.cluster_name", "foo")])
            )
        );
        assert_eq!(
            extract("cluster.c_d.circuit_breakers.default.cx_open").0,
            "cluster.circuit_breakers.default.cx_open"
        );
    }

    #[test]
    fn http_connection_manager_prefix() {
        assert_eq!(
            extract("http.ingress_http.downstream_rq_5xx"),
            (
                "http.downstream_rq_xx".into(),
                tags(&[
                    ("envoy.response_code_class", "5"),
                    ("envoy.http_conn_manager_prefix", "ingress_http")
                ])
            )
        );
        assert_eq!(
            extract("http.ingress_http.rds.my.route.config_reload"),
            (
                "http.rds.config_reload".into(),
                tags(&[
                    ("envoy.rds_route_config", "my.route"),
                    ("envoy.http_conn_manager_prefix", "ingress_http")
                ])
            )
        );
        assert_eq!(
            extract("http.ingress_http.user_agent.ios.downstream_cx_total"),
            (
                "http.user_agent.downstream_cx_total".into(),
                tags(&[
                    ("envoy.http_user_agent", "ios"),
                    ("envoy.http_conn_manager_prefix", "ingress_http")
                ])
            )
        );
    }

    #[test]
    fn listeners_and_workers() {
        assert_eq!(
            extract("listener.127.0.0.1_44271.downstream_cx_total"),
            (
                "listener.downstream_cx_total".into(),
                tags(&[("envoy.listener_address", "127.0.0.1_44271")])
            )
        );
        assert_eq!(
            extract("listener.[__1]_8080.downstream_cx_total").1,
            tags(&[("envoy.listener_address", "[__1]_8080")])
        );
        assert_eq!(
            extract("listener.admin.downstream_cx_total"),
            ("listener.admin.downstream_cx_total".into(), vec![])
        );
        assert_eq!(
            extract("listener.0.0.0.0_80.http.ingress.downstream_rq_2xx"),
            (
                "listener.http.downstream_rq_xx".into(),
                tags(&[
                    ("envoy.response_code_class", "2"),
                    ("envoy.http_conn_manager_prefix", "ingress"),
                    ("envoy.listener_address", "0.0.0.0_80")
                ])
            )
        );
        assert_eq!(
            extract("listener.0.0.0.0_80.worker_1.downstream_cx_active"),
            (
                "listener.worker_downstream_cx_active".into(),
                tags(&[
                    ("envoy.worker_id", "1"),
                    ("envoy.listener_address", "0.0.0.0_80")
                ])
            )
        );
        assert_eq!(
            extract("thread_local_cluster_manager.worker_0.clusters_inflated"),
            (
                "thread_local_cluster_manager.worker_clusters_inflated".into(),
                tags(&[("envoy.worker_id", "0")])
            )
        );
        assert_eq!(
            extract("listener.0.0.0.0_443.ssl.ciphers.ECDHE-RSA-AES128-GCM-SHA256"),
            (
                "listener.ssl.ciphers".into(),
                tags(&[
                    ("envoy.ssl_cipher", "ECDHE-RSA-AES128-GCM-SHA256"),
                    ("envoy.listener_address", "0.0.0.0_443")
                ])
            )
        );
        assert_eq!(
            extract("cluster.c0.ssl.versions.TLSv1.2"),
            (
                "cluster.ssl.versions".into(),
                tags(&[
                    ("envoy.ssl_version", "TLSv1.2"),
                    ("envoy.cluster_name", "c0")
                ])
            )
        );
    }

    #[test]
    fn token_patterns() {
        assert_eq!(
            extract("tcp.tcpx.downstream_cx_total"),
            (
                "tcp.downstream_cx_total".into(),
                tags(&[("envoy.tcp_prefix", "tcpx")])
            )
        );
        assert_eq!(
            extract("cluster.foo.grpc.svc.Method.success"),
            (
                "cluster.grpc.success".into(),
                tags(&[
                    ("envoy.grpc_bridge_method", "Method"),
                    ("envoy.grpc_bridge_service", "svc"),
                    ("envoy.cluster_name", "foo")
                ])
            )
        );
        assert_eq!(
            extract("vhost.vh.vcluster.other.upstream_rq_503").1,
            tags(&[
                ("envoy.response_code", "503"),
                ("envoy.virtual_cluster", "other"),
                ("envoy.virtual_host", "vh")
            ])
        );
        assert_eq!(
            extract("mongo.mp.collection.col.callsite.cs.query.total"),
            (
                "mongo.collection.callsite.query.total".into(),
                tags(&[
                    ("envoy.mongo_callsite", "cs"),
                    ("envoy.mongo_collection", "col"),
                    ("envoy.mongo_prefix", "mp")
                ])
            )
        );
        // "$" as the last token removes the dot before it.
        let last = TagExtractor::tokens("t", "a.*.$");
        assert_eq!(last.extract("a.b.c"), Some(("c".to_string(), Some((3, 5)))));
        assert_eq!(last.extract("a.b"), None);
        assert_eq!(last.extract("a.b.c.d"), None);
        assert_eq!(extract("server.uptime"), ("server.uptime".into(), vec![]));
    }

    #[test]
    fn custom_and_fixed_specifiers() {
        let producer = TagProducer::new(
            &[
                TagSpecifier::Regex {
                    name: "my_tag".into(),
                    regex: r"^custom\.((.*?)\.)".into(),
                },
                TagSpecifier::Fixed {
                    name: "region".into(),
                    value: "eu".into(),
                },
            ],
            false,
        )
        .expect("valid specifiers");
        let (name, tags) = producer.produce_tags("custom.v1.requests");
        assert_eq!(name, "custom.requests");
        assert_eq!(
            tags,
            vec![Tag::new("region", "eu"), Tag::new("my_tag", "v1")]
        );
        // Without the defaults, cluster names stay in the name.
        assert_eq!(producer.produce_tags("cluster.a.b").0, "cluster.a.b");

        assert!(
            TagProducer::new(
                &[TagSpecifier::Default {
                    name: "nope".into()
                }],
                true
            )
            .is_err()
        );
        assert!(
            TagProducer::new(
                &[TagSpecifier::Regex {
                    name: "x".into(),
                    regex: "(".into()
                }],
                true
            )
            .is_err()
        );
    }

    #[test]
    fn re2_classes_become_ascii() {
        assert_eq!(re2_to_rust(r"_rq(_(\d{3}))$"), r"_rq(_([0-9]{3}))$");
        assert_eq!(re2_to_rust(r"[\w-\./]+"), r"[0-9A-Za-z_\-\./]+");
        assert_eq!(re2_to_rust(r"[_\[\]a[:digit:]]"), r"[_\[\]a[:digit:]]");
        assert_eq!(re2_to_rust(r"[]a]"), r"[\]a]");
        assert!(!Regex::new(&re2_to_rust(r"^\d$")).is_ok_and(|r| r.is_match("٣")));
    }

    #[test]
    fn regex_prefixes() {
        assert_eq!(regex_prefix(r"^cluster\.x").as_deref(), Some("cluster"));
        assert_eq!(regex_prefix(r"^http(?=\.).*").as_deref(), Some("http"));
        assert_eq!(regex_prefix(r"^(?:listener|cluster)\."), None);
        assert_eq!(regex_prefix(r"_rq(_(\d{3}))$"), None);
        assert_eq!(regex_prefix(r"^server$").as_deref(), Some("server"));
    }
}
