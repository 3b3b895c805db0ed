use std::time::{Duration, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue};
use legate_api::pb::envoy::config::core::v3::{
    DataSource, SubstitutionFormatString, TypedExtensionConfig, data_source,
    substitution_format_string,
};
use legate_api::pb::google::protobuf::{ListValue, Struct, Value as ProtoValue, value::Kind};

use super::*;
use crate::stream_info::{Protocol, ResponseFlags};

/// The request of Envoy's documented default-format example.
pub(crate) fn sample_info() -> StreamInfo {
    let mut info = StreamInfo::new(7);
    info.start_time = UNIX_EPOCH + Duration::from_millis(1_460_751_420_310);
    info.protocol = Protocol::Http2;
    info.request.method = "POST".into();
    info.request.path = "/api/v1/locations".into();
    info.request.authority = "locations".into();
    info.request.scheme = "http".into();
    let h = &mut info.request_headers;
    h.insert("x-forwarded-for", HeaderValue::from_static("10.0.35.28"));
    h.insert("user-agent", HeaderValue::from_static("nsq2http"));
    h.insert(
        "x-request-id",
        HeaderValue::from_static("cc21d9b0-cf5c-432b-8c7e-98aeb7988cd2"),
    );
    let mut resp = HeaderMap::new();
    resp.insert(
        "x-envoy-upstream-service-time",
        HeaderValue::from_static("100"),
    );
    info.response_headers = Some(resp);
    info.response_code = Some(204);
    info.response_code_details = Some("via_upstream".into());
    info.bytes_received = 154;
    info.bytes_sent = 0;
    info.duration = Some(Duration::from_micros(226_900));
    info.upstream_host = Some("10.0.2.1:80".parse().unwrap());
    info.upstream_cluster = Some("locations_cluster".into());
    info.downstream_remote_address = Some("10.0.35.28:51000".parse().unwrap());
    info.downstream_direct_remote_address = Some("10.0.0.9:40000".parse().unwrap());
    info.downstream_local_address = Some("[::1]:10000".parse().unwrap());
    info.upstream_local_address = Some("10.0.0.5:33000".parse().unwrap());
    info.route_name = Some("api".into());
    info.attempt_count = 2;
    info
}

fn fmt(format: &str, info: &StreamInfo) -> String {
    Formatter::parse(format)
        .unwrap_or_else(|e| panic!("{format}: {e}"))
        .format(info)
}

#[test]
fn default_format_matches_envoys_example() {
    assert_eq!(
        Formatter::envoy_default().format(&sample_info()),
        "[2016-04-15T20:17:00.310Z] \"POST /api/v1/locations HTTP/2\" 204 - 154 0 226 100 \
         \"10.0.35.28\" \"nsq2http\" \"cc21d9b0-cf5c-432b-8c7e-98aeb7988cd2\" \"locations\" \
         \"10.0.2.1:80\"\n"
    );
}

#[test]
fn default_format_for_a_local_reply_prints_dashes() {
    let mut info = StreamInfo::new(1);
    info.start_time = UNIX_EPOCH;
    info.request.method = "GET".into();
    info.request.path = "/missing".into();
    info.response_code = None;
    info.duration = Some(Duration::ZERO);
    info.response_flags.set(ResponseFlags::NO_ROUTE_FOUND);
    assert_eq!(
        Formatter::envoy_default().format(&info),
        "[1970-01-01T00:00:00.000Z] \"GET /missing HTTP/1.1\" 0 NR 0 0 0 - \"-\" \"-\" \"-\" \"-\" \"-\"\n"
    );
}

#[test]
fn every_operator() {
    let mut info = sample_info();
    info.response_flags
        .set(ResponseFlags::UPSTREAM_CONNECTION_FAILURE);
    info.response_flags
        .set(ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED);
    info.last_downstream_rx_byte = Some(Duration::from_millis(3));
    info.last_upstream_tx_byte = Some(Duration::from_millis(4));
    info.first_upstream_rx_byte = Some(Duration::from_micros(20_700));
    info.last_downstream_tx_byte = Some(Duration::from_millis(30));
    info.upstream_transport_failure_reason = Some("TLS error: bad cert".into());
    info.response_code_details = Some("upstream reset: overflow".into());
    let cases = [
        ("%RESPONSE_CODE%", "204"),
        ("%RESPONSE_CODE_DETAILS%", "upstream_reset:_overflow"),
        (
            "%RESPONSE_CODE_DETAILS(ALLOW_WHITESPACES)%",
            "upstream reset: overflow",
        ),
        ("%RESPONSE_FLAGS%", "UF,URX"),
        (
            "%RESPONSE_FLAGS_LONG%",
            "UpstreamConnectionFailure,UpstreamRetryLimitExceeded",
        ),
        ("%BYTES_RECEIVED%", "154"),
        ("%BYTES_SENT%", "0"),
        ("%DURATION%", "226"),
        ("%REQUEST_DURATION%", "3"),
        ("%REQUEST_TX_DURATION%", "4"),
        ("%RESPONSE_DURATION%", "20"),
        ("%RESPONSE_TX_DURATION%", "9"),
        ("%UPSTREAM_HOST%", "10.0.2.1:80"),
        ("%UPSTREAM_CLUSTER%", "locations_cluster"),
        ("%UPSTREAM_LOCAL_ADDRESS%", "10.0.0.5:33000"),
        ("%UPSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%", "10.0.0.5"),
        ("%UPSTREAM_LOCAL_PORT%", "33000"),
        ("%UPSTREAM_REMOTE_ADDRESS%", "10.0.2.1:80"),
        ("%UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%", "10.0.2.1"),
        ("%UPSTREAM_REMOTE_PORT%", "80"),
        ("%UPSTREAM_TRANSPORT_FAILURE_REASON%", "TLS_error:_bad_cert"),
        ("%DOWNSTREAM_REMOTE_ADDRESS%", "10.0.35.28:51000"),
        ("%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%", "10.0.35.28"),
        ("%DOWNSTREAM_REMOTE_PORT%", "51000"),
        ("%DOWNSTREAM_DIRECT_REMOTE_ADDRESS%", "10.0.0.9:40000"),
        (
            "%DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT%",
            "10.0.0.9",
        ),
        ("%DOWNSTREAM_DIRECT_REMOTE_PORT%", "40000"),
        ("%DOWNSTREAM_LOCAL_ADDRESS%", "[::1]:10000"),
        ("%DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%", "::1"),
        ("%DOWNSTREAM_LOCAL_PORT%", "10000"),
        ("%CONNECTION_ID%", "7"),
        ("%PROTOCOL%", "HTTP/2"),
        ("%ROUTE_NAME%", "api"),
        ("%UPSTREAM_REQUEST_ATTEMPT_COUNT%", "2"),
        ("%REQUESTED_SERVER_NAME%", "-"),
        ("%START_TIME%", "2016-04-15T20:17:00.310Z"),
        ("%START_TIME(%s.%3f)%", "1460751420.310"),
        (
            "%REQ(:METHOD)% %REQ(:path)% %REQ(:AUTHORITY)% %REQ(:scheme)%",
            "POST /api/v1/locations locations http",
        ),
        ("%REQ(User-Agent)%", "nsq2http"),
        ("%RESP(:STATUS)%", "204"),
        ("%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%", "100"),
        ("%TRAILER(GRPC-STATUS)%", "-"),
        ("100%% %PROTOCOL%%%", "100% HTTP/2%"),
        ("no operators", "no operators"),
        ("", ""),
    ];
    for (format, expected) in cases {
        assert_eq!(fmt(format, &info), expected, "{format}");
    }
    let hostname = fmt("%HOSTNAME%", &info);
    assert!(!hostname.is_empty() && hostname != "-");
}

#[test]
fn unset_values_print_dash_or_nothing() {
    let info = StreamInfo::new(1);
    for format in [
        "%REQUEST_DURATION%",
        "%RESPONSE_DURATION%",
        "%RESPONSE_TX_DURATION%",
        "%UPSTREAM_HOST%",
        "%UPSTREAM_CLUSTER%",
        "%ROUTE_NAME%",
        "%RESPONSE_CODE_DETAILS%",
        "%DOWNSTREAM_REMOTE_PORT%",
        "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
        "%RESP(X-FOO)%",
        "%TRAILER(X-FOO)%",
    ] {
        assert_eq!(fmt(format, &info), "-", "{format}");
        let omit = Formatter::parse_with(format, true).unwrap();
        assert_eq!(omit.format(&info), "", "{format}");
    }
    assert_eq!(fmt("%RESPONSE_CODE% %RESPONSE_FLAGS%", &info), "0 -");
    let header = Formatter::parse("x-%DOWNSTREAM_REMOTE_ADDRESS%").unwrap();
    assert_eq!(header.format_with(&info, ""), "x-");
}

#[test]
fn alternative_headers_and_truncation() {
    let mut info = sample_info();
    assert_eq!(
        fmt("%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%", &info),
        "/api/v1/locations"
    );
    info.request_headers.insert(
        "x-envoy-original-path",
        HeaderValue::from_static("/original"),
    );
    assert_eq!(
        fmt("%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%", &info),
        "/original"
    );
    assert_eq!(fmt("%REQ(X-MISSING?USER-AGENT)%", &info), "nsq2http");
    assert_eq!(fmt("%REQ(X-MISSING?X-ALSO-MISSING)%", &info), "-");
    assert_eq!(fmt("%REQ(USER-AGENT):3%", &info), "nsq");
    assert_eq!(fmt("%REQ(USER-AGENT):0%", &info), "");
    assert_eq!(fmt("%REQ(USER-AGENT):100%", &info), "nsq2http");
    assert_eq!(fmt("%REQ(X-MISSING?:PATH):4%", &info), "/api");
    info.request_headers
        .insert("x-utf8", HeaderValue::from_str("é!").unwrap());
    // A cut inside a character moves back to its start.
    assert_eq!(fmt("%REQ(X-UTF8):1%", &info), "");
    // An empty header is found (and prints empty), as in Envoy.
    info.request_headers
        .insert("x-empty", HeaderValue::from_static(""));
    assert_eq!(fmt("[%REQ(X-EMPTY?USER-AGENT)%]", &info), "[]");
}

#[test]
fn parse_errors_use_envoys_messages() {
    let cases = [
        ("%FOO%", "Not supported field in StreamInfo: FOO"),
        (
            "%UPSTREAM_SERVICE_TIME%",
            "Not supported field in StreamInfo: UPSTREAM_SERVICE_TIME",
        ),
        (
            "%REQUEST_PROTOCOL%",
            "Not supported field in StreamInfo: REQUEST_PROTOCOL",
        ),
        (
            "abc %protocol%",
            "Incorrect configuration: abc %protocol%. Couldn't find valid command at position 4",
        ),
        (
            "%PROTOCOL",
            "Incorrect configuration: %PROTOCOL. Couldn't find valid command at position 0",
        ),
        ("%REQ%", "REQ requires parameters"),
        ("%REQ()%", "REQ requires parameters"),
        (
            "%REQ(A?B?C)%",
            "More than 1 alternative header specified in token: A?B?C",
        ),
        (
            "%PROTOCOL(X)%",
            "PROTOCOL does not take any parameters or length",
        ),
        (
            "%PROTOCOL:3%",
            "PROTOCOL does not take any parameters or length",
        ),
        (
            "%START_TIME:3%",
            "START_TIME does not allow length to be specified.",
        ),
        (
            "%START_TIME(%Y%n)%",
            "Invalid header configuration. Format string contains newline.",
        ),
        (
            "%FILTER_STATE(x)%",
            "%FILTER_STATE% is an Envoy command operator that Legate does not support yet",
        ),
    ];
    for (format, message) in cases {
        assert_eq!(Formatter::parse(format).unwrap_err(), message, "{format}");
    }
    // A newline inside the argument cannot match Envoy's command syntax at all.
    assert!(
        Formatter::parse("%REQ(A\nB)%")
            .unwrap_err()
            .contains("Couldn't find valid command")
    );
}

#[test]
fn literal_formats_are_recognised() {
    assert_eq!(
        Formatter::parse("abc%%").unwrap().as_literal(),
        Some("abc%")
    );
    assert_eq!(Formatter::parse("").unwrap().as_literal(), Some(""));
    assert_eq!(Formatter::parse("%PROTOCOL%").unwrap().as_literal(), None);
}

fn s(v: &str) -> ProtoValue {
    ProtoValue {
        kind: Some(Kind::StringValue(v.into())),
    }
}

fn object(fields: Vec<(&str, ProtoValue)>) -> Struct {
    Struct {
        fields: fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
    }
}

#[test]
fn json_values_keep_envoys_types_and_sorted_keys() {
    let format = object(vec![
        ("status", s("%RESPONSE_CODE%")),
        ("bytes", s("%BYTES_RECEIVED%")),
        ("duration", s("%DURATION%")),
        ("port", s("%DOWNSTREAM_REMOTE_PORT%")),
        ("host", s("%UPSTREAM_HOST%")),
        ("missing", s("%ROUTE_NAME%")),
        ("mixed", s("code=%RESPONSE_CODE% route=%RESP(X-NONE)%")),
        ("literal", s("plain \"text\"")),
        ("escaped", s("100%%")),
        (
            "number",
            ProtoValue {
                kind: Some(Kind::NumberValue(2.0)),
            },
        ),
        (
            "float",
            ProtoValue {
                kind: Some(Kind::NumberValue(2.5)),
            },
        ),
        (
            "flag",
            ProtoValue {
                kind: Some(Kind::BoolValue(true)),
            },
        ),
        (
            "nothing",
            ProtoValue {
                kind: Some(Kind::NullValue(0)),
            },
        ),
        (
            "nested",
            ProtoValue {
                kind: Some(Kind::StructValue(object(vec![
                    ("z", s("%PROTOCOL%")),
                    ("a", s("%REQ(:METHOD)%")),
                ]))),
            },
        ),
        (
            "list",
            ProtoValue {
                kind: Some(Kind::ListValue(ListValue {
                    values: vec![s("%RESPONSE_CODE%"), s("x")],
                })),
            },
        ),
    ]);
    let mut info = sample_info();
    info.route_name = None;
    let json = JsonFormatter::compile(&format, false).unwrap();
    assert_eq!(
        json.format(&info),
        "{\"bytes\":154,\"duration\":226,\"escaped\":\"100%\",\"flag\":true,\"float\":2.5,\
         \"host\":\"10.0.2.1:80\",\"list\":[204,\"x\"],\"literal\":\"plain \\\"text\\\"\",\
         \"missing\":null,\"mixed\":\"code=204 route=-\",\"nested\":{\"a\":\"POST\",\"z\":\"HTTP/2\"},\
         \"nothing\":null,\"number\":2,\"port\":51000,\"status\":204}\n"
    );
}

#[test]
fn json_omit_empty_values_drops_nulls_and_emptied_objects() {
    let format = object(vec![
        ("route", s("%ROUTE_NAME%")),
        ("mixed", s("r=%ROUTE_NAME%")),
        ("code", s("%RESPONSE_CODE%")),
        (
            "inner",
            ProtoValue {
                kind: Some(Kind::StructValue(object(vec![(
                    "c",
                    s("%UPSTREAM_CLUSTER%"),
                )]))),
            },
        ),
    ]);
    let info = StreamInfo::new(1);
    let json = JsonFormatter::compile(&format, true).unwrap();
    assert_eq!(json.format(&info), "{\"code\":0,\"mixed\":\"r=\"}\n");
    let empty = JsonFormatter::compile(&object(vec![("r", s("%ROUTE_NAME%"))]), true).unwrap();
    assert_eq!(empty.format(&info), "{}\n");
}

#[test]
fn json_errors_name_the_key() {
    let format = object(vec![(
        "outer",
        ProtoValue {
            kind: Some(Kind::StructValue(object(vec![("bad", s("%NOPE%"))]))),
        },
    )]);
    let errors = JsonFormatter::compile(&format, false).unwrap_err();
    assert_eq!(errors[0].path, "outer.bad");
    assert_eq!(errors[0].message, "Not supported field in StreamInfo: NOPE");
}

#[test]
fn format_string_proto_compiles_each_kind() {
    let text = SubstitutionFormatString {
        format: Some(substitution_format_string::Format::TextFormatSource(
            DataSource {
                specifier: Some(data_source::Specifier::InlineString(
                    "%RESPONSE_CODE% %ROUTE_NAME%\n".into(),
                )),
                ..Default::default()
            },
        )),
        omit_empty_values: true,
        ..Default::default()
    };
    let compiled = FormatString::compile(&text).unwrap();
    assert_eq!(compiled.content_type, "text/plain");
    assert_eq!(compiled.format(&StreamInfo::new(1)), "0 \n");

    let json = SubstitutionFormatString {
        format: Some(substitution_format_string::Format::JsonFormat(object(
            vec![("c", s("%RESPONSE_CODE%"))],
        ))),
        content_type: "application/x-custom".into(),
        ..Default::default()
    };
    let compiled = FormatString::compile(&json).unwrap();
    assert_eq!(compiled.content_type, "application/x-custom");
    assert_eq!(compiled.format(&StreamInfo::new(1)), "{\"c\":0}\n");

    let bad = SubstitutionFormatString {
        format: Some(substitution_format_string::Format::TextFormatSource(
            DataSource {
                specifier: Some(data_source::Specifier::InlineString("%BAD%".into())),
                ..Default::default()
            },
        )),
        ..Default::default()
    };
    let errors = FormatString::compile(&bad).unwrap_err();
    assert_eq!(errors[0].path, "text_format_source.inline_string");

    let with_formatters = SubstitutionFormatString {
        formatters: vec![TypedExtensionConfig {
            name: "envoy.formatter.cel".into(),
            typed_config: None,
        }],
        ..text
    };
    let errors = FormatString::compile(&with_formatters).unwrap_err();
    assert_eq!(errors[0].path, "formatters[0]");
}

/// `%DYNAMIC_METADATA%` as Envoy 1.40 printed it for a connection whose PROXY header carried a
/// TLV its proxy_protocol filter stores (`vpce`), in text and JSON formats.
#[test]
fn dynamic_metadata_prints_strings_and_structs() {
    let mut info = StreamInfo::new(1);
    let mut metadata = crate::metadata::DynamicMetadata::default();
    let ns = "envoy.filters.listener.proxy_protocol";
    metadata.insert_first(ns, "vpce", "vpce-123".into());
    info.dynamic_metadata = Some(std::sync::Arc::new(metadata));
    let text = format!(
        "[%DYNAMIC_METADATA({ns}:vpce)%] [%DYNAMIC_METADATA({ns})%] [%DYNAMIC_METADATA({ns}):5%] \
         [%DYNAMIC_METADATA({ns}:vpce):3%] [%DYNAMIC_METADATA({ns}:vpce:x)%] [%DYNAMIC_METADATA(nope)%]"
    );
    assert_eq!(
        fmt(&text, &info),
        r#"[vpce-123] [{"vpce":"vpce-123"}] [{"vpc] [vpc] [-] [-]"#
    );
    let format = object(vec![
        ("a", s(&format!("%DYNAMIC_METADATA({ns}:vpce)%"))),
        ("b", s(&format!("%DYNAMIC_METADATA({ns})%"))),
        ("c", s(&format!("%DYNAMIC_METADATA({ns}):5%"))),
        ("d", s(&format!("%DYNAMIC_METADATA({ns}:vpce):3%"))),
        ("e", s(&format!("x %DYNAMIC_METADATA({ns})% y"))),
        ("f", s("%DYNAMIC_METADATA(nope)%")),
    ]);
    let json = JsonFormatter::compile(&format, false).unwrap();
    assert_eq!(
        json.format(&info),
        r#"{"a":"vpce-123","b":{"vpce":"vpce-123"},"c":{"vpce":"vpce-123"},"d":"vpc","e":"x {\"vpce\":\"vpce-123\"} y","f":null}"#.to_owned() + "\n"
    );
    // A stream without metadata (every HTTP stream: a connection's is not theirs).
    assert_eq!(fmt(&text, &StreamInfo::new(2)), "[-] [-] [-] [-] [-] [-]");
    assert_eq!(
        Formatter::parse("%DYNAMIC_METADATA%").err().as_deref(),
        Some("DYNAMIC_METADATA requires parameters")
    );
}

/// `%EMIT_TIME%`, `%START_TIME_LOCAL%`, `%EMIT_TIME_LOCAL%` and `%ENVIRONMENT%`, as Envoy 1.40
/// printed them side by side (TZ=Asia/Kolkata): `[2026-11-27T03:37:04.313Z]
/// [2026-11-27T09:07:04.313+0530] [2026-11-27T03:37:04.314Z] [2026-11-27T09:07:04.314+0530]`; an
/// unset variable is the string `-`, in JSON too.
#[test]
fn emit_time_local_times_and_the_environment() {
    let info = sample_info();
    let start = fmt("%START_TIME%", &info);
    assert_eq!(start, "2016-04-15T20:17:00.310Z");
    // Local: the same instant in the machine's zone, with its offset.
    let local = fmt("%START_TIME_LOCAL%", &info);
    let expected = chrono::DateTime::<chrono::Local>::from(info.start_time)
        .format("%Y-%m-%dT%H:%M:%S%.3f%z")
        .to_string();
    assert_eq!(local, expected);
    assert!(
        local.len() == 28 && matches!(&local[23..24], "+" | "-"),
        "{local}"
    );
    // Emitted now, not at the stream's start.
    let emitted: i64 = fmt("%EMIT_TIME(%s)%", &info).parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((now - emitted).abs() <= 1, "{emitted} vs {now}");
    assert_eq!(fmt("%EMIT_TIME%", &info).len(), start.len());
    assert!(fmt("%EMIT_TIME_LOCAL%", &info).len() == 28);

    let path = std::env::var("PATH").unwrap();
    assert_eq!(fmt("%ENVIRONMENT(PATH)%", &info), path);
    assert_eq!(fmt("%ENVIRONMENT(PATH):3%", &info), &path[..3]);
    assert_eq!(fmt("%ENVIRONMENT(LEGATE_NEVER_SET_ANYWHERE)%", &info), "-");
    let format = object(vec![
        ("unset", s("%ENVIRONMENT(LEGATE_NEVER_SET_ANYWHERE)%")),
        ("path", s("%ENVIRONMENT(PATH):3%")),
    ]);
    let json = JsonFormatter::compile(&format, false).unwrap();
    assert_eq!(
        json.format(&info),
        format!("{{\"path\":\"{}\",\"unset\":\"-\"}}\n", &path[..3])
    );
    assert_eq!(
        Formatter::parse("%ENVIRONMENT%").err().as_deref(),
        Some("ENVIRONMENT requires parameters")
    );
}

/// `%UNIQUE_ID%` is a new version 4 UUID each time; `%DOWNSTREAM_DIRECT_LOCAL_ADDRESS%` is the
/// local address unless a listener filter restored another; `%FILTER_CHAIN_NAME%` is `-`
/// for a chain without a name; `%UPSTREAM_CLUSTER_RAW%` is the cluster's name (as Envoy 1.40
/// printed them side by side).
#[test]
fn unique_id_direct_local_address_and_filter_chain_name() {
    let mut info = sample_info();
    let a = fmt("%UNIQUE_ID%", &info);
    let b = fmt("%UNIQUE_ID%", &info);
    assert_ne!(a, b);
    assert_eq!(a.len(), 36);
    assert_eq!(&a[14..15], "4", "{a}");
    assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"), "{a}");
    info.downstream_local_address = Some("198.51.100.9:8443".parse().unwrap());
    let direct = "%DOWNSTREAM_DIRECT_LOCAL_ADDRESS% %DOWNSTREAM_DIRECT_LOCAL_ADDRESS_WITHOUT_PORT% %DOWNSTREAM_DIRECT_LOCAL_PORT% %FILTER_CHAIN_NAME%";
    assert_eq!(fmt(direct, &info), "198.51.100.9:8443 198.51.100.9 8443 -");
    info.downstream_direct_local_address = Some("127.0.0.1:10000".parse().unwrap());
    info.filter_chain_name = Some("named-chain".into());
    assert_eq!(
        fmt(direct, &info),
        "127.0.0.1:10000 127.0.0.1 10000 named-chain"
    );
    assert_eq!(
        fmt("%UPSTREAM_CLUSTER_RAW%", &info),
        fmt("%UPSTREAM_CLUSTER%", &info)
    );
    // Unset until the request reaches an upstream connection.
    assert_eq!(fmt("%UPSTREAM_PROTOCOL%", &info), "-");
    info.upstream_protocol = Some(Protocol::Http2);
    assert_eq!(fmt("%UPSTREAM_PROTOCOL%", &info), "HTTP/2");
}
