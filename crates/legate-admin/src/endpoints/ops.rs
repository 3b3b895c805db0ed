//! The endpoints that act on the process (all POST-only): health-check failing, draining,
//! quitting, log levels, counters, log files, runtime overrides; and `/runtime`.

use std::fmt::Write as _;

use http::StatusCode;

use super::Reply;
use crate::json::Json;
use crate::query::Query;
use crate::state::{AdminState, DrainOptions, LogLevel};

pub fn healthcheck_fail(state: &AdminState, _: &Query) -> Reply {
    state.control.set_health_check_failed(true);
    Reply::ok()
}

pub fn healthcheck_ok(state: &AdminState, _: &Query) -> Reply {
    state.control.set_health_check_failed(false);
    Reply::ok()
}

pub fn drain_listeners(state: &AdminState, query: &Query) -> Reply {
    state.control.drain_listeners(DrainOptions {
        graceful: query.has("graceful"),
        inbound_only: query.has("inboundonly"),
        skip_exit: query.has("skip_exit"),
    });
    Reply::ok()
}

pub fn quit(state: &AdminState, _: &Query) -> Reply {
    state.control.quit();
    Reply::ok()
}

pub fn reopen_logs(state: &AdminState, _: &Query) -> Reply {
    state.control.reopen_logs();
    Reply::ok()
}

pub fn reset_counters(state: &AdminState, _: &Query) -> Reply {
    state.store.reset_counters();
    Reply::ok()
}

/// `active loggers:` and one `  name: level` line per logger, then a blank line.
fn active_loggers(state: &AdminState) -> String {
    let mut out = String::from("active loggers:\n");
    for (name, level) in state.control.loggers() {
        let _ = writeln!(out, "  {name}: {}", level.as_str());
    }
    out.push('\n');
    out
}

const LOGGING_USAGE: &str = "usage: /logging?<name>=<level> (change single level)\n\
usage: /logging?paths=name1:level1,name2:level2,... (change multiple levels)\n\
usage: /logging?level=<level> (change all levels)\n\
usage: /logging?group=<group_name>:<level> (change group of loggers)\n\
levels: trace debug info warning error critical off \n";

/// `POST /logging`: with no parameter, lists the loggers; with one (`level=`, `paths=`,
/// `group=` or `<logger>=<level>`), changes levels and lists them. Anything else is a 400 that
/// names the problem, then the usage and the list, as in Envoy.
pub fn logging(state: &AdminState, query: &Query) -> Reply {
    match change_levels(state, query) {
        Ok(()) => Reply::text(active_loggers(state)),
        Err(error) => Reply::bad_request(format!(
            "error: {error}\n\n{LOGGING_USAGE}{}",
            active_loggers(state)
        )),
    }
}

fn change_levels(state: &AdminState, query: &Query) -> Result<(), &'static str> {
    let [(name, value)] = query.pairs() else {
        return if query.is_empty() {
            Ok(())
        } else {
            Err("invalid number of parameters")
        };
    };
    let known: Vec<String> = state
        .control
        .loggers()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let level = |s: &str| LogLevel::parse(s).ok_or("unknown logger level");
    let logger = |s: &str| {
        if known.iter().any(|k| k == s) {
            Ok(())
        } else {
            Err("unknown logger name")
        }
    };
    match name.as_str() {
        // An empty level is accepted and changes nothing (Envoy lists "" among the choices).
        "level" if value.is_empty() => Ok(()),
        "level" => {
            state.control.set_log_level(None, level(value)?);
            Ok(())
        }
        "paths" | "group" => {
            // Every pair is checked before any is applied.
            let mut changes = Vec::new();
            for item in value.split(',').filter(|s| !s.is_empty()) {
                let (n, l) = item.split_once(':').ok_or("unknown logger level")?;
                let l = level(l)?;
                logger(n)?;
                changes.push((n, l));
            }
            for (n, l) in changes {
                state.control.set_log_level(Some(n), l);
            }
            Ok(())
        }
        _ => {
            let l = level(value)?;
            logger(name)?;
            state.control.set_log_level(Some(name), l);
            Ok(())
        }
    }
}

/// `/runtime`: every key with its final value and its value in each layer (`""` where the
/// layer does not set it), and the layer names. Envoy prints the keys in hash order; Legate
/// sorts them.
pub fn runtime(state: &AdminState, _: &Query) -> Reply {
    Reply::json(render_runtime(&state.runtime).to_pretty())
}

pub fn render_runtime(runtime: &legate_core::runtime::Runtime) -> Json {
    let layers = runtime.layers();
    let snapshot = runtime.snapshot();
    let entries = snapshot
        .values()
        .iter()
        .map(|(key, value)| {
            let per_layer = layers
                .iter()
                .map(|l| Json::str(l.values.get(key).map_or("", String::as_str)))
                .collect();
            let entry = Json::object()
                .field("final_value", Json::str(value))
                .field("layer_values", Json::Array(per_layer))
                .build();
            (key.clone(), entry)
        })
        .collect();
    Json::object()
        .field("entries", Json::Object(entries))
        .field(
            "layers",
            Json::Array(layers.iter().map(|l| Json::str(&l.name)).collect()),
        )
        .build()
}

const RUNTIME_MODIFY_USAGE: &str = "usage: /runtime_modify?key1=value1&key2=value2&keyN=valueN\n       or send the parameters as form values\nuse an empty value to remove a previously added override\n";

/// `POST /runtime_modify?key=value...` (or the same as a form body): sets keys in the admin
/// layer; an empty value removes the override. 503 when the configuration has no admin layer.
pub fn runtime_modify(state: &AdminState, query: &Query) -> Reply {
    if query.is_empty() {
        return Reply::bad_request(RUNTIME_MODIFY_USAGE);
    }
    match state.runtime.modify(query.pairs()) {
        Ok(()) => Reply::ok(),
        Err(message) => Reply::new(StatusCode::SERVICE_UNAVAILABLE, super::TEXT, message),
    }
}
