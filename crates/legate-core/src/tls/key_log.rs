//! `CommonTlsContext.key_log`: a connection's TLS secrets appended to a file in the NSS key
//! log format (`<label> <client random> <secret>`, hex), which Wireshark reads to decrypt a
//! capture — for debugging only, as Envoy warns. Only connections whose local and remote
//! addresses fall in `local_address_range` and `remote_address_range` are logged (an empty
//! list matches any address; a unix domain socket, which has no IP address, matches only an
//! empty list). The file is written as Envoy writes it, through the access-log files
//! ([`AccessLogFiles`]): shared by every context naming it, written off the handshake's
//! thread, flushed at the file flush interval and reopened on `SIGUSR1`.

use std::net::SocketAddr;
use std::sync::Arc;

use legate_api::pb::envoy::extensions::transport_sockets::tls::v3::TlsKeyLog;

use crate::access_log::{AccessLogFiles, Destination, LogFile};
use crate::address::Cidr;
use crate::x509::hex;
use crate::{Compiled, Errors};

/// A compiled `TlsKeyLog`.
pub struct KeyLog {
    file: Arc<KeyLogFile>,
    local: Vec<Cidr>,
    remote: Vec<Cidr>,
}

impl std::fmt::Debug for KeyLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyLog")
            .field("file", &self.file.0.destination())
            .field("local", &self.local)
            .field("remote", &self.remote)
            .finish()
    }
}

impl KeyLog {
    /// Opens the file (created if missing, appended to; shared with whatever else writes to
    /// it) and compiles the address ranges.
    pub fn compile(config: &TlsKeyLog) -> Compiled<KeyLog> {
        let mut errors = Errors::default();
        let mut ranges = |list: &[legate_api::pb::envoy::config::core::v3::CidrRange],
                          field: &str| {
            list.iter()
                .enumerate()
                .filter_map(|(i, r)| match Cidr::compile(r) {
                    Ok(c) => Some(c),
                    Err(e) => {
                        errors.push(&format!("{field}[{i}]"), e);
                        None
                    }
                })
                .collect::<Vec<_>>()
        };
        let local = ranges(&config.local_address_range, "local_address_range");
        let remote = ranges(&config.remote_address_range, "remote_address_range");
        let file = match AccessLogFiles::open(Destination::File(config.path.clone().into())) {
            Ok(f) => Some(f),
            Err(e) => {
                errors.push("path", e);
                None
            }
        };
        let file = file.filter(|_| errors.0.is_empty());
        errors.finish(|| KeyLog {
            file: Arc::new(KeyLogFile(file.expect("opened when there are no errors"))),
            local,
            remote,
        })
    }

    /// The log for a connection from `local` to `remote` (either `None` on a unix domain
    /// socket), if its addresses are in the configured ranges.
    pub fn for_connection(
        &self,
        local: Option<SocketAddr>,
        remote: Option<SocketAddr>,
    ) -> Option<Arc<dyn rustls::KeyLog>> {
        let within = |ranges: &[Cidr], addr: Option<SocketAddr>| {
            ranges.is_empty() || addr.is_some_and(|a| ranges.iter().any(|r| r.contains(a.ip())))
        };
        (within(&self.local, local) && within(&self.remote, remote))
            .then(|| self.file.clone() as Arc<dyn rustls::KeyLog>)
    }
}

/// The file, as rustls's key log for the connections the ranges let in.
struct KeyLogFile(Arc<LogFile>);

impl std::fmt::Debug for KeyLogFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("KeyLogFile")
            .field(self.0.destination())
            .finish()
    }
}

impl rustls::KeyLog for KeyLogFile {
    fn log(&self, label: &str, client_random: &[u8], secret: &[u8]) {
        // Queued for the file's writer, whole lines: lines from several connections, contexts
        // or loggers of the same file do not interleave.
        self.0
            .write(format!("{label} {} {}\n", hex(client_random), hex(secret)));
    }

    fn will_log(&self, _label: &str) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use legate_api::pb::envoy::config::core::v3::CidrRange;

    fn range(prefix: &str, len: u32) -> CidrRange {
        CidrRange {
            address_prefix: prefix.into(),
            prefix_len: Some(legate_api::pb::google::protobuf::UInt32Value { value: len }),
        }
    }

    #[test]
    fn connections_are_logged_by_their_addresses() {
        let dir = std::env::temp_dir().join(format!("legate-keylog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keys.log");
        let log = KeyLog::compile(&TlsKeyLog {
            path: path.to_string_lossy().into(),
            local_address_range: vec![],
            remote_address_range: vec![range("10.0.0.0", 8)],
        })
        .unwrap();
        let local: SocketAddr = "127.0.0.1:443".parse().unwrap();
        assert!(
            log.for_connection(Some(local), Some("10.1.2.3:5000".parse().unwrap()))
                .is_some()
        );
        assert!(
            log.for_connection(Some(local), Some("127.0.0.1:5000".parse().unwrap()))
                .is_none()
        );
        assert!(
            log.for_connection(None, None).is_none(),
            "a pipe has no address in the range"
        );
        log.for_connection(None, Some("10.0.0.1:1".parse().unwrap()))
            .unwrap()
            .log("CLIENT_RANDOM", &[0xab, 0x01], &[0xff]);
        // The file's writer flushes at its interval.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let written = loop {
            let text = std::fs::read_to_string(&path).unwrap();
            if !text.is_empty() || std::time::Instant::now() > deadline {
                break text;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        assert_eq!(written, "CLIENT_RANDOM ab01 ff\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_that_cannot_be_opened_and_bad_ranges_are_named() {
        let errors = KeyLog::compile(&TlsKeyLog {
            path: "/nonexistent-dir/keys.log".into(),
            local_address_range: vec![range("not-an-ip", 8)],
            remote_address_range: vec![],
        })
        .unwrap_err();
        let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert!(
            text.iter().any(|e| e.contains("local_address_range[0]")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|e| e.contains("path") && e.contains("/nonexistent-dir/keys.log")),
            "{text:?}"
        );
    }
}
