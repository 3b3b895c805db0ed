//! Local replies: responses the proxy makes itself (no route, no healthy upstream, timeouts,
//! bad requests), with Envoy's status codes, bodies and response-code details, and the
//! user's `local_reply_config` rules over them.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use legate_api::pb::envoy::config::core::v3::data_source;
use legate_api::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use legate_api::pb::envoy::extensions::filters::network::http_connection_manager::v3::LocalReplyConfig;
use legate_core::access_log::Filter;
use legate_core::format::FormatString;
use legate_core::runtime::Snapshot;
use legate_core::stream_info::StreamInfo;
use legate_core::{Compiled, Errors};
use legate_upstream::body::{self, Body};

/// A response the proxy answers with itself.
#[derive(Debug, Clone)]
pub struct LocalReply {
    pub status: u16,
    pub body: String,
    /// `%RESPONSE_CODE_DETAILS%`: `route_not_found`, `upstream_response_timeout`, ...
    pub details: &'static str,
    /// A response flag bit of `legate_core::stream_info::ResponseFlags`, or 0.
    pub flag: u32,
    /// A `Location` to send (path-normalisation redirects).
    pub location: Option<String>,
    /// Extra headers (`x-envoy-overloaded` on a circuit-breaker overflow).
    pub headers: Vec<(http::HeaderName, HeaderValue)>,
    /// Close the connection after this reply (a refused upgrade, a protocol error).
    pub close: bool,
}

impl LocalReply {
    pub fn new(status: u16, body: impl Into<String>, details: &'static str, flag: u32) -> Self {
        LocalReply {
            status,
            body: body.into(),
            details,
            flag,
            location: None,
            headers: Vec::new(),
            close: flag == legate_core::stream_info::ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR,
        }
    }

    /// The same reply with one more header.
    pub fn with_header(mut self, name: &'static str, value: &'static str) -> Self {
        self.headers.push((
            http::HeaderName::from_static(name),
            HeaderValue::from_static(value),
        ));
        self
    }

    /// The same reply, closing the connection after it.
    pub fn closing(mut self) -> Self {
        self.close = true;
        self
    }

    /// The response as Envoy writes it: `content-type: text/plain` and `content-length` when
    /// there is a body, only `content-length: 0` when there is none.
    pub fn into_response(self) -> Response<Body> {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = Response::new(body::empty());
        *response.status_mut() = status;
        let len = self.body.len();
        if len > 0 {
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            *response.body_mut() = body::full(Bytes::from(self.body));
        }
        response
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        if let Some(v) = self.location.and_then(|l| HeaderValue::from_str(&l).ok()) {
            response.headers_mut().insert(header::LOCATION, v);
        }
        for (name, value) in self.headers {
            response.headers_mut().insert(name, value);
        }
        response
    }
}

/// `local_reply_config`, compiled: the first mapper whose filter matches may change a local
/// reply's status, body and headers; then `body_format` (or the mapper's override) rewrites the
/// body, with `%LOCAL_REPLY_BODY%` standing for the body so far.
#[derive(Debug, Default)]
pub struct LocalReplyRules {
    mappers: Vec<Mapper>,
    body_format: Option<FormatString>,
}

#[derive(Debug)]
struct Mapper {
    filter: Filter,
    status: Option<u16>,
    body: Option<String>,
    body_format: Option<FormatString>,
    headers: Vec<(http::HeaderName, String, bool)>,
}

impl LocalReplyRules {
    pub fn compile(config: &LocalReplyConfig) -> Compiled<Self> {
        let mut errors = Errors::default();
        let mut mappers = Vec::with_capacity(config.mappers.len());
        for (i, m) in config.mappers.iter().enumerate() {
            let path = format!("mappers[{i}]");
            let filter = match &m.filter {
                Some(f) => errors.take(&format!("{path}.filter"), Filter::compile(f)),
                None => {
                    errors.push(&format!("{path}.filter"), "value is required");
                    None
                }
            };
            let body = match m.body.as_ref().and_then(|b| b.specifier.as_ref()) {
                None => None,
                Some(data_source::Specifier::InlineString(s)) => Some(s.clone()),
                Some(data_source::Specifier::InlineBytes(b)) => {
                    Some(String::from_utf8_lossy(b).into_owned())
                }
                Some(data_source::Specifier::Filename(f)) => match std::fs::read_to_string(f) {
                    Ok(s) => Some(s),
                    Err(e) => {
                        errors.push(
                            &format!("{path}.body.filename"),
                            format!("unable to read '{f}': {e}"),
                        );
                        None
                    }
                },
                Some(_) => {
                    errors.push(
                        &format!("{path}.body"),
                        "only inline_string, inline_bytes and filename are supported by Legate",
                    );
                    None
                }
            };
            let body_format = m.body_format_override.as_ref().and_then(|f| {
                errors.take(
                    &format!("{path}.body_format_override"),
                    FormatString::compile(f),
                )
            });
            let mut headers = Vec::new();
            for (j, h) in m.headers_to_add.iter().enumerate() {
                let Some(kv) = &h.header else { continue };
                match http::HeaderName::from_bytes(kv.key.to_ascii_lowercase().as_bytes()) {
                    Ok(name) => {
                        let append =
                            h.append_action == HeaderAppendAction::AppendIfExistsOrAdd as i32;
                        headers.push((name, kv.value.clone(), append));
                    }
                    Err(_) => errors.push(
                        &format!("{path}.headers_to_add[{j}].header.key"),
                        format!("invalid header name '{}'", kv.key),
                    ),
                }
            }
            if let Some(filter) = filter {
                mappers.push(Mapper {
                    filter,
                    status: m.status_code.as_ref().map(|s| s.value as u16),
                    body,
                    body_format,
                    headers,
                });
            }
        }
        let body_format = config
            .body_format
            .as_ref()
            .and_then(|f| errors.take("body_format", FormatString::compile(f)));
        errors.finish(|| LocalReplyRules {
            mappers,
            body_format,
        })
    }

    /// Applies the rules to a local reply about to be sent for `info`.
    pub fn apply(
        &self,
        mut reply: LocalReply,
        info: &StreamInfo,
        runtime: &Snapshot,
    ) -> Response<Body> {
        let mut view = info.clone();
        view.response_code = Some(reply.status);
        view.response_flags.set(reply.flag);
        let mut headers = Vec::new();
        let mut format = self.body_format.as_ref();
        if let Some(m) = self
            .mappers
            .iter()
            .find(|m| m.filter.evaluate(&view, runtime))
        {
            if let Some(status) = m.status {
                reply.status = status;
                view.response_code = Some(status);
            }
            if let Some(body) = &m.body {
                reply.body = body.clone();
            }
            if m.body_format.is_some() {
                format = m.body_format.as_ref();
            }
            headers = m
                .headers
                .iter()
                .map(|(n, v, append)| {
                    (
                        n.clone(),
                        crate::substitution::expand_text(v, &view),
                        *append,
                    )
                })
                .collect();
        }
        let content_type = match format {
            Some(f) => {
                view.local_reply_body = Some(reply.body.clone());
                reply.body = f.format(&view);
                Some(f.content_type.clone())
            }
            None => None,
        };
        let mut response = reply.into_response();
        if let Some(ct) = content_type
            && let Ok(v) = HeaderValue::from_str(&ct)
        {
            response.headers_mut().insert(header::CONTENT_TYPE, v);
        }
        for (name, value, append) in headers {
            if let Ok(v) = HeaderValue::from_str(&value) {
                if append {
                    response.headers_mut().append(name, v);
                } else {
                    response.headers_mut().insert(name, v);
                }
            }
        }
        response
    }
}
