//! Live reconfiguration, end to end: LDS / CDS / RDS / EDS from files (`path_config_source`,
//! replaced by rename as Envoy's `dynamic-config-fs` example does) and SIGHUP reload of the
//! bootstrap. Every expectation here was first checked against Envoy 1.40 (run with
//! `LEGATE_E2E_PROXY=envoy`); the SIGHUP test is Legate's alone (Envoy does not reload its
//! bootstrap) and is skipped against Envoy.
//!
//! What Envoy 1.40 does, as observed (and relied on below):
//!
//! * Stats per subscription: `listener_manager.lds.*`, `cluster_manager.cds.*`,
//!   `http.<stat_prefix>.rds.<route_config_name>.*`, and for an EDS cluster `cluster.<name>.*`
//!   (not `cluster.<name>.eds.*`): `update_attempt`, `update_success`, `update_rejected`,
//!   `update_failure`, `version` (a hash of `version_info`; the same `version_info` gives the
//!   same hash in every subscription), and the text readout `version_text` (the
//!   `version_info` itself, shown quoted in `/stats`). Also `config_reload` (CDS, RDS),
//!   `update_time`, `init_fetch_timeout`, `update_empty` (RDS, EDS), `update_no_rebuild` and
//!   `assignment_stale` / `assignment_timeout_received` / `assignment_use_cached` (EDS),
//!   `config_reload_time_ms` (CDS, RDS), the histogram `update_duration`; no `config_reload` or
//!   `update_empty` for LDS, no `update_empty` for CDS. The `version` value is
//!   xxHash64(version_info, seed 0): 13237225503670494420 for "1", 6927017134761466251 for "2"
//!   (only its changes are checked here).
//! * A file that does not parse (invalid YAML) counts `update_failure`, not `update_rejected`.
//!   A file that parses but breaks a `validate.rules` constraint (a negative duration, an empty
//!   `domains`, a port above 65535) is rejected whole: `update_rejected`, nothing applied.
//! * An error found while applying one resource (a STATIC cluster with a host name, a listener
//!   whose inline route names an unknown cluster) rejects the update (`update_rejected`,
//!   `version_text` unchanged) but the *other* resources of the same file are applied: a valid
//!   new cluster or listener next to the bad one is added.
//! * Unknown fields in dynamic resources are accepted with a warning and counted in
//!   `server.dynamic_unknown_fields` (Envoy rejects them only with
//!   `--reject-unknown-dynamic-fields`); the update succeeds.
//! * A route table from RDS is not checked for unknown clusters (`validate_clusters` defaults
//!   to false for RDS); a request on such a route gets a 503. An inline table in a listener is
//!   checked.
//! * A change confined to a listener's filter chains (e.g. the HCM's `stat_prefix`) is an
//!   in-place update: `listener_modified` and `listener_in_place_updated` +1, the old chain's
//!   connections drain (`total_filter_chains_draining`). A change of a listener-level field
//!   (e.g. `per_connection_buffer_limit_bytes`) replaces the listener: `listener_modified` +1
//!   and the old one drains (`total_listeners_draining`) on the same socket; no connection is
//!   refused during the switch.
//! * The RDS subscription is shared by every HCM naming the same route config and source; its
//!   stats keep the `stat_prefix` of the HCM that created it: after the listener's
//!   `stat_prefix` changes from `ingress` to `ingress2`, RDS updates still count in
//!   `http.ingress.rds.r.*` (requests count in `http.ingress2.*`).
//! * A removed listener stops accepting at once (connections refused) while its open
//!   connections drain for `--drain-time-s`; a request in flight completes. When the drain
//!   time is over, the connections still open are closed.
//! * In `/config_dump`, a listener updated in place keeps the `version_info` it had (Envoy
//!   builds the updated listener with its predecessor's version); a replaced listener takes
//!   the version of the update that replaced it. A draining listener still appears in
//!   `dynamic_listeners` (with a `draining_state`) until its drain is over.
//! * A rename is picked up within a few milliseconds (Envoy: 3-4 ms from the rename to
//!   `update_success`).
//! * A cluster's `version_info` in `/config_dump` is that of the CDS update that last added or
//!   changed it; `/config_dump?include_eds` lists every cluster's assignment in
//!   `dynamic_endpoint_configs` (STATIC ones too), without a `version_info`.

mod e2e;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e::dynamic::*;
use e2e::{Upstream, http_get, send_signal, target_is_envoy};
use serde_json::{Value, json};

const SECOND: Duration = Duration::from_secs(1);

fn rds_main() -> Routes {
    Routes::Rds {
        name: "r",
        file: "rds.yaml",
    }
}

/// The HTTP listener every test starts with: `main` on `port`, routes from RDS `r`.
fn main_listener(port: u16, stat_prefix: &str, listener_extra: Value) -> Value {
    http_listener(
        "main",
        port,
        stat_prefix,
        rds_main(),
        listener_extra,
        Value::Null,
    )
}

/// Route table `r`: `/b` to the EDS cluster, `/` to the STATIC one, each answer tagged with
/// `x-variant: variant`; `more` routes go first.
fn table(variant: &str, more: Vec<Value>) -> Value {
    let mut routes = more;
    routes.push(route_to("/b", "eds_b", &[("x-variant", variant)]));
    routes.push(route_to("/", "static_a", &[("x-variant", variant)]));
    route_config("r", routes)
}

/// The starting files: LDS `main`, CDS `static_a` (STATIC → `a`) and `eds_b` (EDS → `b`),
/// RDS `r` variant 1.
fn base_files(port: u16, a: SocketAddr, b: SocketAddr) -> Vec<(&'static str, String)> {
    vec![
        (
            "lds.yaml",
            lds("1", &[main_listener(port, "ingress", Value::Null)]),
        ),
        (
            "cds.yaml",
            cds(
                "1",
                &[
                    static_cluster("static_a", &[a]),
                    eds_cluster("eds_b", "eds.yaml"),
                ],
            ),
        ),
        ("rds.yaml", rds("1", &[table("1", vec![])])),
        ("eds.yaml", eds("1", &[assignment("eds_b", &[b])])),
    ]
}

/// Starts the proxy on the base files and waits until `main` serves.
fn start_base(port: u16, a: &Upstream, b: &Upstream, drain_time_s: u32) -> DynProxy {
    let p = DynProxy::start(
        &dynamic_bootstrap(),
        &base_files(port, a.addr, b.addr),
        drain_time_s,
    );
    p.wait_listening(port);
    p.wait_stat(
        "listener_manager.total_listeners_active",
        10 * SECOND,
        |v| v == 1,
    );
    p
}

const RDS_OK: &str = "http.ingress.rds.r.update_success";
const LDS_OK: &str = "listener_manager.lds.update_success";
const CDS_OK: &str = "cluster_manager.cds.update_success";
const EDS_OK: &str = "cluster.eds_b.update_success";

/// GETs `path` on a fresh connection until `check` accepts the response (updates reach the
/// workers just after the stat says they were applied).
fn eventually_get(
    addr: SocketAddr,
    what: &str,
    mut check: impl FnMut(&str, &e2e::RawResponse) -> bool,
) -> e2e::RawResponse {
    let mut n = 0u32;
    let deadline = Instant::now() + 5 * SECOND;
    loop {
        n += 1;
        // A distinct path each time, so that the upstream that served it can be told.
        let path = format!("/probe{n}-{}", fastish());
        let r = http_get(addr, &path, &[]);
        if check(&path, &r) {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for: {what}; last response: {r:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn fastish() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// A GET on a fresh connection to `path` under `prefix`, checked to have reached `upstream`.
fn reaches(addr: SocketAddr, prefix: &str, upstream: &Upstream) -> bool {
    let path = format!("{prefix}/{}", fastish());
    let r = http_get(addr, &path, &[]);
    r.status == 200 && saw(upstream, &path)
}

fn names(list: &Value, pointer: &str) -> Vec<String> {
    let mut v: Vec<String> = list
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            e.pointer(pointer)
                .and_then(|n| n.as_str())
                .map(str::to_owned)
        })
        .collect();
    v.sort();
    v
}

// ---- 1 ---------------------------------------------------------------------------------------

/// Route, cluster, endpoint and listener changes written to the watched files take effect for
/// new requests, on the same port, and are reported in the stats and `/config_dump` as Envoy
/// reports them.
#[test]
fn file_updates_take_effect_and_are_reported() {
    let (a, b, c) = (Upstream::start(), Upstream::start(), Upstream::start());
    let (port, port2, port3) = (free_port(), free_port(), free_port());
    let addr = local(port);
    let p = start_base(port, &a, &b, 1);

    // The starting state.
    let r = eventually_get(addr, "the first route table", |path, r| {
        r.status == 200 && saw(&a, path)
    });
    assert_eq!(r.header("x-variant"), Some("1"));
    assert!(
        reaches(addr, "/b", &b),
        "/b goes to the EDS cluster's endpoint"
    );
    for (name, want) in [
        (LDS_OK, 1),
        ("listener_manager.listener_added", 1),
        ("listener_manager.total_listeners_active", 1),
        (CDS_OK, 1),
        ("cluster_manager.cluster_added", 2),
        ("cluster_manager.active_clusters", 2),
        (RDS_OK, 1),
        (EDS_OK, 1),
        ("listener_manager.lds.update_rejected", 0),
        ("cluster_manager.cds.update_rejected", 0),
    ] {
        assert_eq!(p.must_stat(name), want, "{name} at start");
    }
    for name in [
        "listener_manager.lds.version_text",
        "cluster_manager.cds.version_text",
        "http.ingress.rds.r.version_text",
        "cluster.eds_b.version_text",
    ] {
        assert_eq!(p.text_stat(name).as_deref(), Some("1"), "{name} at start");
    }
    // The subscriptions' stats are Envoy's, name for name (histograms included).
    let stats = p.admin_get("/stats").body;
    let mut got: Vec<&str> = stats
        .lines()
        .filter_map(|l| l.split_once(": ").map(|(n, _)| n))
        .filter(|n| {
            [
                "listener_manager.lds.",
                "cluster_manager.cds.",
                "http.ingress.rds.r.",
            ]
            .iter()
            .any(|p| n.starts_with(p))
                || n.strip_prefix("cluster.eds_b.").is_some_and(|rest| {
                    [
                        "update_",
                        "version",
                        "config_reload",
                        "init_fetch",
                        "assignment_",
                    ]
                    .iter()
                    .any(|p| rest.starts_with(p))
                })
        })
        .collect();
    got.sort();
    let mut want: Vec<String> = Vec::new();
    for (scope, names) in [
        (
            "listener_manager.lds",
            &[
                "init_fetch_timeout",
                "update_attempt",
                "update_duration",
                "update_failure",
                "update_rejected",
                "update_success",
                "update_time",
                "version",
                "version_text",
            ][..],
        ),
        (
            "cluster_manager.cds",
            &[
                "config_reload",
                "config_reload_time_ms",
                "init_fetch_timeout",
                "update_attempt",
                "update_duration",
                "update_failure",
                "update_rejected",
                "update_success",
                "update_time",
                "version",
                "version_text",
            ][..],
        ),
        (
            "http.ingress.rds.r",
            &[
                "config_reload",
                "config_reload_time_ms",
                "init_fetch_timeout",
                "update_attempt",
                "update_duration",
                "update_empty",
                "update_failure",
                "update_rejected",
                "update_success",
                "update_time",
                "version",
                "version_text",
            ][..],
        ),
        (
            "cluster.eds_b",
            &[
                "assignment_stale",
                "assignment_timeout_received",
                "assignment_use_cached",
                "init_fetch_timeout",
                "update_attempt",
                "update_duration",
                "update_empty",
                "update_failure",
                "update_no_rebuild",
                "update_rejected",
                "update_success",
                "update_time",
                "version",
                "version_text",
            ][..],
        ),
    ] {
        want.extend(names.iter().map(|n| format!("{scope}.{n}")));
    }
    want.sort();
    assert_eq!(got, want, "the subscription stats");

    let lds_hash = p.must_stat("listener_manager.lds.version");
    let cds_hash = p.must_stat("cluster_manager.cds.version");
    let rds_hash = p.must_stat("http.ingress.rds.r.version");
    assert_ne!(lds_hash, 0, "the version stat is a hash of version_info");

    // A route change: the response header.
    assert_eq!(
        p.apply("rds.yaml", &rds("2", &[table("2", vec![])]), RDS_OK),
        2
    );
    eventually_get(addr, "x-variant 2 after the RDS update", |_, r| {
        r.header("x-variant") == Some("2")
    });
    assert_eq!(
        p.text_stat("http.ingress.rds.r.version_text").as_deref(),
        Some("2")
    );
    assert_ne!(p.must_stat("http.ingress.rds.r.version"), rds_hash);

    // A new cluster, then a route to it.
    let three = [
        static_cluster("static_a", &[a.addr]),
        eds_cluster("eds_b", "eds.yaml"),
        static_cluster("static_c", &[c.addr]),
    ];
    assert_eq!(p.apply("cds.yaml", &cds("2", &three), CDS_OK), 2);
    assert_eq!(p.must_stat("cluster_manager.cluster_added"), 3);
    assert_eq!(p.must_stat("cluster_manager.cluster_modified"), 0);
    assert_eq!(p.must_stat("cluster_manager.active_clusters"), 3);
    assert_eq!(
        p.text_stat("cluster_manager.cds.version_text").as_deref(),
        Some("2")
    );
    assert_ne!(p.must_stat("cluster_manager.cds.version"), cds_hash);
    let with_c = |v: &str| table(v, vec![route_to("/c", "static_c", &[("x-variant", v)])]);
    assert_eq!(p.apply("rds.yaml", &rds("3", &[with_c("3")]), RDS_OK), 3);
    eventually("/c to reach the new cluster", 5 * SECOND, || {
        reaches(addr, "/c", &c).then_some(())
    });

    // The EDS cluster's endpoint moves to another upstream.
    assert_eq!(
        p.apply(
            "eds.yaml",
            &eds("2", &[assignment("eds_b", &[a.addr])]),
            EDS_OK
        ),
        2
    );
    assert_eq!(
        p.text_stat("cluster.eds_b.version_text").as_deref(),
        Some("2")
    );
    eventually("/b to reach the new endpoint", 5 * SECOND, || {
        reaches(addr, "/b", &a).then_some(())
    });
    // An unchanged cluster is not "modified" by an EDS update.
    assert_eq!(p.must_stat("cluster_manager.cluster_modified"), 0);

    // The listener changes (its HCM's stat_prefix) and keeps serving on the same port.
    assert_eq!(
        p.apply(
            "lds.yaml",
            &lds("2", &[main_listener(port, "ingress2", Value::Null)]),
            LDS_OK
        ),
        2
    );
    assert_eq!(p.must_stat("listener_manager.listener_modified"), 1);
    // Only the filter chain changed: Envoy updates the listener in place.
    assert_eq!(p.must_stat("listener_manager.listener_in_place_updated"), 1);
    assert_eq!(p.must_stat("listener_manager.listener_added"), 1);
    assert_eq!(p.must_stat("listener_manager.total_listeners_active"), 1);
    assert_eq!(
        p.text_stat("listener_manager.lds.version_text").as_deref(),
        Some("2")
    );
    assert_ne!(p.must_stat("listener_manager.lds.version"), lds_hash);
    eventually(
        "requests counted under the new stat_prefix",
        5 * SECOND,
        || {
            let r = http_get(addr, "/", &[]);
            assert_eq!(r.status, 200, "{r:?}");
            p.stat("http.ingress2.downstream_rq_total")
                .filter(|n| *n >= 1)
        },
    );
    // The RDS subscription keeps the stats of the HCM that created it.
    assert_eq!(p.apply("rds.yaml", &rds("4", &[with_c("4")]), RDS_OK), 4);
    eventually_get(addr, "x-variant 4", |_, r| {
        r.header("x-variant") == Some("4")
    });

    // Two more listeners (HTTP with an inline route table, and tcp_proxy) come and go.
    let second = http_listener(
        "second",
        port2,
        "second",
        Routes::Inline(route_config("inline", vec![direct("/", 200, "second\n")])),
        Value::Null,
        Value::Null,
    );
    let main2 = main_listener(port, "ingress2", Value::Null);
    let tcp = tcp_listener("tcp", port3, "static_a");
    assert_eq!(
        p.apply("lds.yaml", &lds("3", &[main2.clone(), second, tcp]), LDS_OK),
        3
    );
    assert_eq!(p.must_stat("listener_manager.listener_added"), 3);
    p.wait_stat("listener_manager.total_listeners_active", 5 * SECOND, |v| {
        v == 3
    });
    p.wait_listening(port2);
    p.wait_listening(port3);
    let r = http_get(local(port2), "/", &[]);
    assert_eq!((r.status, r.body.as_str()), (200, "second\n"));
    // The tcp_proxy listener passes the bytes through to the cluster's upstream.
    assert!(reaches(local(port3), "/through-tcp", &a));
    assert_eq!(p.apply("lds.yaml", &lds("4", &[main2]), LDS_OK), 4);
    assert_eq!(p.must_stat("listener_manager.listener_removed"), 2);
    p.wait_stat("listener_manager.total_listeners_active", 5 * SECOND, |v| {
        v == 1
    });
    for gone in [port2, port3] {
        assert!(
            p.wait_refused(gone, 5 * SECOND),
            "a removed listener's port still accepts connections"
        );
    }
    assert_eq!(http_get(addr, "/", &[]).status, 200);

    // The cluster loses its route, then goes.
    assert_eq!(
        p.apply("rds.yaml", &rds("5", &[table("5", vec![])]), RDS_OK),
        5
    );
    let two = [
        static_cluster("static_a", &[a.addr]),
        eds_cluster("eds_b", "eds.yaml"),
    ];
    assert_eq!(p.apply("cds.yaml", &cds("3", &two), CDS_OK), 3);
    assert_eq!(p.must_stat("cluster_manager.cluster_removed"), 1);
    assert_eq!(p.must_stat("cluster_manager.active_clusters"), 2);
    eventually_get(addr, "x-variant 5", |path, r| {
        r.header("x-variant") == Some("5") && saw(&a, path)
    });

    // /config_dump shows what was written, with the versions.
    let listeners = eventually(
        "the removed listeners to leave /config_dump",
        10 * SECOND,
        || {
            let l = p.dump_section("ListenersConfigDump", false);
            (names(&l["dynamic_listeners"], "/name") == ["main"]).then_some(l)
        },
    );
    assert_eq!(listeners["version_info"], "4", "{listeners}");
    let dl = &listeners["dynamic_listeners"];
    assert_eq!(names(dl, "/name"), ["main"], "{listeners}");
    // `main` was last changed by version 2, in place (only its filter chain changed): Envoy
    // keeps the version of the listener it updated in place, "1". (A listener-level change
    // that replaces the listener takes the new version; see the drain test.)
    assert_eq!(dl[0]["active_state"]["version_info"], "1", "{listeners}");
    assert_eq!(
        dl[0]["active_state"]["listener"]["address"]["socket_address"]["port_value"], port,
        "{listeners}"
    );

    let clusters = p.dump_section("ClustersConfigDump", false);
    assert_eq!(clusters["version_info"], "3", "{clusters}");
    let active = &clusters["dynamic_active_clusters"];
    assert_eq!(
        names(active, "/cluster/name"),
        ["eds_b", "static_a"],
        "{clusters}"
    );
    for c in active.as_array().unwrap() {
        // Neither cluster changed since it was added by version 1.
        assert_eq!(c["version_info"], "1", "{clusters}");
    }

    let routes = p.dump_section("RoutesConfigDump", false);
    let dr = &routes["dynamic_route_configs"];
    assert_eq!(names(dr, "/route_config/name"), ["r"], "{routes}");
    assert_eq!(dr[0]["version_info"], "5", "{routes}");

    let endpoints = p.dump_section("EndpointsConfigDump", true);
    let de = endpoints["dynamic_endpoint_configs"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let eds_b = de
        .iter()
        .find(|e| e["endpoint_config"]["cluster_name"] == "eds_b")
        .unwrap_or_else(|| panic!("no eds_b in dynamic_endpoint_configs: {endpoints}"));
    let ep = &eds_b["endpoint_config"]["endpoints"][0]["lb_endpoints"][0]["endpoint"];
    assert_eq!(
        ep["address"]["socket_address"]["port_value"],
        a.addr.port(),
        "{endpoints}"
    );
}

// ---- 2 ---------------------------------------------------------------------------------------

/// Bad files: nothing of a file that does not parse or breaks a proto constraint is applied;
/// a resource that fails while being applied is refused while its valid siblings are applied
/// (Envoy's per-resource behaviour); requests keep being answered as before, and a later good
/// file applies.
#[test]
fn bad_updates_are_rejected_and_the_running_config_stays() {
    let (a, b, c) = (Upstream::start(), Upstream::start(), Upstream::start());
    let (port, port2, port3) = (free_port(), free_port(), free_port());
    let addr = local(port);
    let p = start_base(port, &a, &b, 1);
    let serving = |variant: &str| {
        let r = eventually_get(addr, "the route in force", |path, r| {
            r.status == 200 && saw(&a, path)
        });
        assert_eq!(r.header("x-variant"), Some(variant), "{r:?}");
        assert!(
            reaches(addr, "/b", &b),
            "/b no longer reaches the EDS endpoint"
        );
    };
    serving("1");
    let cluster_names = || {
        names(
            &p.dump_section("ClustersConfigDump", false)["dynamic_active_clusters"],
            "/cluster/name",
        )
    };
    let base = || {
        vec![
            static_cluster("static_a", &[a.addr]),
            eds_cluster("eds_b", "eds.yaml"),
        ]
    };

    // CDS: a new valid cluster beside one breaking validate.rules (a negative duration):
    // rejected whole.
    let mut bad = static_cluster("bad", &[c.addr]);
    bad["connect_timeout"] = json!("-1s");
    let mut v2 = base();
    v2.extend([static_cluster("static_c", &[c.addr]), bad]);
    p.apply(
        "cds.yaml",
        &cds("2", &v2),
        "cluster_manager.cds.update_rejected",
    );
    assert_eq!(p.must_stat(CDS_OK), 1);
    assert_eq!(
        p.text_stat("cluster_manager.cds.version_text").as_deref(),
        Some("1")
    );
    assert_eq!(p.must_stat("cluster_manager.active_clusters"), 2);
    assert_eq!(cluster_names(), ["eds_b", "static_a"]);
    serving("1");

    // CDS: not YAML at all: a failure (not a rejection).
    p.apply(
        "cds.yaml",
        "version_info: \"3\"\nresources: [ {{{\n",
        "cluster_manager.cds.update_failure",
    );
    assert_eq!(p.must_stat("cluster_manager.cds.update_rejected"), 1);
    assert_eq!(p.must_stat(CDS_OK), 1);
    serving("1");

    // CDS: one cluster fails while being built (a STATIC host must be an IP address): the
    // update is rejected and the version stays, but its valid new sibling is added.
    let mut named = static_cluster("by_name", &[c.addr]);
    named["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
        ["address"] = json!("localhost");
    let mut v4 = base();
    v4.extend([static_cluster("static_c", &[c.addr]), named]);
    p.apply(
        "cds.yaml",
        &cds("4", &v4),
        "cluster_manager.cds.update_rejected",
    );
    assert_eq!(p.must_stat(CDS_OK), 1);
    assert_eq!(
        p.text_stat("cluster_manager.cds.version_text").as_deref(),
        Some("1")
    );
    assert_eq!(cluster_names(), ["eds_b", "static_a", "static_c"]);
    assert_eq!(p.must_stat("cluster_manager.active_clusters"), 3);
    serving("1");

    // CDS: a field the proto does not have is ignored with a warning in dynamic resources.
    let mut odd = static_cluster("static_c", &[c.addr]);
    odd["not_a_cluster_field"] = json!(1);
    let mut v5 = base();
    v5.push(odd);
    let unknown_before = p.stat("server.dynamic_unknown_fields").unwrap_or(0);
    assert_eq!(p.apply("cds.yaml", &cds("5", &v5), CDS_OK), 2);
    assert_eq!(
        p.text_stat("cluster_manager.cds.version_text").as_deref(),
        Some("5")
    );
    p.wait_at_least("server.dynamic_unknown_fields", unknown_before + 1);
    serving("1");

    // LDS: of two new listeners, the one whose inline route names an unknown cluster is
    // refused; the valid one is added; the update counts as rejected.
    let inline_to = |name: &str, port: u16, cluster: &str| {
        http_listener(
            name,
            port,
            name,
            Routes::Inline(route_config("inline", vec![route_to("/", cluster, &[])])),
            Value::Null,
            Value::Null,
        )
    };
    let main = main_listener(port, "ingress", Value::Null);
    p.apply(
        "lds.yaml",
        &lds(
            "2",
            &[
                main.clone(),
                inline_to("second", port2, "static_c"),
                inline_to("third", port3, "nope"),
            ],
        ),
        "listener_manager.lds.update_rejected",
    );
    assert_eq!(p.must_stat(LDS_OK), 1);
    assert_eq!(
        p.text_stat("listener_manager.lds.version_text").as_deref(),
        Some("1")
    );
    p.wait_stat("listener_manager.total_listeners_active", 5 * SECOND, |v| {
        v == 2
    });
    p.wait_listening(port2);
    assert!(reaches(local(port2), "/second", &c));
    assert!(
        std::net::TcpStream::connect(local(port3)).is_err(),
        "the refused listener is listening"
    );
    serving("1");

    // LDS: not YAML.
    p.apply(
        "lds.yaml",
        "version_info: \"3\"\nresources:\n- [\n",
        "listener_manager.lds.update_failure",
    );
    assert_eq!(p.must_stat(LDS_OK), 1);
    assert!(reaches(local(port2), "/second", &c));
    serving("1");

    // LDS: a good file applies: `second` goes, `third` (now valid) comes.
    assert_eq!(
        p.apply(
            "lds.yaml",
            &lds("4", &[main.clone(), inline_to("third", port3, "static_a")]),
            LDS_OK
        ),
        2
    );
    assert_eq!(
        p.text_stat("listener_manager.lds.version_text").as_deref(),
        Some("4")
    );
    p.wait_listening(port3);
    assert!(reaches(local(port3), "/third", &a));
    assert!(p.wait_refused(port2, 5 * SECOND));

    // RDS: an empty `domains` breaks validate.rules: rejected, the table in force stays.
    let mut empty = table("2", vec![]);
    empty["virtual_hosts"][0]["domains"] = json!([]);
    p.apply(
        "rds.yaml",
        &rds("2", &[empty]),
        "http.ingress.rds.r.update_rejected",
    );
    assert_eq!(p.must_stat(RDS_OK), 1);
    assert_eq!(
        p.text_stat("http.ingress.rds.r.version_text").as_deref(),
        Some("1")
    );
    serving("1");
    // RDS: not YAML.
    p.apply(
        "rds.yaml",
        "version_info: [\n",
        "http.ingress.rds.r.update_failure",
    );
    serving("1");
    // RDS tables are not checked for unknown clusters: accepted, and the route answers 503.
    let dangling = table("3", vec![route_to("/nope", "nope", &[])]);
    assert_eq!(p.apply("rds.yaml", &rds("3", &[dangling]), RDS_OK), 2);
    serving("3");
    assert_eq!(http_get(addr, "/nope", &[]).status, 503);

    // EDS: a port above 65535: rejected, the endpoints in force stay; then a good file.
    let mut huge = assignment("eds_b", &[c.addr]);
    huge["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]["port_value"] =
        json!(70000);
    p.apply(
        "eds.yaml",
        &eds("2", &[huge]),
        "cluster.eds_b.update_rejected",
    );
    assert_eq!(p.must_stat(EDS_OK), 1);
    assert_eq!(
        p.text_stat("cluster.eds_b.version_text").as_deref(),
        Some("1")
    );
    serving("3");
    assert_eq!(
        p.apply(
            "eds.yaml",
            &eds("3", &[assignment("eds_b", &[c.addr])]),
            EDS_OK
        ),
        2
    );
    eventually("/b to reach the new endpoint", 5 * SECOND, || {
        reaches(addr, "/b", &c).then_some(())
    });

    // A later good CDS file applies (and removes static_c).
    assert_eq!(p.apply("cds.yaml", &cds("6", &base()), CDS_OK), 3);
    assert_eq!(
        p.text_stat("cluster_manager.cds.version_text").as_deref(),
        Some("6")
    );
    assert_eq!(cluster_names(), ["eds_b", "static_a"]);

    // Every file counted once, as an attempt and as exactly one outcome.
    for (prefix, ok, rejected, failed) in [
        ("cluster_manager.cds", 3, 2, 1),
        ("listener_manager.lds", 2, 1, 1),
        ("http.ingress.rds.r", 2, 1, 1),
        ("cluster.eds_b", 2, 1, 0),
    ] {
        let got = |s: &str| p.must_stat(&format!("{prefix}.{s}"));
        assert_eq!(
            (
                got("update_success"),
                got("update_rejected"),
                got("update_failure")
            ),
            (ok, rejected, failed),
            "{prefix}: update_success, update_rejected, update_failure"
        );
        assert_eq!(
            got("update_attempt"),
            ok + rejected + failed,
            "{prefix}.update_attempt"
        );
    }
    assert!(!p.output().contains("panicked"));
}

// ---- Load ------------------------------------------------------------------------------------

/// When each route variant (`x-variant: N`) was written and when it was seen applied.
#[derive(Default)]
struct Timeline {
    /// (variant, written, confirmed), in order.
    gens: Mutex<Vec<(u64, Instant, Option<Instant>)>>,
}

impl Timeline {
    fn written(&self, variant: u64) {
        self.gens
            .lock()
            .unwrap()
            .push((variant, Instant::now(), None));
    }

    fn confirmed(&self, variant: u64) {
        let mut g = self.gens.lock().unwrap();
        let e = g.iter_mut().find(|e| e.0 == variant).unwrap();
        e.2 = Some(Instant::now());
    }

    /// How far outside `variant`'s time in force (from the write of its file to the
    /// confirmation of the next one) the request [sent, received] lies; zero when it overlaps.
    fn outside(&self, variant: u64, sent: Instant, received: Instant) -> Option<Duration> {
        let g = self.gens.lock().unwrap();
        let i = g.iter().position(|e| e.0 == variant)?;
        let start = g[i].1;
        if start > received {
            return Some(start - received);
        }
        match g.get(i + 1).and_then(|next| next.2) {
            Some(end) if end < sent => Some(sent - end),
            _ => Some(Duration::ZERO),
        }
    }
}

#[derive(Default, Debug)]
struct Report {
    responses: usize,
    /// Responses with `connection: close` on keep-alive connections.
    closes: usize,
    connections: usize,
    connect_errors: Vec<String>,
    races: Vec<String>,
    failures: Vec<String>,
    bad: Vec<String>,
    /// (variant, sent, received)
    seen: Vec<(u64, Instant, Instant)>,
}

/// Client threads sending requests until stopped: `fast` ones loop on one keep-alive
/// connection (reopened after a `connection: close`); `slow` ones send long requests
/// (`/delay/500`, or a response streamed in five chunks 100 ms apart), each on its own
/// connection.
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<Report>>,
}

impl Load {
    fn start(addr: SocketAddr, fast: usize, slow: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for t in 0..fast + slow {
            let stop = stop.clone();
            let is_slow = t >= fast;
            threads.push(std::thread::spawn(move || {
                let mut rep = Report::default();
                let mut client = KeepAlive::new(addr);
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let (path, close, want_body): (String, bool, Option<&str>) = if !is_slow {
                        (format!("/load/{t}/{n}"), false, None)
                    } else if n.is_multiple_of(2) {
                        ("/delay/500".into(), true, None)
                    } else {
                        (
                            "/chunks/5/100".into(),
                            true,
                            Some("chunk-0\nchunk-1\nchunk-2\nchunk-3\nchunk-4\n"),
                        )
                    };
                    let headers: &[(&str, &str)] = if close {
                        &[("connection", "close")]
                    } else {
                        &[]
                    };
                    let sent = Instant::now();
                    let outcome = client.get(&path, headers);
                    let received = Instant::now();
                    match outcome {
                        Outcome::Response {
                            status,
                            headers,
                            body,
                            close,
                        } => {
                            rep.responses += 1;
                            // A close the client did not ask for: the proxy draining.
                            rep.closes += (close && !is_slow) as usize;
                            let variant =
                                header(&headers, "x-variant").and_then(|v| v.parse().ok());
                            if status != 200 {
                                rep.bad.push(format!("{path}: status {status}"));
                            } else if want_body.is_some_and(|w| w.as_bytes() != body.as_slice()) {
                                rep.bad.push(format!(
                                    "{path}: body {:?}",
                                    String::from_utf8_lossy(&body)
                                ));
                            }
                            match variant {
                                Some(v) => rep.seen.push((v, sent, received)),
                                None => rep.bad.push(format!("{path}: no x-variant")),
                            }
                        }
                        Outcome::ConnectError(e) => {
                            rep.connect_errors.push(e);
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        Outcome::KeepAliveRace(e) => rep.races.push(format!("{path}: {e}")),
                        Outcome::Failed(e) => rep.failures.push(format!("{path}: {e}")),
                    }
                }
                rep.connections = client.connections_opened;
                rep
            }));
        }
        Load { stop, threads }
    }

    fn stop(self) -> Report {
        self.stop.store(true, Ordering::SeqCst);
        let mut all = Report::default();
        for t in self.threads {
            let r = t.join().expect("a client thread panicked");
            all.responses += r.responses;
            all.closes += r.closes;
            all.connections += r.connections;
            all.connect_errors.extend(r.connect_errors);
            all.races.extend(r.races);
            all.failures.extend(r.failures);
            all.bad.extend(r.bad);
            all.seen.extend(r.seen);
        }
        all
    }
}

/// Checks a load run: no error of any kind, every variant seen was in force during its
/// request (within `slack`: the stat or probe that confirms an update can come a moment before
/// every worker has it), and the keep-alive race never happened (Legate; reported for Envoy).
fn check_load(rep: &Report, timeline: &Timeline, slack: Duration, what: &str) {
    let mut worst = Duration::ZERO;
    let mut stale = Vec::new();
    let mut variants = std::collections::BTreeSet::new();
    for (v, sent, received) in &rep.seen {
        variants.insert(*v);
        match timeline.outside(*v, *sent, *received) {
            None => stale.push(format!("unknown variant {v}")),
            Some(d) => {
                worst = worst.max(d);
                if d > slack {
                    stale.push(format!("variant {v} seen {d:?} outside its time in force"));
                }
            }
        }
    }
    eprintln!(
        "{what}: {} responses on {} connections ({} keep-alive ones closed by the proxy), {} variants seen, \
         worst lag {worst:?}; connect errors {}, keep-alive races {}, failures {}, bad {}, stale {}",
        rep.responses,
        rep.connections,
        rep.closes,
        variants.len(),
        rep.connect_errors.len(),
        rep.races.len(),
        rep.failures.len(),
        rep.bad.len(),
        stale.len()
    );
    let few = |v: &[String]| v.iter().take(5).cloned().collect::<Vec<_>>();
    assert!(
        rep.connect_errors.is_empty(),
        "connect errors: {:?}",
        few(&rep.connect_errors)
    );
    assert!(
        rep.failures.is_empty(),
        "failed requests: {:?}",
        few(&rep.failures)
    );
    assert!(rep.bad.is_empty(), "bad responses: {:?}", few(&rep.bad));
    assert!(stale.is_empty(), "stale variants: {:?}", few(&stale));
    if target_is_envoy() {
        if !rep.races.is_empty() {
            eprintln!(
                "Envoy lost {} requests to the keep-alive race: {:?}",
                rep.races.len(),
                few(&rep.races)
            );
        }
    } else {
        assert!(
            rep.races.is_empty(),
            "keep-alive races: {:?}",
            few(&rep.races)
        );
    }
    assert!(
        rep.responses > 200,
        "too few requests made it: {}",
        rep.responses
    );
    assert!(variants.len() > 5, "too few variants seen: {variants:?}");
}

// ---- 3 ---------------------------------------------------------------------------------------

/// 100 updates (routes, clusters, endpoints, and every 10th the listener itself) under steady
/// load: every request completes with a 200 and a route variant in force during its life.
#[test]
fn updates_under_load_lose_nothing() {
    let (a, b) = (Upstream::start(), Upstream::start());
    let port = free_port();
    let addr = local(port);
    let p = start_base(port, &a, &b, 2);
    // Variant 0 first: the base files say "1", and variants count from 0 here.
    let timeline = Timeline::default();
    timeline.written(0);
    let variant_table = |v: u64| {
        // Even variants send `/` to the STATIC cluster, odd ones to the EDS one.
        let s = v.to_string();
        let default = if v.is_multiple_of(2) {
            "static_a"
        } else {
            "eds_b"
        };
        route_config(
            "r",
            vec![route_to("/", default, &[("x-variant", s.as_str())])],
        )
    };
    let mut rds_v = 2u64;
    p.apply(
        "rds.yaml",
        &rds(&rds_v.to_string(), &[variant_table(0)]),
        RDS_OK,
    );
    timeline.confirmed(0);
    eventually_get(addr, "variant 0", |_, r| r.header("x-variant") == Some("0"));

    let load = Load::start(addr, 6, 2);
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let (mut variant, mut lds_v, mut cds_v, mut eds_v) = (0u64, 1u64, 1u64, 1u64);
    let mut extra: Option<String> = None;
    let mut replaced = 0;
    for i in 0..100u32 {
        if i % 10 == 9 {
            // A listener-level change: Envoy builds a new listener and drains the old one.
            lds_v += 1;
            replaced += 1;
            let limit = json!({"per_connection_buffer_limit_bytes": 1_048_576 + lds_v});
            let before = p.must_stat("listener_manager.listener_modified");
            p.apply(
                "lds.yaml",
                &lds(&lds_v.to_string(), &[main_listener(port, "ingress", limit)]),
                LDS_OK,
            );
            assert_eq!(
                p.must_stat("listener_manager.listener_modified"),
                before + 1
            );
            p.wait_stat(
                "listener_manager.total_listeners_warming",
                5 * SECOND,
                |v| v == 0,
            );
        } else {
            match i % 3 {
                0 => {
                    variant += 1;
                    rds_v += 1;
                    timeline.written(variant);
                    p.apply(
                        "rds.yaml",
                        &rds(&rds_v.to_string(), &[variant_table(variant)]),
                        RDS_OK,
                    );
                    timeline.confirmed(variant);
                }
                1 => {
                    // Add a cluster, or remove the one added last time; the two the routes
                    // use stay.
                    cds_v += 1;
                    let mut clusters = vec![
                        static_cluster("static_a", &[a.addr]),
                        eds_cluster("eds_b", "eds.yaml"),
                    ];
                    extra = match extra.take() {
                        Some(_) => None,
                        None => {
                            let name = format!("extra_{i}");
                            clusters.push(static_cluster(&name, &[b.addr]));
                            Some(name)
                        }
                    };
                    p.apply("cds.yaml", &cds(&cds_v.to_string(), &clusters), CDS_OK);
                }
                _ => {
                    eds_v += 1;
                    let to = if eds_v % 2 == 0 { a.addr } else { b.addr };
                    p.apply(
                        "eds.yaml",
                        &eds(&eds_v.to_string(), &[assignment("eds_b", &[to])]),
                        EDS_OK,
                    );
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = started.elapsed();
    // Let the last drains finish under load, then stop.
    std::thread::sleep(Duration::from_millis(500));
    let rep = load.stop();
    eprintln!(
        "100 updates ({variant} route variants, {replaced} listener replacements) in {took:?}"
    );
    check_load(
        &rep,
        &timeline,
        Duration::from_millis(50),
        "updates under load",
    );
    assert!(
        rep.closes > 0,
        "no listener drain ever closed a keep-alive connection"
    );
    assert!(a.count() > 0 && b.count() > 0);
    assert_eq!(p.must_stat("listener_manager.lds.update_rejected"), 0);
    assert_eq!(p.must_stat("cluster_manager.cds.update_rejected"), 0);
}

// ---- 4 ---------------------------------------------------------------------------------------

/// SIGHUP reloads the bootstrap (Legate only: Envoy does not). A changed route, a new cluster
/// and a changed listener apply on the same port; 20 reloads under load lose nothing; a broken
/// bootstrap leaves the running config serving and the log says why.
#[test]
fn sighup_reloads_the_bootstrap() {
    if target_is_envoy() {
        eprintln!("skipped: Envoy does not reload its bootstrap on SIGHUP");
        return;
    }
    const SIGHUP: i32 = 1;
    let (a, c) = (Upstream::start(), Upstream::start());
    let port = free_port();
    let addr = local(port);
    let boot = |variant: u64, stat_prefix: &str, buffer: u64, with_c: bool| {
        let v = variant.to_string();
        let mut routes = Vec::new();
        let mut clusters = vec![static_cluster("static_a", &[a.addr])];
        if with_c {
            routes.push(route_to("/c", "static_c", &[("x-variant", v.as_str())]));
            clusters.push(static_cluster("static_c", &[c.addr]));
        }
        routes.push(route_to("/", "static_a", &[("x-variant", v.as_str())]));
        let listener = http_listener(
            "main",
            port,
            stat_prefix,
            Routes::Inline(route_config("local", routes)),
            json!({"per_connection_buffer_limit_bytes": buffer}),
            Value::Null,
        );
        static_bootstrap(&[listener], &clusters)
    };
    let p = DynProxy::start(&boot(1, "ingress", 1_048_576, false), &[], 2);
    p.wait_listening(port);
    let admin = p.admin();
    eventually_get(addr, "variant 1", |path, r| {
        r.header("x-variant") == Some("1") && saw(&a, path)
    });
    assert!(http_get(addr, "/c/x", &[]).header("x-variant") == Some("1"));

    // One reload: the route's header, a new cluster with a route, the listener's stat_prefix.
    p.write("bootstrap.yaml", &boot(2, "reloaded", 1_048_576, true));
    send_signal(p.pid(), SIGHUP);
    eventually_get(addr, "variant 2 after SIGHUP", |_, r| {
        r.header("x-variant") == Some("2")
    });
    assert!(reaches(addr, "/c", &c), "/c does not reach the new cluster");
    eventually(
        "requests counted under the new stat_prefix",
        5 * SECOND,
        || {
            p.stat("http.reloaded.downstream_rq_total")
                .filter(|n| *n >= 1)
        },
    );
    assert_eq!(p.admin(), admin, "the admin address changed");

    // 20 reloads under load; every 5th also replaces the listener (a listener-level field),
    // and the extra cluster comes and goes.
    let timeline = Timeline::default();
    timeline.written(2);
    timeline.confirmed(2);
    let load = Load::start(addr, 6, 2);
    std::thread::sleep(Duration::from_millis(300));
    for i in 0..20u64 {
        let variant = 3 + i;
        let buffer = if i % 5 == 4 { 1_048_576 + i } else { 1_048_576 };
        timeline.written(variant);
        p.write(
            "bootstrap.yaml",
            &boot(variant, "reloaded", buffer, i % 2 == 0),
        );
        send_signal(p.pid(), SIGHUP);
        let want = variant.to_string();
        eventually_get(addr, "the reload to apply", |_, r| {
            r.header("x-variant") == Some(want.as_str())
        });
        timeline.confirmed(variant);
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    let rep = load.stop();
    check_load(
        &rep,
        &timeline,
        Duration::from_millis(50),
        "SIGHUP under load",
    );
    let last = 22.to_string();

    // Broken bootstraps: the running config stays, and the log says why.
    let from = p.log_len();
    p.write("bootstrap.yaml", "static_resources:\n  listeners: [\n");
    send_signal(p.pid(), SIGHUP);
    // As at startup: the file, and the field path with the parser's complaint.
    eventually(
        "the log to report the unparsable bootstrap",
        10 * SECOND,
        || {
            let log = p.log_since(from);
            (log.contains("bootstrap.yaml") || log.contains("static_resources.listeners"))
                .then_some(())
        },
    );
    let r = http_get(addr, "/", &[]);
    assert_eq!(
        (r.status, r.header("x-variant")),
        (200, Some(last.as_str()))
    );

    let from = p.log_len();
    let mut broken = boot(99, "reloaded", 1_048_576, false);
    broken = broken.replace("\"cluster\": \"static_a\"", "\"cluster\": \"nope\"");
    assert!(broken.contains("nope"));
    p.write("bootstrap.yaml", &broken);
    send_signal(p.pid(), SIGHUP);
    let why = eventually("the log to name the unknown cluster", 10 * SECOND, || {
        let log = p.log_since(from);
        log.contains("unknown cluster 'nope'").then_some(log)
    });
    assert!(
        why.contains("route_config.virtual_hosts[0].routes[0]"),
        "the log does not give the field path:\n{why}"
    );
    let r = http_get(addr, "/", &[]);
    assert_eq!(
        (r.status, r.header("x-variant")),
        (200, Some(last.as_str()))
    );

    // And a good one applies again.
    p.write("bootstrap.yaml", &boot(100, "reloaded", 1_048_576, false));
    send_signal(p.pid(), SIGHUP);
    eventually_get(addr, "variant 100", |_, r| {
        r.header("x-variant") == Some("100")
    });
    assert!(!p.output().contains("panicked"));
}

// ---- 5 ---------------------------------------------------------------------------------------

/// 1,000 small CDS and RDS updates, each waited for: resident memory after all of them is
/// within 10 % + 2 MB of what it was after the first 100. (Envoy 1.40: about 67 MB, +0.1 MB,
/// the 1,000 updates in about 4 s.)
#[test]
fn memory_stays_flat_over_many_updates() {
    let (a, b) = (Upstream::start(), Upstream::start());
    let port = free_port();
    let addr = local(port);
    let p = start_base(port, &a, &b, 1);
    let started = Instant::now();
    let mut after_100 = 0;
    for i in 1..=1000u32 {
        let v = (i + 1).to_string();
        if i % 2 == 0 {
            // A cluster out of a small set of names comes and goes.
            let mut clusters = vec![
                static_cluster("static_a", &[a.addr]),
                eds_cluster("eds_b", "eds.yaml"),
            ];
            if i % 4 == 0 {
                clusters.push(static_cluster(&format!("extra_{}", i % 3), &[b.addr]));
            }
            p.apply("cds.yaml", &cds(&v, &clusters), CDS_OK);
        } else {
            p.apply("rds.yaml", &rds(&v, &[table(&v, vec![])]), RDS_OK);
        }
        if i % 50 == 0 {
            let r = http_get(addr, "/", &[]);
            assert_eq!(r.status, 200, "{r:?}");
        }
        if i == 100 {
            after_100 = p.rss_kb();
        }
    }
    let after_1000 = p.rss_kb();
    let growth = after_1000 as i64 - after_100 as i64;
    eprintln!(
        "RSS after 100 updates: {after_100} kB; after 1000: {after_1000} kB ({growth:+} kB); \
         1000 updates took {:?}",
        started.elapsed()
    );
    eventually_get(addr, "the last route table", |_, r| {
        r.header("x-variant") == Some("1000")
    });
    assert!(after_100 > 0, "no RSS reading");
    let bound = after_100 / 10 + 2048;
    assert!(
        growth < bound as i64,
        "RSS grew by {growth} kB over 900 updates (bound {bound} kB)"
    );
}

// ---- 6 ---------------------------------------------------------------------------------------

/// A request in flight on a listener that is replaced, or removed, completes; a removed
/// listener's port refuses new connections at once; idle connections left on an old listener
/// are closed when the drain time is over.
#[test]
fn listener_drain_lets_requests_in_flight_finish() {
    let (a, b) = (Upstream::start(), Upstream::start());
    let (port, port2) = (free_port(), free_port());
    let addr = local(port);
    let drain_s = 3;
    let p = start_base(port, &a, &b, drain_s);
    let second =
        |extra: Value| http_listener("second", port2, "second", rds_main(), extra, Value::Null);
    let main = |extra: Value| main_listener(port, "ingress", extra);
    assert_eq!(
        p.apply(
            "lds.yaml",
            &lds("2", &[main(Value::Null), second(Value::Null)]),
            LDS_OK
        ),
        2
    );
    p.wait_listening(port2);

    let long = |to: SocketAddr, path: &'static str| {
        std::thread::spawn(move || {
            let mut c = KeepAlive::new(to);
            let started = Instant::now();
            (c.get(path, &[]), started.elapsed())
        })
    };
    let in_flight = |path: &str| {
        eventually("the long request to reach the upstream", 5 * SECOND, || {
            saw(&a, path).then_some(())
        })
    };

    // Replaced: the request in flight on the old listener completes; new connections are
    // served by the new one; an idle keep-alive connection left on the old one is closed once
    // the drain time is over.
    let mut idle = KeepAlive::new(addr);
    assert!(matches!(
        idle.get("/idle", &[]),
        Outcome::Response { status: 200, .. }
    ));
    let old = long(addr, "/delay/1500");
    in_flight("/delay/1500");
    let replaced = lds(
        "3",
        &[
            main(json!({"per_connection_buffer_limit_bytes": 65536})),
            second(Value::Null),
        ],
    );
    let modified = p.must_stat("listener_manager.listener_modified");
    let in_place = p.must_stat("listener_manager.listener_in_place_updated");
    let replaced_at = Instant::now();
    p.apply("lds.yaml", &replaced, LDS_OK);
    assert_eq!(
        p.must_stat("listener_manager.listener_modified"),
        modified + 1
    );
    // A listener-level field changed: a new listener, not an in-place update.
    assert_eq!(
        p.must_stat("listener_manager.listener_in_place_updated"),
        in_place
    );
    p.wait_stat(
        "listener_manager.total_listeners_draining",
        5 * SECOND,
        |v| v >= 1,
    );
    // A replaced listener takes the version that replaced it.
    let listeners = p.dump_section("ListenersConfigDump", false);
    let main_dump = listeners["dynamic_listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "main")
        .cloned()
        .unwrap_or_else(|| panic!("no main in {listeners}"));
    assert_eq!(
        main_dump["active_state"]["version_info"], "3",
        "{listeners}"
    );
    let r = http_get(addr, "/", &[]);
    assert_eq!(r.status, 200, "a new connection during the drain: {r:?}");
    let (outcome, took) = old.join().unwrap();
    match outcome {
        Outcome::Response { status: 200, .. } => {}
        other => panic!("the request in flight on the replaced listener: {other:?}"),
    }
    assert!(took >= Duration::from_millis(1400), "{took:?}");
    // Envoy closes it when the drain time is over (about 3 s after the update here).
    let limit = Duration::from_secs(drain_s as u64 + 2);
    let closed = idle.closed_within(limit.saturating_sub(replaced_at.elapsed()));
    assert_eq!(
        closed,
        Some(true),
        "the idle connection on the replaced listener is still open {:?} after the update",
        replaced_at.elapsed()
    );
    eprintln!(
        "the idle connection on the replaced listener was closed {:?} after the update",
        replaced_at.elapsed()
    );
    // Each connection of the old listener was accounted for as it closed, the ones cut when
    // the drain time ran out too (no other connection to the main listener is open now).
    p.wait_stat("http.ingress.downstream_cx_active", 5 * SECOND, |v| v == 0);
    p.wait_stat(
        "listener_manager.total_listeners_draining",
        10 * SECOND,
        |v| v == 0,
    );

    // Removed: the request in flight completes; the port refuses new connections at once.
    let old2 = long(local(port2), "/delay/1501");
    in_flight("/delay/1501");
    let removed = p.must_stat("listener_manager.listener_removed");
    let asked = Instant::now();
    p.apply(
        "lds.yaml",
        &lds(
            "4",
            &[main(json!({"per_connection_buffer_limit_bytes": 65536}))],
        ),
        LDS_OK,
    );
    assert_eq!(
        p.must_stat("listener_manager.listener_removed"),
        removed + 1
    );
    assert!(
        p.wait_refused(port2, SECOND),
        "the removed listener's port still accepts"
    );
    eprintln!(
        "removed listener refused connections {:?} after the update",
        asked.elapsed()
    );
    let (outcome, _) = old2.join().unwrap();
    match outcome {
        Outcome::Response { status: 200, .. } => {}
        other => panic!("the request in flight on the removed listener: {other:?}"),
    }
    assert!(
        std::net::TcpStream::connect(local(port2)).is_err(),
        "the removed listener accepts again"
    );
    assert_eq!(http_get(addr, "/", &[]).status, 200);
}

/// The proxy's open file descriptors (Linux).
fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// A cluster replaced by CDS while requests use it lets go of its upstream connections once
/// its requests are done (a regression: the connection tasks once kept replaced clusters, and
/// their connections, alive forever).
#[test]
fn replaced_clusters_close_their_upstream_connections() {
    let a = Upstream::start();
    let b = Upstream::start();
    let port = free_port();
    let p = start_base(port, &a, &b, 1);
    let addr = local(port);
    let mut client = KeepAlive::new(addr);
    for _ in 0..5 {
        assert!(matches!(
            client.get("/", &[]),
            Outcome::Response { status: 200, .. }
        ));
    }
    let before = open_fds(p.pid());
    for i in 0..20u32 {
        // A change of the connections' settings: the cluster's connections cannot be kept.
        let mut cluster = static_cluster("static_a", &[a.addr]);
        cluster["common_http_protocol_options"] = json!({"max_headers_count": 100 + i % 2});
        p.apply(
            "cds.yaml",
            &cds(
                &format!("r{i}"),
                &[cluster, eds_cluster("eds_b", "eds.yaml")],
            ),
            CDS_OK,
        );
        // Requests through the new cluster open its connections (the old one's are idle).
        for _ in 0..3 {
            assert!(matches!(
                client.get("/", &[]),
                Outcome::Response { status: 200, .. }
            ));
        }
    }
    // Each replaced cluster's connections close when it is freed: the count comes back to
    // about where it was, not 20 connections more.
    let deadline = Instant::now() + 5 * SECOND;
    let mut after = open_fds(p.pid());
    while after > before + 5 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        after = open_fds(p.pid());
    }
    eprintln!("open descriptors: {before} before 20 replacements, {after} after");
    assert!(
        after <= before + 5,
        "open descriptors grew from {before} to {after} over 20 cluster replacements"
    );
}

/// Beyond Envoy (which reopens them): a cluster replaced by one whose connections would be the
/// same (here only `connect_timeout` changes) keeps its hosts' pooled connections.
#[test]
fn compatible_cluster_changes_keep_upstream_connections() {
    if target_is_envoy() {
        return;
    }
    let a = Upstream::start();
    let b = Upstream::start();
    let port = free_port();
    let p = start_base(port, &a, &b, 1);
    let mut client = KeepAlive::new(local(port));
    let get = |client: &mut KeepAlive| {
        assert!(matches!(
            client.get("/", &[]),
            Outcome::Response { status: 200, .. }
        ));
    };
    get(&mut client);
    let opened = a.connection_count();
    for i in 0..20u32 {
        let mut cluster = static_cluster("static_a", &[a.addr]);
        cluster["connect_timeout"] = json!(format!("{}s", 2 + i % 2));
        p.apply(
            "cds.yaml",
            &cds(
                &format!("t{i}"),
                &[cluster, eds_cluster("eds_b", "eds.yaml")],
            ),
            CDS_OK,
        );
        get(&mut client);
    }
    assert_eq!(
        p.must_stat("cluster_manager.cluster_modified"),
        20,
        "every update replaced the cluster"
    );
    assert_eq!(
        a.connection_count(),
        opened,
        "the upstream saw new connections although the cluster's connections were compatible"
    );
}
