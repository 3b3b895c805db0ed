//! End-to-end tests of the downstream TLS identity: the `%DOWNSTREAM_PEER_*%`,
//! `%DOWNSTREAM_LOCAL_*%` and `%DOWNSTREAM_TLS_*%` operators in access logs and in
//! `request_headers_to_add`, `x-forwarded-client-cert` in every `forward_client_cert_details`
//! mode, and the admin `/certs` endpoint. Certificates are generated with rcgen, with fixed
//! names, serials and validity; what cannot be fixed (keys, hence fingerprints and PEM) is
//! computed with the `openssl` command. Every test runs against Envoy too
//! (`LEGATE_E2E_PROXY=envoy`), expecting the same bytes.

mod e2e;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::{Legate, Upstream, cluster, parse_response, start_proxy, temp_dir};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

/// A certificate file and what `openssl` says of it.
struct CertFile {
    cert: PathBuf,
    key: PathBuf,
    der: Vec<u8>,
}

impl CertFile {
    fn openssl(&self, args: &[&str]) -> String {
        let out = Command::new("openssl")
            .arg("x509")
            .arg("-in")
            .arg(&self.cert)
            .args(args)
            .output()
            .expect("openssl");
        assert!(out.status.success(), "openssl {args:?} failed");
        String::from_utf8(out.stdout).unwrap()
    }

    /// Lower-case hex without colons, as Envoy prints fingerprints.
    fn fingerprint(&self, digest: &str) -> String {
        let out = self.openssl(&["-noout", "-fingerprint", digest]);
        out.trim()
            .split('=')
            .nth(1)
            .unwrap()
            .replace(':', "")
            .to_ascii_lowercase()
    }

    /// The PEM as `PEM_write_bio_X509` writes it, URL-encoded as Envoy's
    /// `PercentEncoding::urlEncode` (all but ALPHA, DIGIT, `*-._`).
    fn url_encoded_pem(&self) -> String {
        let pem = self.openssl(&[]);
        let mut out = String::new();
        for b in pem.bytes() {
            if b.is_ascii_alphanumeric() || b"*-._".contains(&b) {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        out
    }
}

/// The test PKI: a CA, the proxy's certificate, a client with every kind of SAN (sending the CA
/// in its chain) and a client with a DNS SAN only.
struct Pki {
    dir: PathBuf,
    ca: CertFile,
    proxy: CertFile,
    client: CertFile,
    plain_client: CertFile,
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn write(dir: &Path, name: &str, cert: &rcgen::Certificate, key: &KeyPair) -> CertFile {
    let file = CertFile {
        cert: dir.join(format!("{name}.crt")),
        key: dir.join(format!("{name}.key")),
        der: cert.der().to_vec(),
    };
    std::fs::write(&file.cert, cert.pem()).unwrap();
    std::fs::write(&file.key, key.serialize_pem()).unwrap();
    file
}

fn dn(entries: &[(DnType, &str)]) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    for (t, v) in entries {
        dn.push(t.clone(), *v);
    }
    dn
}

fn pki() -> Pki {
    let dir = temp_dir("tls-identity");
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name = dn(&[
        (DnType::OrganizationName, "Legate"),
        (DnType::CommonName, "identity test CA"),
    ]);
    ca_params.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x01, 0xff]));
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let ca = write(&dir, "ca", &ca_cert, &ca_key);
    let issuer = Issuer::new(ca_params, ca_key);

    let leaf = |name: &str, params: CertificateParams| {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        write(&dir, name, &cert, &key)
    };

    let mut p = CertificateParams::new(vec!["proxy.example.com".to_owned()]).unwrap();
    p.subject_alt_names
        .push(SanType::URI("spiffe://legate/proxy".try_into().unwrap()));
    p.subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    p.subject_alt_names
        .push(SanType::OtherName((UPN.to_vec(), "proxy@legate".into())));
    p.distinguished_name = dn(&[
        (DnType::OrganizationName, "Legate"),
        (DnType::CommonName, "proxy.example.com"),
    ]);
    let proxy = leaf("proxy", p);

    let mut p = CertificateParams::new(vec![
        "client.example.com".to_owned(),
        "alt.example.com".to_owned(),
    ])
    .unwrap();
    p.subject_alt_names
        .push(SanType::URI("spiffe://legate/client".try_into().unwrap()));
    p.subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    p.subject_alt_names
        .push(SanType::IpAddress("::1".parse().unwrap()));
    p.subject_alt_names
        .push(SanType::Rfc822Name("ops@example.com".try_into().unwrap()));
    p.subject_alt_names
        .push(SanType::OtherName((UPN.to_vec(), "client@legate".into())));
    p.distinguished_name = dn(&[
        (DnType::CountryName, "US"),
        (DnType::OrganizationName, "Legate, Inc."),
        (DnType::OrganizationalUnitName, "Eng"),
        (DnType::CommonName, "client"),
    ]);
    p.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x0a, 0x1b, 0x2c, 0x3d]));
    p.not_before = rcgen::date_time_ymd(2024, 1, 2);
    p.not_after = rcgen::date_time_ymd(2030, 6, 7);
    let client = leaf("client", p);

    let mut p = CertificateParams::new(vec!["plain.example.com".to_owned()]).unwrap();
    p.distinguished_name = dn(&[(DnType::CommonName, "plain")]);
    let plain_client = leaf("plain", p);

    Pki {
        dir,
        ca,
        proxy,
        client,
        plain_client,
    }
}

/// The Microsoft UPN otherName type, with a UTF8String value.
const UPN: &[u64] = &[1, 3, 6, 1, 4, 1, 311, 20, 2, 3];

const CA_SUBJECT: &str = "CN=identity test CA,O=Legate";
const CLIENT_SUBJECT: &str = r"CN=client,OU=Eng,O=Legate\, Inc.,C=US";
const PROXY_SUBJECT: &str = "CN=proxy.example.com,O=Legate";

/// A client offering one cipher suite (so that both proxies pick the same), presenting
/// `chain` if given.
fn client(pki: &Pki, tls12: bool, chain: Option<(&[&CertFile], &CertFile)>) -> Arc<ClientConfig> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    let (suite, version) = if tls12 {
        (
            rustls::crypto::aws_lc_rs::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            &rustls::version::TLS12,
        )
    } else {
        (
            rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256,
            &rustls::version::TLS13,
        )
    };
    provider.cipher_suites = vec![suite];
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(pki.ca.der.clone())).unwrap();
    let builder = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots);
    Arc::new(match chain {
        Some((certs, key)) => builder
            .with_client_auth_cert(
                certs
                    .iter()
                    .map(|c| CertificateDer::from(c.der.clone()))
                    .collect(),
                PrivateKeyDer::from_pem_file(&key.key).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    })
}

/// One HTTP/1.1 request over TLS with extra header lines; the response.
fn https_get(addr: SocketAddr, config: Arc<ClientConfig>, extra: &str) -> e2e::RawResponse {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let name = ServerName::try_from("proxy.example.com").unwrap();
    let mut tls = StreamOwned::new(ClientConnection::new(config, name).unwrap(), tcp);
    let req = format!("GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n{extra}\r\n");
    tls.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    match tls.read_to_end(&mut out) {
        Ok(_) => {}
        // Envoy (BoringSSL) may close without close_notify after `connection: close`.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !out.is_empty() => {}
        Err(e) => panic!("reading the response: {e}"),
    }
    parse_response(&out).unwrap_or_else(|| panic!("no response: {out:?}"))
}

fn tls_socket(pki: &Pki) -> String {
    format!(
        r#"      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            tls_certificates:
            - certificate_chain: {{filename: {cert}}}
              private_key: {{filename: {key}}}
            validation_context:
              trusted_ca: {{filename: {ca}}}
"#,
        cert = pki.proxy.cert.display(),
        key = pki.proxy.key.display(),
        ca = pki.ca.cert.display(),
    )
}

fn hcm(extra: &str, route_extra: &str) -> String {
    format!(
        r#"      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
{extra}          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: app }}
{route_extra}          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
"#
    )
}

fn listener(name: &str, chain: &str) -> String {
    format!(
        "  - name: {name}\n    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}\n    filter_chains:\n    - {}",
        chain.trim_start()
    )
}

fn bootstrap(listeners: &[String], upstream: SocketAddr) -> String {
    format!(
        "admin:\n  address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}\nstatic_resources:\n  listeners:\n{}  clusters:\n{}",
        listeners.concat(),
        cluster("app", upstream, "")
    )
}

/// The operators under test, in the order of the access-log line.
const OPERATORS: &[&str] = &[
    "DOWNSTREAM_PEER_SUBJECT",
    "DOWNSTREAM_PEER_ISSUER",
    "DOWNSTREAM_PEER_URI_SAN",
    "DOWNSTREAM_PEER_DNS_SAN",
    "DOWNSTREAM_PEER_IP_SAN",
    "DOWNSTREAM_PEER_EMAIL_SAN",
    "DOWNSTREAM_PEER_FINGERPRINT_256",
    "DOWNSTREAM_PEER_FINGERPRINT_1",
    "DOWNSTREAM_PEER_SERIAL",
    "DOWNSTREAM_PEER_CHAIN_FINGERPRINTS_256",
    "DOWNSTREAM_PEER_CHAIN_FINGERPRINTS_1",
    "DOWNSTREAM_PEER_CHAIN_SERIALS",
    "DOWNSTREAM_PEER_CERT",
    "DOWNSTREAM_PEER_CERT_V_START",
    "DOWNSTREAM_PEER_CERT_V_END",
    "DOWNSTREAM_PEER_CERT_V_START(%Y/%m/%d %s)",
    "DOWNSTREAM_PEER_CERT_V_END(%d.%m.%Y)",
    "DOWNSTREAM_LOCAL_SUBJECT",
    "DOWNSTREAM_LOCAL_URI_SAN",
    "DOWNSTREAM_LOCAL_DNS_SAN",
    "DOWNSTREAM_LOCAL_IP_SAN",
    "DOWNSTREAM_LOCAL_EMAIL_SAN",
    "DOWNSTREAM_TLS_VERSION",
    "DOWNSTREAM_TLS_CIPHER",
    "DOWNSTREAM_PEER_OTHERNAME_SAN",
    "DOWNSTREAM_LOCAL_OTHERNAME_SAN",
];

/// What each operator prints for the client with every SAN (`None`: unset).
fn expected_with_client_cert(pki: &Pki, tls12: bool) -> Vec<Option<String>> {
    let c = &pki.client;
    let s = |v: &str| Some(v.to_owned());
    vec![
        s(CLIENT_SUBJECT),
        s(CA_SUBJECT),
        s("spiffe://legate/client"),
        s("client.example.com,alt.example.com"),
        s("127.0.0.1,::1"),
        s("ops@example.com"),
        Some(c.fingerprint("-sha256")),
        Some(c.fingerprint("-sha1")),
        s("0a1b2c3d"),
        Some(format!(
            "{},{}",
            c.fingerprint("-sha256"),
            pki.ca.fingerprint("-sha256")
        )),
        Some(format!(
            "{},{}",
            c.fingerprint("-sha1"),
            pki.ca.fingerprint("-sha1")
        )),
        s("0a1b2c3d,01ff"),
        Some(c.url_encoded_pem()),
        s("2024-01-02T00:00:00.000Z"),
        s("2030-06-07T00:00:00.000Z"),
        s("2024/01/02 1704153600"),
        s("07.06.2030"),
        s(PROXY_SUBJECT),
        s("spiffe://legate/proxy"),
        s("proxy.example.com"),
        s("127.0.0.1"),
        None,
        s(if tls12 { "TLSv1.2" } else { "TLSv1.3" }),
        s(if tls12 {
            "ECDHE-ECDSA-AES128-GCM-SHA256"
        } else {
            "TLS_AES_128_GCM_SHA256"
        }),
        s("client@legate"),
        s("proxy@legate"),
    ]
}

/// TLS without a client certificate: only the local and the session's facts.
fn expected_without_client_cert() -> Vec<Option<String>> {
    let mut v = vec![None; OPERATORS.len()];
    v[17] = Some(PROXY_SUBJECT.to_owned());
    v[18] = Some("spiffe://legate/proxy".to_owned());
    v[19] = Some("proxy.example.com".to_owned());
    v[20] = Some("127.0.0.1".to_owned());
    v[22] = Some("TLSv1.3".to_owned());
    v[23] = Some("TLS_AES_128_GCM_SHA256".to_owned());
    v[25] = Some("proxy@legate".to_owned());
    v
}

/// Waits until the access log at `path` has at least `n` lines (Envoy flushes every second).
fn access_log_lines(path: &Path, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        if lines.len() >= n || Instant::now() >= deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn operators_proxy(pki: &Pki, upstream: &Upstream) -> Legate {
    let format: Vec<String> = OPERATORS.iter().map(|op| format!("%{op}%")).collect();
    let log = format!(
        r#"          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: "{{dir}}/access.log"
              log_format:
                text_format_source:
                  inline_string: "{}\n"
"#,
        format.join("|")
    );
    let mut headers = String::from("                request_headers_to_add:\n");
    for (i, op) in OPERATORS.iter().enumerate() {
        headers.push_str(&format!(
            "                - header: {{key: x-op-{i}, value: \"%{op}%\"}}\n                  keep_empty_value: true\n"
        ));
    }
    let hcm = hcm(&log, &headers);
    let config = bootstrap(
        &[
            listener("mtls", &format!("{}{hcm}", tls_socket(pki))),
            listener("plain", &hcm),
        ],
        upstream.addr,
    );
    start_proxy(&config)
}

/// Every operator in an access log and in a request header, for mTLS (TLS 1.3 and 1.2), TLS
/// without a client certificate and plaintext: `-` in the log and an empty header when unset.
#[test]
fn tls_operators_in_access_logs_and_headers() {
    let pki = pki();
    let upstream = Upstream::start();
    let proxy = operators_proxy(&pki, &upstream);
    let log = proxy.dir.join("access.log");
    let chain = [&pki.client, &pki.ca];
    let cases: Vec<(&str, Option<Arc<ClientConfig>>, Vec<Option<String>>)> = vec![
        (
            "mTLS 1.3",
            Some(client(&pki, false, Some((&chain, &pki.client)))),
            expected_with_client_cert(&pki, false),
        ),
        (
            "mTLS 1.2",
            Some(client(&pki, true, Some((&chain, &pki.client)))),
            expected_with_client_cert(&pki, true),
        ),
        (
            "TLS",
            Some(client(&pki, false, None)),
            expected_without_client_cert(),
        ),
        ("plaintext", None, vec![None; OPERATORS.len()]),
    ];
    for (n, (case, config, expected)) in cases.into_iter().enumerate() {
        let response = match config {
            Some(config) => https_get(proxy.addr("mtls"), config, ""),
            None => e2e::http_get(proxy.addr("plain"), "/", &[]),
        };
        assert_eq!(response.status, 200, "{case}: {}", response.body);
        let seen = upstream.last();
        let lines = access_log_lines(&log, n + 1);
        assert_eq!(lines.len(), n + 1, "{case}: access log lines {lines:?}");
        let logged: Vec<&str> = lines[n].split('|').collect();
        assert_eq!(logged.len(), OPERATORS.len(), "{case}: {}", lines[n]);
        for (i, op) in OPERATORS.iter().enumerate() {
            let want = expected[i].as_deref();
            assert_eq!(
                logged[i],
                want.unwrap_or("-"),
                "{case}: %{op}% in the access log"
            );
            assert_eq!(
                seen.header(&format!("x-op-{i}")),
                Some(want.unwrap_or("")),
                "{case}: %{op}% in a request header"
            );
        }
    }
}

/// The XFCC value sent with each request, so that forwarding is visible.
const INCOMING_XFCC: &str = "By=spiffe://front;Hash=0011";

fn xfcc_listener(pki: &Pki, name: &str, mode: &str, details: &str) -> String {
    let extra = format!(
        "          forward_client_cert_details: {mode}\n          set_current_client_cert_details: {details}\n"
    );
    listener(name, &format!("{}{}", tls_socket(pki), hcm(&extra, "")))
}

/// `x-forwarded-client-cert` for each `forward_client_cert_details`, with and without a
/// client certificate, with every `set_current_client_cert_details` and with URI alone (for a
/// certificate without a URI SAN: `URI=`).
#[test]
fn x_forwarded_client_cert_modes() {
    let pki = pki();
    let upstream = Upstream::start();
    let all = "{subject: true, cert: true, chain: true, dns: true, uri: true}";
    let listeners = [
        xfcc_listener(&pki, "sanitize", "SANITIZE", all),
        xfcc_listener(&pki, "forward_only", "FORWARD_ONLY", all),
        xfcc_listener(&pki, "append_forward", "APPEND_FORWARD", all),
        xfcc_listener(&pki, "sanitize_set", "SANITIZE_SET", all),
        xfcc_listener(&pki, "always_forward_only", "ALWAYS_FORWARD_ONLY", all),
        xfcc_listener(&pki, "uri_only", "SANITIZE_SET", "{uri: true}"),
        xfcc_listener(&pki, "subject_only", "APPEND_FORWARD", "{subject: true}"),
    ];
    let proxy = start_proxy(&bootstrap(&listeners, upstream.addr));
    let c = &pki.client;
    let this_hop = format!(
        "By=spiffe://legate/proxy;Hash={};Cert=\"{}\";Chain=\"{}{}\";Subject=\"{CLIENT_SUBJECT}\";URI=spiffe://legate/client;DNS=client.example.com;DNS=alt.example.com",
        c.fingerprint("-sha256"),
        c.url_encoded_pem(),
        c.url_encoded_pem(),
        pki.ca.url_encoded_pem(),
    );
    let plain_hash = pki.plain_client.fingerprint("-sha256");
    let chain = [&pki.client, &pki.ca];
    let mtls = client(&pki, false, Some((&chain, &pki.client)));
    let plain_chain = [&pki.plain_client];
    let mtls_plain = client(&pki, false, Some((&plain_chain, &pki.plain_client)));
    let tls = client(&pki, false, None);
    let header = format!("x-forwarded-client-cert: {INCOMING_XFCC}\r\n");
    let cases: Vec<(&str, &Arc<ClientConfig>, Option<String>)> = vec![
        ("sanitize", &mtls, None),
        ("sanitize", &tls, None),
        ("forward_only", &mtls, Some(INCOMING_XFCC.to_owned())),
        ("forward_only", &tls, None),
        (
            "append_forward",
            &mtls,
            Some(format!("{INCOMING_XFCC},{this_hop}")),
        ),
        ("append_forward", &tls, None),
        ("sanitize_set", &mtls, Some(this_hop.clone())),
        ("sanitize_set", &tls, None),
        ("always_forward_only", &mtls, Some(INCOMING_XFCC.to_owned())),
        ("always_forward_only", &tls, Some(INCOMING_XFCC.to_owned())),
        (
            "uri_only",
            &mtls_plain,
            Some(format!("By=spiffe://legate/proxy;Hash={plain_hash};URI=")),
        ),
        (
            "subject_only",
            &mtls_plain,
            Some(format!(
                "{INCOMING_XFCC},By=spiffe://legate/proxy;Hash={plain_hash};Subject=\"CN=plain\""
            )),
        ),
    ];
    for (listener, config, expected) in cases {
        let response = https_get(proxy.addr(listener), config.clone(), &header);
        assert_eq!(response.status, 200, "{listener}: {}", response.body);
        let seen = upstream.last();
        assert_eq!(
            seen.header("x-forwarded-client-cert").map(str::to_owned),
            expected,
            "{listener} with{} a client certificate",
            if Arc::ptr_eq(config, &tls) { "out" } else { "" }
        );
    }
    // Without an incoming header, APPEND_FORWARD starts the list.
    let response = https_get(proxy.addr("append_forward"), mtls.clone(), "");
    assert_eq!(response.status, 200);
    assert_eq!(
        upstream.last().header("x-forwarded-client-cert"),
        Some(this_hop.as_str())
    );
}

/// What `/certs` shows of one certificate, as Envoy's `CertificateDetails` (DNS, URI, then IP
/// SANs; days until expiration from now; RFC 3339 validity).
fn cert_details(file: &CertFile, path: &str, sans: &[(&str, &str)]) -> serde_json::Value {
    let serial = file
        .openssl(&["-noout", "-serial"])
        .trim()
        .trim_start_matches("serial=")
        .to_ascii_lowercase();
    let date = |flag: &str| {
        let out = file.openssl(&["-noout", flag, "-dateopt", "iso_8601"]);
        // `notAfter=2030-06-07 00:00:00Z`
        let value = out.trim().split('=').nth(1).unwrap().to_owned();
        value.replace(' ', "T")
    };
    let not_after = date("-enddate");
    let expires = Command::new("date")
        .args(["-u", "-d", &not_after, "+%s"])
        .output()
        .unwrap();
    let expires: u64 = String::from_utf8(expires.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let days = expires.saturating_sub(now) / 86_400;
    serde_json::json!({
        "path": path,
        "serial_number": serial,
        "subject_alt_names": sans
            .iter()
            .map(|(k, v)| serde_json::json!({ *k: v }))
            .collect::<Vec<_>>(),
        "days_until_expiration": days.to_string(),
        "valid_from": date("-startdate"),
        "expiration_time": not_after,
    })
}

/// Envoy's pretty JSON (one-space indent, `"key": value`, fields in proto order, `[]` for an
/// empty list), for a byte-for-byte comparison.
fn envoy_pretty(v: &serde_json::Value) -> String {
    const PROTO_ORDER: &[&str] = &[
        "certificates",
        "ca_cert",
        "cert_chain",
        "path",
        "serial_number",
        "subject_alt_names",
        "days_until_expiration",
        "valid_from",
        "expiration_time",
        "dns",
        "uri",
        "ip_address",
    ];
    fn write(v: &serde_json::Value, depth: usize, out: &mut String) {
        let pad = |d: usize| " ".repeat(d);
        match v {
            serde_json::Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort_by_key(|k| PROTO_ORDER.iter().position(|o| o == k));
                out.push_str("{\n");
                for (i, k) in keys.iter().enumerate() {
                    out.push_str(&format!("{}\"{k}\": ", pad(depth + 1)));
                    write(&map[k.as_str()], depth + 1, out);
                    out.push_str(if i + 1 < keys.len() { ",\n" } else { "\n" });
                }
                out.push_str(&format!("{}}}", pad(depth)));
            }
            serde_json::Value::Array(items) if !items.is_empty() => {
                out.push_str("[\n");
                for (i, v) in items.iter().enumerate() {
                    out.push_str(&pad(depth + 1));
                    write(v, depth + 1, out);
                    out.push_str(if i + 1 < items.len() { ",\n" } else { "\n" });
                }
                out.push_str(&format!("{}]", pad(depth)));
            }
            // protobuf escapes `<` and `>` (`\u003cinline\u003e`).
            other => out.push_str(
                &other
                    .to_string()
                    .replace('<', "\\u003c")
                    .replace('>', "\\u003e"),
            ),
        }
    }
    let mut out = String::new();
    write(v, 0, &mut out);
    out.push('\n');
    out
}

/// `/certs` with one listener context (exact bytes), then with a cluster's context too (the
/// same entries; Envoy lists its contexts in hash-set order, so the order is not compared).
#[test]
fn admin_certs_lists_every_context() {
    let pki = pki();
    let upstream = Upstream::start();
    let hcm = hcm("", "");
    let listener_ctx = listener("mtls", &format!("{}{hcm}", tls_socket(&pki)));
    let proxy = start_proxy(&bootstrap(
        std::slice::from_ref(&listener_ctx),
        upstream.addr,
    ));
    let ca_entry = cert_details(&pki.ca, pki.ca.cert.to_str().unwrap(), &[]);
    let proxy_entry = cert_details(
        &pki.proxy,
        pki.proxy.cert.to_str().unwrap(),
        &[
            ("dns", "proxy.example.com"),
            ("uri", "spiffe://legate/proxy"),
            ("ip_address", "127.0.0.1"),
        ],
    );
    let listener_context = serde_json::json!({
        "ca_cert": [ca_entry.clone()],
        "cert_chain": [proxy_entry],
    });
    let response = e2e::http_get(proxy.admin.unwrap(), "/certs", &[]);
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-type"), Some("application/json"));
    assert_eq!(
        response.body,
        envoy_pretty(&serde_json::json!({ "certificates": [listener_context.clone()] }))
    );
    drop(proxy);

    // A cluster with a client certificate and an inline CA.
    let ca_pem = std::fs::read_to_string(&pki.ca.cert).unwrap();
    let upstream_tls = format!(
        r#"    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        common_tls_context:
          tls_certificates:
          - certificate_chain: {{filename: {cert}}}
            private_key: {{filename: {key}}}
          validation_context:
            trusted_ca: {{inline_string: {ca:?}}}
"#,
        cert = pki.plain_client.cert.display(),
        key = pki.plain_client.key.display(),
        ca = ca_pem,
    );
    let config = format!(
        "admin:\n  address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}\nstatic_resources:\n  listeners:\n{listener_ctx}  clusters:\n{}",
        cluster("app", upstream.addr, &upstream_tls)
    );
    let proxy = start_proxy(&config);
    let response = e2e::http_get(proxy.admin.unwrap(), "/certs", &[]);
    assert_eq!(response.status, 200);
    let shown = response.json();
    let mut contexts: Vec<serde_json::Value> = shown["certificates"].as_array().unwrap().clone();
    contexts.sort_by_key(|c| c.to_string());
    let cluster_context = serde_json::json!({
        "ca_cert": [cert_details(&pki.ca, "<inline>", &[])],
        "cert_chain": [cert_details(
            &pki.plain_client,
            pki.plain_client.cert.to_str().unwrap(),
            &[("dns", "plain.example.com")],
        )],
    });
    let mut expected = vec![listener_context, cluster_context];
    expected.sort_by_key(|c| c.to_string());
    assert_eq!(contexts, expected);
}

/// The operators in a tcp_proxy's access log (written when the connection closes).
#[test]
fn tls_operators_in_a_tcp_proxy_access_log() {
    let pki = pki();
    let upstream = Upstream::start();
    let tcp_proxy = r#"      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: tcp
          cluster: app
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: "{dir}/tcp.log"
              log_format:
                text_format_source:
                  inline_string: "%DOWNSTREAM_PEER_SUBJECT%|%DOWNSTREAM_PEER_URI_SAN%|%DOWNSTREAM_LOCAL_DNS_SAN%|%DOWNSTREAM_TLS_VERSION%\n"
"#;
    let config = bootstrap(
        &[listener("tcp", &format!("{}{tcp_proxy}", tls_socket(&pki)))],
        upstream.addr,
    );
    let proxy = start_proxy(&config);
    let chain = [&pki.client];
    let response = https_get(
        proxy.addr("tcp"),
        client(&pki, false, Some((&chain, &pki.client))),
        "",
    );
    assert_eq!(response.status, 200);
    let response = https_get(proxy.addr("tcp"), client(&pki, false, None), "");
    assert_eq!(response.status, 200);
    let mut lines = access_log_lines(&proxy.dir.join("tcp.log"), 2);
    // Both connections close at about the same time: either may be logged first.
    lines.sort();
    assert_eq!(
        lines,
        [
            "-|-|proxy.example.com|TLSv1.3".to_owned(),
            format!("{CLIENT_SUBJECT}|spiffe://legate/client|proxy.example.com|TLSv1.3"),
        ]
    );
}

/// `/certs` of a listener whose certificate comes from an SDS secret (a file source) and whose
/// `common_tls_context` has `validation` (given the PKI's files), compared with what Envoy
/// lists: the secret's certificate as `<inline>` (Envoy reads the secret's files into inline
/// data) and the CA from `ca_path`.
fn check_certs_of_sds_context(pki: &Pki, validation: &str, ca_path: &str) {
    let upstream = Upstream::start();
    let sds = pki.dir.join("sds.yaml");
    std::fs::write(
        &sds,
        format!(
            "version_info: \"1\"\nresources:\n- \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret\n  name: proxy\n  tls_certificate:\n    certificate_chain: {{filename: {}}}\n    private_key: {{filename: {}}}\n",
            pki.proxy.cert.display(),
            pki.proxy.key.display()
        ),
    )
    .unwrap();
    let tls = format!(
        r#"      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            tls_certificate_sds_secret_configs:
            - name: proxy
              sds_config: {{path_config_source: {{path: {sds}}}, resource_api_version: V3}}
{validation}"#,
        sds = sds.display(),
    );
    // Envoy requires a node identity for any xDS subscription, SDS from a file too.
    let config = format!(
        "node: {{id: edge, cluster: edge}}\n{}",
        bootstrap(
            &[listener("sds", &format!("{tls}{}", hcm("", "")))],
            upstream.addr
        )
    );
    let proxy = start_proxy(&config);
    let expected = serde_json::json!({ "certificates": [{
        "ca_cert": [cert_details(&pki.ca, ca_path, &[])],
        "cert_chain": [cert_details(
            &pki.proxy,
            "<inline>",
            &[
                ("dns", "proxy.example.com"),
                ("uri", "spiffe://legate/proxy"),
                ("ip_address", "127.0.0.1"),
            ],
        )],
    }]});
    let response = e2e::http_get(proxy.admin.unwrap(), "/certs", &[]);
    assert_eq!(response.status, 200);
    assert_eq!(response.body, envoy_pretty(&expected));
}

/// `/certs` for a context whose certificate comes from an SDS secret: the secret's
/// certificate, and the inline validation context's CA with its path.
#[test]
fn admin_certs_shows_sds_certificates() {
    let pki = pki();
    let validation = format!(
        "            validation_context:\n              trusted_ca: {{filename: {}}}\n",
        pki.ca.cert.display()
    );
    check_certs_of_sds_context(&pki, &validation, pki.ca.cert.to_str().unwrap());
}

/// `/certs` for a context whose validation context comes from an SDS secret: the CA of the
/// secret in force, as Envoy lists it (`<inline>`).
#[test]
fn admin_certs_shows_the_ca_of_an_sds_validation_context() {
    let pki = pki();
    let roots = pki.dir.join("roots.yaml");
    std::fs::write(
        &roots,
        format!(
            "resources:\n- \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret\n  name: roots\n  validation_context:\n    trusted_ca: {{filename: {}}}\n",
            pki.ca.cert.display()
        ),
    )
    .unwrap();
    let validation = format!(
        "            validation_context_sds_secret_config:\n              name: roots\n              sds_config: {{path_config_source: {{path: {}}}, resource_api_version: V3}}\n",
        roots.display()
    );
    check_certs_of_sds_context(&pki, &validation, "<inline>");
}
