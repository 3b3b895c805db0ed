//! `/stats` and `/stats/prometheus`: the query parameters, read as Envoy reads them, over the
//! store's own renderers (`legate_core::stats::render`).

use http::StatusCode;
use legate_core::stats::{StatsParams, StatsType};

use super::{JSON, Reply, TEXT};
use crate::query::Query;
use crate::state::AdminState;

/// `filter` and `usedonly`, common to both endpoints. An empty filter is no filter.
fn common(query: &Query) -> Result<StatsParams, Reply> {
    let mut params = StatsParams::new().with_used_only(query.has("usedonly"));
    if let Some(filter) = query.get("filter").filter(|f| !f.is_empty()) {
        params = params.with_filter(filter).map_err(Reply::bad_request)?;
    }
    Ok(params)
}

/// Envoy accepts these bucket modes; Legate renders every one as `cumulative`.
const HISTOGRAM_BUCKETS: [&str; 5] = [
    "cumulative",
    "disjoint",
    "detailed",
    "summary",
    "prometheusnative",
];

pub fn stats(state: &AdminState, query: &Query) -> Reply {
    if let Some(buckets) = query.get("histogram_buckets")
        && !HISTOGRAM_BUCKETS.contains(&buckets)
    {
        return Reply::bad_request(
            "usage: /stats?histogram_buckets=(cumulative|disjoint|detailed|summary|prometheusnative)\n",
        );
    }
    let mut params = match common(query) {
        Ok(p) => p,
        Err(reply) => return reply,
    };
    if let Some(t) = query.get("type") {
        match StatsType::parse(t) {
            Some(t) => params = params.with_type(t),
            None => return Reply::bad_request("invalid &type= param"),
        }
    }
    match query.get("format").unwrap_or("text") {
        "text" => Reply::text(state.store.render_text(&params)),
        "json" => Reply::new(StatusCode::OK, JSON, state.store.render_json(&params)),
        "prometheus" => prometheus_reply(state, query, params),
        // `html` and `active-html` (Envoy's browser pages) are not served.
        _ => Reply::bad_request("usage: /stats?format=(html|active-html|json|prometheus|text)\n\n"),
    }
}

pub fn prometheus(state: &AdminState, query: &Query) -> Reply {
    match common(query) {
        Ok(params) => prometheus_reply(state, query, params),
        Err(reply) => reply,
    }
}

fn prometheus_reply(state: &AdminState, query: &Query, params: StatsParams) -> Reply {
    let params = params.with_text_readouts(query.has("text_readouts"));
    Reply::new(StatusCode::OK, TEXT, state.store.render_prometheus(&params))
}
