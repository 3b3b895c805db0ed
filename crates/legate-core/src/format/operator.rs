//! The command operators (`%COMMAND(ARG):LENGTH%`) Legate implements, how each is parsed from
//! its parts, and what it reads from a [`StreamInfo`].
//!
//! Envoy's tables live in `source/common/formatter/stream_info_formatter.cc` and
//! `http_specific_formatter.cc`. Each operator yields either nothing (unset: `-` in text, `null`
//! in JSON), a string, or a number: Envoy's `format()` / `formatValue()` pair. Which operators
//! are numbers (and so JSON numbers) follows Envoy: the `UInt64` ones (`%RESPONSE_CODE%`,
//! `%BYTES_*%`, `%CONNECTION_ID%`, `%UPSTREAM_REQUEST_ATTEMPT_COUNT%`), the durations and the
//! `*_PORT` ones.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use http::HeaderName;

use super::time::TimeFormat;
use crate::metadata::Lookup;
use crate::stream_info::StreamInfo;

/// The value of one operator for one stream.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Value<'a> {
    Str(Cow<'a, str>),
    Int(i128),
    /// A JSON object (a metadata namespace): nested as it is in a JSON format; in a text
    /// format its JSON text, cut to `text_max` bytes.
    Object {
        json: String,
        text_max: Option<usize>,
    },
}

impl Value<'_> {
    /// Appends the value as text.
    pub(crate) fn push_text(&self, out: &mut String) {
        match self {
            Value::Str(s) => out.push_str(s),
            Value::Int(n) => {
                use std::fmt::Write;
                let _ = write!(out, "{n}");
            }
            Value::Object { json, text_max } => match text_max {
                Some(max) => out.push_str(&truncate(Cow::Borrowed(json), *max)),
                None => out.push_str(json),
            },
        }
    }
}

/// Which part of a socket address an operator prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AddressPart {
    /// `10.0.0.1:80`, `[::1]:80`.
    Full,
    /// `10.0.0.1`, `::1`.
    Ip,
    /// `80`, a number in JSON.
    Port,
}

/// Whose headers `%REQ%`, `%RESP%` and `%TRAILER%` read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HeaderSource {
    Request,
    Response,
    ResponseTrailer,
}

/// A header name as the operators look it up: pseudo-headers are read from the request line,
/// other names are parsed once here so the lookup does not re-parse per stream.
#[derive(Clone, Debug)]
pub(crate) enum HeaderKey {
    Method,
    Path,
    Authority,
    Scheme,
    Status,
    Named(HeaderName),
    /// A name no header can have (Envoy accepts it and never finds it).
    Never,
}

impl HeaderKey {
    fn new(name: &str) -> Self {
        match name {
            ":method" => HeaderKey::Method,
            ":path" => HeaderKey::Path,
            ":authority" => HeaderKey::Authority,
            ":scheme" => HeaderKey::Scheme,
            ":status" => HeaderKey::Status,
            _ => HeaderName::from_bytes(name.as_bytes()).map_or(HeaderKey::Never, HeaderKey::Named),
        }
    }
}

/// `%REQ(MAIN?ALTERNATIVE):LENGTH%` and friends.
#[derive(Clone, Debug)]
pub(crate) struct HeaderLookup {
    source: HeaderSource,
    main: HeaderKey,
    alternative: Option<HeaderKey>,
    max_length: Option<usize>,
}

/// One compiled command operator.
#[derive(Clone, Debug)]
pub(crate) enum Operator {
    /// `%LOCAL_REPLY_BODY%`: the body of a local reply, for `local_reply_config.body_format`.
    LocalReplyBody,
    StartTime(TimeFormat),
    /// `%EMIT_TIME%`: when the line is written.
    EmitTime(TimeFormat),
    /// `%ENVIRONMENT(NAME):Z%`: read once when the format is compiled, as Envoy does; `-`
    /// (a string, also in JSON) when unset.
    Environment(String),
    Header(HeaderLookup),
    ResponseCode,
    ResponseCodeDetails {
        allow_whitespaces: bool,
    },
    ResponseFlags,
    ResponseFlagsLong,
    BytesReceived,
    BytesSent,
    Duration,
    RequestDuration,
    RequestTxDuration,
    ResponseDuration,
    ResponseTxDuration,
    UpstreamHost,
    UpstreamCluster,
    UpstreamProtocol,
    UpstreamLocalAddress(AddressPart),
    UpstreamRemoteAddress(AddressPart),
    UpstreamTransportFailureReason,
    DownstreamRemoteAddress(AddressPart),
    DownstreamDirectRemoteAddress(AddressPart),
    DownstreamLocalAddress(AddressPart),
    DownstreamDirectLocalAddress(AddressPart),
    FilterChainName,
    /// `%UNIQUE_ID%`: a new UUID each time.
    UniqueId,
    ConnectionId,
    Protocol,
    /// `%ACCESS_LOG_TYPE%`.
    AccessLogType,
    RouteName,
    UpstreamRequestAttemptCount,
    /// Read once when the format is compiled, as Envoy does.
    Hostname(Option<String>),
    RequestedServerName,
    TlsJa3Fingerprint,
    TlsJa4Fingerprint,
    /// `%DOWNSTREAM_PEER_*%`, `%DOWNSTREAM_LOCAL_*%`, `%DOWNSTREAM_TLS_*%`.
    DownstreamTls(TlsField),
    /// `%DOWNSTREAM_PEER_CERT_V_START(FORMAT)%` (`end` false) and `..._V_END(FORMAT)%`.
    DownstreamPeerCertValidity {
        end: bool,
        format: TimeFormat,
    },
    /// `%DYNAMIC_METADATA(NAMESPACE:KEY*):Z%`.
    DynamicMetadata {
        namespace: String,
        keys: Vec<String>,
        max_length: Option<usize>,
    },
}

/// What a downstream TLS operator prints (Envoy's `Ssl::ConnectionInfo` accessors). Each is
/// unset on a plaintext connection and when empty (no client certificate, no such SAN).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TlsField {
    PeerUriSan,
    PeerDnsSan,
    PeerIpSan,
    PeerEmailSan,
    PeerOthernameSan,
    LocalUriSan,
    LocalDnsSan,
    LocalIpSan,
    LocalEmailSan,
    LocalOthernameSan,
    PeerSubject,
    LocalSubject,
    PeerIssuer,
    Version,
    Cipher,
    PeerFingerprint256,
    PeerFingerprint1,
    PeerSerial,
    PeerChainFingerprints256,
    PeerChainFingerprints1,
    PeerChainSerials,
    PeerCert,
}

impl TlsField {
    fn by_name(command: &str) -> Option<TlsField> {
        use TlsField::*;
        Some(match command {
            "DOWNSTREAM_PEER_URI_SAN" => PeerUriSan,
            "DOWNSTREAM_PEER_DNS_SAN" => PeerDnsSan,
            "DOWNSTREAM_PEER_IP_SAN" => PeerIpSan,
            "DOWNSTREAM_PEER_EMAIL_SAN" => PeerEmailSan,
            "DOWNSTREAM_PEER_OTHERNAME_SAN" => PeerOthernameSan,
            "DOWNSTREAM_LOCAL_URI_SAN" => LocalUriSan,
            "DOWNSTREAM_LOCAL_DNS_SAN" => LocalDnsSan,
            "DOWNSTREAM_LOCAL_IP_SAN" => LocalIpSan,
            "DOWNSTREAM_LOCAL_EMAIL_SAN" => LocalEmailSan,
            "DOWNSTREAM_LOCAL_OTHERNAME_SAN" => LocalOthernameSan,
            "DOWNSTREAM_PEER_SUBJECT" => PeerSubject,
            "DOWNSTREAM_LOCAL_SUBJECT" => LocalSubject,
            "DOWNSTREAM_PEER_ISSUER" => PeerIssuer,
            "DOWNSTREAM_TLS_VERSION" => Version,
            "DOWNSTREAM_TLS_CIPHER" => Cipher,
            "DOWNSTREAM_PEER_FINGERPRINT_256" => PeerFingerprint256,
            "DOWNSTREAM_PEER_FINGERPRINT_1" => PeerFingerprint1,
            "DOWNSTREAM_PEER_SERIAL" => PeerSerial,
            "DOWNSTREAM_PEER_CHAIN_FINGERPRINTS_256" => PeerChainFingerprints256,
            "DOWNSTREAM_PEER_CHAIN_FINGERPRINTS_1" => PeerChainFingerprints1,
            "DOWNSTREAM_PEER_CHAIN_SERIALS" => PeerChainSerials,
            "DOWNSTREAM_PEER_CERT" => PeerCert,
            _ => return None,
        })
    }

    /// The value for a TLS connection; empty means unset, as Envoy's
    /// `sslConnectionInfoStringHandler` treats an empty string. Lists are joined with `,`.
    fn value(self, tls: &crate::x509::TlsInfo) -> Cow<'_, str> {
        fn borrow(v: Option<&String>) -> Cow<'_, str> {
            v.map_or(Cow::Borrowed(""), |s| Cow::Borrowed(s.as_str()))
        }
        use TlsField::*;
        let peer = || tls.peer();
        let local = || tls.local();
        let join = |v: Option<&Vec<String>>| Cow::Owned(v.map(|v| v.join(",")).unwrap_or_default());
        match self {
            PeerUriSan => join(peer().map(|c| &c.uri_sans)),
            PeerDnsSan => join(peer().map(|c| &c.dns_sans)),
            PeerIpSan => join(peer().map(|c| &c.ip_sans)),
            PeerEmailSan => join(peer().map(|c| &c.email_sans)),
            PeerOthernameSan => join(peer().map(|c| &c.othername_sans)),
            LocalUriSan => join(local().map(|c| &c.uri_sans)),
            LocalDnsSan => join(local().map(|c| &c.dns_sans)),
            LocalIpSan => join(local().map(|c| &c.ip_sans)),
            LocalEmailSan => join(local().map(|c| &c.email_sans)),
            LocalOthernameSan => join(local().map(|c| &c.othername_sans)),
            PeerSubject => borrow(peer().map(|c| &c.subject)),
            LocalSubject => borrow(local().map(|c| &c.subject)),
            PeerIssuer => borrow(peer().map(|c| &c.issuer)),
            Version => Cow::Borrowed(tls.version),
            Cipher => Cow::Borrowed(tls.cipher),
            PeerFingerprint256 => borrow(peer().map(|c| &c.sha256)),
            PeerFingerprint1 => borrow(peer().map(|c| &c.sha1)),
            PeerSerial => borrow(peer().map(|c| &c.serial)),
            PeerChainFingerprints256 => Cow::Owned(
                tls.peer_chain()
                    .map(|c| c.sha256.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            PeerChainFingerprints1 => Cow::Owned(
                tls.peer_chain()
                    .map(|c| c.sha1.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            PeerChainSerials => Cow::Owned(
                tls.peer_chain()
                    .map(|c| c.serial.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            PeerCert => Cow::Owned(peer().map(|c| c.url_encoded_pem()).unwrap_or_default()),
        }
    }
}

/// How an operator may be written (Envoy's `CommandSyntaxChecker` flags).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Syntax {
    CommandOnly,
    ParamsOptional,
    ParamsRequiredLengthAllowed,
}

/// Builds the operator `command` from its argument and length, with Envoy's error messages.
/// `Ok(None)` means the name is not an operator Legate implements.
pub(crate) fn parse(
    command: &str,
    argument: &str,
    max_length: Option<usize>,
) -> Result<Option<Operator>, String> {
    let (syntax, op) = match command {
        "REQ" | "RESP" | "TRAILER" => {
            let source = match command {
                "REQ" => HeaderSource::Request,
                "RESP" => HeaderSource::Response,
                _ => HeaderSource::ResponseTrailer,
            };
            verify(
                Syntax::ParamsRequiredLengthAllowed,
                command,
                argument,
                max_length,
            )?;
            return header_lookup(source, argument, max_length).map(|h| Some(Operator::Header(h)));
        }
        "START_TIME" | "START_TIME_LOCAL" | "EMIT_TIME" | "EMIT_TIME_LOCAL" => {
            verify(Syntax::ParamsOptional, command, argument, max_length)?;
            let mut format = TimeFormat::parse(argument)?;
            if command.ends_with("_LOCAL") {
                format = format.local();
            }
            return Ok(Some(if command.starts_with("EMIT") {
                Operator::EmitTime(format)
            } else {
                Operator::StartTime(format)
            }));
        }
        "ENVIRONMENT" => {
            verify(
                Syntax::ParamsRequiredLengthAllowed,
                command,
                argument,
                max_length,
            )?;
            let value = std::env::var(argument).unwrap_or_else(|_| "-".to_owned());
            let value = match max_length {
                Some(max) => truncate(Cow::Owned(value), max).into_owned(),
                None => value,
            };
            return Ok(Some(Operator::Environment(value)));
        }
        "RESPONSE_CODE_DETAILS" => (
            Syntax::ParamsOptional,
            Operator::ResponseCodeDetails {
                allow_whitespaces: argument == "ALLOW_WHITESPACES",
            },
        ),
        "RESPONSE_CODE" => (Syntax::CommandOnly, Operator::ResponseCode),
        "RESPONSE_FLAGS" => (Syntax::CommandOnly, Operator::ResponseFlags),
        "RESPONSE_FLAGS_LONG" => (Syntax::CommandOnly, Operator::ResponseFlagsLong),
        "BYTES_RECEIVED" => (Syntax::CommandOnly, Operator::BytesReceived),
        "BYTES_SENT" => (Syntax::CommandOnly, Operator::BytesSent),
        "DURATION" => (Syntax::CommandOnly, Operator::Duration),
        "REQUEST_DURATION" => (Syntax::CommandOnly, Operator::RequestDuration),
        "REQUEST_TX_DURATION" => (Syntax::CommandOnly, Operator::RequestTxDuration),
        "RESPONSE_DURATION" => (Syntax::CommandOnly, Operator::ResponseDuration),
        "RESPONSE_TX_DURATION" => (Syntax::CommandOnly, Operator::ResponseTxDuration),
        "UPSTREAM_HOST" => (Syntax::CommandOnly, Operator::UpstreamHost),
        "UPSTREAM_CLUSTER" => (Syntax::CommandOnly, Operator::UpstreamCluster),
        "UPSTREAM_PROTOCOL" => (Syntax::CommandOnly, Operator::UpstreamProtocol),
        "UPSTREAM_TRANSPORT_FAILURE_REASON" => (
            Syntax::CommandOnly,
            Operator::UpstreamTransportFailureReason,
        ),
        "FILTER_CHAIN_NAME" => (Syntax::CommandOnly, Operator::FilterChainName),
        "UNIQUE_ID" => (Syntax::CommandOnly, Operator::UniqueId),
        // The cluster's own name: `alt_stat_name` (which Envoy's `%UPSTREAM_CLUSTER%` may
        // print instead) is refused, so both print the name.
        "UPSTREAM_CLUSTER_RAW" => (Syntax::CommandOnly, Operator::UpstreamCluster),
        "CONNECTION_ID" => (Syntax::CommandOnly, Operator::ConnectionId),
        "PROTOCOL" => (Syntax::CommandOnly, Operator::Protocol),
        "ACCESS_LOG_TYPE" => (Syntax::CommandOnly, Operator::AccessLogType),
        "ROUTE_NAME" => (Syntax::CommandOnly, Operator::RouteName),
        "LOCAL_REPLY_BODY" => (Syntax::CommandOnly, Operator::LocalReplyBody),
        "UPSTREAM_REQUEST_ATTEMPT_COUNT" => {
            (Syntax::CommandOnly, Operator::UpstreamRequestAttemptCount)
        }
        "HOSTNAME" => (Syntax::CommandOnly, Operator::Hostname(hostname())),
        "REQUESTED_SERVER_NAME" => (Syntax::CommandOnly, Operator::RequestedServerName),
        "TLS_JA3_FINGERPRINT" => (Syntax::CommandOnly, Operator::TlsJa3Fingerprint),
        "TLS_JA4_FINGERPRINT" => (Syntax::CommandOnly, Operator::TlsJa4Fingerprint),
        "DOWNSTREAM_PEER_CERT_V_START" | "DOWNSTREAM_PEER_CERT_V_END" => {
            verify(Syntax::ParamsOptional, command, argument, max_length)?;
            return TimeFormat::parse(argument).map(|format| {
                Some(Operator::DownstreamPeerCertValidity {
                    end: command.ends_with("END"),
                    format,
                })
            });
        }
        "DYNAMIC_METADATA" => {
            verify(
                Syntax::ParamsRequiredLengthAllowed,
                command,
                argument,
                max_length,
            )?;
            let mut path = argument.split(':').map(str::to_owned);
            let namespace = path.next().unwrap_or_default();
            return Ok(Some(Operator::DynamicMetadata {
                namespace,
                keys: path.collect(),
                max_length,
            }));
        }
        _ => match (address_operator(command), TlsField::by_name(command)) {
            (Some(op), _) => (Syntax::CommandOnly, op),
            (None, Some(field)) => (Syntax::CommandOnly, Operator::DownstreamTls(field)),
            (None, None) => return Ok(None),
        },
    };
    verify(syntax, command, argument, max_length)?;
    Ok(Some(op))
}

/// The address operators: `<WHOSE>_ADDRESS` (the address), `<WHOSE>_ADDRESS_WITHOUT_PORT` (its
/// IP) and `<WHOSE>_PORT`, for each address a stream has.
fn address_operator(command: &str) -> Option<Operator> {
    let (whose, part) = if let Some(w) = command.strip_suffix("_ADDRESS_WITHOUT_PORT") {
        (w, AddressPart::Ip)
    } else if let Some(w) = command.strip_suffix("_ADDRESS") {
        (w, AddressPart::Full)
    } else {
        (command.strip_suffix("_PORT")?, AddressPart::Port)
    };
    Some(match whose {
        "UPSTREAM_LOCAL" => Operator::UpstreamLocalAddress(part),
        "UPSTREAM_REMOTE" => Operator::UpstreamRemoteAddress(part),
        "DOWNSTREAM_REMOTE" => Operator::DownstreamRemoteAddress(part),
        "DOWNSTREAM_DIRECT_REMOTE" => Operator::DownstreamDirectRemoteAddress(part),
        "DOWNSTREAM_LOCAL" => Operator::DownstreamLocalAddress(part),
        "DOWNSTREAM_DIRECT_LOCAL" => Operator::DownstreamDirectLocalAddress(part),
        _ => return None,
    })
}

/// Envoy's `CommandSyntaxChecker::verifySyntax`, checks and messages in its order.
fn verify(
    syntax: Syntax,
    command: &str,
    argument: &str,
    max_length: Option<usize>,
) -> Result<(), String> {
    if syntax == Syntax::CommandOnly && (!argument.is_empty() || max_length.is_some()) {
        return Err(format!("{command} does not take any parameters or length"));
    }
    if syntax == Syntax::ParamsRequiredLengthAllowed && argument.is_empty() {
        return Err(format!("{command} requires parameters"));
    }
    if syntax != Syntax::ParamsRequiredLengthAllowed && max_length.is_some() {
        return Err(format!("{command} does not allow length to be specified."));
    }
    Ok(())
}

/// `MAIN?ALTERNATIVE`: one alternative at most, no newline (the value may end up in a header),
/// names case-insensitive (Envoy lower-cases them).
fn header_lookup(
    source: HeaderSource,
    argument: &str,
    max_length: Option<usize>,
) -> Result<HeaderLookup, String> {
    let mut names = argument.split('?');
    let main = names.next().unwrap_or_default();
    let alternative = names.next();
    if names.next().is_some() {
        return Err(format!(
            "More than 1 alternative header specified in token: {argument}"
        ));
    }
    if main.contains('\n') || alternative.is_some_and(|a| a.contains('\n')) {
        return Err("Invalid header configuration. Format string contains newline.".to_owned());
    }
    Ok(HeaderLookup {
        source,
        main: HeaderKey::new(&main.to_ascii_lowercase()),
        // Envoy treats an empty alternative (`REQ(A?)`) as none.
        alternative: alternative
            .filter(|a| !a.is_empty())
            .map(|a| HeaderKey::new(&a.to_ascii_lowercase())),
        max_length,
    })
}

/// The machine's host name, as `%HOSTNAME%` prints it (`gethostname(2)`).
fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for `len` bytes; gethostname writes at most that many.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Some(String::from_utf8_lossy(&buf[..end]).into_owned())
}

fn millis(d: Duration) -> Value<'static> {
    Value::Int(d.as_millis() as i128)
}

fn address(addr: Option<SocketAddr>, part: AddressPart) -> Option<Value<'static>> {
    let addr = addr?;
    Some(match part {
        AddressPart::Full => Value::Str(Cow::Owned(addr.to_string())),
        AddressPart::Ip => Value::Str(Cow::Owned(addr.ip().to_string())),
        AddressPart::Port => Value::Int(addr.port().into()),
    })
}

/// An address, which is a path on a unix domain socket (the listener's for the downstream
/// addresses, the host's upstream): Envoy prints the path for the address and for the
/// address without port, and an empty port.
fn address_or_pipe<'a>(
    addr: Option<SocketAddr>,
    pipe: &'a Option<std::sync::Arc<str>>,
    part: AddressPart,
) -> Option<Value<'a>> {
    match (addr, pipe) {
        (None, Some(path)) => Some(Value::Str(match part {
            AddressPart::Full | AddressPart::Ip => Cow::Borrowed(&**path),
            AddressPart::Port => Cow::Borrowed(""),
        })),
        _ => address(addr, part),
    }
}

fn non_empty(s: &str) -> Option<Value<'_>> {
    (!s.is_empty()).then_some(Value::Str(Cow::Borrowed(s)))
}

impl Operator {
    /// The operator's value for `info`; `None` when unset.
    pub(crate) fn evaluate<'a>(&'a self, info: &'a StreamInfo) -> Option<Value<'a>> {
        match self {
            Operator::StartTime(format) => {
                Some(Value::Str(Cow::Owned(format.format(info.start_time))))
            }
            Operator::EmitTime(format) => {
                Some(Value::Str(Cow::Owned(format.format(SystemTime::now()))))
            }
            Operator::Environment(value) => Some(Value::Str(Cow::Borrowed(value))),
            Operator::Header(lookup) => lookup.evaluate(info),
            // Envoy prints 0 when no response was sent (`responseCode().value_or(0)`).
            Operator::ResponseCode => Some(Value::Int(info.response_code.unwrap_or(0).into())),
            Operator::ResponseCodeDetails { allow_whitespaces } => {
                let details = info.response_code_details.as_deref()?;
                if *allow_whitespaces || !details.contains(is_envoy_whitespace) {
                    Some(Value::Str(Cow::Borrowed(details)))
                } else {
                    // `StringUtil::replaceAllEmptySpace`: whitespace would split the log line.
                    Some(Value::Str(Cow::Owned(
                        details.replace(is_envoy_whitespace, "_"),
                    )))
                }
            }
            // Both print `-` (a string, not unset) when no flag is set, as Envoy's
            // `ResponseFlagUtils` do.
            Operator::ResponseFlags => {
                Some(Value::Str(Cow::Owned(info.response_flags.short_string())))
            }
            Operator::ResponseFlagsLong => {
                Some(Value::Str(Cow::Owned(info.response_flags.long_string())))
            }
            Operator::BytesReceived => Some(Value::Int(info.bytes_received.into())),
            Operator::BytesSent => Some(Value::Int(info.bytes_sent.into())),
            // `StreamInfo::currentDuration()`: the final duration, or the time so far.
            Operator::Duration => Some(millis(info.duration.unwrap_or_else(|| info.elapsed()))),
            Operator::RequestDuration => info.last_downstream_rx_byte.map(millis),
            Operator::RequestTxDuration => info.last_upstream_tx_byte.map(millis),
            Operator::ResponseDuration => info.first_upstream_rx_byte.map(millis),
            Operator::ResponseTxDuration => {
                let (Some(downstream), Some(upstream)) =
                    (info.last_downstream_tx_byte, info.first_upstream_rx_byte)
                else {
                    return None;
                };
                // Envoy subtracts the time points and truncates to milliseconds; the result
                // may be negative.
                let nanos = downstream.as_nanos() as i128 - upstream.as_nanos() as i128;
                Some(Value::Int(nanos / 1_000_000))
            }
            Operator::UpstreamHost => {
                address_or_pipe(info.upstream_host, &info.upstream_pipe, AddressPart::Full)
            }
            Operator::UpstreamCluster => info.upstream_cluster.as_deref().and_then(non_empty),
            Operator::UpstreamProtocol => info
                .upstream_protocol
                .map(|p| Value::Str(Cow::Borrowed(p.as_str()))),
            Operator::UpstreamLocalAddress(part) => address(info.upstream_local_address, *part),
            Operator::UpstreamRemoteAddress(part) => {
                address_or_pipe(info.upstream_host, &info.upstream_pipe, *part)
            }
            Operator::UpstreamTransportFailureReason => {
                let reason = info.upstream_transport_failure_reason.as_deref()?;
                if reason.is_empty() {
                    None
                } else {
                    Some(Value::Str(Cow::Owned(reason.replace(' ', "_"))))
                }
            }
            Operator::DownstreamRemoteAddress(part) => {
                address_or_pipe(info.downstream_remote_address, &info.downstream_pipe, *part)
            }
            Operator::DownstreamDirectRemoteAddress(part) => address_or_pipe(
                info.downstream_direct_remote_address,
                &info.downstream_pipe,
                *part,
            ),
            Operator::DownstreamLocalAddress(part) => {
                address_or_pipe(info.downstream_local_address, &info.downstream_pipe, *part)
            }
            Operator::DownstreamDirectLocalAddress(part) => address_or_pipe(
                info.downstream_direct_local_address
                    .or(info.downstream_local_address),
                &info.downstream_pipe,
                *part,
            ),
            Operator::FilterChainName => info.filter_chain_name.as_deref().and_then(non_empty),
            Operator::UniqueId => Some(Value::Str(Cow::Owned(crate::uuid::v4_string()))),
            Operator::ConnectionId => Some(Value::Int(info.connection_id.into())),
            Operator::AccessLogType => {
                Some(Value::Str(Cow::Borrowed(info.access_log_type.as_str())))
            }
            Operator::Protocol => match info.protocol {
                crate::stream_info::Protocol::Tcp => None,
                p => Some(Value::Str(Cow::Borrowed(p.as_str()))),
            },
            Operator::RouteName => info.route_name.as_deref().and_then(non_empty),
            Operator::LocalReplyBody => info
                .local_reply_body
                .as_deref()
                .map(|b| Value::Str(Cow::Borrowed(b))),
            Operator::UpstreamRequestAttemptCount => Some(Value::Int(info.attempt_count.into())),
            Operator::Hostname(name) => name.as_deref().map(|n| Value::Str(Cow::Borrowed(n))),
            Operator::RequestedServerName => {
                info.requested_server_name.as_deref().and_then(non_empty)
            }
            Operator::TlsJa3Fingerprint => info
                .tls_fingerprints
                .as_ref()?
                .ja3
                .as_deref()
                .and_then(non_empty),
            Operator::TlsJa4Fingerprint => info
                .tls_fingerprints
                .as_ref()?
                .ja4
                .as_deref()
                .and_then(non_empty),
            Operator::DownstreamTls(field) => {
                let value = field.value(info.downstream_tls.as_deref()?);
                (!value.is_empty()).then_some(Value::Str(value))
            }
            Operator::DownstreamPeerCertValidity { end, format } => {
                let peer = info.downstream_tls.as_deref()?.peer()?;
                let at = if *end {
                    peer.not_after
                } else {
                    peer.not_before
                };
                Some(Value::Str(Cow::Owned(format.format(at))))
            }
            Operator::DynamicMetadata {
                namespace,
                keys,
                max_length,
            } => {
                let metadata = info.dynamic_metadata.as_deref()?;
                Some(match metadata.lookup(namespace, keys)? {
                    Lookup::String(s) => Value::Str(match max_length {
                        Some(max) => truncate(Cow::Borrowed(s), *max),
                        None => Cow::Borrowed(s),
                    }),
                    Lookup::Struct(fields) => {
                        let mut json = String::from("{");
                        for (i, (key, value)) in fields.iter().enumerate() {
                            if i > 0 {
                                json.push(',');
                            }
                            super::json::push_json_string(&mut json, key);
                            json.push(':');
                            super::json::push_json_string(&mut json, value);
                        }
                        json.push('}');
                        Value::Object {
                            json,
                            text_max: *max_length,
                        }
                    }
                })
            }
        }
    }
}

/// The characters Envoy's `StringUtil::replaceAllEmptySpace` replaces.
fn is_envoy_whitespace(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c')
}

impl HeaderLookup {
    fn evaluate<'a>(&self, info: &'a StreamInfo) -> Option<Value<'a>> {
        let value = self.find(&self.main, info).or_else(|| {
            self.alternative
                .as_ref()
                .and_then(|alternative| self.find(alternative, info))
        })?;
        Some(Value::Str(match self.max_length {
            Some(max) => truncate(value, max),
            None => value,
        }))
    }

    /// The first value of a header, as Envoy's `HeaderFormatter::findHeader` reads it.
    fn find<'a>(&self, key: &HeaderKey, info: &'a StreamInfo) -> Option<Cow<'a, str>> {
        let headers = match self.source {
            HeaderSource::Request => {
                let line = &info.request;
                let pseudo = match key {
                    HeaderKey::Method => Some(&*line.method),
                    HeaderKey::Path => Some(line.path.as_str()),
                    HeaderKey::Authority => Some(line.authority.as_str()),
                    HeaderKey::Scheme => Some(&*line.scheme),
                    _ => None,
                };
                if let Some(value) = pseudo {
                    return (!value.is_empty()).then_some(Cow::Borrowed(value));
                }
                &info.request_headers
            }
            HeaderSource::Response => {
                let headers = info.response_headers.as_ref()?;
                if matches!(key, HeaderKey::Status) {
                    return info.response_code.map(|c| Cow::Owned(c.to_string()));
                }
                headers
            }
            HeaderSource::ResponseTrailer => info.response_trailers.as_ref()?,
        };
        match key {
            HeaderKey::Named(name) => headers
                .get(name)
                .map(|v| String::from_utf8_lossy(v.as_bytes())),
            _ => None,
        }
    }
}

/// Envoy truncates to `max` bytes; a cut inside a UTF-8 character moves back to the
/// character's start so that the line stays valid text.
fn truncate(value: Cow<'_, str>, max: usize) -> Cow<'_, str> {
    if value.len() <= max {
        return value;
    }
    let mut end = max;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    match value {
        Cow::Borrowed(s) => Cow::Borrowed(&s[..end]),
        Cow::Owned(mut s) => {
            s.truncate(end);
            Cow::Owned(s)
        }
    }
}

/// Command operators that Envoy 1.40 knows and Legate does not implement yet: refused with a
/// message that says so, rather than Envoy's "Not supported field" (which would suggest a typo).
pub(crate) const ENVOY_ONLY_OPERATORS: &[&str] = &[
    "GRPC_STATUS",
    "GRPC_STATUS_NUMBER",
    "REQUEST_HEADERS_BYTES",
    "RESPONSE_HEADERS_BYTES",
    "RESPONSE_TRAILERS_BYTES",
    "TRACE_ID",
    "CUSTOM_FLAGS",
    "COMMON_DURATION",
    "DOWNSTREAM_HANDSHAKE_DURATION",
    "ROUNDTRIP_DURATION",
    "UPSTREAM_CONNECTION_POOL_READY_DURATION",
    "BYTES_RETRANSMITTED",
    "PACKETS_RETRANSMITTED",
    "UPSTREAM_WIRE_BYTES_RECEIVED",
    "UPSTREAM_HEADER_BYTES_RECEIVED",
    "UPSTREAM_DECOMPRESSED_HEADER_BYTES_RECEIVED",
    "DOWNSTREAM_WIRE_BYTES_RECEIVED",
    "DOWNSTREAM_HEADER_BYTES_RECEIVED",
    "DOWNSTREAM_DECOMPRESSED_HEADER_BYTES_RECEIVED",
    "UPSTREAM_WIRE_BYTES_SENT",
    "UPSTREAM_HEADER_BYTES_SENT",
    "UPSTREAM_DECOMPRESSED_HEADER_BYTES_SENT",
    "DOWNSTREAM_WIRE_BYTES_SENT",
    "DOWNSTREAM_HEADER_BYTES_SENT",
    "DOWNSTREAM_DECOMPRESSED_HEADER_BYTES_SENT",
    "CONNECTION_TERMINATION_DETAILS",
    "UPSTREAM_HOST_NAME",
    "UPSTREAM_HOST_NAME_WITHOUT_PORT",
    "UPSTREAM_CONNECTION_ID",
    "UPSTREAM_TLS_CIPHER",
    "UPSTREAM_TLS_VERSION",
    "UPSTREAM_TLS_SESSION_ID",
    "UPSTREAM_PEER_ISSUER",
    "UPSTREAM_PEER_CERT",
    "UPSTREAM_PEER_SUBJECT",
    "UPSTREAM_PEER_URI_SAN",
    "UPSTREAM_PEER_DNS_SAN",
    "UPSTREAM_PEER_IP_SAN",
    "UPSTREAM_LOCAL_URI_SAN",
    "UPSTREAM_LOCAL_DNS_SAN",
    "UPSTREAM_LOCAL_IP_SAN",
    "UPSTREAM_PEER_CERT_V_START",
    "UPSTREAM_PEER_CERT_V_END",
    "DOWNSTREAM_TLS_SESSION_ID",
    "DOWNSTREAM_TRANSPORT_FAILURE_REASON",
    "VIRTUAL_CLUSTER_NAME",
    "STREAM_ID",
    "CLUSTER_METADATA",
    "UPSTREAM_METADATA",
    "FILTER_STATE",
    "UPSTREAM_FILTER_STATE",
];
