//! The cases: a configuration fragment (virtual hosts, extra connection-manager and route
//! configuration fields, all YAML written from column 0) and the requests to send through it.
//! `harness::bootstrap` places the fragments into one bootstrap shared by both proxies; its
//! clusters are `backend` and `other` (the echo upstream), `backend_h2` (the echo upstream over
//! h2c) and `dead` (a refused port). The echo upstream answers `/status/N` with N, waits MS ms
//! on `/delay/MS`, and echoes anything else as JSON.
//!
//! Requests go over HTTP/1.1 with `connection: close` unless marked otherwise; every request
//! carries a unique `user-agent` (`{ua}` in raw requests) that pairs it with its access-log line.

#[derive(Debug, Clone)]
pub enum Proto {
    H1,
    H2c,
    /// Bytes sent as they are (`{ua}` replaced by the request's user agent).
    Raw(String),
}

#[derive(Debug, Clone)]
pub struct Req {
    pub method: String,
    pub path: String,
    /// `host` (HTTP/1.1) or `:authority` (h2c); `None` sends no `host`.
    pub authority: Option<String>,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub proto: Proto,
    /// HTTP/1.1 without `connection: close` (the reader stops at the end of the response).
    pub keep_alive: bool,
}

impl Req {
    fn new(method: &str, path: &str) -> Req {
        Req {
            method: method.into(),
            path: path.into(),
            authority: Some("example.com".into()),
            headers: Vec::new(),
            body: String::new(),
            proto: Proto::H1,
            keep_alive: false,
        }
    }

    fn host(mut self, host: &str) -> Req {
        self.authority = Some(host.into());
        self
    }

    fn h(mut self, name: &str, value: &str) -> Req {
        self.headers.push((name.into(), value.into()));
        self
    }

    fn h2(mut self) -> Req {
        self.proto = Proto::H2c;
        self
    }

    fn keep_alive(mut self) -> Req {
        self.keep_alive = true;
        self
    }
}

fn get(path: &str) -> Req {
    Req::new("GET", path)
}

fn head(path: &str) -> Req {
    Req::new("HEAD", path)
}

fn post(path: &str, body: &str) -> Req {
    let mut r = Req::new("POST", path);
    r.body = body.into();
    r
}

fn raw(text: &str) -> Req {
    let mut r = Req::new("RAW", "");
    r.proto = Proto::Raw(text.into());
    r
}

pub struct Case {
    pub name: &'static str,
    /// A YAML list of virtual hosts.
    pub vhosts: String,
    /// Extra `HttpConnectionManager` fields.
    pub hcm: String,
    /// Extra `RouteConfiguration` fields.
    pub route_config: String,
    pub requests: Vec<Req>,
}

fn case(name: &'static str, vhosts: &str, requests: Vec<Req>) -> Case {
    Case {
        name,
        vhosts: vhosts.into(),
        hcm: String::new(),
        route_config: String::new(),
        requests,
    }
}

impl Case {
    fn hcm(mut self, yaml: &str) -> Case {
        self.hcm = yaml.into();
        self
    }

    fn route_config(mut self, yaml: &str) -> Case {
        self.route_config = yaml.into();
        self
    }
}

/// One virtual host `local` for every domain, with these routes (a YAML list from column 0).
fn any_host(routes: &str) -> String {
    let mut out = String::from("- name: local\n  domains: [\"*\"]\n  routes:\n");
    for line in routes.lines().filter(|l| !l.trim().is_empty()) {
        out.push_str("  ");
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Everything to `backend`.
const TO_BACKEND: &str = "- match: {prefix: \"/\"}\n  route: {cluster: backend}\n";

pub fn all() -> Vec<Case> {
    vec![
        // ---- route matching --------------------------------------------------------------
        case(
            "path_matching",
            &any_host(
                r#"
- name: exact
  match: {path: "/exact"}
  route: {cluster: backend}
  request_headers_to_add: [{header: {key: x-route, value: exact}}]
- name: regex
  match: {safe_regex: {regex: "/re/[0-9]+"}}
  route: {cluster: backend}
  request_headers_to_add: [{header: {key: x-route, value: regex}}]
- name: separated
  match: {path_separated_prefix: "/api/dev"}
  route: {cluster: backend}
  request_headers_to_add: [{header: {key: x-route, value: separated}}]
- name: insensitive
  match: {prefix: "/CI/", case_sensitive: false}
  route: {cluster: backend}
  request_headers_to_add: [{header: {key: x-route, value: insensitive}}]
- name: insensitive_path
  match: {path: "/Upper", case_sensitive: false}
  route: {cluster: backend}
  request_headers_to_add: [{header: {key: x-route, value: insensitive_path}}]
- name: prefix
  match: {prefix: "/pre"}
  route: {cluster: backend}
  request_headers_to_add: [{header: {key: x-route, value: prefix}}]
"#,
            ),
            vec![
                get("/exact"),
                get("/exact?q=1"),
                get("/exact/"),
                get("/EXACT"),
                get("/re/123"),
                get("/re/12a"),
                get("/re/123?x=y"),
                get("/api/dev"),
                get("/api/dev/x"),
                get("/api/dev?x=1"),
                get("/api/developer"),
                get("/ci/abc"),
                get("/Ci/abc"),
                get("/upper"),
                get("/prefix-anything"),
                get("/pre"),
                get("/pr"),
            ],
        ),
        case(
            "header_matchers",
            &any_host(
                r#"
- name: exact
  match: {prefix: "/", headers: [{name: x-a, string_match: {exact: one}}]}
  route: {cluster: backend}
  request_headers_to_add: [{header: {key: x-route, value: exact}}]
- name: prefix
  match: {prefix: "/", headers: [{name: x-b, string_match: {prefix: pre}}]}
  route: {cluster: backend}
  request_headers_to_add: [{header: {key: x-route, value: prefix}}]
- name: suffix_contains
  match: {prefix: "/", headers: [{name: x-c, string_match: {suffix: end}}, {name: x-d, string_match: {contains: mid}}]}
  route: {cluster: backend}
  request_headers_to_add: [{header: {key: x-route, value: suffix_contains}}]
- name: regex
  match: {prefix: "/", headers: [{name: x-e, string_match: {safe_regex: {regex: "v[0-9]+"}}}]}
  route: {cluster: backend}
  request_headers_to_add: [{header: {key: x-route, value: regex}}]
- name: ignore_case
  match: {prefix: "/", headers: [{name: x-f, string_match: {exact: MiXeD, ignore_case: true}}]}
  route: {cluster: backend}
  request_headers_to_add: [{header: {key: x-route, value: ignore_case}}]
- name: present
  match: {prefix: "/", headers: [{name: x-present, present_match: true}]}
  route: {cluster: backend}
  request_headers_to_add: [{header: {key: x-route, value: present}}]
- name: range
  match: {prefix: "/", headers: [{name: x-num, range_match: {start: 10, end: 20}}]}
  route: {cluster: backend}
  request_headers_to_add: [{header: {key: x-route, value: range}}]
- name: inverted
  match: {prefix: "/inv", headers: [{name: x-inv, string_match: {exact: "no"}, invert_match: true}]}
  route: {cluster: backend}
  request_headers_to_add: [{header: {key: x-route, value: inverted}}]
- name: absent
  match: {prefix: "/absent", headers: [{name: x-gone, present_match: false}]}
  route: {cluster: backend}
  request_headers_to_add: [{header: {key: x-route, value: absent}}]
- name: method
  match: {prefix: "/", headers: [{name: ":method", string_match: {exact: POST}}]}
  route: {cluster: backend}
  request_headers_to_add: [{header: {key: x-route, value: method}}]
"#,
            ),
            vec![
                get("/").h("x-a", "one"),
                get("/").h("x-a", "One"),
                get("/").h("x-b", "prefix"),
                get("/").h("x-c", "the-end").h("x-d", "a-mid-b"),
                get("/").h("x-c", "the-end"),
                get("/").h("x-e", "v12"),
                get("/").h("x-e", "v12x"),
                get("/").h("x-f", "mixed"),
                get("/").h("x-present", ""),
                get("/").h("x-num", "10"),
                get("/").h("x-num", "20"),
                get("/").h("x-num", "-5"),
                get("/inv").h("x-inv", "yes"),
                get("/inv").h("x-inv", "no"),
                get("/inv"),
                get("/absent"),
                get("/absent").h("x-gone", "1"),
                post("/", "data"),
                get("/"),
            ],
        ),
        case(
            "query_parameters",
            &any_host(
                r#"
- name: exact
  match: {prefix: "/", query_parameters: [{name: a, string_match: {exact: "1"}}]}
  route: {cluster: backend}
  request_headers_to_add: [{header: {key: x-route, value: exact}}]
- name: present
  match: {prefix: "/", query_parameters: [{name: b, present_match: true}]}
  route: {cluster: backend}
  request_headers_to_add: [{header: {key: x-route, value: present}}]
- name: regex_ignore_case
  match: {prefix: "/", query_parameters: [{name: c, string_match: {prefix: foo, ignore_case: true}}, {name: d, string_match: {safe_regex: {regex: "[0-9]+"}}}]}
  route: {cluster: backend}
  request_headers_to_add: [{header: {key: x-route, value: regex_ignore_case}}]
"#,
            ),
            vec![
                get("/q?a=1"),
                get("/q?a=2"),
                get("/q?a=2&a=1"),
                get("/q?a=1&a=2"),
                get("/q?b"),
                get("/q?b="),
                get("/q?c=FOObar&d=42"),
                get("/q?c=FOObar&d=4x"),
                get("/q?c=foo"),
                get("/q"),
                get("/q?x=1#frag"),
            ],
        ),
        case(
            "domain_precedence",
            r#"
- name: exact
  domains: ["www.example.com"]
  routes: [{match: {prefix: "/"}, direct_response: {status: 200, body: {inline_string: exact}}}]
- name: suffix
  domains: ["*.example.com"]
  routes: [{match: {prefix: "/"}, direct_response: {status: 200, body: {inline_string: suffix}}}]
- name: longer_suffix
  domains: ["*.api.example.com", "*-bar.foo.com"]
  routes: [{match: {prefix: "/"}, direct_response: {status: 200, body: {inline_string: longer_suffix}}}]
- name: prefix
  domains: ["foo.*", "shop-*"]
  routes: [{match: {prefix: "/"}, direct_response: {status: 200, body: {inline_string: prefix}}}]
- name: with_port
  domains: ["port.example.com:8080"]
  routes: [{match: {prefix: "/"}, direct_response: {status: 200, body: {inline_string: with_port}}}]
- name: catch_all
  domains: ["*"]
  routes: [{match: {prefix: "/"}, direct_response: {status: 200, body: {inline_string: catch_all}}}]
"#,
            vec![
                get("/").host("www.example.com"),
                get("/").host("WWW.Example.COM"),
                get("/").host("api.example.com"),
                get("/").host("v1.api.example.com"),
                get("/").host("example.com"),
                get("/").host("foo.bar"),
                get("/").host("foo-bar.foo.com"),
                get("/").host("-bar.foo.com"),
                get("/").host("shop-1.net"),
                get("/").host("www.example.com:80"),
                get("/").host("port.example.com:8080"),
                get("/").host("port.example.com"),
                get("/").host("elsewhere"),
                get("/").host("foo.bar").h2(),
            ],
        ),
        case(
            "no_route",
            r#"
- name: only
  domains: ["known.example"]
  routes:
  - match: {prefix: "/a"}
    route: {cluster: backend}
"#,
            vec![
                get("/a").host("known.example"),
                get("/b").host("known.example"),
                get("/a").host("unknown.example"),
                post("/b", "abc").host("known.example"),
                get("/b").host("known.example").h2(),
            ],
        ),
        case(
            "strip_matching_host_port",
            r#"
- name: plain
  domains: ["a.example"]
  routes: [{match: {prefix: "/"}, route: {cluster: backend}}]
"#,
            vec![
                get("/").host("a.example"),
                get("/").host("a.example:{port}"),
                get("/").host("a.example:1234"),
            ],
        )
        .hcm("strip_matching_host_port: true"),
        case(
            "strip_any_host_port",
            r#"
- name: plain
  domains: ["a.example"]
  routes: [{match: {prefix: "/"}, route: {cluster: backend}}]
"#,
            vec![get("/").host("a.example:1234"), get("/").host("a.example:{port}")],
        )
        .hcm("strip_any_host_port: true"),
        // ---- direct responses and redirects ----------------------------------------------
        case(
            "direct_response",
            &any_host(
                r#"
- match: {path: "/ok"}
  direct_response: {status: 200, body: {inline_string: hello}}
- match: {path: "/created"}
  direct_response: {status: 201, body: {inline_string: made}}
- match: {path: "/empty"}
  direct_response: {status: 200}
- match: {prefix: "/moved"}
  direct_response: {status: 301}
- match: {prefix: "/found"}
  direct_response: {status: 302, body: {inline_string: "see elsewhere"}}
- match: {path: "/nocontent"}
  direct_response: {status: 204}
- match: {path: "/down"}
  direct_response: {status: 503, body: {inline_string: down}}
- match: {path: "/teapot"}
  direct_response: {status: 418, body: {inline_string: teapot}}
  response_headers_to_add: [{header: {key: x-direct, value: "yes"}}]
"#,
            ),
            vec![
                get("/ok"),
                head("/ok"),
                get("/created"),
                post("/created", "x"),
                get("/empty"),
                get("/moved/a?q=1"),
                get("/found"),
                get("/nocontent"),
                get("/down"),
                get("/teapot"),
                get("/ok").h2(),
                get("/moved/b").h2(),
            ],
        ),
        case(
            "redirects",
            &any_host(
                r#"
- match: {prefix: "/https"}
  redirect: {https_redirect: true}
- match: {prefix: "/host"}
  redirect: {host_redirect: new.example.com}
- match: {prefix: "/port"}
  redirect: {port_redirect: 8443}
- match: {prefix: "/path"}
  redirect: {path_redirect: "/new/place"}
- match: {prefix: "/old/"}
  redirect: {prefix_rewrite: "/v2/"}
- match: {prefix: "/strip"}
  redirect: {path_redirect: "/stripped", strip_query: true}
- match: {prefix: "/found"}
  redirect: {host_redirect: a.example, response_code: FOUND}
- match: {prefix: "/seeother"}
  redirect: {path_redirect: "/x", response_code: SEE_OTHER}
- match: {prefix: "/temporary"}
  redirect: {path_redirect: "/x", response_code: TEMPORARY_REDIRECT}
- match: {prefix: "/permanent"}
  redirect: {path_redirect: "/x", response_code: PERMANENT_REDIRECT}
- match: {prefix: "/scheme"}
  redirect: {scheme_redirect: ftp, host_redirect: files.example}
- match: {prefix: "/regex/"}
  redirect: {regex_rewrite: {pattern: {regex: "^/regex/([^/]+)/(.*)$"}, substitution: "/\\2/\\1"}}
- match: {prefix: "/all"}
  redirect: {https_redirect: true, host_redirect: b.example, port_redirect: 9000, path_redirect: "/p?keep=1"}
"#,
            ),
            vec![
                get("/https/x?y=1"),
                get("/https").host("example.com:80"),
                get("/https").host("example.com:8080"),
                get("/host/x"),
                get("/host/x").host("example.com:8080"),
                get("/port/x"),
                get("/port/x").host("example.com:80"),
                get("/path/x?q=1"),
                get("/old/a/b?c=d"),
                get("/strip?q=1"),
                get("/found"),
                get("/seeother"),
                get("/temporary"),
                get("/permanent"),
                get("/scheme/z"),
                get("/regex/one/two"),
                get("/all?x=y"),
                get("/https/x").h("x-forwarded-proto", "https"),
                get("/host/x").h2(),
            ],
        ),
        // ---- rewrites --------------------------------------------------------------------
        case(
            "rewrites",
            &any_host(
                r#"
- match: {prefix: "/api/"}
  route: {cluster: backend, prefix_rewrite: "/v2/"}
- match: {prefix: "/strip/"}
  route: {cluster: backend, prefix_rewrite: "/"}
- match: {prefix: "/re/"}
  route: {cluster: backend, regex_rewrite: {pattern: {regex: "^/re/([0-9]+)/(.*)$"}, substitution: "/\\2/\\1"}}
- match: {prefix: "/literal"}
  route: {cluster: backend, host_rewrite_literal: internal.example}
- match: {prefix: "/fromheader"}
  route: {cluster: backend, host_rewrite_header: x-host}
- match: {prefix: "/auto"}
  route: {cluster: backend, auto_host_rewrite: true}
- match: {prefix: "/CASE/", case_sensitive: false}
  route: {cluster: backend, prefix_rewrite: "/lower/"}
- match: {path_separated_prefix: "/sep"}
  route: {cluster: backend, prefix_rewrite: "/joined"}
"#,
            ),
            vec![
                get("/api/items?q=1"),
                get("/strip/a/b"),
                get("/strip/"),
                get("/re/42/tail?x=1"),
                get("/re/x/tail"),
                get("/literal/p").host("orig.example:8080"),
                get("/fromheader").h("x-host", "from.header"),
                get("/fromheader"),
                get("/auto"),
                get("/case/x"),
                get("/sep/x"),
                get("/sep"),
                get("/api/items").h2(),
            ],
        ),
        // ---- header mutations -------------------------------------------------------------
        case(
            "header_mutations",
            r#"
- name: local
  domains: ["*"]
  request_headers_to_add:
  - header: {key: x-vhost, value: vhost}
  - header: {key: x-level, value: vhost}
    append_action: APPEND_IF_EXISTS_OR_ADD
  request_headers_to_remove: [x-drop-vhost]
  response_headers_to_add:
  - header: {key: x-level, value: vhost}
    append_action: APPEND_IF_EXISTS_OR_ADD
  response_headers_to_remove: [x-upstream]
  routes:
  - match: {prefix: "/"}
    route: {cluster: backend}
    request_headers_to_add:
    - header: {key: x-level, value: route}
      append_action: APPEND_IF_EXISTS_OR_ADD
    - header: {key: x-add-if-absent, value: route}
      append_action: ADD_IF_ABSENT
    - header: {key: x-overwrite, value: route}
      append_action: OVERWRITE_IF_EXISTS_OR_ADD
    - header: {key: x-overwrite-if-exists, value: route}
      append_action: OVERWRITE_IF_EXISTS
    - header: {key: x-empty, value: ""}
    - header: {key: x-empty-kept, value: ""}
      keep_empty_value: true
    - header: {key: x-client, value: "%REQ(x-in)%"}
    - header: {key: x-client-missing, value: "%REQ(x-not-sent)%"}
    request_headers_to_remove: [x-drop-route]
    response_headers_to_add:
    - header: {key: x-level, value: route}
      append_action: APPEND_IF_EXISTS_OR_ADD
    - header: {key: content-type, value: text/overwritten}
      append_action: OVERWRITE_IF_EXISTS_OR_ADD
    - header: {key: x-upstream-kept, value: "%RESP(x-upstream)%"}
"#,
            vec![
                get("/"),
                get("/")
                    .h("x-level", "client")
                    .h("x-add-if-absent", "client")
                    .h("x-overwrite", "client")
                    .h("x-overwrite-if-exists", "client")
                    .h("x-drop-vhost", "1")
                    .h("x-drop-route", "1")
                    .h("x-drop-config", "1")
                    .h("x-in", "value-in"),
                get("/").h2().h("x-overwrite-if-exists", "client"),
            ],
        )
        .route_config(
            r#"
request_headers_to_add:
- header: {key: x-level, value: config}
  append_action: APPEND_IF_EXISTS_OR_ADD
- header: {key: x-config, value: config}
request_headers_to_remove: [x-drop-config]
response_headers_to_add:
- header: {key: x-level, value: config}
  append_action: APPEND_IF_EXISTS_OR_ADD
- header: {key: x-config-resp, value: config}
"#,
        ),
        case(
            "most_specific_header_mutations_wins",
            r#"
- name: local
  domains: ["*"]
  request_headers_to_add:
  - header: {key: x-level, value: vhost}
    append_action: OVERWRITE_IF_EXISTS_OR_ADD
  response_headers_to_add:
  - header: {key: x-level, value: vhost}
    append_action: OVERWRITE_IF_EXISTS_OR_ADD
  routes:
  - match: {prefix: "/"}
    route: {cluster: backend}
    request_headers_to_add:
    - header: {key: x-level, value: route}
      append_action: OVERWRITE_IF_EXISTS_OR_ADD
    response_headers_to_add:
    - header: {key: x-level, value: route}
      append_action: OVERWRITE_IF_EXISTS_OR_ADD
"#,
            vec![get("/"), get("/").h("x-level", "client")],
        )
        .route_config(
            r#"
most_specific_header_mutations_wins: true
request_headers_to_add:
- header: {key: x-level, value: config}
  append_action: OVERWRITE_IF_EXISTS_OR_ADD
response_headers_to_add:
- header: {key: x-level, value: config}
  append_action: OVERWRITE_IF_EXISTS_OR_ADD
"#,
        ),
        case(
            "header_variables",
            &any_host(
                r#"
- name: vars
  match: {prefix: "/"}
  route: {cluster: backend}
  request_headers_to_add:
  - header: {key: x-remote, value: "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"}
  - header: {key: x-local, value: "%DOWNSTREAM_LOCAL_ADDRESS%"}
  - header: {key: x-local-port, value: "%DOWNSTREAM_LOCAL_PORT%"}
  - header: {key: x-protocol, value: "%PROTOCOL%"}
  - header: {key: x-req, value: "%REQ(user-agent)%"}
  - header: {key: x-year, value: "%START_TIME(%Y)%"}
  - header: {key: x-mixed, value: "a-%PROTOCOL%-b"}
  - header: {key: x-log-type, value: "%ACCESS_LOG_TYPE%"}
  - header: {key: x-literal, value: "100%% sure"}
  response_headers_to_add:
  - header: {key: x-upstream-addr, value: "%UPSTREAM_REMOTE_ADDRESS%"}
  - header: {key: x-code, value: "%RESPONSE_CODE%"}
  - header: {key: x-flags, value: "%RESPONSE_FLAGS%"}
  - header: {key: x-route-name, value: "%ROUTE_NAME%"}
"#,
            ),
            vec![get("/"), get("/").h2()],
        ),
        // ---- cluster selection ----------------------------------------------------------
        case(
            "weighted_clusters",
            &any_host(
                r#"
- match: {prefix: "/to-backend"}
  route:
    weighted_clusters:
      clusters:
      - name: backend
        weight: 100
        request_headers_to_add: [{header: {key: x-weighted, value: backend}}]
        response_headers_to_add: [{header: {key: x-weighted-resp, value: backend}}]
      - name: other
        weight: 0
        request_headers_to_add: [{header: {key: x-weighted, value: other}}]
- match: {prefix: "/to-other"}
  route:
    weighted_clusters:
      clusters:
      - {name: backend, weight: 0}
      - name: other
        weight: 100
        request_headers_to_remove: [x-strip]
"#,
            ),
            vec![
                get("/to-backend"),
                get("/to-backend"),
                get("/to-other").h("x-strip", "1"),
            ],
        ),
        case(
            "cluster_header",
            &any_host(
                r#"
- match: {prefix: "/"}
  route: {cluster_header: x-cluster}
"#,
            ),
            vec![
                get("/").h("x-cluster", "backend"),
                get("/").h("x-cluster", "other"),
                get("/").h("x-cluster", "missing"),
                get("/"),
            ],
        ),
        case(
            "cluster_not_found_404",
            &any_host(
                r#"
- match: {prefix: "/"}
  route: {cluster_header: x-cluster, cluster_not_found_response_code: NOT_FOUND}
"#,
            ),
            vec![
                get("/").h("x-cluster", "missing"),
                get("/").h("x-cluster", "backend"),
            ],
        ),
        // ---- upstream failures -----------------------------------------------------------
        case(
            "connect_failure",
            &any_host("- match: {prefix: \"/\"}\n  route: {cluster: dead}\n"),
            vec![get("/"), post("/upload", "payload"), get("/").h2()],
        ),
        case(
            "timeouts",
            &any_host(
                r#"
- match: {prefix: "/slow/"}
  route: {cluster: backend, timeout: 0.25s, prefix_rewrite: "/"}
- match: {prefix: "/none/"}
  route: {cluster: backend, timeout: 0s, prefix_rewrite: "/"}
- match: {prefix: "/"}
  route: {cluster: backend}
"#,
            ),
            vec![
                get("/slow/delay/600"),
                get("/slow/delay/10"),
                get("/delay/600").h("x-envoy-upstream-rq-timeout-ms", "100"),
                get("/delay/10").h("x-envoy-upstream-rq-timeout-ms", "5000"),
                get("/none/delay/10"),
                get("/slow/delay/600").h2(),
            ],
        ),
        // `x-envoy-upstream-rq-timeout-ms` counts only from an internal client (Envoy drops the
        // `x-envoy-*` control headers of external requests).
        case(
            "timeout_header_from_internal_client",
            &any_host(TO_BACKEND),
            vec![
                get("/delay/600").h("x-envoy-upstream-rq-timeout-ms", "100"),
                get("/delay/10").h("x-envoy-upstream-rq-timeout-ms", "5000"),
                get("/delay/10").h("x-envoy-upstream-rq-timeout-ms", "junk"),
            ],
        )
        .hcm(
            r#"
use_remote_address: true
internal_address_config:
  cidr_ranges: [{address_prefix: 127.0.0.0, prefix_len: 8}]
"#,
        ),
        case(
            "upstream_statuses",
            &any_host(
                r#"
- match: {prefix: "/h2/"}
  route: {cluster: backend_h2, prefix_rewrite: "/"}
- match: {prefix: "/"}
  route: {cluster: backend}
"#,
            ),
            vec![
                get("/status/404"),
                get("/status/503"),
                get("/status/201"),
                post("/status/200", "body"),
                get("/h2/status/500"),
                get("/h2/echo"),
                get("/echo").h2(),
                post("/echo", "h2 body").h2(),
                get("/h2/echo").h2(),
            ],
        ),
        // ---- forwarding headers -----------------------------------------------------------
        case(
            "defaults_edge_headers",
            &any_host(TO_BACKEND),
            vec![
                get("/"),
                get("/")
                    .h("x-forwarded-for", "10.0.0.1")
                    .h("x-forwarded-proto", "https")
                    .h("x-request-id", "client-id")
                    .h("x-envoy-retry-on", "5xx")
                    .h("x-envoy-internal", "true")
                    .h("x-envoy-original-path", "/spoofed"),
                get("/").h("x-forwarded-for", "1.1.1.1, 2.2.2.2"),
            ],
        ),
        case(
            "use_remote_address",
            &any_host(TO_BACKEND),
            vec![
                get("/"),
                get("/")
                    .h("x-forwarded-for", "10.0.0.1")
                    .h("x-forwarded-proto", "https")
                    .h("x-request-id", "client-id")
                    .h("x-envoy-retry-on", "5xx")
                    .h("x-envoy-internal", "true")
                    .h("x-envoy-original-path", "/spoofed"),
            ],
        )
        .hcm("use_remote_address: true"),
        case(
            "use_remote_address_internal",
            &any_host(TO_BACKEND),
            vec![
                get("/"),
                get("/")
                    .h("x-forwarded-for", "10.0.0.1")
                    .h("x-request-id", "client-id")
                    .h("x-envoy-retry-on", "5xx"),
            ],
        )
        .hcm(
            r#"
use_remote_address: true
internal_address_config:
  cidr_ranges: [{address_prefix: 127.0.0.1, prefix_len: 32}]
"#,
        ),
        case(
            "xff_trusted_hops",
            &any_host(
                r#"
- match: {prefix: "/"}
  route: {cluster: backend}
  request_headers_to_add: [{header: {key: x-remote, value: "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"}}]
"#,
            ),
            vec![
                get("/").h("x-forwarded-for", "1.1.1.1, 2.2.2.2"),
                get("/").h("x-forwarded-for", "1.1.1.1"),
                get("/"),
            ],
        )
        .hcm("xff_num_trusted_hops: 1"),
        case(
            "remote_address_trusted_hops",
            &any_host(
                r#"
- match: {prefix: "/"}
  route: {cluster: backend}
  request_headers_to_add: [{header: {key: x-remote, value: "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"}}]
"#,
            ),
            vec![
                get("/").h("x-forwarded-for", "1.1.1.1, 2.2.2.2"),
                get("/").h("x-forwarded-for", "1.1.1.1"),
                get("/"),
            ],
        )
        .hcm("use_remote_address: true\nxff_num_trusted_hops: 1"),
        case(
            "via",
            &any_host(
                r#"
- match: {prefix: "/direct"}
  direct_response: {status: 200, body: {inline_string: direct}}
- match: {prefix: "/"}
  route: {cluster: backend}
"#,
            ),
            vec![
                get("/"),
                get("/").h("via", "1.0 earlier"),
                get("/direct"),
                get("/missing-cluster").h2(),
            ],
        )
        .hcm("via: compat-via"),
        case(
            "server_name_append_if_absent",
            &any_host(
                r#"
- match: {prefix: "/has-server"}
  route: {cluster: backend}
  response_headers_to_add: [{header: {key: server, value: upstream-server}}]
- match: {prefix: "/direct"}
  direct_response: {status: 200, body: {inline_string: direct}}
- match: {prefix: "/"}
  route: {cluster: backend}
"#,
            ),
            vec![get("/"), get("/has-server"), get("/direct"), get("/nothing").host("x").h2()],
        )
        .hcm("server_name: compat-server\nserver_header_transformation: APPEND_IF_ABSENT"),
        case(
            "server_name_overwrite",
            &any_host(
                r#"
- match: {prefix: "/has-server"}
  route: {cluster: backend}
  response_headers_to_add: [{header: {key: server, value: upstream-server}}]
- match: {prefix: "/"}
  route: {cluster: backend}
"#,
            ),
            vec![get("/"), get("/has-server")],
        )
        .hcm("server_name: compat-server"),
        case(
            "server_pass_through",
            &any_host(
                r#"
- match: {prefix: "/has-server"}
  route: {cluster: backend}
  response_headers_to_add: [{header: {key: server, value: upstream-server}}]
- match: {prefix: "/direct"}
  direct_response: {status: 200, body: {inline_string: direct}}
- match: {prefix: "/"}
  route: {cluster: backend}
"#,
            ),
            vec![get("/"), get("/has-server"), get("/direct")],
        )
        .hcm("server_header_transformation: PASS_THROUGH"),
        // ---- request ids -----------------------------------------------------------------
        case(
            "generate_request_id_false",
            &any_host(TO_BACKEND),
            vec![get("/"), get("/").h("x-request-id", "from-client")],
        )
        .hcm("generate_request_id: false"),
        case(
            "always_set_request_id_in_response",
            &any_host(
                r#"
- match: {prefix: "/direct"}
  direct_response: {status: 200, body: {inline_string: direct}}
- match: {prefix: "/"}
  route: {cluster: backend}
"#,
            ),
            vec![
                get("/"),
                get("/").h("x-request-id", "from-client"),
                get("/direct"),
                get("/x").host("other").h2(),
            ],
        )
        .hcm("always_set_request_id_in_response: true"),
        // ---- local replies ---------------------------------------------------------------
        case(
            "local_reply_text_format",
            &any_host(
                r#"
- match: {prefix: "/dead"}
  route: {cluster: dead}
- match: {prefix: "/slow/"}
  route: {cluster: backend, timeout: 0.1s, prefix_rewrite: "/"}
- match: {prefix: "/direct"}
  direct_response: {status: 418, body: {inline_string: teapot}}
- match: {prefix: "/ok"}
  route: {cluster: backend}
- match: {prefix: "/upstream-404"}
  route: {cluster: backend, prefix_rewrite: "/status/404"}
"#,
            ),
            vec![
                get("/nothing"),
                get("/dead"),
                get("/slow/delay/500"),
                get("/direct"),
                get("/ok"),
                get("/upstream-404"),
                get("/dead").h("x-special", "1"),
                get("/ok").h("connection", "upgrade").h("upgrade", "websocket").keep_alive(),
            ],
        )
        .hcm(
            r#"
local_reply_config:
  mappers:
  - filter: {status_code_filter: {comparison: {op: EQ, value: {default_value: 404, runtime_key: compat.unused}}}}
    status_code: 410
    body: {inline_string: "gone"}
    headers_to_add: [{header: {key: x-mapped, value: "404"}}]
  - filter: {header_filter: {header: {name: x-special, present_match: true}}}
    body_format_override: {text_format: "special %RESPONSE_CODE% %LOCAL_REPLY_BODY%"}
  body_format:
    text_format: "%LOCAL_REPLY_BODY% [%RESPONSE_CODE%] %REQ(:path)% %RESPONSE_FLAGS%\n"
"#,
        ),
        case(
            "local_reply_json_format",
            &any_host(
                r#"
- match: {prefix: "/dead"}
  route: {cluster: dead}
- match: {prefix: "/direct"}
  direct_response: {status: 200, body: {inline_string: fine}}
"#,
            ),
            vec![get("/nothing"), get("/dead"), get("/direct"), get("/dead").h2()],
        )
        .hcm(
            r#"
local_reply_config:
  body_format:
    json_format:
      status: "%RESPONSE_CODE%"
      message: "%LOCAL_REPLY_BODY%"
      path: "%REQ(:PATH)%"
      flags: "%RESPONSE_FLAGS%"
"#,
        ),
        // ---- codecs and protocol edges ---------------------------------------------------
        case(
            "h2c_requests",
            &any_host(
                r#"
- match: {prefix: "/direct"}
  direct_response: {status: 200, body: {inline_string: direct}}
- match: {prefix: "/redirect"}
  redirect: {host_redirect: elsewhere.example}
- match: {prefix: "/h2up/"}
  route: {cluster: backend_h2, prefix_rewrite: "/"}
- match: {prefix: "/echo"}
  route: {cluster: backend}
  request_headers_to_add: [{header: {key: x-added, value: h2}}]
  response_headers_to_add: [{header: {key: x-added-resp, value: h2}}]
"#,
            ),
            vec![
                get("/echo?x=1").h2(),
                post("/echo", "hello h2").h2(),
                get("/echo").h2().h("cookie", "a=1").h("cookie", "b=2"),
                get("/echo").h2().h("x-multi", "1").h("x-multi", "2"),
                get("/direct").h2(),
                get("/redirect/x").h2(),
                get("/h2up/echo").h2(),
                get("/nothing").h2(),
                get("/echo").h2().host("authority.example:8443"),
                get("/echo").h("cookie", "a=1").h("cookie", "b=2"),
            ],
        )
        .hcm("codec_type: AUTO"),
        case(
            "http2_only_codec",
            &any_host(TO_BACKEND),
            vec![get("/").h2(), get("/")],
        )
        .hcm("codec_type: HTTP2"),
        case(
            "http1_only_codec",
            &any_host(TO_BACKEND),
            vec![get("/"), get("/").h2()],
        )
        .hcm("codec_type: HTTP1"),
        case(
            "http10_and_missing_host",
            &any_host(TO_BACKEND),
            vec![
                raw("GET / HTTP/1.0\r\nhost: example.com\r\nuser-agent: {ua}\r\n\r\n"),
                raw("GET / HTTP/1.0\r\nuser-agent: {ua}\r\n\r\n"),
                raw("GET / HTTP/1.1\r\nuser-agent: {ua}\r\nconnection: close\r\n\r\n"),
                raw("GET / HTTP/1.1\r\nhost:\r\nuser-agent: {ua}\r\nconnection: close\r\n\r\n"),
                raw("GET http://absolute.example/abs?x=1 HTTP/1.1\r\nhost: example.com\r\nuser-agent: {ua}\r\nconnection: close\r\n\r\n"),
                raw("GET /keep HTTP/1.1\r\nhost: example.com\r\nuser-agent: {ua}\r\n\r\n"),
            ],
        ),
        case(
            "request_body_framing",
            &any_host(TO_BACKEND),
            vec![
                raw("POST /chunked HTTP/1.1\r\nhost: example.com\r\nuser-agent: {ua}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"),
                raw("POST /both HTTP/1.1\r\nhost: example.com\r\nuser-agent: {ua}\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
                post("/sized", "0123456789"),
            ],
        ),
        case(
            "upgrades",
            &any_host(
                r#"
- match: {prefix: "/ws-enabled"}
  route:
    cluster: backend
    upgrade_configs: [{upgrade_type: websocket}]
- match: {prefix: "/"}
  route: {cluster: backend}
"#,
            ),
            vec![
                get("/ws")
                    .h("connection", "upgrade")
                    .h("upgrade", "websocket")
                    .keep_alive(),
                get("/ws-enabled")
                    .h("connection", "upgrade")
                    .h("upgrade", "websocket")
                    .keep_alive(),
                get("/ws")
                    .h("connection", "upgrade")
                    .h("upgrade", "custom-proto")
                    .keep_alive(),
                get("/plain").h("upgrade", "websocket"),
            ],
        ),
        case(
            "upgrades_enabled_on_hcm",
            &any_host(
                r#"
- match: {prefix: "/ws-disabled"}
  route:
    cluster: backend
    upgrade_configs: [{upgrade_type: websocket, enabled: false}]
- match: {prefix: "/"}
  route: {cluster: backend}
"#,
            ),
            vec![
                get("/ws")
                    .h("connection", "upgrade")
                    .h("upgrade", "websocket")
                    .keep_alive(),
                get("/ws-disabled")
                    .h("connection", "upgrade")
                    .h("upgrade", "WebSocket")
                    .keep_alive(),
            ],
        )
        .hcm("upgrade_configs: [{upgrade_type: websocket}]"),
        case(
            "max_request_headers_kb",
            &any_host(TO_BACKEND),
            vec![
                get("/").h("x-small", &"s".repeat(1000)),
                get("/").h("x-big", &"b".repeat(3000)),
                get("/").h2().h("x-big", &"b".repeat(3000)),
            ],
        )
        .hcm("max_request_headers_kb: 2"),
        case(
            "header_limits_default",
            &any_host(TO_BACKEND),
            vec![
                get("/").h("x-big", &"b".repeat(61 * 1024)),
                get("/").h("x-ok", &"b".repeat(50 * 1024)),
                {
                    let mut r = get("/");
                    for i in 0..101 {
                        r = r.h(&format!("x-h{i}"), "v");
                    }
                    r
                },
            ],
        ),
        case(
            "max_headers_count",
            &any_host(TO_BACKEND),
            vec![
                get("/").h("x-1", "a").h("x-2", "b"),
                get("/").h("x-1", "a").h("x-2", "b").h("x-3", "c").h("x-4", "d").h("x-5", "e"),
            ],
        )
        .hcm("common_http_protocol_options: {max_headers_count: 5}"),
        case(
            "internal_only_headers",
            &any_host(TO_BACKEND),
            vec![
                get("/").h("x-internal-secret", "1").h("x-keep", "1"),
            ],
        )
        .route_config(
            r#"
internal_only_headers: [x-internal-secret]
response_headers_to_remove: [content-type]
"#,
        ),
        case(
            "original_path_in_access_log",
            &any_host(
                r#"
- match: {prefix: "/old/"}
  route: {cluster: backend, prefix_rewrite: "/new/"}
- match: {prefix: "/"}
  route: {cluster: backend}
"#,
            ),
            vec![
                get("/old/page?x=1"),
                get("/page").h("x-envoy-original-path", "/from-client"),
                post("/old/upload", "0123456789"),
            ],
        ),
    ]
}
