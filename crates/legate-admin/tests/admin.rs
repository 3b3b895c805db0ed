//! The admin server end to end: `serve` on 127.0.0.1:0 with a small cluster manager, every
//! endpoint requested over a real TCP connection, and the bodies compared with what Envoy
//! 1.40 prints for the same configuration.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use legate_admin::{
    AdminControl, AdminState, ConfigDumpSource, DrainOptions, ListenerInfo, LogLevel, ServerInfo,
};
use legate_api::pb::envoy::admin::v3::CommandLineOptions;
use legate_api::pb::envoy::config::bootstrap::v3::{Admin, Bootstrap};
use legate_api::pb::envoy::config::cluster::v3::Cluster;
use legate_api::pb::envoy::config::core::v3::{
    Address, Locality, Node, SocketAddress, address, socket_address,
};
use legate_api::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use legate_api::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};
use legate_api::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost};
use legate_api::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager::RouteSpecifier,
};
use legate_api::pb::google::protobuf::{Any, Duration as PbDuration, UInt32Value};
use legate_core::runtime::{Layer, Runtime};
use legate_core::stats::Store;
use legate_upstream::{ClusterConfig, ClusterManager};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn socket(ip: &str, port: u32) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.into(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}

fn lb_endpoint(ip: &str, port: u32, weight: Option<u32>) -> LbEndpoint {
    LbEndpoint {
        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
            address: Some(socket(ip, port)),
            ..Default::default()
        })),
        load_balancing_weight: weight.map(|value| UInt32Value { value }),
        ..Default::default()
    }
}

/// The cluster of the Envoy run the expected outputs come from.
fn backend() -> Cluster {
    Cluster {
        name: "backend".into(),
        connect_timeout: Some(PbDuration {
            seconds: 1,
            nanos: 0,
        }),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: "backend".into(),
            endpoints: vec![LocalityLbEndpoints {
                locality: Some(Locality {
                    region: "r1".into(),
                    zone: "z1".into(),
                    ..Default::default()
                }),
                lb_endpoints: vec![
                    lb_endpoint("127.0.0.1", 18080, None),
                    lb_endpoint("127.0.0.2", 18081, Some(3)),
                ],
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn web_listener() -> Listener {
    let hcm = HttpConnectionManager {
        stat_prefix: "ingress".into(),
        route_specifier: Some(RouteSpecifier::RouteConfig(RouteConfiguration {
            name: "local".into(),
            virtual_hosts: vec![VirtualHost {
                name: "all".into(),
                domains: vec!["*".into()],
                ..Default::default()
            }],
            ..Default::default()
        })),
        ..Default::default()
    };
    Listener {
        name: "web".into(),
        address: Some(socket("127.0.0.1", 0)),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(filter::ConfigType::TypedConfig(Any {
                    type_url: "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager".into(),
                    value: hcm.encode_to_vec(),
                })),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[derive(Default)]
struct Control {
    failed: AtomicBool,
    quits: AtomicUsize,
    drains: Mutex<Vec<DrainOptions>>,
    reopened: AtomicUsize,
    levels: Mutex<Vec<(String, LogLevel)>>,
}

impl AdminControl for Control {
    fn quit(&self) {
        self.quits.fetch_add(1, Ordering::SeqCst);
    }
    fn drain_listeners(&self, options: DrainOptions) {
        self.drains.lock().unwrap().push(options);
    }
    fn set_health_check_failed(&self, failed: bool) {
        self.failed.store(failed, Ordering::SeqCst);
    }
    fn health_check_failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }
    fn reopen_logs(&self) {
        self.reopened.fetch_add(1, Ordering::SeqCst);
    }
    fn loggers(&self) -> Vec<(String, LogLevel)> {
        self.levels.lock().unwrap().clone()
    }
    fn set_log_level(&self, logger: Option<&str>, level: LogLevel) {
        for (name, l) in self.levels.lock().unwrap().iter_mut() {
            if logger.is_none_or(|n| n == name) {
                *l = level;
            }
        }
    }
}

fn state(control: Arc<Control>) -> AdminState {
    let store = Arc::new(Store::new());
    let config = ClusterConfig::compile(&backend()).expect("cluster compiles");
    let clusters = Arc::new(ClusterManager::new(vec![config], &store, 1));
    let runtime = Arc::new(Runtime::new(vec![
        Layer {
            name: "static".into(),
            values: [("foo".to_owned(), "bar".to_owned())].into(),
            is_admin: false,
        },
        Layer {
            name: "admin".into(),
            is_admin: true,
            ..Layer::default()
        },
    ]));
    *control.levels.lock().unwrap() = vec![
        ("admin".into(), LogLevel::Warning),
        ("upstream".into(), LogLevel::Warning),
    ];
    AdminState {
        store,
        clusters,
        runtime,
        listeners: Arc::new(Mutex::new(vec![ListenerInfo {
            name: "web".into(),
            address: "127.0.0.1:39929".parse().unwrap(),
            pipe: None,
        }])),
        server_info: ServerInfo {
            version: "legate/0.1.0".into(),
            hot_restart_version: "disabled".into(),
            started: Instant::now(),
            command_line_options: CommandLineOptions {
                concurrency: 1,
                log_level: "warning".into(),
                ..Default::default()
            },
            node: Node {
                id: "test-node".into(),
                cluster: "test-cluster".into(),
                user_agent_name: "envoy".into(),
                ..Default::default()
            },
        },
        config_dump: Arc::new(Mutex::new(ConfigDumpSource {
            bootstrap: Bootstrap {
                admin: Some(Admin {
                    address: Some(socket("127.0.0.1", 19901)),
                    ..Default::default()
                }),
                ..Default::default()
            },
            listeners: vec![web_listener().encode_to_vec()],
            clusters: vec![backend().encode_to_vec()],
            loaded_at: Some(UNIX_EPOCH + Duration::from_millis(1_795_645_512_002)),
            ..Default::default()
        })),
        control,
        access_logs: Vec::new(),
    }
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request on a fresh connection.
async fn request(addr: SocketAddr, method: &str, target: &str) -> Reply {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {target} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
    );
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(n, v)| (n.to_ascii_lowercase(), v.to_owned()))
        .collect();
    Reply {
        status,
        headers,
        body: body.to_owned(),
    }
}

async fn start() -> (SocketAddr, Arc<Control>, tokio::task::JoinHandle<()>) {
    let control = Arc::new(Control::default());
    let state = Arc::new(state(Arc::clone(&control)));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(legate_admin::serve(
        legate_admin::AdminListener::Tcp(listener),
        state,
    ));
    (addr, control, task)
}

const TEXT: &str = "text/plain; charset=UTF-8";
const JSON: &str = "application/json";

#[tokio::test]
async fn every_endpoint() {
    let (addr, control, task) = start().await;
    let get = |t: &'static str| request(addr, "GET", t);

    // Read-only endpoints: status and content type.
    for (target, status, content_type) in [
        ("/", 200, "text/html; charset=UTF-8"),
        ("/help", 200, TEXT),
        ("/ready", 200, TEXT),
        ("/server_info", 200, JSON),
        ("/stats", 200, TEXT),
        ("/stats?format=json", 200, JSON),
        ("/stats?format=prometheus", 200, TEXT),
        ("/stats/prometheus", 200, TEXT),
        ("/stats?filter=(", 400, TEXT),
        ("/stats?format=bogus", 400, TEXT),
        ("/stats?type=bogus", 400, TEXT),
        ("/clusters", 200, TEXT),
        ("/clusters?format=json", 200, JSON),
        ("/clusters?filter=(", 400, TEXT),
        ("/listeners", 200, TEXT),
        ("/listeners?format=json", 200, JSON),
        ("/config_dump", 200, JSON),
        ("/config_dump?resource=bogus", 404, "text/plain"),
        ("/config_dump?mask=bogus", 400, "text/plain"),
        ("/config_dump?name_regex=(", 400, "text/plain"),
        ("/runtime", 200, JSON),
        ("/memory", 200, JSON),
        ("/hot_restart_version", 200, TEXT),
        ("/certs", 200, JSON),
        ("/init_dump", 200, JSON),
        ("/nope", 404, TEXT),
    ] {
        let reply = get(target).await;
        assert_eq!(reply.status, status, "{target}: {}", reply.body);
        assert_eq!(reply.header("content-type"), Some(content_type), "{target}");
        assert_eq!(
            reply.header("cache-control"),
            Some("no-cache, max-age=0"),
            "{target}"
        );
        assert_eq!(
            reply.header("x-content-type-options"),
            Some("nosniff"),
            "{target}"
        );
    }

    // Mutating endpoints refuse GET with Envoy's 405, and do nothing.
    for target in [
        "/healthcheck/fail",
        "/healthcheck/ok",
        "/quitquitquit",
        "/reset_counters",
        "/reopen_logs",
        "/drain_listeners",
        "/runtime_modify?a=b",
        "/logging",
    ] {
        let reply = get(target).await;
        assert_eq!(reply.status, 405, "{target}");
        assert_eq!(
            reply.body, "Method GET not allowed, POST required.",
            "{target}"
        );
    }
    assert_eq!(
        request(addr, "PUT", "/quitquitquit").await.body,
        "Method PUT not allowed, POST required."
    );
    assert_eq!(control.quits.load(Ordering::SeqCst), 0);
    // Read-only endpoints answer any method.
    assert_eq!(request(addr, "POST", "/ready").await.status, 200);
    let head = request(addr, "HEAD", "/ready").await;
    assert_eq!((head.status, head.body.as_str()), (200, ""));

    let help = get("/help").await.body;
    assert!(help.starts_with(
        "admin commands are:\n  /: Admin home page\n  /certs: print certs on machine\n"
    ));
    assert!(help.contains("  /quitquitquit (POST): exit the server\n"));
    assert!(help.contains("      format: File format to use; One of (text, json)\n"));
    assert_eq!(get("/nope").await.body, format!("invalid path. {help}"));

    // Health checks and /ready.
    assert_eq!(get("/ready").await.body, "LIVE\n");
    let fail = request(addr, "POST", "/healthcheck/fail").await;
    assert_eq!((fail.status, fail.body.as_str()), (200, "OK\n"));
    let ready = get("/ready").await;
    assert_eq!((ready.status, ready.body.as_str()), (503, "DRAINING\n"));
    assert!(
        get("/server_info")
            .await
            .body
            .contains("\n \"state\": \"DRAINING\",\n")
    );
    request(addr, "POST", "/healthcheck/ok").await;
    assert_eq!(get("/ready").await.status, 200);

    // The other POST endpoints reach the control.
    assert_eq!(
        request(addr, "POST", "/drain_listeners?graceful&inboundonly")
            .await
            .body,
        "OK\n"
    );
    assert_eq!(
        control.drains.lock().unwrap().as_slice(),
        [DrainOptions {
            graceful: true,
            inbound_only: true,
            skip_exit: false
        }]
    );
    assert_eq!(request(addr, "POST", "/reopen_logs").await.body, "OK\n");
    assert_eq!(control.reopened.load(Ordering::SeqCst), 1);
    assert_eq!(request(addr, "POST", "/reset_counters").await.body, "OK\n");
    assert_eq!(request(addr, "POST", "/quitquitquit").await.body, "OK\n");
    assert_eq!(control.quits.load(Ordering::SeqCst), 1);

    // Logging.
    let listing = request(addr, "POST", "/logging").await;
    assert_eq!(
        (listing.status, listing.body.as_str()),
        (
            200,
            "active loggers:\n  admin: warning\n  upstream: warning\n\n"
        )
    );
    assert_eq!(
        request(addr, "POST", "/logging?admin=debug").await.body,
        "active loggers:\n  admin: debug\n  upstream: warning\n\n"
    );
    assert_eq!(
        request(addr, "POST", "/logging?level=info").await.body,
        "active loggers:\n  admin: info\n  upstream: info\n\n"
    );
    assert_eq!(
        request(addr, "POST", "/logging?paths=admin:trace,upstream:off")
            .await
            .body,
        "active loggers:\n  admin: trace\n  upstream: off\n\n"
    );
    let bad = request(addr, "POST", "/logging?admin=warn").await;
    assert_eq!(bad.status, 400);
    assert!(bad.body.starts_with(
        "error: unknown logger level\n\nusage: /logging?<name>=<level> (change single level)\n"
    ));
    assert!(bad.body.ends_with("levels: trace debug info warning error critical off \nactive loggers:\n  admin: trace\n  upstream: off\n\n"));
    assert!(
        request(addr, "POST", "/logging?nosuch=info")
            .await
            .body
            .starts_with("error: unknown logger name\n")
    );
    assert!(
        request(addr, "POST", "/logging?level=info&admin=info")
            .await
            .body
            .starts_with("error: invalid number of parameters\n")
    );

    // Runtime.
    assert_eq!(request(addr, "POST", "/runtime_modify").await.status, 400);
    assert_eq!(
        request(addr, "POST", "/runtime_modify?foo=baz&new=1")
            .await
            .body,
        "OK\n"
    );
    assert_eq!(
        get("/runtime").await.body,
        "{\n \"entries\": {\n  \"foo\": {\n   \"final_value\": \"baz\",\n   \"layer_values\": [\n    \"bar\",\n    \"baz\"\n   ]\n  },\n  \"new\": {\n   \"final_value\": \"1\",\n   \"layer_values\": [\n    \"\",\n    \"1\"\n   ]\n  }\n },\n \"layers\": [\n  \"static\",\n  \"admin\"\n ]\n}\n"
    );

    // Stats.
    let stats = get("/stats?filter=cluster.backend.upstream_rq_total")
        .await
        .body;
    assert_eq!(stats, "cluster.backend.upstream_rq_total: 0\n");
    assert_eq!(
        get("/stats?format=json&filter=cluster.backend.upstream_rq_total")
            .await
            .body,
        "{\"stats\":[{\"name\":\"cluster.backend.upstream_rq_total\",\"value\":0}]}"
    );
    assert_eq!(
        get("/stats/prometheus?filter=cluster.backend.upstream_rq_total")
            .await
            .body,
        "# TYPE envoy_cluster_upstream_rq_total counter\nenvoy_cluster_upstream_rq_total{envoy_cluster_name=\"backend\"} 0\n"
    );

    // Listeners, as Envoy printed them.
    assert_eq!(get("/listeners").await.body, "web::127.0.0.1:39929\n");
    assert_eq!(
        get("/listeners?format=json").await.body,
        "{\n \"listener_statuses\": [\n  {\n   \"name\": \"web\",\n   \"local_address\": {\n    \"socket_address\": {\n     \"address\": \"127.0.0.1\",\n     \"port_value\": 39929\n    }\n   }\n  }\n ]\n}\n"
    );
    assert_eq!(get("/certs").await.body, "{\n \"certificates\": []\n}\n");
    assert_eq!(get("/init_dump").await.body, "{}\n");
    assert_eq!(get("/hot_restart_version").await.body, "disabled");

    task.abort();
}

#[tokio::test]
async fn clusters_match_envoy() {
    let (addr, _, task) = start().await;
    let text = request(addr, "GET", "/clusters").await.body;
    // Envoy 1.40's output for the same cluster.
    let mut expected = String::from(
        "backend::observability_name::backend\n\
         backend::default_priority::max_connections::1024\n\
         backend::default_priority::max_pending_requests::1024\n\
         backend::default_priority::max_requests::1024\n\
         backend::default_priority::max_retries::3\n\
         backend::high_priority::max_connections::1024\n\
         backend::high_priority::max_pending_requests::1024\n\
         backend::high_priority::max_requests::1024\n\
         backend::high_priority::max_retries::3\n\
         backend::added_via_api::false\n",
    );
    for (host, weight) in [("127.0.0.1:18080", 1), ("127.0.0.2:18081", 3)] {
        for stat in [
            "cx_active",
            "cx_connect_fail",
            "cx_total",
            "rq_active",
            "rq_error",
            "rq_pending_active",
            "rq_success",
            "rq_timeout",
            "rq_total",
        ] {
            expected.push_str(&format!("backend::{host}::{stat}::0\n"));
        }
        for (k, v) in [
            ("hostname", ""),
            ("health_flags", "healthy"),
            ("weight", &weight.to_string()),
            ("region", "r1"),
            ("zone", "z1"),
            ("sub_zone", ""),
            ("canary", "false"),
            ("priority", "0"),
            ("success_rate", "-1"),
            ("local_origin_success_rate", "-1"),
        ] {
            expected.push_str(&format!("backend::{host}::{k}::{v}\n"));
        }
    }
    assert_eq!(text, expected);
    assert_eq!(
        request(addr, "GET", "/clusters?filter=^nomatch$")
            .await
            .body,
        ""
    );
    assert_eq!(
        request(addr, "GET", "/clusters?filter=^nomatch$&format=json")
            .await
            .body,
        "{}\n"
    );

    let json = request(addr, "GET", "/clusters?format=json").await.body;
    let stats = |extra: &str| {
        format!(
            "     \"stats\": [\n{extra}      {{\n       \"name\": \"cx_connect_fail\"\n      }},\n      {{\n       \"name\": \"cx_total\"\n      }},\n      {{\n       \"name\": \"rq_error\"\n      }},\n      {{\n       \"name\": \"rq_success\"\n      }},\n      {{\n       \"name\": \"rq_timeout\"\n      }},\n      {{\n       \"name\": \"rq_total\"\n      }},\n      {{\n       \"type\": \"GAUGE\",\n       \"name\": \"cx_active\"\n      }},\n      {{\n       \"type\": \"GAUGE\",\n       \"name\": \"rq_active\"\n      }},\n      {{\n       \"type\": \"GAUGE\",\n       \"name\": \"rq_pending_active\"\n      }}\n     ],\n"
        )
    };
    assert!(json.starts_with("{\n \"cluster_statuses\": [\n  {\n   \"name\": \"backend\",\n   \"host_statuses\": [\n    {\n     \"address\": {\n      \"socket_address\": {\n       \"address\": \"127.0.0.1\",\n       \"port_value\": 18080\n      }\n     },\n"), "{json}");
    assert!(json.contains(&stats("")), "{json}");
    assert!(json.contains("     \"health_status\": {\n      \"eds_health_status\": \"HEALTHY\"\n     },\n     \"weight\": 3,\n     \"locality\": {\n      \"region\": \"r1\",\n      \"zone\": \"z1\"\n     }\n    }\n   ],\n"));
    assert!(json.ends_with("   \"circuit_breakers\": {\n    \"thresholds\": [\n     {\n      \"max_connections\": 1024,\n      \"max_pending_requests\": 1024,\n      \"max_requests\": 1024,\n      \"max_retries\": 3\n     },\n     {\n      \"priority\": \"HIGH\",\n      \"max_connections\": 1024,\n      \"max_pending_requests\": 1024,\n      \"max_requests\": 1024,\n      \"max_retries\": 3\n     }\n    ]\n   },\n   \"observability_name\": \"backend\"\n  }\n ]\n}\n"));
    task.abort();
}

#[tokio::test]
async fn server_info_and_config_dump() {
    let (addr, _, task) = start().await;
    let info = request(addr, "GET", "/server_info").await.body;
    assert!(info.starts_with("{\n \"version\": \"legate/0.1.0\",\n \"state\": \"LIVE\",\n \"uptime_current_epoch\": \"0s\",\n \"uptime_all_epochs\": \"0s\",\n \"hot_restart_version\": \"disabled\",\n \"command_line_options\": {\n  \"base_id\": \"0\",\n  \"concurrency\": 1,\n  \"config_path\": \"\",\n"), "{info}");
    assert!(info.contains("  \"drain_time\": \"0s\",\n"));
    assert!(info.contains("  \"mode\": \"Serve\",\n"));
    assert!(info.contains("  \"log_stacktrace_single_entry\": false\n },\n \"node\": {\n  \"id\": \"test-node\",\n  \"cluster\": \"test-cluster\",\n"), "{info}");
    // Primitive fields are printed even when empty, as Envoy does for /server_info.
    assert!(info.contains("  \"client_features\": [],\n"), "{info}");
    assert!(info.ends_with("\n },\n \"hot_restart_initializing\": false\n}\n"));

    let dump = request(addr, "GET", "/config_dump").await.body;
    let types: Vec<&str> = dump
        .lines()
        .filter(|l| l.starts_with("   \"@type\""))
        .collect();
    assert_eq!(
        types,
        [
            "   \"@type\": \"type.googleapis.com/envoy.admin.v3.BootstrapConfigDump\",",
            "   \"@type\": \"type.googleapis.com/envoy.admin.v3.ClustersConfigDump\",",
            "   \"@type\": \"type.googleapis.com/envoy.admin.v3.ListenersConfigDump\",",
            "   \"@type\": \"type.googleapis.com/envoy.admin.v3.ScopedRoutesConfigDump\"",
            "   \"@type\": \"type.googleapis.com/envoy.admin.v3.RoutesConfigDump\",",
            "   \"@type\": \"type.googleapis.com/envoy.admin.v3.SecretsConfigDump\"",
        ]
    );
    assert!(dump.contains("   \"last_updated\": \"2026-11-25T22:25:12.002Z\"\n"));
    assert!(dump.contains("\"connect_timeout\": \"1s\""));
    assert!(dump.contains("      \"@type\": \"type.googleapis.com/envoy.config.route.v3.RouteConfiguration\",\n      \"name\": \"local\",\n"), "{dump}");

    let masked = request(
        addr,
        "GET",
        "/config_dump?resource=static_clusters&mask=cluster.name",
    )
    .await
    .body;
    assert_eq!(
        masked,
        "{\n \"configs\": [\n  {\n   \"@type\": \"type.googleapis.com/envoy.admin.v3.ClustersConfigDump.StaticCluster\",\n   \"cluster\": {\n    \"@type\": \"type.googleapis.com/envoy.config.cluster.v3.Cluster\",\n    \"name\": \"backend\"\n   }\n  }\n ]\n}\n"
    );
    let admin = request(addr, "GET", "/config_dump?mask=bootstrap.admin")
        .await
        .body;
    assert_eq!(
        admin,
        "{\n \"configs\": [\n  {\n   \"@type\": \"type.googleapis.com/envoy.admin.v3.BootstrapConfigDump\",\n   \"bootstrap\": {\n    \"admin\": {\n     \"address\": {\n      \"socket_address\": {\n       \"address\": \"127.0.0.1\",\n       \"port_value\": 19901\n      }\n     }\n    }\n   }\n  }\n ]\n}\n"
    );
    assert_eq!(
        request(addr, "GET", "/config_dump?resource=dynamic_active_clusters")
            .await
            .body,
        "{}\n"
    );
    assert_eq!(
        request(
            addr,
            "GET",
            "/config_dump?resource=static_clusters&name_regex=back"
        )
        .await
        .body,
        "{}\n"
    );
    assert!(
        request(
            addr,
            "GET",
            "/config_dump?resource=static_clusters&name_regex=backend"
        )
        .await
        .body
        .contains("\"name\": \"backend\"")
    );
    let bogus = request(addr, "GET", "/config_dump?resource=bogus").await;
    assert_eq!(
        (bogus.status, bogus.body.as_str()),
        (404, "bogus not found in config dump")
    );
    assert_eq!(
        request(addr, "GET", "/config_dump?mask=bogus").await.body,
        "FieldMask bogus could not be successfully applied to any configs."
    );
    let _ = SystemTime::now();
    task.abort();
}
