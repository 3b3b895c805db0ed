//! tcp_proxy's `tunneling_config`: the request that opens a tunnel to the upstream for a
//! client's TCP connection — `CONNECT <hostname>`, or `POST <post_path>` with `use_post` —
//! with `headers_to_add`. `hostname` and the header values are formatted from the connection
//! (`%DOWNSTREAM_LOCAL_PORT%` and the like). Opening the tunnel and carrying the bytes is
//! [`legate_upstream::tunnel`]'s.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Uri};
use legate_api::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::TunnelingConfig;
use legate_core::format::Formatter;
use legate_core::stream_info::StreamInfo;
use legate_core::{Compiled, Errors};
use legate_upstream::pool::Protocol;

use crate::header_mutation;
use crate::route::{HeaderMutations, header_mutations};

/// A compiled `TunnelingConfig`.
#[derive(Debug)]
pub struct TunnelConfig {
    hostname: Formatter,
    /// `post_path` (`/` unless set) with `use_post`; `None`: `CONNECT`.
    post_path: Option<String>,
    headers: HeaderMutations,
}

impl TunnelConfig {
    pub fn compile(c: &TunnelingConfig) -> Compiled<TunnelConfig> {
        let mut errors = Errors::default();
        let hostname = match Formatter::parse(&c.hostname) {
            Ok(f) => Some(f),
            Err(e) => {
                errors.push("hostname", e);
                None
            }
        };
        if !c.use_post && !c.post_path.is_empty() {
            errors.push(
                "post_path",
                "Can't set a post path when POST method isn't used",
            );
        }
        let headers = errors.take("", header_mutations(&c.headers_to_add, &[], "headers_to"));
        errors.finish(|| TunnelConfig {
            hostname: hostname.expect("parsed when there are no errors"),
            post_path: c.use_post.then(|| {
                if c.post_path.is_empty() {
                    "/".to_owned()
                } else {
                    c.post_path.clone()
                }
            }),
            headers: headers.expect("compiled when there are no errors"),
        })
    }

    /// The head of the request that opens the tunnel for the connection `info` records, over
    /// `protocol` (`secure`: TLS to the host, for a `POST`'s `:scheme`): `host` (HTTP/1.1) or
    /// `:authority` (HTTP/2) is the formatted `hostname`. `None` when the hostname (or the
    /// path) makes no request.
    pub fn request(
        &self,
        info: &StreamInfo,
        protocol: Protocol,
        secure: bool,
    ) -> Option<Request<()>> {
        let hostname = self.hostname.format_with(info, "");
        let host = HeaderValue::from_str(&hostname).ok()?;
        let (method, uri) = match &self.post_path {
            None => (Method::CONNECT, Uri::builder().authority(hostname.as_str())),
            Some(path) => {
                let uri = match protocol {
                    Protocol::Http1 => Uri::builder().path_and_query(path.as_str()),
                    Protocol::Http2 => Uri::builder()
                        .scheme(if secure { "https" } else { "http" })
                        .authority(hostname.as_str())
                        .path_and_query(path.as_str()),
                };
                (Method::POST, uri)
            }
        };
        let mut headers = HeaderMap::new();
        if protocol == Protocol::Http1 {
            headers.insert(header::HOST, host);
        }
        header_mutation::apply(&self.headers, &mut headers, &|add| {
            crate::substitution::expand(add, info)
        });
        let mut request = Request::builder()
            .method(method)
            .uri(uri.build().ok()?)
            .version(match protocol {
                Protocol::Http1 => http::Version::HTTP_11,
                Protocol::Http2 => http::Version::HTTP_2,
            })
            .body(())
            .ok()?;
        *request.headers_mut() = headers;
        Some(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use legate_api::pb::envoy::config::core::v3::{HeaderValue as ProtoHeader, HeaderValueOption};

    fn config(f: impl FnOnce(&mut TunnelingConfig)) -> Compiled<TunnelConfig> {
        let mut c = TunnelingConfig {
            hostname: "%DOWNSTREAM_LOCAL_ADDRESS%".into(),
            ..Default::default()
        };
        f(&mut c);
        TunnelConfig::compile(&c)
    }

    #[test]
    fn requests_for_each_protocol_and_method() {
        let mut info = StreamInfo::new(1);
        info.downstream_local_address = Some("10.0.0.1:443".parse().unwrap());
        let connect = config(|c| {
            c.headers_to_add = vec![HeaderValueOption {
                header: Some(ProtoHeader {
                    key: "x-port".into(),
                    value: "%DOWNSTREAM_LOCAL_PORT%".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }]
        })
        .unwrap();
        let r = connect.request(&info, Protocol::Http1, false).unwrap();
        assert_eq!(r.method(), Method::CONNECT);
        assert_eq!(r.uri().to_string(), "10.0.0.1:443");
        assert_eq!(r.headers()["host"], "10.0.0.1:443");
        assert_eq!(r.headers()["x-port"], "443");
        let r = connect.request(&info, Protocol::Http2, false).unwrap();
        assert_eq!(r.uri().authority().unwrap(), "10.0.0.1:443");
        assert!(r.headers().get("host").is_none());
        let post = config(|c| c.use_post = true).unwrap();
        let r = post.request(&info, Protocol::Http2, true).unwrap();
        assert_eq!(r.method(), Method::POST);
        assert_eq!(r.uri().to_string(), "https://10.0.0.1:443/");
    }

    #[test]
    fn a_post_path_needs_use_post_as_in_envoy() {
        let errors = config(|c| c.post_path = "/x".into()).unwrap_err();
        assert_eq!(
            errors[0].to_string(),
            "post_path: Can't set a post path when POST method isn't used"
        );
        assert!(
            config(|c| {
                c.use_post = true;
                c.post_path = "/x".into();
            })
            .is_ok()
        );
        assert!(config(|c| c.hostname = "%NOT_AN_OPERATOR%".into()).is_err());
    }
}
