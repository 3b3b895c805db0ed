//! The `validate.rules` constraints (protoc-gen-validate) that Envoy's protos carry, evaluated
//! by reflection so that every field of every message is checked exactly as Envoy's generated
//! validators check it. Messages follow PGV's wording ("value must be greater than 0").

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use envoy_types::pb::google::protobuf::Duration;
use envoy_types::pb::validate::{
    self, FieldRules, KnownRegex, field_rules::Type as RuleType, string_rules::WellKnown,
};
use prost_reflect::{
    DynamicMessage, ExtensionDescriptor, FieldDescriptor, Kind, MessageDescriptor, OneofDescriptor,
    ReflectMessage, Value,
};
use regex::Regex;

use crate::descriptors::pool;

/// The compiled rules of one message type.
pub struct MessageRules {
    /// `option (validate.disabled) = true` or `(validate.ignored)`: no checks at all.
    pub disabled: bool,
    /// Oneofs marked `(validate.required) = true`.
    pub required_oneofs: Vec<OneofDescriptor>,
    /// The fields that have rules, in field order.
    pub fields: Vec<(FieldDescriptor, FieldRule)>,
}

/// The rules of one field, with its string pattern compiled.
pub struct FieldRule {
    pub rules: FieldRules,
    patterns: Vec<Regex>,
}

/// Compiles and caches rules per message type.
#[derive(Default)]
pub struct RuleCache {
    messages: HashMap<String, Arc<MessageRules>>,
}

impl RuleCache {
    pub fn get(&mut self, desc: &MessageDescriptor) -> Arc<MessageRules> {
        if let Some(rules) = self.messages.get(desc.full_name()) {
            return rules.clone();
        }
        let rules = Arc::new(compile(desc));
        self.messages
            .insert(desc.full_name().to_owned(), rules.clone());
        rules
    }
}

fn extension(name: &str) -> Option<ExtensionDescriptor> {
    pool().get_extension_by_name(name)
}

fn bool_option(options: &DynamicMessage, ext: &Option<ExtensionDescriptor>) -> bool {
    ext.as_ref().is_some_and(|ext| {
        options.has_extension(ext) && options.get_extension(ext).as_bool() == Some(true)
    })
}

fn compile(desc: &MessageDescriptor) -> MessageRules {
    let options = desc.options();
    let disabled = bool_option(&options, &extension("validate.disabled"))
        || bool_option(&options, &extension("validate.ignored"));
    let oneof_required = extension("validate.required");
    let required_oneofs = desc
        .oneofs()
        .filter(|oneof| !oneof.is_synthetic() && bool_option(&oneof.options(), &oneof_required))
        .collect();
    let mut fields = Vec::new();
    if let Some(ext) = extension("validate.rules") {
        for field in desc.fields() {
            let options = field.options();
            if !options.has_extension(&ext) {
                continue;
            }
            let Some(rules) = options
                .get_extension(&ext)
                .as_message()
                .and_then(|m| m.transcode_to::<FieldRules>().ok())
            else {
                continue;
            };
            let mut patterns = Vec::new();
            collect_patterns(&rules, &mut patterns);
            fields.push((field, FieldRule { rules, patterns }));
        }
    }
    MessageRules {
        disabled,
        required_oneofs,
        fields,
    }
}

/// Compiles the `pattern`s of a rule and of its `items`/`keys`/`values` sub-rules, in a fixed
/// order that [`Evaluator`] follows when it needs them.
fn collect_patterns(rules: &FieldRules, out: &mut Vec<Regex>) {
    match &rules.r#type {
        Some(RuleType::String(s)) => {
            if let Some(p) = &s.pattern {
                // An invalid pattern in Envoy's own protos cannot happen; never match if it did.
                out.push(Regex::new(p).unwrap_or_else(|_| Regex::new(r"[^\s\S]").expect("valid")));
            }
        }
        Some(RuleType::Repeated(r)) => {
            if let Some(items) = &r.items {
                collect_patterns(items, out);
            }
        }
        Some(RuleType::Map(m)) => {
            if let Some(keys) = &m.keys {
                collect_patterns(keys, out);
            }
            if let Some(values) = &m.values {
                collect_patterns(values, out);
            }
        }
        _ => {}
    }
}

impl FieldRule {
    /// Checks an unset singular message field: only `required` rules apply.
    pub fn check_missing(&self) -> Option<(String, String)> {
        let required = self
            .rules
            .message
            .as_ref()
            .is_some_and(|m| m.required == Some(true))
            || match &self.rules.r#type {
                Some(RuleType::Duration(d)) => d.required == Some(true),
                Some(RuleType::Any(a)) => a.required == Some(true),
                Some(RuleType::Timestamp(t)) => t.required == Some(true),
                _ => false,
            };
        required.then(|| (String::new(), "value is required".to_owned()))
    }

    /// Checks `value` (the field's value, or its default when unset) and returns the first
    /// violation with the path suffix it applies to (empty, or `[i]` for a list item).
    pub fn check(
        &self,
        field: &FieldDescriptor,
        value: &Value,
        is_set: bool,
    ) -> Option<(String, String)> {
        let mut patterns = self.patterns.iter();
        check_field(&self.rules, field, value, is_set, &mut patterns)
    }
}

fn check_field<'a>(
    rules: &FieldRules,
    field: &FieldDescriptor,
    value: &Value,
    is_set: bool,
    patterns: &mut impl Iterator<Item = &'a Regex>,
) -> Option<(String, String)> {
    if let Some(message_rules) = &rules.message {
        if message_rules.required == Some(true) && !is_set {
            return Some((String::new(), "value is required".into()));
        }
    }
    match (&rules.r#type, value) {
        (Some(RuleType::Repeated(r)), Value::List(items)) => {
            let n = items.len() as u64;
            if r.ignore_empty == Some(true) && n == 0 {
                return None;
            }
            if let Some(min) = r.min_items.filter(|&min| n < min) {
                return Some((
                    String::new(),
                    format!("value must contain at least {min} item(s)"),
                ));
            }
            if let Some(max) = r.max_items.filter(|&max| n > max) {
                return Some((
                    String::new(),
                    format!("value must contain no more than {max} item(s)"),
                ));
            }
            if r.unique == Some(true) {
                for (i, item) in items.iter().enumerate() {
                    if items[..i].contains(item) {
                        return Some((
                            format!("[{i}]"),
                            "repeated value must contain unique items".into(),
                        ));
                    }
                }
            }
            if let Some(item_rules) = &r.items {
                let item_patterns: Vec<&Regex> = patterns.collect();
                for (i, item) in items.iter().enumerate() {
                    let mut it = item_patterns.iter().copied();
                    if let Some((suffix, msg)) =
                        check_single(item_rules, field, item, true, &mut it)
                    {
                        return Some((format!("[{i}]{suffix}"), msg));
                    }
                }
            }
            None
        }
        (Some(RuleType::Map(m)), Value::Map(entries)) => {
            let n = entries.len() as u64;
            if m.ignore_empty == Some(true) && n == 0 {
                return None;
            }
            if let Some(min) = m.min_pairs.filter(|&min| n < min) {
                return Some((
                    String::new(),
                    format!("value must contain at least {min} pair(s)"),
                ));
            }
            if let Some(max) = m.max_pairs.filter(|&max| n > max) {
                return Some((
                    String::new(),
                    format!("value must contain no more than {max} pair(s)"),
                ));
            }
            let all: Vec<&Regex> = patterns.collect();
            let key_count = m.keys.as_ref().map_or(0, |k| pattern_count(k));
            let (key_patterns, value_patterns) = all.split_at(key_count.min(all.len()));
            let (Kind::Message(entry), true) = (field.kind(), field.is_map()) else {
                return None;
            };
            let (key_field, value_field) =
                (entry.map_entry_key_field(), entry.map_entry_value_field());
            for (key, item) in entries {
                let suffix = format!("[{}]", crate::any::map_key(key));
                if let Some(key_rules) = &m.keys {
                    let key_value: Value = key.clone().into();
                    let mut it = key_patterns.iter().copied();
                    if let Some((_, msg)) = check_scalar(key_rules, &key_field, &key_value, &mut it)
                    {
                        return Some((suffix, format!("map key: {msg}")));
                    }
                }
                if let Some(value_rules) = &m.values {
                    let mut it = value_patterns.iter().copied();
                    if let Some((s, msg)) =
                        check_single(value_rules, &value_field, item, true, &mut it)
                    {
                        return Some((format!("{suffix}{s}"), msg));
                    }
                }
            }
            None
        }
        _ => check_single(rules, field, value, is_set, patterns),
    }
}

fn pattern_count(rules: &FieldRules) -> usize {
    let mut v = Vec::new();
    collect_patterns(rules, &mut v);
    v.len()
}

/// Rules for one (non-repeated) value: a scalar, an enum, or a message (wrappers, Duration, Any).
fn check_single<'a>(
    rules: &FieldRules,
    field: &FieldDescriptor,
    value: &Value,
    is_set: bool,
    patterns: &mut impl Iterator<Item = &'a Regex>,
) -> Option<(String, String)> {
    if let Some(message_rules) = &rules.message {
        if message_rules.required == Some(true) && !is_set {
            return Some((String::new(), "value is required".into()));
        }
    }
    match value {
        Value::Message(msg) => {
            let name = msg.descriptor().full_name().to_owned();
            match (&rules.r#type, name.as_str()) {
                (Some(RuleType::Duration(d)), _) => {
                    if !is_set {
                        return (d.required == Some(true))
                            .then(|| (String::new(), "value is required".into()));
                    }
                    check_duration(&d, &duration_of(msg))
                }
                (Some(RuleType::Any(a)), _) => {
                    if !is_set {
                        return (a.required == Some(true))
                            .then(|| (String::new(), "value is required".into()));
                    }
                    let url = msg
                        .get_field_by_name("type_url")
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default();
                    if !a.r#in.is_empty() && !a.r#in.contains(&url) {
                        return Some((
                            String::new(),
                            format!("type URL must be in list {:?}", a.r#in),
                        ));
                    }
                    if a.not_in.contains(&url) {
                        return Some((
                            String::new(),
                            format!("type URL must not be in list {:?}", a.not_in),
                        ));
                    }
                    None
                }
                (Some(RuleType::Timestamp(t)), _) => (t.required == Some(true) && !is_set)
                    .then(|| (String::new(), "value is required".into())),
                // Wrapper types: the scalar rule applies to the wrapped value, when present.
                (Some(_), n) if n.starts_with("google.protobuf.") && n.ends_with("Value") => {
                    if !is_set {
                        return None;
                    }
                    let inner_field = msg.descriptor().get_field_by_name("value")?;
                    let inner = msg.get_field(&inner_field);
                    check_scalar(rules, &inner_field, &inner, patterns)
                }
                _ => None,
            }
        }
        _ => check_scalar(rules, field, value, patterns),
    }
}

fn duration_of(msg: &DynamicMessage) -> Duration {
    Duration {
        seconds: msg
            .get_field_by_name("seconds")
            .and_then(|v| v.as_i64())
            .unwrap_or(0),
        nanos: msg
            .get_field_by_name("nanos")
            .and_then(|v| v.as_i32())
            .unwrap_or(0),
    }
}

fn nanos(d: &Duration) -> i128 {
    d.seconds as i128 * 1_000_000_000 + d.nanos as i128
}

fn fmt_duration(d: &Duration) -> String {
    let total = nanos(d);
    if total % 1_000_000_000 == 0 {
        format!("{}s", total / 1_000_000_000)
    } else {
        format!("{}s", total as f64 / 1e9)
    }
}

fn check_duration(r: &validate::DurationRules, d: &Duration) -> Option<(String, String)> {
    let v = nanos(d);
    if d.seconds.signum() * (d.nanos as i64).signum() < 0 || d.nanos.abs() >= 1_000_000_000 {
        return Some((String::new(), "value is not a valid duration".into()));
    }
    let bound = |b: &Option<Duration>| b.as_ref().map(|b| (nanos(b), fmt_duration(b)));
    if let Some((_, s)) = bound(&r.r#const).filter(|(c, _)| v != *c) {
        return Some((String::new(), format!("value must equal {s}")));
    }
    let range = NumRange {
        lt: bound(&r.lt),
        lte: bound(&r.lte),
        gt: bound(&r.gt),
        gte: bound(&r.gte),
    };
    if let Some(msg) = range.violation(v) {
        return Some((String::new(), msg));
    }
    if !r.r#in.is_empty() && !r.r#in.iter().any(|b| nanos(b) == v) {
        return Some((String::new(), "value must be in list".into()));
    }
    if r.not_in.iter().any(|b| nanos(b) == v) {
        return Some((String::new(), "value must not be in list".into()));
    }
    None
}

/// The `lt`/`lte`/`gt`/`gte` bounds of a numeric rule, with PGV's messages, including the
/// "exclusive range" form used when `gt > lt`.
struct NumRange<T> {
    lt: Option<(T, String)>,
    lte: Option<(T, String)>,
    gt: Option<(T, String)>,
    gte: Option<(T, String)>,
}

impl<T: PartialOrd + Copy> NumRange<T> {
    fn violation(&self, v: T) -> Option<String> {
        let upper = self
            .lt
            .as_ref()
            .map(|(b, s)| (v < *b, "less than", s, *b))
            .or(self
                .lte
                .as_ref()
                .map(|(b, s)| (v <= *b, "less than or equal to", s, *b)));
        let lower = self
            .gt
            .as_ref()
            .map(|(b, s)| (v > *b, "greater than", s, *b))
            .or(self
                .gte
                .as_ref()
                .map(|(b, s)| (v >= *b, "greater than or equal to", s, *b)));
        match (lower, upper) {
            (Some((lok, lw, ls, lb)), Some((uok, uw, us, ub))) => {
                if ub > lb {
                    (!(lok && uok))
                        .then(|| format!("value must be inside range ({lw} {ls}, {uw} {us})"))
                } else {
                    (!(lok || uok))
                        .then(|| format!("value must be outside range ({uw} {us}, {lw} {ls})"))
                }
            }
            (Some((ok, w, s, _)), None) | (None, Some((ok, w, s, _))) => {
                (!ok).then(|| format!("value must be {w} {s}"))
            }
            (None, None) => None,
        }
    }
}

macro_rules! numeric {
    ($r:expr, $v:expr) => {{
        let r = $r;
        let v = $v;
        if r.ignore_empty == Some(true) && v == zero_of(v) {
            return None;
        }
        if let Some(c) = r.r#const.filter(|c| *c != v) {
            return Some((String::new(), format!("value must equal {c}")));
        }
        let b = |x: &Option<_>| x.map(|x| (x, format!("{x}")));
        let range = NumRange {
            lt: b(&r.lt),
            lte: b(&r.lte),
            gt: b(&r.gt),
            gte: b(&r.gte),
        };
        if let Some(msg) = range.violation(v) {
            return Some((String::new(), msg));
        }
        if !r.r#in.is_empty() && !r.r#in.contains(&v) {
            return Some((String::new(), format!("value must be in list {:?}", r.r#in)));
        }
        if r.not_in.contains(&v) {
            return Some((
                String::new(),
                format!("value must not be in list {:?}", r.not_in),
            ));
        }
        None
    }};
}

fn check_scalar<'a>(
    rules: &FieldRules,
    field: &FieldDescriptor,
    value: &Value,
    patterns: &mut impl Iterator<Item = &'a Regex>,
) -> Option<(String, String)> {
    let rule = rules.r#type.as_ref()?;
    match (rule, value) {
        (RuleType::Float(r), Value::F32(v)) => numeric!(r, *v),
        (RuleType::Double(r), Value::F64(v)) => numeric!(r, *v),
        (RuleType::Int32(r), Value::I32(v)) => numeric!(r, *v),
        (RuleType::Sint32(r), Value::I32(v)) => numeric!(r, *v),
        (RuleType::Sfixed32(r), Value::I32(v)) => numeric!(r, *v),
        (RuleType::Int64(r), Value::I64(v)) => numeric!(r, *v),
        (RuleType::Sint64(r), Value::I64(v)) => numeric!(r, *v),
        (RuleType::Sfixed64(r), Value::I64(v)) => numeric!(r, *v),
        (RuleType::Uint32(r), Value::U32(v)) => numeric!(r, *v),
        (RuleType::Fixed32(r), Value::U32(v)) => numeric!(r, *v),
        (RuleType::Uint64(r), Value::U64(v)) => numeric!(r, *v),
        (RuleType::Fixed64(r), Value::U64(v)) => numeric!(r, *v),
        (RuleType::Bool(r), Value::Bool(v)) => r
            .r#const
            .filter(|c| c != v)
            .map(|c| (String::new(), format!("value must equal {c}"))),
        (RuleType::Enum(r), Value::EnumNumber(v)) => {
            if let Some(c) = r.r#const.filter(|c| c != v) {
                return Some((String::new(), format!("value must equal {c}")));
            }
            if r.defined_only == Some(true) {
                if let Kind::Enum(e) = field.kind() {
                    if e.get_value(*v).is_none() {
                        return Some((
                            String::new(),
                            "value must be one of the defined enum values".into(),
                        ));
                    }
                }
            }
            if !r.r#in.is_empty() && !r.r#in.contains(v) {
                return Some((String::new(), format!("value must be in list {:?}", r.r#in)));
            }
            if r.not_in.contains(v) {
                return Some((
                    String::new(),
                    format!("value must not be in list {:?}", r.not_in),
                ));
            }
            None
        }
        (RuleType::String(r), Value::String(s)) => {
            check_string(r, s, patterns).map(|m| (String::new(), m))
        }
        (RuleType::Bytes(r), Value::Bytes(b)) => check_bytes(r, b).map(|m| (String::new(), m)),
        _ => None,
    }
}

fn check_string<'a>(
    r: &validate::StringRules,
    s: &str,
    patterns: &mut impl Iterator<Item = &'a Regex>,
) -> Option<String> {
    let pattern = r.pattern.as_ref().and_then(|_| patterns.next());
    if r.ignore_empty == Some(true) && s.is_empty() {
        return None;
    }
    let chars = s.chars().count() as u64;
    let bytes = s.len() as u64;
    if let Some(c) = r.r#const.as_ref().filter(|c| *c != s) {
        return Some(format!("value must equal {c}"));
    }
    if let Some(n) = r.len.filter(|&n| chars != n) {
        return Some(format!("value length must be {n} runes"));
    }
    if let Some(n) = r.min_len.filter(|&n| chars < n) {
        return Some(format!("value length must be at least {n} runes"));
    }
    if let Some(n) = r.max_len.filter(|&n| chars > n) {
        return Some(format!("value length must be at most {n} runes"));
    }
    if let Some(n) = r.len_bytes.filter(|&n| bytes != n) {
        return Some(format!("value length must be {n} bytes"));
    }
    if let Some(n) = r.min_bytes.filter(|&n| bytes < n) {
        return Some(format!("value length must be at least {n} bytes"));
    }
    if let Some(n) = r.max_bytes.filter(|&n| bytes > n) {
        return Some(format!("value length must be at most {n} bytes"));
    }
    if let Some(re) = pattern {
        if !re.is_match(s) {
            return Some(format!(
                "value does not match regex pattern {:?}",
                re.as_str()
            ));
        }
    }
    if let Some(p) = r.prefix.as_ref().filter(|p| !s.starts_with(p.as_str())) {
        return Some(format!("value does not have prefix {p:?}"));
    }
    if let Some(p) = r.suffix.as_ref().filter(|p| !s.ends_with(p.as_str())) {
        return Some(format!("value does not have suffix {p:?}"));
    }
    if let Some(p) = r.contains.as_ref().filter(|p| !s.contains(p.as_str())) {
        return Some(format!("value does not contain substring {p:?}"));
    }
    if let Some(p) = r.not_contains.as_ref().filter(|p| s.contains(p.as_str())) {
        return Some(format!("value contains substring {p:?}"));
    }
    if !r.r#in.is_empty() && !r.r#in.iter().any(|x| x == s) {
        return Some(format!("value must be in list {:?}", r.r#in));
    }
    if r.not_in.iter().any(|x| x == s) {
        return Some(format!("value must not be in list {:?}", r.not_in));
    }
    match r.well_known.as_ref()? {
        WellKnown::Hostname(true) => {
            (!is_hostname(s)).then(|| "value must be a valid hostname".into())
        }
        WellKnown::Ip(true) => s
            .parse::<IpAddr>()
            .is_err()
            .then(|| "value must be a valid IP address".into()),
        WellKnown::Ipv4(true) => s
            .parse::<Ipv4Addr>()
            .is_err()
            .then(|| "value must be a valid IPv4 address".into()),
        WellKnown::Ipv6(true) => s
            .parse::<Ipv6Addr>()
            .is_err()
            .then(|| "value must be a valid IPv6 address".into()),
        WellKnown::Address(true) => (s.parse::<IpAddr>().is_err() && !is_hostname(s))
            .then(|| "value must be a valid hostname, or ip address".into()),
        WellKnown::Email(true) => {
            (!s.contains('@')).then(|| "value must be a valid email address".into())
        }
        WellKnown::Uri(true) => (!s.contains(':')).then(|| "value must be a valid URI".into()),
        WellKnown::WellKnownRegex(kind) => {
            let strict = r.strict.unwrap_or(true);
            match KnownRegex::try_from(*kind).ok()? {
                KnownRegex::HttpHeaderName if strict => (!is_header_name(s))
                    .then(|| "value does not match regex pattern \"^:?[0-9a-zA-Z!#$%&'*+-.^_|~`]+$\"".into()),
                KnownRegex::HttpHeaderValue if strict => s
                    .bytes()
                    .any(|b| (b < 0x20 && b != b'\t') || b == 0x7f)
                    .then(|| "value does not match regex pattern \"^[^\\u0000-\\u0008\\u000A-\\u001F\\u007F]*$\"".into()),
                KnownRegex::HttpHeaderName | KnownRegex::HttpHeaderValue => s
                    .bytes()
                    .any(|b| matches!(b, 0 | b'\n' | b'\r'))
                    .then(|| "value does not match regex pattern \"^[^\\u0000\\u000A\\u000D]*$\"".into()),
                KnownRegex::Unknown => None,
            }
        }
        _ => None,
    }
}

fn check_bytes(r: &validate::BytesRules, b: &[u8]) -> Option<String> {
    if r.ignore_empty == Some(true) && b.is_empty() {
        return None;
    }
    let n = b.len() as u64;
    if let Some(l) = r.len.filter(|&l| n != l) {
        return Some(format!("value length must be {l} bytes"));
    }
    if let Some(l) = r.min_len.filter(|&l| n < l) {
        return Some(format!("value length must be at least {l} bytes"));
    }
    if let Some(l) = r.max_len.filter(|&l| n > l) {
        return Some(format!("value length must be at most {l} bytes"));
    }
    None
}

fn is_header_name(s: &str) -> bool {
    let body = s.strip_prefix(':').unwrap_or(s);
    !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_|~`".contains(&b))
}

/// RFC 1034 host names as PGV checks them: at most 253 characters, labels of 1-63 letters,
/// digits and hyphens that neither start nor end with a hyphen; a trailing dot is allowed.
fn is_hostname(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_use_pgv_wording() {
        let r = NumRange {
            lt: None,
            lte: Some((65535u32, "65535".into())),
            gt: None,
            gte: None,
        };
        assert_eq!(
            r.violation(70000).unwrap(),
            "value must be less than or equal to 65535"
        );
        assert_eq!(r.violation(80), None);
        let r = NumRange {
            lt: Some((10, "10".into())),
            lte: None,
            gt: Some((1, "1".into())),
            gte: None,
        };
        assert_eq!(r.violation(5), None);
        assert!(r.violation(10).unwrap().contains("inside range"));
    }

    #[test]
    fn header_names_and_hostnames() {
        assert!(is_header_name("x-foo"));
        assert!(is_header_name(":authority"));
        assert!(!is_header_name("bad header"));
        assert!(is_hostname("example.com"));
        assert!(!is_hostname("-bad.com"));
    }
}

fn zero_of<T: Default>(_: T) -> T {
    T::default()
}
