//! End-to-end tests of TLS: downstream termination on filter chains (versions, ALPN, SNI
//! choosing between chains and certificates, client certificates), TLS to upstream clusters
//! (SNI, CA and SAN validation, client certificates, ALPN), and hostile handshakes. The
//! certificates are generated here with rcgen. The tests that use `start_proxy` run against
//! Envoy too (`LEGATE_E2E_PROXY=envoy`): that is the differential check of the handshake
//! outcomes and stats.

mod e2e;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e::{Upstream, cluster, parse_response, start_proxy, target_is_envoy, temp_dir};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A certificate authority, and the certificates it issues, written as PEM files in `dir`.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    dir: PathBuf,
    name: String,
}

/// A leaf certificate's files.
struct Leaf {
    cert: PathBuf,
    key: PathBuf,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let dir = temp_dir(&format!("tls-{name}"));
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} test CA"));
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.join("ca.pem"), cert.pem()).unwrap();
        Ca {
            issuer: Issuer::new(params, key),
            cert_pem: cert.pem(),
            dir,
            name: name.to_owned(),
        }
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// An ECDSA P-256 leaf for `names` (or one with `key`, e.g. RSA).
    fn leaf_with(&self, file: &str, names: &[&str], key: KeyPair) -> Leaf {
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        self.leaf_from(file, params, key)
    }

    /// An RSA 2048 leaf for `names`; `None` without the `openssl` binary (ring cannot generate
    /// RSA keys).
    fn rsa_leaf(&self, file: &str, names: &[&str]) -> Option<Leaf> {
        let key_file = self.dir.join(format!("{file}-gen.key"));
        let made = std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
            ])
            .arg(&key_file)
            .output()
            .is_ok_and(|o| o.status.success());
        let key = KeyPair::from_pem(&std::fs::read_to_string(&key_file).ok()?).ok()?;
        made.then(|| self.leaf_with(file, names, key))
    }

    /// A leaf made from `params` with `key`, written as `<file>.crt` and `<file>.key`.
    fn leaf_from(&self, file: &str, params: CertificateParams, key: KeyPair) -> Leaf {
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let leaf = Leaf {
            cert: self.dir.join(format!("{file}.crt")),
            key: self.dir.join(format!("{file}.key")),
        };
        std::fs::write(&leaf.cert, cert.pem()).unwrap();
        std::fs::write(&leaf.key, key.serialize_pem()).unwrap();
        leaf
    }

    fn leaf(&self, file: &str, names: &[&str]) -> Leaf {
        self.leaf_with(file, names, KeyPair::generate().unwrap())
    }

    /// An ECDSA P-256 leaf with a chosen serial number (for revocation lists).
    fn leaf_serial(&self, file: &str, names: &[&str], serial: u64) -> Leaf {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.serial_number = Some(serial.into());
        self.leaf_from(file, params, KeyPair::generate().unwrap())
    }

    /// A CRL revoking `serials`, valid from `this_update` to `next_update`, written to `file`.
    fn crl(
        &self,
        file: &str,
        serials: &[u64],
        this_update: (i32, u8, u8),
        next_update: (i32, u8, u8),
    ) -> PathBuf {
        let params = rcgen::CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(this_update.0, this_update.1, this_update.2),
            next_update: rcgen::date_time_ymd(next_update.0, next_update.1, next_update.2),
            crl_number: 1u64.into(),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| rcgen::RevokedCertParams {
                    serial_number: (*s).into(),
                    revocation_time: rcgen::date_time_ymd(2020, 1, 1),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        let path = self.dir.join(file);
        std::fs::write(
            &path,
            params.signed_by(&self.issuer).unwrap().pem().unwrap(),
        )
        .unwrap();
        path
    }

    /// A CA whose certificate this one issues; its leaves carry the chain to this one
    /// ([`Self::chained_leaf`]).
    fn intermediate(&self, name: &str) -> Ca {
        let dir = temp_dir(&format!("tls-{name}"));
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} test CA"));
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        std::fs::write(dir.join("ca.pem"), cert.pem()).unwrap();
        Ca {
            issuer: Issuer::new(params, key),
            cert_pem: cert.pem(),
            dir,
            name: name.to_owned(),
        }
    }

    /// A leaf whose certificate file holds the leaf and this CA's certificate, as presented.
    fn chained_leaf(&self, file: &str, names: &[&str]) -> Leaf {
        let leaf = self.leaf(file, names);
        let chain = std::fs::read_to_string(&leaf.cert).unwrap() + &self.cert_pem;
        std::fs::write(&leaf.cert, chain).unwrap();
        leaf
    }

    fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(self.cert_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        roots
    }
}

/// Certificate parameters without subject alternative names, the subject's CN being `cn`.
fn cn_params(cn: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    params
}

impl Drop for Ca {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = &self.name;
    }
}

fn read_certs(path: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path)
        .unwrap()
        .map(|c| c.unwrap())
        .collect()
}

/// A client configuration: trusting `roots`, with `versions`, offering `alpn`, presenting
/// `client_cert` if given.
fn client(
    roots: RootCertStore,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&str],
    client_cert: Option<&Leaf>,
) -> Arc<ClientConfig> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match client_cert {
        Some(leaf) => builder
            .with_client_auth_cert(
                read_certs(&leaf.cert),
                PrivateKeyDer::from_pem_file(&leaf.key).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Arc::new(config)
}

const BOTH: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

type Tls = StreamOwned<ClientConnection, TcpStream>;

/// Connects and completes the handshake (and, for TLS 1.3, reads the server's first flight
/// after it so that a refused client certificate shows up here).
fn handshake(addr: SocketAddr, config: Arc<ClientConfig>, sni: &str) -> Result<Tls, String> {
    let tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    handshake_over(tcp, config, sni)
}

/// [`handshake`] over a unix domain socket (a `pipe` listener).
fn handshake_unix(
    path: &Path,
    config: Arc<ClientConfig>,
    sni: &str,
) -> Result<StreamOwned<ClientConnection, std::os::unix::net::UnixStream>, String> {
    let socket = std::os::unix::net::UnixStream::connect(path).map_err(|e| e.to_string())?;
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    handshake_over(socket, config, sni)
}

fn handshake_over<S: Read + Write>(
    socket: S,
    config: Arc<ClientConfig>,
    sni: &str,
) -> Result<StreamOwned<ClientConnection, S>, String> {
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    let conn = ClientConnection::new(config, name).unwrap();
    let mut tls = StreamOwned::new(conn, socket);
    while tls.conn.is_handshaking() {
        tls.conn
            .complete_io(&mut tls.sock)
            .map_err(|e| e.to_string())?;
    }
    Ok(tls)
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// An HTTP/1.1 request over TLS; the response, or why there is none.
fn https_get(tls: &mut impl ReadWrite, path: &str, host: &str) -> Result<e2e::RawResponse, String> {
    let req = format!("GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n");
    tls.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    match tls.read_to_end(&mut out) {
        Ok(_) => {}
        // Envoy (BoringSSL) may close without close_notify after `connection: close`.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !out.is_empty() => {}
        Err(e) => return Err(e.to_string()),
    }
    parse_response(&out).ok_or_else(|| format!("no response: {:?}", String::from_utf8_lossy(&out)))
}

fn tls_socket(leafs: &[&Leaf], extra: &str) -> String {
    let certs: String = leafs
        .iter()
        .map(|l| {
            format!(
                "            - certificate_chain: {{filename: {}}}\n              private_key: {{filename: {}}}\n",
                l.cert.display(),
                l.key.display()
            )
        })
        .collect();
    format!(
        "      transport_socket:\n        name: envoy.transport_sockets.tls\n        typed_config:\n          \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext\n{extra}          common_tls_context:\n            tls_certificates:\n{certs}"
    )
}

fn hcm(cluster: &str) -> String {
    format!(
        r#"      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: {cluster} }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
"#
    )
}

fn bootstrap(listeners: &str, clusters: &str) -> String {
    format!(
        "admin:\n  address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}\nstatic_resources:\n  listeners:\n{listeners}  clusters:\n{clusters}"
    )
}

/// A listener named `name` with `extra` (listener filters) and `chains`.
fn listener(name: &str, extra: &str, chains: &str) -> String {
    format!(
        "  - name: {name}\n    stat_prefix: {name}\n    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}\n{extra}    filter_chains:\n{chains}"
    )
}

/// A chain item from its parts (each a block indented for a chain).
fn chain(parts: &[&str]) -> String {
    let body: String = parts.concat();
    format!("    - {}", body.trim_start())
}

fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn terminates_tls_12_and_13_with_alpn_and_https_scheme() {
    let ca = Ca::new("edge");
    let leaf = ca.leaf("edge", &["edge.example.com"]);
    let upstream = Upstream::start();
    let tls = tls_socket(&[&leaf], "").replace(
        "          common_tls_context:\n",
        "          common_tls_context:\n            alpn_protocols: [h2, http/1.1]\n",
    );
    let config = bootstrap(
        &listener("https", "", &chain(&[&tls, &hcm("app")])),
        &cluster("app", upstream.addr, ""),
    );
    let proxy = start_proxy(&config);
    let addr = proxy.addr("https");

    for (versions, expected) in [
        (
            &[&rustls::version::TLS12][..],
            rustls::ProtocolVersion::TLSv1_2,
        ),
        (
            &[&rustls::version::TLS13][..],
            rustls::ProtocolVersion::TLSv1_3,
        ),
    ] {
        let mut s = handshake(
            addr,
            client(ca.roots(), versions, &["http/1.1"], None),
            "edge.example.com",
        )
        .unwrap();
        assert_eq!(s.conn.protocol_version(), Some(expected));
        assert_eq!(s.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
        let r = https_get(&mut s, "/hello", "edge.example.com").unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        let seen = upstream.last();
        assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    }
    // h2 is chosen when offered; a client offering none of the server's protocols still
    // connects, without ALPN (BoringSSL's behaviour, not an alert).
    let s = handshake(
        addr,
        client(ca.roots(), BOTH, &["h2", "http/1.1"], None),
        "edge.example.com",
    )
    .unwrap();
    assert_eq!(s.conn.alpn_protocol(), Some(&b"h2"[..]));
    let s = handshake(
        addr,
        client(ca.roots(), BOTH, &["spdy/3"], None),
        "edge.example.com",
    )
    .unwrap();
    assert_eq!(s.conn.alpn_protocol(), None);

    let stat = |n: &str| proxy.stat(&format!("listener.https.ssl.{n}")).unwrap_or(0);
    eventually("handshake stats", || stat("handshake") == 4);
    assert_eq!(stat("versions.TLSv1.2"), 1);
    assert_eq!(stat("versions.TLSv1.3"), 3);
    assert_eq!(stat("no_certificate"), 4);
    assert_eq!(stat("connection_error"), 0);
    assert_eq!(stat("ciphers.ECDHE-ECDSA-AES128-GCM-SHA256"), 1);
    // The connection manager counts its TLS connections; the last two are still open.
    eventually("connection manager TLS stats", || {
        proxy.stat("http.ingress.downstream_cx_ssl_total") == Some(4)
            && proxy.stat("http.ingress.downstream_cx_ssl_active") == Some(2)
    });

    // curl over HTTP/2, and openssl s_client, where installed.
    if let Ok(out) = std::process::Command::new("curl")
        .args([
            "-sk",
            "--http2",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code}",
        ])
        .arg(format!("https://{addr}/curl"))
        .output()
    {
        assert_eq!(String::from_utf8_lossy(&out.stdout), "2 200");
        assert_eq!(upstream.last().header("x-forwarded-proto"), Some("https"));
    }
    if let Ok(mut child) = std::process::Command::new("openssl")
        .args(["s_client", "-connect", &addr.to_string(), "-servername"])
        .args(["edge.example.com", "-alpn", "h2", "-tls1_2"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
    {
        drop(child.stdin.take());
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("ALPN protocol: h2"), "{text}");
        assert!(text.contains("Protocol  : TLSv1.2"), "{text}");
    }
}

/// TLS over unix domain sockets both ways, as in Envoy: a `pipe` listener terminates it (its
/// chain chosen by the SNI the tls_inspector read), and a cluster whose endpoint is a pipe
/// originates it (SNI, the CA and the SAN verified) — here to that same listener, from a TCP
/// one. A client whose SNI no chain names is closed and counted.
#[test]
fn tls_over_unix_domain_sockets_both_ways() {
    let ca = Ca::new("pipe");
    let leaf = ca.leaf("pipe", &["pipe.example.com"]);
    let upstream = Upstream::start();
    let sock = ca.dir.join("tls.sock");
    let pipe_listener = format!(
        "  - name: pipe_tls\n    stat_prefix: pipe_tls\n    address: {{pipe: {{path: \"{}\"}}}}\n    listener_filters:\n    - name: envoy.filters.listener.tls_inspector\n      typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector}}\n    filter_chains:\n{}",
        sock.display(),
        chain(&[
            "      filter_chain_match: {server_names: [pipe.example.com]}\n",
            &tls_socket(&[&leaf], ""),
            &hcm("web"),
        ])
    );
    let over_pipe = format!(
        r#"  - name: over_pipe
    connect_timeout: 1s
    type: STATIC
{}
    load_assignment:
      cluster_name: over_pipe
      endpoints:
      - lb_endpoints:
        - endpoint:
            address: {{pipe: {{path: "{}"}}}}
"#,
        upstream_tls(&format!(
            "        sni: pipe.example.com\n        common_tls_context:\n          validation_context:\n            trusted_ca: {{filename: {}}}\n            match_typed_subject_alt_names:\n            - san_type: DNS\n              matcher: {{exact: pipe.example.com}}\n",
            ca.ca_file().display()
        )),
        sock.display()
    );
    let config = bootstrap(
        &(listener("edge", "", &chain(&[&hcm("over_pipe")])) + &pipe_listener),
        &(cluster("web", upstream.addr, "") + &over_pipe),
    );
    let proxy = start_proxy(&config);
    let edge = proxy.listeners["edge"];

    // TCP in, TLS over the pipe to the pipe listener, plain TCP to the upstream.
    let r = e2e::http_get(edge, "/through", &[]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(upstream.last().path, "/through");
    assert_eq!(proxy.stat("cluster.over_pipe.ssl.handshake"), Some(1));
    assert_eq!(
        proxy.stat("cluster.over_pipe.upstream_cx_connect_fail"),
        Some(0)
    );

    // A client of the pipe listener itself.
    let roots = client(ca.roots(), BOTH, &["http/1.1"], None);
    let mut tls = handshake_unix(&sock, roots.clone(), "pipe.example.com").unwrap();
    let r = https_get(&mut tls, "/direct", "pipe.example.com").unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(upstream.last().path, "/direct");
    assert_eq!(upstream.last().header("x-forwarded-proto"), Some("https"));
    eventually("the pipe listener's handshakes", || {
        proxy.stat("listener.pipe_tls.ssl.handshake") == Some(2)
    });

    // No chain for this name: closed before any handshake.
    assert!(handshake_unix(&sock, roots.clone(), "other.example.com").is_err());
    eventually("no_filter_chain_match", || {
        proxy.stat("listener.pipe_tls.no_filter_chain_match") == Some(1)
    });
    assert_eq!(proxy.stat("listener.pipe_tls.ssl.handshake"), Some(2));

    // Garbage instead of a ClientHello: closed, and the listener keeps serving.
    let mut garbage = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    garbage
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    garbage
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let mut rest = Vec::new();
    let _ = garbage.read_to_end(&mut rest);
    assert!(!rest.starts_with(b"HTTP/"), "{rest:?}");
    let mut tls = handshake_unix(&sock, roots, "pipe.example.com").unwrap();
    assert_eq!(
        https_get(&mut tls, "/after", "pipe.example.com")
            .unwrap()
            .status,
        200
    );
}

#[test]
fn sni_selects_the_chain_and_certificate_on_one_port() {
    let ca = Ca::new("sni");
    let a = ca.leaf("a", &["a.example.com"]);
    let b = ca.leaf("b", &["b.example.com"]);
    let upstream = Upstream::start();
    let inspector = "    listener_filters:\n    - name: envoy.filters.listener.tls_inspector\n      typed_config: { \"@type\": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector }\n";
    let chains = [
        chain(&[
            "      filter_chain_match: {server_names: [a.example.com]}\n",
            &tls_socket(&[&a], ""),
            &hcm("app"),
        ]),
        chain(&[
            "      filter_chain_match: {server_names: [\"*.b.example.com\", b.example.com]}\n",
            &tls_socket(&[&b], ""),
            &hcm("app"),
        ]),
    ]
    .concat();
    let config = bootstrap(
        &listener("sni", inspector, &chains),
        &cluster("app", upstream.addr, ""),
    );
    let proxy = start_proxy(&config);
    let addr = proxy.addr("sni");
    // The client checks the server's name: a wrong certificate fails the handshake.
    for name in ["a.example.com", "b.example.com"] {
        let mut s = handshake(addr, client(ca.roots(), BOTH, &[], None), name).unwrap();
        let r = https_get(&mut s, "/", name).unwrap();
        assert_eq!(r.status, 200);
    }
    let err = handshake(addr, client(ca.roots(), BOTH, &[], None), "c.example.com");
    assert!(err.is_err(), "no chain for c.example.com");
    eventually("no_filter_chain_match", || {
        proxy.stat("listener.sni.no_filter_chain_match") == Some(1)
    });
}

#[test]
fn one_context_serves_ecdsa_or_rsa_by_the_clients_signature_schemes() {
    let ca = Ca::new("multi");
    let Some(rsa) = ca.rsa_leaf("rsa", &["multi.example.com"]) else {
        eprintln!("skipped: openssl is not installed");
        return;
    };
    let ecdsa = ca.leaf("ecdsa", &["multi.example.com"]);
    let upstream = Upstream::start();
    let config = bootstrap(
        &listener(
            "multi",
            "",
            &chain(&[&tls_socket(&[&rsa, &ecdsa], ""), &hcm("app")]),
        ),
        &cluster("app", upstream.addr, ""),
    );
    let proxy = start_proxy(&config);
    let addr = proxy.addr("multi");
    let served = |config: Arc<ClientConfig>| {
        let s = handshake(addr, config, "multi.example.com").unwrap();
        let cert = s.conn.peer_certificates().unwrap()[0].clone();
        cert
    };
    let ecdsa_cert = read_certs(&ecdsa.cert)[0].clone();
    let rsa_cert = read_certs(&rsa.cert)[0].clone();
    // A client that verifies ECDSA gets the ECDSA certificate (Envoy prefers it).
    assert_eq!(served(client(ca.roots(), BOTH, &[], None)), ecdsa_cert);
    // A client that only verifies RSA signatures gets the RSA one.
    assert_eq!(served(Observer::client(&ca, false, true)), rsa_cert);
}

/// Envoy's certificate selector, by name: a certificate named exactly as the SNI wins over a
/// wildcard one even when the wildcard one has the key type the client prefers; a wildcard
/// serves one label; a certificate without SANs is named by its subject CN; without an SNI
/// the first usable certificate (ECDSA for an ECDSA client) is served; an unmatched SNI gets
/// the first certificate. Runs against Envoy too (`LEGATE_E2E_PROXY=envoy`).
#[test]
fn exact_certificate_names_beat_wildcards_and_cn_names_count() {
    let ca = Ca::new("names");
    let Some(exact_rsa) = ca.rsa_leaf("exact-rsa", &["www.example.com"]) else {
        eprintln!("skipped: openssl is not installed");
        return;
    };
    let wildcard_ecdsa = ca.leaf("wild-ecdsa", &["*.example.com"]);
    let cn_only = ca.leaf_from("cn", cn_params("cn.test"), KeyPair::generate().unwrap());
    let upstream = Upstream::start();
    let config = bootstrap(
        &listener(
            "names",
            "",
            &chain(&[
                &tls_socket(&[&exact_rsa, &wildcard_ecdsa, &cn_only], ""),
                &hcm("app"),
            ]),
        ),
        &cluster("app", upstream.addr, ""),
    );
    let proxy = start_proxy(&config);
    let addr = proxy.addr("names");
    // A client that verifies ECDSA and RSA signatures but takes any certificate, to see which
    // one is served.
    let observer = Observer::client(&ca, true, false);
    let served = |sni: &str| {
        let s = handshake(addr, observer.clone(), sni).unwrap();
        s.conn.peer_certificates().unwrap()[0].clone().into_owned()
    };
    let cert = |leaf: &Leaf| read_certs(&leaf.cert)[0].clone();
    assert!(
        served("www.example.com") == cert(&exact_rsa),
        "the exact RSA name"
    );
    assert!(
        served("api.example.com") == cert(&wildcard_ecdsa),
        "the wildcard"
    );
    assert!(served("cn.test") == cert(&cn_only), "the CN");
    assert!(
        served("a.b.example.com") == cert(&exact_rsa),
        "no match: the first"
    );
    assert!(
        served("127.0.0.1") == cert(&wildcard_ecdsa),
        "no SNI: the first ECDSA"
    );
}

/// A server verifier for watching certificate selection: signatures are checked as
/// `WebPkiServerVerifier` checks them; `any_certificate` accepts every certificate (to see
/// which one is served); `rsa_only` offers only RSA signature schemes (a client that cannot
/// verify ECDSA).
#[derive(Debug)]
struct Observer {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    any_certificate: bool,
    rsa_only: bool,
}

impl Observer {
    /// A client configuration trusting `ca` and verifying with this observer.
    fn client(ca: &Ca, any_certificate: bool, rsa_only: bool) -> Arc<ClientConfig> {
        let mut config = (*client(ca.roots(), BOTH, &[], None)).clone();
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(ca.roots()),
            provider(),
        )
        .build()
        .unwrap();
        config
            .dangerous()
            .set_certificate_verifier(Arc::new(Observer {
                inner,
                any_certificate,
                rsa_only,
            }));
        Arc::new(config)
    }
}

impl rustls::client::danger::ServerCertVerifier for Observer {
    fn verify_server_cert(
        &self,
        e: &CertificateDer<'_>,
        i: &[CertificateDer<'_>],
        n: &ServerName<'_>,
        o: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if self.any_certificate {
            return Ok(rustls::client::danger::ServerCertVerified::assertion());
        }
        self.inner.verify_server_cert(e, i, n, o, now)
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(m, c, d)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(m, c, d)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        use rustls::SignatureScheme as S;
        if self.rsa_only {
            vec![S::RSA_PSS_SHA256, S::RSA_PKCS1_SHA256]
        } else {
            self.inner.supported_verify_schemes()
        }
    }
}

#[test]
fn client_certificates_are_required_and_verified() {
    let ca = Ca::new("mtls");
    let other = Ca::new("stranger");
    let server = ca.leaf("server", &["mtls.example.com"]);
    let good = ca.leaf("client", &["client.example.com"]);
    let untrusted = other.leaf("client", &["client.example.com"]);
    let upstream = Upstream::start();
    let extra = "          require_client_certificate: true\n";
    let tls = tls_socket(&[&server], extra).replace(
        "          common_tls_context:\n",
        &format!(
            "          common_tls_context:\n            validation_context:\n              trusted_ca: {{filename: {}}}\n",
            ca.ca_file().display()
        ),
    );
    let config = bootstrap(
        &listener("mtls", "", &chain(&[&tls, &hcm("app")])),
        &cluster("app", upstream.addr, ""),
    );
    let proxy = start_proxy(&config);
    let addr = proxy.addr("mtls");
    let name = "mtls.example.com";
    for versions in [
        &[&rustls::version::TLS12][..],
        &[&rustls::version::TLS13][..],
    ] {
        let mut s = handshake(addr, client(ca.roots(), versions, &[], Some(&good)), name).unwrap();
        assert_eq!(https_get(&mut s, "/", name).unwrap().status, 200);
        // Without a certificate, or with one from another CA: refused (in TLS 1.3 the client
        // learns it on its first read).
        for cert in [None, Some(&untrusted)] {
            let refused = handshake(addr, client(ca.roots(), versions, &[], cert), name)
                .and_then(|mut s| https_get(&mut s, "/", name));
            assert!(refused.is_err(), "{refused:?}");
        }
    }
    let stat = |n: &str| proxy.stat(&format!("listener.mtls.ssl.{n}")).unwrap_or(0);
    eventually("handshakes", || stat("handshake") == 2);
    eventually("refusals", || {
        stat("fail_verify_no_cert") == 2 && stat("fail_verify_error") == 2
    });
    assert_eq!(stat("no_certificate"), 0);
    assert_eq!(stat("connection_error"), 0);
}

/// A TLS upstream speaking just enough HTTP/1.1: answers every request with the SNI and the
/// ALPN protocol of its connection; records them.
struct TlsUpstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<(Option<String>, Option<String>)>>>,
}

impl TlsUpstream {
    fn start(leaf: &Leaf, client_ca: Option<&Ca>, alpn: &[&str]) -> TlsUpstream {
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match client_ca {
            Some(ca) => builder.with_client_cert_verifier(
                rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(ca.roots()),
                    provider(),
                )
                .build()
                .unwrap(),
            ),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(
                read_certs(&leaf.cert),
                PrivateKeyDer::from_pem_file(&leaf.key).unwrap(),
            )
            .unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<_>>> = Arc::default();
        let record = seen.clone();
        std::thread::spawn(move || {
            for tcp in listener.incoming() {
                let Ok(tcp) = tcp else { continue };
                let config = config.clone();
                let record = record.clone();
                std::thread::spawn(move || {
                    let _ = tcp.set_read_timeout(Some(Duration::from_secs(5)));
                    let conn = rustls::ServerConnection::new(config).unwrap();
                    let mut s = StreamOwned::new(conn, tcp);
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut chunk) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let sni = s.conn.server_name().map(str::to_owned);
                    let alpn = s
                        .conn
                        .alpn_protocol()
                        .map(|p| String::from_utf8_lossy(p).into_owned());
                    record.lock().unwrap().push((sni.clone(), alpn.clone()));
                    if buf.is_empty() {
                        return;
                    }
                    let body = format!(
                        "sni={} alpn={}",
                        sni.unwrap_or_default(),
                        alpn.unwrap_or_default()
                    );
                    let _ = write!(
                        s,
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    s.conn.send_close_notify();
                    let _ = s.flush();
                });
            }
        });
        TlsUpstream { addr, seen }
    }
}

fn upstream_tls(body: &str) -> String {
    format!(
        "    transport_socket:\n      name: envoy.transport_sockets.tls\n      typed_config:\n        \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext\n{body}"
    )
}

#[test]
fn upstream_tls_sni_validation_and_client_certificates() {
    let ca = Ca::new("up");
    let other = Ca::new("up-other");
    let server = ca.leaf("upstream", &["backend.example.com"]);
    let client_leaf = ca.leaf("proxy", &["proxy.example.com"]);
    // Requires a client certificate from `ca`.
    let backend = TlsUpstream::start(&server, Some(&ca), &[]);
    let validation = |ca: &Ca, san: &str| {
        format!(
            "          validation_context:\n            trusted_ca: {{filename: {}}}\n{san}",
            ca.ca_file().display()
        )
    };
    let client_cert = format!(
        "          tls_certificates:\n          - certificate_chain: {{filename: {}}}\n            private_key: {{filename: {}}}\n",
        client_leaf.cert.display(),
        client_leaf.key.display()
    );
    let san = |name: &str| {
        format!(
            "            match_typed_subject_alt_names:\n            - san_type: DNS\n              matcher: {{exact: {name}}}\n"
        )
    };
    let clusters = [
        // Trusted, right name, with a client certificate.
        cluster(
            "good",
            backend.addr,
            &upstream_tls(&format!(
                "        sni: backend.example.com\n        common_tls_context:\n{client_cert}{}",
                validation(&ca, &san("backend.example.com"))
            )),
        ),
        // No validation context: any certificate goes, as in Envoy.
        cluster(
            "unverified",
            backend.addr,
            &upstream_tls(&format!("        common_tls_context:\n{client_cert}")),
        ),
        // The SAN matcher names another host.
        cluster(
            "wrong_host",
            backend.addr,
            &upstream_tls(&format!(
                "        sni: backend.example.com\n        common_tls_context:\n{client_cert}{}",
                validation(&ca, &san("other.example.com"))
            )),
        ),
        // Signed by a CA we do not trust.
        cluster(
            "untrusted",
            backend.addr,
            &upstream_tls(&format!(
                "        sni: backend.example.com\n        common_tls_context:\n{client_cert}{}",
                validation(&other, "")
            )),
        ),
        // Signed by a CA we do not trust, let through (and counted) by ACCEPT_UNTRUSTED.
        cluster(
            "lenient",
            backend.addr,
            &upstream_tls(&format!(
                "        sni: backend.example.com\n        common_tls_context:\n{client_cert}{}",
                validation(&other, "            trust_chain_verification: ACCEPT_UNTRUSTED\n")
            )),
        ),
        // Pinned, without a CA: the certificate's hash is all that is checked.
        cluster(
            "pin_right",
            backend.addr,
            &upstream_tls(&format!(
                "        common_tls_context:\n{client_cert}          validation_context:\n            verify_certificate_hash: ['{}']\n",
                hex(&sha256(&read_certs(&server.cert)[0]))
            )),
        ),
        // Pinned to another certificate.
        cluster(
            "pin_wrong",
            backend.addr,
            &upstream_tls(&format!(
                "        common_tls_context:\n{client_cert}          validation_context:\n            verify_certificate_hash: ['{}']\n",
                hex(&sha256(&read_certs(&client_leaf.cert)[0]))
            )),
        ),
        // No client certificate: the upstream refuses the handshake.
        cluster(
            "no_client_cert",
            backend.addr,
            &upstream_tls(&format!(
                "        common_tls_context:\n{}",
                validation(&ca, "")
            )),
        ),
    ]
    .concat();
    let routes: String = [
        "good",
        "unverified",
        "wrong_host",
        "untrusted",
        "no_client_cert",
        "pin_right",
        "pin_wrong",
        "lenient",
    ]
        .iter()
        .map(|c| {
            format!(
                "              - match: {{ prefix: \"/{c}\" }}\n                route: {{ cluster: {c} }}\n"
            )
        })
        .collect();
    let log = ca.dir.join("access.log");
    let hcm = hcm("good")
        .replace(
            "              - match: { prefix: \"/\" }\n                route: { cluster: good }\n",
            &routes,
        )
        .replace(
            "          stat_prefix: ingress\n",
            &format!(
                "          stat_prefix: ingress\n          access_log:\n          - name: envoy.access_loggers.file\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog\n              path: {}\n              log_format: {{text_format_source: {{inline_string: \"%REQ(:PATH)% %RESPONSE_FLAGS% %UPSTREAM_TRANSPORT_FAILURE_REASON%\\n\"}}}}\n",
                log.display()
            ),
        );
    let plain = listener("plain", "", &chain(&[&hcm]));
    let proxy = start_proxy(&bootstrap(&plain, &clusters));
    let addr = proxy.addr("plain");

    let r = e2e::http_get(addr, "/good", &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body, "sni=backend.example.com alpn=");
    let r = e2e::http_get(addr, "/unverified", &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body, "sni= alpn=", "no SNI unless `sni` is set");
    for c in ["wrong_host", "untrusted"] {
        let r = e2e::http_get(addr, &format!("/{c}"), &[]);
        assert_eq!(r.status, 503, "{c}: {}", r.body);
        assert_eq!(
            r.body,
            "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure"
        );
    }
    let r = e2e::http_get(addr, "/no_client_cert", &[]);
    assert_eq!(r.status, 503, "{}", r.body);
    let r = e2e::http_get(addr, "/pin_right", &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    let r = e2e::http_get(addr, "/pin_wrong", &[]);
    assert_eq!(r.status, 503, "{}", r.body);
    let stat = |c: &str, n: &str| proxy.stat(&format!("cluster.{c}.ssl.{n}")).unwrap_or(0);
    assert_eq!(stat("good", "handshake"), 1);
    assert_eq!(stat("wrong_host", "fail_verify_san"), 1);
    assert_eq!(stat("untrusted", "fail_verify_error"), 1);
    assert_eq!(stat("wrong_host", "handshake"), 0);
    assert_eq!(stat("pin_right", "handshake"), 1);
    assert_eq!(stat("pin_wrong", "fail_verify_cert_hash"), 1);
    let r = e2e::http_get(addr, "/lenient", &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(stat("lenient", "fail_verify_error"), 1);
    assert_eq!(stat("lenient", "handshake"), 1);
    assert_eq!(
        proxy.stat("cluster.untrusted.upstream_cx_connect_fail"),
        Some(1)
    );
    // The failure reason, in Envoy's (BoringSSL's) words, is in the access log (spaces as
    // underscores, as Envoy writes this field).
    let mut lines = Vec::new();
    eventually("access log", || {
        lines = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect();
        lines.len() >= 5
    });
    for c in ["wrong_host", "untrusted"] {
        let line = lines
            .iter()
            .find(|l| l.starts_with(&format!("/{c} ")))
            .unwrap();
        // Envoy adds its validator's detail before `:TLS_error_end` (the certificate's SANs,
        // the X509 error); Legate does not.
        eprintln!("{line}");
        let prefix = format!(
            "/{c} UF TLS_error:|268435581:SSL_routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED:"
        );
        assert!(
            line.starts_with(&prefix) && line.ends_with("TLS_error_end"),
            "{line}"
        );
    }
}

/// Upstream TLS with its client certificate and its validation context from one SDS file, as
/// service meshes configure it: the certificate is presented (the upstream requires one), the
/// upstream's certificate is verified against the secret's CA, under a default SAN matcher
/// with `combined_validation_context`, and replacing the CA file changes the verdict for new
/// connections.
#[test]
fn upstream_tls_takes_its_certificate_and_validation_context_from_sds() {
    let ca = Ca::new("up-sds");
    let other = Ca::new("up-sds-other");
    let server = ca.leaf("upstream", &["backend.example.com"]);
    let proxy_leaf = ca.leaf("proxy", &["proxy.example.com"]);
    let backend = TlsUpstream::start(&server, Some(&ca), &[]);
    let ca_file = ca.dir.join("current-ca.pem");
    rename_into_place(&ca.ca_file(), &ca_file);
    // A secrets file holds one secret (Envoy refuses a file with two).
    let sds = ca.dir.join("sds.yaml");
    std::fs::write(&sds, validation_secret(&ca_file, "1")).unwrap();
    let certificate_file = ca.dir.join("sds-certificate.yaml");
    std::fs::write(
        &certificate_file,
        format!(
            "resources:\n- \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret\n  name: proxy\n  tls_certificate:\n    certificate_chain: {{filename: {}}}\n    private_key: {{filename: {}}}\n",
            proxy_leaf.cert.display(),
            proxy_leaf.key.display()
        ),
    )
    .unwrap();
    let certificate_sds = format!(
        "          tls_certificate_sds_secret_configs:\n          - {{name: proxy, sds_config: {}}}\n",
        sds_config(&certificate_file)
    );
    let combined = |san: &str| {
        format!(
            "          combined_validation_context:\n            default_validation_context:\n              match_typed_subject_alt_names:\n              - san_type: DNS\n                matcher: {{exact: {san}}}\n            validation_context_sds_secret_config: {{name: roots, sds_config: {}}}\n",
            sds_config(&sds)
        )
    };
    let tls = |validation: &str| {
        upstream_tls(&format!(
            "        common_tls_context:\n{certificate_sds}{validation}"
        ))
    };
    let clusters = [
        cluster(
            "alone",
            backend.addr,
            &tls(&format!(
                "          validation_context_sds_secret_config: {{name: roots, sds_config: {}}}\n",
                sds_config(&sds)
            )),
        ),
        cluster(
            "combined",
            backend.addr,
            &tls(&combined("backend.example.com")),
        ),
        cluster(
            "wrong_host",
            backend.addr,
            &tls(&combined("other.example.com")),
        ),
    ]
    .concat();
    let routes: String = ["alone", "combined", "wrong_host"]
        .iter()
        .map(|c| {
            format!(
                "              - match: {{ prefix: \"/{c}\" }}\n                route: {{ cluster: {c} }}\n"
            )
        })
        .collect();
    let hcm = hcm("alone").replace(
        "              - match: { prefix: \"/\" }\n                route: { cluster: alone }\n",
        &routes,
    );
    let config = format!(
        "node: {{id: edge, cluster: edge}}\n{}",
        bootstrap(&listener("plain", "", &chain(&[&hcm])), &clusters)
    );
    let proxy = start_proxy(&config);
    let addr = proxy.addr("plain");
    let status = |path: &str| e2e::http_get(addr, path, &[]).status;
    assert_eq!(status("/alone"), 200);
    assert_eq!(status("/combined"), 200);
    assert_eq!(status("/wrong_host"), 503);
    let stat = |c: &str, n: &str| proxy.stat(&format!("cluster.{c}.ssl.{n}")).unwrap_or(0);
    assert_eq!(stat("wrong_host", "fail_verify_san"), 1);

    // Another CA in the file the secret names: the upstream's certificate is no longer trusted.
    rename_into_place(&other.ca_file(), &ca_file);
    eventually("the new CA in force", || status("/alone") == 503);
    assert_eq!(status("/combined"), 503);
    assert!(stat("combined", "fail_verify_error") >= 1);
}

/// Upstream TLS sessions resume on the next connection (the test upstream closes each one
/// after its response), unless `max_session_keys` is 0.
#[test]
fn upstream_sessions_resume_unless_max_session_keys_is_0() {
    let ca = Ca::new("upresume");
    let server = ca.leaf("upstream", &["backend.example.com"]);
    let backend = TlsUpstream::start(&server, None, &[]);
    let clusters = [
        cluster(
            "resumed",
            backend.addr,
            &upstream_tls("        sni: backend.example.com\n"),
        ),
        cluster(
            "not_resumed",
            backend.addr,
            &upstream_tls("        sni: backend.example.com\n        max_session_keys: 0\n"),
        ),
    ]
    .concat();
    let routes: String = ["resumed", "not_resumed"]
        .iter()
        .map(|c| format!("              - match: {{ prefix: \"/{c}\" }}\n                route: {{ cluster: {c} }}\n"))
        .collect();
    let hcm = hcm("resumed").replace(
        "              - match: { prefix: \"/\" }\n                route: { cluster: resumed }\n",
        &routes,
    );
    let proxy = start_proxy(&bootstrap(
        &listener("plain", "", &chain(&[&hcm])),
        &clusters,
    ));
    for c in ["resumed", "not_resumed"] {
        for _ in 0..3 {
            let r = e2e::http_get(proxy.addr("plain"), &format!("/{c}"), &[]);
            assert_eq!(r.status, 200, "{c}: {}", r.body);
        }
    }
    let stat = |c: &str, n: &str| proxy.stat(&format!("cluster.{c}.ssl.{n}")).unwrap_or(0);
    assert_eq!(stat("resumed", "handshake"), 3);
    assert_eq!(stat("resumed", "session_reused"), 2);
    assert_eq!(stat("not_resumed", "handshake"), 3);
    assert_eq!(stat("not_resumed", "session_reused"), 0);
}

#[test]
fn upstream_tls_offers_h2_by_alpn_to_http2_clusters() {
    if target_is_envoy() {
        // The backend below does not speak HTTP/2: only the offer is checked.
    }
    let ca = Ca::new("alpn");
    let server = ca.leaf("upstream", &["h2.example.com"]);
    let backend = TlsUpstream::start(&server, None, &["h2", "http/1.1"]);
    let h2 = format!(
        "{}\n{}",
        e2e::H2_UPSTREAM,
        upstream_tls("        sni: h2.example.com\n")
    );
    let clusters = [
        cluster("h2", backend.addr, &h2),
        cluster(
            "h1",
            backend.addr,
            &upstream_tls("        sni: h2.example.com\n"),
        ),
    ]
    .concat();
    let hcm = hcm("h2").replace(
        "              - match: { prefix: \"/\" }\n                route: { cluster: h2 }\n",
        "              - match: { prefix: \"/h1\" }\n                route: { cluster: h1 }\n              - match: { prefix: \"/\" }\n                route: { cluster: h2 }\n",
    );
    let proxy = start_proxy(&bootstrap(
        &listener("plain", "", &chain(&[&hcm])),
        &clusters,
    ));
    let addr = proxy.addr("plain");
    let r = e2e::http_get(addr, "/h1", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "sni=h2.example.com alpn=http/1.1");
    // The backend answers HTTP/1.1 on an h2 connection: the request fails, the offer counts.
    let _ = e2e::http_get(addr, "/h2", &[]);
    let seen = backend.seen.lock().unwrap().clone();
    assert!(
        seen.contains(&(Some("h2.example.com".into()), Some("h2".into()))),
        "{seen:?}"
    );
}

#[test]
fn garbage_and_truncated_handshakes_do_not_hang() {
    let ca = Ca::new("hostile");
    let leaf = ca.leaf("server", &["hostile.example.com"]);
    let upstream = Upstream::start();
    let tls = format!(
        "      transport_socket_connect_timeout: 0.5s\n{}",
        tls_socket(&[&leaf], "")
    );
    let config = bootstrap(
        &listener("hostile", "", &chain(&[&tls, &hcm("app")])),
        &cluster("app", upstream.addr, ""),
    );
    let proxy = start_proxy(&config);
    let addr = proxy.addr("hostile");
    let closed_within = |mut s: TcpStream, t: Duration| {
        s.set_read_timeout(Some(t)).unwrap();
        let started = Instant::now();
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    return false;
                }
                Err(_) => return true,
            }
            if started.elapsed() > t {
                return false;
            }
        }
    };
    // An HTTP request where a ClientHello should be.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    assert!(closed_within(s, Duration::from_secs(3)), "garbage");
    // The first bytes of a ClientHello, then silence: the handshake timeout closes it.
    let mut hello = Vec::new();
    let mut conn = ClientConnection::new(
        client(ca.roots(), BOTH, &[], None),
        ServerName::try_from("hostile.example.com").unwrap(),
    )
    .unwrap();
    conn.write_tls(&mut hello).unwrap();
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(&hello[..hello.len() / 2]).unwrap();
    assert!(closed_within(s, Duration::from_secs(3)), "truncated hello");
    // A full hello, then nothing: the timeout too.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(&hello).unwrap();
    assert!(
        closed_within(s, Duration::from_secs(3)),
        "stalled handshake"
    );
    eventually("timeouts counted", || {
        proxy.stat("listener.hostile.downstream_cx_transport_socket_connect_timeout") == Some(2)
    });
    assert_eq!(proxy.stat("listener.hostile.ssl.connection_error"), Some(1));
    // A ClientHello announcing 16 MB, streamed in full-size records: refused long before the
    // 16 MB arrive (the writer sees the connection reset), and nothing is buffered for it.
    assert!(
        refused_before(addr, &huge_hello(), 16 << 20),
        "16 MB ClientHello"
    );
    // A record header claiming 65,535 bytes, beyond TLS's 16 KiB + 256 ciphertext limit.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(&[0x16, 0x03, 0x01, 0xff, 0xff]).unwrap();
    let _ = s.write_all(&[0u8; 4096]);
    assert!(closed_within(s, Duration::from_secs(3)), "oversized record");
    eventually("oversized handshakes counted", || {
        proxy.stat("listener.hostile.ssl.connection_error") == Some(3)
    });
    // Still serving.
    let mut s = handshake(
        addr,
        client(ca.roots(), BOTH, &[], None),
        "hostile.example.com",
    )
    .unwrap();
    assert_eq!(
        https_get(&mut s, "/", "hostile.example.com")
            .unwrap()
            .status,
        200
    );
}

#[test]
fn tls_config_errors_name_the_field() {
    let ca = Ca::new("errors");
    let leaf = ca.leaf("server", &["errors.example.com"]);
    let cases = [
        (
            "          common_tls_context:\n            tls_params: {cipher_suites: [ECDHE-RSA-AES128-GCM-SHA256, NOPE]}\n",
            "common_tls_context.tls_params.cipher_suites[1]",
        ),
        (
            "          common_tls_context:\n            tls_params: {ecdh_curves: [P-521]}\n",
            "common_tls_context.tls_params.ecdh_curves",
        ),
    ];
    for (ctx, path) in cases {
        let tls = tls_socket(&[&leaf], "").replace("          common_tls_context:\n", ctx);
        let config = bootstrap(
            &listener("bad", "", &chain(&[&tls, &hcm("app")])),
            &cluster("app", "127.0.0.1:1".parse().unwrap(), ""),
        );
        let file = ca.dir.join("bad.yaml");
        std::fs::write(&file, config).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_legate"))
            .args(["--mode", "validate", "-c"])
            .arg(&file)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success());
        assert!(
            text.contains(&format!(
                "static_resources.listeners[0].filter_chains[0].transport_socket.typed_config.{path}"
            )),
            "{text}"
        );
    }
    // A key that is not the certificate's.
    let other = ca.leaf("other", &["other.example.com"]);
    let mismatched = Leaf {
        cert: leaf.cert.clone(),
        key: other.key.clone(),
    };
    let tls = tls_socket(&[&mismatched], "");
    let file = ca.dir.join("mismatch.yaml");
    std::fs::write(
        &file,
        bootstrap(
            &listener("bad", "", &chain(&[&tls, &hcm("app")])),
            &cluster("app", "127.0.0.1:1".parse().unwrap(), ""),
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_legate"))
        .args(["--mode", "validate", "-c"])
        .arg(&file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains(
            "common_tls_context.tls_certificates[0].private_key: Failed to load private key from"
        ),
        "{text}"
    );
}

/// Replaces `to` by `from`'s content the way rotations are done: a new file renamed over it.
fn rename_into_place(from: &Path, to: &Path) {
    let staged = to.with_extension("staged");
    std::fs::copy(from, &staged).unwrap();
    std::fs::rename(&staged, to).unwrap();
}

/// The certificate a server presents to a new handshake.
fn presented(addr: SocketAddr, ca: &Ca) -> Option<CertificateDer<'static>> {
    let s = handshake(
        addr,
        client(ca.roots(), BOTH, &[], None),
        "edge.example.com",
    )
    .ok()?;
    s.conn
        .peer_certificates()?
        .first()
        .map(|c| c.clone().into_owned())
}

/// SDS from a file (`tls_certificate_sds_secret_configs` with a `path_config_source`): the
/// certificate is served, and replacing the certificate files (or the secrets file) changes
/// it for new handshakes without a restart, while open connections go on.
#[test]
fn certificates_from_sds_files_rotate_while_connections_stay_open() {
    let ca = Ca::new("sds");
    let one = ca.leaf("one", &["edge.example.com"]);
    let two = ca.leaf("two", &["edge.example.com"]);
    let current = Leaf {
        cert: ca.dir.join("current.crt"),
        key: ca.dir.join("current.key"),
    };
    rename_into_place(&one.cert, &current.cert);
    rename_into_place(&one.key, &current.key);
    let secret = |leaf: &Leaf, version: &str| {
        format!(
            "version_info: \"{version}\"\nresources:\n- \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret\n  name: edge\n  tls_certificate:\n    certificate_chain: {{filename: {}}}\n    private_key: {{filename: {}}}\n",
            leaf.cert.display(),
            leaf.key.display()
        )
    };
    let sds = ca.dir.join("sds.yaml");
    std::fs::write(&sds, secret(&current, "1")).unwrap();
    let tls = format!(
        "      transport_socket:\n        name: envoy.transport_sockets.tls\n        typed_config:\n          \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext\n          common_tls_context:\n            tls_certificate_sds_secret_configs:\n            - name: edge\n              sds_config: {{path_config_source: {{path: {}}}, resource_api_version: V3}}\n",
        sds.display()
    );
    let upstream = Upstream::start();
    // Envoy requires a node identity for any xDS subscription, SDS from a file too.
    let config = format!(
        "node: {{id: edge, cluster: edge}}\n{}",
        bootstrap(
            &listener("https", "", &chain(&[&tls, &hcm("app")])),
            &cluster("app", upstream.addr, ""),
        )
    );
    let proxy = start_proxy(&config);
    let addr = proxy.addr("https");
    let der = |leaf: &Leaf| read_certs(&leaf.cert).remove(0);
    assert_eq!(presented(addr, &ca), Some(der(&one)));
    let mut open = handshake(
        addr,
        client(ca.roots(), BOTH, &[], None),
        "edge.example.com",
    )
    .expect("a handshake with the first certificate");

    // Rotation of the files the secret names.
    rename_into_place(&two.key, &current.key);
    rename_into_place(&two.cert, &current.cert);
    eventually("the rotated certificate", || {
        presented(addr, &ca) == Some(der(&two))
    });
    let r = https_get(&mut open, "/", "edge.example.com").unwrap();
    assert_eq!(r.status, 200, "the connection opened before the rotation");

    // A new secrets file pointing elsewhere.
    let staged = ca.dir.join("sds.staged");
    std::fs::write(&staged, secret(&one, "2")).unwrap();
    std::fs::rename(&staged, &sds).unwrap();
    eventually("the certificate of the new secrets file", || {
        presented(addr, &ca) == Some(der(&one))
    });
    // A broken secrets file changes nothing.
    std::fs::write(&staged, "resources: [ {").unwrap();
    std::fs::rename(&staged, &sds).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(presented(addr, &ca), Some(der(&one)));
}

/// An SDS config pointing at the secrets file `path`.
fn sds_config(path: &Path) -> String {
    format!(
        "{{path_config_source: {{path: {}}}, resource_api_version: V3}}",
        path.display()
    )
}

/// A secrets file holding one `validation_context` secret named `roots`, trusting `ca_file`.
fn validation_secret(ca_file: &Path, version: &str) -> String {
    format!(
        "version_info: \"{version}\"\nresources:\n- \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret\n  name: roots\n  validation_context:\n    trusted_ca: {{filename: {}}}\n",
        ca_file.display()
    )
}

/// Client certificates checked against a validation context from an SDS file, alone
/// (`validation_context_sds_secret_config`) and under a default that adds a SAN matcher
/// (`combined_validation_context`). Replacing the CA file the secret names changes which
/// clients pass for new handshakes, a session from before the change is not resumed (the
/// context is built anew, as Envoy builds a new one), and a broken update changes nothing.
#[test]
fn client_certificates_verified_by_a_validation_context_from_sds_that_rotates() {
    let old = Ca::new("sds-old-ca");
    let new = Ca::new("sds-new-ca");
    let server = old.leaf("server", &["sds.example.com"]);
    let old_client = old.leaf("client", &["client.example.com"]);
    let old_other = old.leaf("other", &["other.example.com"]);
    let new_client = new.leaf("client", &["client.example.com"]);
    let ca_file = old.dir.join("current-ca.pem");
    rename_into_place(&old.ca_file(), &ca_file);
    let sds = old.dir.join("sds.yaml");
    std::fs::write(&sds, validation_secret(&ca_file, "1")).unwrap();
    let require = "          require_client_certificate: true\n";
    let with_validation = |validation: &str| {
        tls_socket(&[&server], require).replace(
            "          common_tls_context:\n",
            &format!("          common_tls_context:\n{validation}"),
        )
    };
    let alone = with_validation(&format!(
        "            validation_context_sds_secret_config: {{name: roots, sds_config: {}}}\n",
        sds_config(&sds)
    ));
    let combined = with_validation(&format!(
        "            combined_validation_context:\n              default_validation_context:\n                match_typed_subject_alt_names:\n                - san_type: DNS\n                  matcher: {{exact: client.example.com}}\n              validation_context_sds_secret_config: {{name: roots, sds_config: {}}}\n",
        sds_config(&sds)
    ));
    let optional = alone.replace(require, "");
    let upstream = Upstream::start();
    let listeners = [
        listener("alone", "", &chain(&[&alone, &hcm("app")])),
        listener("optional", "", &chain(&[&optional, &hcm("app")])),
        listener("combined", "", &chain(&[&combined, &hcm("app")])),
    ]
    .concat();
    let config = format!(
        "node: {{id: edge, cluster: edge}}\n{}",
        bootstrap(&listeners, &cluster("app", upstream.addr, ""))
    );
    let proxy = start_proxy(&config);
    let name = "sds.example.com";
    let get = |listener: &str, cert: Option<&Leaf>| {
        let config = client(old.roots(), &[&rustls::version::TLS13], &[], cert);
        handshake(proxy.addr(listener), config, name)
            .and_then(|mut s| https_get(&mut s, "/", name))
            .map(|r| r.status)
    };
    assert_eq!(get("alone", Some(&old_client)), Ok(200));
    assert_eq!(get("alone", Some(&old_other)), Ok(200));
    assert!(get("alone", Some(&new_client)).is_err());
    assert!(get("alone", None).is_err());
    assert_eq!(get("combined", Some(&old_client)), Ok(200));
    assert!(
        get("combined", Some(&old_other)).is_err(),
        "the default's SAN matcher"
    );
    assert!(get("combined", Some(&new_client)).is_err());

    let stat = |l: &str, n: &str| proxy.stat(&format!("listener.{l}.ssl.{n}")).unwrap_or(0);
    eventually("refusals counted", || {
        stat("alone", "fail_verify_error") == 1 && stat("alone", "fail_verify_no_cert") == 1
    });

    // A session made under the old CA resumes while it is in force.
    let store = Arc::new(rustls::client::ClientSessionMemoryCache::new(16));
    let resuming = resuming_client(&old, &[&rustls::version::TLS13], &store);
    assert!(!resumed(proxy.addr("optional"), resuming.clone(), name));
    assert!(resumed(proxy.addr("optional"), resuming.clone(), name));

    // The CA file the secret names is replaced: the new CA's clients pass, the old ones not.
    rename_into_place(&new.ca_file(), &ca_file);
    eventually("the new CA in force", || {
        get("alone", Some(&new_client)) == Ok(200)
    });
    let refused = stat("alone", "fail_verify_error");
    assert!(get("alone", Some(&old_client)).is_err());
    assert_eq!(get("combined", Some(&new_client)), Ok(200));
    assert!(get("combined", Some(&old_client)).is_err());
    // The session from before is not resumed: the context is a new one, as in Envoy.
    assert!(!resumed(proxy.addr("optional"), resuming, name));

    // An update whose CA cannot be read is rejected: the CA in force stays.
    let staged = old.dir.join("sds.staged");
    std::fs::write(
        &staged,
        validation_secret(&old.dir.join("missing.pem"), "2"),
    )
    .unwrap();
    std::fs::rename(&staged, &sds).unwrap();
    eventually("the rejected update", || {
        proxy.stat("sds.roots.update_rejected") == Some(1)
    });
    // So is a file with two secrets, or with another secret than the one named (as Envoy).
    let good = validation_secret(&new.ca_file(), "3");
    let two = good.clone() + &good["resources:\n".len() + good.find("resources:\n").unwrap()..];
    for (i, bad) in [two, good.replace("name: roots", "name: other")]
        .into_iter()
        .enumerate()
    {
        std::fs::write(&staged, bad).unwrap();
        std::fs::rename(&staged, &sds).unwrap();
        eventually("the rejected update", || {
            proxy.stat("sds.roots.update_rejected") == Some(2 + i as u64)
        });
    }
    assert_eq!(get("alone", Some(&new_client)), Ok(200));
    assert!(get("alone", Some(&old_client)).is_err());
    eventually("refusals counted", || {
        stat("alone", "fail_verify_error") == refused + 2
    });
    assert_eq!(stat("combined", "fail_verify_san"), 1);
    assert_eq!(stat("combined", "fail_verify_error"), 2);
}

/// A listener requiring client certificates from `ca`, with `validation` added to its
/// `validation_context` and `extra` to its `DownstreamTlsContext`.
fn mtls_listener(name: &str, ca: &Ca, server: &Leaf, validation: &str, extra: &str) -> String {
    let tls = tls_socket(&[server], extra).replace(
        "          common_tls_context:\n",
        &format!(
            "          common_tls_context:\n            validation_context:\n              trusted_ca: {{filename: {}}}\n{validation}",
            ca.ca_file().display()
        ),
    );
    listener(name, "", &chain(&[&tls, &hcm("app")]))
}

/// `max_verify_depth` as Envoy 1.40 applies it (checked side by side): a client's chain may
/// hold that many certificates above the client's, the trust anchor included (a depth of 0
/// passes what 1 passes), while an upstream's chain is not limited.
#[test]
fn max_verify_depth_limits_client_chains_as_in_envoy() {
    let root = Ca::new("depth-root");
    let inter = root.intermediate("depth-inter");
    let server = root.leaf("server", &["depth.example.com"]);
    let direct = root.leaf("direct", &["client.example.com"]);
    let chained = inter.chained_leaf("chained", &["client.example.com"]);
    let require = "          require_client_certificate: true\n";
    let depth = |n: u32| format!("              max_verify_depth: {n}\n");
    let upstream = Upstream::start();
    // An upstream presenting a chain of two CAs, behind a cluster allowing a depth of 1.
    let backend = TlsUpstream::start(&chained, None, &[]);
    let limited = cluster(
        "limited",
        backend.addr,
        &upstream_tls(&format!(
            "        common_tls_context:\n          validation_context:\n            trusted_ca: {{filename: {}}}\n            max_verify_depth: 1\n",
            root.ca_file().display()
        )),
    );
    let plain = hcm("limited");
    let listeners = [
        mtls_listener("depth0", &root, &server, &depth(0), require),
        mtls_listener("depth1", &root, &server, &depth(1), require),
        mtls_listener("depth2", &root, &server, &depth(2), require),
        listener("plain", "", &chain(&[&plain])),
    ]
    .concat();
    let clusters = cluster("app", upstream.addr, "") + &limited;
    let proxy = start_proxy(&bootstrap(&listeners, &clusters));
    let name = "depth.example.com";
    let get = |listener: &str, cert: &Leaf| {
        let config = client(root.roots(), &[&rustls::version::TLS13], &[], Some(cert));
        handshake(proxy.addr(listener), config, name)
            .and_then(|mut s| https_get(&mut s, "/", name))
            .map(|r| r.status)
    };
    for listener in ["depth0", "depth1", "depth2"] {
        assert_eq!(get(listener, &direct), Ok(200), "{listener}");
    }
    assert!(get("depth0", &chained).is_err());
    assert!(get("depth1", &chained).is_err());
    assert_eq!(get("depth2", &chained), Ok(200));
    let stat = |l: &str| {
        proxy
            .stat(&format!("listener.{l}.ssl.fail_verify_error"))
            .unwrap_or(0)
    };
    eventually("refusals counted", || {
        stat("depth0") == 1 && stat("depth1") == 1
    });
    assert_eq!(stat("depth2"), 0);
    let r = e2e::http_get(proxy.addr("plain"), "/", &[]);
    assert_eq!(
        r.status, 200,
        "an upstream's chain is not limited: {}",
        r.body
    );
}

#[test]
fn revoked_client_certificates_are_refused_by_crl() {
    let ca = Ca::new("crl");
    let server = ca.leaf("server", &["crl.example.com"]);
    let good = ca.leaf_serial("good", &["good.example.com"], 10);
    let revoked = ca.leaf_serial("revoked", &["revoked.example.com"], 11);
    let current = ca.crl("current.crl", &[11], (2020, 1, 1), (2099, 1, 1));
    let expired = ca.crl("expired.crl", &[11], (2020, 1, 1), (2020, 2, 1));
    // The CRL may also sit in the trusted_ca file, as Envoy reads it there too.
    let bundle = ca.dir.join("ca-and-crl.pem");
    std::fs::write(
        &bundle,
        ca.cert_pem.clone() + &std::fs::read_to_string(&current).unwrap(),
    )
    .unwrap();
    let require = "          require_client_certificate: true\n";
    let crl = |path: &Path| format!("              crl: {{filename: {}}}\n", path.display());
    let in_bundle = mtls_listener("bundle", &ca, &server, "", require).replace(
        &format!("trusted_ca: {{filename: {}}}", ca.ca_file().display()),
        &format!("trusted_ca: {{filename: {}}}", bundle.display()),
    );
    let upstream = Upstream::start();
    let listeners = [
        mtls_listener("current", &ca, &server, &crl(&current), require),
        mtls_listener("expired", &ca, &server, &crl(&expired), require),
        in_bundle,
    ]
    .concat();
    let proxy = start_proxy(&bootstrap(&listeners, &cluster("app", upstream.addr, "")));
    let name = "crl.example.com";
    let get = |listener: &str, cert: &Leaf| {
        handshake(
            proxy.addr(listener),
            client(ca.roots(), &[&rustls::version::TLS13], &[], Some(cert)),
            name,
        )
        .and_then(|mut s| https_get(&mut s, "/", name))
        .map(|r| r.status)
    };
    for listener in ["current", "bundle"] {
        assert_eq!(get(listener, &good), Ok(200), "{listener}");
        assert!(get(listener, &revoked).is_err(), "{listener}: revoked");
    }
    // An expired CRL fails every verification (BoringSSL's X509_V_ERR_CRL_HAS_EXPIRED).
    assert!(get("expired", &good).is_err(), "expired CRL");
    let stat = |l: &str, n: &str| proxy.stat(&format!("listener.{l}.ssl.{n}")).unwrap_or(0);
    eventually("revocations counted", || {
        stat("current", "fail_verify_error") == 1
            && stat("bundle", "fail_verify_error") == 1
            && stat("expired", "fail_verify_error") == 1
    });
    assert_eq!(stat("current", "handshake"), 1);
    assert_eq!(stat("current", "connection_error"), 0);
}

/// Lower-case hex.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The SHA-256 of `bytes`.
fn sha256(bytes: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes)
        .as_ref()
        .to_vec()
}

#[test]
fn client_certificates_are_checked_by_san_matchers_and_pins_as_in_envoy() {
    use base64::Engine;
    let ca = Ca::new("san");
    let server = ca.leaf("server", &["san.example.com"]);
    // A client certificate with one name of each kind Envoy's matchers look at.
    let mut params = cn_params("client");
    params.subject_alt_names = vec![
        rcgen::SanType::URI(
            "spiffe://cluster.local/ns/default/sa/web"
                .try_into()
                .unwrap(),
        ),
        rcgen::SanType::Rfc822Name("ops@example.com".try_into().unwrap()),
        rcgen::SanType::IpAddress("10.1.2.3".parse().unwrap()),
        rcgen::SanType::IpAddress("::1".parse().unwrap()),
        rcgen::SanType::DnsName("*.svc.example.com".try_into().unwrap()),
        rcgen::SanType::OtherName((
            vec![1, 3, 6, 1, 4, 1, 311, 20, 2, 3],
            rcgen::OtherNameValue::Utf8String("upn@example.com".into()),
        )),
    ];
    let good = ca.leaf_from("client", params, KeyPair::generate().unwrap());
    // A certificate no trusted CA signed, known only by its pins.
    let stranger_ca = Ca::new("san-stranger");
    let stranger_key = KeyPair::generate().unwrap();
    let spki = base64::engine::general_purpose::STANDARD.encode(sha256(
        &rcgen::PublicKeyData::subject_public_key_info(&stranger_key),
    ));
    let stranger = stranger_ca.leaf_with("stranger", &["stranger.example.com"], stranger_key);
    let der = |leaf: &Leaf| read_certs(&leaf.cert).remove(0);
    // Upper case with colons (95 characters), as `openssl x509 -fingerprint` prints it.
    let stranger_hash = sha256(&der(&stranger))
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":");
    let good_hash = hex(&sha256(&der(&good)));
    let trusted = format!(
        "              trusted_ca: {{filename: {}}}\n",
        ca.ca_file().display()
    );
    let san = |kind: &str, matcher: &str| {
        format!(
            "{trusted}              match_typed_subject_alt_names:\n              - {{san_type: {kind}, matcher: {matcher}}}\n"
        )
    };
    let hash = |h: &str| format!("              verify_certificate_hash: ['{h}']\n");
    let spki_pin = format!("              verify_certificate_spki: ['{spki}']\n");
    let require = "          require_client_certificate: true\n";
    // (listener, validation context, extra, accepts [no certificate, `good`, `stranger`]).
    let cases: Vec<(&str, String, &str, [bool; 3])> = vec![
        ("hash", hash(&stranger_hash), "", [false, false, true]),
        ("spki", spki_pin.clone(), require, [false, false, true]),
        (
            "either_pin",
            hash(&good_hash) + &spki_pin,
            "",
            [false, true, true],
        ),
        (
            "ca_and_pin",
            trusted.clone() + &hash(&stranger_hash),
            "",
            [false, false, false],
        ),
        (
            "uri",
            san("URI", "{prefix: 'spiffe://cluster.local/ns/default/'}"),
            "",
            [false, true, false],
        ),
        (
            "uri_other",
            san("URI", "{exact: 'spiffe://cluster.local/ns/other/sa/web'}"),
            require,
            [false, false, false],
        ),
        (
            "ip",
            san("IP_ADDRESS", "{exact: '::1'}"),
            "",
            [false, true, false],
        ),
        (
            "dns_wildcard",
            san("DNS", "{exact: 'A.svc.example.com'}"),
            "",
            [false, true, false],
        ),
        (
            "dns_prefix",
            san("DNS", "{prefix: '*.svc'}"),
            "",
            [false, true, false],
        ),
        (
            "email",
            san("EMAIL", "{suffix: '@EXAMPLE.com', ignore_case: true}"),
            "",
            [false, true, false],
        ),
        (
            "other_name",
            san("OTHER_NAME", "{exact: upn@example.com}").replace(
                "san_type: OTHER_NAME,",
                "san_type: OTHER_NAME, oid: '1.3.6.1.4.1.311.20.2.3',",
            ),
            "",
            [false, true, false],
        ),
        // With both lists, Envoy 1.40 reads only the typed one.
        (
            "typed_over_deprecated",
            san("URI", "{prefix: 'spiffe:'}")
                + "              match_subject_alt_names: [{exact: nope}]\n",
            "",
            [false, true, false],
        ),
        (
            "deprecated",
            format!("{trusted}              match_subject_alt_names: [{{exact: '10.1.2.3'}}]\n"),
            "",
            [false, true, false],
        ),
    ];
    let upstream = Upstream::start();
    let listeners: String = cases
        .iter()
        .map(|(name, validation, extra, _)| {
            let tls = tls_socket(&[&server], extra).replace(
                "          common_tls_context:\n",
                &format!(
                    "          common_tls_context:\n            validation_context:\n{validation}"
                ),
            );
            listener(name, "", &chain(&[&tls, &hcm("app")]))
        })
        .collect();
    let proxy = start_proxy(&bootstrap(&listeners, &cluster("app", upstream.addr, "")));
    let host = "san.example.com";
    for (name, _, _, accepts) in &cases {
        for (cert, accepted) in [None, Some(&good), Some(&stranger)]
            .into_iter()
            .zip(accepts)
        {
            let status = handshake(
                proxy.addr(name),
                client(ca.roots(), &[&rustls::version::TLS13], &[], cert),
                host,
            )
            .and_then(|mut s| https_get(&mut s, "/", host))
            .map(|r| r.status);
            assert_eq!(
                status.is_ok(),
                *accepted,
                "{name} with {}: {status:?}",
                cert.map_or("no certificate", |c| if std::ptr::eq(c, &good) {
                    "good"
                } else {
                    "stranger"
                })
            );
        }
    }
    // Each refusal counted as Envoy counts it.
    let stat = |l: &str, n: &str| proxy.stat(&format!("listener.{l}.ssl.{n}")).unwrap_or(0);
    eventually("refusals counted", || {
        cases
            .iter()
            .all(|(name, ..)| stat(name, "fail_verify_no_cert") == 1)
    });
    for (name, no_cert, error, san, cert_hash) in [
        ("hash", 1, 0, 0, 1),
        ("either_pin", 1, 0, 0, 0),
        ("ca_and_pin", 1, 1, 0, 1),
        ("uri", 1, 1, 0, 0),
        ("uri_other", 1, 1, 1, 0),
        ("deprecated", 1, 1, 0, 0),
    ] {
        let counted = [
            stat(name, "fail_verify_no_cert"),
            stat(name, "fail_verify_error"),
            stat(name, "fail_verify_san"),
            stat(name, "fail_verify_cert_hash"),
        ];
        assert_eq!(
            counted,
            [no_cert, error, san, cert_hash],
            "{name}: no_cert, error, san, cert_hash"
        );
    }
    assert_eq!(stat("either_pin", "handshake"), 2);
}

/// A client that keeps its sessions in `store`.
fn resuming_client(
    ca: &Ca,
    versions: &[&'static rustls::SupportedProtocolVersion],
    store: &Arc<rustls::client::ClientSessionMemoryCache>,
) -> Arc<ClientConfig> {
    let mut config = Arc::unwrap_or_clone(client(ca.roots(), versions, &[], None));
    config.resumption = rustls::client::Resumption::store(store.clone());
    Arc::new(config)
}

/// Connects, makes one request (which also delivers TLS 1.3 tickets) and says whether the
/// session was resumed.
fn resumed(addr: SocketAddr, config: Arc<ClientConfig>, name: &str) -> bool {
    let mut s = handshake(addr, config, name).unwrap();
    let kind = s.conn.handshake_kind();
    assert_eq!(https_get(&mut s, "/", name).unwrap().status, 200);
    kind == Some(rustls::HandshakeKind::Resumed)
}

/// `allow_expired_certificate` forgives a client certificate's validity period, and
/// `trust_chain_verification: ACCEPT_UNTRUSTED` lets every failure through, counted, as in Envoy.
#[test]
fn expired_and_untrusted_client_certificates_by_the_validation_context() {
    let ca = Ca::new("lenient");
    let server = ca.leaf("server", &["lenient.example.com"]);
    let good = ca.leaf("good", &["good.example.com"]);
    let mut params = CertificateParams::new(vec!["old.example.com".to_string()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let expired = ca.leaf_from("expired", params, KeyPair::generate().unwrap());
    let stranger_ca = Ca::new("lenient-stranger");
    let untrusted = stranger_ca.leaf("untrusted", &["untrusted.example.com"]);
    let require = "          require_client_certificate: true\n";
    let nope =
        "              match_typed_subject_alt_names: [{san_type: URI, matcher: {exact: nope}}]\n";
    let untrusted_ok = format!("              trust_chain_verification: ACCEPT_UNTRUSTED\n{nope}");
    // (listener, validation, extra, accepts [no certificate, good, expired, untrusted]).
    let cases: Vec<(&str, String, &str, [bool; 4])> = vec![
        (
            "strict",
            String::new(),
            require,
            [false, true, false, false],
        ),
        (
            "expired_allowed",
            "              allow_expired_certificate: true\n".into(),
            require,
            [false, true, true, false],
        ),
        (
            "untrusted_accepted",
            untrusted_ok.clone(),
            require,
            [false, true, true, true],
        ),
        (
            "untrusted_optional",
            untrusted_ok,
            "",
            [true, true, true, true],
        ),
    ];
    let upstream = Upstream::start();
    let listeners: String = cases
        .iter()
        .map(|(name, validation, extra, _)| mtls_listener(name, &ca, &server, validation, extra))
        .collect();
    let proxy = start_proxy(&bootstrap(&listeners, &cluster("app", upstream.addr, "")));
    let host = "lenient.example.com";
    for (name, _, _, accepts) in &cases {
        let clients = [None, Some(&good), Some(&expired), Some(&untrusted)];
        for ((i, cert), accepted) in clients.into_iter().enumerate().zip(accepts) {
            let status = handshake(
                proxy.addr(name),
                client(ca.roots(), &[&rustls::version::TLS13], &[], cert),
                host,
            )
            .and_then(|mut s| https_get(&mut s, "/", host))
            .map(|r| r.status);
            assert_eq!(status.is_ok(), *accepted, "{name}, client {i}: {status:?}");
        }
    }
    let stat = |l: &str, n: &str| proxy.stat(&format!("listener.{l}.ssl.{n}")).unwrap_or(0);
    // [handshake, fail_verify_no_cert, fail_verify_error, fail_verify_san]
    for (name, counts) in [
        ("strict", [1, 1, 2, 0]),
        ("expired_allowed", [2, 1, 1, 0]),
        ("untrusted_accepted", [3, 1, 2, 1]),
        ("untrusted_optional", [4, 0, 2, 1]),
    ] {
        eventually(&format!("{name} counted"), || {
            [
                stat(name, "handshake"),
                stat(name, "fail_verify_no_cert"),
                stat(name, "fail_verify_error"),
                stat(name, "fail_verify_san"),
            ] == counts
        });
    }
}

/// TLS 1.3 session tickets are not sent on their own after the handshake: they leave with the
/// first bytes the proxy sends, the response, as Envoy (BoringSSL) sends them — one write and
/// one packet fewer per connection. The session they carry resumes.
#[test]
fn tls13_session_tickets_leave_with_the_first_response_as_in_envoy() {
    let ca = Ca::new("ticket-timing");
    let server = ca.leaf("server", &["timing.example.com"]);
    let upstream = Upstream::start();
    let proxy = start_proxy(&bootstrap(
        &listener(
            "tls",
            "",
            &chain(&[&tls_socket(&[&server], ""), &hcm("app")]),
        ),
        &cluster("app", upstream.addr, ""),
    ));
    let name = "timing.example.com";
    let store = Arc::new(rustls::client::ClientSessionMemoryCache::new(8));
    let config = resuming_client(&ca, &[&rustls::version::TLS13], &store);
    let mut s = handshake(proxy.addr("tls"), config.clone(), name).unwrap();
    // Handshake done on the client's side: nothing more comes until the client asks.
    std::thread::sleep(Duration::from_millis(300));
    s.sock.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    let early = s.sock.peek(&mut byte);
    assert!(
        matches!(&early, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the server sent something before the request: {early:?}"
    );
    s.sock.set_nonblocking(false).unwrap();
    assert_eq!(https_get(&mut s, "/", name).unwrap().status, 200);
    // The tickets came with the response: the next connection resumes.
    assert!(resumed(proxy.addr("tls"), config, name), "not resumed");
}

/// An 80-byte session ticket key file in `ca`'s directory; keys of different `fill` differ in
/// every byte (their names too).
fn ticket_key_file(ca: &Ca, file: &str, fill: u8) -> PathBuf {
    let path = ca.dir.join(file);
    let key: Vec<u8> = (0..80u8).map(|i| i.wrapping_mul(31) ^ fill).collect();
    std::fs::write(&path, key).unwrap();
    path
}

#[test]
fn sessions_resume_across_listeners_sharing_ticket_keys() {
    let ca = Ca::new("tickets");
    let server = ca.leaf("server", &["tickets.example.com"]);
    let key = |file: &str, fill: u8| ticket_key_file(&ca, file, fill);
    let (shared, other) = (key("shared.key", 1), key("other.key", 2));
    let keys = |path: &Path| {
        format!(
            "          session_ticket_keys:\n            keys:\n            - filename: {}\n",
            path.display()
        )
    };
    let tls = |extra: &str| tls_socket(&[&server], extra);
    let listeners = [
        listener("a", "", &chain(&[&tls(&keys(&shared)), &hcm("app")])),
        listener("b", "", &chain(&[&tls(&keys(&shared)), &hcm("app")])),
        listener("c", "", &chain(&[&tls(&keys(&other)), &hcm("app")])),
        listener(
            "nostateless",
            "",
            &chain(&[
                &tls("          disable_stateless_session_resumption: true\n"),
                &hcm("app"),
            ]),
        ),
        listener("default", "", &chain(&[&tls(""), &hcm("app")])),
    ]
    .concat();
    let upstream = Upstream::start();
    let proxy = start_proxy(&bootstrap(&listeners, &cluster("app", upstream.addr, "")));
    let name = "tickets.example.com";
    // (rustls resumes only with the configuration that made the session: one per scenario.)
    let fresh = |versions: &[&'static rustls::SupportedProtocolVersion]| {
        let store = Arc::new(rustls::client::ClientSessionMemoryCache::new(32));
        resuming_client(&ca, versions, &store)
    };
    for versions in [
        &[&rustls::version::TLS13][..],
        &[&rustls::version::TLS12][..],
    ] {
        // A session from listener a resumes at b (same keys), not at c (other keys).
        let client = fresh(versions);
        assert!(!resumed(proxy.addr("a"), client.clone(), name));
        assert!(resumed(proxy.addr("b"), client, name));
        let client = fresh(versions);
        assert!(!resumed(proxy.addr("a"), client.clone(), name));
        assert!(!resumed(proxy.addr("c"), client, name));
        // Without configured keys, the context's own random key.
        let client = fresh(versions);
        assert!(!resumed(proxy.addr("default"), client.clone(), name));
        assert!(resumed(proxy.addr("default"), client, name));
    }
    // Without tickets: TLS 1.2 resumes by session id (stateful), TLS 1.3 does not resume.
    let tls12 = fresh(&[&rustls::version::TLS12]);
    assert!(!resumed(proxy.addr("nostateless"), tls12.clone(), name));
    assert!(resumed(proxy.addr("nostateless"), tls12, name));
    let tls13 = fresh(&[&rustls::version::TLS13]);
    assert!(!resumed(proxy.addr("nostateless"), tls13.clone(), name));
    assert!(!resumed(proxy.addr("nostateless"), tls13, name));
    let stat = |l: &str| {
        proxy
            .stat(&format!("listener.{l}.ssl.session_reused"))
            .unwrap_or(0)
    };
    eventually("reuse counted", || {
        stat("b") == 2 && stat("default") == 2 && stat("nostateless") == 1
    });
    assert_eq!(stat("a") + stat("c"), 0);
}

/// Session ticket keys from an SDS file (`session_ticket_keys_sds_secret_config`): listeners
/// naming the secret resume each other's sessions, and keys rotate with new versions of the
/// secret (the first key seals, all open), as with inline keys.
#[test]
fn session_ticket_keys_from_sds_are_shared_and_rotate() {
    let ca = Ca::new("sds-tickets");
    let server = ca.leaf("server", &["tickets.example.com"]);
    let key = |file: &str, fill: u8| ticket_key_file(&ca, file, fill);
    let secret = |keys: &[&Path]| {
        let keys: String = keys
            .iter()
            .map(|k| format!("    - filename: {}\n", k.display()))
            .collect();
        format!(
            "resources:\n- \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret\n  name: ticket_keys\n  session_ticket_keys:\n    keys:\n{keys}"
        )
    };
    let (one, two) = (key("one.key", 1), key("two.key", 2));
    let sds = ca.dir.join("tickets.yaml");
    std::fs::write(&sds, secret(&[&one])).unwrap();
    let tls = tls_socket(
        &[&server],
        &format!(
            "          session_ticket_keys_sds_secret_config: {{name: ticket_keys, sds_config: {}}}\n",
            sds_config(&sds)
        ),
    );
    let listeners = [
        listener("a", "", &chain(&[&tls, &hcm("app")])),
        listener("b", "", &chain(&[&tls, &hcm("app")])),
    ]
    .concat();
    let upstream = Upstream::start();
    let config = format!(
        "node: {{id: edge, cluster: edge}}\n{}",
        bootstrap(&listeners, &cluster("app", upstream.addr, ""))
    );
    let proxy = start_proxy(&config);
    let name = "tickets.example.com";
    let fresh = || {
        let store = Arc::new(rustls::client::ClientSessionMemoryCache::new(32));
        resuming_client(&ca, &[&rustls::version::TLS13], &store)
    };
    let (early, late) = (fresh(), fresh());
    assert!(!resumed(proxy.addr("a"), early.clone(), name));
    assert!(resumed(proxy.addr("b"), early.clone(), name));
    assert!(!resumed(proxy.addr("a"), late.clone(), name));

    // A new version seals with the new key and still opens tickets of the old one.
    let staged = ca.dir.join("tickets.staged");
    let replace = |content: String| {
        std::fs::write(&staged, content).unwrap();
        std::fs::rename(&staged, &sds).unwrap();
    };
    replace(secret(&[&two, &one]));
    eventually("the second version", || {
        proxy.stat("sds.ticket_keys.update_success") == Some(2)
    });
    assert!(resumed(proxy.addr("b"), early.clone(), name));
    // Then the old key goes: a session sealed under it is not resumed.
    replace(secret(&[&two]));
    eventually("the third version", || {
        proxy.stat("sds.ticket_keys.update_success") == Some(3)
    });
    assert!(!resumed(proxy.addr("a"), late, name));
    // The session resumed under the second version was sealed with the new key.
    assert!(resumed(proxy.addr("a"), early, name));
}

#[test]
fn bad_session_ticket_keys_are_refused_with_envoys_message() {
    let ca = Ca::new("badkeys");
    let server = ca.leaf("server", &["badkeys.example.com"]);
    let short = ca.dir.join("short.key");
    std::fs::write(&short, [7u8; 79]).unwrap();
    let extra = format!(
        "          session_ticket_keys:\n            keys:\n            - filename: {}\n",
        short.display()
    );
    let file = ca.dir.join("bad.yaml");
    std::fs::write(
        &file,
        bootstrap(
            &listener(
                "bad",
                "",
                &chain(&[&tls_socket(&[&server], &extra), &hcm("app")]),
            ),
            &cluster("app", "127.0.0.1:1".parse().unwrap(), ""),
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_legate"))
        .args(["--mode", "validate", "-c"])
        .arg(&file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        text.contains("transport_socket.typed_config.session_ticket_keys: Incorrect TLS session ticket key length. Length 79, expected length 80."),
        "{text}"
    );
}

/// OCSP fixtures made with the openssl CLI (its responder mode writes real responses): a CA,
/// leaves with serials 0x1234 (plain) and 0x1235 (must-staple extension), and DER responses.
struct OcspFixture {
    dir: PathBuf,
}

impl OcspFixture {
    fn new() -> OcspFixture {
        let dir = temp_dir("ocsp");
        let run = |args: &[&str]| {
            let out = std::process::Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .output()
                .expect("openssl (the test command installs it)");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        run(&[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-subj",
                "/CN=ocsp test CA",
                "-days",
                "3",
            ],
        ]
        .concat());
        std::fs::write(
            dir.join("must.ext"),
            "tlsfeature = status_request\nsubjectAltName = DNS:ocsp.example.com\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("plain.ext"),
            "subjectAltName = DNS:ocsp.example.com\n",
        )
        .unwrap();
        let mut index = String::new();
        for (name, serial, ext) in [
            ("leaf", "0x1234", "plain.ext"),
            ("must", "0x1235", "must.ext"),
        ] {
            run(&[
                &["req"][..],
                &ec,
                &[
                    "-keyout",
                    &format!("{name}.key"),
                    "-out",
                    &format!("{name}.csr"),
                    "-subj",
                    "/CN=ocsp.example.com",
                ],
            ]
            .concat());
            run(&[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-set_serial",
                serial,
                "-extfile",
                ext,
                "-out",
                &format!("{name}.pem"),
                "-days",
                "2",
            ]);
            index += &format!(
                "V\t301231000000Z\t\t{}\tunknown\t/CN=ocsp.example.com\n",
                &serial[2..]
            );
        }
        std::fs::write(dir.join("index.txt"), index).unwrap();
        std::fs::write(dir.join("index.txt.attr"), "unique_subject = no\n").unwrap();
        for (name, cert, days) in [
            ("good", "leaf", Some("1")),
            ("nonext", "leaf", None),
            ("must", "must", Some("1")),
        ] {
            run(&[
                "ocsp",
                "-issuer",
                "ca.pem",
                "-cert",
                &format!("{cert}.pem"),
                "-no_nonce",
                "-reqout",
                &format!("{name}.req"),
            ]);
            let mut args = vec![
                "ocsp",
                "-index",
                "index.txt",
                "-rsigner",
                "ca.pem",
                "-rkey",
                "ca.key",
                "-CA",
                "ca.pem",
            ];
            let (reqin, respout) = (format!("{name}.req"), format!("{name}.der"));
            args.extend(["-reqin", &reqin, "-respout", &respout]);
            if let Some(d) = days {
                args.extend(["-ndays", d]);
            }
            run(&args);
        }
        OcspFixture { dir }
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }

    /// A TLS chain serving `cert` with the staple `response` (if any) under `policy`.
    fn chain(&self, cert: &str, response: Option<&str>, policy: &str) -> String {
        let staple = response.map_or(String::new(), |r| {
            format!(
                "              ocsp_staple: {{filename: {}}}\n",
                self.path(r)
            )
        });
        let policy = if policy.is_empty() {
            String::new()
        } else {
            format!("          ocsp_staple_policy: {policy}\n")
        };
        format!(
            "      transport_socket:\n        name: envoy.transport_sockets.tls\n        typed_config:\n          \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext\n{policy}          common_tls_context:\n            tls_certificates:\n            - certificate_chain: {{filename: {}}}\n              private_key: {{filename: {}}}\n{staple}",
            self.path(&format!("{cert}.pem")),
            self.path(&format!("{cert}.key")),
        )
    }
}

impl Drop for OcspFixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What `openssl s_client` saw: whether the handshake completed, and whether a staple came.
fn s_client(addr: SocketAddr, status: bool) -> (bool, bool) {
    let mut args = vec![
        "s_client".to_string(),
        "-connect".into(),
        addr.to_string(),
        "-servername".into(),
        "ocsp.example.com".into(),
    ];
    if status {
        args.push("-status".into());
    }
    let out = std::process::Command::new("openssl")
        .args(&args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl");
    let text = String::from_utf8_lossy(&out.stdout);
    (
        text.contains("Server certificate"),
        text.contains("OCSP Response Status: successful"),
    )
}

#[test]
fn ocsp_responses_are_stapled_by_policy() {
    let f = OcspFixture::new();
    let upstream = Upstream::start();
    let listeners = [
        ("lenient", f.chain("leaf", Some("good.der"), "")),
        ("lenient_nonext", f.chain("leaf", Some("nonext.der"), "")),
        (
            "strict_nonext",
            f.chain("leaf", Some("nonext.der"), "STRICT_STAPLING"),
        ),
        ("strict_none", f.chain("leaf", None, "STRICT_STAPLING")),
        ("must", f.chain("leaf", Some("good.der"), "MUST_STAPLE")),
        ("must_ext", f.chain("must", Some("must.der"), "")),
    ]
    .iter()
    .map(|(name, tls)| listener(name, "", &chain(&[tls, &hcm("app")])))
    .collect::<String>();
    let proxy = start_proxy(&bootstrap(&listeners, &cluster("app", upstream.addr, "")));
    // (listener, with -status: handshake ok, stapled)
    let expected = [
        ("lenient", (true, true)),
        // A response without nextUpdate counts as expired: omitted, or fatal when strict.
        ("lenient_nonext", (true, false)),
        ("strict_nonext", (false, false)),
        ("strict_none", (true, false)),
        ("must", (true, true)),
        ("must_ext", (true, true)),
    ];
    for (name, outcome) in expected {
        assert_eq!(
            s_client(proxy.addr(name), true),
            outcome,
            "{name} with -status"
        );
        // A client that does not ask gets no staple, whatever the policy.
        assert_eq!(
            s_client(proxy.addr(name), false),
            (true, false),
            "{name} without -status"
        );
    }
    let stat = |l: &str, n: &str| {
        proxy
            .stat(&format!("listener.{l}.ssl.ocsp_staple_{n}"))
            .unwrap_or(0)
    };
    eventually("staple stats", || stat("must_ext", "requests") == 1);
    for (name, [requests, responses, omitted, failed]) in [
        ("lenient", [1, 1, 0, 0]),
        ("lenient_nonext", [1, 0, 1, 0]),
        ("strict_nonext", [1, 0, 0, 1]),
        ("strict_none", [1, 0, 1, 0]),
        ("must", [1, 1, 0, 0]),
        ("must_ext", [1, 1, 0, 0]),
    ] {
        assert_eq!(
            [
                stat(name, "requests"),
                stat(name, "responses"),
                stat(name, "omitted"),
                stat(name, "failed")
            ],
            [requests, responses, omitted, failed],
            "{name}"
        );
    }
}

#[test]
fn ocsp_config_errors_are_envoys() {
    let f = OcspFixture::new();
    let cases = [
        (
            f.chain("leaf", None, "MUST_STAPLE"),
            "Required OCSP response is missing from TLS context",
        ),
        (
            f.chain("leaf", Some("must.der"), ""),
            "OCSP response does not match its TLS certificate",
        ),
        (
            f.chain("must", None, ""),
            "OCSP response is required for must-staple certificate",
        ),
        (f.chain("leaf", Some("good.req"), ""), "OCSP response"),
    ];
    for (tls, message) in cases {
        let file = f.dir.join("bad.yaml");
        std::fs::write(
            &file,
            bootstrap(
                &listener("bad", "", &chain(&[&tls, &hcm("app")])),
                &cluster("app", "127.0.0.1:1".parse().unwrap(), ""),
            ),
        )
        .unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_legate"))
            .args(["--mode", "validate", "-c"])
            .arg(&file)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{message}");
        assert!(
            text.contains(
                "transport_socket.typed_config.common_tls_context.tls_certificates[0].ocsp_staple: "
            ) && text.contains(message),
            "{message}: {text}"
        );
    }
}

/// The first record of a ClientHello whose handshake header announces 16 MB (2^24 - 1 bytes).
fn huge_hello() -> Vec<u8> {
    let mut record = vec![0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0xff, 0xff, 0xff];
    record.resize(5 + 0x4000, 0);
    record
}

/// Sends `first`, then full-size handshake records of zeros, up to `total` bytes; true if the
/// server closed the connection before all of it was sent (and within 10 s).
fn refused_before(addr: SocketAddr, first: &[u8], total: usize) -> bool {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    if s.write_all(first).is_err() {
        return true;
    }
    let mut record = vec![0x16, 0x03, 0x01, 0x40, 0x00];
    record.resize(5 + 0x4000, 0);
    let mut sent = first.len();
    let started = Instant::now();
    while sent < total {
        if s.write_all(&record).is_err() {
            return started.elapsed() < Duration::from_secs(10);
        }
        sent += record.len();
    }
    false
}

#[test]
fn auto_sni_and_san_validation_take_the_name_from_each_request() {
    let ca = Ca::new("autosni");
    let server = ca.leaf("upstream", &["a.example.com"]);
    let backend = TlsUpstream::start(&server, None, &[]);
    let options = |fields: &str| {
        format!(
            "    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        upstream_http_protocol_options: {{{fields}}}\n        explicit_http_config: {{http_protocol_options: {{}}}}\n"
        )
    };
    let trusted = format!(
        "        common_tls_context:\n          validation_context:\n            trusted_ca: {{filename: {}}}\n",
        ca.ca_file().display()
    );
    let clusters = [
        cluster(
            "validated",
            backend.addr,
            &(options("auto_sni: true, auto_san_validation: true") + &upstream_tls(&trusted)),
        ),
        cluster(
            "overridden",
            backend.addr,
            &(options("auto_sni: true, override_auto_sni_header: x-sni")
                + &upstream_tls("        sni: configured.example.com\n")),
        ),
        // The request's name, and a SAN matcher naming another host.
        cluster(
            "with_matchers",
            backend.addr,
            &(options("auto_sni: true, auto_san_validation: true")
                + &upstream_tls(&format!(
                    "{trusted}            match_typed_subject_alt_names: [{{san_type: DNS, matcher: {{exact: other.example.com}}}}]\n"
                ))),
        ),
    ]
    .concat();
    let routes: String = ["validated", "overridden", "with_matchers"]
        .iter()
        .map(|c| format!("              - match: {{ prefix: \"/{c}\" }}\n                route: {{ cluster: {c} }}\n"))
        .collect();
    let hcm = hcm("validated").replace(
        "              - match: { prefix: \"/\" }\n                route: { cluster: validated }\n",
        &routes,
    );
    let proxy = start_proxy(&bootstrap(
        &listener("plain", "", &chain(&[&hcm])),
        &clusters,
    ));
    let addr = proxy.addr("plain");
    let get = |path: &str, headers: &[(&str, &str)]| e2e::http_get(addr, path, headers);

    // The request's host (without its port) is the SNI, and the name the certificate must have.
    let r = get("/validated", &[("host", "a.example.com:8443")]);
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "sni=a.example.com alpn=")
    );
    let r = get("/validated", &[("host", "b.example.com")]);
    assert_eq!(r.status, 503, "{}", r.body);
    let stat = |c: &str, n: &str| proxy.stat(&format!("cluster.{c}.ssl.{n}")).unwrap_or(0);
    eventually("SAN failure counted", || {
        stat("validated", "fail_verify_san") == 1
    });
    // A host that is no name at all fails too (it does not fall back to an unchecked
    // connection).
    let r = get("/validated", &[("host", "1.2.3")]);
    assert_eq!(r.status, 503, "{}", r.body);
    // override_auto_sni_header wins when the request has it; without it, the host; an IP
    // address is not sent as SNI (the configured `sni` is, as without auto_sni).
    let r = get(
        "/overridden",
        &[("host", "a.example.com"), ("x-sni", "c.example.com")],
    );
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "sni=c.example.com alpn=")
    );
    let r = get("/overridden", &[("host", "d.example.com")]);
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "sni=d.example.com alpn=")
    );
    let r = get("/overridden", &[("host", "127.0.0.1:80")]);
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "sni=configured.example.com alpn=")
    );
    assert_eq!(stat("overridden", "handshake"), 3);
    // The request's name does not replace the SAN matchers: both apply, as in Envoy 1.40.
    let r = get("/with_matchers", &[("host", "a.example.com")]);
    assert_eq!(r.status, 503, "{}", r.body);
    eventually("SAN failure counted", || {
        stat("with_matchers", "fail_verify_san") == 1
    });
}

/// One `openssl s_client` exchange: a GET over `version` (`-tls1_2` / `-tls1_3`), with the
/// client's own key log written to `key_log`; `sni` `None` sends no server name. Whether a
/// response came back.
fn s_client_get(addr: SocketAddr, version: &str, sni: Option<&str>, key_log: &Path) -> bool {
    let mut args = vec![
        "s_client".to_string(),
        "-connect".into(),
        addr.to_string(),
        version.into(),
        "-keylogfile".into(),
        key_log.display().to_string(),
        "-ign_eof".into(),
    ];
    match sni {
        Some(name) => args.extend(["-servername".into(), name.into()]),
        None => args.push("-noservername".into()),
    }
    let mut child = std::process::Command::new("openssl")
        .args(&args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("openssl");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"GET / HTTP/1.1\r\nhost: kl.example.com\r\nconnection: close\r\n\r\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).contains("HTTP/1.1 200")
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// `key_log` writes the secrets of the connections in its address ranges: every line the proxy
/// writes is one the client derived too (openssl's own key log), for TLS 1.3 (handshake and
/// traffic secrets) and TLS 1.2 (`CLIENT_RANDOM`). `require_sni` is accepted and, as in Envoy,
/// has no effect.
#[test]
fn key_log_writes_the_secrets_the_client_has_and_require_sni_is_envoys_no_op() {
    let ca = Ca::new("keylog");
    let leaf = ca.leaf("kl", &["kl.example.com"]);
    let upstream = Upstream::start();
    let dir = e2e::ScratchDir::new("keylog");
    let (logged, filtered) = (dir.join("logged.keys"), dir.join("filtered.keys"));
    let key_log = |path: &Path, ranges: &str| {
        format!(
            "            key_log:\n              path: {}\n{ranges}",
            path.display()
        )
    };
    let listeners = [
        listener(
            "logged",
            "",
            &chain(&[
                &tls_socket(&[&leaf], "          require_sni: true\n"),
                &key_log(&logged, ""),
                &hcm("app"),
            ]),
        ),
        listener(
            "filtered",
            "",
            &chain(&[
                &tls_socket(&[&leaf], ""),
                &key_log(
                    &filtered,
                    "              remote_address_range: [{address_prefix: 10.0.0.0, prefix_len: 8}]\n",
                ),
                &hcm("app"),
            ]),
        ),
    ]
    .concat();
    // Upstream: `openssl s_server` keeps its own key log; the proxy's cluster logs too.
    let backend_port = e2e::dynamic::free_port();
    let backend_keys = dir.join("backend.keys");
    let upstream_keys = dir.join("upstream.keys");
    let mut backend = std::process::Command::new("openssl")
        .args(["s_server", "-accept"])
        .arg(format!("127.0.0.1:{backend_port}"))
        .arg("-cert")
        .arg(&leaf.cert)
        .arg("-key")
        .arg(&leaf.key)
        .arg("-keylogfile")
        .arg(&backend_keys)
        .args(["-www", "-quiet"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("openssl s_server");
    let listeners = listeners + &listener("plain", "", &chain(&[&hcm("tls_up")]));
    let clusters = cluster("app", upstream.addr, "")
        + &cluster(
            "tls_up",
            SocketAddr::from(([127, 0, 0, 1], backend_port)),
            &upstream_tls(&format!(
                "        sni: kl.example.com\n        common_tls_context:\n{}",
                key_log(&upstream_keys, "")
                    .replace("            key_log", "          key_log")
                    .replace("              path", "            path")
            )),
        );
    let proxy = start_proxy(&bootstrap(&listeners, &clusters));

    let client_keys = dir.join("client.keys");
    for version in ["-tls1_3", "-tls1_2"] {
        assert!(
            s_client_get(
                proxy.addr("logged"),
                version,
                Some("kl.example.com"),
                &client_keys
            ),
            "{version} through the logged listener"
        );
    }
    let labels = [
        "CLIENT_HANDSHAKE_TRAFFIC_SECRET",
        "SERVER_HANDSHAKE_TRAFFIC_SECRET",
        "CLIENT_TRAFFIC_SECRET_0",
        "SERVER_TRAFFIC_SECRET_0",
        "CLIENT_RANDOM",
    ];
    // Both proxies write the file from their access-log writer, at the flush interval.
    let deadline = Instant::now() + Duration::from_secs(15);
    let has_all = |lines: &[String]| {
        labels
            .iter()
            .all(|label| lines.iter().any(|l| l.starts_with(&format!("{label} "))))
    };
    while !has_all(&lines(&logged)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let ours = lines(&logged);
    let theirs = lines(&client_keys);
    assert!(
        has_all(&ours),
        "{labels:?} expected in the proxy's key log: {ours:#?}"
    );
    for line in &ours {
        assert!(
            theirs.contains(line),
            "the proxy logged a secret the client did not derive: {line}\nclient: {theirs:#?}"
        );
    }

    // The upstream connection's secrets, as the backend derived them.
    eventually("the backend listening", || {
        TcpStream::connect(("127.0.0.1", backend_port)).is_ok()
    });
    let response = e2e::http_get(proxy.addr("plain"), "/", &[]);
    let _ = backend.kill();
    let _ = backend.wait();
    assert_eq!(response.status, 200, "{response:?}");
    // Upstream connections are TLS 1.2 unless configured otherwise, as in Envoy.
    let deadline = Instant::now() + Duration::from_secs(15);
    while lines(&upstream_keys).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let ours = lines(&upstream_keys);
    let theirs = lines(&backend_keys);
    assert!(
        ours.iter().any(|l| l.starts_with("CLIENT_RANDOM ")),
        "{ours:#?}"
    );
    for line in &ours {
        assert!(
            theirs.contains(line),
            "not the backend's: {line}\nbackend: {theirs:#?}"
        );
    }

    // A connection from 127.0.0.1 is outside 10.0.0.0/8: nothing is logged for it.
    assert!(s_client_get(
        proxy.addr("filtered"),
        "-tls1_3",
        Some("kl.example.com"),
        &dir.join("client2.keys")
    ));
    // Key logs are written by the file's writer at the flush interval (a second for Legate,
    // 100 ms for the Envoy the harness starts): wait past it before looking for nothing.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(lines(&filtered).is_empty(), "{:?}", lines(&filtered));

    // Envoy 1.40 does not implement `require_sni` (the field is hidden as not implemented):
    // a hello without a server name is served all the same.
    assert!(s_client_get(
        proxy.addr("logged"),
        "-tls1_3",
        None,
        &dir.join("client3.keys")
    ));
    assert_eq!(proxy.stat("listener.logged.ssl.connection_error"), Some(0));
}

/// `upstream_connect_mode: ON_DOWNSTREAM_DATA` behind a TLS-terminating chain: the handshake
/// alone makes no upstream connection; the first application bytes do. Passes against Envoy
/// 1.40 too.
#[test]
fn tcp_proxy_on_downstream_data_after_a_tls_handshake() {
    let ca = Ca::new("lazy-tls");
    let leaf = ca.leaf("lazy", &["lazy.example.com"]);
    let upstream = e2e::thread_per_connection("127.0.0.1", |mut conn| {
        let _ = conn.write_all(b"greeting\n");
        let mut buf = [0u8; 1024];
        while let Ok(n) = conn.read(&mut buf) {
            if n == 0 || conn.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
    let tcp_proxy = "      filters:\n      - name: envoy.filters.network.tcp_proxy\n        typed_config:\n          \"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy\n          stat_prefix: lazy\n          cluster: app\n          upstream_connect_mode: ON_DOWNSTREAM_DATA\n          max_early_data_bytes: 1024\n";
    let proxy = start_proxy(&bootstrap(
        &listener("lazy", "", &chain(&[&tls_socket(&[&leaf], ""), tcp_proxy])),
        &cluster("app", upstream, ""),
    ));
    let config = client(ca.roots(), BOTH, &[], None);
    let mut tls = handshake(proxy.addr("lazy"), config, "lazy.example.com").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(proxy.stat("cluster.app.upstream_cx_total"), Some(0));
    tls.write_all(b"ping").unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    while got.len() < 13 {
        let n = tls.read(&mut buf).unwrap();
        assert!(n > 0, "closed after {got:?}");
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got, b"greeting\nping");
    assert_eq!(proxy.stat("cluster.app.upstream_cx_total"), Some(1));
}
