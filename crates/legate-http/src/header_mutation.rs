//! Applying `request_headers_to_add`/`_remove` and `response_headers_to_add`/`_remove` to a
//! request or response, as Envoy's `HeaderParser::evaluateHeaders` does, and in Envoy's order
//! across the levels of a route table (checked against Envoy 1.40):
//!
//! * Within one level: removals first; then every value is computed against the headers as they
//!   are at that point (so `%REQ(...)%` sees the original values, and `ADD_IF_ABSENT` /
//!   `OVERWRITE_IF_EXISTS` look only at headers that were there before this level); then all
//!   overwrites are set, then all appends added. An empty value is skipped unless
//!   `keep_empty_value`.
//! * Across levels, later wins: the picked weighted cluster's mutations first, then route,
//!   virtual host, route configuration; with `most_specific_header_mutations_wins` the last three
//!   are reversed (route configuration, virtual host, route). The weighted cluster's level stays
//!   first either way.
//!
//! `%VARIABLE%` values are expanded by the caller's `expand` (the format engine); values without
//! `%` are prebuilt at load time and `expand` is not called for them.

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::route::{HeaderAdd, HeaderMutations};
use crate::route_match::{Selected, SelectedAction};

/// `header_value_option.HeaderAppendAction`.
use legate_api::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;

/// Applies one level's mutations.
pub fn apply(
    mutations: &HeaderMutations,
    headers: &mut HeaderMap,
    expand: &dyn Fn(&HeaderAdd) -> String,
) {
    for name in &mutations.remove {
        headers.remove(name);
    }
    if mutations.add.is_empty() {
        return;
    }
    // Decide and compute everything against the headers as they are now, then write.
    let mut writes: Vec<(&HeaderName, HeaderValue, bool)> = Vec::with_capacity(mutations.add.len());
    for add in &mutations.add {
        let value = match &add.literal {
            Some(v) => v.clone(),
            None => match HeaderValue::from_str(&expand(add)) {
                Ok(v) => v,
                // A formatted value that cannot be a header value (a control character from a
                // request field) is dropped rather than sent malformed.
                Err(_) => continue,
            },
        };
        if value.is_empty() && !add.keep_empty_value {
            continue;
        }
        let overwrite = match add.action {
            HeaderAppendAction::AppendIfExistsOrAdd => false,
            HeaderAppendAction::AddIfAbsent if headers.contains_key(&add.name) => continue,
            HeaderAppendAction::AddIfAbsent => false,
            HeaderAppendAction::OverwriteIfExists if !headers.contains_key(&add.name) => continue,
            HeaderAppendAction::OverwriteIfExists | HeaderAppendAction::OverwriteIfExistsOrAdd => {
                true
            }
        };
        writes.push((&add.name, value, overwrite));
    }
    // Overwrites first, then appends: an overwrite and an append of one name in the same level
    // leave both values, overwrite first.
    for (name, value, _) in writes.iter().filter(|w| w.2) {
        headers.insert(*name, value.clone());
    }
    for (name, value, _) in writes.into_iter().filter(|w| !w.2) {
        headers.append(name, value);
    }
}

impl<'a> Selected<'a> {
    /// The levels of request mutations, in the order they are applied.
    pub fn request_mutations(&self) -> impl Iterator<Item = &'a HeaderMutations> + use<'a> {
        self.levels(
            self.weighted().map(|w| &w.request_headers),
            &self.route.request_headers,
            &self.virtual_host.request_headers,
            &self.route_table.request_headers,
        )
    }

    /// The levels of response mutations, in the order they are applied.
    pub fn response_mutations(&self) -> impl Iterator<Item = &'a HeaderMutations> + use<'a> {
        self.levels(
            self.weighted().map(|w| &w.response_headers),
            &self.route.response_headers,
            &self.virtual_host.response_headers,
            &self.route_table.response_headers,
        )
    }

    /// Envoy's `finalizeRequestHeaders` header mutations (the rewrites are [`crate::rewrite`]).
    pub fn apply_request_mutations(
        &self,
        headers: &mut HeaderMap,
        expand: &dyn Fn(&HeaderAdd) -> String,
    ) {
        for level in self.request_mutations() {
            apply(level, headers, expand);
        }
    }

    /// Envoy's `finalizeResponseHeaders`.
    pub fn apply_response_mutations(
        &self,
        headers: &mut HeaderMap,
        expand: &dyn Fn(&HeaderAdd) -> String,
    ) {
        for level in self.response_mutations() {
            apply(level, headers, expand);
        }
    }

    fn weighted(&self) -> Option<&'a crate::route::ClusterWeight> {
        match self.action {
            SelectedAction::Forward { weighted, .. } => weighted,
            _ => None,
        }
    }

    fn levels(
        &self,
        cluster: Option<&'a HeaderMutations>,
        route: &'a HeaderMutations,
        virtual_host: &'a HeaderMutations,
        table: &'a HeaderMutations,
    ) -> impl Iterator<Item = &'a HeaderMutations> + use<'a> {
        let [first, last] = if self.route_table.most_specific_header_mutations_wins {
            [table, route]
        } else {
            [route, table]
        };
        [cluster, Some(first), Some(virtual_host), Some(last)]
            .into_iter()
            .flatten()
            .filter(|m| !m.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::RouteTable;
    use crate::route_match::{RouteRequest, test_support::table_from_yaml};
    use legate_core::runtime::Snapshot;
    use std::cell::Cell;

    fn table(most_specific: bool) -> RouteTable {
        table_from_yaml(&format!(
            r#"
name: t
most_specific_header_mutations_wins: {most_specific}
request_headers_to_add:
- {{header: {{key: x-lvl, value: global}}, append_action: OVERWRITE_IF_EXISTS_OR_ADD}}
- {{header: {{key: x-app, value: global}}}}
response_headers_to_add:
- {{header: {{key: x-resp, value: global}}, append_action: OVERWRITE_IF_EXISTS_OR_ADD}}
virtual_hosts:
- name: fw
  domains: ["*"]
  request_headers_to_add:
  - {{header: {{key: x-lvl, value: vhost}}, append_action: OVERWRITE_IF_EXISTS_OR_ADD}}
  - {{header: {{key: x-app, value: vhost}}}}
  request_headers_to_remove: [x-rm-vhost]
  response_headers_to_add:
  - {{header: {{key: x-resp, value: vhost}}, append_action: OVERWRITE_IF_EXISTS_OR_ADD}}
  routes:
  - match: {{prefix: /w}}
    route:
      weighted_clusters:
        clusters:
        - name: echo
          weight: 1
          request_headers_to_add:
          - {{header: {{key: x-lvl, value: cluster}}, append_action: OVERWRITE_IF_EXISTS_OR_ADD}}
          - {{header: {{key: x-app, value: cluster}}}}
          response_headers_to_add:
          - {{header: {{key: x-resp, value: cluster}}, append_action: OVERWRITE_IF_EXISTS_OR_ADD}}
        - {{name: other, weight: 0}}
    request_headers_to_add:
    - {{header: {{key: x-lvl, value: route}}, append_action: OVERWRITE_IF_EXISTS_OR_ADD}}
    - {{header: {{key: x-app, value: route}}}}
  - match: {{prefix: /m}}
    route: {{cluster: echo}}
    request_headers_to_add:
    - {{header: {{key: x-lvl, value: route}}, append_action: OVERWRITE_IF_EXISTS_OR_ADD}}
    - {{header: {{key: x-app, value: route}}}}
    - {{header: {{key: x-a1, value: "1"}}}}
    - {{header: {{key: x-a1, value: "2"}}}}
    - {{header: {{key: x-abs, value: new}}, append_action: ADD_IF_ABSENT}}
    - {{header: {{key: x-abs2, value: new}}, append_action: ADD_IF_ABSENT}}
    - {{header: {{key: x-ow, value: new}}, append_action: OVERWRITE_IF_EXISTS}}
    - {{header: {{key: x-ow2, value: new}}, append_action: OVERWRITE_IF_EXISTS}}
    - {{header: {{key: x-owa, value: new1}}, append_action: OVERWRITE_IF_EXISTS_OR_ADD}}
    - {{header: {{key: x-owa, value: new2}}, append_action: OVERWRITE_IF_EXISTS_OR_ADD}}
    - {{header: {{key: x-empty, value: ""}}}}
    - {{header: {{key: x-empty-keep, value: ""}}, keep_empty_value: true}}
    - {{header: {{key: x-rm, value: readded}}}}
    - {{header: {{key: x-mixed, value: a}}}}
    - {{header: {{key: x-mixed, value: b}}, append_action: OVERWRITE_IF_EXISTS_OR_ADD}}
    - {{header: {{key: x-fmt, value: "%REQ(x-in)%"}}}}
    - {{header: {{key: x-old, value: new}}, append: false}}
    request_headers_to_remove: [x-rm]
"#
        ))
    }

    /// Applies the request mutations of the route chosen for `path`, expanding `%REQ(x-in)%`
    /// from the incoming headers.
    fn run(t: &RouteTable, path: &str, incoming: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (k, v) in incoming {
            headers.append(*k, HeaderValue::from_static(v));
        }
        let original = headers.clone();
        let req = RouteRequest::new("GET", path, "fw", "http", &original);
        let selected = t.route(&req, &Snapshot::default(), 0).unwrap();
        let calls = Cell::new(0);
        let expand = |add: &HeaderAdd| {
            let v = add.value.as_str();
            calls.set(calls.get() + 1);
            assert!(v.contains('%'), "literal values are not expanded: {v}");
            match v {
                "%REQ(x-in)%" => original
                    .get("x-in")
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_default(),
                other => other.to_owned(),
            }
        };
        selected.apply_request_mutations(&mut headers, &expand);
        assert!(calls.get() <= 1);
        headers
    }

    fn values(h: &HeaderMap, name: &str) -> Vec<String> {
        h.get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn append_actions_follow_envoy() {
        let t = table(false);
        let h = run(
            &t,
            "/m",
            &[
                ("x-a1", "0"),
                ("x-abs", "old"),
                ("x-ow", "old"),
                ("x-owa", "old"),
                ("x-rm", "old"),
                ("x-rm-vhost", "old"),
                ("x-in", "IN"),
                ("x-mixed", "orig"),
                ("x-old", "old"),
            ],
        );
        // Envoy 1.40, same config, as seen by the upstream.
        assert_eq!(values(&h, "x-a1"), ["0", "1", "2"]);
        assert_eq!(values(&h, "x-abs"), ["old"]);
        assert_eq!(values(&h, "x-abs2"), ["new"]);
        assert_eq!(values(&h, "x-ow"), ["new"]);
        assert!(values(&h, "x-ow2").is_empty());
        assert_eq!(values(&h, "x-owa"), ["new2"]);
        assert!(!h.contains_key("x-empty"));
        assert_eq!(values(&h, "x-empty-keep"), [""]);
        assert_eq!(values(&h, "x-rm"), ["readded"]);
        assert!(!h.contains_key("x-rm-vhost"));
        assert_eq!(values(&h, "x-mixed"), ["b", "a"]);
        assert_eq!(values(&h, "x-fmt"), ["IN"]);
        assert_eq!(values(&h, "x-old"), ["new"], "append: false overwrites");
        assert_eq!(values(&h, "x-lvl"), ["global"]);
        assert_eq!(values(&h, "x-app"), ["route", "vhost", "global"]);
    }

    #[test]
    fn levels_apply_in_envoy_order() {
        let h = run(&table(false), "/w", &[]);
        assert_eq!(values(&h, "x-lvl"), ["global"]);
        assert_eq!(values(&h, "x-app"), ["cluster", "route", "vhost", "global"]);
        let h = run(&table(true), "/w", &[]);
        assert_eq!(values(&h, "x-lvl"), ["route"]);
        assert_eq!(values(&h, "x-app"), ["cluster", "global", "vhost", "route"]);
        let h = run(&table(true), "/m", &[("x-lvl", "client")]);
        assert_eq!(values(&h, "x-lvl"), ["route"]);
        assert_eq!(values(&h, "x-app"), ["global", "vhost", "route"]);
    }

    #[test]
    fn response_levels_include_the_weighted_cluster() {
        for (most_specific, want) in [(false, "global"), (true, "vhost")] {
            let t = table(most_specific);
            let headers = HeaderMap::new();
            let req = RouteRequest::new("GET", "/w", "fw", "http", &headers);
            let selected = t.route(&req, &Snapshot::default(), 0).unwrap();
            let mut resp = HeaderMap::new();
            selected.apply_response_mutations(&mut resp, &|add: &HeaderAdd| add.value.clone());
            // The route has no response mutations, so the most specific level is the vhost.
            assert_eq!(values(&resp, "x-resp"), [want]);
            assert_eq!(selected.response_mutations().count(), 3);
        }
    }
}
