//! Access-log filters (`envoy.config.accesslog.v3.AccessLogFilter`): which streams a logger
//! writes. Semantics follow Envoy's `source/common/access_log/access_log_impl.cc`.

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

use http::HeaderName;
use legate_api::pb::envoy::config::accesslog::v3::{
    AccessLogFilter, ComparisonFilter, HeaderFilter, ResponseFlagFilter, RuntimeFilter,
    access_log_filter::FilterSpecifier, comparison_filter::Op,
};
use legate_api::pb::envoy::config::route::v3::{HeaderMatcher, header_matcher};
use legate_api::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher::MatchPattern};
use legate_api::pb::envoy::r#type::v3::fractional_percent::DenominatorType;

use crate::matcher::CompiledStringMatcher;
use crate::runtime::Snapshot;
use crate::stream_info::{RESPONSE_FLAGS, StreamInfo};
use crate::{Compiled, ConfigError, Errors};

/// A compiled access-log filter.
#[derive(Clone, Debug)]
pub enum Filter {
    StatusCode(Comparison),
    Duration(Comparison),
    NotHealthCheck,
    /// Envoy logs only requests traced because the service forced it
    /// (`Tracing::Reason::ServiceForced`); Legate does not trace, so this never matches.
    Traceable,
    Runtime(RuntimeSampling),
    And(Vec<Filter>),
    Or(Vec<Filter>),
    Header(RequestHeaderMatch),
    /// The flags to look for; zero means "any flag".
    ResponseFlag(u32),
}

/// `ComparisonFilter`: `op` against a value that a runtime key may override.
#[derive(Clone, Debug)]
pub struct Comparison {
    op: Op,
    default_value: u64,
    runtime_key: String,
}

/// `RuntimeFilter`.
#[derive(Clone, Debug)]
pub struct RuntimeSampling {
    runtime_key: String,
    numerator: u64,
    denominator: u64,
    use_independent_randomness: bool,
}

/// `HeaderFilter`: an `envoy.config.route.v3.HeaderMatcher` on the request headers.
#[derive(Clone, Debug)]
pub struct RequestHeaderMatch {
    name: String,
    header: Option<HeaderName>,
    rule: HeaderRule,
    invert_match: bool,
    treat_missing_header_as_empty: bool,
}

#[derive(Clone, Debug)]
enum HeaderRule {
    Present(bool),
    /// `[start, end)` over the value read as an integer.
    Range(i64, i64),
    /// The deprecated `exact_match: ""`, which Envoy reads as "any value".
    AnyValue,
    String(CompiledStringMatcher),
}

impl Filter {
    /// Compiles a filter; errors are placed under the oneof field that holds it.
    pub fn compile(proto: &AccessLogFilter) -> Compiled<Filter> {
        let within = |field: &str, r: Compiled<Filter>| {
            r.map_err(|e| e.into_iter().map(|e| e.within(field)).collect::<Vec<_>>())
        };
        let unsupported = |field: &str| {
            Err(vec![ConfigError::new(
                field,
                format!("{field} is not supported by Legate"),
            )])
        };
        match &proto.filter_specifier {
            Some(FilterSpecifier::StatusCodeFilter(f)) => within(
                "status_code_filter",
                comparison(f.comparison.as_ref()).map(Filter::StatusCode),
            ),
            Some(FilterSpecifier::DurationFilter(f)) => within(
                "duration_filter",
                comparison(f.comparison.as_ref()).map(Filter::Duration),
            ),
            Some(FilterSpecifier::NotHealthCheckFilter(_)) => Ok(Filter::NotHealthCheck),
            Some(FilterSpecifier::TraceableFilter(_)) => Ok(Filter::Traceable),
            Some(FilterSpecifier::RuntimeFilter(f)) => {
                within("runtime_filter", runtime(f).map(Filter::Runtime))
            }
            Some(FilterSpecifier::AndFilter(f)) => {
                within("and_filter", list(&f.filters).map(Filter::And))
            }
            Some(FilterSpecifier::OrFilter(f)) => {
                within("or_filter", list(&f.filters).map(Filter::Or))
            }
            Some(FilterSpecifier::HeaderFilter(f)) => {
                within("header_filter", header(f).map(Filter::Header))
            }
            Some(FilterSpecifier::ResponseFlagFilter(f)) => within(
                "response_flag_filter",
                response_flags(f).map(Filter::ResponseFlag),
            ),
            Some(FilterSpecifier::GrpcStatusFilter(_)) => unsupported("grpc_status_filter"),
            Some(FilterSpecifier::ExtensionFilter(_)) => unsupported("extension_filter"),
            Some(FilterSpecifier::MetadataFilter(_)) => unsupported("metadata_filter"),
            Some(FilterSpecifier::LogTypeFilter(_)) => unsupported("log_type_filter"),
            None => Err(vec![ConfigError::new("", "a filter is required")]),
        }
    }

    /// Whether the stream is logged.
    pub fn evaluate(&self, info: &StreamInfo, runtime: &Snapshot) -> bool {
        match self {
            // Envoy compares 0 when no response code was set.
            Filter::StatusCode(c) => c.matches(info.response_code.unwrap_or(0).into(), runtime),
            // `currentDuration()`: the final duration, or the time so far.
            Filter::Duration(c) => {
                let duration = info.duration.unwrap_or_else(|| info.elapsed());
                c.matches(duration.as_millis() as u64, runtime)
            }
            Filter::NotHealthCheck => !info.health_check,
            Filter::Traceable => false,
            Filter::Runtime(r) => r.sampled(info, runtime),
            Filter::And(filters) => filters.iter().all(|f| f.evaluate(info, runtime)),
            Filter::Or(filters) => filters.iter().any(|f| f.evaluate(info, runtime)),
            Filter::Header(h) => h.matches(info),
            Filter::ResponseFlag(0) => !info.response_flags.is_empty(),
            Filter::ResponseFlag(mask) => info.response_flags.0 & mask != 0,
        }
    }
}

fn list(filters: &[AccessLogFilter]) -> Compiled<Vec<Filter>> {
    let mut errors = Errors::default();
    let compiled: Vec<Filter> = filters
        .iter()
        .enumerate()
        .filter_map(|(i, f)| errors.take(&format!("filters[{i}]"), Filter::compile(f)))
        .collect();
    errors.finish(|| compiled)
}

fn comparison(proto: Option<&ComparisonFilter>) -> Compiled<Comparison> {
    let Some(proto) = proto else {
        return Err(vec![ConfigError::new("comparison", "value is required")]);
    };
    let Ok(op) = Op::try_from(proto.op) else {
        return Err(vec![ConfigError::new(
            "comparison.op",
            format!("unknown comparison operator {}", proto.op),
        )]);
    };
    let Some(value) = &proto.value else {
        return Err(vec![ConfigError::new(
            "comparison.value",
            "value is required",
        )]);
    };
    Ok(Comparison {
        op,
        default_value: value.default_value.into(),
        runtime_key: value.runtime_key.clone(),
    })
}

impl Comparison {
    fn matches(&self, lhs: u64, runtime: &Snapshot) -> bool {
        let value = if self.runtime_key.is_empty() {
            self.default_value
        } else {
            runtime.get_integer(&self.runtime_key, self.default_value)
        };
        match self.op {
            Op::Eq => lhs == value,
            Op::Ge => lhs >= value,
            Op::Le => lhs <= value,
            Op::Ne => lhs != value,
        }
    }
}

fn runtime(proto: &RuntimeFilter) -> Compiled<RuntimeSampling> {
    // An unset `percent_sampled` is Envoy's default FractionalPercent: 0 out of 100.
    let (numerator, denominator) = match &proto.percent_sampled {
        Some(p) => {
            let denominator = match DenominatorType::try_from(p.denominator) {
                Ok(DenominatorType::Hundred) => 100,
                Ok(DenominatorType::TenThousand) => 10_000,
                Ok(DenominatorType::Million) => 1_000_000,
                Err(_) => {
                    return Err(vec![ConfigError::new(
                        "percent_sampled.denominator",
                        format!("unknown denominator {}", p.denominator),
                    )]);
                }
            };
            (u64::from(p.numerator), denominator)
        }
        None => (0, 100),
    };
    Ok(RuntimeSampling {
        runtime_key: proto.runtime_key.clone(),
        numerator,
        denominator,
        use_independent_randomness: proto.use_independent_randomness,
    })
}

impl RuntimeSampling {
    fn sampled(&self, info: &StreamInfo, runtime: &Snapshot) -> bool {
        // Envoy samples on the request id (its first 8 hex digits, `UUIDRequestIDExtension::
        // toInteger`) so that every log of one request agrees, unless
        // `use_independent_randomness`, or the id is missing or not hex.
        let from_request_id = if self.use_independent_randomness {
            None
        } else {
            info.request_headers
                .get("x-request-id")
                .and_then(|v| v.as_bytes().get(..8))
                .and_then(|prefix| std::str::from_utf8(prefix).ok())
                .and_then(|prefix| u64::from_str_radix(prefix, 16).ok())
        };
        let random = from_request_id.unwrap_or_else(random_u64);
        runtime.feature_enabled(&self.runtime_key, self.numerator, self.denominator, random)
    }
}

/// A per-thread xorshift generator seeded from the process's random hash keys: sampling needs
/// uniform numbers, not secrets, and no lock or syscall on the logging path.
fn random_u64() -> u64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let mut h = RandomState::new().build_hasher();
            h.write_u64(0x9e37_79b9_7f4a_7c15);
            h.finish() | 1
        });
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        x
    })
}

fn header(proto: &HeaderFilter) -> Compiled<RequestHeaderMatch> {
    let Some(m) = &proto.header else {
        return Err(vec![ConfigError::new("header", "value is required")]);
    };
    header_matcher(m).map_err(|e| e.into_iter().map(|e| e.within("header")).collect())
}

fn header_matcher(m: &HeaderMatcher) -> Compiled<RequestHeaderMatch> {
    use header_matcher::HeaderMatchSpecifier as S;
    let err = |path: &str, msg: String| Err(vec![ConfigError::new(path, msg)]);
    let string = |field: &str, pattern: MatchPattern| {
        CompiledStringMatcher::compile(&StringMatcher {
            match_pattern: Some(pattern),
            ignore_case: false,
        })
        .map(HeaderRule::String)
        .map_err(|e| e.into_iter().map(|e| e.within(field)).collect::<Vec<_>>())
    };
    #[allow(deprecated)] // The `*_match` fields are deprecated but still honoured by Envoy.
    let rule = match &m.header_match_specifier {
        None => HeaderRule::Present(true),
        Some(S::PresentMatch(present)) => HeaderRule::Present(*present),
        Some(S::RangeMatch(r)) => HeaderRule::Range(r.start, r.end),
        Some(S::ExactMatch(v)) if v.is_empty() => HeaderRule::AnyValue,
        Some(S::ExactMatch(v)) => string("exact_match", MatchPattern::Exact(v.clone()))?,
        Some(S::PrefixMatch(v)) => string("prefix_match", MatchPattern::Prefix(v.clone()))?,
        Some(S::SuffixMatch(v)) => string("suffix_match", MatchPattern::Suffix(v.clone()))?,
        Some(S::ContainsMatch(v)) => string("contains_match", MatchPattern::Contains(v.clone()))?,
        Some(S::SafeRegexMatch(r)) => {
            string("safe_regex_match", MatchPattern::SafeRegex(r.clone()))?
        }
        Some(S::StringMatch(sm)) => {
            HeaderRule::String(CompiledStringMatcher::compile(sm).map_err(|e| {
                e.into_iter()
                    .map(|e| e.within("string_match"))
                    .collect::<Vec<_>>()
            })?)
        }
    };
    let name = m.name.to_ascii_lowercase();
    if name.is_empty() {
        return err(
            "name",
            "value length must be at least 1 characters".to_owned(),
        );
    }
    Ok(RequestHeaderMatch {
        header: HeaderName::from_bytes(name.as_bytes()).ok(),
        name,
        rule,
        invert_match: m.invert_match,
        treat_missing_header_as_empty: m.treat_missing_header_as_empty,
    })
}

impl RequestHeaderMatch {
    /// All values of the header joined with `,` (Envoy's `getAllOfHeaderAsString`); the
    /// pseudo-headers come from the request line.
    fn value(&self, info: &StreamInfo) -> Option<String> {
        let line = &info.request;
        let pseudo = match self.name.as_str() {
            ":method" => Some(&*line.method),
            ":path" => Some(line.path.as_str()),
            ":authority" => Some(line.authority.as_str()),
            ":scheme" => Some(&*line.scheme),
            _ => None,
        };
        if let Some(v) = pseudo {
            return (!v.is_empty()).then(|| v.to_owned());
        }
        let name = self.header.as_ref()?;
        let mut values = info.request_headers.get_all(name).iter();
        let first = values.next()?;
        let mut joined = String::from_utf8_lossy(first.as_bytes()).into_owned();
        for v in values {
            joined.push(',');
            joined.push_str(&String::from_utf8_lossy(v.as_bytes()));
        }
        Some(joined)
    }

    fn matches(&self, info: &StreamInfo) -> bool {
        let value = self.value(info);
        if let HeaderRule::Present(present) = self.rule {
            return (value.is_some() == present) != self.invert_match;
        }
        let value = match value {
            Some(v) => v,
            None if self.treat_missing_header_as_empty => String::new(),
            // A missing header never matches, whatever `invert_match` says.
            None => return false,
        };
        let matched = match &self.rule {
            HeaderRule::Present(_) => true,
            HeaderRule::AnyValue => true,
            HeaderRule::Range(start, end) => value
                .trim()
                .parse::<i64>()
                .is_ok_and(|n| n >= *start && n < *end),
            HeaderRule::String(m) => m.matches(&value),
        };
        matched != self.invert_match
    }
}

fn response_flags(proto: &ResponseFlagFilter) -> Compiled<u32> {
    let mut errors = Errors::default();
    let mut mask = 0;
    for (i, flag) in proto.flags.iter().enumerate() {
        match RESPONSE_FLAGS.iter().find(|(_, short, _)| short == flag) {
            Some((bit, _, _)) => mask |= bit,
            None => errors.push(
                &format!("flags[{i}]"),
                format!("value must be in list of Envoy's response flags, got '{flag}'"),
            ),
        }
    }
    errors.finish(|| mask)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::time::Duration;

    use http::HeaderValue;
    use legate_api::pb::envoy::config::accesslog::v3::{
        AndFilter, DurationFilter, NotHealthCheckFilter, OrFilter, StatusCodeFilter,
        TraceableFilter,
    };
    use legate_api::pb::envoy::config::core::v3::RuntimeUInt32;
    use legate_api::pb::envoy::r#type::v3::{FractionalPercent, Int64Range};

    use crate::stream_info::ResponseFlags;

    fn compile(f: FilterSpecifier) -> Filter {
        Filter::compile(&AccessLogFilter {
            filter_specifier: Some(f),
        })
        .unwrap()
    }

    fn cmp(op: Op, value: u32, key: &str) -> Option<ComparisonFilter> {
        Some(ComparisonFilter {
            op: op as i32,
            value: Some(RuntimeUInt32 {
                default_value: value,
                runtime_key: key.into(),
            }),
        })
    }

    fn status(op: Op, value: u32) -> FilterSpecifier {
        FilterSpecifier::StatusCodeFilter(StatusCodeFilter {
            comparison: cmp(op, value, ""),
        })
    }

    fn info_with(code: Option<u16>) -> StreamInfo {
        let mut info = StreamInfo::new(1);
        info.response_code = code;
        info
    }

    #[test]
    fn status_code_filter_compares_with_runtime_override() {
        let rt = Snapshot::default();
        let ge = compile(status(Op::Ge, 500));
        assert!(ge.evaluate(&info_with(Some(503)), &rt));
        assert!(!ge.evaluate(&info_with(Some(200)), &rt));
        let eq0 = compile(status(Op::Eq, 0));
        assert!(eq0.evaluate(&info_with(None), &rt));
        assert!(compile(status(Op::Le, 299)).evaluate(&info_with(Some(204)), &rt));
        assert!(compile(status(Op::Ne, 200)).evaluate(&info_with(Some(204)), &rt));

        let keyed = compile(FilterSpecifier::StatusCodeFilter(StatusCodeFilter {
            comparison: cmp(Op::Ge, 500, "log.min_status"),
        }));
        let rt = Snapshot::from_values(BTreeMap::from([(
            "log.min_status".to_owned(),
            "400".to_owned(),
        )]));
        assert!(keyed.evaluate(&info_with(Some(404)), &rt));
    }

    #[test]
    fn duration_filter_uses_milliseconds() {
        let f = compile(FilterSpecifier::DurationFilter(DurationFilter {
            comparison: cmp(Op::Ge, 100, ""),
        }));
        let mut info = StreamInfo::new(1);
        info.duration = Some(Duration::from_micros(100_500));
        assert!(f.evaluate(&info, &Snapshot::default()));
        info.duration = Some(Duration::from_micros(99_999));
        assert!(!f.evaluate(&info, &Snapshot::default()));
    }

    #[test]
    fn health_check_traceable_and_combinators() {
        let rt = Snapshot::default();
        let not_hc = compile(FilterSpecifier::NotHealthCheckFilter(
            NotHealthCheckFilter {},
        ));
        let mut info = info_with(Some(200));
        assert!(not_hc.evaluate(&info, &rt));
        info.health_check = true;
        assert!(!not_hc.evaluate(&info, &rt));
        let traceable = compile(FilterSpecifier::TraceableFilter(TraceableFilter {}));
        assert!(!traceable.evaluate(&info, &rt));

        let wrap = |s| AccessLogFilter {
            filter_specifier: Some(s),
        };
        let and = compile(FilterSpecifier::AndFilter(AndFilter {
            filters: vec![wrap(status(Op::Ge, 200)), wrap(status(Op::Le, 299))],
        }));
        let or = compile(FilterSpecifier::OrFilter(OrFilter {
            filters: vec![wrap(status(Op::Eq, 404)), wrap(status(Op::Ge, 500))],
        }));
        assert!(and.evaluate(&info_with(Some(204)), &rt));
        assert!(!and.evaluate(&info_with(Some(404)), &rt));
        assert!(or.evaluate(&info_with(Some(404)), &rt));
        assert!(or.evaluate(&info_with(Some(502)), &rt));
        assert!(!or.evaluate(&info_with(Some(200)), &rt));
    }

    #[test]
    fn runtime_filter_samples_on_the_request_id() {
        let f = |n, independent| {
            compile(FilterSpecifier::RuntimeFilter(RuntimeFilter {
                runtime_key: "log.sample".into(),
                percent_sampled: Some(FractionalPercent {
                    numerator: n,
                    denominator: DenominatorType::Hundred as i32,
                }),
                use_independent_randomness: independent,
            }))
        };
        let rt = Snapshot::default();
        let mut info = StreamInfo::new(1);
        // 0x00000031 = 49 -> 49 % 100 = 49.
        info.request_headers.insert(
            "x-request-id",
            HeaderValue::from_static("00000031-cf5c-432b-8c7e-98aeb7988cd2"),
        );
        assert!(f(50, false).evaluate(&info, &rt));
        assert!(!f(49, false).evaluate(&info, &rt));
        // The runtime key overrides the numerator.
        let rt_all = Snapshot::from_values(BTreeMap::from([(
            "log.sample".to_owned(),
            "100".to_owned(),
        )]));
        assert!(f(0, false).evaluate(&info, &rt_all));
        assert!(f(0, true).evaluate(&info, &rt_all));
        assert!(!f(0, true).evaluate(&info, &rt));
        assert!(f(100, true).evaluate(&info, &rt));
        // Without percent_sampled nothing is sampled.
        let none = compile(FilterSpecifier::RuntimeFilter(RuntimeFilter {
            runtime_key: "unset".into(),
            percent_sampled: None,
            use_independent_randomness: false,
        }));
        assert!(!none.evaluate(&info, &rt));
    }

    fn header_filter(m: HeaderMatcher) -> Filter {
        compile(FilterSpecifier::HeaderFilter(HeaderFilter {
            header: Some(m),
        }))
    }

    #[test]
    fn header_filter_follows_envoys_header_matcher() {
        use header_matcher::HeaderMatchSpecifier as S;
        let rt = Snapshot::default();
        let mut info = StreamInfo::new(1);
        info.request.method = "GET".into();
        info.request_headers
            .append("x-debug", HeaderValue::from_static("a"));
        info.request_headers
            .append("x-debug", HeaderValue::from_static("b"));
        info.request_headers
            .insert("x-num", HeaderValue::from_static("42"));
        let m = |name: &str, spec| HeaderMatcher {
            name: name.into(),
            header_match_specifier: spec,
            ..Default::default()
        };
        assert!(header_filter(m("X-Debug", Some(S::PresentMatch(true)))).evaluate(&info, &rt));
        assert!(!header_filter(m("x-none", Some(S::PresentMatch(true)))).evaluate(&info, &rt));
        assert!(header_filter(m("x-none", Some(S::PresentMatch(false)))).evaluate(&info, &rt));
        let exact = StringMatcher {
            match_pattern: Some(MatchPattern::Exact("a,b".into())),
            ignore_case: false,
        };
        assert!(
            header_filter(m("x-debug", Some(S::StringMatch(exact.clone())))).evaluate(&info, &rt)
        );
        let get = StringMatcher {
            match_pattern: Some(MatchPattern::Exact("GET".into())),
            ignore_case: false,
        };
        assert!(header_filter(m(":method", Some(S::StringMatch(get)))).evaluate(&info, &rt));
        let range = Some(S::RangeMatch(Int64Range { start: 40, end: 43 }));
        assert!(header_filter(m("x-num", range.clone())).evaluate(&info, &rt));
        // A missing header does not match, even inverted...
        let mut inverted = m("x-none", Some(S::StringMatch(exact.clone())));
        inverted.invert_match = true;
        assert!(!header_filter(inverted.clone()).evaluate(&info, &rt));
        // ...unless it is read as empty.
        inverted.treat_missing_header_as_empty = true;
        assert!(header_filter(inverted).evaluate(&info, &rt));
    }

    #[test]
    fn response_flag_filter() {
        let rt = Snapshot::default();
        let any = compile(FilterSpecifier::ResponseFlagFilter(ResponseFlagFilter {
            flags: vec![],
        }));
        let uh_uf = compile(FilterSpecifier::ResponseFlagFilter(ResponseFlagFilter {
            flags: vec!["UH".into(), "UF".into()],
        }));
        let mut info = StreamInfo::new(1);
        assert!(!any.evaluate(&info, &rt));
        info.response_flags.set(ResponseFlags::NO_ROUTE_FOUND);
        assert!(any.evaluate(&info, &rt));
        assert!(!uh_uf.evaluate(&info, &rt));
        info.response_flags
            .set(ResponseFlags::UPSTREAM_CONNECTION_FAILURE);
        assert!(uh_uf.evaluate(&info, &rt));

        let bad = Filter::compile(&AccessLogFilter {
            filter_specifier: Some(FilterSpecifier::ResponseFlagFilter(ResponseFlagFilter {
                flags: vec!["UH".into(), "XX".into()],
            })),
        })
        .unwrap_err();
        assert_eq!(bad[0].path, "response_flag_filter.flags[1]");
    }

    #[test]
    fn unsupported_filters_are_refused_with_their_path() {
        use legate_api::pb::envoy::config::accesslog::v3::{AndFilter, GrpcStatusFilter};
        let nested = AccessLogFilter {
            filter_specifier: Some(FilterSpecifier::AndFilter(AndFilter {
                filters: vec![
                    AccessLogFilter {
                        filter_specifier: Some(status(Op::Ge, 500)),
                    },
                    AccessLogFilter {
                        filter_specifier: Some(FilterSpecifier::GrpcStatusFilter(
                            GrpcStatusFilter::default(),
                        )),
                    },
                ],
            })),
        };
        let errors = Filter::compile(&nested).unwrap_err();
        assert_eq!(errors[0].path, "and_filter.filters[1].grpc_status_filter");
    }
}
