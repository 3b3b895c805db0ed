//! The read-only endpoints: `/`, `/ready`, `/server_info`, `/clusters`, `/listeners`,
//! `/config_dump`, `/memory`, `/certs`, `/init_dump`, `/hot_restart_version`.

use http::StatusCode;
use regex::Regex;

use super::{ENDPOINTS, HTML, JSON, Reply};
use crate::config_dump::{self, DumpParams};
use crate::json::{self, Json};
use crate::query::Query;
use crate::state::{AdminState, ServerState};
use crate::{clusters, listeners, server_info};

/// `/`: Envoy serves a page with forms for every endpoint; Legate serves the same list as a
/// plain table of links.
pub fn home(_: &AdminState, _: &Query) -> Reply {
    let mut rows = String::new();
    for e in ENDPOINTS.iter().filter(|e| e.path != "/") {
        let link = if e.post {
            format!("{} (POST)", e.path)
        } else {
            format!("<a href='{0}'>{0}</a>", e.path)
        };
        rows.push_str(&format!(
            "<tr><td>{link}</td><td>{}</td></tr>\n",
            escape_html(e.help)
        ));
    }
    let body = format!(
        "<!DOCTYPE html>\n<html lang='en'>\n<head>\n  <title>Envoy Admin</title>\n</head>\n<body>\n\
         <table class='home-table'>\n<thead><tr><th>Command</th><th>Description</th></tr></thead>\n\
         <tbody>\n{rows}</tbody>\n</table>\n</body>\n</html>\n"
    );
    Reply::new(StatusCode::OK, HTML, body)
}

fn escape_html(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// `/ready`: 200 `LIVE`, otherwise 503 and the state.
pub fn ready(state: &AdminState, _: &Query) -> Reply {
    let s = state.server_state();
    let status = if s == ServerState::Live {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Reply::new(status, super::TEXT, format!("{}\n", s.as_str()))
}

pub fn server_info(state: &AdminState, _: &Query) -> Reply {
    Reply::json(server_info::render(state))
}

/// `/clusters?filter=` is a search, like the stats filter; an invalid one is a 400 with
/// Envoy's body.
fn filter(query: &Query) -> Result<Option<Regex>, Reply> {
    match query.get("filter").filter(|f| !f.is_empty()) {
        None => Ok(None),
        Some(f) => Regex::new(&legate_core::stats::tags::re2_to_rust(f))
            .map(Some)
            .map_err(|_| Reply::bad_request("Invalid re2 regex")),
    }
}

pub fn clusters(state: &AdminState, query: &Query) -> Reply {
    let filter = match filter(query) {
        Ok(f) => f,
        Err(reply) => return reply,
    };
    let all = state.clusters.clusters();
    // Envoy answers any format other than `json` with text.
    if query.get("format") == Some("json") {
        Reply::json(clusters::render_json(all.as_slice(), filter.as_ref()))
    } else {
        Reply::text(clusters::render_text(all.as_slice(), filter.as_ref()))
    }
}

pub fn listeners(state: &AdminState, query: &Query) -> Reply {
    if query.get("format") == Some("json") {
        Reply::json(listeners::render_json(&lock(&state.listeners)))
    } else {
        Reply::text(listeners::render_text(&lock(&state.listeners)))
    }
}

pub fn config_dump(state: &AdminState, query: &Query) -> Reply {
    let params = match DumpParams::parse(query) {
        Ok(p) => p,
        Err(message) => {
            return Reply::new(StatusCode::BAD_REQUEST, "text/plain", message);
        }
    };
    // Every cluster's assignment (STATIC ones too, as Envoy dumps them), built when asked for.
    let endpoints: Option<Vec<(bool, crate::DynamicResource)>> = params.include_eds.then(|| {
        let clusters = state.clusters.clusters();
        clusters
            .as_slice()
            .iter()
            .map(|c| {
                (
                    c.added_via_api,
                    crate::DynamicResource {
                        name: c.name.to_string(),
                        version_info: String::new(),
                        last_updated: std::time::SystemTime::now(),
                        bytes: prost::Message::encode_to_vec(&clusters::load_assignment(c)),
                    },
                )
            })
            .collect()
    });
    let (status, content_type, body) = config_dump::render(
        &lock(&state.config_dump),
        &state.server_info.node,
        &params,
        endpoints.as_deref(),
    );
    Reply {
        status,
        content_type,
        body,
    }
}

/// `/memory`. Envoy reads tcmalloc's counters; Legate runs on the system allocator, whose
/// counters it cannot read, so the figures come from `/proc/self/status`: `allocated` and
/// `total_physical_bytes` are the resident set (VmRSS), `heap_size` the data segment (VmData),
/// and the allocator-internal figures are zero.
pub fn memory(_: &AdminState, _: &Query) -> Reply {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map_or(0, |k| k * 1024)
    };
    let rss = kib("VmRSS:");
    let body = Json::object()
        .field("allocated", Json::int64(rss))
        .field("heap_size", Json::int64(kib("VmData:")))
        .field("pageheap_unmapped", Json::int64(0))
        .field("pageheap_free", Json::int64(0))
        .field("total_thread_cache", Json::int64(0))
        .field("total_physical_bytes", Json::int64(rss))
        .build();
    Reply::json(body.to_pretty())
}

/// `/certs`: every TLS context alive (listener filter chains, clusters), as Envoy's
/// `envoy.admin.v3.Certificates` printed with `always_print_primitive_fields` (empty lists
/// shown). Envoy's order is its context set's (a hash set); Legate's is compilation order.
pub fn certs(_: &AdminState, _: &Query) -> Reply {
    let now = std::time::SystemTime::now();
    let details = |c: &legate_core::x509::CertificateFile| {
        let d = &c.details;
        let mut sans = Vec::new();
        // Envoy's `Utility::certificateDetails`: DNS names, then URIs, then IP addresses.
        for (kind, names) in [
            ("dns", &d.dns_sans),
            ("uri", &d.uri_sans),
            ("ip_address", &d.ip_sans),
        ] {
            sans.extend(
                names
                    .iter()
                    .map(|n| Json::object().field(kind, Json::str(n.clone())).build()),
            );
        }
        Json::object()
            .field("path", Json::str(c.path.clone()))
            .field("serial_number", Json::str(d.serial.clone()))
            .field("subject_alt_names", Json::Array(sans))
            // `getDaysUntilExpiration(...).value_or(0)`: 0 once expired.
            .field(
                "days_until_expiration",
                Json::int64(d.days_until_expiration(now).unwrap_or(0)),
            )
            .field(
                "valid_from",
                Json::str(config_dump::timestamp(d.not_before)),
            )
            .field(
                "expiration_time",
                Json::str(config_dump::timestamp(d.not_after)),
            )
            .build()
    };
    let certificates = legate_core::x509::ContextCertificates::all()
        .iter()
        .map(|context| {
            Json::object()
                .field(
                    "ca_cert",
                    Json::Array(context.ca_cert().iter().map(details).collect()),
                )
                .field(
                    "cert_chain",
                    Json::Array(context.cert_chain().iter().map(details).collect()),
                )
                .build()
        })
        .collect();
    let body = Json::object()
        .field("certificates", Json::Array(certificates))
        .build();
    Reply::json(body.to_pretty())
}

/// `/init_dump`: static configuration has no init targets left once the server is up.
pub fn init_dump(_: &AdminState, _: &Query) -> Reply {
    Reply::new(
        StatusCode::OK,
        JSON,
        json::Json::object().build().to_pretty(),
    )
}

pub fn hot_restart_version(state: &AdminState, _: &Query) -> Reply {
    Reply::text(state.server_info.hot_restart_version.clone())
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
