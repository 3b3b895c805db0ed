//! The admin endpoints: Envoy's handler table (`source/server/admin/admin.cc`) with each
//! path, its help text and parameters as `/help` prints them, whether it mutates (and so
//! requires POST), and the function that answers it.

mod info;
mod ops;
mod stats;

use http::StatusCode;

use crate::query::Query;
use crate::state::AdminState;

pub const TEXT: &str = "text/plain; charset=UTF-8";
pub const JSON: &str = "application/json";
pub const HTML: &str = "text/html; charset=UTF-8";

/// An endpoint's answer.
#[derive(Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: StatusCode,
    /// `None`: no `content-type` header (Envoy sends none on some errors).
    pub content_type: Option<&'static str>,
    pub body: String,
}

impl Reply {
    pub fn new(status: StatusCode, content_type: &'static str, body: impl Into<String>) -> Reply {
        Reply {
            status,
            content_type: Some(content_type),
            body: body.into(),
        }
    }

    pub fn text(body: impl Into<String>) -> Reply {
        Reply::new(StatusCode::OK, TEXT, body)
    }

    pub fn json(body: impl Into<String>) -> Reply {
        Reply::new(StatusCode::OK, JSON, body)
    }

    pub fn bad_request(body: impl Into<String>) -> Reply {
        Reply::new(StatusCode::BAD_REQUEST, TEXT, body)
    }

    /// The body of every mutating endpoint that succeeds.
    pub fn ok() -> Reply {
        Reply::text("OK\n")
    }
}

/// A query parameter as `/help` documents it.
pub struct Param {
    pub name: &'static str,
    pub help: &'static str,
    /// The allowed values, for enum parameters (`One of (...)`).
    pub choices: &'static [&'static str],
}

const fn param(name: &'static str, help: &'static str) -> Param {
    Param {
        name,
        help,
        choices: &[],
    }
}

const fn choice(name: &'static str, help: &'static str, choices: &'static [&'static str]) -> Param {
    Param {
        name,
        help,
        choices,
    }
}

pub type Handler = fn(&AdminState, &Query) -> Reply;

pub struct Endpoint {
    pub path: &'static str,
    pub help: &'static str,
    /// Mutating endpoints answer only POST (Envoy's `mutates_server_state`).
    pub post: bool,
    pub params: &'static [Param],
    pub handler: Handler,
}

const STATS_FILTER: &str = "Regular expression (Google re2) for filtering stats";
const USED_ONLY: &str = "Only include stats that have been written by system since restart";

/// Envoy's endpoints that Legate serves, sorted by path as `/help` lists them.
pub static ENDPOINTS: &[Endpoint] = &[
    Endpoint {
        path: "/",
        help: "Admin home page",
        post: false,
        params: &[],
        handler: info::home,
    },
    Endpoint {
        path: "/certs",
        help: "print certs on machine",
        post: false,
        params: &[],
        handler: info::certs,
    },
    Endpoint {
        path: "/clusters",
        help: "upstream cluster status",
        post: false,
        params: &[param(
            "filter",
            "Regular expression (Google re2) for filtering clusters by name",
        )],
        handler: info::clusters,
    },
    Endpoint {
        path: "/config_dump",
        help: "dump current Envoy configs",
        post: false,
        params: &[
            param("resource", "The resource to dump"),
            param(
                "mask",
                "The mask to apply. When both resource and mask are specified, the mask is applied to every element in the desired repeated field so that only a subset of fields are returned. The mask is parsed as a Protobuf::FieldMask",
            ),
            param(
                "name_regex",
                "Dump only the currently loaded configurations whose names match the specified regex. Can be used with both resource and mask query parameters.",
            ),
        ],
        handler: info::config_dump,
    },
    Endpoint {
        path: "/drain_listeners",
        help: "drain listeners",
        post: true,
        params: &[
            param(
                "graceful",
                "When draining listeners, enter a graceful drain period prior to closing listeners. This behaviour and duration is configurable via server options or CLI",
            ),
            param(
                "skip_exit",
                "When draining listeners, drain the connections but never stop the listeners. The graceful parameter has no effect when this is set, since the drain period only delays stopping the listeners",
            ),
            param(
                "inboundonly",
                "Drains all inbound listeners. traffic_direction field in envoy_v3_api_msg_config.listener.v3.Listener is used to determine whether a listener is inbound or outbound.",
            ),
        ],
        handler: ops::drain_listeners,
    },
    Endpoint {
        path: "/healthcheck/fail",
        help: "cause the server to fail health checks",
        post: true,
        params: &[],
        handler: ops::healthcheck_fail,
    },
    Endpoint {
        path: "/healthcheck/ok",
        help: "cause the server to pass health checks",
        post: true,
        params: &[],
        handler: ops::healthcheck_ok,
    },
    Endpoint {
        path: "/help",
        help: "print out list of admin commands",
        post: false,
        params: &[],
        handler: help,
    },
    Endpoint {
        path: "/hot_restart_version",
        help: "print the hot restart compatibility version",
        post: false,
        params: &[],
        handler: info::hot_restart_version,
    },
    Endpoint {
        path: "/init_dump",
        help: "dump current Envoy init manager information (experimental)",
        post: false,
        params: &[param(
            "mask",
            "The desired component to dump unready targets. The mask is parsed as a Protobuf::FieldMask. For example, get the unready targets of all listeners with /init_dump?mask=listener`",
        )],
        handler: info::init_dump,
    },
    Endpoint {
        path: "/listeners",
        help: "print listener info",
        post: false,
        params: &[choice("format", "File format to use", &["text", "json"])],
        handler: info::listeners,
    },
    Endpoint {
        path: "/logging",
        help: "query/change logging levels",
        post: true,
        params: &[
            param(
                "paths",
                "Change multiple logging levels by setting to <logger_name1>:<desired_level1>,<logger_name2>:<desired_level2>. If fine grain logging is enabled, use __FILE__ or a glob experision as the logger name. For example, source/common*:warning",
            ),
            param(
                "group",
                "Change given logger group to desired level, set to <logger_group_name>:<desired_level>. logger_group_name must be a logger name.",
            ),
            choice(
                "level",
                "desired logging level, this will change all loggers's level",
                &[
                    "", "trace", "debug", "info", "warning", "error", "critical", "off",
                ],
            ),
        ],
        handler: ops::logging,
    },
    Endpoint {
        path: "/memory",
        help: "print current allocation/heap usage",
        post: false,
        params: &[],
        handler: info::memory,
    },
    Endpoint {
        path: "/quitquitquit",
        help: "exit the server",
        post: true,
        params: &[],
        handler: ops::quit,
    },
    Endpoint {
        path: "/ready",
        help: "print server state, return 200 if LIVE, otherwise return 503",
        post: false,
        params: &[],
        handler: info::ready,
    },
    Endpoint {
        path: "/reopen_logs",
        help: "reopen access logs",
        post: true,
        params: &[],
        handler: ops::reopen_logs,
    },
    Endpoint {
        path: "/reset_counters",
        help: "reset all counters to zero",
        post: true,
        params: &[],
        handler: ops::reset_counters,
    },
    Endpoint {
        path: "/runtime",
        help: "print runtime values",
        post: false,
        params: &[],
        handler: ops::runtime,
    },
    Endpoint {
        path: "/runtime_modify",
        help: "Adds or modifies runtime values as passed in query parameters. To delete a previously added key, use an empty string as the value. Note that deletion only applies to overrides added via this endpoint; values loaded from disk can be modified via override but not deleted. E.g. ?key1=value1&key2=value2...",
        post: true,
        params: &[],
        handler: ops::runtime_modify,
    },
    Endpoint {
        path: "/server_info",
        help: "print server version/status information",
        post: false,
        params: &[],
        handler: info::server_info,
    },
    Endpoint {
        path: "/stats",
        help: "print server stats",
        post: false,
        params: &[
            param("usedonly", USED_ONLY),
            param("filter", STATS_FILTER),
            choice("format", "Format to use", &["text", "json", "prometheus"]),
            choice(
                "type",
                "Stat types to include.",
                &["All", "Counters", "Histograms", "Gauges", "TextReadouts"],
            ),
        ],
        handler: stats::stats,
    },
    Endpoint {
        path: "/stats/prometheus",
        help: "print server stats in prometheus format",
        post: false,
        params: &[
            param("usedonly", USED_ONLY),
            param(
                "text_readouts",
                "Render text_readouts as new gaugues with value 0 (increases Prometheus data size)",
            ),
            param("filter", STATS_FILTER),
        ],
        handler: stats::prometheus,
    },
];

/// The endpoint serving `path` (without its query).
pub fn find(path: &str) -> Option<&'static Endpoint> {
    ENDPOINTS.iter().find(|e| e.path == path)
}

/// The list `/help` prints, and the 404 page after `invalid path. `.
pub fn help_text() -> String {
    let mut out = String::from("admin commands are:\n");
    for e in ENDPOINTS {
        let post = if e.post { " (POST)" } else { "" };
        out.push_str(&format!("  {}{post}: {}\n", e.path, e.help));
        for p in e.params {
            out.push_str(&format!("      {}: {}", p.name, p.help));
            if !p.choices.is_empty() {
                out.push_str(&format!("; One of ({})", p.choices.join(", ")));
            }
            out.push('\n');
        }
    }
    out
}

fn help(_: &AdminState, _: &Query) -> Reply {
    Reply::text(help_text())
}

/// Envoy's answer to an unknown path: 404 with the help text.
pub fn not_found() -> Reply {
    Reply::new(
        StatusCode::NOT_FOUND,
        TEXT,
        format!("invalid path. {}", help_text()),
    )
}

/// Envoy's answer to a mutating endpoint reached without POST.
pub fn method_not_allowed(method: &http::Method) -> Reply {
    Reply::new(
        StatusCode::METHOD_NOT_ALLOWED,
        TEXT,
        format!("Method {method} not allowed, POST required."),
    )
}
