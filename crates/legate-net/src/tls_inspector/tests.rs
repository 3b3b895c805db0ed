use super::*;
use std::sync::Arc;

/// A real ClientHello, as rustls writes it (TLS 1.3 and 1.2 offered, aws-lc-rs provider).
fn rustls_hello(sni: Option<&str>, alpn: &[&str]) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    config.enable_sni = sni.is_some();
    let name = rustls::pki_types::ServerName::try_from(sni.unwrap_or("unused.example").to_owned())
        .unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    out
}

fn tls(data: &[u8]) -> ClientHello {
    match inspect(data, DEFAULT_MAX_CLIENT_HELLO_SIZE) {
        Inspection::Tls(h) => h,
        other => panic!("expected a ClientHello, got {other:?}"),
    }
}

#[test]
fn reads_sni_and_alpn_from_rustls_hellos() {
    let h = tls(&rustls_hello(Some("www.Example.com"), &["h2", "http/1.1"]));
    assert_eq!(h.server_name, "www.example.com");
    assert_eq!(h.alpn, ["h2", "http/1.1"]);
    let h = tls(&rustls_hello(Some("a.b"), &[]));
    assert_eq!(h.server_name, "a.b");
    assert!(h.alpn.is_empty());
    let h = tls(&rustls_hello(None, &["x"]));
    assert_eq!(h.server_name, "");
    assert_eq!(h.alpn, ["x"]);
}

#[test]
fn every_prefix_of_a_hello_needs_more() {
    let hello = rustls_hello(Some("example.com"), &["h2"]);
    for n in 0..hello.len() {
        assert_eq!(
            inspect(&hello[..n], DEFAULT_MAX_CLIENT_HELLO_SIZE),
            Inspection::NeedMore,
            "prefix of {n} bytes"
        );
    }
    // Bytes after the hello (early data, a second record) do not matter.
    let mut more = hello.clone();
    more.extend_from_slice(b"\x17\x03\x03\x00\x05hello");
    assert_eq!(tls(&more).server_name, "example.com");
}

#[test]
fn hello_split_over_records() {
    let hello = rustls_hello(Some("split.example"), &["h2"]);
    let body = &hello[5..];
    // Re-frame the handshake message into records of 7 bytes.
    let mut framed = Vec::new();
    for chunk in body.chunks(7) {
        framed.extend_from_slice(&[22, 3, 1, 0, chunk.len() as u8]);
        framed.extend_from_slice(chunk);
    }
    let h = tls(&framed);
    assert_eq!(h.server_name, "split.example");
    assert_eq!(h.alpn, ["h2"]);
    assert_eq!(h.bytes, framed.len());
    for n in 0..framed.len() {
        assert_eq!(
            inspect(&framed[..n], DEFAULT_MAX_CLIENT_HELLO_SIZE),
            Inspection::NeedMore
        );
    }
    // The peek limit bounds how finely a hello may be cut.
    let config = TlsInspectorConfig::default();
    assert!(config.peek_limit() >= DEFAULT_MAX_CLIENT_HELLO_SIZE + 4 + 5);
}

#[test]
fn garbage_is_not_tls() {
    for data in [
        &b"GET / HTTP/1.1\r\n"[..],
        b"\x00\x00\x00\x00\x00",
        b"\x16\x02\x01\x00\x10",                 // major version 2
        b"\x16\x03\x01\x00\x00",                 // empty record
        b"\x16\x03\x01\x48\x01",                 // record larger than 2^14
        b"\x15\x03\x01\x00\x02\x02\x28",         // an alert
        b"\x16\x03\x01\x00\x04\x02\x00\x00\x00", // a ServerHello
        b"\x80\x2e\x01\x03\x01",                 // SSLv2-style hello
    ] {
        assert!(
            matches!(
                inspect(data, DEFAULT_MAX_CLIENT_HELLO_SIZE),
                Inspection::NotTls { .. }
            ),
            "{data:?}"
        );
    }
}

#[test]
fn too_large_and_malformed_hellos() {
    // A hello announcing 20,000 bytes.
    let big = [22, 3, 1, 0x40, 0, 1, 0, 0x4e, 0x20];
    assert_eq!(
        inspect(&big, DEFAULT_MAX_CLIENT_HELLO_SIZE),
        Inspection::TooLarge
    );
    assert_eq!(inspect(&big, 1 << 20), Inspection::NeedMore);

    // Corrupt every length byte of a real hello in turn: never a panic, and the verdict is
    // never a hello with a different name.
    let hello = rustls_hello(Some("example.com"), &["h2"]);
    for i in 5..hello.len() {
        for v in [0u8, 1, 0x7f, 0xff] {
            let mut bad = hello.clone();
            bad[i] = v;
            if let Inspection::Tls(h) = inspect(&bad, DEFAULT_MAX_CLIENT_HELLO_SIZE) {
                assert!(h.server_name.len() <= "example.com".len() || h.server_name.is_empty());
            }
        }
    }
    // Truncate the handshake length so that it ends inside the extensions.
    let mut short = hello.clone();
    let len = u32::from_be_bytes([0, short[6], short[7], short[8]]) - 10;
    short[6..9].copy_from_slice(&len.to_be_bytes()[1..]);
    assert!(matches!(
        inspect(&short, DEFAULT_MAX_CLIENT_HELLO_SIZE),
        Inspection::NotTls { malformed: true }
    ));
}

#[test]
fn minimal_hello_without_extensions() {
    let mut body = vec![3, 3];
    body.extend_from_slice(&[0; 32]);
    body.push(0); // session id
    body.extend_from_slice(&[0, 2, 0x13, 0x01]);
    body.extend_from_slice(&[1, 0]);
    let mut msg = vec![1, 0, 0, body.len() as u8];
    msg.extend_from_slice(&body);
    let mut rec = vec![22, 3, 1, 0, msg.len() as u8];
    rec.extend_from_slice(&msg);
    let h = tls(&rec);
    assert_eq!(h.server_name, "");
    assert!(h.alpn.is_empty());
}
